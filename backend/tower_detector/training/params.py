"""The training parameters, each defined once: its default, the default when training from scratch, its range
or choices, and its help text.

TRAINING is the single definition. From it come DEFAULT_PARAMS (the original project's recipe), SCRATCH_PARAMS
(what replaces it with --weights none), check_params (the validation), the CLI flags of `train` and `search`
(add_training_flags) and the table in docs/training.md (markdown_table; a test keeps the page in step).
A params.json (--params) may set any of them.
"""

import json
from typing import NamedTuple

from ..common.errors import UserError

# the convolutional bases, with their layer count (include_top=False): freeze_cutoff's upper bound
BACKBONE_LAYERS = {"xception": 132, "mobilenet_v3_small": 156, "efficientnetv2_b0": 268, "compact": 25}
_UNSET = object()


class Param(NamedTuple):
    name: str
    default: object
    help: str
    choices: tuple | None = None
    low: float | None = None  # inclusive range of a number
    high: float | None = None
    scratch: object = _UNSET  # the default when training from scratch (--weights none), where it differs
    flags: tuple = ()  # (flag, commands): a command-line flag of `train` and/or `search`

    @property
    def kind(self):
        return type(self.default)


_INITS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal")

TRAINING = (
    Param("backbone", "xception", "the convolutional base: xception (the original project's, for GPUs), "
          "mobilenet_v3_small or efficientnetv2_b0 (smaller, several times faster on a CPU: "
          "docs/benchmarks/backbones.md), or compact (a small plain network of our own at the tile's full "
          "resolution, no pretrained weights: what learns in minutes on a CPU)",
          choices=tuple(BACKBONE_LAYERS), flags=("--backbone", ("train", "search"))),
    Param("head", "auto", "how the base's feature map becomes the tile's score: dense (the original project's: "
          "global average, dense layer, sigmoid), cells (a tower logit for each cell of the map, taught by the "
          "tower positions; the tile's score is its best cell's), or auto (cells with compact, else dense)",
          choices=("auto", "dense", "cells"), flags=("--head", ("train", "search"))),
    Param("optimizer", "adam", "adam, rmsprop or sgd (with momentum)", choices=("adam", "rmsprop", "sgd")),
    Param("lr_phase1", 5e-4, "learning rate of phase 1 (the new top only)", low=1e-7, high=1.0),
    Param("lr_phase2", 1e-4, "learning rate of phase 2 (fine-tuning), the peak of a cosine schedule", low=1e-8,
          high=1.0, scratch=5e-4),
    Param("momentum", 0.9, "sgd's momentum", low=0.0, high=0.999),
    Param("weight_init", "glorot_uniform", "initialiser of the top's dense layer", choices=_INITS),
    Param("freeze_cutoff", 0, "phase 2 trains the base's layers from this index on (0: all of them; at most the "
          "backbone's layer count: xception 132, mobilenet_v3_small 156, efficientnetv2_b0 268)", low=0,
          high=max(BACKBONE_LAYERS.values())),
    Param("dense_size", 256, "units of the top's dense layer", low=1, high=8192),
    Param("dense_activation", "relu", "activation of the top's dense layer", choices=("relu", "elu", "selu", "tanh")),
    Param("dropout", 0.5, "dropout after the dense layer", low=0.0, high=0.95),
    Param("epochs_phase1", 3, "phase 1 epochs: the new top only", low=0, high=1000, scratch=0,
          flags=("--epochs-top", ("train",))),
    Param("epochs_phase2", 20, "phase 2 epochs: fine-tuning", low=0, high=1000,
          flags=("--epochs-fine", ("train", "search"))),
    Param("batch_size", 32, "tiles per training step", low=1, high=4096,
          flags=("--batch-size", ("train", "search"))),
    Param("image_size", 256, "model input size in pixels (tiles are resized inside the model)", low=71, high=1024,
          flags=("--image-size", ("train", "search"))),
    Param("class_weight", "original", 'loss weights of background and tower: "original" ({0: 1, 1: 5}, the '
          'original project\'s), "balanced" (from the label counts), "none", or {"0": w, "1": w}'),
    Param("focal_gamma", 0.0, "focal loss exponent (0: binary cross-entropy)", low=0, high=10, scratch=2.0),
    Param("augment", True, "random flips, turns, rotation, zoom, brightness and contrast"),
    Param("early_stopping_patience", 6, "epochs without a better validation loss before stopping", low=1,
          high=1000, scratch=12),
    Param("reduce_lr_patience", 2, "plateau schedule: epochs without a better validation loss before the rate "
          "is cut", low=1, high=1000),
    Param("reduce_lr_factor", 0.3, "plateau schedule: what the rate is multiplied by at each cut", low=0.01,
          high=0.99),
    Param("warmup_epochs", 2.0, "epochs over which phase 2's rate rises from near 0", low=0, high=1000,
          scratch=1.0),
    Param("lr_schedule", "plateau", "phase 2's schedule: plateau (cut when validation stalls) or cosine (to 0 "
          "at the last epoch)", choices=("plateau", "cosine"), scratch="cosine"),
    Param("point_loss_weight", 1.0, "weight of the auxiliary tower-point loss (0: none)", low=0, high=100),
    Param("seed", 0, "random seed", low=0, high=2**31 - 1, flags=("--seed", ("train",))),
)
PARAM = {p.name: p for p in TRAINING}
DEFAULT_PARAMS = {p.name: p.default for p in TRAINING}
SCRATCH_PARAMS = {p.name: p.scratch for p in TRAINING if p.scratch is not _UNSET}
CLASS_WEIGHT_ALIASES = {"seed": "original"}  # the name class_weight's "original" had before


# the compact backbone's recipe (it always starts from scratch): a faster rate, plain cross-entropy without class
# weights and a heavier point loss teach its cells in minutes on a CPU (docs/benchmarks/backbones.md)
COMPACT_PARAMS = {"image_size": 256, "lr_phase2": 2e-3, "focal_gamma": 0.0, "class_weight": "none",
                  "point_loss_weight": 2.0}


def default_params(weights, backbone=None):
    """The defaults that params override: DEFAULT_PARAMS, with SCRATCH_PARAMS when training from scratch, and
    COMPACT_PARAMS with the compact backbone."""
    base = {**DEFAULT_PARAMS, **SCRATCH_PARAMS} if weights == "none" else dict(DEFAULT_PARAMS)
    return {**base, **COMPACT_PARAMS} if backbone == "compact" else base


def renamed(params):
    """A params dict with values written under their old names (class_weight "seed") given their new ones."""
    if isinstance(params, dict) and isinstance(params.get("class_weight"), str) and \
            params["class_weight"] in CLASS_WEIGHT_ALIASES:
        return {**params, "class_weight": CLASS_WEIGHT_ALIASES[params["class_weight"]]}
    return params


def check_params(params, base=None):
    """DEFAULT_PARAMS (or `base`) updated with `params`, checked: unknown keys and bad values are UserErrors."""
    merged = dict(base or DEFAULT_PARAMS)
    unknown = sorted(set(params) - set(PARAM))
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(PARAM))}")
    merged = renamed({**merged, **params})
    for p in TRAINING:
        value = merged[p.name]
        if p.choices is not None:
            if value not in p.choices:
                raise UserError(f"parameter {p.name} must be one of {', '.join(p.choices)}, not {value!r}")
        elif p.kind is bool:
            if not isinstance(value, bool):
                raise UserError(f"parameter {p.name} must be true or false, not {value!r}")
        elif p.low is not None:
            whole = p.kind is int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and value != int(value)):
                raise UserError(f"parameter {p.name} must be {'an integer' if whole else 'a number'}, not {value!r}")
            if not p.low <= value <= p.high:
                raise UserError(f"parameter {p.name} must be between {p.low:g} and {p.high:g}, not {value!r}")
            merged[p.name] = p.kind(value)
    class_weight(merged["class_weight"], 1, 1)  # checks its form
    if merged["freeze_cutoff"] > BACKBONE_LAYERS[merged["backbone"]]:
        raise UserError(f"parameter freeze_cutoff must be at most {BACKBONE_LAYERS[merged['backbone']]} with backbone "
                        f"{merged['backbone']}, not {merged['freeze_cutoff']}")
    return merged


def check_backbone_weights(params, weights):
    """The compact backbone has no pretrained weights; checked before TensorFlow loads."""
    if params["backbone"] == "compact" and weights != "none":
        raise UserError(f"--weights {weights}: the compact backbone has no pretrained weights; train it with "
                        "--weights none")


def head_of(params):
    """The head params' "head" means: auto is cells with the compact backbone, dense with the others."""
    if params.get("head", "auto") != "auto":
        return params["head"]
    return "cells" if params.get("backbone") == "compact" else "dense"


def class_weight(spec, n_background, n_tower):
    """{0: w0, 1: w1} from "original" ({0: 1, 1: 5}), "balanced" (from the label counts), "none" or a mapping."""
    spec = CLASS_WEIGHT_ALIASES.get(spec, spec) if isinstance(spec, str) else spec
    if spec == "original":
        return {0: 1.0, 1: 5.0}
    if spec == "none":
        return {0: 1.0, 1: 1.0}
    if spec == "balanced":
        return {0: 1.0, 1: max(n_background, 1) / max(n_tower, 1)}
    if isinstance(spec, dict) and set(map(str, spec)) == {"0", "1"}:
        weights = {int(k): v for k, v in spec.items()}
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in weights.values()):
            return {k: float(v) for k, v in weights.items()}
    raise UserError('parameter class_weight must be "original", "balanced", "none" or {"0": w, "1": w}, '
                    f"not {spec!r}")


def load_params_file(path):
    """A params.json's hyperparameters (a JSON object); UserError when it cannot be read."""
    try:
        with open(path) as f:
            params = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read params {path}: {exc}") from None
    if not isinstance(params, dict):
        raise UserError(f"params {path} must be a JSON object of hyperparameters")
    return params


def add_training_flags(parser, command):
    """The flags `command` (train or search) takes for training parameters; returns their argparse actions. A flag
    not given is None: the params file or the default then decides (training_flags)."""
    actions = []
    for p in TRAINING:
        if p.flags and command in p.flags[1]:
            default = f"default {_text(p.default)}" + (f"; {_text(p.scratch)} with --weights none"
                                                        if p.scratch is not _UNSET else "")
            kind = {"choices": p.choices} if p.choices else {"type": _flag_type(p), "metavar": "N"}
            actions.append(parser.add_argument(p.flags[0], **kind, help=f"{p.help} ({default})"))
    return actions


def training_flags(args):
    """{parameter: value} of the training flags given on a command line (argparse Namespace)."""
    given = {p.name: getattr(args, _dest(p.flags[0]), None) for p in TRAINING if p.flags}
    return {name: value for name, value in given.items() if value is not None}


def _dest(flag):
    return flag.lstrip("-").replace("-", "_")


def _flag_type(p):
    def parse(text):
        try:
            value = p.kind(text)
        except ValueError:
            import argparse

            raise argparse.ArgumentTypeError(f"must be {'a whole number' if p.kind is int else 'a number'}, "
                                             f"not {text!r}") from None
        check_params({p.name: value})
        return value
    return parse


def markdown_table():
    """The parameters as a Markdown table, for docs/training.md."""
    rows = ["| parameter | default | from scratch (--weights none) | values | flag | what it does |",
            "| --- | --- | --- | --- | --- | --- |"]
    for p in TRAINING:
        values = (", ".join(p.choices) if p.choices else f"{p.low:g} to {p.high:g}" if p.low is not None
                  else "true, false" if p.kind is bool else "see the text")
        scratch = _text(p.scratch) if p.scratch is not _UNSET else ""
        flag = f"`{p.flags[0]}` ({', '.join(p.flags[1])})" if p.flags else ""
        rows.append(f"| `{p.name}` | {_text(p.default)} | {scratch} | {values} | {flag} | {p.help} |")
    return "\n".join(rows) + "\n"


def _text(value):
    return json.dumps(value) if isinstance(value, (bool, str)) else f"{value:g}"


if __name__ == "__main__":  # python -m tower_detector.training.params > the table in docs/training.md
    print(markdown_table(), end="")
