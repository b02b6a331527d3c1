"""What line-topology re-scoring (`results --line-rescore`, results/topology.py) gains and where it hurts.

    .venv/bin/python -m benchmarks.line_rescore --scene DIR [--scene DIR ...] [--seeds 5] [--store STORE]
    .venv/bin/python -m benchmarks.line_rescore --osm [PATH] [--seeds 5]

Truth: a synthetic scene folder (`tower-detector synthetic`: towers.geojson, area.geojson and, with --confusers,
confusers.geojson; a sparse one is `--hv-lines 1`), or with --osm real mapped towers (default
../shared/data/osm/nigeria_power_2018-04-04.geojson, read where it is): the WINDOW_DEG square with the most towers.
Tower tiles follow label-maker's rule (datasets.labels.positive_tiles).

Scores: with --store, a results store `predict` wrote over the one --scene (a real model's scores and CAM points).
Without, a stated score model, one draw per seed, so the figures are the mechanism's, not a model's: each tile's
logit is normal (SD) around a mean by kind: a tower tile MU["tower"] (but a tower missed, P_MISS of them, scores
as background: a gap in the chain), a confuser's tile MU["confuser"] (the scene's confusers, or with --osm random
points CONFUSERS_PER_KM2 per km²), a tile a mapped line crosses MU["line"], the rest MU["background"]; the CAM point
is the tower's point off by CAM_ERROR_M (a tower tile), else anywhere in the tile. Errors are drawn independently
tile by tile unless --block-sd adds one shared by each ~1 km block (terrain the model finds hard: a tower's
neighbours then score low with it). Confusers standing in rows a span apart (a fence of masts, a street of
sheds) would gain; neither the scenes' confusers nor the random ones are laid out so.

Prints, per scene and seed and then their mean: tiles, tower tiles, the raw ROC AUC, precision at recall 0.9 raw
and re-scored, recall at a budget of 2 candidates per tower tile raw and re-scored (evaluate.rescore_gain), and the
recall at that budget of each kind of tower tile (by its tower's place on the true line, topology's own rule on the
true points: mid-line, a line's end, a single tower, and mid-line or end towers whose true neighbours all scored
below the floor: a gap), raw and re-scored, with their counts.
"""

import argparse
import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import shapely

from tower_detector.datasets.labels import positive_tiles
from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import lonlat_to_tile_space, tile_cover
from tower_detector.results.topology import FLOOR, neighbour_support, rescore_tiles
from tower_detector.training.evaluate import rescore_gain, roc_auc

REPO = Path(__file__).resolve().parent.parent
NIGERIA = REPO.parent / "shared" / "data" / "osm" / "nigeria_power_2018-04-04.geojson"
Z = 18
MU = {"tower": 1.5, "confuser": -1.5, "line": -2.5, "background": -4.0}  # logit means of the score model
SD = 1.2
P_MISS = 0.05
CAM_ERROR_M = 15.0
WINDOW_DEG = 0.25
CONFUSERS_PER_KM2 = 10.0
PER_TOWER_TILE = 2  # the review budget: candidates per tower tile
KINDS = ("mid", "end", "single", "gap")
BLOCK_TILES = 7  # --block-sd: the side of a block sharing one logit offset (about 1 km at zoom 18)


def scene_truth(folder):
    """(tiles (n, 2) of the scene's rectangle, towers lon/lat (m, 2), lines [LineString], confusers lon/lat)."""
    cover = tile_cover(load_area(os.path.join(folder, "area.geojson")), Z)
    x0, y0, x1, y1 = cover.bounds()
    features = json.loads(Path(folder, "towers.geojson").read_text())["features"]
    towers = np.array([f["geometry"]["coordinates"] for f in features if f["properties"].get("power") == "tower"])
    lines = [shapely.LineString(f["geometry"]["coordinates"]) for f in features
             if f["properties"].get("power") == "line"]
    path = Path(folder, "confusers.geojson")
    confusers = np.array([f["geometry"]["coordinates"] for f in json.loads(path.read_text())["features"]
                          if f["geometry"]["type"] == "Point"]) if path.exists() else np.zeros((0, 2))
    return _rectangle(x0, y0, x1, y1), towers.reshape(-1, 2), lines, confusers.reshape(-1, 2)


def osm_truth(path, rng):
    """The WINDOW_DEG square (on a grid of them) holding the most mapped towers, its lines, random confusers."""
    features = _features(path)
    towers = np.array([f["geometry"]["coordinates"] for f in features
                       if f["geometry"]["type"] == "Point" and f["properties"].get("power") == "tower"])
    cells, counts = np.unique(np.floor(towers / WINDOW_DEG).astype(int), axis=0, return_counts=True)
    w, s = cells[np.argmax(counts)] * WINDOW_DEG
    inside = np.all((towers >= (w, s)) & (towers < (w + WINDOW_DEG, s + WINDOW_DEG)), axis=1)
    box = shapely.box(w, s, w + WINDOW_DEG, s + WINDOW_DEG)
    lines = [shapely.LineString(f["geometry"]["coordinates"]) for f in features
             if f["geometry"]["type"] == "LineString" and f["properties"].get("power") == "line"]
    lines = [g for g in lines if g.intersects(box)]
    (x0, x1), (y1, y0) = (np.floor(v).astype(int) for v in lonlat_to_tile_space([w, w + WINDOW_DEG],
                                                                                 [s, s + WINDOW_DEG], Z))
    km2 = (WINDOW_DEG * 111.32) ** 2 * math.cos(math.radians(s + WINDOW_DEG / 2))
    n = rng.poisson(CONFUSERS_PER_KM2 * km2)
    confusers = np.stack([rng.uniform(w, w + WINDOW_DEG, n), rng.uniform(s, s + WINDOW_DEG, n)], axis=1)
    return _rectangle(x0, y0, x1, y1), towers[inside], lines, confusers


@functools.cache
def _features(path):
    return json.loads(Path(path).read_text())["features"]


def _rectangle(x0, y0, x1, y1):
    xs, ys = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)


def index_of(tiles, wanted):
    """Row of each wanted (x, y) in tiles (-1 where absent)."""
    key = tiles[:, 0] << 32 | tiles[:, 1]
    order = np.argsort(key)
    want = np.asarray(wanted, np.int64).reshape(-1, 2)
    want = want[:, 0] << 32 | want[:, 1]
    at = np.clip(np.searchsorted(key[order], want), 0, len(key) - 1)
    return np.where(key[order][at] == want, order[at], -1)


def tower_kinds(towers):
    """Each true tower's place on its line by topology's rule on the true points: mid, end or single."""
    fx, fy = lonlat_to_tile_space(towers[:, 0], towers[:, 1], Z)
    support = neighbour_support(fx, fy, Z, np.ones(len(fx), np.float32))
    return np.where(support >= 0.99, "mid", np.where(support > 0, "end", "single"))


def label(tiles, towers, lines, confusers):
    """Per tile: its kind ("tower", "confuser", "line", "background") and the towers it holds (list per tile)."""
    kind = np.full(len(tiles), "background", dtype=object)
    for geom in lines:
        pts = shapely.line_interpolate_point(geom, np.arange(0, geom.length, 0.0001))  # ~11 m steps
        fx, fy = lonlat_to_tile_space(shapely.get_x(pts), shapely.get_y(pts), Z)
        at = index_of(tiles, np.stack([np.floor(fx), np.floor(fy)], axis=1))
        kind[at[at >= 0]] = "line"
    if len(confusers):
        fx, fy = lonlat_to_tile_space(confusers[:, 0], confusers[:, 1], Z)
        at = index_of(tiles, np.stack([np.floor(fx), np.floor(fy)], axis=1))
        kind[at[at >= 0]] = "confuser"
    holds = [[] for _ in range(len(tiles))]
    for t, (lon, lat) in enumerate(towers):
        for i in index_of(tiles, positive_tiles(lon, lat, Z)):
            if i >= 0:
                kind[i] = "tower"
                holds[i].append(t)
    return kind, holds


def simulate(tiles, towers, kind, holds, rng, block_sd=0.0):
    """(score, cam_x, cam_y) of the stated score model (module docstring); block_sd: a logit offset shared by the
    tiles of each BLOCK_TILES square (terrain the model finds hard or easy), normal with this SD."""
    missed = rng.random(len(towers)) < P_MISS
    mu = np.array([MU[k] for k in kind])
    if block_sd:
        _, block = np.unique(tiles // BLOCK_TILES, axis=0, return_inverse=True)
        mu = mu + rng.normal(0, block_sd, block.max() + 1)[block.ravel()]
    hit = np.array([bool(h) and not all(missed[t] for t in h) for h in holds])
    mu[(kind == "tower") & ~hit] = MU["background"]
    score = (1 / (1 + np.exp(-rng.normal(mu, SD)))).astype(np.float32)
    cam_x, cam_y = rng.uniform(0, 256, len(tiles)), rng.uniform(0, 256, len(tiles))
    for i in np.flatnonzero(hit):
        t = next(t for t in holds[i] if not missed[t])
        lon, lat = towers[t]
        metres = 2 * math.pi * 6378137 / (1 << Z) / 256 * math.cos(math.radians(lat))
        fx, fy = lonlat_to_tile_space([lon], [lat], Z)
        off = rng.normal(0, CAM_ERROR_M / metres, 2)
        cam_x[i] = np.clip((fx[0] - tiles[i, 0]) * 256 + off[0], 0, 255.99)
        cam_y[i] = np.clip((fy[0] - tiles[i, 1]) * 256 + off[1], 0, 255.99)
    return score, cam_x.astype(np.float32), cam_y.astype(np.float32)


def store_scores(spec, tiles):
    """(score, cam_x, cam_y) of the tiles from a results store (NaN where not scored)."""
    from tower_detector.prediction.store import open_store

    score = np.full(len(tiles), np.nan, np.float32)
    cam_x, cam_y = score.copy(), score.copy()
    store = open_store(spec)
    try:
        for _, _, c in store.iter_chunks(sorted(store.done_chunks())):
            at = index_of(tiles, np.stack([c["x"], c["y"]], axis=1).astype(np.int64))
            ok = at >= 0
            score[at[ok]], cam_x[at[ok]], cam_y[at[ok]] = c["score"][ok], c["cam_x"][ok], c["cam_y"][ok]
    finally:
        store.close()
    return score, cam_x, cam_y


def measure(tiles, towers, kind, holds, score, cam_x, cam_y, lines=None):
    ok = ~np.isnan(score)
    tiles, kind, score, cam_x, cam_y = tiles[ok], kind[ok], score[ok], cam_x[ok], cam_y[ok]
    holds = [h for h, k in zip(holds, ok) if k]
    rescored, _ = rescore_tiles(tiles[:, 0], tiles[:, 1], Z, score, cam_x, cam_y, lines=lines)
    y = kind == "tower"
    budget = int(PER_TOWER_TILE * y.sum())
    gain = rescore_gain(y, score, rescored, recall=0.9, budget=budget)
    # each tower tile's kind: its best tower's place on the true line; a gap when no true neighbour was detected
    place = tower_kinds(towers)
    found = np.zeros(len(towers), bool)
    for i in np.flatnonzero(y & (score >= FLOOR)):
        found[holds[i]] = True
    fx, fy = lonlat_to_tile_space(towers[:, 0], towers[:, 1], Z)
    detected = neighbour_support(fx, fy, Z, found.astype(np.float32))  # > 0: a true neighbour was detected
    rank = {"mid": 0, "end": 1, "gap": 2, "single": 3}
    tile_kind = np.full(len(tiles), None, dtype=object)
    for i in np.flatnonzero(y):
        kinds = ["gap" if place[t] != "single" and detected[t] == 0 else place[t] for t in holds[i]]
        tile_kind[i] = min(kinds, key=rank.get)
    by_kind = {}
    for k in KINDS:
        m = tile_kind == k
        if m.any():
            by_kind[k] = {"n": int(m.sum())}
            for name, s in (("raw", score), ("rescored", rescored)):
                top = np.argsort(-s, kind="stable")[:budget]
                by_kind[k][name] = float(np.isin(np.flatnonzero(m), top).mean())
    return {"tiles": int(len(tiles)), "tower_tiles": int(y.sum()), "roc_auc": roc_auc(y, score.astype(np.float64)),
            **gain, "by_kind": by_kind}


def show(label, r):
    p, b = r["precision_at_recall"], r["recall_at_budget"]
    kinds = "  ".join(f"{k} {v['raw']:.2f}->{v['rescored']:.2f} ({v['n']})" for k, v in r["by_kind"].items())
    print(f"{label:<22} {r['tiles']:>6} {r['tower_tiles']:>5} {r['roc_auc']:.3f}  P@R0.9 {p['raw']:.3f}->"
          f"{p['rescored']:.3f}  R@budget {b['raw']:.3f}->{b['rescored']:.3f}  {kinds}")


def mean(results):
    out = {k: round(float(np.mean([r[k] for r in results]))) for k in ("tiles", "tower_tiles")}  # per draw
    out["roc_auc"] = float(np.mean([r["roc_auc"] for r in results]))
    for key in ("precision_at_recall", "recall_at_budget"):
        out[key] = {v: float(np.mean([r[key][v] for r in results])) for v in ("raw", "rescored")}
    out["by_kind"] = {}
    for k in KINDS:
        have = [r["by_kind"][k] for r in results if k in r["by_kind"]]
        if have:
            out["by_kind"][k] = {"n": sum(h["n"] for h in have),
                                 **{v: float(np.mean([h[v] for h in have])) for v in ("raw", "rescored")}}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", action="append", default=[], help="a synthetic scene folder (repeatable)")
    p.add_argument("--osm", nargs="?", const=str(NIGERIA), help="real mapped towers (GeoJSON; default: Nigeria)")
    p.add_argument("--store", help="a results store over the one --scene: a real model's scores")
    p.add_argument("--seeds", type=int, default=5, help="draws of the score model per scene (default 5)")
    p.add_argument("--with-lines", action="store_true", help="also give the scene's mapped lines (--lines)")
    p.add_argument("--block-sd", type=float, default=0.0, help="score model: errors shared by each ~1 km block, "
                   "a logit offset with this SD (default 0: independent tile by tile)")
    args = p.parse_args(argv)
    if args.store and len(args.scene) != 1:
        p.error("--store needs exactly one --scene")
    if not args.scene and not args.osm:
        p.error("give --scene DIR or --osm")
    print(f"{'scene':<22} {'tiles':>6} {'tower':>5} AUC    (raw->re-scored; by kind: recall at the budget of "
          f"{PER_TOWER_TILE} per tower tile)")
    everything = []
    for folder in args.scene:
        tiles, towers, lines, confusers = scene_truth(folder)
        kind, holds = label(tiles, towers, lines, confusers)
        given = lines if args.with_lines else None
        if args.store:
            r = measure(tiles, towers, kind, holds, *store_scores(args.store, tiles), lines=given)
            show(f"{Path(folder).name} (store)", r)
            everything.append(r)
            continue
        runs = []
        for seed in range(args.seeds):
            r = measure(tiles, towers, kind, holds, *simulate(tiles, towers, kind, holds,
                                                              np.random.default_rng(seed), args.block_sd),
                        lines=given)
            show(f"{Path(folder).name} seed {seed}", r)
            runs.append(r)
        show(f"{Path(folder).name} mean", mean(runs))
        everything += runs
    if args.osm:
        runs = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            tiles, towers, lines, confusers = osm_truth(args.osm, rng)
            kind, holds = label(tiles, towers, lines, confusers)
            r = measure(tiles, towers, kind, holds, *simulate(tiles, towers, kind, holds, rng, args.block_sd),
                        lines=lines if args.with_lines else None)
            show(f"osm seed {seed}", r)
            runs.append(r)
        show("osm mean", mean(runs))
        everything += runs
    if len(everything) > 1:
        show("all mean", mean(everything))


if __name__ == "__main__":
    main()
