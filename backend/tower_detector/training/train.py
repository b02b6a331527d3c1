"""`tower-detector train`: the original project's two-phase transfer-learning recipe, streaming from disk, resumable.

Phase 1 trains the new top with the base frozen (epochs_phase1, lr_phase1); phase 2 makes the base's
layers from freeze_cutoff on trainable and fine-tunes (epochs_phase2, lr_phase2, reached by a linear warm-up over
warmup_epochs). Binary cross-entropy, or the focal loss (focal_gamma), with class weights; augmentation (flips,
90-degree turns, small rotations, zoom, brightness, contrast) on the training split only, at the tile's full size
before the resize; EarlyStopping and ReduceLROnPlateau (both on validation ROC AUC) per phase, or in phase 2 a
cosine decay (lr_schedule); TensorBoard logs; the best epoch by validation ROC AUC (over both phases) is what is
kept and evaluated on the test split.

A model directory appears only whole: the training runs in `<out>.partial`, which keeps state.json (what is being
trained and how far it got), Keras' BackupAndRestore checkpoint of the running phase (written after every epoch),
phase 1's final weights and the best weights so far, and which becomes `<out>` once the model, its metrics and
params are written (atomic.swap_in). Run the same command again after a kill or a failure and it goes on at the
epoch after the last one completed; a finished training is not redone, and a finished model directory is never
replaced by another training.

Input: a `tower-detector dataset` directory (index.csv + tiles/*.png, streamed from disk with tf.data, so
datasets bigger than memory train), or a label-maker data.npz (x_<split>/y_<split>), which is read into memory.
"""

import csv
import hashlib
import json
import math
import os
import shutil
import time

import numpy as np

from ..common.atomic import atomic_file, leftover_temps, remove_if_present, swap_in
from ..common.errors import UserError, one_line
from .card import verdict, write_card
from .evaluate import validation_summary
from .model import (
    VIEWS,
    after_resize,
    build_model,
    check_weights,
    dtype_policy,
    has_cells_head,
    has_gpu,
    point_layers,
    read_params,
    set_trainable,
    view,
    warn_if_slow_precision,
    write_params,
)
from .params import DEFAULT_PARAMS, check_backbone_weights, check_params, class_weight, default_params, head_of, renamed

TILE = 256
MONITOR = "val_auc"
FAR = -1e4  # a padding tower position, far off every tile
POINT_RADIUS = 12  # pixels of the 256-px tile around a tower point that count as the tower (it is ~20 px across)
POINT_POSITIVE_WEIGHT = 10.0  # a tower covers ~1 of 36 cells: its cells weigh this much more in the point loss


# --- the dataset --------------------------------------------------------------------------------------------
class TrainingData:
    """The splits of a dataset directory: {split: (paths or uint8 array, labels int array)} and a fingerprint."""

    def __init__(self, data_dir):
        self.dir = data_dir
        if not os.path.isdir(data_dir):
            raise UserError(f"no dataset directory at {data_dir}")
        index = os.path.join(data_dir, "index.csv")
        npz = os.path.join(data_dir, "data.npz")
        if os.path.isfile(index):
            self.splits, self.in_memory = self._from_index(index), False
        elif os.path.isfile(npz):
            self.splits, self.in_memory = self._from_npz(npz), True
        else:
            raise UserError(f"{data_dir} is not a dataset: it has neither index.csv nor data.npz "
                            "(build one with tower-detector dataset)")
        self.fingerprint = self._fingerprint(index if not self.in_memory else npz)
        towers = os.path.join(data_dir, "towers.csv")
        self.points = self._tower_points(towers) if os.path.isfile(towers) and not self.in_memory else None

    def _tower_points(self, path):
        """{split: (n, K, 2) float32 tower pixels per tile, padded far outside; (n,) bool: the tile's towers are
        known}. A tower tile without positions (a reviewed tower, an older dataset) is left out of the point
        loss rather than taught that it holds nothing."""
        by_tile = {}
        try:
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    by_tile.setdefault(row["tile_id"], []).append((float(row["px"]), float(row["py"])))
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        k = max([len(v) for v in by_tile.values()] + [1])
        out = {}
        for name, (paths, labels) in self.splits.items():
            points = np.full((len(paths), k, 2), FAR, np.float32)
            known = labels == 0
            for i, p in enumerate(paths):
                found = by_tile.get(os.path.basename(p).rsplit(".", 1)[0], ())
                if found:
                    points[i, :len(found)] = found
                    known[i] = True
            out[name] = (points, known)
        return out

    def _from_index(self, path):
        splits = {}
        try:
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    paths, labels = splits.setdefault(row["split"], ([], []))
                    paths.append(os.path.join(self.dir, row["path"]))
                    labels.append(int(row["label"]))
        except (OSError, KeyError, TypeError, ValueError, csv.Error) as exc:
            raise UserError(f"{path} is not a dataset index (split,path,label rows): {one_line(exc)}") from None
        splits = {k: (np.array(p), np.array(lab, dtype=np.int64)) for k, (p, lab) in splits.items()}
        self._check_images(splits)
        return splits

    @staticmethod
    def _check_images(splits):
        """Every tile is a 256x256 RGB image (headers only: cheap even for many tiles)."""
        from PIL import Image, UnidentifiedImageError

        for paths, _ in splits.values():
            for path in paths:
                try:
                    with Image.open(path) as im:
                        size, mode = im.size, im.mode
                except FileNotFoundError:
                    raise UserError(f"dataset tile {path} is missing") from None
                except (OSError, UnidentifiedImageError) as exc:
                    raise UserError(f"dataset tile {path} is not an image: {exc}") from None
                if size != (TILE, TILE) or mode != "RGB":
                    raise UserError(f"dataset tile {path} is {size[0]}x{size[1]} {mode}; tiles must be "
                                    f"{TILE}x{TILE} RGB (8-bit)")

    @staticmethod
    def _from_npz(path):
        try:
            data = np.load(path)
            names = {n[2:] for n in data.files if n.startswith("x_")}
            splits = {n: (data[f"x_{n}"], data[f"y_{n}"]) for n in names if f"y_{n}" in data.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        out = {}
        for name, (x, y) in splits.items():
            if x.ndim != 4 or x.shape[1:] != (TILE, TILE, 3) or x.dtype != np.uint8:
                raise UserError(f"{path}: x_{name} is {x.dtype} {x.shape}; images must be uint8 (n, {TILE}, {TILE}, 3)")
            if y.ndim != 2 or y.shape[1] != 2 or len(y) != len(x):
                raise UserError(f"{path}: y_{name} is {y.shape}; labels must be one-hot (n, 2) [background, tower]")
            out[name] = (x, y.argmax(axis=1).astype(np.int64))
        return out

    def _fingerprint(self, path):
        summary = os.path.join(self.dir, "dataset.json")
        if os.path.isfile(summary):
            try:
                with open(summary) as f:
                    return json.load(f)["fingerprint"]
            except (OSError, ValueError, KeyError):
                pass
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def roles(self, log):
        """(train, validation, test) split names: validation falls back to test when there is no val split."""
        names = set(self.splits)
        if "train" not in names:
            raise UserError(f"the dataset has no train split (it has {', '.join(sorted(names)) or 'none'})")
        test = "test" if "test" in names else "val" if "val" in names else None
        if test is None:
            raise UserError("the dataset has no test or val split to evaluate on: rebuild it with --split "
                            "0.7,0.15,0.15")
        val = "val" if "val" in names else test
        if val == test:
            log(f"no separate validation split: early stopping and the best epoch use the {test} split, so its "
                "metrics are optimistic (the original project did the same)")
        for role, name in (("training", "train"), ("validation", val), ("test", test)):
            labels = self.splits[name][1]
            n_tower = int(labels.sum())
            if len(labels) == 0 or n_tower in (0, len(labels)):
                what = "no tiles" if len(labels) == 0 else "only tower tiles" if n_tower else "no tower tiles"
                raise UserError(f"the {role} split ({name}) has {what} ({len(labels)} tiles): training needs both "
                                "classes in every split; use a bigger area, more towers or a smaller --block-size")
        return "train", val, test


def tf_dataset(data, split, image_size, batch_size, *, training, seed=0, point_grids=()):
    """A tf.data pipeline: read + decode (parallel), augment (training), resize, batch, prefetch.

    point_grids [(rows, cols), ...]: also yield, as inputs beside the image, each tile's tower cells on each of
    those grids (1 where a tower stands, moved with the image by the augmentation) and whether they are known."""
    import tensorflow as tf

    source, labels = data.splits[split]
    points, known = data.points[split] if point_grids else (np.zeros((len(labels), 1, 2), np.float32),
                                                           np.zeros(len(labels), bool))
    ds = tf.data.Dataset.from_tensor_slices((source, points, known.astype(np.float32), labels.astype(np.float32)))
    if training:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)

    def load(item, tower_points, tile_known, label):
        image = item if data.in_memory else tf.io.decode_png(tf.io.read_file(item), channels=3)
        image = tf.cast(tf.ensure_shape(image, (TILE, TILE, 3)), tf.float32)
        if point_grids:  # the tower mask rides along as a fourth channel through the augmentation
            image = tf.concat([image, _tower_mask(tower_points)], axis=-1)
        return image, tile_known, label

    def resize(image, tile_known, label):
        image = tf.image.resize(image, (image_size, image_size), antialias=True)
        rgb = _recolour(image[..., :3]) if training else image[..., :3]  # the tower mask (if any) is not recoloured
        if not point_grids:
            return rgb, label
        cells = [tf.cast(tf.image.resize(image[..., 3:], grid, method="area") > 0.02, tf.float32)
                 for grid in point_grids]
        return (rgb, *cells, tile_known), label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        # turned and zoomed at the tile's full size, then resized: at the model's smaller size the rotation would
        # interpolate a second time there and blur the one or two pixels that a tower's members cover
        ds = ds.batch(batch_size).map(lambda x, k, y: (_turn_and_zoom(x), k, y), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def _tower_mask(tower_points):
    """(TILE, TILE, 1) float32: 255 within POINT_RADIUS of any tower point, else 0."""
    import tensorflow as tf

    centres = tf.range(TILE, dtype=tf.float32) + 0.5
    dx = centres[None, :, None] - tower_points[None, None, :, 0]
    dy = centres[:, None, None] - tower_points[None, None, :, 1]
    inside = tf.reduce_any(dx * dx + dy * dy <= POINT_RADIUS**2, axis=-1)
    return tf.cast(inside, tf.float32)[..., None] * 255.0


def _turn_and_zoom(images):
    """A batch (n, TILE, TILE, c) each flipped or not, turned by a multiple of 90 degrees, rotated by up to
    +-11 degrees and zoomed by up to +-10 % about its centre, in one bilinear resampling per tile; reflected edges
    leave no black corners."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    angle = tf.random.uniform((n,), -0.03, 0.03) * 2 * math.pi + tf.cast(tf.random.uniform((n,), 0, 4, tf.int32),
                                                                        tf.float32) * (math.pi / 2)
    scale = tf.random.uniform((n,), 0.9, 1.1)  # input pixels per output pixel: above 1 zooms out
    flip = tf.where(tf.random.uniform((n,)) < 0.5, -1.0, 1.0)  # a mirror, then any turn: all 8 of the square's
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos  # output -> input pixel, about the centre
    centre = (TILE - 1) / 2
    transforms = tf.stack([a0, a1, centre * (1 - a0 - a1), b0, b1, centre * (1 - b0 - b1),
                           tf.zeros_like(a0), tf.zeros_like(a0)], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms, output_shape=[TILE, TILE],
                                                 fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")


def _recolour(images):
    """A batch's brightness (+-10 %) and contrast (0.8-1.2x) jittered, each tile its own."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    images = images + tf.random.uniform((n, 1, 1, 1), -0.1 * 255, 0.1 * 255)
    mean = tf.reduce_mean(images, axis=(1, 2), keepdims=True)
    images = (images - mean) * tf.random.uniform((n, 1, 1, 1), 0.8, 1.2) + mean
    return tf.clip_by_value(images, 0.0, 255.0)


# --- training -----------------------------------------------------------------------------------------------
def train(data_dir, out, params=None, weights="none", progress=None, log=print, precision="auto", in_place=False,
          init=None):
    """Train (or resume training) into the model directory `out`; returns the test metrics.

    precision: auto (mixed precision where the hardware runs it faster: float16 on a GPU, bfloat16 on a CPU
    with AMX-BF16 or AVX512-BF16), float32, or mixed. The saved model is float32 whatever it trained in, so it
    runs anywhere. in_place: train in `out` itself, not beside it (the remote worker, whose output is the S3
    copy of `out`, pushed while it trains). init: a trained model directory to start from (a warm start) instead
    of `weights`: its recipe is the base that params override, and its backbone and input size must stay."""
    progress = progress or (lambda *a, **k: None)
    dtype_policy(precision)  # a bad value fails before any work
    if init:
        init_params = _warm_start(init)
        weights = init_params.get("weights", "none")  # the graph a pretrained base has (batch norm frozen)
        params = check_params(params or {}, base=_warm_base(init_params))
        _check_same_network(init, init_params, params)
    else:
        check_weights(weights)
        params = check_params(params or {}, base=default_params(weights, (params or {}).get("backbone")))
        check_backbone_weights(params, weights)
    data = TrainingData(data_dir)
    train_split, val_split, test_split = data.roles(log)
    out = os.path.normpath(out)
    state, work = _start_state(out, params, weights, data, in_place, init=init)
    if state.get("finished"):
        if work != out:  # finished, but stopped before it was swapped in
            _publish(work, out)
        log(f"{out} already holds this finished training; returning its metrics")
        with open(os.path.join(out, "metrics.json")) as f:
            return json.load(f)

    import keras
    import tensorflow as tf

    gpu = has_gpu()
    policy = dtype_policy(precision, gpu)
    keras.utils.set_random_seed(params["seed"])
    counts = {k: (int(len(v[1]) - v[1].sum()), int(v[1].sum())) for k, v in data.splits.items()}
    weights_by_class = class_weight(params["class_weight"], *counts[train_split])
    log(f"training on {sum(counts[train_split])} tiles ({counts[train_split][1]} tower), validating on "
        f"{val_split} ({sum(counts[val_split])}), testing on {test_split} ({sum(counts[test_split])}); "
        f"class weights {weights_by_class}; {'GPU, XLA' if gpu else 'CPU'}, {policy}")
    warn_if_slow_precision(policy, log)
    if weights == "none" and params["epochs_phase1"] and not init:
        log(f"from scratch, phase 1's {params['epochs_phase1']} epoch(s) train a top over a random frozen base, which "
            "learns nothing (docs/experiments/training.md): --epochs-top 0 gives them to phase 2")
    size, batch = params["image_size"], params["batch_size"]
    # the model only: input and augmentation stay float32
    model, base = build_model(params, "none" if init else weights, policy, pretrained=weights != "none")
    if init:
        _load_init_weights(model, init)
        log(f"warm start from {init}")
    fit_model, grids = after_resize(model), ()  # the pipeline resizes the tiles (and XLA cannot)
    if params["point_loss_weight"] and data.points is None:
        log("the dataset has no tower positions (towers.csv; rebuild it with tower-detector dataset): training "
            "without the point loss")
    elif params["point_loss_weight"]:
        grids = _point_grids(model, base, size)
        fit_model = _with_point_loss(model, base, params["point_loss_weight"], pretrained=weights != "none",
                                     size=size)
    train_ds = tf_dataset(data, train_split, size, batch, training=params["augment"], seed=params["seed"],
                          point_grids=grids)
    val_ds = tf_dataset(data, val_split, size, batch, training=False, point_grids=grids)
    total = params["epochs_phase1"] + params["epochs_phase2"]
    ckpt = os.path.join(work, "checkpoints")
    os.makedirs(ckpt, exist_ok=True)
    best = _BestWeights(ckpt)
    epochs_run = []  # epochs completed in this process, for the training speed
    phases = [(1, params["epochs_phase1"], params["lr_phase1"]), (2, params["epochs_phase2"], params["lr_phase2"])]
    started = time.monotonic()
    try:
        for phase, epochs, lr in phases:
            if phase == 1 and state.get("phase1_done"):
                continue
            if phase == 2 and state.get("phase1_done") and os.path.exists(os.path.join(ckpt, "phase1.weights.h5")):
                model.load_weights(os.path.join(ckpt, "phase1.weights.h5"))
            set_trainable(model, base, phase, params["freeze_cutoff"])
            fit_model.compile(optimizer=_optimizer(params, lr), loss=tile_loss(params),
                              metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
                              jit_compile=gpu)
            if epochs:
                offset = 0 if phase == 1 else params["epochs_phase1"]
                steps = -(-sum(counts[train_split]) // batch)  # per epoch
                callbacks = _callbacks(work, phase, params, best, offset, total, progress, log, epochs_run, lr, steps,
                                       model)
                fit_model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=weights_by_class,
                              verbose=0, shuffle=False, callbacks=callbacks)  # tf.data shuffles
            if phase == 1:
                model.save_weights(os.path.join(ckpt, "phase1.weights.h5"))
                _save_state(work, dict(state, phase1_done=True))
                state["phase1_done"] = True
    except tf.errors.ResourceExhaustedError:
        raise UserError(f"out of memory with batch size {batch} at image size {size}: try --batch-size "
                        f"{max(batch // 2, 1)}") from None
    seconds = time.monotonic() - started
    # a fresh, uncompiled float32 copy: model.keras without the optimizer's state, which it does not need
    model = _copy_weights(model, build_model(params, "none")[0])
    if best.exists():
        model.load_weights(best.path)
        log(f"kept epoch {best.record['epoch']} (phase {best.record['phase']}), validation ROC AUC "
            f"{best.record['value']:.4f}")
    model.save(os.path.join(work, "model.keras"))

    from .evaluate import metrics, plot

    test_ds = tf_dataset(data, test_split, size, batch, training=False)
    by_view = _scores_by_view(after_resize(model), test_ds)
    scores = by_view[0]  # view 0 is the tile as it is: what predict gives with one view
    labels = data.splits[test_split][1]
    result = metrics(labels, scores)
    # predict --views N averages the first N views: its scores rank, and its thresholds fall, a little differently
    result["views"] = {str(n): {k: m[k] for k in ("roc_auc", "pr_auc", "thresholds", "at_thresholds")}
                       for n in VIEWS[1:] for m in [metrics(labels, by_view[:n].mean(axis=0))]}
    # the validation split's own figures: what search selects on (the test split only reports)
    val_labels = data.splits[val_split][1]
    val_scores = scores if val_split == test_split else _scores_by_view(
        after_resize(model), tf_dataset(data, val_split, size, batch, training=False), views=1)[0]
    result["validation"] = validation_summary(val_split, val_labels, val_scores, separate=val_split != test_split)
    result.update(split=test_split, train_seconds=round(seconds, 1),
                  train_images_per_second=round(len(epochs_run) * sum(counts[train_split]) / max(seconds, 1e-9), 2),
                  best_epoch=best.record, dtype_policy=policy)
    result["verdict"] = verdict(result)
    with open(os.path.join(work, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    _write_test_scores(os.path.join(work, "test_scores.csv"), data, test_split, scores)
    plot(result, work)
    write_params(work, params, weights=weights if weights in ("imagenet", "none") else os.path.basename(weights),
                 data_fingerprint=data.fingerprint, data_dir=os.path.abspath(data_dir), trained_on=train_split,
                 validated_on=val_split, tested_on=test_split, class_weights=weights_by_class,
                 **({"init": os.path.abspath(init)} if init else {}))
    write_card(work, data_dir, name=os.path.basename(out))
    _save_state(work, dict(state, finished=True))
    shutil.rmtree(os.path.join(work, "backup"), ignore_errors=True)
    if work != out:
        _publish(work, out)
    return result


def _publish(work, out):
    """The finished training in work becomes the model directory out, whole."""
    try:
        swap_in(work, out)
    except OSError as exc:
        raise UserError(f"the model is complete in {work} but cannot replace {out}: {exc.strerror or exc}; run the "
                        "same command again once it can") from None


def _scores_by_view(network, ds, views=VIEWS[-1]):
    """(views, n) scores of the tiles `ds` gives, each turned and mirrored as predict's views are (model.view)."""
    scores = []
    for images, _ in ds.as_numpy_iterator():
        n = len(images)
        out = network.predict_on_batch(np.concatenate([view(images, i) for i in range(views)]))
        scores.append(np.asarray(out, np.float32).reshape(views, n))
    return np.concatenate(scores, axis=1)


def _write_test_scores(path, data, split, scores):
    """Each test tile's label and score (9 digits: float32 exactly), so that analysts can open the tiles the model
    gets wrong."""
    source, labels = data.splits[split]
    names = ([os.path.relpath(p, data.dir) for p in source] if not data.in_memory
             else [f"x_{split}[{i}]" for i in range(len(labels))])  # data.npz: the row of its array
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tile", "label", "score"])
        writer.writerows((n, int(lab), f"{s:.9g}") for n, lab, s in zip(names, labels, scores))


def _point_grids(model, base, size):
    """(rows, cols) of each map the point loss teaches: a cells head's own map, else the base's point_layers."""
    if has_cells_head(model):
        return [tuple(base.output.shape[1:3])]
    return [tuple(base.get_layer(name).output.shape[1:3]) for name in point_layers(base, size)]


def _with_point_loss(model, base, weight, pretrained, size):
    """The classifier for fitting, with the point loss: on each of the base's point_layers maps (at 1/8 of the input,
    whose short path to the first layers teaches them early what a tower looks like, and at 1/16) a 1x1 convolution
    predicts which cells hold a tower, against the cells the dataset's tower positions give (weighted binary
    cross-entropy, each map's added to the tile loss while training). It shares every layer with `model`, which
    is what is saved; the heads are dropped then. Inputs: tile (size x size, as after_resize), tower cells on
    each map, known; output: the tile's P(tower). A cells head is taught on its own map instead: the cells it
    scores the tile by are the ones the loss names."""
    import keras

    class PointLoss(keras.layers.Layer):
        def call(self, inputs, training=None):
            tower, logits_by_map, cells_by_map, known = inputs
            if training:
                for logits, cells in zip(logits_by_map, cells_by_map):
                    cost = keras.ops.binary_crossentropy(cells, logits, from_logits=True)
                    cost = keras.ops.mean(cost * (1.0 + (POINT_POSITIVE_WEIGHT - 1.0) * cells), axis=(1, 2, 3))
                    self.add_loss(weight * keras.ops.sum(cost * known) / keras.ops.maximum(keras.ops.sum(known), 1.0))
            return tower

    cells_head = has_cells_head(model)
    point_maps = [] if cells_head else [base.get_layer(name).output for name in point_layers(base, size)]
    trunk = keras.Model(base.inputs, [base.output, *point_maps], name="trunk")
    tile = keras.Input((size, size, 3), name="tile")
    grids = _point_grids(model, base, size)
    cells = [keras.Input(grid + (1,), name=f"tower_cells_{i}") for i, grid in enumerate(grids)]
    known = keras.Input((), name="known")
    x = model.get_layer("scale")(tile)
    features, *point_features = trunk(x, training=False) if pretrained else trunk(x)
    if cells_head:
        logits = [model.get_layer("cells")(features)]
        features = model.get_layer("tower")(model.get_layer("pool")(logits[0]))
    else:
        for name in ("pool", "dense", "dropout", "tower"):
            features = model.get_layer(name)(features)
        logits = [keras.layers.Conv2D(1, 1, dtype="float32", name=f"point_head_{i}")(feature_map)
                  for i, feature_map in enumerate(point_features)]
    return keras.Model([tile, *cells, known], PointLoss(name="point_loss")([features, logits, cells, known]))


def _copy_weights(source, target):
    target.set_weights(source.get_weights())
    return target


def tile_loss(params):
    """The tile's loss: binary cross-entropy, or with focal_gamma > 0 the focal loss, which scales each tile's
    cross-entropy by (1 - p_true) ** focal_gamma so that the tiles already right weigh little beside the ones
    still wrong (grey roofs and boulders that look like steel, towers cut by the tile's edge)."""
    import keras

    if not params["focal_gamma"]:
        return keras.losses.BinaryCrossentropy()
    return keras.losses.BinaryFocalCrossentropy(gamma=params["focal_gamma"])


def _optimizer(params, lr):
    import keras

    if params["optimizer"] == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=params["momentum"], nesterov=True)
    if params["optimizer"] == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr)
    return keras.optimizers.Adam(learning_rate=lr)


def _callbacks(work, phase, params, best, offset, total, progress, log, epochs_run, lr, steps_per_epoch, classifier):
    """The phase's callbacks; in phase 2 the rate rises linearly to `lr` over its first warmup_epochs, then
    ReduceLROnPlateau cuts it (lr_schedule plateau) or it falls along half a cosine to zero at the phase's last
    epoch (cosine). The best epoch keeps `classifier`'s weights (the model being fitted may carry the point loss's
    heads too)."""
    import keras

    cosine = phase == 2 and params["lr_schedule"] == "cosine"

    class Phase2Rate(keras.callbacks.Callback):
        # Unfreezing a base at the full rate jolts it (the loss jumps; docs/experiments/training.md); a rate warmed
        # up from near 0 spares it, and pretrained features the same jolt.
        # Counted from the epoch number Keras resumes at, so a resumed training goes on where it was.
        def __init__(self, warmup_steps, steps):
            super().__init__()
            self.warmup, self.steps, self.epoch = warmup_steps, steps, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            step = self.epoch * steps_per_epoch + batch + 1
            if step <= self.warmup:
                rate = lr * step / self.warmup
            elif cosine:
                done = (step - self.warmup) / max(self.steps - self.warmup, 1)
                rate = lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
            else:
                return  # ReduceLROnPlateau alone sets the rate
            self.model.optimizer.learning_rate.assign(rate)

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            logs.setdefault("learning_rate", self.model.optimizer.learning_rate)  # ReduceLROnPlateau logs it too
            logs = {k: round(float(v), 5) for k, v in logs.items()}
            epochs_run.append(offset + epoch + 1)
            best.update(classifier, phase, offset + epoch + 1, logs.get(MONITOR))
            progress(offset + epoch + 1, total, stage="epochs", phase=phase, epoch=offset + epoch + 1, **logs)
            log(f"phase {phase} epoch {offset + epoch + 1}/{total}: " + ", ".join(f"{k} {v}" for k, v in logs.items()))

    return [
        keras.callbacks.BackupAndRestore(os.path.join(work, "backup", f"phase{phase}"), double_checkpoint=True),
        keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=params["early_stopping_patience"]),
    ] + ([] if cosine else [
        # on the same validation ROC AUC as early stopping: with class weights the unweighted val_loss rises while
        # the ranking still improves, and cut the learning rate at the 11th epoch of a run from scratch
        keras.callbacks.ReduceLROnPlateau(monitor=MONITOR, mode="max", factor=params["reduce_lr_factor"],
                                          patience=params["reduce_lr_patience"], min_lr=1e-7)]) + [
        keras.callbacks.TensorBoard(os.path.join(work, "tensorboard"), write_graph=False),
        Report(),
    ] + ([Phase2Rate(params["warmup_epochs"] * steps_per_epoch, params["epochs_phase2"] * steps_per_epoch)]
         if phase == 2 and (params["warmup_epochs"] > 0 or cosine) else [])


class _BestWeights:
    """The best epoch's weights by validation ROC AUC, across phases and restarts (best.json + weights)."""

    def __init__(self, folder):
        self.path = os.path.join(folder, "best.weights.h5")
        self._json = os.path.join(folder, "best.json")
        self.record = None
        if os.path.exists(self._json) and os.path.exists(self.path):
            with open(self._json) as f:
                self.record = json.load(f)

    def exists(self):
        return self.record is not None

    def update(self, model, phase, epoch, value):
        if value is None or not np.isfinite(value) or (self.record and value <= self.record["value"]):
            return
        tmp = self.path.replace(".weights.h5", ".tmp.weights.h5")  # Keras wants the .weights.h5 ending
        model.save_weights(tmp)
        os.replace(tmp, self.path)
        self.record = {"phase": phase, "epoch": epoch, "value": float(value), "monitor": MONITOR}
        with atomic_file(self._json) as f:
            json.dump(self.record, f)


# what makes two networks the same shape, so that one's weights load into the other
NETWORK = ("backbone", "head", "image_size", "dense_size", "dense_activation")


def _warm_start(init):
    """The params.json of the model to start from, checked before TensorFlow loads."""
    params = read_params(init)
    if not os.path.isfile(os.path.join(init, "model.keras")):
        raise UserError(f"--init {init}: the model directory has no model.keras")
    return params


def _warm_base(init_params):
    """The defaults a warm start's params override: the recipe its model was trained with; phase 1 (a new top over
    a frozen base) is skipped, since the top is trained already."""
    return {**default_params(init_params.get("weights", "none")),
            **{k: v for k, v in renamed(init_params).items() if k in DEFAULT_PARAMS}, "epochs_phase1": 0}


def _check_same_network(init, init_params, params):
    init_params = {"backbone": "xception", **init_params}  # models from before backbones were Xception
    for key in NETWORK:
        theirs, ours = ((head_of(init_params), head_of(params)) if key == "head"
                        else (init_params.get(key), params[key]))
        if theirs != ours:
            raise UserError(f"--init {init}: its {key} is {theirs}, this training's is {ours}: a warm start needs the "
                            f"same network (give --{key.replace('_', '-')} {theirs}, or train afresh without --init)")


def _load_init_weights(model, init):
    import keras

    path = os.path.join(init, "model.keras")
    try:
        model.set_weights(keras.saving.load_model(path, safe_mode=True, compile=False).get_weights())
    except Exception as exc:
        raise UserError(f"--init {init}: cannot load its weights into this network: {one_line(exc)[:300]}") from None


def _start_state(out, params, weights, data, in_place=False, init=None):
    """(state, folder): the finished training in `out`, or the one to run or resume in `<out>.partial` (in `out`
    itself with in_place); a different training in either is refused, so a finished model is never replaced."""
    identity = {"params": params, "weights": weights, "data_fingerprint": data.fingerprint}
    if init:  # the model started from, by what it holds rather than where it lies (a remote worker fetches it)
        with open(os.path.join(init, "params.json"), "rb") as f:
            described = hashlib.sha256(f.read()).hexdigest()
        identity["init"] = {"params_sha256": described, "size": os.path.getsize(os.path.join(init, "model.keras"))}
    partial = out if in_place else f"{out}.partial"
    for folder in dict.fromkeys([out, partial]):
        state = _read_state(folder)
        if state is None:
            _drop_unwritten_state(folder)
            if os.path.lexists(folder) and not (os.path.isdir(folder) and not os.listdir(folder)):
                raise UserError(f"{folder} exists and is not a training of ours: give a new or empty --out")
            continue
        if {k: renamed(state.get(k)) for k in identity} != identity:
            raise UserError(f"{folder} holds a different training (other data, parameters or weights): give a new "
                            "--out, or delete it to start again")
        return state, folder  # (an unfinished training in out itself, from an earlier version, resumes there)
    try:
        os.makedirs(partial, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the model to {partial}: {exc.strerror or exc}") from None
    _save_state(partial, identity)
    return identity, partial


def _drop_unwritten_state(folder):
    """A training killed as it began leaves its folder with no state.json but atomic_file's temp file of it: such
    a folder is still ours, and empty."""
    if os.path.isdir(folder) and not os.path.islink(folder):
        for tmp in leftover_temps(os.path.join(folder, "state.json")):
            remove_if_present(tmp)


def _read_state(folder):
    path = os.path.join(folder, "state.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _save_state(folder, state):
    with atomic_file(os.path.join(folder, "state.json")) as f:
        json.dump(state, f, indent=2)


__all__ = ["DEFAULT_PARAMS", "TrainingData", "tf_dataset", "train"]
