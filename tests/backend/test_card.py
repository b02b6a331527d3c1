"""The model card: its uncertainty figures against hand computations, its verdict, and what it says."""

import json

import pytest

from tower_detector.training.card import auc_interval, card_text, proportion_interval, verdict, write_card


def test_auc_interval_matches_a_hand_computation():
    # Hanley and McNeil: A 0.75, 10 and 10 -> Q1 0.6, Q2 0.642857, variance 0.0124821, half-width 1.96 x 0.111724
    low, high = auc_interval(0.75, 10, 10)
    assert low == pytest.approx(0.75 - 0.218979, abs=1e-5) and high == pytest.approx(0.75 + 0.218979, abs=1e-5)
    assert auc_interval(1.0, 5, 5) == (1.0, 1.0)  # a perfect split has no spread by this formula
    assert auc_interval(0.8, 0, 5) is None


def test_proportion_interval_matches_a_hand_computation():
    # Wilson, 8 of 10: centre (0.8 + 0.19208) / 1.38416 = 0.716736, half 1.96 x sqrt(0.016 + 0.0096040) / 1.38416
    low, high = proportion_interval(8, 10)
    assert low == pytest.approx(0.716736 - 0.226580, abs=1e-5) and high == pytest.approx(0.716736 + 0.226580, abs=1e-5)
    assert proportion_interval(0, 0) is None


@pytest.mark.parametrize("auc, n_tower, n_background, level", [
    (0.94, 99, 800, "ok"),
    (0.60, 10, 10, "chance"),  # interval 0.35-0.85 holds 0.5
    (0.33, 20, 40, "chance"),  # worse than chance is no better than chance
    (0.99, 3, 40, "too_few"),
    (None, 0, 40, "too_few"),
])
def test_verdict(auc, n_tower, n_background, level):
    judged = verdict({"roc_auc": auc, "n_tower": n_tower, "n_background": n_background})
    assert judged["level"] == level
    if level == "chance":
        assert judged["text"].startswith("This model is no better than chance") and "more towers" in judged["text"]


def test_the_card_says_what_the_model_was_trained_and_judged_on(tmp_path):
    data, model = tmp_path / "ds", tmp_path / "model"
    data.mkdir()
    model.mkdir()
    (data / "dataset.json").write_text(json.dumps({
        "created": "2026-12-01T10:00:00Z", "zoom": 18, "block_size": 8, "towers_in_area": 321,
        "tower_filter": "power=tower",
        "sources": {"area": "zambia.geojson", "towers": "overpass", "imagery": "Esri World Imagery",
                    "extra_labels": None},
        "splits": {"train": {"tiles": 700, "tower": 70}, "val": {"tiles": 150, "tower": 15},
                   "test": {"tiles": 150, "tower": 12}}}))
    (model / "params.json").write_text(json.dumps({"data_dir": str(data), "weights": "none", "image_size": 128,
                                                   "focal_gamma": 2.0, "epochs_phase1": 0, "epochs_phase2": 30}))
    (model / "metrics.json").write_text(json.dumps({
        "split": "test", "n_tower": 12, "n_background": 138, "roc_auc": 0.62, "pr_auc": 0.2,
        "thresholds": {"youden": 0.4, "recall_0.9": None},
        "at_thresholds": {"youden": {"precision": 0.25, "recall": 0.5, "fpr": 0.13}, "recall_0.9": None},
        "validation": {"split": "val", "n": 150, "n_tower": 15, "calibration": {"a": 1.2, "b": -0.3, "split": "val"},
                       "budgets": [{"per_tower_tile": 3, "threshold": 0.41, "candidates": 45, "recall": 0.8,
                                    "precision": 0.267}]}}))
    card = open(write_card(str(model))).read()
    lines = card.splitlines()
    assert lines[0] == "# Model card: model"
    assert "**This model is no better than chance: test ROC AUC 0.62" in card and "from 12 tower tiles" in card
    for fact in ("zambia.geojson", "Esri World Imagery", "imagery date: not recorded", "321 in the area",
                 "test: 150 tiles, 12 with a tower", "backbone: xception", "focal loss, gamma 2", "input 128 px",
                 "12 tower and 138 background tiles", "| recall_0.9 | none |", "0.06 %",
                 "## Review budget (validation split)", "| 3 | 0.410 | 45 | 0.800 | 0.267 |",
                 "A calibration fitted on the val split (Platt)"):
        assert fact in card, fact
    # youden: 6 of 12 towers found among 24 candidates -> Wilson intervals of 6/24 and 6/12
    low, high = proportion_interval(6, 24)
    assert f"| youden | 0.400 | 0.250 ({low:.2f}-{high:.2f})" in card
    # a model whose dataset is gone still gets a card
    bare = card_text("m", {}, {"data_dir": "/nowhere"}, None)
    assert "could not be read" in bare and "not calibrated" in bare and "Review budget" not in bare
