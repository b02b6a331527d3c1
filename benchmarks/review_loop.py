"""The review -> retrain loop on synthetic scenes: do reviewed candidates teach the model, and how cheaply?

    .venv/bin/python -m benchmarks.review_loop [--work DIR] [--k 100] [--rounds 2] [--epochs 8] [--init-epochs 3]

Every step of the loop is the command line a user runs (`python -m tower_detector ...` in a child process); the
scenes are made and C is scored with the library functions that `synthetic` and `predict` use.

1. Scenes: A (48x48 tiles, --hv-lines 16, seed 7: the demo's training scene), B (32x32, seed 21: the scene the
   reviewer works through) and C (32x32, seed 23: unseen, for evaluation), each centred on its own spot so that
   they do not overlap; a VRT mosaic of A and B (the imagery a dataset that holds A's area and B's decided tiles
   reads).
2. v1: `dataset` of A (as the demo: --block-size 4 --seed 7), `train --backbone compact --weights none`.
3. A round r (1..--rounds): `predict` with v(r) on B, `results --candidates B.gpkg --threshold 0` (the same
   GeoPackage every round: results merges into it and keeps the decisions), a simulated reviewer decides the top
   --k unreviewed candidates by score from B's truth (confirmed where the tile is a tower tile by label-maker's
   rule, false_positive otherwise, written into the GeoPackage's status column as the QGIS dock does), `export
   labels`, `dataset --extra-labels` (A's area on the mosaic, plus every decided tile of B so far), and `train
   --init v(r) --epochs-fine --init-epochs` gives v(r+1). Round 2 thus reviews more of B, ranked by v2.
4. Controls (unless --no-control): v1 trained on A's dataset alone as many more epochs as each vN, no review
   ("vN ctl"), to tell the review's share of a gain from the extra epochs'.
5. v1, v2, ... and the controls are scored on every tile of C and compared with C's truth: ROC AUC, PR AUC,
   false positives and precision at recall 0.9 (the highest threshold that reaches it).

Goals (issue 32): false positives at recall 0.9 fall by >= 30 % from v1 to v2, and v2's training takes at most a
third of v1's (from scratch). Everything is kept in --work (default: a temporary folder); a rerun resumes: a step
whose output exists is skipped (trainings then report the times they recorded).
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np

LON, LAT = 28.28, -15.42  # the synthetic scenes' default centre
# name: (tiles a side, seed, centre longitude, extra synthetic options); 0.1 degrees apart: ~70 tiles at zoom 18
SCENES = {"A": (48, 7, LON, {"hv_lines": 16}), "B": (32, 21, LON + 0.1, {}), "C": (32, 23, LON - 0.1, {})}


def cli(*args, log=print):
    """Run `tower-detector ARGS` in a child process, as a user would; the wall seconds. A failure raises with the
    command's last stderr lines."""
    args = [str(a) for a in args]
    log("  $ tower-detector " + " ".join(args))
    t = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tower_detector", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"tower-detector {args[0]} failed ({done.returncode}): {done.stderr[-3000:]}")
    return time.monotonic() - t


def make_scene(folder, tiles, seed, lon=LON, options=None):
    """A synthetic scene in folder (made once, as `synthetic` makes it); its summary (info.json: the tile range)."""
    from tower_detector.synthetic import write_scene

    path = os.path.join(folder, "info.json")
    if not os.path.exists(path):
        info = write_scene(folder, tiles_x=tiles, tiles_y=tiles, seed=seed, lon=lon, lat=LAT, **(options or {}))
        with open(path, "w") as f:
            json.dump(info, f, default=str)
    return folder


def mosaic(path, scenes):
    """A VRT of the scenes' GeoTIFFs (all zoom-18 pixels on the tile grid, so they line up)."""
    if not os.path.exists(path):
        from osgeo import gdal

        gdal.UseExceptions()
        gdal.BuildVRT(path, [os.path.join(s, "scene.tif") for s in scenes]).FlushCache()
    return path


def truth_tiles(scene):
    """The scene's tower tiles (label-maker's rule), as a set of (x, y) at zoom 18."""
    from tower_detector.datasets.labels import positive_tiles
    from tower_detector.sources.osm import load_towers

    towers = load_towers(os.path.join(scene, "towers.geojson"))
    return {tuple(t) for t in positive_tiles(towers.lon, towers.lat, 18).tolist()}


DATASET_ARGS = ("--block-size", 4, "--seed", 7)  # the demo's


def dataset(out, area_scene, imagery, extra_labels=None, args=DATASET_ARGS, log=print):
    """`dataset` of area_scene's area and towers from imagery (the demo's settings unless args), with the review
    labels."""
    if not os.path.exists(os.path.join(out, "dataset.json")):
        cli("dataset", "--area", os.path.join(area_scene, "area.geojson"), "--towers",
            os.path.join(area_scene, "towers.geojson"), "--imagery", imagery, "--out", out, *args,
            *(["--extra-labels", extra_labels] if extra_labels else []), log=log)
    with open(os.path.join(out, "dataset.json")) as f:
        return json.load(f)


def train(data, out, epochs, init=None, image_size=None, batch_size=None, log=print):
    """`train` from scratch (compact backbone) or `--init` a model; {"wall": s or None (done before), "train": the
    training's own seconds, "metrics": metrics.json}."""
    wall = None
    if not os.path.exists(os.path.join(out, "metrics.json")):
        how = ["--init", init] if init else ["--backbone", "compact", "--weights", "none"]
        size = ["--image-size", image_size] if image_size else []
        batch = ["--batch-size", batch_size] if batch_size else []
        wall = cli("train", "--data", data, "--out", out, *how, "--epochs-fine", epochs, *size, *batch, log=log)
    with open(os.path.join(out, "metrics.json")) as f:
        result = json.load(f)
    return {"wall": wall, "train": result.get("train_seconds"), "metrics": result}


def candidates(model, scene, store, gpkg, log=print):
    """`predict` every tile of the scene with model into store, then `results --candidates gpkg --threshold 0`
    (every tile a candidate; an existing gpkg is merged into, its decisions kept)."""
    if not os.path.exists(store):
        cli("predict", "--model", model, "--imagery", os.path.join(scene, "scene.tif"), "--area",
            os.path.join(scene, "area.geojson"), "--out", store, "--batch-size", 32, log=log)
    cli("results", store, "--candidates", gpkg, "--threshold", 0, log=log)
    return gpkg


def review(gpkg, truth, k):
    """The simulated reviewer: the k best-scoring unreviewed candidates get status confirmed (a tower tile in the
    truth) or false_positive, written into the GeoPackage as the review dock does. {"confirmed": n,
    "false_positive": n}."""
    with sqlite3.connect(gpkg) as db:
        top = db.execute("SELECT tile_id, x, y FROM candidates WHERE coalesce(status, 'unreviewed') = 'unreviewed' "
                         "ORDER BY score DESC, tile_id LIMIT ?", (k,)).fetchall()
        decided = [("confirmed" if (x, y) in truth else "false_positive", tile) for tile, x, y in top]
        db.executemany("UPDATE candidates SET status = ?, reviewer = 'simulated' WHERE tile_id = ?", decided)
    return {s: sum(d == s for d, _ in decided) for s in ("confirmed", "false_positive")}


def kept_decisions(gpkg, data):
    """How many of the GeoPackage's decided tiles the dataset holds ({status: n}); the blocked splits drop tiles at a
    split's border, decided ones too."""
    import csv

    with open(os.path.join(data, "index.csv")) as f:
        held = {row["tile_id"] for row in csv.DictReader(f)}
    with sqlite3.connect(gpkg) as db:
        rows = db.execute("SELECT tile_id, status FROM candidates WHERE status IN ('confirmed', 'false_positive')")
        decided = rows.fetchall()
    return {s: sum(st == s and t in held for t, st in decided) for s in ("confirmed", "false_positive")}


def export_labels(gpkg, out, log=print):
    cli("export", "labels", "--candidates", gpkg, "--out", out, log=log)
    return out


def score_scene(model, scene):
    """Every tile of the scene scored by model: (labels bool array, scores)."""
    from benchmarks.train_quality import scene_tiles
    from tower_detector.sources.imagery import open_imagery
    from tower_detector.training.model import Classifier

    with open(os.path.join(scene, "info.json")) as f:
        tiles = scene_tiles(json.load(f))
    truth = truth_tiles(scene)
    with open_imagery(os.path.join(scene, "scene.tif")) as src:
        images, errors = src.fetch_batch(np.array([x for x, _ in tiles]), np.array([y for _, y in tiles]), 18)
    assert not any(errors)
    scores = Classifier(model).predict_with_points(images, batch_size=64)[0]
    return np.array([t in truth for t in tiles]), np.asarray(scores)


def quality(labels, scores, recall=0.9):
    """ROC AUC, PR AUC, and at the highest threshold reaching the recall: false positives and precision."""
    from tower_detector.training.evaluate import metrics

    m = metrics(labels, scores, target_recall=recall)
    cut = m["thresholds"][f"recall_{recall:g}"]
    chosen = scores >= cut
    return {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "threshold": cut, "fp": int((chosen & ~labels).sum()),
            "precision": float((chosen & labels).sum() / max(chosen.sum(), 1)), "towers": int(labels.sum()),
            "tiles": len(labels)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", help="keep scenes, datasets, models and candidates here (default: a temporary folder)")
    p.add_argument("--k", type=int, default=100, help="candidates the reviewer decides each round")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the loop (each gives a model)")
    p.add_argument("--epochs", type=int, default=8, help="v1's epochs from scratch")
    p.add_argument("--init-epochs", type=int, default=3, help="epochs of each warm-started training")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the controls: v1 trained on its own dataset, without the review, as many more epochs as "
                        "each warm start (control of v2: --init-epochs more; of v3: twice that; ...)")
    args = p.parse_args(argv)
    if args.k < 1 or args.rounds < 1 or args.epochs < 1 or args.init_epochs < 1:
        p.error("--k, --rounds, --epochs and --init-epochs must be at least 1")
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="review-loop-"))
    os.makedirs(work, exist_ok=True)
    say = lambda *a: print(*a, flush=True)  # noqa: E731

    t = time.monotonic()
    scenes = {name: make_scene(os.path.join(work, "scene-" + name), tiles, seed, lon, options)
              for name, (tiles, seed, lon, options) in SCENES.items()}
    imagery = mosaic(os.path.join(work, "A+B.vrt"), [scenes["A"], scenes["B"]])
    say(f"scenes: {time.monotonic() - t:.0f} s")

    ds = dataset(os.path.join(work, "ds-v1"), scenes["A"], os.path.join(scenes["A"], "scene.tif"), log=say)
    say(f"dataset v1: {ds['tiles']} tiles")
    models = {"v1": os.path.join(work, "v1")}
    runs = {"v1": train(os.path.join(work, "ds-v1"), models["v1"], args.epochs, log=say)}
    if args.control:  # what the extra epochs alone give, to tell the review's share from more training
        say("controls: v1 trained further on its own dataset, without review labels")
        before = models["v1"]
        for r in range(2, args.rounds + 2):
            name, folder = f"v{r} ctl", os.path.join(work, "v1-more" + ("" if r == 2 else f"-{r - 1}"))
            models[name], runs[name] = folder, train(os.path.join(work, "ds-v1"), folder, args.init_epochs,
                                                     init=before, log=say)
            before = folder
    truth_b, gpkg = truth_tiles(scenes["B"]), os.path.join(work, "B.gpkg")
    decisions = {}
    for r in range(1, args.rounds + 1):
        have, new = f"v{r}", f"v{r + 1}"
        say(f"round {r}: {have} predicts on B, the reviewer decides {args.k}, {new} is trained from {have}")
        done = os.path.join(work, f"review-{r}.json")  # the round's decisions, so that a rerun does not decide again
        if not os.path.exists(done):
            candidates(models[have], scenes["B"], os.path.join(work, f"store-B-{have}"), gpkg, log=say)
            with open(done, "w") as f:
                json.dump(review(gpkg, truth_b, args.k), f)
        with open(done) as f:
            decisions[new] = json.load(f)
        labels = export_labels(gpkg, os.path.join(work, f"labels-{r}.gpkg"), log=say)
        ds = dataset(os.path.join(work, f"ds-{new}"), scenes["A"], imagery, labels, log=say)
        kept = kept_decisions(gpkg, os.path.join(work, f"ds-{new}"))
        say(f"  decided {decisions[new]}; dataset {new}: {ds['tiles']} tiles, {ds['hard_negatives']} hard negatives, "
            f"{ds['review_tiles_outside_area']} review tiles outside A; decided tiles it holds {kept} (the others "
            "fell at split borders)")
        models[new] = os.path.join(work, new)
        runs[new] = train(os.path.join(work, f"ds-{new}"), models[new], args.init_epochs, init=models[have], log=say)

    say("")
    say(f"unseen scene C (seed {SCENES['C'][1]}, {SCENES['C'][0]}x{SCENES['C'][0]} tiles), every tile scored:")
    rows = {}
    for name in sorted(models, key=lambda n: (n.split()[0], n)):  # v1, v2, v2 ctl, v3, ...
        cached = os.path.join(work, f"scores-C-{os.path.basename(models[name])}.npz")
        if not os.path.exists(cached):
            np.savez(cached, **dict(zip(("labels", "scores"), score_scene(models[name], scenes["C"]))))
        with np.load(cached) as z:
            rows[name] = quality(z["labels"], z["scores"])
    first = rows["v1"]
    say(f"  tower tiles {first['towers']} of {first['tiles']}")
    say(f"  {'model':6} {'decided (conf/fp)':>18} {'train s':>8} {'wall s':>7} {'ROC AUC':>8} {'PR AUC':>7} "
        f"{'FP@R0.9':>8} {'prec@R0.9':>9}")
    for name, row in rows.items():
        d = decisions.get(name)
        dec = f"{d['confirmed']}/{d['false_positive']}" if d else "-"
        wall = runs[name]["wall"]
        say(f"  {name:6} {dec:>18} {runs[name]['train'] or 0:8.0f} {'(cached)' if wall is None else f'{wall:.0f}':>7} "
            f"{row['roc_auc']:8.4f} {row['pr_auc']:7.4f} {row['fp']:8d} {row['precision']:9.3f}")
    ok = True
    for name in [n for n in rows if n + " ctl" in rows]:
        say(f"  {name} vs {name} ctl (the same epochs without the review): false positives at recall 0.9 "
            f"x{rows[name]['fp'] / max(rows[name + ' ctl']['fp'], 1):.2f}")
    for name in [n for n in rows if n != "v1" and not n.endswith(" ctl")]:
        fp_ratio = rows[name]["fp"] / max(first["fp"], 1)
        time_ratio = (runs[name]["train"] or 0) / max(runs["v1"]["train"] or 1, 1e-9)
        say(f"  {name} vs v1: false positives at recall 0.9 x{fp_ratio:.2f} ({(1 - fp_ratio) * 100:+.0f} % fewer; "
            f"goal >= 30 %), training time x{time_ratio:.2f} (goal <= 0.33)")
        if name == "v2":
            ok = fp_ratio <= 0.7 and time_ratio <= 1 / 3
    with open(os.path.join(work, "summary.json"), "w") as f:
        json.dump({"quality": rows, "decisions": decisions, "training": {k: {"wall": v["wall"], "train": v["train"]}
                                                                          for k, v in runs.items()}}, f, indent=1)
    say(f"work folder: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
