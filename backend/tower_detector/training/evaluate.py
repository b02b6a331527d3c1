"""Metrics of tower scores against true labels, for metrics.json, and their plots. numpy only (no sklearn).

metrics(labels, scores) -> {
  n, n_tower, n_background, threshold (the one the counts below use, 0.5 unless given),
  accuracy, precision, recall, f1, tp, fp, tn, fn,
  roc_auc        area under the ROC curve; tied scores count half (the Mann-Whitney U statistic)
  pr_auc         average precision: sum over thresholds of (recall step) x precision
  roc            {"fpr", "tpr", "thresholds"}: the curve's corners, thinned to at most 201 points
  histogram      {"bins": 21 edges over 0..1, "tower": counts, "background": counts}
  thresholds     {"youden": t maximising TPR - FPR, "recall_0.9": the highest t with recall >= 0.9,
                  "original": 0.97}, each with its precision, recall and FPR in "at_thresholds"
}

validation_summary(split, labels, scores, separate) -> metrics.json's "validation": the validation split's
  n, n_tower, accuracy, roc_auc, pr_auc (what search selects on), whether it is a split of its own, the
  recall-at-budget table (budget_table) and the Platt calibration fitted on it (platt_fit).
"""

import numpy as np

ORIGINAL_THRESHOLD = 0.97  # the original project's overlay cut, from its ROC analysis
BUDGETS = (1, 2, 3, 5, 10)  # candidates reviewed per tower tile, in the recall-at-budget table
LOGIT_CLIP = 1e-7  # scores are clipped to [c, 1 - c] before their logit: a float32 sigmoid reaches 0 and 1


def metrics(labels, scores, threshold=0.5, target_recall=0.9):
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    fpr, tpr, cuts = roc_curve(y, s)
    result = {"n": int(len(y)), "n_tower": int(y.sum()), "n_background": int((~y).sum()), "threshold": threshold}
    result.update(_at(y, s, threshold))
    result["roc_auc"] = roc_auc(y, s)
    result["pr_auc"] = average_precision(y, s)
    keep = _thin(len(fpr), 201)
    result["roc"] = {"fpr": fpr[keep].round(6).tolist(), "tpr": tpr[keep].round(6).tolist(),
                     "thresholds": [min(float(c), 1.0) for c in cuts[keep].round(6)]}
    bins = np.linspace(0, 1, 21)
    result["histogram"] = {"bins": bins.round(3).tolist(),
                           "tower": np.histogram(np.clip(s[y], 0, 1), bins)[0].tolist(),
                           "background": np.histogram(np.clip(s[~y], 0, 1), bins)[0].tolist()}
    chosen = {"youden": _youden(fpr, tpr, cuts), f"recall_{target_recall:g}": _for_recall(tpr, cuts, target_recall),
              "original": ORIGINAL_THRESHOLD}
    result["thresholds"] = {k: (None if v is None else float(min(v, 1.0))) for k, v in chosen.items()}
    result["at_thresholds"] = {k: None if v is None else {m: _at(y, s, v)[m] for m in ("precision", "recall", "fpr")}
                               for k, v in result["thresholds"].items()}
    return result


def validation_summary(split, labels, scores, separate=True):
    """The validation split's figures for metrics.json; separate: False when the dataset has no val split and
    validation fell back to the test split."""
    m = metrics(labels, scores)
    return {"split": split, "separate": bool(separate),
            **{k: m[k] for k in ("n", "n_tower", "accuracy", "roc_auc", "pr_auc")},
            "budgets": budget_table(labels, scores), "calibration": platt_fit(labels, scores, split=split)}


def budget_threshold(scores, n):
    """The threshold that makes at most n candidates of `scores` (score >= threshold): the n-th highest score,
    unless it ties with the next one, then the lowest score above the tie, so that a tie is taken whole or not
    at all (fewer than n candidates, never more). n >= len(scores): the lowest score (all). Nothing fits (the
    top n + 1 scores tie): just above the top score (none). Works in the scores' own dtype (float32 scores give
    a float32-exact threshold)."""
    s = np.sort(np.asarray(scores).ravel())[::-1]
    if not len(s):
        return 1.0
    if n >= len(s):
        return _shortest(s[-1])
    above = s[:n][s[:n] > s[n]] if n > 0 else s[:0]  # the scores above the first one left out
    return _shortest(above[-1]) if len(above) else _shortest(np.nextafter(s[0], np.asarray(np.inf, s.dtype)))


def _shortest(value):
    """A numpy float as the shortest decimal that reads back as it (0.9, not 0.8999999761581421 for float32)."""
    return float(str(value))


def budget_table(labels, scores, budgets=BUDGETS):
    """Recall at a review budget: for k candidates per tower tile (k x n_tower candidates, the top scores,
    budget_threshold's ties), the threshold, the candidates taken, recall and precision. Precision and recall
    hold at this split's density of tower tiles; a real area's is far lower, so there take k x the towers
    expected, not a share of the tiles."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float32).ravel()
    rows = []
    for k in budgets:
        t = budget_threshold(s, int(k * y.sum()))
        pred = s >= np.float32(t)
        tp = int((pred & y).sum())
        rows.append({"per_tower_tile": k, "candidates": int(pred.sum()), "threshold": t,
                     "recall": tp / y.sum() if y.sum() else None,
                     "precision": tp / pred.sum() if pred.sum() else None})
    return rows


def precision_at_recall(labels, scores, recall=0.9):
    """The precision of the highest cut (score >= t) whose recall reaches `recall`; None without towers."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, s)
    i = int(np.flatnonzero(tpr >= recall - 1e-12)[0])
    tp, fp = tpr[i] * y.sum(), fpr[i] * (~y).sum()
    return float(tp / (tp + fp))


def rescore_gain(labels, raw, rescored, recall=0.9, budget=None):
    """Raw against re-scored scores of the same tiles (results --line-rescore): {"precision_at_recall": {raw,
    rescored}, "recall_at_budget": {raw, rescored}} (the second with a budget of N candidates: the top N,
    budget_threshold's ties; None without)."""
    y = np.asarray(labels).astype(bool).ravel()
    result = {"precision_at_recall": {k: precision_at_recall(y, s, recall) for k, s in (("raw", raw),
                                                                                      ("rescored", rescored))},
              "recall_at_budget": None}
    if budget is not None and y.any():
        result["recall_at_budget"] = {}
        for k, s in (("raw", raw), ("rescored", rescored)):
            s = np.asarray(s, np.float32).ravel()
            pred = s >= np.float32(budget_threshold(s, budget))
            result["recall_at_budget"][k] = float((pred & y).sum() / y.sum())
    return result


def platt_fit(labels, scores, split=None, iterations=100):
    """Platt scaling: P(tower) = 1 / (1 + exp(-(a * logit(score) + b))), a and b fitted by maximum likelihood
    (Newton's method) on these labels, with Platt's targets (N+ + 1) / (N+ + 2) for towers and 1 / (N- + 2) for
    background, which keep a and b finite when the scores separate the classes. None with one class."""
    y = np.asarray(labels).astype(bool).ravel()
    x = logit(scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    X = np.stack([x, np.ones_like(x)], axis=1)
    w = np.zeros(2)

    def loss(w):
        z = X @ w
        return float(np.sum(np.logaddexp(0, z) - t * z))  # cross-entropy against the targets

    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(X @ w)))
        grad = X.T @ (p - t)
        hess = X.T @ (X * (p * (1 - p))[:, None]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale, before = 1.0, loss(w)
        while loss(w - scale * step) > before + 1e-12 and scale > 1e-6:  # halve a step that overshoots
            scale /= 2
        w = w - scale * step
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    return {"method": "platt", "split": split, "a": float(w[0]), "b": float(w[1]), "n": int(len(y)),
            "formula": "1 / (1 + exp(-(a * logit(score) + b)))"}


def logit(scores):
    s = np.clip(np.asarray(scores, dtype=np.float64).ravel(), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(s / (1 - s))


def calibrate(scores, calibration):
    """Scores as calibrated probabilities (platt_fit's dict); the scores as they are when it is None."""
    if not calibration:
        return np.asarray(scores, dtype=np.float64)
    z = calibration["a"] * logit(scores).reshape(np.shape(scores)) + calibration["b"]
    return 1 / (1 + np.exp(-z))


def score_of_probability(probability, calibration):
    """The score whose calibrated probability is `probability` (calibrate's inverse): what a probability cut, such
    as the "Yes" band's 0.97, is on the model's own scores. The probability itself without a calibration, or with
    one that does not rise with the score."""
    if not calibration or calibration["a"] <= 0:
        return float(probability)
    p = min(max(float(probability), LOGIT_CLIP), 1 - LOGIT_CLIP)
    z = (np.log(p / (1 - p)) - calibration["b"]) / calibration["a"]
    return float(1 / (1 + np.exp(-z)))


def _at(y, s, threshold):
    pred = s >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": (tp + tn) / len(y) if len(y) else 0.0, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "fpr": fp / (fp + tn) if fp + tn else 0.0, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def roc_curve(y, s):
    """fpr, tpr at each distinct score taken as the threshold (score >= t is positive), from (0, 0) to (1, 1)."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of equal scores
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0, tps] / max(y.sum(), 1)
    fpr = np.r_[0, fps] / max((~y).sum(), 1)
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(y, s):
    """P(score of a random tower > score of a random background), ties counting half; None with one class."""
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y, s):
    if not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, s)
    tps = tpr * y.sum()
    fps = fpr * (~y).sum()
    precision = np.divide(tps[1:], tps[1:] + fps[1:])
    return float(np.sum(np.diff(tpr) * precision))


def _youden(fpr, tpr, cuts):
    i = int(np.argmax(tpr - fpr))
    return None if not np.isfinite(cuts[i]) else float(cuts[i])


def _for_recall(tpr, cuts, target):
    reached = np.flatnonzero(tpr >= target)
    return None if not len(reached) or not np.isfinite(cuts[reached[0]]) else float(cuts[reached[0]])


def _thin(n, most):
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int))


def plot(result, out_dir):
    """roc.png and scores.png (score distributions per class, log counts) into out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    auc = result["roc_auc"]
    ax.plot(result["roc"]["fpr"], result["roc"]["tpr"], lw=2, label=f"ROC AUC {auc:.3f}" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for name, marker in (("youden", "o"), ("original", "s")):
        at = result["at_thresholds"].get(name)
        if at:
            ax.plot(at["fpr"], at["recall"], marker, label=f"{name} threshold {result['thresholds'][name]:.2f}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title="Tower classifier ROC")
    ax.legend(loc="lower right")
    paths.append(_save(fig, out_dir, "roc.png"))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    bins = result["histogram"]["bins"]
    for name, colour in (("background", "tab:blue"), ("tower", "tab:red")):
        ax.stairs(result["histogram"][name], bins, fill=True, alpha=0.5, color=colour, label=name)
    ax.set_yscale("symlog")
    ax.set(xlabel="P(tower)", ylabel="tiles", title="Test scores by true class")
    ax.legend()
    paths.append(_save(fig, out_dir, "scores.png"))
    return paths


def _save(fig, out_dir, name):
    import os

    import matplotlib.pyplot as plt

    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
