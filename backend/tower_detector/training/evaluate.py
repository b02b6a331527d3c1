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
"""

import numpy as np

ORIGINAL_THRESHOLD = 0.97  # the original project's overlay cut, from its ROC analysis


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
