"""Quality on the synthetic benchmark: train on one sample scene, score every tile of a scene with another seed.

    .venv/bin/python -m benchmarks.train_quality [--work DIR] [--tiles 64] [--image-size 96] [--epochs-fine 30] \\
        [--views 8] [--params p.json] [--weights FILE]

Steps, all timed in this run: a training scene (seed 11, N x N tiles) and its dataset (tower-detector dataset,
0.8/0.1/0.1 blocked splits); `train` with the default recipe (weights none, since no ImageNet download is possible
here: the from-scratch defaults, SCRATCH_PARAMS) at a small image size and the epochs that train on this 2-core CPU
within about 20 minutes; then every tile of a 32 x 32 evaluation scene made with seed 12 (different terrain, lines
and hard negatives) is scored with the saved model and compared with the true tower tiles (label-maker's rule).
--weights FILE starts from pretrained Xception notop weights instead (Keras's ImageNet file,
xception_weights_tf_dim_ordering_tf_kernels_notop.h5: docs/cli.md says where to get it; we ship none), with the
pretrained recipe's defaults (DEFAULT_PARAMS). Prints ROC AUC, accuracy at 0.5 and at the model's Youden threshold,
the ROC AUC of tower tiles against each kind of negative (tiles an HV line crosses, tiles with distribution poles,
the rest), training images/s, and the CAM point's median distance to the true tower against the tile centre's, and
how many tower-steel pixels the tower tiles hold (with the ROC AUC that count alone reaches: what the labels allow).
The scene is scored with one view a tile and again with --views N (predict --views: turned and mirrored copies
averaged; default 8), both printed. Goal: ROC AUC >= 0.95 on the evaluation scene, checked on the N-view scores
(--views 1: on one view).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import shapely

from tower_detector.common.errors import UserError
from tower_detector.datasets.dataset import build_dataset
from tower_detector.datasets.labels import positive_tiles
from tower_detector.geo.cover import lonlat_to_tile_space
from tower_detector.geo.tilemath import TILE_SIZE, resolution, tile_bounds_4326
from tower_detector.pipeline import options
from tower_detector.sources.imagery import open_imagery
from tower_detector.sources.osm import load_lines, load_towers
from tower_detector.synthetic import write_scene
from tower_detector.training.evaluate import metrics, roc_auc
from tower_detector.training.model import PRECISIONS, VIEWS, Classifier, check_weights
from tower_detector.training.train import train

TRAIN_SEED, EVAL_SEED = 11, 12  # the two scenes' seeds: different terrain, lines and hard negatives


def scene_tiles(info):
    xs = range(info["tile_range"]["x"][0], info["tile_range"]["x"][1] + 1)
    ys = range(info["tile_range"]["y"][0], info["tile_range"]["y"][1] + 1)
    return [(x, y) for x in xs for y in ys]


def scene(folder, tiles, seed):
    """The scene's info, generated once per work folder."""
    path = os.path.join(folder, "info.json")
    if not os.path.exists(path):
        info = write_scene(folder, tiles_x=tiles, tiles_y=tiles, seed=seed)
        with open(path, "w") as f:
            json.dump(info, f, default=str)
    with open(path) as f:
        return json.load(f)


def steel_pixels(tiles, info, seed, folder):
    """Pixels of tower steel in each tile of the scene made with `seed`, from its rendering (drawn again once,
    ~30 s, then kept in the scene's folder)."""
    from tower_detector.synthetic import plan_scene, render_scene

    x0, y0 = info["tile_range"]["x"][0], info["tile_range"]["y"][0]
    nx, ny = info["tile_range"]["x"][1] - x0 + 1, info["tile_range"]["y"][1] - y0 + 1
    path = os.path.join(folder, "steel_pixels.npy")
    if not os.path.exists(path):
        _, mask = render_scene(plan_scene(nx, ny, seed=seed))
        np.save(path, mask.reshape(ny, TILE_SIZE, nx, TILE_SIZE).sum(axis=(1, 3)))
    per_tile = np.load(path)
    return np.array([per_tile[y - y0, x - x0] for x, y in tiles])


def negative_kinds(tiles, scene_folder, positive):
    """Each tile's kind, for the AUC by kind of negative: tower, hv line (crossed by a power=line, no tower),
    pole (a distribution pole or minor line, no tower) or other."""
    path = os.path.join(scene_folder, "towers.geojson")
    boxes = shapely.box(*np.array([tile_bounds_4326(x, y, 18) for x, y in tiles]).T)

    def crossed(tag_filter):
        lines = load_lines(path, tag_filter=tag_filter)
        return shapely.intersects(boxes[:, None], lines.geometries[None, :]).any(axis=1) if len(lines) else \
            np.zeros(len(tiles), bool)

    poles = load_towers(path, tag_filter="power=pole")
    pole_tiles = {tuple(t) for t in positive_tiles(poles.lon, poles.lat, 18).tolist()}
    on_hv, on_minor = crossed("power=line"), crossed("power=minor_line")
    return np.array(["tower" if t in positive else "hv line" if hv else "pole" if (minor or t in pole_tiles)
                     else "other" for t, hv, minor in zip(tiles, on_hv, on_minor)])


def point_errors(points, tiles, towers):
    """Ground metres from each tower to its tile's CAM point, and to the tile's centre."""
    fx, fy = lonlat_to_tile_space(towers.lon, towers.lat, 18)
    metres = resolution(18) * np.cos(np.radians(np.mean(towers.lat)))  # ground metres per pixel
    index = {t: i for i, t in enumerate(tiles)}
    cam_err, centre_err = [], []
    for tx, ty in zip(fx, fy):
        key = (int(tx), int(ty))
        if key not in index:
            continue
        i = index[key]
        true_px = np.array([(tx - key[0]) * TILE_SIZE, (ty - key[1]) * TILE_SIZE])
        cam_err.append(np.hypot(*(points[i] - true_px)) * metres)
        centre_err.append(np.hypot(*(np.array([128, 128]) - true_px)) * metres)
    return cam_err, centre_err


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", help="keep the scenes, dataset and model here (default: a temporary folder)")
    p.add_argument("--tiles", type=int, default=64, help="training scene size in tiles a side")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--epochs-top", type=int, help="phase 1 epochs (default: the recipe's, 0 from scratch)")
    p.add_argument("--epochs-fine", type=int, default=30,
                   help="phase 2 epochs (default 30: what trains in 20 minutes on the 2-core Zen 4 at 96 px)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--background-ratio", type=float, default=3.0,
                   help="background tiles per tower tile in the training dataset (dataset --background-ratio)")
    p.add_argument("--span-negatives", type=float, default=0.0,
                   help="tiles along HV lines, clear of towers, per tower tile in the training dataset (dataset "
                        "--span-negatives)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="as train --precision (auto: mixed bfloat16 on a CPU with AMX-BF16 or AVX512-BF16)")
    p.add_argument("--views", type=int, default=8, choices=VIEWS,
                   help="also score the evaluation scene with this many views a tile (predict --views; default 8); "
                        "the goal is checked on that (1: on one view)")
    p.add_argument("--params", help="JSON of hyperparameters over the defaults (to try recipes for training from "
                   "scratch); docs/benchmarks/train_quality.md says which were used")
    p.add_argument("--weights", default="none", help="none (from scratch, the default) or an Xception notop .h5 "
                   "weights file, e.g. Keras's ImageNet one (train --weights FILE)")
    args = p.parse_args()
    if args.weights == "imagenet":
        p.error("--weights imagenet would download: give the downloaded notop .h5 file (docs/cli.md)")
    try:
        check_weights(args.weights)  # before any scene is made
    except UserError as exc:
        p.error(str(exc))
    work = args.work or tempfile.mkdtemp(prefix="train-quality-")
    os.makedirs(work, exist_ok=True)
    say = lambda *a: print(*a, flush=True)  # noqa: E731

    t = time.monotonic()
    train_scene, eval_scene = os.path.join(work, "train-scene"), os.path.join(work, "eval-scene")
    scene(train_scene, args.tiles, TRAIN_SEED)
    eval_info = scene(eval_scene, 32, EVAL_SEED)
    say(f"scenes: {time.monotonic() - t:.0f} s")

    t = time.monotonic()
    variant = ("" if args.background_ratio == 3 else f"-bg{args.background_ratio:g}") + \
        (f"-span{args.span_negatives:g}" if args.span_negatives else "")
    data = os.path.join(work, "dataset" + variant)
    if not os.path.exists(os.path.join(data, "dataset.json")):
        build_dataset(options("dataset", area=os.path.join(train_scene, "area.geojson"),
                              towers=os.path.join(train_scene, "towers.geojson"),
                              imagery=os.path.join(train_scene, "scene.tif"), out=data, split="0.8,0.1,0.1", seed=1,
                              block_size=8, background_ratio=args.background_ratio,
                              span_negatives=args.span_negatives), log=lambda *a: None)
    with open(os.path.join(data, "dataset.json")) as f:
        ds = json.load(f)
    say(f"dataset: {ds['tiles']} tiles " + ", ".join(f"{k} {v['tiles']} ({v['tower']} tower)"
                                                     for k, v in ds["splits"].items())
        + f"; {time.monotonic() - t:.0f} s")

    model_dir = os.path.join(work, ("model" if not args.params else "model-" + os.path.basename(args.params)[:-5])
                             + ("" if args.precision == "auto" else "-" + args.precision)
                             + ("" if args.weights == "none" else "-" + os.path.basename(args.weights).split(".")[0])
                             + variant)
    params = json.loads(open(args.params).read()) if args.params else {}
    params.update({"image_size": args.image_size, "epochs_phase2": args.epochs_fine, "batch_size": args.batch_size})
    if args.epochs_top is not None:
        params["epochs_phase1"] = args.epochs_top
    t = time.monotonic()
    result = train(data, model_dir, params, weights=args.weights, log=lambda m: say("  " + m),
                   precision=args.precision)
    train_seconds = time.monotonic() - t
    say(f"training ({result['dtype_policy']}): {train_seconds / 60:.1f} min, "
        f"{result['train_images_per_second']:.1f} images/s; "
        f"held-out test split ROC AUC {result['roc_auc']:.4f}")

    tiles = scene_tiles(eval_info)
    towers = load_towers(os.path.join(eval_scene, "towers.geojson"))
    positive = {tuple(t) for t in positive_tiles(towers.lon, towers.lat, 18).tolist()}
    labels = np.array([t in positive for t in tiles])
    classifier = Classifier(model_dir)
    t = time.monotonic()
    with open_imagery(os.path.join(eval_scene, "scene.tif")) as src:
        images, errors = src.fetch_batch(np.array([x for x, _ in tiles]), np.array([y for _, y in tiles]), 18)
    assert not any(errors)
    scores, points = classifier.predict_with_points(images, batch_size=64)
    predict_seconds = time.monotonic() - t
    m = metrics(labels, scores)
    youden = m["thresholds"]["youden"]
    acc_youden = float(((scores >= youden) == labels).mean()) if youden is not None else float("nan")

    cam_err, centre_err = point_errors(points, tiles, towers)

    say("")
    say(f"evaluation scene (seed {EVAL_SEED}, {len(tiles)} tiles, {int(labels.sum())} tower tiles):")
    say(f"  ROC AUC {m['roc_auc']:.4f} (goal >= 0.95), PR AUC {m['pr_auc']:.4f}")
    say(f"  accuracy {m['accuracy']:.4f} at 0.5; {acc_youden:.4f} at the model's Youden threshold "
        f"{youden if youden is None else round(youden, 3)}")
    say(f"  training {result['train_images_per_second']:.1f} images/s at {args.image_size} px "
        f"({train_seconds / 60:.1f} min in all); scoring {len(tiles) / predict_seconds:.1f} tiles/s with CAM points")
    kinds = negative_kinds(tiles, eval_scene, positive)
    for kind in ("hv line", "pole", "other"):
        pair = (kinds == "tower") | (kinds == kind)
        if (kinds == kind).any():
            say(f"  towers vs {kind} tiles ({int((kinds == kind).sum())}): ROC AUC "
                f"{roc_auc(labels[pair], scores[pair]):.4f}")
    say(f"  tower position: CAM point median {np.median(cam_err):.1f} m vs tile centre {np.median(centre_err):.1f} m "
        f"({len(cam_err)} towers)")
    auc = m["roc_auc"]
    if args.views > 1:
        t = time.monotonic()
        scores, points = Classifier(model_dir, views=args.views).predict_with_points(images, batch_size=64)
        seconds = time.monotonic() - t
        m = metrics(labels, scores)
        auc = m["roc_auc"]
        say(f"  with {args.views} views a tile (predict --views {args.views}): ROC AUC {auc:.4f}, PR AUC "
            f"{m['pr_auc']:.4f}; CAM point median {np.median(point_errors(points, tiles, towers)[0]):.1f} m; "
            f"scoring {len(tiles) / seconds:.1f} tiles/s")
    steel = steel_pixels(tiles, eval_info, EVAL_SEED, eval_scene)
    say(f"  what there is to see: a tower tile holds a median of {np.median(steel[labels]):.0f} tower-steel pixels of "
        f"{TILE_SIZE ** 2:,} (10th percentile {np.percentile(steel[labels], 10):.0f}); that count alone ranks tower "
        f"tiles at ROC AUC {roc_auc(labels, steel):.4f}, the labels' ceiling")
    say(f"work folder: {work}")
    return 0 if auc >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
