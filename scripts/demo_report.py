#!/usr/bin/env python3
"""The demo's last word: how well the model found the towers of the scene it never saw, at the threshold used.

.venv/bin/python scripts/demo_report.py --scores demo/results/original.json --towers demo/scene-b/towers.geojson \\
    --threshold 0.69 [--goal 0.8]

Tower tiles are the zoom-18 tiles holding a tower of --towers (the dataset's labels); a tile is flagged when its
score is at or above --threshold. Prints tower-tile precision and recall with their counts, and whether each meets
--goal. Exit 0 either way: the figures are the demo's report, not a test.
"""

import argparse
import json
import sys

import numpy as np


def report(scores_path, towers_path, threshold, goal=0.8):
    from tower_detector.datasets.labels import positive_tiles
    from tower_detector.sources.osm import load_towers

    with open(scores_path) as f:
        scores = json.load(f)
    towers = load_towers(towers_path)
    truth = {f"{x}-{y}-18" for x, y in positive_tiles(towers.lon, towers.lat, 18).tolist()}
    flagged = {tile for tile, score in scores.items() if score >= threshold}
    hits = len(flagged & truth)
    in_scene = len(truth & set(scores))
    precision = hits / len(flagged) if flagged else float("nan")
    recall = hits / in_scene if in_scene else float("nan")

    def line(name, value, k, n):
        spread = np.sqrt(value * (1 - value) / n) if n else float("nan")  # binomial standard error
        return (f"  {name:9s} {value:.2f} +/- {spread:.2f} ({k}/{n}), "
                f"{'meets' if value >= goal else 'MISSES'} the goal {goal}")

    return "\n".join([
        f"On the unseen scene ({len(scores):,} tiles, {in_scene} of them tower tiles), at the threshold "
        f"{threshold:.3f}:",
        line("precision", precision, hits, len(flagged)),
        line("recall", recall, hits, in_scene),
        "  (one scene and one training: the figures move with the seed; +/- is the binomial standard error)",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", required=True, help="results --json: {\"x-y-z\": score} of every tile")
    parser.add_argument("--towers", required=True, help="the scene's towers.geojson")
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--goal", type=float, default=0.8)
    args = parser.parse_args()
    try:
        print(report(args.scores, args.towers, args.threshold, args.goal))
    except (OSError, ValueError) as exc:
        print(f"demo_report: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
