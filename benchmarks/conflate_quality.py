"""Conflation's quality on planted layouts: does it hide new towers, does it find the mapped ones, are its
possibly_misplaced flags right?

    .venv/bin/python -m benchmarks.conflate_quality [--seeds 5] [--osm PATH]

1. Parallel-line corridors (tests/fakes/planted_towers.py: lines 40-80 m apart, spans 250-450 m, 12 % of the mapped
   lines' towers taken out of OSM, 6 % moved 35-90 m, one line in three corridors missing from OSM, candidates
   one per tile with the model's point error of up to 15 m, 10 % false positives), for each seed.
2. Real OSM towers, when --osm (default ../shared/data/osm/nigeria_power_2018-04-04.geojson, beside the checkout)
   exists: the 1-degree cell with the most towers that have another support within 60 m; 10 % of its towers taken
   out, 5 % moved 35-90 m, candidates planted the same way. The data is read where it is, never copied.
Figures per seed, then summed: already_mapped recall on candidates of mapped towers, new towers hidden (status
already_mapped), removed towers flagged on_mapped_line, possibly_misplaced precision and recall; counts in brackets.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.fakes.candidates_helpers import rows
from tests.fakes.planted_towers import corridors, figures, on_real_towers
from tower_detector.review.conflate import conflate
from tower_detector.review.exports import pairs_within

REPO = Path(__file__).resolve().parent.parent

NIGERIA = REPO.parent / "shared" / "data" / "osm" / "nigeria_power_2018-04-04.geojson"
COLUMNS = ("already_mapped_recall", "new_towers_hidden", "removed_flagged_on_mapped_line",
           "possibly_misplaced_precision", "possibly_misplaced_recall")


def run(layout, work):
    path, osm = layout.write(work)
    t = time.perf_counter()
    conflate(path, osm)
    seconds = time.perf_counter() - t
    return figures(layout, rows(path)), seconds


def show(label, got, seconds=None):
    cells = []
    for key in COLUMNS:
        v = got[key]
        cells.append(f"{'n/a' if v['value'] is None else format(v['value'], '.3f')} ({v['count']}/{v['of']})")
    extra = f"  {seconds:.2f} s" if seconds is not None else ""
    print(f"{label:<14}" + "".join(f"{c:>22}" for c in cells) + extra)


def total(results):
    out = {}
    for key in COLUMNS:
        count, of = sum(r[key]["count"] for r in results), sum(r[key]["of"] for r in results)
        out[key] = {"value": round(count / of, 3) if of else None, "count": count, "of": of}
    return out


def header(title):
    print(f"\n{title}")
    print(f"{'':<14}" + "".join(f"{name[:21]:>22}" for name in
                                ("mapped recall", "new hidden", "removed on line", "misplaced precision",
                                 "misplaced recall")))


def real_area(path):
    """(tower lon, lat, lines as coordinate lists, cell, counts) of the densest 1-degree cell of an OSM GeoJSON."""
    with open(path, encoding="utf-8") as f:
        features = json.load(f)["features"]
    points = np.array([f["geometry"]["coordinates"] for f in features if f["geometry"]["type"] == "Point"
                       and f["properties"].get("power") in ("tower", "portal", "pole")], dtype=float)
    i, j, _ = pairs_within(points[:, 0], points[:, 1], points[:, 0], points[:, 1], 60.0)
    close = np.zeros(len(points), bool)
    close[i[i != j]] = True
    cell = np.floor(points).astype(int)
    keys, inverse = np.unique(cell, axis=0, return_inverse=True)
    best = keys[np.argmax(np.bincount(inverse.ravel(), weights=close))]
    inside = np.all(cell == best, axis=1)
    w, s = best
    lines = [f["geometry"]["coordinates"] for f in features if f["geometry"]["type"] == "LineString"
             and f["properties"].get("power") in ("line", "minor_line")]
    lines = [c for c in lines if any(w <= x < w + 1 and s <= y < s + 1 for x, y in c)]
    return points[inside, 0], points[inside, 1], lines, (int(w), int(s)), (int(close.sum()), len(points),
                                                                           int(close[inside].sum()))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--osm", default=str(NIGERIA), help="real OSM towers and lines, GeoJSON (part 2; skipped when "
                   "absent)")
    args = p.parse_args()
    seeds = range(args.seeds)

    header("1. parallel-line corridors (tests/fakes/planted_towers.py)")
    results = []
    with tempfile.TemporaryDirectory() as work:
        for seed in seeds:
            folder = os.path.join(work, f"corridors-{seed}")
            os.makedirs(folder)
            got, seconds = run(corridors(seed), folder)
            results.append(got)
            show(f"seed {seed}", got, seconds)
        show("all seeds", total(results))

        if not os.path.isfile(args.osm):
            print(f"\n2. real OSM towers: skipped, {args.osm} is not there (reference data, not part of the repo)")
            return
        lon, lat, lines, (w, s), (close_all, n_all, close_in) = real_area(args.osm)
        header(f"2. real OSM towers: {os.path.basename(args.osm)}, cell {w}..{w + 1} E, {s}..{s + 1} N: "
               f"{len(lon)} supports, {close_in} with another within 60 m (whole file: {close_all} of {n_all})")
        results = []
        for seed in seeds:
            folder = os.path.join(work, f"real-{seed}")
            os.makedirs(folder)
            got, seconds = run(on_real_towers(lon, lat, lines, seed), folder)
            results.append(got)
            show(f"seed {seed}", got, seconds)
        show("all seeds", total(results))


if __name__ == "__main__":
    main()
