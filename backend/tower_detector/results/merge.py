"""Merged outputs of a prediction store: a heatmap GeoTIFF, a candidates GeoPackage, the original project's JSON
and GeoJSON.

    summary = merge_results("s3://bucket/zambia", heatmap="zambia.tif", candidates="zambia.gpkg", threshold=0.5,
                            json_path="original.json", geojson_path="overlay.geojson")

One pass over the store's chunks (read ahead in threads) feeds every output; a job that is not finished is
merged as far as it goes (summary["complete"] is False and the missing chunks are counted). Each output is
written to a temp file next to it and renamed at the end, so a failure never leaves a half-written file; an
existing candidates GeoPackage is merged into instead, its review decisions kept (gpkg.py).

Each output has its module: heatmap.py, gpkg.py (the candidates), original.py (the original project's JSON and
GeoJSON overlay).
"""

import math
import os
import time

import numpy as np

from ..common.atomic import remove_if_present, temp_path
from ..common.errors import UserError, one_line
from ..prediction.store import open_store
from ..training.evaluate import budget_threshold, calibrate, score_of_probability
from .gpkg import existing_candidates, tile_keys, write_candidates
from .heatmap import HeatmapWriter, heatmap_grid, merge_order, write_errors
from .original import OriginalJson, write_overlay_geojson
from .topology import floor_for, rescore_tiles


def merge_results(store_spec, heatmap=None, candidates=None, threshold=0.5, json_path=None, geojson_path=None,
                  progress=None, log=None, *, yes_threshold=0.97, concurrency=8, overwrite=False, budget=None,
                  line_rescore=False, lines=None):
    """Merge a store's chunks into the outputs asked for (None: not written); return the summary.

    budget: N candidates in all, in place of threshold: a first pass over the store finds the threshold that
    gives at most N (the top N scores; a tie at the cut is left out whole, so a few fewer; evaluate.budget_threshold).
    A store whose job carries the model's calibration (predict kept it from metrics.json) gets the calibrated
    probability of the threshold in the summary, and its "Yes" band is a calibrated probability: yes_threshold is
    P(tower), whose score (yes_score) the band compares; the scores written stay the model's own.

    An existing candidates GeoPackage is merged into (see gpkg.py: its review decisions are kept) unless
    overwrite is True, which writes it afresh.
    line_rescore: re-score the candidates by line topology (topology.py) before the cut (or the budget): the
    candidates' score (the GeoPackage and the GeoJSON overlay) is then the re-scored value, score_raw the model's,
    line_support the support; the heatmap and the JSON keep the model's scores. The model's calibration is fitted
    on raw scores, so it is not applied to re-scored ones: the "Yes" band is then yes_threshold on the re-scored
    score, and calibration is None (calibration_raw keeps it). lines: a file of mapped power=line ways (GeoJSON,
    .osm.pbf/.osm, a saved Overpass answer) whose nearby candidates get line support; it implies line_rescore.
    Summary: store, zoom, tiles (in the job), chunks_total/done/missing, complete (every tile scored or failed for
    good), tiles_missing (in missing chunks), scored, failed, failed_permanent (no imagery, unreadable: done),
    failed_transient (imagery unreachable: to fetch again), failures {reason: count}, unscored (in present chunks,
    neither scored nor failed),
    threshold, yes_threshold, yes_score (the score the "Yes" band starts at: yes_threshold without a calibration),
    budget (None without), calibration (None without, or re-scored), calibration_raw, threshold_probability,
    line_rescore (None when off, else: floor, considered, supported, moved_in, moved_out, lines, lines_file),
    candidates, candidates_yes, score_min/mean/max, histogram {edges, counts} (10 bins
    over 0..1), heatmap_grid {x0, y0, width, height}, outputs {kind: path}, and with candidates, merge (what
    was done to the GeoPackage: see write_candidates).
    Bad input (UserError, one line): threshold outside 0..1, unwritable or misnamed outputs, a store with no job,
    a store with no scored tile yet, an existing candidates file that is not one or holds another zoom, a lines
    file that is missing or holds no power=line way.
    """
    report = progress or (lambda done, total, **fields: None)
    say = log or (lambda message, **fields: None)
    threshold = check_fraction(threshold, "--threshold")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise UserError(f"--budget must be a whole number of candidates, at least 1, not {budget!r}")
    yes_threshold = check_fraction(yes_threshold, "the Yes threshold")
    outputs = {k: os.fspath(v) for k, v in (("heatmap", heatmap), ("candidates", candidates), ("json", json_path),
                                              ("geojson", geojson_path)) if v is not None}
    _check_outputs(outputs)
    line_rescore = bool(line_rescore or lines is not None)
    mapped = _load_lines(lines, say) if lines is not None else None

    store = open_store(store_spec, concurrency=concurrency)
    try:
        job = store.read_job()
        plan, cover = store.plan, store.cover
        done = store.done_chunks()
        missing = [c for c in plan.all_chunks() if c not in done]
        if not done:
            raise UserError(f"no chunks in {store.spec} yet: nothing to merge (has `predict` run?)")
        if missing:
            say(f"the job is not finished: {len(missing):,} of {plan.total_chunks:,} chunks are missing; "
                "merging what is there")
        existing = None
        if "candidates" in outputs:
            existing = existing_candidates(outputs["candidates"], plan.zoom, overwrite)
            if overwrite and existing["reviewed"]:
                say(f"--overwrite: {existing['reviewed']:,} reviewed candidates in {outputs['candidates']} are "
                    "replaced by unreviewed ones")
        grid = heatmap_grid(cover)
        order = merge_order(plan, done, grid)
        if budget is not None:
            threshold = _budget_threshold(store, order, budget, report)
            say(f"--budget {budget:,}: threshold {threshold:g} (the top {budget:,} scores; a tie at the cut is left "
                "out whole)" + (" before line re-scoring" if line_rescore else ""))
        temps = {kind: temp_path(path) for kind, path in outputs.items()}
        calibration = None if line_rescore else job.get("calibration")
        yes_score = score_of_probability(yes_threshold, calibration)
        if yes_score != yes_threshold:
            say(f"the \"Yes\" band: a calibrated P(tower) >= {yes_threshold:g}, a score >= {yes_score:.4f}")
        elif line_rescore and job.get("calibration"):
            say("line re-scoring: the model's calibration holds for its raw scores (score_raw), not for re-scored "
                f"ones; the \"Yes\" band is a re-scored score >= {yes_threshold:g}, not a probability")
        rescoring = {"budget": budget, "lines": mapped, "lines_file": None if lines is None else os.fspath(lines)} \
            if line_rescore else None
        try:
            summary, picked = _merge(store, plan, grid, order, temps, threshold, (yes_threshold, yes_score), job,
                                     report, existing, rescoring)
            threshold = summary["threshold"]  # a budget's, after re-scoring
            if "candidates" in outputs:  # before the other swaps: a failed merge leaves every output as it was
                summary["merge"] = write_candidates(outputs["candidates"], temps.pop("candidates"), existing,
                                                    *picked[:-1], **picked[-1])
            for kind, tmp in temps.items():
                os.replace(tmp, outputs[kind])
        except write_errors() as exc:  # a full disk, a quota: the old outputs stay as they were
            raise UserError(f"cannot write the results ({', '.join(outputs.values())}): {one_line(exc)}") from None
        finally:
            for tmp in temps.values():
                remove_if_present(tmp)
    finally:
        store.close()
    summary.update({"budget": budget, "calibration": calibration, "calibration_raw": job.get("calibration"),
                    "threshold_probability": float(calibrate([threshold], calibration)[0]) if calibration else None})
    summary.update({"chunks_total": plan.total_chunks, "chunks_done": len(done), "chunks_missing": len(missing),
                    "complete": not missing and not summary["failed_transient"],
                    "tiles_missing": int(sum(plan.chunk_len(*c) for c in missing)),
                    "outputs": outputs})
    return summary


def _load_lines(path, say):
    """The power=line ways of a --lines file (sources.osm.load_lines); a missing file, or one without any such way,
    is a UserError."""
    from ..sources.osm import load_lines

    spec = os.fspath(path)
    if not os.path.isfile(spec):
        raise UserError(f"--lines {spec}: no such file (a GeoJSON, .osm.pbf/.osm or saved Overpass answer of "
                        "power=line ways)")
    lines = load_lines(spec, tag_filter="power=line")
    for note in lines.notes:
        say(note)
    if not len(lines):
        raise UserError(f"--lines {spec}: no power=line ways in it (lines are read from GeoJSON, .osm.pbf/.osm and "
                        "saved Overpass answers)")
    say(f"--lines: {len(lines):,} power=line ways from {os.path.basename(spec)}")
    return lines


def _budget_threshold(store, order, budget, report):
    """A first pass over the chunks keeping the budget + 1 highest scores (enough to see a tie at the cut)."""
    keep = budget + 1
    top = np.zeros(0, np.float32)
    for i, (_, _, c) in enumerate(store.iter_chunks(order)):
        s = c["score"]
        top = np.concatenate([top, s[~np.isnan(s)].astype(np.float32)])
        if len(top) > keep:
            top = np.partition(top, len(top) - keep)[-keep:]
        report(i + 1, len(order), stage="budget")
    return budget_threshold(top, budget)


def _merge(store, plan, grid, order, temps, threshold, yes, job, report, existing=None, rescoring=None):
    """The one pass over the chunks: streams the heatmap and the original JSON, gathers statistics and candidates
    (five arrays per candidate tile: memory grows with the candidates, not with the job; only counted when no
    candidates GeoPackage or GeoJSON is asked for), and the new scores of the tiles already in an existing
    candidates file (existing["keys"]). yes: the "Yes" band's (probability, score it starts at).
    rescoring (None: off): {budget, lines, lines_file}; the tiles at or above the re-scoring floor are gathered
    (always), re-scored together after the pass, and the cut made on the re-scored values."""
    yes_threshold, yes_score = yes
    zoom = plan.zoom
    stats = _Stats()
    picked = []
    keep = "candidates" in temps or "geojson" in temps or rescoring is not None
    floor = floor_for(threshold) if rescoring is not None else threshold  # gathered: at or above it
    counted = [0, 0]  # candidates, candidates_yes: when they are not kept
    heat = HeatmapWriter(temps["heatmap"], grid, store.spec) if "heatmap" in temps else None
    original = OriginalJson(temps["json"], zoom) if "json" in temps else None
    try:
        for i, (_, _, c) in enumerate(store.iter_chunks(order)):
            ok = ~np.isnan(c["score"])
            x, y, s = c["x"][ok].astype(np.int64), c["y"][ok].astype(np.int64), c["score"][ok]
            stats.add(len(ok), s, c["error_reason"], c["error_transient"])
            hit = s >= np.float32(floor)  # scores are float32, so is the cut: 0.95 keeps a score of 0.95
            if existing and len(existing["keys"]):
                hit |= np.isin(tile_keys(x, y, zoom), existing["keys"])
            if keep:
                picked.append((x[hit], y[hit], s[hit], c["cam_x"][ok][hit], c["cam_y"][ok][hit]))
            else:
                counted[0] += int(hit.sum())
                counted[1] += int((s[hit] >= np.float32(yes_score)).sum())
            if heat:
                heat.add((x - grid["x0"]) % (1 << zoom), y - grid["y0"], s)
            if original:
                original.add(x, y, s)
            report(i + 1, len(order), stage="merge")
        if not stats.scored:
            why = f" ({stats.failed:,} failed: {_top(stats.failures)})" if stats.failed else ""
            raise UserError(f"no scored tiles in {store.spec} yet{why}: nothing to merge")
        if heat:
            report(len(order), len(order), stage="overviews")
            heat.close()
        if original:
            original.close()
    finally:
        if heat:
            heat.abort()
        if original:
            original.abort()

    summary = {"store": store.spec, "zoom": zoom, "tiles": plan.cover.count, **stats.summary(),
               "threshold": threshold, "yes_threshold": yes_threshold, "yes_score": yes_score,
               "candidates": counted[0],
               "candidates_yes": counted[1], "heatmap_grid": {k: grid[k] for k in ("x0", "y0", "width", "height")}}
    summary["line_rescore"] = None
    if not keep:
        return summary, None
    cx, cy, raw, cam_x, cam_y = (np.concatenate(a) for a in zip(*picked))
    support = np.full(len(raw), np.nan, np.float32)
    cs = raw
    if rescoring is not None:
        report(0, 1, stage="rescore")
        cs, support = rescore_tiles(cx, cy, zoom, raw, cam_x, cam_y, lines=rescoring["lines"], floor=floor)
        raw_threshold = threshold
        if rescoring["budget"] is not None:  # the budget's top N, now of the re-scored values
            threshold = budget_threshold(cs[raw >= np.float32(floor)], rescoring["budget"])
        was, now = raw >= np.float32(raw_threshold), cs >= np.float32(threshold)
        summary["threshold"] = threshold
        summary["line_rescore"] = {
            "floor": floor, "considered": int((~np.isnan(support)).sum()), "supported": int((support > 0).sum()),
            "moved_in": int((now & ~was).sum()), "moved_out": int((was & ~now).sum()),
            "threshold_raw": raw_threshold, "lines_file": rescoring["lines_file"],
            "lines": None if rescoring["lines"] is None else len(rescoring["lines"])}
        report(1, 1, stage="rescore")
    rank = np.lexsort((cy, cx, -cs))  # score descending, then x, then y: deterministic
    cx, cy, cs, cam_x, cam_y, raw, support = (a[rank] for a in (cx, cy, cs, cam_x, cam_y, raw, support))
    above = cs >= np.float32(threshold)  # the rest: tiles of the existing candidates file, below the cut
    if rescoring is not None:  # tiles gathered only for re-scoring: not candidates, not in the existing file
        mine = above | (np.isin(tile_keys(cx, cy, zoom), existing["keys"]) if existing and len(existing["keys"])
                        else False)
        cx, cy, cs, cam_x, cam_y, raw, support, above = (a[mine] for a in (cx, cy, cs, cam_x, cam_y, raw, support,
                                                                          above))
    summary.update(candidates=int(above.sum()), candidates_yes=int((cs[above] >= np.float32(yes_score)).sum()))
    if "geojson" in temps:
        write_overlay_geojson(temps["geojson"], zoom, cx[above], cy[above], cs[above], yes_score)
    if "candidates" in temps:
        info = {**{k: v for k, v in job.items() if k not in ("format", "version")},
                "threshold": threshold, "yes_threshold": yes_threshold, "yes_score": yes_score, "zoom": zoom,
                "store": store.spec,
                "merged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "counts": {k: summary[k] for k in ("tiles", "scored", "failed", "candidates", "candidates_yes")},
                # the calibration holds for the raw scores: not claimed for re-scored ones (merge_results)
                "calibration": None if rescoring is not None else job.get("calibration"),
                "calibration_raw": job.get("calibration"), "line_rescore": summary["line_rescore"]}
        return summary, (zoom, cx, cy, cs, cam_x, cam_y, above, info, {"score_raw": raw, "line_support": support})
    return summary, None


class _Stats:
    """Counts, failures by reason, a 10-bin histogram and min/mean/max of the scores, chunk by chunk."""

    def __init__(self):
        self.tiles = self.scored = self.failed = self.transient = 0
        self.failures = {}
        self.counts = np.zeros(10, dtype=np.int64)
        self.total, self.lo, self.hi = 0.0, math.inf, -math.inf

    def add(self, tiles, scores, reasons, transient):
        self.tiles += tiles
        self.failed += len(reasons)
        self.transient += int(transient.sum())
        for reason, k in zip(*(a.tolist() for a in np.unique(reasons, return_counts=True))):
            self.failures[reason] = self.failures.get(reason, 0) + k
        if len(scores):
            self.scored += len(scores)
            self.counts += np.histogram(scores, bins=10, range=(0.0, 1.0))[0]
            self.total += float(scores.sum(dtype=np.float64))
            self.lo, self.hi = min(self.lo, float(scores.min())), max(self.hi, float(scores.max()))

    def summary(self):
        return {"tiles_done": self.tiles - self.transient, "scored": self.scored, "failed": self.failed,
                "failed_permanent": self.failed - self.transient, "failed_transient": self.transient,
                "failures": dict(sorted(self.failures.items(), key=lambda kv: -kv[1])),
                "unscored": self.tiles - self.scored - self.failed,
                "score_min": self.lo, "score_mean": self.total / self.scored, "score_max": self.hi,
                "histogram": {"edges": np.linspace(0, 1, 11).round(1).tolist(), "counts": self.counts.tolist()}}


def _top(counts, n=3):
    return ", ".join(f"{k} x{v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:n])


def check_fraction(value, name):
    """value as a float in 0..1, else a UserError naming it (name: the option, e.g. --threshold)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number in 0..1, not {value!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise UserError(f"{name} must be in 0..1, not {value:g}")
    return value


_EXTS = {"heatmap": (".tif", ".tiff"), "candidates": (".gpkg",), "json": (".json",),
         "geojson": (".geojson", ".json")}


def _check_outputs(outputs):
    seen = {}
    for kind, path in outputs.items():
        if not path.lower().endswith(_EXTS[kind]):
            raise UserError(f"the {kind} output {path} must end with {' or '.join(_EXTS[kind])}")
        real = os.path.realpath(path)
        if real in seen:
            raise UserError(f"the {seen[real]} and {kind} outputs are the same file {path}")
        seen[real] = kind
        if os.path.isdir(path):
            raise UserError(f"the {kind} output {path} is a directory")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UserError(f"cannot write the {kind} output {path}: no such directory {folder}")
        probe = temp_path(path)
        try:
            with open(probe, "wb"):
                pass
        except OSError as exc:
            raise UserError(f"cannot write the {kind} output {path}: {exc.strerror or exc}") from None
        remove_if_present(probe)
