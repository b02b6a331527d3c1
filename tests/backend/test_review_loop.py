"""The review -> retrain loop of benchmarks/review_loop.py: its simulated reviewer and metrics, and the loop's
plumbing end to end on a tiny scene (the benchmark's own functions, so the test runs the benchmark's code)."""

import csv
import json
import sqlite3

import numpy as np
import pytest

from benchmarks import review_loop as loop


def _gpkg(path, scores):
    from tower_detector.results import write_candidates_gpkg

    x, y = 151_000 + np.arange(len(scores)), np.full(len(scores), 142_000)
    order = np.argsort(scores)[::-1]
    write_candidates_gpkg(str(path), 18, x[order], y[order], np.asarray(scores, np.float32)[order],
                          np.full(len(scores), 128.0), np.full(len(scores), 128.0), {"threshold": 0.0})
    return x, y


def test_the_reviewer_decides_the_best_unreviewed_candidates_from_the_truth(tmp_path):
    x, y = _gpkg(tmp_path / "c.gpkg", [0.1, 0.9, 0.5, 0.8, 0.3, 0.7])
    truth = {(int(x[1]), int(y[1])), (int(x[2]), int(y[2]))}
    assert loop.review(tmp_path / "c.gpkg", truth, 2) == {"confirmed": 1, "false_positive": 1}  # 0.9 and 0.8
    # the next round takes the next best among the still unreviewed: 0.7 and 0.5
    assert loop.review(tmp_path / "c.gpkg", truth, 2) == {"confirmed": 1, "false_positive": 1}
    with sqlite3.connect(tmp_path / "c.gpkg") as db:
        status = dict(db.execute("SELECT x, status FROM candidates").fetchall())
    assert [status[int(v)] for v in x] == ["unreviewed", "confirmed", "confirmed", "false_positive",
                                           "unreviewed", "false_positive"]


def test_quality_counts_false_positives_at_the_recall():
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    scores = np.array([.9, .9, .9, .9, .9, .9, .9, .9, .9, .2, .95, .5, .1, .05])
    q = loop.quality(labels, scores)
    # recall 0.9 needs 9 of the 10 towers: the threshold 0.9 also takes the negative at 0.95
    assert q["threshold"] == pytest.approx(0.9) and q["fp"] == 1 and q["precision"] == pytest.approx(0.9)
    assert q["towers"] == 10 and q["tiles"] == 14 and 0 < q["roc_auc"] < 1


@pytest.mark.slow
def test_the_loop_end_to_end_on_a_tiny_scene(training_set, tmp_path):
    """v1 (compact, 1 epoch) -> predict and results on another scene -> the reviewer -> export labels -> dataset
    --extra-labels on a mosaic -> train --init v1: v2 starts from v1 and has learnt from the decisions."""
    import keras

    area_scene, log = training_set.parent / "scene", lambda *a: None
    v1 = loop.train(training_set, tmp_path / "v1", 1, image_size=80, batch_size=16, log=log)
    assert "train_seconds" in v1["metrics"]
    b = loop.make_scene(str(tmp_path / "B"), 8, 21, loop.LON + 0.1)
    imagery = loop.mosaic(str(tmp_path / "A+B.vrt"), [str(area_scene), b])
    gpkg = loop.candidates(tmp_path / "v1", b, tmp_path / "store", tmp_path / "B.gpkg", log=log)
    truth = loop.truth_tiles(b)
    decided = loop.review(gpkg, truth, 12)
    assert sum(decided.values()) == 12
    with sqlite3.connect(gpkg) as db:
        statuses = dict(db.execute("SELECT tile_id, status FROM candidates WHERE status != 'unreviewed'").fetchall())
    labels = loop.export_labels(gpkg, tmp_path / "labels.gpkg", log=log)
    ds = loop.dataset(str(tmp_path / "ds2"), area_scene, imagery, labels, log=log,
                      args=("--split", "0.6,0.2,0.2", "--block-size", 2, "--background-ratio", 2, "--seed", 1))
    assert ds["sources"]["extra_labels"] == str(labels)
    # the decisions join the dataset with their labels, read from B's imagery through the mosaic (less those that
    # the blocked splits drop at a split's border, as any tile there)
    with open(tmp_path / "ds2" / "index.csv") as f:
        label_of = {row["tile_id"]: int(row["label"]) for row in csv.DictReader(f)}
    kept = {t: s for t, s in statuses.items() if t in label_of}
    assert kept and all(label_of[t] == (s == "confirmed") for t, s in kept.items())
    assert sum(loop.kept_decisions(gpkg, tmp_path / "ds2").values()) == len(kept)
    assert ds["hard_negatives"] == decided["false_positive"]
    assert ds["review_tiles_outside_area"] >= 12
    v2 = loop.train(str(tmp_path / "ds2"), str(tmp_path / "v2"), 1, init=str(tmp_path / "v1"), log=log)
    params = json.loads((tmp_path / "v2" / "params.json").read_text())
    assert params["init"] == str(tmp_path / "v1") and params["image_size"] == 80 and params["backbone"] == "compact"
    assert "train_seconds" in v2["metrics"]
    before = keras.saving.load_model(tmp_path / "v1" / "model.keras", compile=False).get_weights()
    after = keras.saving.load_model(tmp_path / "v2" / "model.keras", compile=False).get_weights()
    assert len(before) == len(after) and any(not np.array_equal(a, b) for a, b in zip(before, after))
    # round 2: v2 ranks B again into the same GeoPackage, which keeps round 1's decisions; the next 12 are new tiles
    loop.candidates(tmp_path / "v2", b, tmp_path / "store-v2", gpkg, log=log)
    assert sum(loop.review(gpkg, truth, 12).values()) == 12
    with sqlite3.connect(gpkg) as db:
        now = dict(db.execute("SELECT tile_id, status FROM candidates WHERE status != 'unreviewed'").fetchall())
    assert len(now) == 24 and all(now[t] == s for t, s in statuses.items())
    labels_b, scores = loop.score_scene(str(tmp_path / "v2"), b)  # what the benchmark scores C with
    assert len(scores) == 64 and labels_b.sum() == len(truth) and np.isfinite(scores).all()
