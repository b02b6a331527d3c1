"""The `tower-detector` command line: one subcommand per pipeline step.

Each subcommand is a function taking (args, reporter); it raises UserError for bad input.
Exit codes: 0 success, 2 bad input (one line on stderr, or an error event), 1 failure, 143 stopped by
SIGTERM at a safe point (run the same command again to resume), 130 interrupted (Ctrl-C).
"""

import argparse
import math
import os
import re
import sys
import traceback

from . import __version__
from .common.errors import Failure, Interrupted, UserError, one_line
from .common.events import Reporter
from .common.redaction import redact
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


def cmd_sample(args, rep):
    from .synthetic import write_sample_scene

    info = write_sample_scene(args.out, tiles_x=args.tiles_x, tiles_y=args.tiles_y, seed=args.seed,
                              lon=args.lon, lat=args.lat, zoom=args.zoom, progress=rep.progress)
    lines = [f"sample scene written to {args.out}"] + [f"  {k}: {v}" for k, v in info.items() if k != "files"]
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


def _whole(low, high=None):
    """An argparse type: a whole number in low..high."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, not {value}" if high is not None
                                             else f"must be at least {low}, not {value}")
        return value
    return parse


def _number(low, strict=False):
    """An argparse type: a finite number >= low (> low when strict)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be a number {'>' if strict else '>='} {low:g}, not {text}")
        return value
    return parse


ZOOM = _whole(0, 24)  # the zooms tile covers support
COUNT = _whole(1)  # shards, workers, tiles, batch sizes...
SEED = _whole(0)  # numpy's generators take seeds >= 0
NON_NEGATIVE = _number(0)  # ratios, prices
POSITIVE = _number(0, strict=True)  # rates, durations


def cmd_dataset(args, rep):
    from .datasets.dataset import build_dataset, dataset_from_label_maker_config, parse_splits

    common = dict(block_size=args.block_size, force=args.force, max_tiles=args.max_tiles, cache_dir=args.cache,
                  concurrency=args.concurrency, progress=rep.progress, log=rep.log)
    if args.config:
        summary = dataset_from_label_maker_config(args.config, args.out, extra_labels=args.extra_labels, **common)
    else:
        missing = [f"--{n}" for n in ("area", "towers", "imagery") if not getattr(args, n)]
        if missing:
            raise UserError(f"dataset needs {', '.join(missing)} (or --config label-maker-config.json)")
        summary = build_dataset(args.area, args.towers, args.imagery, args.out, zoom=args.zoom,
                                background_ratio=args.background_ratio, splits=parse_splits(args.split),
                                seed=args.seed, extra_labels=args.extra_labels, tower_filter=args.tower_filter,
                                span_negatives=args.span_negatives, **common)
    lines = [f"dataset written to {args.out}: {summary['tiles']} tiles"]
    lines += [f"  {name}: {s['tiles']} tiles ({s['tower']} tower, {s['background']} background)"
              for name, s in summary["splits"].items()]
    if summary["skipped"]:
        lines.append(f"  skipped {summary['skipped']} tiles whose imagery failed (see dataset.json)")
    rep.result("\n".join(lines), out=args.out, **summary)


def cmd_train(args, rep):
    from .training.model import load_params_file
    from .training.train import train

    params = load_params_file(args.params) if args.params else {}
    for name, value in (("image_size", args.image_size), ("epochs_phase1", args.epochs_top),
                        ("epochs_phase2", args.epochs_fine), ("batch_size", args.batch_size), ("seed", args.seed)):
        if value is not None:
            params[name] = value
    result = train(args.data, args.out, params, weights=args.weights, progress=rep.progress, log=rep.log,
                   precision=args.precision, in_place=getattr(args, "in_place", False))  # set by remote worker
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
    from .training.model import load_params_file
    from .training.search import search

    params = load_params_file(args.params) if args.params else {}
    for name, value in (("image_size", args.image_size), ("epochs_phase2", args.epochs_fine),
                        ("batch_size", args.batch_size)):
        if value is not None:
            params[name] = value
    result = search(args.data, args.out, args.trials, space=args.space, metric=args.metric, params=params,
                    weights=args.weights, seed=args.seed, progress=rep.progress, log=rep.log)
    text = (f"best: trial {result['best_trial']} ({result['metric']} {result['best_value']:.4f}) in "
            f"{result['best_dir']}\n{result['table']}")
    rep.result(text, out=args.out, **{k: v for k, v in result.items() if k != "table"})


def cmd_predict(args, rep):
    from .prediction.predict import predict

    stats = predict(args.model, args.imagery, args.out, area=args.area, tiles=args.tiles, zoom=args.zoom,
                    shard=args.shard, shards=args.shards, workers=args.workers, checkpoint_every=args.checkpoint_every,
                    batch_size=args.batch_size, max_tiles=args.max_tiles, precision=args.precision,
                    views=args.views, imagery_name=args.imagery_name, progress=rep.progress, log=rep.log)
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


def _share(part, whole):
    return f"{100 * part / whole:.1f} %" if whole > 0 else "none"


def cmd_results(args, rep):
    from .results import merge_results

    if not any((args.heatmap, args.candidates, args.json, args.geojson)):
        raise UserError("results: ask for at least one of --heatmap, --candidates, --json, --geojson")
    summary = merge_results(args.store, heatmap=args.heatmap, candidates=args.candidates, threshold=args.threshold,
                            json_path=args.json, geojson_path=args.geojson, yes_threshold=args.yes_threshold,
                            progress=rep.progress, log=rep.log, overwrite=args.overwrite)
    lines = [f"{summary['scored']:,} tiles scored, {summary['failed_permanent']:,} failed for good (no imagery, "
             f"unreadable), {summary['failed_transient']:,} failed transiently (not done: run predict again)"
             + (f", {summary['tiles_missing']:,} not scored yet (job unfinished)" if summary["tiles_missing"] else ""),
             f"{summary['candidates']:,} candidates at or above {summary['threshold']} "
             f"({summary['candidates_yes']:,} at or above {summary['yes_threshold']})"]
    if "merge" in summary:
        lines.append(merge_text(summary["merge"]))
    lines += [f"  {kind}: {path}" for kind, path in summary["outputs"].items()]
    rep.result("\n".join(lines), **summary)


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
        text += f"; {summary['merged']} points within a few metres of a better-ranked one were merged into it"
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


def build_parser():
    p = _Parser(prog="tower-detector", description="Find high-voltage power towers in imagery tiles.")
    p.add_argument("--version", action="version", version=f"tower-detector {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--events", action="store_true", help="print JSON-lines events on stdout (for the QGIS plugin)")
        sp.set_defaults(func=func)
        return sp

    sp = command("tiles", cmd_tiles, "Count and list the tiles that cover an area.")
    sp.add_argument("--area", required=True, help="GeoJSON file (Polygon/MultiPolygon, WGS84) or bbox W,S,E,N")
    sp.add_argument("--zoom", type=ZOOM, default=18)
    sp.add_argument("--shards", type=COUNT, help="split into N X-index ranges of about equal tile counts")
    sp.add_argument("--out", help="write the cover: .json (compact runs) or .txt (one x-y-z per line)")
    sp.add_argument("--max-tiles", type=COUNT, help="refuse areas covering more tiles than this")
    sp.add_argument("--repair", action="store_true", help="repair invalid polygons with make_valid instead of refusing")

    sp = command("dataset", cmd_dataset, "Build a label-maker-compatible training set of tower/background tiles.")
    sp.add_argument("--out", required=True, help="output directory")
    sp.add_argument("--area", help="GeoJSON file or bbox W,S,E,N")
    sp.add_argument("--towers", help="tower points: overpass[:URL], .osm.pbf, .geojson or .gpkg[:layer]")
    sp.add_argument("--imagery", help="XYZ URL template, GeoTIFF/COG, .mbtiles, or a folder/s3 prefix of x-y-z tiles")
    sp.add_argument("--config", help="a label-maker config.json instead of --area/--towers/--imagery")
    sp.add_argument("--zoom", type=ZOOM, default=18)
    sp.add_argument("--background-ratio", type=NON_NEGATIVE, default=3.0, help="background tiles per tower tile")
    sp.add_argument("--span-negatives", type=NON_NEGATIVE, default=0.0,
                    help="negative tiles per tower tile taken along power=line spans between mapped towers "
                         "(default 0: none)")
    sp.add_argument("--split", default="0.7,0.15,0.15", help="train,val,test fractions")
    sp.add_argument("--seed", type=SEED, default=0)
    sp.add_argument("--extra-labels", help="review decisions (GeoPackage/GeoJSON points with a status field)")
    sp.add_argument("--tower-filter", default="power=tower", help="OSM tag filter: key=value[,value], key, or all")
    sp.add_argument("--block-size", type=COUNT, default=8, help="split blocks are N x N tiles (default 8)")
    sp.add_argument("--force", action="store_true", help="allow a background-only dataset when there are no towers")
    sp.add_argument("--max-tiles", type=COUNT, default=50_000_000, help="refuse areas covering more tiles")
    sp.add_argument("--cache", help="cache imagery and Overpass answers in this folder")
    sp.add_argument("--concurrency", type=COUNT, default=16, help="parallel imagery requests")

    sp = command("train", cmd_train, "Train the Xception tower classifier on a dataset (resumes when run again).")
    sp.add_argument("--data", required=True, help="a tower-detector dataset directory (or a label-maker data.npz's)")
    sp.add_argument("--out", required=True, help="model directory to write (or to resume)")
    sp.add_argument("--params", help="JSON file of hyperparameters (see README); flags below override it")
    sp.add_argument("--weights", default="imagenet", help="imagenet (downloaded once by Keras), none, or an "
                    "Xception notop .h5 weights file")
    sp.add_argument("--image-size", type=int, help="model input size in pixels (tiles are resized; default 256)")
    sp.add_argument("--epochs-top", type=int,
                    help="phase 1 epochs: the new top only (default 3; 0 with --weights none)")
    sp.add_argument("--epochs-fine", type=int, help="phase 2 epochs: fine-tuning (default 20)")
    sp.add_argument("--batch-size", type=int, help="default 32")
    sp.add_argument("--seed", type=int, help="random seed (default 0)")
    sp.add_argument("--precision", default="auto", choices=["auto", "float32", "mixed"],
                    help="auto (default): mixed float16 on a GPU, mixed bfloat16 on a CPU with AMX-BF16 or "
                         "AVX512-BF16, else float32")

    sp = command("search", cmd_search, "Hyperopt TPE search over the training recipe (resumes when run again).")
    sp.add_argument("--data", required=True, help="a tower-detector dataset directory")
    sp.add_argument("--out", required=True, help="search directory to write (or to resume)")
    sp.add_argument("--trials", type=COUNT, required=True, help="number of trials in all (the first 3 random)")
    sp.add_argument("--space", help="JSON search space (default: the original project's; see README)")
    sp.add_argument("--metric", default="accuracy", choices=["accuracy", "roc_auc"],
                    help="chooses the best trial on the test split (default accuracy, as the original)")
    sp.add_argument("--params", help="JSON file of fixed hyperparameters for every trial")
    sp.add_argument("--weights", default="imagenet", help="imagenet, none, or an Xception notop .h5 file")
    sp.add_argument("--image-size", type=int)
    sp.add_argument("--epochs-fine", type=int)
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--seed", type=SEED, default=0)

    sp = command("predict", cmd_predict, "Score every tile of an area into a results store (resumes when run again).")
    sp.add_argument("--model", required=True, help="model directory (from train or search's best/)")
    sp.add_argument("--imagery", required=True, help="XYZ URL template, GeoTIFF/COG, .mbtiles, or x-y-z tile folder")
    sp.add_argument("--area", help="GeoJSON file or bbox W,S,E,N")
    sp.add_argument("--tiles", help="a tile cover file from `tower-detector tiles --out` (instead of --area)")
    sp.add_argument("--out", required=True, help="results store: a directory or s3://bucket/prefix")
    sp.add_argument("--zoom", type=ZOOM, default=18)
    sp.add_argument("--shard", help="i/n: score only shard i of n (X-index ranges; for parallel workers)")
    sp.add_argument("--shards", type=COUNT, help="split the job into N shards (all scored here unless --shard)")
    sp.add_argument("--workers", type=COUNT, default=16, help="concurrent imagery requests and decoders")
    sp.add_argument("--checkpoint-every", type=COUNT, default=5000, help="tiles per chunk: the unit of checkpoints")
    sp.add_argument("--batch-size", type=COUNT, default=64)
    sp.add_argument("--max-tiles", type=COUNT, default=100_000_000)
    sp.add_argument("--precision", default="auto", choices=["auto", "float32", "mixed"],
                    help="auto (default): mixed float16 on a GPU, mixed bfloat16 on a CPU with AMX-BF16 or "
                         "AVX512-BF16, else float32; mixed: bfloat16 on any CPU")
    sp.add_argument("--imagery-name", help="the imagery's name for people (e.g. \"Esri World Imagery\"): kept "
                    "with the job, the changeset source of OSM exports")
    sp.add_argument("--views", type=int, default=1, choices=[1, 2, 4, 8],
                    help="score each tile this many ways up (turned, and mirrored at 8) and average: steadier "
                         "scores for that many times the model's work (default 1)")

    sp = command("results", cmd_results, "Merge a results store into a heatmap, candidates and the seed's formats.")
    sp.add_argument("store", help="results store: a directory or s3://bucket/prefix")
    sp.add_argument("--heatmap", help="heatmap GeoTIFF to write (EPSG:3857, one pixel per tile)")
    sp.add_argument("--candidates", help="candidates GeoPackage to write (tiles at or above --threshold); an "
                    "existing one is merged into by tile, its review decisions kept")
    sp.add_argument("--threshold", type=float, default=0.5, help="candidate score cut (see the model's metrics.json)")
    sp.add_argument("--yes-threshold", type=float, default=0.97, help="'Yes' band of the overlay (the seed's 0.97)")
    sp.add_argument("--json", help="the seed's {\"x-y-z\": score} JSON")
    sp.add_argument("--geojson", help="the seed's GeoJSON overlay (Maybe/Yes bands)")
    sp.add_argument("--overwrite", action="store_true",
                    help="write the candidates GeoPackage afresh, discarding the review decisions in it")

    sp = command("export", cmd_export, "Export reviewed candidates for JOSM, MapRoulette, the Tasking Manager or "
                 "the next training set.")
    sp.add_argument("kind", help="osm, osm-reference, overlay, maproulette, maproulette-cooperative, "
                    "tasking-manager or labels (see README)")
    sp.add_argument("--candidates", required=True, help="candidates GeoPackage (from `results --candidates`)")
    sp.add_argument("--out", required=True, help="output file (a folder for tasking-manager)")
    sp.add_argument("--status", help="comma-separated review statuses to export, or all (default: the kind's)")
    sp.add_argument("--min-score", type=float, help="export candidates scoring at least this")
    sp.add_argument("--bbox", help="W,S,E,N: export the candidates whose point lies in this box (degrees)")
    sp.add_argument("--comment", help="osm: the changeset comment (default: says what was added and how)")
    sp.add_argument("--source", help="osm: the changeset source (default: the imagery's name the job kept, else "
                    "\"aerial imagery\")")
    sp.add_argument("--hashtags", help='osm: changeset hashtags, "#one;#two"')
    sp.add_argument("--yes-threshold", type=float, default=0.97, help="the 'Yes' band (overlay, tasking-manager)")
    sp.add_argument("--task-zoom", type=int, default=14, help="tasking-manager: tasks are tiles of this zoom")
    sp.add_argument("--osm", help="osm, maproulette-cooperative: leave out towers OSM has, checked against this "
                    "source (as conflate's --osm; default: the candidates' last conflation)")
    sp.add_argument("--include-near-duplicates", action="store_true",
                    help="osm, maproulette-cooperative: export every confirmed tower, even one OSM may have already")
    sp.add_argument("--duplicate-distance", type=float, metavar="METRES", help="osm, maproulette-cooperative: a "
                    "mapped support this near a point means OSM has the tower (default: the conflation's, else 30)")
    sp.add_argument("--cache", help="cache Overpass answers in this folder (--osm overpass)")

    sp = command("conflate", cmd_conflate, "Flag candidates against the towers and lines already in OSM.")
    sp.add_argument("--candidates", required=True, help="candidates GeoPackage; gets osm_flags, osm_distance_m, "
                    "osm_ref, and status already_mapped where still unreviewed")
    sp.add_argument("--osm", required=True, help="overpass[:URL], .osm.pbf/.osm, GeoJSON, a saved Overpass JSON "
                    "answer, or .gpkg[:layer]")
    sp.add_argument("--duplicate-distance", type=float, metavar="METRES",
                    help="a mapped tower, portal or pole this near a candidate's tower point means already mapped "
                    "(default 30)")
    sp.add_argument("--buffer", type=float, help=argparse.SUPPRESS)  # gone: conflation decides by the point
    sp.add_argument("--cache", help="cache Overpass answers in this folder")

    sp = command("sample", cmd_sample, "Write a synthetic aerial scene with HV towers, for tests and demos.")
    sp.add_argument("--out", required=True, help="output directory")
    sp.add_argument("--tiles-x", type=int, default=8)
    sp.add_argument("--tiles-y", type=int, default=8)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--lon", type=float, default=28.28, help="longitude of the scene's centre")
    sp.add_argument("--lat", type=float, default=-15.42, help="latitude of the scene's centre")
    sp.add_argument("--zoom", type=int, default=18, help=argparse.SUPPRESS)

    add_remote_commands(sub, command)  # after predict, train and search: `remote submit` mirrors their arguments
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines would drown our log
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
