"""The tile classifier: the original project's Xception transfer-learning model (or a smaller backbone), its
hyperparameters and its model directory.

Model directory (the contract with predict, the plugin and remote jobs):
  model.keras    the Keras 3 model; input: (None, None, 3) RGB float 0..255 (any size: resized inside to
                 image_size), output: (None, 1) P(tower). Preprocessing lives in the model, so callers feed
                 the 256-px tiles as they come.
  params.json    {"format", "version", every hyperparameter, image_size, preprocessing, class_order,
                 data_fingerprint, tower_detector_version, ...}
  metrics.json   evaluation on the test split (evaluate.py);  roc.png, scores.png;  tensorboard/
  MODEL_CARD.md  the card, for people (card.py)

Architecture: Resizing(image_size) -> Rescaling to [-1, 1] (the preprocessing of every backbone here) -> the
backbone (params' backbone, include_top=False: Xception, MobileNetV3-Small or EfficientNetV2-B0; or compact, our
own small network) -> the head (params.head_of): dense, GlobalAveragePooling ("pool") -> Dense(dense_size,
dense_activation, weight_init) -> Dropout -> Dense(1, sigmoid, float32); or cells, a 1x1 convolution giving each
cell of the base's map a tower logit ("cells") -> GlobalMaxPooling ("pool") -> sigmoid ("tower"): the tile is as
likely a tower as its likeliest cell, and the cells are taught where the towers stand (the point loss).
With pretrained weights the base is called with training=False, so
its BatchNormalization layers stay in inference mode while fine-tuning (their statistics were learnt on far
more data than ours; updating them from small batches wrecks the features). Trained from scratch
(weights none), they learn normally, with a momentum of 0.9 so their moving averages keep up.
"""

import concurrent.futures
import functools
import json
import math
import os
import threading
import time
import zipfile

import numpy as np

from .. import __version__
from ..common.errors import UserError, one_line
from .params import DEFAULT_PARAMS, check_params, head_of

FORMAT = "tower-detector/model"
VERSION = 1
CLASS_ORDER = ["background", "tower"]
PREPROCESSING = "resize to image_size (bilinear, antialiased), then x / 127.5 - 1"

def build_model(params, weights="none", policy="float32", pretrained=None):
    """The classifier and its base (params' backbone). weights: "imagenet", "none", or the backbone's notop
    weights file; policy: the Keras dtype policy its layers compute in (the global policy is float32 again afterwards);
    pretrained: build the graph of a pretrained base (batch norm frozen) whatever weights are loaded, as a warm
    start from a pretrained model does (default: weights != "none")."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        return _build_model(params, weights, weights != "none" if pretrained is None else pretrained)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _build_model(params, weights, pretrained):
    import keras

    size = params["image_size"]
    base = _backbone(params["backbone"], size, weights)
    inputs = keras.Input(shape=(None, None, 3), name="tile")
    x = keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True, name="resize")(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(x)
    if pretrained:
        x = base(x, training=False)
    else:
        # from scratch the features change fast: statistics that follow them closely keep validation (which
        # uses the moving averages) in step with training; Keras' default momentum 0.99 lags far behind them
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        x = base(x)
    if head_of(params) == "cells":
        x = keras.layers.Conv2D(1, 1, dtype="float32", name="cells")(x)
        x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
        outputs = keras.layers.Activation("sigmoid", dtype="float32", name="tower")(x)
        return keras.Model(inputs, outputs, name="tower_classifier"), base
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(params["dense_size"], activation=params["dense_activation"],
                           kernel_initializer=params["weight_init"], name="dense")(x)
    x = keras.layers.Dropout(params["dropout"], seed=params["seed"], name="dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="tower")(x)
    return keras.Model(inputs, outputs, name="tower_classifier"), base


def has_cells_head(model):
    """Whether the classifier scores its tiles by their best cell (the cells head), from its layers."""
    return any(layer.name == "cells" for layer in model.layers)


def after_resize(model, outputs=None):
    """`model` (or these outputs of its graph) from its resize layer on: tiles in at image_size, resized before
    it. This is what is fitted, evaluated and scored, never the graph with the resize: TensorFlow's antialiased
    resize (ScaleAndTranslate) has no XLA kernel, so on a GPU, where train and predict compile with XLA, a graph
    holding it fails at its first batch; and on a CPU a training step no longer resizes the pipeline's tiles,
    already at image_size, a second time."""
    import keras

    return keras.Model(model.get_layer("resize").output, model.output if outputs is None else outputs)


def check_weights(weights):
    """--weights: imagenet, none or an existing file; checked before TensorFlow loads."""
    if weights not in ("imagenet", "none") and not os.path.isfile(weights):
        raise UserError(f"--weights {weights}: no such file (give imagenet, none, or the backbone's notop .h5 file)")


# keras.applications' constructor of each backbone, and where its ImageNet notop weights are published
BACKBONES = {
    "xception": ("Xception", "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
                 "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet_v3_small": ("MobileNetV3Small", "https://storage.googleapis.com/tensorflow/keras-applications/"
                           "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    "efficientnetv2_b0": ("EfficientNetV2B0", "https://storage.googleapis.com/tensorflow/keras-applications/"
                          "efficientnet_v2/efficientnetv2-b0_notop.h5"),
}


def _backbone(name, size, weights):
    import keras

    check_weights(weights)
    if name == "compact":
        if weights != "none":
            raise UserError("the compact backbone has no pretrained weights: train it with --weights none")
        return _compact(size)
    constructor, url = BACKBONES[name]
    options = {} if name == "xception" else {"include_preprocessing": False}  # the model's own Rescaling does it
    try:
        return getattr(keras.applications, constructor)(include_top=False, input_shape=(size, size, 3),
                                                        weights=None if weights == "none" else weights, **options)
    except Exception as exc:
        if weights == "imagenet":
            raise UserError(
                f"cannot download {constructor}'s ImageNet weights (offline?): download {url} on a machine with "
                "internet and pass it with --weights FILE, or train from scratch with --weights none "
                f"({type(exc).__name__})") from None
        raise UserError(f"cannot load {constructor} weights from {weights}: {str(exc).splitlines()[0]}") from None


def _compact(size, width=16):
    """A small plain network for CPUs, fed the tile at full resolution, where a tower's steel members are a pixel
    or two wide: pairs of 3x3 convolutions (batch norm, ReLU) between max-poolings, widening as it narrows; its
    map is at 1/16 of the input (16 x 16 cells of 16 px at 256 px, about 10 m at zoom 18)."""
    import keras

    def conv(x, filters, strides=1):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        return keras.layers.ReLU()(keras.layers.BatchNormalization()(x))

    inputs = keras.Input((size, size, 3))
    x = conv(conv(inputs, width, 2), width)
    for filters in (2 * width, 4 * width):
        x = conv(conv(keras.layers.MaxPooling2D()(x), filters), filters)
    x = conv(keras.layers.MaxPooling2D()(x), 8 * width)
    return keras.Model(inputs, x, name="compact")


def point_layers(base, size):
    """Names of the base's last layers at 1/8 and 1/16 of the input (the point loss's feature maps): for Xception
    block4_sepconv2_bn and block13_sepconv2_bn. Found by their output's size, since MobileNetV3's layers have
    numbered names; padding layers, a border around the map before a strided convolution, are passed over."""
    import keras

    last = {}
    for layer in base.layers:
        shape = layer.output.shape
        if isinstance(layer, keras.layers.ZeroPadding2D) or len(shape) != 4 or not shape[1]:
            continue
        last[round(math.log2(size / shape[1]))] = layer.name
    return last[3], last[4]


def set_trainable(model, base, phase, freeze_cutoff):
    """Phase 1: only the new top trains. Phase 2: the base's layers from freeze_cutoff on train too."""
    base.trainable = phase == 2
    if phase == 2:
        for i, layer in enumerate(base.layers):
            layer.trainable = i >= freeze_cutoff


def write_params(model_dir, params, **extra):
    record = {"format": FORMAT, "version": VERSION, "tower_detector_version": __version__, **params,
              "preprocessing": PREPROCESSING, "input": "RGB tiles, float 0..255, any size", "class_order": CLASS_ORDER,
              "output": "sigmoid P(tower)", **extra}
    with open(os.path.join(model_dir, "params.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record


def read_params(model_dir):
    """params.json of a model directory, checked for our format and version."""
    path = os.path.join(model_dir, "params.json")
    if not os.path.isdir(model_dir):
        raise UserError(f"no model directory at {model_dir}")
    try:
        with open(path) as f:
            params = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{model_dir} is not a model directory: it has no params.json") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if params.get("format") != FORMAT:
        raise UserError(f"{path} is not a tower-detector model description")
    if params.get("version") != VERSION:
        raise UserError(f"the model in {model_dir} was written by tower-detector "
                        f"{params.get('tower_detector_version', '?')} (model format {params.get('version')}); this "
                        f"is {__version__} (format {VERSION}): retrain it or use a matching tower-detector")
    return params


def has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


_MODEL_STREAMS = 1  # concurrent model calls of a Classifier in this process (use_model_streams)


def use_model_streams(streams=2):
    """Call before TensorFlow runs anything, in a process that scores (predict): on a CPU-only machine, split
    the CPUs into `streams` concurrent model calls of cpus // streams threads each. One call over every CPU has
    its threads wait for each other at each op, so a CPU taken for a moment by decoding stalls them all
    (docs/benchmarks/predict_throughput.md). Returns the streams in use (1: unchanged, on a GPU, on one CPU, or
    where TensorFlow was running already, as after a training in the same process)."""
    import tensorflow as tf

    global _MODEL_STREAMS
    # the CPUs this process may run on: a `predict --processes/--gpus` child is pinned to its share
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if streams < 2 or cpus < 2 or has_gpu():
        return _MODEL_STREAMS
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, cpus // streams))
    except RuntimeError:  # TensorFlow is initialised already: its threads stay as they are
        return _MODEL_STREAMS
    _MODEL_STREAMS = streams
    return streams


PRECISIONS = ("auto", "float32", "mixed")


def dtype_policy(precision="auto", gpu=False, cpu_bfloat16=None):
    """The Keras dtype policy for --precision, training and scoring alike. auto: mixed float16 on a GPU, mixed
    bfloat16 on a CPU that computes it natively (cpu_bfloat16; None: this CPU), else float32; mixed: bfloat16 on
    any CPU. The speeds and the scores' agreement with float32: docs/benchmarks/precision_speed.md."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "float32":
        return "float32"
    if gpu:
        return "mixed_float16"
    if precision == "mixed":
        return "mixed_bfloat16"
    native = cpu_has_native_bfloat16() if cpu_bfloat16 is None else cpu_bfloat16
    return "mixed_bfloat16" if native else "float32"


def warn_if_slow_precision(policy, log):
    """Log a warning when `policy` runs slower than float32 here: bfloat16 (a CPU-only policy) on a CPU without
    AMX-BF16 or AVX512-BF16 is emulated (docs/benchmarks/precision_speed.md)."""
    if policy == "mixed_bfloat16" and not cpu_has_native_bfloat16():
        log(f"warning: {SLOW_BFLOAT16} is emulated and several times slower than float32; "
            "--precision auto picks what is fastest here")


SLOW_BFLOAT16 = "bfloat16 on this CPU (no AMX-BF16 or AVX512-BF16)"


@functools.cache  # the CPU does not change while the process runs
def cpu_has_native_bfloat16():
    """Whether oneDNN has bfloat16 instructions here: AMX-BF16 (Intel Sapphire Rapids and later) or AVX512-BF16
    (Intel Cooper Lake, AMD Zen 4 and later)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and ({"amx_bf16", "avx512_bf16"} & set(line.split())) for line in f)
    except OSError:
        return False


class Classifier:
    """A trained model directory, ready to score uint8 tiles and to locate the tower inside a tile.

    locate: a class activation map for the non-linear head, computed without gradients: the head (dense ->
    tower) is applied to every cell of Xception's last feature map, as if the global average pooling had
    picked that one cell, which gives each ~image_size/32 cell a tower logit. With a linear head this is
    exactly CAM. It runs inside the network's graph (in numpy it took a tenth of the scoring time on a CPU,
    and it would hold the GIL on a GPU machine). The peak cell, refined by a weighted centroid of its 3x3
    neighbourhood, is the point (cam_peaks).

    submit runs a batch on one of `streams` threads (use_model_streams sets how many in this process), so that
    a caller keeps every stream busy; predict_with_points spreads its batches over them.

    views > 1 (test-time augmentation): each tile is scored as it is and turned (and mirrored, at 8), the
    probabilities averaged; each view's cell logits are turned back onto the tile and averaged before the peak
    is taken. A tile's score and point then no longer depend on which way up the imagery shows it.
    """

    def __init__(self, model_dir, precision="float32", views=1):
        """precision: float32 (the default: full precision), auto or mixed (dtype_policy); the weights are the
        saved float32 ones in every case. views: 1, 2, 4 or 8 (VIEWS)."""
        if views not in VIEWS:
            raise UserError(f"views must be one of {', '.join(map(str, VIEWS))}, not {views}")
        self.views = views
        dtype_policy(precision)  # a bad value fails before TensorFlow loads
        self.params = read_params(model_dir)
        path = os.path.join(model_dir, "model.keras")
        if not os.path.isfile(path):
            raise UserError(f"{model_dir} has params.json but no model.keras")
        if not zipfile.is_zipfile(path):  # Keras would call it "file not found"
            raise UserError(f"{path} is corrupt: not a .keras (zip) file; copy it again or retrain")

        import keras

        self._xla = has_gpu()  # XLA-compiled inference where it pays: on a GPU
        self.policy = dtype_policy(precision, self._xla)
        try:
            self.model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as exc:
            raise UserError(f"cannot load {path}, corrupt or not a model: {one_line(exc)[:300]}") from None
        if self.policy != "float32":
            self.model = self._rebuilt_in(self.policy)
        self.image_size = self.params["image_size"]
        self._network = self._ready(after_resize(self.model))
        self._cam_model = None
        self._resize = _resizer(self.image_size)
        self.streams = _MODEL_STREAMS
        self._pool = concurrent.futures.ThreadPoolExecutor(self.streams, thread_name_prefix="model")
        self._lock = threading.Lock()  # building the CAM model; model_seconds
        self.model_seconds = 0.0  # in model calls, summed over the streams
        self.pad_to = None  # a smaller batch is padded to this size (warm_up sets it on a GPU)

    def _rebuilt_in(self, policy):
        """The same network built under a mixed dtype policy, with the saved weights."""
        params = check_params({k: self.params[k] for k in DEFAULT_PARAMS if k in self.params})
        model = build_model(params, "none", policy)[0]
        try:
            model.set_weights(self.model.get_weights())
        except ValueError as exc:
            raise UserError(f"--precision {policy}: model.keras is not the network tower-detector builds from its "
                            f"params.json ({str(exc).splitlines()[0][:200]}); use --precision float32") from None
        return model

    def predict(self, images, batch_size=32):
        """P(tower) per tile: images (n, h, w, 3) uint8 -> (n,) float32."""
        return self.predict_with_points(images, batch_size, points=False)[0]

    def predict_with_points(self, images, batch_size=32, points=True):
        """(scores (n,), points (n, 2) in tile pixels (x right, y down, 0..tile size) or None)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (n, h, w, 3), not {images.shape}")
        if len(images) == 0:
            return np.zeros(0, np.float32), (np.zeros((0, 2), np.float32) if points else None)
        done = [f.result() for f in [self.submit(images[i:i + batch_size], points)
                                     for i in range(0, len(images), batch_size)]]
        return np.concatenate([d[0] for d in done]), np.concatenate([d[1] for d in done]) if points else None

    def submit(self, images, points=True):
        """Scores one batch (n, h, w, 3) uint8 on one of the `streams` model threads: a Future of
        (scores (n,), points (n, 2) or None)."""
        return self._pool.submit(self._score, np.asarray(images), points)

    def warm_up(self, batch_size, tile_size=256, points=True):
        """Trace the model's graph before the scoring starts, so that no batch waits for it (the first call on a
        fresh Classifier traces it, which is not quick). On a CPU, a second
        call with another batch size makes TensorFlow trace for any batch size, so that a chunk's last, smaller
        batch does not trace again; on a GPU, XLA compiles each batch size anew (seconds each), so smaller batches
        are padded to batch_size instead. Not counted in model_seconds."""
        blank = np.zeros((batch_size, tile_size, tile_size, 3), np.uint8)
        seconds = self.model_seconds
        self._score(blank, points)
        if self._xla:
            self.pad_to = batch_size
        elif batch_size > 1:
            self._score(blank[:1], points)
        self.model_seconds = seconds

    def _score(self, images, points):
        started = time.monotonic()
        model = self._cams() if points else self._network
        n, height, width = images.shape[:3]
        if self.views > 1 and height != width:
            raise ValueError(f"views > 1 need square tiles, not {width}x{height}")
        if (height, width) != (self.image_size, self.image_size):
            images = self._resize(images).numpy()  # outside the network's graph: see after_resize
        if self.pad_to and n < self.pad_to:
            images = np.concatenate([images, np.zeros((self.pad_to - n, *images.shape[1:]), images.dtype)])
        size = len(images)
        # every view in one call (turning the resized tile is turning the tile: the resize is the same both ways)
        out = model.predict_on_batch(images if self.views == 1 else
                                     np.concatenate([view(images, i) for i in range(self.views)]))
        found = None
        if points:
            logits, out = out
            cells = np.asarray(logits, np.float32)[..., 0]
            cells = np.mean([view(cells[i * size:(i + 1) * size], i, back=True) for i in range(self.views)], axis=0)
            found = cam_peaks(cells[:n], width, height)
        out = np.asarray(out, np.float32).reshape(self.views, size).mean(axis=0)
        with self._lock:
            self.model_seconds += time.monotonic() - started
        return out[:n], found

    def _cams(self):
        with self._lock:
            if self._cam_model is None:
                cells = self.cell_logits(self.model.get_layer("pool").input)
                self._cam_model = self._ready(after_resize(self.model, [cells, self.model.output]))
        return self._cam_model

    def _ready(self, network):
        """Compiled for scoring: with XLA on a GPU; its predict function made once, here, since streams calling
        predict_on_batch at once would race to make it."""
        network.compile(jit_compile=self._xla)
        network.make_predict_function()
        return network

    def cell_logits(self, features):
        """The head on every cell of a (n, rows, cols, channels) feature map: the tower logit, (n, rows, cols, 1).
        A cells head's pool takes the cell logits themselves."""
        import keras

        if has_cells_head(self.model):
            return features

        dense, tower = self.model.get_layer("dense"), self.model.get_layer("tower")
        logit = keras.layers.Dense(1, name="cell_logit", dtype="float32")  # the tower layer without its sigmoid
        logit.build((None, dense.units))
        logit.set_weights(tower.get_weights())
        return logit(dense(features))  # Dense acts on the last axis; the dropout between them is off here


def _resizer(size):
    """Tiles (n, h, w, 3) of any size and dtype -> (n, size, size, 3) float32, as the model's resize layer does."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def resize(images):
        # uint8 straight in (the result is float32 and the same): no float copy of the full-size batch
        return tf.image.resize(images, (size, size), antialias=True)

    return resize


VIEWS = (1, 2, 4, 8)
# (mirrored, quarter turns) of view i: the first 2 are half a turn apart, the first 4 the four turns, and the 8
# the square's every symmetry
_VIEWS = ((False, 0), (False, 2), (False, 1), (False, 3), (True, 0), (True, 2), (True, 1), (True, 3))


def view(images, i, back=False):
    """View i of a batch of square images or cell maps (n, rows, cols, ...): mirrored left-right, then turned
    counter-clockwise; back=True undoes it."""
    mirrored, turns = _VIEWS[i]
    if back:
        turned = np.rot90(images, -turns, axes=(1, 2))
        return turned[:, :, ::-1] if mirrored else turned
    return np.rot90(images[:, :, ::-1] if mirrored else images, turns, axes=(1, 2))


def cam_peaks(logits, width, height):
    """(n, rows, cols) cell logits -> (n, 2) points in tile pixels (x right, y down) of a width x height tile."""
    n, rows, cols = logits.shape
    r, c = np.unravel_index(logits.reshape(n, -1).argmax(axis=1), (rows, cols))
    # the 3x3 window around each peak, for all tiles at once; cells beyond the map are -inf and weigh nothing
    padded = np.pad(logits, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    dr, dc = np.mgrid[-1:2, -1:2]
    rr, cc = r[:, None, None] + dr, c[:, None, None] + dc
    weight = np.exp(padded[np.arange(n)[:, None, None], rr + 1, cc + 1] - logits[np.arange(n), r, c][:, None, None])
    total = weight.sum(axis=(1, 2))
    x = ((cc * weight).sum(axis=(1, 2)) / total + 0.5) * width / cols
    y = ((rr * weight).sum(axis=(1, 2)) / total + 0.5) * height / rows
    return np.stack([x, y], axis=1).astype(np.float32)
