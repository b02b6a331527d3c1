"""A model's card: a short, human-readable MODEL_CARD.md in its directory, written when training finishes.

It says what the model was trained on (area, imagery, towers, splits), how (backbone and recipe), how well it did
on its held-out test split with the uncertainty of each figure (and the number of tower tiles behind it), its
thresholds, and what it was not evaluated on. A model no better than chance says so in its first lines.

verdict(metrics) is the one rule for "better than chance"; metrics.json carries its result under "verdict", which
the plugin reads.
"""

import json
import math
import os
import time

from .. import __version__
from .params import head_of

CARD = "MODEL_CARD.md"
Z95 = 1.96
MIN_TOWER_TILES = 10  # fewer tower tiles in the test split than this, and no figure says much


def auc_interval(auc, n_tower, n_background):
    """95 % interval of a ROC AUC from its standard error (Hanley and McNeil, 1982), clipped to 0..1."""
    if auc is None or n_tower < 1 or n_background < 1:
        return None
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (n_tower - 1) * (q1 - auc * auc)
                + (n_background - 1) * (q2 - auc * auc)) / (n_tower * n_background)
    half = Z95 * math.sqrt(max(variance, 0.0))
    return max(auc - half, 0.0), min(auc + half, 1.0)


def proportion_interval(k, n):
    """95 % Wilson interval of k successes in n (a precision or a recall)."""
    if n < 1:
        return None
    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def verdict(metrics):
    """{"level": "ok" | "chance" | "too_few", "text": a sentence an analyst understands} for a test split's metrics."""
    n_tower, n_background, auc = metrics.get("n_tower", 0), metrics.get("n_background", 0), metrics.get("roc_auc")
    if n_tower < MIN_TOWER_TILES or n_background < MIN_TOWER_TILES or auc is None:
        return {"level": "too_few", "text": f"Too few tiles to judge this model: its test split holds {n_tower} tower "
                f"and {n_background} background tiles (at least {MIN_TOWER_TILES} of each are needed). Build the "
                "dataset over a larger area or with more towers."}
    low, high = auc_interval(auc, n_tower, n_background)
    figure = f"test ROC AUC {auc:.2f} (95 % interval {low:.2f}-{high:.2f}, from {n_tower} tower tiles)"
    if low <= 0.5:
        return {"level": "chance", "text": f"This model is no better than chance: {figure}. Train longer or on more "
                "towers before using its candidates."}
    return {"level": "ok", "text": f"Better than chance: {figure}."}


def write_card(model_dir, data_dir=None, name=None):
    """Write MODEL_CARD.md into model_dir from its metrics.json, params.json and its dataset's dataset.json; name:
    the model's (default: model_dir's own, which training's <out>.partial is not)."""
    metrics = _read(os.path.join(model_dir, "metrics.json")) or {}
    params = _read(os.path.join(model_dir, "params.json")) or {}
    data_dir = data_dir or params.get("data_dir")
    dataset = _read(os.path.join(data_dir, "dataset.json")) if data_dir else None
    text = card_text(name or os.path.basename(os.path.normpath(model_dir)), metrics, params, dataset)
    path = os.path.join(model_dir, CARD)
    with open(path, "w") as f:
        f.write(text)
    return path


def card_text(name, metrics, params, dataset):
    judged = metrics.get("verdict") or verdict(metrics)
    lines = [f"# Model card: {name}", "",
             f"Written by tower-detector {__version__} on {time.strftime('%Y-%m-%d', time.gmtime())}.", "",
             f"**{judged['text']}**", ""]
    lines += _data_section(dataset, params)
    lines += _recipe_section(params, metrics)
    lines += _quality_section(metrics)
    lines += _budget_section(metrics.get("validation"))
    lines += _limits_section(metrics, dataset)
    return "\n".join(lines) + "\n"


def _data_section(dataset, params):
    lines = ["## Data", ""]
    if not dataset:
        return lines + [f"- dataset: {params.get('data_dir', 'not recorded')} (its dataset.json could not be read)",
                        ""]
    sources = dataset.get("sources", {})
    lines += [f"- dataset: {params.get('data_dir', 'not recorded')}, built {dataset.get('created', '?')}",
              f"- area: {sources.get('area', 'not recorded')}",
              f"- imagery: {sources.get('imagery', 'not recorded')}; imagery date: not recorded",
              f"- towers: {sources.get('towers', 'not recorded')} ({dataset.get('towers_in_area', '?')} in the area, "
              f"filter {dataset.get('tower_filter', '?')})",
              f"- zoom {dataset.get('zoom', '?')}; splits in blocks of {dataset.get('block_size', '?')} tiles:"]
    for split, counts in dataset.get("splits", {}).items():
        lines.append(f"  - {split}: {counts.get('tiles', 0)} tiles, {counts.get('tower', 0)} with a tower")
    if sources.get("extra_labels"):
        lines.append(f"- review labels added: {sources['extra_labels']}")
    return lines + [""]


def _recipe_section(params, metrics):
    loss = (f"focal loss, gamma {params['focal_gamma']:g}" if params.get("focal_gamma") else "binary cross-entropy")
    lines = ["## Model and recipe", "",
             f"- backbone: {params.get('backbone', 'xception')}, head {head_of(params)}, weights "
             f"{params.get('weights', '?')}, input {params.get('image_size', '?')} px",
             f"- {params.get('epochs_phase1', '?')} + {params.get('epochs_phase2', '?')} epochs (top only + "
             f"fine-tuning), batch {params.get('batch_size', '?')}, {params.get('optimizer', '?')} at "
             f"{params.get('lr_phase2', '?')}, {loss}, class weights {params.get('class_weights', '?')}, seed "
             f"{params.get('seed', '?')}"]
    best = metrics.get("best_epoch") or {}
    if metrics.get("train_seconds") is not None:
        lines.append(f"- trained in {metrics['train_seconds'] / 60:.1f} min ({metrics.get('dtype_policy', '?')}); kept "
                     f"epoch {best.get('epoch', '?')} of phase {best.get('phase', '?')}")
    return lines + [""]


def _quality_section(metrics):
    n_tower, n_background = metrics.get("n_tower", 0), metrics.get("n_background", 0)
    lines = ["## Quality on the held-out test split", "",
             f"{metrics.get('split', 'test')} split: {n_tower} tower and {n_background} background tiles. "
             "Intervals are 95 %.", "",
             "| figure | value | 95 % interval |", "| --- | --- | --- |"]
    auc = metrics.get("roc_auc")
    interval = auc_interval(auc, n_tower, n_background) if auc is not None else None
    lines.append(f"| ROC AUC, 1 view | {_fmt(auc)} | {_span(interval)} |")
    lines.append(f"| PR AUC, 1 view | {_fmt(metrics.get('pr_auc'))} | (tower share {_share(n_tower, n_background)}) |")
    for views, m in sorted((metrics.get("views") or {}).items(), key=lambda kv: int(kv[0])):
        interval = auc_interval(m.get("roc_auc"), n_tower, n_background) if m.get("roc_auc") is not None else None
        lines.append(f"| ROC AUC, {views} views | {_fmt(m.get('roc_auc'))} | {_span(interval)} |")
    lines += ["", "## Thresholds (1 view)", "",
              "| threshold | score | precision | recall | false positive rate |", "| --- | --- | --- | --- | --- |"]
    for name, value in (metrics.get("thresholds") or {}).items():
        at = (metrics.get("at_thresholds") or {}).get(name)
        if value is None or not at:
            lines.append(f"| {name} | none | | | |")
            continue
        tp = round(at["recall"] * n_tower)
        predicted = round(tp / at["precision"]) if at["precision"] else 0
        lines.append(f"| {name} | {value:.3f} | {_fmt(at['precision'])} {_span(proportion_interval(tp, predicted))} "
                     f"| {_fmt(at['recall'])} {_span(proportion_interval(tp, n_tower))} | {_fmt(at['fpr'])} |")
    return lines + [""]


def _budget_section(validation):
    """Recall when reviewing k candidates per tower tile, on the validation split (what results --budget uses)."""
    if not validation or not validation.get("budgets"):
        return []
    lines = ["## Review budget (validation split)", "",
             f"Candidates reviewed per tower tile, on the {validation.get('split', 'val')} split "
             f"({validation.get('n_tower', '?')} tower tiles of {validation.get('n', '?')}).", "",
             "| per tower tile | threshold | candidates | recall | precision |", "| --- | --- | --- | --- | --- |"]
    for row in validation["budgets"]:
        lines.append(f"| {row['per_tower_tile']} | {row['threshold']:.3f} | {row['candidates']} | "
                     f"{_fmt(row['recall'])} | {_fmt(row['precision'])} |")
    return lines + [""]


def _limits_section(metrics, dataset):
    share = _share(metrics.get("n_tower", 0), metrics.get("n_background", 0))
    area = ((dataset or {}).get("sources") or {}).get("area", "the dataset's area")
    return ["## What it was and was not evaluated on", "",
            f"- Evaluated on: the test split of its own dataset, tiles from {area} and the same imagery, kept apart "
            "from the training tiles in spatial blocks.",
            "- Not evaluated on: other areas, other imagery or dates, other zooms, or real tower density: the test "
            f"split's tower share is {share}, while a country's is about 0.06 %, so at a country's density most "
            "candidates at these thresholds are false. Check a sample of its candidates before trusting it elsewhere.",
            _calibration_line(metrics.get("validation"))]


def _calibration_line(validation):
    calibration = (validation or {}).get("calibration")
    if not calibration:
        return "- The scores rank tiles; they are not calibrated probabilities."
    return (f"- The scores rank tiles. A calibration fitted on the {calibration.get('split', 'val')} split (Platt) "
            "turns a score into a probability at that split's tower density; `results` reports the probability of "
            "its cut. At a lower density the same score means a lower probability.")


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def _span(interval):
    return "" if not interval else f"({interval[0]:.2f}-{interval[1]:.2f})"


def _share(n_tower, n_background):
    total = n_tower + n_background
    return f"{100 * n_tower / total:.1f} %" if total else "n/a"


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
