"""The evaluation a skeptic accepts: a model scored on sparse scenes that nothing was tuned on, at country-like
density, plain and with the generator's realism, and on the old evaluation scene.

    .venv/bin/python -m benchmarks.evaluation [--work DIR] [--model DIR] [--seeds 201 202 203] [--tiles 64] \\
        [--variants sparse realistic old] [--views 1] [--budget 3]

The model: --model DIR, or the compact backbone trained as `make demo` trains it (scene A: 48 x 48 tiles, seed 7,
16 HV lines; 8 epochs), kept in --work. The evaluation scenes, each made once in --work:
  sparse     --tiles x --tiles tiles, one HV line (`synthetic --hv-lines 1`): 1 % or fewer tower tiles;
  realistic  the same with `--realism` (JPEG 75, low-contrast steel, 6 m lean, haze 0.25, confusers: telecom
             masts, substations, water towers);
  old        the train_quality benchmark's evaluation scene (32 x 32 tiles, seed 12, 9.7 % tower tiles).
The sparse and realistic scenes use the seeds --seeds, which nothing in the project was tuned on.
Every tile is scored; a tower tile holds a tower (label-maker's rule). Printed for each scene, and as mean +/- sd
over the seeds of a variant: ROC AUC, PR AUC (average precision), recall at a review budget of --budget candidates
per tower tile (the top scores), precision and false positives at recall 0.9, and the tower point's median error in
metres; each raw and after line re-scoring (`results --line-rescore`), where the results step has it. On scenes
with confusers, how many tiles of each kind are among the raw false positives at recall 0.9.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.review_loop import quality
from benchmarks.train_quality import point_errors, scene_tiles
from tower_detector.datasets.labels import positive_tiles
from tower_detector.sources.imagery import open_imagery
from tower_detector.sources.osm import load_towers
from tower_detector.training.evaluate import budget_table

TD = os.path.join(os.path.dirname(sys.executable), "tower-detector")
TRAIN_SCENE = ["--tiles-x", "48", "--tiles-y", "48", "--seed", "7", "--hv-lines", "16"]  # make demo's scene A
VARIANTS = {"sparse": ["--hv-lines", "1"], "realistic": ["--hv-lines", "1", "--realism"]}
OLD_SCENE = ["--tiles-x", "32", "--tiles-y", "32", "--seed", "12"]  # train_quality's evaluation scene


def say(text=""):
    print(text, flush=True)


def run(*args):
    done = subprocess.run([TD, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"tower-detector {args[0]} failed: {done.stderr.strip()[-2000:]}")
    return done


def scene(folder, args):
    """A scene made once: its write_scene summary (tile_range)."""
    info = os.path.join(folder, "info.json")
    if not os.path.exists(info):
        done = run("synthetic", "--out", folder, *args, "--events")
        result = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")][-1]
        with open(info, "w") as f:
            json.dump(result, f)
    with open(info) as f:
        return json.load(f)


def trained_model(work):
    """make demo's model: the compact backbone on scene A."""
    model = os.path.join(work, "model")
    if not os.path.exists(os.path.join(model, "metrics.json")):
        scene(os.path.join(work, "scene-a"), TRAIN_SCENE)
        a = os.path.join(work, "scene-a")
        run("dataset", "--area", f"{a}/area.geojson", "--towers", f"{a}/towers.geojson", "--imagery",
            f"{a}/scene.tif", "--out", os.path.join(work, "dataset"), "--block-size", 4, "--seed", 7)
        started = time.monotonic()
        run("train", "--data", os.path.join(work, "dataset"), "--out", model, "--backbone", "compact", "--weights",
            "none", "--epochs-fine", 8)
        say(f"trained the compact model in {(time.monotonic() - started) / 60:.1f} min")
    return model


def rescorer():
    """The results step's line re-scoring (results --line-rescore), where this checkout has it."""
    try:
        from tower_detector.results.topology import rescore_tiles
    except ImportError:
        return None
    return rescore_tiles


def figures(labels, scores, budget):
    """The headline figures of one scene's scores: review_loop's quality at recall 0.9, and the recall of a budget
    of `budget` candidates per tower tile (evaluate.budget_table)."""
    y = np.asarray(labels, bool)
    q = quality(y, np.asarray(scores, np.float32))
    return {"tower_tiles": q["towers"], "tiles": q["tiles"], "roc_auc": q["roc_auc"], "pr_auc": q["pr_auc"],
            f"recall_at_{budget}x": budget_table(y, scores, budgets=(budget,))[0]["recall"],
            "precision_at_r90": q["precision"], "fp_at_r90": q["fp"], "cut_at_r90": q["threshold"]}


def confusers_in_false_positives(folder, tiles, labels, scores):
    """{kind: [tiles of that confuser among the false positives at the recall, tiles holding one]} of a scene made
    with --confusers (its confusers.geojson); {} without."""
    path = os.path.join(folder, "confusers.geojson")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        features = json.load(f)["features"]
    cut = quality(np.asarray(labels, bool), np.asarray(scores, np.float32))["threshold"]
    false_positives = {t for t, label, score in zip(tiles, labels, scores) if not label and score >= cut}
    kinds = {}
    for feature in features:
        lon, lat = feature["geometry"]["coordinates"]
        tile = tuple(positive_tiles(np.array([lon]), np.array([lat]), 18).tolist()[0])
        kinds.setdefault(feature["properties"]["confuser"], set()).add(tile)
    return {kind: [len(found & false_positives), len(found)] for kind, found in sorted(kinds.items())}


def evaluate(folder, info, classifier, budget, rescore):
    tiles = scene_tiles(info)
    towers = load_towers(os.path.join(folder, "towers.geojson"))
    positive = {tuple(t) for t in positive_tiles(towers.lon, towers.lat, 18).tolist()}
    labels = np.array([t in positive for t in tiles])
    with open_imagery(os.path.join(folder, "scene.tif")) as src:
        images, errors = src.fetch_batch(np.array([x for x, _ in tiles]), np.array([y for _, y in tiles]), 18)
    assert not any(errors)
    scores, points = classifier.predict_with_points(images, batch_size=64)
    cam_err, _ = point_errors(points, tiles, towers)
    rows = {"raw": {**figures(labels, scores, budget), "point_median_m": float(np.median(cam_err)),
                    "confusers": confusers_in_false_positives(folder, tiles, labels, scores)}}
    if rescore is not None:
        xs, ys = np.array([t[0] for t in tiles]), np.array([t[1] for t in tiles])
        rows["line re-scored"] = figures(labels, rescore(xs, ys, 18, scores, points[:, 0], points[:, 1])[0], budget)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join("/tmp", "td-evaluation"))
    parser.add_argument("--model", help="a model directory (default: train make demo's compact model)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[201, 202, 203])
    parser.add_argument("--tiles", type=int, default=64, help="side of the sparse scenes in tiles")
    parser.add_argument("--variants", nargs="+", default=["sparse", "realistic", "old"],
                        choices=[*VARIANTS, "old"])
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--budget", type=int, default=3, help="candidates per tower tile")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)

    from tower_detector.training.model import Classifier

    model = args.model or trained_model(args.work)
    classifier = Classifier(model, views=args.views)
    rescore = rescorer()
    say(f"model {model} ({classifier.params.get('backbone')}), {args.views} view(s); line re-scoring: "
        f"{'yes' if rescore else 'not in this checkout'}")
    results = {}
    for variant in args.variants:
        seeds = [12] if variant == "old" else args.seeds
        for seed in seeds:
            if variant == "old":
                folder, scene_args = os.path.join(args.work, "old-12"), OLD_SCENE
            else:
                folder = os.path.join(args.work, f"{variant}-{args.tiles}-{seed}")
                scene_args = ["--tiles-x", args.tiles, "--tiles-y", args.tiles, "--seed", seed, *VARIANTS[variant]]
            started = time.monotonic()
            info = scene(folder, scene_args)
            rows = evaluate(folder, info, classifier, args.budget, rescore)
            results[(variant, seed)] = rows
            raw = rows["raw"]
            say(f"{variant} seed {seed}: {raw['tiles']:,} tiles, {raw['tower_tiles']} tower tiles "
                f"({raw['tower_tiles'] / raw['tiles']:.2%}); {time.monotonic() - started:.0f} s")
            for kind, r in rows.items():
                say(f"  {kind:15s} ROC AUC {r['roc_auc']:.3f}  PR AUC {r['pr_auc']:.3f}  recall@{args.budget}x "
                    f"{r[f'recall_at_{args.budget}x']:.2f}  precision@R0.9 {r['precision_at_r90']:.3f} "
                    f"(FP {r['fp_at_r90']})" + (f"  point median {r['point_median_m']:.1f} m"
                                                if "point_median_m" in r else ""))
            if rows["raw"]["confusers"]:
                say("  tiles with confusers among the raw false positives at recall 0.9: " + ", ".join(
                    f"{kind} {n}/{total}" for kind, (n, total) in rows["raw"]["confusers"].items()))
    say("")
    say(f"| variant | seeds | tower tiles | scoring | ROC AUC | PR AUC | recall at {args.budget}x | precision at "
        "recall 0.9 | FP at recall 0.9 | point median |")
    say("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant in args.variants:
        keys = [k for k in results if k[0] == variant]
        for kind in results[keys[0]]:
            rows = [results[k][kind] for k in keys]

            def cell(name, digits=2, rows=rows):
                values = np.array([r[name] for r in rows if r.get(name) is not None], float)
                if not len(values):
                    return "-"
                return f"{values.mean():.{digits}f}" + (f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1
                                                        else "")

            say(f"| {variant} | {', '.join(str(k[1]) for k in keys)} | "
                f"{'/'.join(str(r['tower_tiles']) for r in rows)} | {kind} | {cell('roc_auc', 3)} | "
                f"{cell('pr_auc', 3)} | {cell(f'recall_at_{args.budget}x')} | {cell('precision_at_r90', 3)} | "
                f"{cell('fp_at_r90', 0)} | {cell('point_median_m', 1)} m |")


if __name__ == "__main__":
    main()
