"""The `tower-detector` command line: one command per stage of the pipeline (pipeline.STAGES declares them and
their arguments), each run by a function of (args, reporter) here, plus `remote`.

Exit codes, the same for every command (the one place they are defined):
    0    success
    2    bad input: one line on stderr, or an error event with --events (UserError)
    1    a failure: one line when its cause is known (Failure: an imagery outage, tiles left to retry), else the
         one-line reason and the traceback
    143  stopped by SIGTERM at a safe point: run the same command again to resume
    130  interrupted (Ctrl-C)
A remote worker exits 75 where a run may succeed if retried (SIGTERM included), and 78 when it asked for a GPU and
sees none (remote/worker.py).
"""

import argparse
import os
import re
import sys
import traceback

from . import __version__
from .common.errors import Failure, Interrupted, UserError, one_line
from .common.events import Reporter
from .common.quiet import quiet_tensorflow_import
from .common.redaction import redact
from .pipeline import ALIASES, STAGE, STAGES, rate_share
from .remote import add_remote_commands


def cmd_tiles(args, rep):
    from .geo.areas import load_area
    from .geo.cover import check_cover_path, tile_cover

    if args.out:
        check_cover_path(args.out)
    area = load_area(args.area, repair=args.repair)
    cover = tile_cover(area, args.zoom)
    if args.max_tiles is not None and cover.count > args.max_tiles:
        raise UserError(f"the area covers {cover.count:,} zoom-{args.zoom} tiles, over --max-tiles {args.max_tiles:,}")
    shards = cover.shard_ranges(args.shards) if args.shards is not None else None
    if args.out:
        cover.save(args.out, shards=shards)
    summary = {"count": cover.count, "zoom": cover.zoom, "runs": len(cover.x), "out": args.out}
    if cover.count:
        summary["tile_bounds"] = dict(zip(("xmin", "ymin", "xmax", "ymax"), cover.bounds()))
    if shards:
        summary["shards"] = [{"x_start": a, "x_end": b, "count": cover.shard(a, b).count} for a, b in shards]
    text = f"{cover.count} tiles at zoom {cover.zoom}"
    if shards:
        text += "".join(f"\nshard {i}: x {s['x_start']}..{s['x_end'] - 1}, {s['count']} tiles"
                        for i, s in enumerate(summary["shards"]))
    if args.out:
        text += f"\nwritten to {args.out}"
    rep.result(text, **summary)


def cmd_synthetic(args, rep):
    from .synthetic import write_scene

    if args.command in ALIASES:
        rep.log(f"`tower-detector {args.command}` is now `tower-detector {ALIASES[args.command]}`")
    info = write_scene(args.out, tiles_x=args.tiles_x, tiles_y=args.tiles_y, seed=args.seed,
                       lon=args.lon, lat=args.lat, zoom=args.zoom, progress=rep.progress, realism=args.realism,
                       hv_lines=args.hv_lines, jpeg_quality=args.jpeg_quality, low_contrast=args.low_contrast,
                       lean=args.lean, haze=args.haze, confusers=args.confusers)
    lines = [f"synthetic scene written to {args.out}"] + [f"  {k}: {v}" for k, v in info.items() if k != "files"]
    rep.result("\n".join(lines), **info)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage mistakes are bad input like any other: one line, exit 2, an event with --events; and a
    value such as a western bbox (--area -75,40,-74,41) is taken as the option's value, not as an option."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):
        glued = []
        for arg in sys.argv[1:] if args is None else args:
            if glued and _NEGATIVE_LIST.fullmatch(arg) and glued[-1].startswith("--") and "=" not in glued[-1] \
                    and "--" not in glued:
                glued[-1] += f"={arg}"  # --area=-75,40,-74,41: argparse takes what follows = as the value
            else:
                glued.append(arg)
        return super().parse_known_args(glued, namespace)


_NEGATIVE_LIST = re.compile(r"-[\d.][^,]*(,[^,]*)+")  # -75,40,-74,41 (and malformed ones, for a clear error)


def cmd_dataset(args, rep):
    from .datasets.dataset import build_dataset, dataset_from_label_maker_config

    if args.config:
        summary = dataset_from_label_maker_config(args, progress=rep.progress, log=rep.log)
    else:
        missing = [f"--{n}" for n in ("area", "towers", "imagery") if not getattr(args, n)]
        if missing:
            raise UserError(f"dataset needs {', '.join(missing)} (or --config label-maker-config.json)")
        summary = build_dataset(args, progress=rep.progress, log=rep.log)
    lines = [f"dataset written to {args.out}: {summary['tiles']} tiles"]
    lines += [f"  {name}: {s['tiles']} tiles ({s['tower']} tower, {s['background']} background)"
              for name, s in summary["splits"].items()]
    if summary["skipped"]:
        lines.append(f"  skipped {summary['skipped']} tiles whose imagery failed (see dataset.json)")
    rep.result("\n".join(lines), out=args.out, **summary)


def cmd_train(args, rep):
    from .training.params import load_params_file, training_flags
    from .training.train import train

    params = {**(load_params_file(args.params) if args.params else {}), **training_flags(args)}
    result = train(args.data, args.out, params, weights=args.weights, progress=rep.progress, log=rep.log,
                   precision=args.precision, in_place=getattr(args, "in_place", False),  # set by remote worker
                   init=args.init)
    text = (f"model written to {args.out}: test ROC AUC {_fmt(result['roc_auc'])}, accuracy {result['accuracy']:.3f}, "
            f"precision {result['precision']:.3f}, recall {result['recall']:.3f} at 0.5; thresholds "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in result["thresholds"].items()))
    eight = result.get("views", {}).get("8")  # a model trained before views were evaluated has none
    if eight:
        text += (f"; with predict --views 8: ROC AUC {_fmt(eight['roc_auc'])}, "
                 f"youden {_fmt(eight['thresholds']['youden'])}")
    rep.result(text, out=args.out, **{k: result[k] for k in ("roc_auc", "pr_auc", "accuracy", "precision", "recall",
                                                              "f1", "thresholds", "train_images_per_second")})


def cmd_search(args, rep):
    from .training.params import load_params_file, training_flags
    from .training.search import search

    params = {**(load_params_file(args.params) if args.params else {}), **training_flags(args)}
    result = search(args.data, args.out, args.trials, space=args.space, metric=args.metric, params=params,
                    weights=args.weights, seed=args.seed, progress=rep.progress, log=rep.log)
    test = ", ".join(f"{k} {v:.4f}" for k, v in result["best_test"].items() if v is not None)
    text = (f"best: trial {result['best_trial']} (validation {result['metric']} {result['best_value']:.4f}; test "
            f"split {test}) in {result['best_dir']}\n{result['table']}")
    rep.result(text, out=args.out, **{k: v for k, v in result.items() if k != "table"})


def cmd_predict(args, rep):
    from .prediction.predict import predict

    n = args.gpus or args.processes
    if n > 1 or args.gpus:
        stats = _predict_in_processes(args, n, rep)
    else:
        stats = predict(args, progress=rep.progress, log=rep.log)
    text = (f"scored {stats['tiles_scored']:,} tiles into {args.out} ({stats['tiles_failed']:,} without imagery or "
            f"unreadable, {stats['chunks_written']} chunks written, {stats['chunks_existing']} already there; "
            f"{stats['tiles_per_second']} tiles/s, {_share(stats['checkpoint_seconds'], stats['seconds'])} of the time "
            "writing checkpoints)")
    pending = stats["tiles_pending_retry"]
    if pending:
        reasons = ", ".join(f"{r} x{n:,}" for r, n in stats["pending_reasons"].items())
        rep.log(text)
        raise Failure(f"{pending:,} tiles failed transiently ({reasons}) and are not done; run the same command "
                      "again to fetch them", retry=True)
    rep.result(text, **stats)


def _predict_in_processes(args, n, rep):
    """predict --processes N / --gpus N: N children of this command, each with its --part (prediction/parallel.py)."""
    from .prediction.parallel import run_parts
    from .prediction.predict import check_inputs

    if args.part is not None:
        raise UserError("--part is set by --processes/--gpus for their children; give one or the other")
    check_inputs(args)  # bad input: one line and exit 2 before any child (or TensorFlow) starts
    actions = STAGE["predict"].arguments(argparse.ArgumentParser(add_help=False))
    argv = ["predict"]
    for action in actions:
        value = getattr(args, action.dest)
        if action.dest in ("processes", "gpus", "part") or value is None or value == action.default:
            continue
        if action.dest == "rate_limit":  # the run's limit, shared out: each child its own bucket of R/N
            value = rate_share(value, n)
            rep.log(f"--rate-limit {args.rate_limit:g}: {value:g} requests/s for each of the {n} processes")
        argv += [action.option_strings[-1], str(value)]
    return run_parts(lambda i, k: [*argv, "--part", f"{i}/{k}", "--events"], n, args.out, gpus=bool(args.gpus),
                     progress=rep.progress, log=rep.log)


def _share(part, whole):
    return f"{100 * part / whole:.1f} %" if whole > 0 else "none"


def cmd_results(args, rep):
    from .results import merge_results

    if not any((args.heatmap, args.candidates, args.json, args.geojson)):
        raise UserError("results: ask for at least one of --heatmap, --candidates, --json, --geojson")
    summary = merge_results(args.store, heatmap=args.heatmap, candidates=args.candidates, threshold=args.threshold,
                            json_path=args.json, geojson_path=args.geojson, yes_threshold=args.yes_threshold,
                            progress=rep.progress, log=rep.log, overwrite=args.overwrite, budget=args.budget,
                            line_rescore=args.line_rescore, lines=args.lines)
    lines = [f"{summary['scored']:,} tiles scored, {summary['failed_permanent']:,} failed for good (no imagery, "
             f"unreadable), {summary['failed_transient']:,} failed transiently (not done: run predict again)"
             + (f", {summary['tiles_missing']:,} not scored yet (job unfinished)" if summary["tiles_missing"] else ""),
             f"{summary['candidates']:,} candidates at or above {summary['threshold']}"
             + (f" (--budget {summary['budget']:,})" if summary["budget"] else "")
             + (f" (calibrated P(tower) {summary['threshold_probability']:.3f})" if summary["calibration"] else "")
             + (f" ({summary['candidates_yes']:,} with a calibrated P(tower) at or above {summary['yes_threshold']}, "
                f"a score at or above {summary['yes_score']:.4f})" if summary["yes_score"] != summary["yes_threshold"]
                else f" ({summary['candidates_yes']:,} at or above {summary['yes_threshold']})")]
    if summary["line_rescore"]:
        lines.append(rescore_text(summary["line_rescore"]))
    if "merge" in summary:
        lines.append(merge_text(summary["merge"]))
    lines += [f"  {kind}: {path}" for kind, path in summary["outputs"].items()]
    rep.result("\n".join(lines), **summary)


def rescore_text(r):
    """One line on what line re-scoring did (results --line-rescore)."""
    lines = f", {r['lines']:,} mapped lines from {r['lines_file']}" if r["lines_file"] else ""
    return (f"line re-scoring on: {r['considered']:,} tiles scoring at least {r['floor']:.3g} re-scored "
            f"({r['supported']:,} with line support{lines}); {r['moved_in']:,} moved into the cut, "
            f"{r['moved_out']:,} out of it (the model's cut was {r['threshold_raw']:g}; score_raw keeps its scores)")


def merge_text(merge):
    """One line on what writing the candidates GeoPackage did (results, remote fetch)."""
    if merge["mode"] == "merged":
        return (f"candidates merged into the existing file by tile: {merge['reviewed_kept']:,} reviewed kept "
                f"({merge['reviewed_below_threshold']:,} of them now below the threshold or unscored: in_results = "
                f"0), {merge['updated']:,} updated, {merge['added']:,} added, {merge['unreviewed_dropped']:,} "
                "unreviewed below the threshold dropped")
    if merge["mode"] == "overwritten":
        return (f"candidates file overwritten (--overwrite): {merge['added']:,} candidates, "
                f"{merge['reviewed_discarded']:,} reviewed ones discarded")
    return f"candidates file written: {merge['added']:,} candidates"


def cmd_export(args, rep):
    from .review.exports import NODE_KINDS, export

    if args.include_near_duplicates and args.kind in NODE_KINDS:
        rep.log("warning: not checked against OSM (--include-near-duplicates): towers OSM already has may be added "
                "again")
    summary = export(args.kind, args.candidates, args.out, statuses=args.status, min_score=args.min_score,
                     bbox=args.bbox, comment=args.comment, source=args.source, hashtags=args.hashtags,
                     yes_threshold=args.yes_threshold, task_zoom=args.task_zoom, osm=args.osm,
                     include_near_duplicates=args.include_near_duplicates, duplicate_m=args.duplicate_distance,
                     cache_dir=args.cache)
    counts = ", ".join(f"{n} {status}" for status, n in summary["statuses"].items())
    text = f"{summary['exported']:,} candidates ({counts}) exported as {args.kind} to {args.out}"
    if summary.get("near_duplicates"):
        text += (f"; {summary['near_duplicates']} left out: within {summary['duplicate_m']:g} m of a tower or pole "
                 f"OSM already has (checked against {summary['checked_against']}; --include-near-duplicates keeps "
                 "them)")
    elif summary.get("near_duplicates") == 0:
        text += (f"; none within {summary['duplicate_m']:g} m of a tower or pole OSM has (checked against "
                 f"{summary['checked_against']})")
    if summary.get("merged"):
        text += f"; {summary['merged']} points within reach of a better-ranked one were merged into it"
    if summary.get("unplaced"):
        text += (f"; {summary['unplaced']} nodes keep the detector's point (no reviewer placed them): tagged fixme, "
                 "check them in JOSM")
    if summary.get("source"):
        text += f"; changeset source \"{summary['source']}\""
    rep.result(text, **summary)


def cmd_conflate(args, rep):
    from .review.conflate import conflate

    if args.buffer is not None:
        rep.log("--buffer is no longer used and is ignored: conflation now decides by the candidate's tower point "
                "(see --duplicate-distance)")
    distance = {} if args.duplicate_distance is None else {"duplicate_m": args.duplicate_distance}
    s = conflate(args.candidates, args.osm, cache_dir=args.cache, progress=rep.progress, log=rep.log, **distance)
    text = (f"{s['candidates']:,} candidates against {s['towers']:,} mapped towers, {s['poles']:,} poles and "
            f"{s['lines']:,} lines: "
            f"{s['already_mapped']:,} already mapped (a support within {s['duplicate_m']:g} m of the point; "
            f"{s['status_set']:,} newly marked, {s['human_decisions_kept']:,} reviewed by people left as they were), "
            f"{s['on_mapped_line']:,} new on a mapped line, {s['possibly_misplaced']:,} possibly misplaced, "
            f"{s['no_flags']:,} without flags")
    rep.result(text, **s)


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


RUNNERS = {"tiles": cmd_tiles, "synthetic": cmd_synthetic, "dataset": cmd_dataset, "train": cmd_train,
           "search": cmd_search, "predict": cmd_predict, "results": cmd_results, "conflate": cmd_conflate,
           "export": cmd_export}


def build_parser():
    """The command line: one command per stage of pipeline.STAGES, in their order, then `remote`."""
    p = _Parser(prog="tower-detector", description="Find high-voltage power towers in imagery tiles.")
    p.add_argument("--version", action="version", version=f"tower-detector {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, func, help_text, aliases=()):
        sp = sub.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
        sp.add_argument("--events", action="store_true", help="print JSON-lines events on stdout (for the QGIS plugin)")
        sp.set_defaults(func=func)
        return sp

    for stage in STAGES:
        aliases = [old for old, new in ALIASES.items() if new == stage.name]
        stage.arguments(command(stage.name, RUNNERS[stage.name], stage.help, aliases))
    add_remote_commands(sub, command)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines would drown our log
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] >= "2":  # and those it logs before that setting applies
        quiet_tensorflow_import()
    parser = build_parser()
    rep = Reporter(events="--events" in argv)
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        args.func(args, rep)
        return 0
    except UserError as exc:
        rep.error(one_line(exc), kind="bad_input")
        return 2
    except Interrupted as exc:
        rep.error(str(exc), kind="interrupted")
        return 143
    except Failure as exc:
        rep.error(str(exc), kind="failure", retry=exc.retry)
        return exc.exit_code
    except KeyboardInterrupt:
        rep.error("interrupted", kind="interrupted")
        return 130
    except Exception as exc:  # a failure, not bad input: the one-line reason, the traceback for the log
        rep.error(f"{type(exc).__name__}: {exc}", kind="failure")
        sys.stderr.write(redact(traceback.format_exc()))
        return 1


if __name__ == "__main__":
    sys.exit(main())
