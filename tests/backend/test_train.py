"""Training, evaluation and search, for real, on a dataset from a 16x16-tile sample scene at a tiny image size."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.fakes.training import TINY_TRAINING as TINY
from tests.fakes.training import folder_bytes
from tower_detector.common.errors import UserError
from tower_detector.training.evaluate import metrics
from tower_detector.training.model import Classifier, cam_peaks
from tower_detector.training.params import DEFAULT_PARAMS, SCRATCH_PARAMS, check_params


@pytest.fixture(scope="module")
def dataset(training_set):
    return training_set


@pytest.fixture(scope="module")
def trained(tiny_model):
    return tiny_model


def cli(*args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, "-m", "tower_detector", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def events_of(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- metrics ---------------------------------------------------------------------------------------------------
def test_metrics_match_a_hand_computation():
    labels = [1, 1, 0, 0, 1, 0]
    scores = [0.9, 0.4, 0.35, 0.8, 0.7, 0.1]
    m = metrics(labels, scores)
    # towers {.9, .4, .7} vs background {.35, .8, .1}: .9 beats 3, .4 beats 2, .7 beats 2 -> 7 of 9 pairs
    assert m["roc_auc"] == pytest.approx(7 / 9)
    # at 0.5: predicted towers .9, .8, .7 -> tp 2, fp 1, fn 1, tn 2
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    # descending: .9 T, .8 B, .7 T, .4 T -> precision at each recall step 1, 2/3, 3/4
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # TPR - FPR: .9: 1/3, .8: 0, .7: 1/3, .4: 2/3, .35: 1/3, .1: 0
    assert m["thresholds"]["youden"] == pytest.approx(0.4)
    assert m["thresholds"]["recall_0.9"] == pytest.approx(0.4) and m["thresholds"]["original"] == 0.97
    assert m["at_thresholds"]["youden"] == {"precision": 0.75, "recall": 1.0, "fpr": pytest.approx(1 / 3)}
    assert m["roc"]["fpr"] == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1], abs=1e-6)
    assert m["roc"]["tpr"] == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1], abs=1e-6)
    assert m["histogram"]["tower"][18] == 1 and sum(m["histogram"]["background"]) == 3


def test_metrics_ties_and_one_class():
    assert metrics([1, 0, 1, 0], [0.5] * 4)["roc_auc"] == 0.5
    assert metrics([1, 0, 1, 0], [0.7, 0.7, 0.9, 0.1])["roc_auc"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert metrics([0, 0], [0.1, 0.2])["roc_auc"] is None


def test_platt_calibration_matches_a_hand_computation():
    """Two score levels, logit -1 and +1, with 1 of 4 and 3 of 4 towers. Platt's targets are 5/6 for a tower
    and 1/6 for background (4 of each), so the levels' mean targets are (5/6 + 3/6) / 4 = 1/3 and 2/3; with one
    feature taking two values the fit meets them exactly: sigmoid(-a + b) = 1/3, sigmoid(a + b) = 2/3, so
    a = (logit(2/3) - logit(1/3)) / 2 = ln 2 and b = 0."""
    from tower_detector.training.evaluate import calibrate, platt_fit

    x = np.array([-1.0] * 4 + [1.0] * 4)
    scores = 1 / (1 + np.exp(-x))
    labels = [1, 0, 0, 0, 1, 1, 1, 0]
    fit = platt_fit(labels, scores, split="val")
    assert fit["a"] == pytest.approx(np.log(2), abs=1e-9) and fit["b"] == pytest.approx(0, abs=1e-9)
    assert fit["split"] == "val" and fit["method"] == "platt"
    assert calibrate(scores, fit) == pytest.approx([1 / 3] * 4 + [2 / 3] * 4)
    # 1 of 4 and 2 of 4 towers: 3 towers and 5 background give targets 4/5 and 1/7, so the levels' mean
    # targets are (4/5 + 3/7) / 4 and (2 x 4/5 + 2 x 1/7) / 4, and b is no longer 0
    labels = [1, 0, 0, 0, 1, 1, 0, 0]
    fit = platt_fit(labels, scores)
    low, high = (4 / 5 + 3 / 7) / 4, (2 * 4 / 5 + 2 / 7) / 4
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert fit["a"] == pytest.approx((logit(high) - logit(low)) / 2, abs=1e-9)
    assert fit["b"] == pytest.approx((logit(high) + logit(low)) / 2, abs=1e-9)
    # scores that separate the classes keep finite coefficients; one class gives none; none calibrates nothing
    separated = platt_fit([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert np.isfinite([separated["a"], separated["b"]]).all() and separated["a"] > 0
    assert platt_fit([1, 1], [0.3, 0.9]) is None
    assert calibrate([0.25, 1.0], None).tolist() == [0.25, 1.0]


def test_budget_threshold_takes_exactly_the_top_scores_and_ties_whole():
    from tower_detector.training.evaluate import budget_table, budget_threshold

    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.5], np.float32)
    taken = {n: int((scores >= np.float32(budget_threshold(scores, n))).sum()) for n in range(7)}
    # a tie at the cut is left out whole: 2 -> 1 candidate; everything past the end is all 5
    assert taken == {0: 0, 1: 1, 2: 1, 3: 3, 4: 4, 5: 5, 6: 5}
    assert budget_threshold(scores, 1) == 0.9 and budget_threshold(scores, 4) == 0.7
    rng = np.random.default_rng(0)
    many = rng.random(2000).astype(np.float32)
    assert all((many >= np.float32(budget_threshold(many, n))).sum() == n for n in (0, 1, 7, 500, 1999, 2000))
    labels = [1, 0, 1, 0, 0, 0]
    table = budget_table(labels, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], budgets=(1, 2, 5))
    # 2 tower tiles: 2, 4 and all 6 candidates
    assert [(r["candidates"], r["recall"], r["precision"]) for r in table] == [(2, 0.5, 0.5), (4, 1.0, 0.5),
                                                                               (6, 1.0, pytest.approx(1 / 3))]
    assert [r["threshold"] for r in table] == [0.8, 0.6, 0.4]


# -- parameters ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, message", [
    ({"learning_rate": 0.1}, "unknown parameter.*learning_rate"),
    ({"dropout": 1.5}, "dropout must be between"),
    ({"dense_size": 12.5}, "dense_size must be an integer"),
    ({"optimizer": "adagrad"}, "optimizer must be one of"),
    ({"image_size": 32}, "image_size must be between 71"),
    ({"class_weight": {"0": 1}}, "class_weight must be"),
    ({"augment": "yes"}, "augment must be true or false"),
    ({"warmup_epochs": -1}, "warmup_epochs must be between 0"),
    ({"focal_gamma": -0.5}, "focal_gamma must be between 0"),
])
def test_bad_params_are_named(params, message):
    with pytest.raises(UserError, match=message):
        check_params(params)


def test_params_defaults_and_class_weight_forms():
    p = check_params({"class_weight": {"0": 1, "1": 3}, "dense_size": 64.0})
    assert p["dense_size"] == 64 and isinstance(p["dense_size"], int)
    assert {k: p[k] for k in DEFAULT_PARAMS if k not in ("class_weight", "dense_size")} == \
        {k: v for k, v in DEFAULT_PARAMS.items() if k not in ("class_weight", "dense_size")}


def test_tile_loss_matches_a_hand_computation():
    """focal_gamma 0: cross-entropy; above 0 each tile's cross-entropy is scaled by (1 - p_true) ** gamma."""
    from tower_detector.training.train import tile_loss

    labels = np.array([[1.0], [0.0], [1.0], [0.0]])
    scores = np.array([[0.9], [0.2], [0.3], [0.6]])
    p_true = np.where(labels == 1, scores, 1 - scores)
    entropy = -np.log(p_true)
    assert float(tile_loss(check_params({}))(labels, scores)) == pytest.approx(entropy.mean(), rel=1e-5)
    focal = float(tile_loss(check_params({"focal_gamma": 2}))(labels, scores))
    assert focal == pytest.approx(((1 - p_true) ** 2 * entropy).mean(), rel=1e-5)
    assert focal < entropy.mean() / 2  # the confident right tiles (0.9, 0.2) count for almost nothing


# -- training --------------------------------------------------------------------------------------------------
def test_augmentation_keeps_the_fine_detail_of_a_tower(tmp_path):
    """Rotation and zoom run on the 256-px tile before the resize: at the model's 72 px they would interpolate
    again and wash out 2-px lattice members (half their contrast or more, measured when it did)."""
    from tower_detector.training.train import TrainingData, tf_dataset

    lattice = np.full((256, 256, 3), 96, np.uint8)
    for k in (0, 1):  # 2-px members every 8 px, both ways
        lattice[k::8], lattice[:, k::8] = 160, 160
    labels = np.tile(np.eye(2, dtype=np.uint8), (16, 1))
    np.savez(tmp_path / "data.npz", x_train=np.repeat(lattice[None], 32, axis=0), y_train=labels)
    data = TrainingData(tmp_path)

    def detail(training):
        batches = [np.asarray(b, np.float64) for b, _ in tf_dataset(data, "train", 72, 16, training=training)]
        images = np.concatenate(batches)
        assert images.shape == (32, 72, 72, 3) and images.min() >= 0 and images.max() <= 255
        return np.abs(np.diff(images[:, 12:-12, 12:-12], axis=2)).mean()  # away from the reflected edges

    assert detail(training=True) > 0.75 * detail(training=False)


def _bright_square_dataset(folder, n=24):
    """A dataset of tiles with one bright 20-px square each (a "tower", listed in towers.csv) on grey, except
    every fourth tile: a background tile. Returns {tile path: (px, py) or None}."""
    rng = np.random.default_rng(5)
    (folder / "tiles").mkdir(parents=True)
    rows, towers, truth = [], [], {}
    for i in range(n):
        image = np.full((256, 256, 3), 90, np.uint8)
        tower = i % 4 != 0
        if tower:
            px, py = rng.uniform(20, 236, 2)
            image[int(py) - 10:int(py) + 10, int(px) - 10:int(px) + 10] = 250
            towers.append(f"t{i},{px:.2f},{py:.2f}")
        Image.fromarray(image).save(folder / "tiles" / f"t{i}.png")
        rows.append(f"t{i},{i},0,18,train,{int(tower)},tiles/t{i}.png")
        truth[str(folder / "tiles" / f"t{i}.png")] = (px, py) if tower else None
    (folder / "index.csv").write_text("tile_id,x,y,z,split,label,path\n" + "\n".join(rows) + "\n")
    (folder / "towers.csv").write_text("tile_id,px,py\n" + "\n".join(towers) + "\n")
    return truth


def test_tower_cells_move_with_the_augmented_tile(tmp_path):
    """The point loss's targets ride through the flips, turns, rotations and zoom with the image: in every
    augmented tower tile the brightest cell (where the square went) is a tower cell, and background tiles have
    none. A tower tile that towers.csv does not list is left out of the point loss (known 0), not taught empty."""
    from tower_detector.training.train import TrainingData, tf_dataset

    _bright_square_dataset(tmp_path)
    lines = (tmp_path / "towers.csv").read_text().splitlines()
    (tmp_path / "towers.csv").write_text("\n".join(lines[:-1]) + "\n")  # t23's tower unlisted
    data = TrainingData(tmp_path)
    for training in (False, True):
        (images, fine, coarse, known), y = next(iter(tf_dataset(data, "train", 96, 24, training=training, seed=2,
                                                                point_grids=[(12, 12), (6, 6)])))
        images, known = np.asarray(images), np.asarray(known)
        assert images.shape == (24, 96, 96, 3)
        order = np.asarray(y).astype(int)  # shuffled when training: the labels come along
        assert known.sum() == 23
        for cells, side, most in ((fine, 12, 9), (coarse, 6, 4)):
            cells = np.asarray(cells)[..., 0]
            assert cells.shape == (24, side, side)
            brightness = images.mean(axis=-1).reshape(24, side, 96 // side, side, 96 // side).mean(axis=(2, 4))
            for i in range(24):
                if order[i] == 0:
                    assert cells[i].sum() == 0
                elif known[i]:
                    assert 1 <= cells[i].sum() <= most
                    assert cells[i].flat[brightness[i].argmax()] == 1


def test_point_loss_joins_the_training_loss_and_stays_out_of_the_saved_model(tmp_path):
    """With towers.csv the point loss is added to what is minimised (its weight shows in the training loss);
    the saved model is the classifier alone. Without towers.csv the training says so and goes on without it."""
    from tower_detector.training.train import train

    _bright_square_dataset(tmp_path / "ds", n=40)
    index = (tmp_path / "ds" / "index.csv").read_text().splitlines()
    rows = [index[0]] + [line.replace(",train,", ",val," if i < 32 else ",test,") if i >= 24 else line
                         for i, line in enumerate(index[1:])]
    (tmp_path / "ds" / "index.csv").write_text("\n".join(rows) + "\n")
    params = dict(TINY, epochs_phase1=0, epochs_phase2=1)
    losses = {}
    for weight in (0.0, 50.0):
        train(str(tmp_path / "ds"), str(tmp_path / f"m{weight}"), dict(params, point_loss_weight=weight),
              weights="none", progress=lambda *a, w=weight, **k: losses.update({w: k["loss"]}), log=lambda *a: None)
    assert losses[50.0] > losses[0.0] + 5  # ~0.7 a tile from the class loss; 50 x ~0.2 more from the points
    model = Classifier(str(tmp_path / "m50.0")).model
    assert not any(layer.name.startswith("point_head") for layer in model.layers)
    assert [layer.name for layer in model.layers][-4:] == ["pool", "dense", "dropout", "tower"]

    (tmp_path / "ds" / "towers.csv").unlink()
    said = []
    train(str(tmp_path / "ds"), str(tmp_path / "m-none"), params, weights="none", log=said.append)
    assert any("no tower positions" in m and "without the point loss" in m for m in said)


def test_model_directory_is_complete_and_metrics_are_the_test_split(trained, dataset):
    out, result = trained
    for name in ("model.keras", "params.json", "metrics.json", "test_scores.csv", "roc.png", "scores.png"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))
    params = json.loads((out / "params.json").read_text())
    assert params["image_size"] == 72 and params["class_order"] == ["background", "tower"]
    assert params["data_fingerprint"] == json.loads((dataset / "dataset.json").read_text())["fingerprint"]
    assert params["weights"] == "none" and params["class_weights"] == {"0": 1.0, "1": 5.0}
    # from scratch, SCRATCH_PARAMS stand in for the original project's values the params leave out; what they give wins
    assert {k: params[k] for k in SCRATCH_PARAMS if k not in TINY} == \
        {k: v for k, v in SCRATCH_PARAMS.items() if k not in TINY} and params["lr_schedule"] == "cosine"
    assert params["epochs_phase1"] == TINY["epochs_phase1"] == 1
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split"] == "test" and set(saved["thresholds"]) == {"youden", "recall_0.9", "original"}
    # the card names its data and judges the model by the rule in metrics.json
    card = (out / "MODEL_CARD.md").read_text()
    assert card.splitlines()[0] == "# Model card: model"  # the model's name, not the folder it was trained in
    assert saved["verdict"]["level"] in ("ok", "chance", "too_few") and saved["verdict"]["text"] in card
    assert str(dataset / "scene" / "towers.geojson") in card or "towers.geojson" in card
    assert f"{saved['n_tower']} tower and {saved['n_background']} background tiles" in card
    # the validation split's own figures, which search selects on
    with open(dataset / "index.csv") as f:
        val_rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
    validation = saved["validation"]
    assert validation["split"] == "val" and validation["separate"] and validation["n"] == len(val_rows)
    assert validation["n_tower"] == sum(int(r["label"]) for r in val_rows)
    assert all(0 <= validation[k] <= 1 for k in ("accuracy", "roc_auc", "pr_auc"))
    # calibration and the recall-at-budget table come from the same split's scores
    assert validation["calibration"]["split"] == "val" and np.isfinite(validation["calibration"]["a"])
    assert [r["per_tower_tile"] for r in validation["budgets"]] == [1, 2, 3, 5, 10]
    assert validation["budgets"][0]["candidates"] <= validation["n_tower"]
    assert validation["budgets"][-1]["candidates"] == validation["n"] and validation["budgets"][-1]["recall"] == 1

    # test_scores.csv holds the scores behind metrics.json, and the saved model (safe mode) scoring the test
    # tiles again gives them (scores, not the AUC: a tiny model's near-equal scores may swap ranks on other CPUs)
    with open(dataset / "index.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    with open(out / "test_scores.csv") as f:
        tested = list(csv.DictReader(f))
    assert [t["tile"] for t in tested] == [r["path"] for r in rows]
    assert [t["label"] for t in tested] == [r["label"] for r in rows]
    labels = np.array([int(r["label"]) for r in rows])
    saved_scores = np.array([float(t["score"]) for t in tested])
    assert metrics(labels, saved_scores)["roc_auc"] == pytest.approx(saved["roc_auc"], abs=1e-9)
    images = np.stack([np.asarray(Image.open(dataset / r["path"])) for r in rows])
    classifier = Classifier(str(out))
    scores, points = classifier.predict_with_points(images, batch_size=5)
    assert saved["n"] == len(rows) and saved["n_tower"] == labels.sum()
    np.testing.assert_allclose(scores, saved_scores, atol=1e-4)
    np.testing.assert_allclose(classifier.predict(images), scores, atol=1e-5)
    assert points.shape == (len(rows), 2) and (points >= 0).all() and (points <= 256).all()
    # the views' metrics are those of predict --views N's scores on the same tiles
    for n in (2, 8):
        by_views = Classifier(str(out), views=n).predict(images, batch_size=5)
        want = metrics(labels, by_views)
        assert saved["views"][str(n)]["roc_auc"] == pytest.approx(want["roc_auc"], abs=1e-3)
        assert saved["views"][str(n)]["thresholds"]["youden"] == pytest.approx(want["thresholds"]["youden"], abs=1e-3)
    assert set(saved["views"]) == {"2", "4", "8"}


def test_finished_training_is_not_redone_and_a_different_one_is_refused(trained, dataset):
    from tower_detector.training.train import train

    out, result = trained
    mtime = os.path.getmtime(out / "model.keras")
    assert train(str(dataset), str(out), TINY, weights="none", log=lambda *a: None)["roc_auc"] == result["roc_auc"]
    assert os.path.getmtime(out / "model.keras") == mtime
    with pytest.raises(UserError, match="holds a different training"):
        train(str(dataset), str(out), dict(TINY, dense_size=64), weights="none")


# -- backbones ---------------------------------------------------------------------------------------------------
def test_the_point_maps_are_found_by_their_scale_and_are_xceptions_historic_ones():
    import keras

    from tower_detector.training.model import point_layers

    for size in (72, 96, 256):
        base = keras.applications.Xception(include_top=False, weights=None, input_shape=(size, size, 3))
        assert point_layers(base, size) == ("block4_sepconv2_bn", "block13_sepconv2_bn")


def test_a_small_backbone_trains_saves_predicts_and_is_no_warm_start_for_xception(trained, dataset, sample_scene,
                                                                                  tmp_path):
    out = tmp_path / "small"
    done = cli("train", "--data", dataset, "--out", out, "--weights", "none", "--backbone", "mobilenet_v3_small",
               "--image-size", 72, "--batch-size", 16, "--epochs-fine", 1)
    assert done.returncode == 0, done.stderr[-2000:]
    params = json.loads((out / "params.json").read_text())
    assert params["backbone"] == "mobilenet_v3_small" and "backbone: mobilenet_v3_small" in \
        (out / "MODEL_CARD.md").read_text()
    with open(dataset / "index.csv") as f:
        images = np.stack([np.asarray(Image.open(dataset / r["path"])) for r in list(csv.DictReader(f))[:6]])
    scores, points = Classifier(str(out)).predict_with_points(images, batch_size=4)
    assert scores.shape == (6,) and np.isfinite(scores).all() and points.shape == (6, 2)
    scored = cli("predict", "--model", out, "--imagery", sample_scene["imagery"], "--area", sample_scene["area"],
                 "--out", tmp_path / "store", "--batch-size", 8)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "scored 64 tiles" in scored.stderr + scored.stdout
    # a warm start keeps its backbone
    refused = cli("train", "--data", dataset, "--out", tmp_path / "m", "--init", trained[0], "--backbone",
                  "mobilenet_v3_small", timeout=60)
    assert refused.returncode == 2 and "its backbone is xception, this training's is mobilenet_v3_small" in \
        refused.stderr
    with pytest.raises(UserError, match="freeze_cutoff must be at most 156 with backbone mobilenet_v3_small"):
        check_params({"backbone": "mobilenet_v3_small", "freeze_cutoff": 200})


def test_the_compact_backbone_scores_tiles_by_their_best_cell_and_trains_on_a_cpu(trained, dataset, sample_scene,
                                                                                tmp_path):
    import keras

    from tower_detector.training.model import build_model
    from tower_detector.training.params import COMPACT_PARAMS, default_params, head_of

    # its recipe and head follow from the backbone; a head given explicitly wins
    assert {k: default_params("none", "compact")[k] for k in COMPACT_PARAMS} == COMPACT_PARAMS
    assert head_of({"backbone": "compact", "head": "auto"}) == "cells"
    assert head_of({"backbone": "xception", "head": "auto"}) == "dense"
    assert head_of({"backbone": "compact", "head": "dense"}) == "dense"
    model, base = build_model(check_params({"backbone": "compact", "image_size": 80}))
    assert base.output.shape[1:3] == (5, 5)  # cells of 16 px
    # the tile's score is its best cell's: the sigmoid of the largest cell logit
    cells = keras.Model(model.input, model.get_layer("cells").output)
    tiles = np.random.default_rng(0).uniform(0, 255, (3, 80, 80, 3)).astype("float32")
    expected = 1 / (1 + np.exp(-np.asarray(cells(tiles)).reshape(3, -1).max(axis=1)))
    assert np.allclose(np.asarray(model(tiles))[:, 0], expected, atol=1e-5)

    out = tmp_path / "compact"
    done = cli("train", "--data", dataset, "--out", out, "--weights", "none", "--backbone", "compact",
               "--image-size", 80, "--batch-size", 16, "--epochs-fine", 1)
    assert done.returncode == 0, done.stderr[-2000:]
    params = json.loads((out / "params.json").read_text())
    assert (params["backbone"], params["head"], params["lr_phase2"]) == ("compact", "auto", COMPACT_PARAMS["lr_phase2"])
    assert "backbone: compact, head cells, weights none, input 80 px" in (out / "MODEL_CARD.md").read_text()
    with open(dataset / "index.csv") as f:
        images = np.stack([np.asarray(Image.open(dataset / r["path"])) for r in list(csv.DictReader(f))[:6]])
    classifier = Classifier(str(out), views=2)
    scores, points = classifier.predict_with_points(images, batch_size=4)
    assert scores.shape == (6,) and np.isfinite(scores).all() and points.shape == (6, 2)
    assert ((points >= 0) & (points <= 256)).all()
    assert np.allclose(scores, Classifier(str(out), views=2).predict(images), atol=1e-5)
    scored = cli("predict", "--model", out, "--imagery", sample_scene["imagery"], "--area", sample_scene["area"],
                 "--out", tmp_path / "store", "--batch-size", 8)
    assert scored.returncode == 0, scored.stderr[-2000:]
    # no pretrained weights, and a warm start keeps the network: refused in one line before TensorFlow loads
    for args, reason in ((("--weights", "imagenet"), "the compact backbone has no pretrained weights"),
                         (("--init", trained[0]), "its backbone is xception, this training's is compact")):
        refused = cli("train", "--data", dataset, "--out", tmp_path / "m", "--backbone", "compact", *args, timeout=60)
        assert refused.returncode == 2 and reason in refused.stderr and "Traceback" not in refused.stderr
    refused = cli("train", "--data", dataset, "--out", tmp_path / "m", "--init", out, "--head", "dense", timeout=60)
    assert refused.returncode == 2 and "its head is cells, this training's is dense" in refused.stderr


# -- warm start (--init) -----------------------------------------------------------------------------------------
def test_a_warm_start_begins_from_the_model_and_keeps_its_recipe(trained, dataset, tmp_path):
    import keras

    init, _ = trained
    out = tmp_path / "v2"
    # no epochs at all: what comes out is the model started from, weight for weight
    done = cli("train", "--data", dataset, "--out", out, "--init", init, "--epochs-fine", 0, "--batch-size", 16)
    assert done.returncode == 0, done.stderr[-2000:]
    params = json.loads((out / "params.json").read_text())
    first = json.loads((init / "params.json").read_text())
    assert params["init"] == str(init) and params["epochs_phase1"] == 0 and params["epochs_phase2"] == 0
    # the recipe is the first model's (72 px, dense 32, from scratch), not train's ImageNet defaults
    assert (params["image_size"], params["dense_size"], params["weights"]) == (72, 32, "none")
    assert params["focal_gamma"] == first["focal_gamma"] and params["lr_phase2"] == first["lr_phase2"]
    theirs = keras.saving.load_model(init / "model.keras", compile=False).get_weights()
    ours = keras.saving.load_model(out / "model.keras", compile=False).get_weights()
    assert len(theirs) == len(ours) and all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True))
    # run again: the finished warm start is kept; from another model it is another training, refused
    again = cli("train", "--data", dataset, "--out", out, "--init", init, "--epochs-fine", 0, "--batch-size", 16)
    assert again.returncode == 0 and "already holds this finished training" in again.stderr + again.stdout
    other = tmp_path / "other"
    shutil.copytree(init, other)
    params_other = json.loads((other / "params.json").read_text())
    (other / "params.json").write_text(json.dumps(dict(params_other, data_fingerprint="another")))
    refused = cli("train", "--data", dataset, "--out", out, "--init", other, "--epochs-fine", 0, "--batch-size", 16)
    assert refused.returncode == 2 and "holds a different training" in refused.stderr


def test_a_warm_start_from_another_network_is_refused_in_one_line_before_tensorflow(trained, dataset, tmp_path):
    init, _ = trained
    for extra, says in [(["--image-size", 96], "its image_size is 72, this training's is 96"),
                        (["--params", tmp_path / "p.json"], "its dense_size is 32, this training's is 64")]:
        (tmp_path / "p.json").write_text(json.dumps({"dense_size": 64}))
        done = cli("train", "--data", dataset, "--out", tmp_path / "m", "--init", init, *extra, timeout=60)
        assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()
    (tmp_path / "not-a-model").mkdir()
    done = cli("train", "--data", dataset, "--out", tmp_path / "m", "--init", tmp_path / "not-a-model", timeout=60)
    assert done.returncode == 2 and "is not a model directory" in done.stderr


def test_the_review_loop_end_to_end_on_a_tiny_scene(trained, dataset, tmp_path):
    """predict -> results -> a reviewer decides the top candidates from the truth -> export labels -> dataset
    --extra-labels -> train --init: the plumbing of the loop that lets reviews teach the model."""
    import sqlite3

    from tower_detector.datasets.labels import positive_tiles
    from tower_detector.sources.osm import load_towers

    scene, model = dataset.parent / "scene", trained[0]
    steps = [("predict", "--model", model, "--imagery", scene / "scene.tif", "--area", scene / "area.geojson",
              "--out", tmp_path / "store", "--batch-size", 16),
             ("results", tmp_path / "store", "--candidates", tmp_path / "c.gpkg", "--threshold", 0)]
    for step in steps:
        done = cli(*step)
        assert done.returncode == 0, done.stderr[-2000:]
    towers = load_towers(str(scene / "towers.geojson"))
    truth = {tuple(t) for t in positive_tiles(towers.lon, towers.lat, 18).tolist()}
    with sqlite3.connect(tmp_path / "c.gpkg") as db:  # the reviewer: the 12 best candidates, decided by the truth
        top = db.execute("SELECT tile_id, x, y FROM candidates ORDER BY rank LIMIT 12").fetchall()
        decided = {tile: "confirmed" if (x, y) in truth else "false_positive" for tile, x, y in top}
        db.executemany("UPDATE candidates SET status = ? WHERE tile_id = ?", [(v, k) for k, v in decided.items()])
    done = cli("export", "labels", "--candidates", tmp_path / "c.gpkg", "--out", tmp_path / "labels.gpkg")
    assert done.returncode == 0, done.stderr[-2000:]
    done = cli("dataset", "--area", scene / "area.geojson", "--towers", scene / "towers.geojson", "--imagery",
               scene / "scene.tif", "--out", tmp_path / "ds2", "--split", "0.6,0.2,0.2", "--block-size", 4,
               "--background-ratio", 2, "--seed", 1, "--extra-labels", tmp_path / "labels.gpkg")
    assert done.returncode == 0, done.stderr[-2000:]
    built = json.loads((tmp_path / "ds2" / "dataset.json").read_text())
    assert built["sources"]["extra_labels"] == str(tmp_path / "labels.gpkg")
    # a false positive on a tile OSM leaves empty becomes a hard negative
    assert built["hard_negatives"] == sum(v == "false_positive" for v in decided.values())
    done = cli("train", "--data", tmp_path / "ds2", "--out", tmp_path / "v2", "--init", model, "--epochs-fine", 1,
               "--batch-size", 16)
    assert done.returncode == 0, done.stderr[-2000:]
    params = json.loads((tmp_path / "v2" / "params.json").read_text())
    assert params["init"] == str(model) and params["data_dir"] == str(tmp_path / "ds2")
    assert f"review labels added: {tmp_path / 'labels.gpkg'}" in (tmp_path / "v2" / "MODEL_CARD.md").read_text()


def test_a_training_killed_as_it_began_is_still_ours(tmp_path):
    """Killed between making <out>.partial and renaming its state.json into place (seen in the search test): the
    folder holds only atomic_file's temp file, and the same command must start, not call it another's folder."""
    from types import SimpleNamespace

    from tower_detector.training.train import _start_state

    partial = tmp_path / "m.partial"
    partial.mkdir()
    (partial / ".state.json.1a2b3c4d.tmp").write_text('{"params": ')
    state, folder = _start_state(str(tmp_path / "m"), {"a": 1}, "none", SimpleNamespace(fingerprint="f"))
    assert folder == str(partial) and os.listdir(partial) == ["state.json"] and state["params"] == {"a": 1}
    (tmp_path / "n.partial").mkdir()
    (tmp_path / "n.partial" / "notes.txt").write_text("someone's")
    with pytest.raises(UserError, match="is not a training of ours"):
        _start_state(str(tmp_path / "n"), {"a": 1}, "none", SimpleNamespace(fingerprint="f"))


def test_killed_training_resumes_at_its_next_epoch(dataset, tmp_path):
    out = tmp_path / "m"
    (tmp_path / "p.json").write_text(json.dumps({"warmup_epochs": 2, "lr_schedule": "plateau"}))
    args = ["train", "--data", dataset, "--out", out, "--weights", "none", "--image-size", 72, "--batch-size", 16,
            "--epochs-top", 1, "--epochs-fine", 3, "--params", tmp_path / "p.json", "--events"]
    proc = subprocess.Popen([sys.executable, "-m", "tower_detector", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    seen, said = [], []
    for line in proc.stdout:
        event = json.loads(line)
        said += [event["message"]] if event["event"] == "log" else []
        if event["event"] == "progress":
            seen.append((event["epoch"], event["learning_rate"]))
            if event["epoch"] == 2:  # phase 2's first epoch is backed up: kill before the next one ends
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    # phase 2 warms up over its first 2 epochs (warmup_epochs): half the rate after the first
    peak = SCRATCH_PARAMS["lr_phase2"]
    assert [e for e, _ in seen] == [1, 2] and seen[1][1] == pytest.approx(peak / 2, rel=0.01)
    assert not out.exists()  # a model folder appears only whole: the training so far waits beside it
    assert (tmp_path / "m.partial" / "state.json").is_file()
    assert any(m.startswith("from scratch, phase 1's 1 epoch(s)") for m in said)  # the hint to skip it
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = [(e["epoch"], e["learning_rate"]) for e in events_of(again.stdout) if e["event"] == "progress"]
    assert [e for e, _ in resumed] == [3, 4]
    assert resumed[0][1] == pytest.approx(peak, rel=0.01)  # the warm-up went on where it was, not from 0
    assert (out / "model.keras").is_file() and not (out / "backup").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("m")] == ["m"]  # the partial became m


def test_a_training_failing_midway_leaves_no_model_and_never_touches_a_finished_one(trained, dataset, tmp_path):
    """A tile that passes the check before training (its header) but not the decoding (its pixels) stops the
    training in its first epoch: no model folder appears, and once the tile is fixed the same training resumes
    and appears whole. A finished model folder is never replaced: another training into it is refused."""
    import shutil

    from tower_detector.training.train import train

    ds = _copy_dataset(dataset, tmp_path / "ds")
    with open(ds / "index.csv") as f:
        victim = ds / next(r["path"] for r in csv.DictReader(f) if r["split"] == "train")
    whole = victim.read_bytes()
    victim.write_bytes(whole[:100])
    out, params = tmp_path / "m", dict(TINY, epochs_phase1=0)
    with pytest.raises(Exception, match="(?i)png"):
        train(str(ds), str(out), params, weights="none", log=lambda *a: None)
    assert not out.exists() and (tmp_path / "m.partial" / "state.json").is_file()
    victim.write_bytes(whole)
    train(str(ds), str(out), params, weights="none", log=lambda *a: None)
    assert (out / "model.keras").is_file() and json.loads((out / "state.json").read_text())["finished"]
    assert not (tmp_path / "m.partial").exists()

    finished = tmp_path / "finished"
    shutil.copytree(trained[0], finished)
    before = folder_bytes(finished)
    with pytest.raises(UserError, match="holds a different training"):
        train(str(ds), str(finished), dict(TINY, dense_size=64), weights="none")
    assert folder_bytes(finished) == before and not (tmp_path / "finished.partial").exists()


def test_cosine_schedule_warms_up_then_falls_to_zero_at_the_last_epoch(dataset, tmp_path):
    """lr_schedule cosine: after the warm-up the rate follows half a cosine, reaching 0 at phase 2's last step,
    and no plateau cuts it in between."""
    from tower_detector.training.train import train

    rates = []
    params = dict(TINY, epochs_phase1=0, epochs_phase2=3, warmup_epochs=1, lr_schedule="cosine", lr_phase2=4e-4)
    train(str(dataset), str(tmp_path / "m"), params, weights="none", log=lambda *a: None,
          progress=lambda *a, **k: rates.append(k["learning_rate"]))
    # the rate of each epoch's last step: the warm-up's peak, then half way down the cosine, then 0
    assert rates == pytest.approx([4e-4, 2e-4, 0.0], abs=1e-9)
    with pytest.raises(UserError, match="lr_schedule must be one of plateau, cosine"):
        check_params({"lr_schedule": "step"})


def test_mixed_bfloat16_training_saves_a_float32_model(dataset, tmp_path):
    import keras

    from tower_detector.training.model import SLOW_BFLOAT16, cpu_has_native_bfloat16
    from tower_detector.training.train import train

    out = tmp_path / "m"
    said = []
    result = train(str(dataset), str(out), dict(TINY, epochs_phase1=0), weights="none", log=said.append,
                   precision="mixed")
    assert result["dtype_policy"] == "mixed_bfloat16"
    # asked for on a CPU that emulates bfloat16, it still trains, with a warning that float32 is faster here
    warned = [m for m in said if m.startswith(f"warning: {SLOW_BFLOAT16}")]
    assert len(warned) == (0 if cpu_has_native_bfloat16() else 1)
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing leaks to what runs next
    model = Classifier(str(out)).model
    policies = {layer.dtype_policy.name for layer in model.get_layer("xception").layers} | \
        {layer.dtype_policy.name for layer in model.layers if layer.name != "xception"}
    assert policies == {"float32"}
    assert json.loads((out / "metrics.json").read_text())["dtype_policy"] == "mixed_bfloat16"


def test_precision_choices():
    from tower_detector.training.model import cpu_has_native_bfloat16, dtype_policy

    assert dtype_policy("float32", gpu=True) == "float32"
    assert dtype_policy("auto", gpu=True) == dtype_policy("mixed", gpu=True) == "mixed_float16"
    assert dtype_policy("mixed", gpu=False, cpu_bfloat16=False) == "mixed_bfloat16"  # asked for: emulated
    assert dtype_policy("auto", gpu=False, cpu_bfloat16=True) == "mixed_bfloat16"  # where it is native
    assert dtype_policy("auto", gpu=False, cpu_bfloat16=False) == "float32"
    assert dtype_policy("auto") == ("mixed_bfloat16" if cpu_has_native_bfloat16() else "float32")  # this CPU
    with pytest.raises(UserError, match="--precision must be one of"):
        dtype_policy("half")


def test_weights_file_is_loaded_into_the_base(dataset, tmp_path):
    import keras

    from tower_detector.training.train import train

    base = keras.applications.Xception(include_top=False, weights=None, input_shape=(72, 72, 3))
    path = tmp_path / "xception_notop.weights.h5"
    base.save_weights(path)
    train(str(dataset), str(tmp_path / "m"), dict(TINY, epochs_phase1=0, epochs_phase2=0), weights=str(path),
          log=lambda *a: None)
    model = Classifier(str(tmp_path / "m")).model
    loaded = model.get_layer(base.name).get_layer("block1_conv1").get_weights()[0]
    np.testing.assert_array_equal(loaded, base.get_layer("block1_conv1").get_weights()[0])
    # pretrained weights keep the original project's recipe where the params say nothing (from scratch has its own)
    saved = json.loads((tmp_path / "m" / "params.json").read_text())
    assert {k: saved[k] for k in ("lr_phase2", "lr_schedule", "warmup_epochs")} == \
        {k: DEFAULT_PARAMS[k] for k in ("lr_phase2", "lr_schedule", "warmup_epochs")}


def write_keras2_h5(path, model, skip=None):
    """model's weights in the layout of Keras 2's `save_weights` to .h5, the layout of Keras's ImageNet notop
    files: the root's layer_names (every layer, in order), and per layer a group with weight_names ("name/kernel:0")
    holding one dataset per weight under that name."""
    import h5py

    layers = [layer for layer in model.layers if layer.name != skip]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode() for layer in layers], dtype="S")  # as Keras 2 wrote
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.2"
        for layer in layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            for name, w in zip(names, layer.weights):
                group.create_dataset(name, data=np.asarray(w.numpy()))


def test_keras2_h5_notop_weights_load_into_the_base(tmp_path):
    """Keras distributes Xception's ImageNet weights as a Keras-2 .h5 notop file (not a Keras 3 .weights.h5):
    random weights written in that layout load into the model's base, every layer kind (convolution, separable
    convolution, batch norm statistics); a file with a layer missing is one line naming the file."""
    import keras

    from tower_detector.training.model import build_model

    base = keras.applications.Xception(include_top=False, weights=None, input_shape=(72, 72, 3))
    rng = np.random.default_rng(5)
    base.set_weights([rng.normal(0.5, 0.2, w.shape).astype(np.float32) for w in base.get_weights()])
    path = tmp_path / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras2_h5(path, base)
    model, loaded = build_model(check_params(TINY), weights=str(path))
    assert loaded.name in {layer.name for layer in model.layers}
    for name in ("block1_conv1", "block2_sepconv1", "block2_sepconv1_bn", "block14_sepconv2_bn"):
        want, got = base.get_layer(name).get_weights(), loaded.get_layer(name).get_weights()
        assert len(want) == len(got) > 0
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g, w)
    # the moving variance of a batch norm too: a statistic, not a trained weight
    assert loaded.get_layer("block14_sepconv2_bn").get_weights()[3].mean() == pytest.approx(0.5, abs=0.05)

    broken = tmp_path / "broken_notop.h5"
    write_keras2_h5(broken, base, skip="block14_sepconv2_bn")
    with pytest.raises(UserError, match="cannot load Xception weights from .*broken_notop.h5") as caught:
        build_model(check_params(TINY), weights=str(broken))
    assert "\n" not in str(caught.value)


def test_imagenet_offline_says_how_to_pass_a_weights_file(dataset, tmp_path):
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras"), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    proc = cli("train", "--data", dataset, "--out", tmp_path / "m", "--image-size", 72, "--events", env=env)
    error = events_of(proc.stdout)[-1]
    assert proc.returncode == 2 and error["event"] == "error"
    assert "ImageNet" in error["message"] and "--weights FILE" in error["message"] and "\n" not in error["message"]


# -- bad datasets and model directories --------------------------------------------------------------------
def _copy_dataset(dataset, dest):
    import shutil

    shutil.copytree(dataset, dest)
    return dest


def test_one_class_dataset_is_refused(dataset, tmp_path):
    from tower_detector.training.train import train

    ds = _copy_dataset(dataset, tmp_path / "ds")
    text = (ds / "index.csv").read_text().splitlines()
    rows = [text[0]] + [line[: line.rfind(",", 0, line.rfind(","))] + ",0," + line.rsplit(",", 1)[1]
                        for line in text[1:]]
    (ds / "index.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"split \(train\) has no tower tiles"):
        train(str(ds), str(tmp_path / "m"), TINY, weights="none")


def test_wrong_image_shape_and_missing_splits(dataset, tmp_path):
    from tower_detector.training.train import train

    ds = _copy_dataset(dataset, tmp_path / "ds")
    victim = sorted((ds / "tiles").iterdir())[3]
    Image.new("L", (128, 128)).save(victim, format="PNG")
    with pytest.raises(UserError, match=rf"{victim.name} is 128x128 L; tiles must be 256x256 RGB"):
        train(str(ds), str(tmp_path / "m"), TINY, weights="none")
    np.savez(tmp_path / "data.npz", x_train=np.zeros((4, 256, 256, 3), np.float32), y_train=np.zeros((4, 2)))
    with pytest.raises(UserError, match=r"x_train is float32 .* must be uint8"):
        train(str(tmp_path), str(tmp_path / "m2"), TINY, weights="none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a dataset"):
        train(str(tmp_path / "empty"), str(tmp_path / "m3"), TINY, weights="none")


def test_incompatible_or_missing_model_directories(trained, tmp_path):
    import shutil

    out, _ = trained
    copy = tmp_path / "old"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("model.keras"))
    with pytest.raises(UserError, match="has params.json but no model.keras"):
        Classifier(str(copy))
    params = json.loads((copy / "params.json").read_text())
    (copy / "params.json").write_text(json.dumps(dict(params, version=99, tower_detector_version="9.0")))
    with pytest.raises(UserError, match=r"written by tower-detector 9.0 \(model format 99\)"):
        Classifier(str(copy))
    with pytest.raises(UserError, match="no model directory"):
        Classifier(str(tmp_path / "nothing"))


def test_cli_bad_params_file_is_one_line(dataset, tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"dense_size": 64, "lr": 0.1}))
    proc = cli("train", "--data", dataset, "--out", tmp_path / "m", "--params", tmp_path / "p.json", "--weights",
               "none")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown parameter(s) lr" in proc.stderr


# -- search ----------------------------------------------------------------------------------------------------
def test_search_ranks_trials_by_the_validation_split_only():
    """Trials whose validation and test figures disagree: the best is the best on validation."""
    from tower_detector.training.search import ranked_trials

    def trial(tid, val, test, status="ok"):
        return {"tid": tid, "status": status, "value": val, "validation": {"pr_auc": val},
                "metrics": {"pr_auc": test}}

    entries = [trial(0, 0.70, 0.99), trial(1, 0.90, 0.60), trial(2, 0.80, 0.95), trial(3, 0.95, 0.99, "failed"),
               trial(4, None, 1.0), trial(5, 0.90, 0.97)]
    assert [e["tid"] for e in ranked_trials(entries)] == [1, 5, 2, 0]  # ties: the earlier trial first
    assert ranked_trials([trial(0, None, 0.9)]) == []


def test_search_without_a_validation_split_is_refused_in_one_line(sample_scene, tmp_path):
    from tower_detector.datasets.dataset import build_dataset
    from tower_detector.pipeline import options

    build_dataset(options("dataset", area=str(sample_scene["area"]), towers=str(sample_scene["towers"]),
                          imagery=str(sample_scene["imagery"]), out=str(tmp_path / "ds"), split="0.5,0.5",
                          block_size=1, seed=1), log=lambda *a: None)
    proc = cli("search", "--data", tmp_path / "ds", "--out", tmp_path / "s", "--trials", 1, "--weights", "none")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "validation split" in proc.stderr and "--split 0.7,0.15,0.15" in proc.stderr
    assert not (tmp_path / "s").exists()
    bad = cli("search", "--data", tmp_path / "ds", "--out", tmp_path / "s", "--trials", 1, "--metric", "f1")
    assert bad.returncode == 2 and "pr_auc" in bad.stderr


def test_killed_search_resumes_and_keeps_every_trial(dataset, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"dense_size": {"choice": [8, 16, 32]}, "dropout": {"uniform": [0.1, 0.5]},
                                 "optimizer": {"choice": ["adam", "sgd"]}}))
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(dict(TINY, epochs_phase2=0)))
    out = tmp_path / "search"
    args = ["search", "--data", dataset, "--out", out, "--trials", 3, "--space", space, "--params", fixed,
            "--weights", "none", "--metric", "roc_auc", "--events"]
    proc = subprocess.Popen([sys.executable, "-m", "tower_detector", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "log" and event["message"].startswith("trial 2/3"):
            proc.send_signal(signal.SIGKILL)  # trial 0 done, trial 1 just started
            break
    proc.wait(timeout=60)
    history = json.loads((out / "history.json").read_text())["trials"]
    assert [t["status"] for t in history] == ["ok", "running"]
    first_model = os.path.getmtime(out / "trials/000/model.keras")
    killed_params = history[1]["params"]

    again = cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    history = json.loads((out / "history.json").read_text())["trials"]
    assert [t["status"] for t in history] == ["ok"] * 3 and history[1]["params"] == killed_params
    assert all(t["params"]["lr_schedule"] == SCRATCH_PARAMS["lr_schedule"] for t in history)  # --weights none
    assert os.path.getmtime(out / "trials/000/model.keras") == first_model  # not trained again
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    values = [float(r["val_roc_auc"]) for r in rows]
    assert len(rows) == 3 and values == sorted(values, reverse=True)
    assert set(rows[0]) >= {"test_pr_auc", "test_roc_auc", "test_accuracy"}
    best = history[int(rows[0]["trial"])]
    # chosen on the validation split: each trial's value is its model's validation figure, not the test one
    for t in history:
        saved = json.loads((out / "trials" / f"{t['tid']:03d}" / "metrics.json").read_text())
        assert t["value"] == saved["validation"]["roc_auc"] and saved["validation"]["split"] == "val"
    assert json.loads((out / "best/params.json").read_text())["dense_size"] == best["params"]["dense_size"]
    assert events_of(again.stdout)[-1]["best_trial"] == best["tid"]
    assert sorted(os.listdir(out / "trials")) == ["000", "001", "002"]  # each trial's model whole, nothing aside
    assert sorted(os.listdir(out)) == ["best", "history.json", "summary.csv", "trials"]
    # the same command once more has nothing left to do
    assert cli(*args).returncode == 0
    assert json.loads((out / "history.json").read_text())["trials"] == history


def test_cam_point_lands_on_the_hottest_cell(trained):
    """The locate step alone: a feature map with one hot cell for the head's tower direction -> that cell."""
    classifier = Classifier(str(trained[0]))
    dense, tower = classifier.model.get_layer("dense"), classifier.model.get_layer("tower")
    w1, b1 = dense.get_weights()
    w2, _ = tower.get_weights()
    # the feature vector that raises the tower logit most through relu(f @ w1 + b1) @ w2
    direction = w1 @ np.maximum(w2[:, 0], 0)
    features = np.zeros((2, 8, 8, w1.shape[0]), np.float32)
    features[0, 2, 5] = 10 * direction / np.linalg.norm(direction)
    features[1, 7, 0] = 10 * direction / np.linalg.norm(direction)
    cells = np.asarray(classifier.cell_logits(features))
    assert classifier.params["dense_activation"] == "relu"  # the head by hand: relu(f w1 + b1) w2 + b2, per cell
    np.testing.assert_allclose(cells, np.maximum(features @ w1 + b1, 0) @ w2 + tower.get_weights()[1], atol=1e-4)
    points = cam_peaks(cells[..., 0], 256, 256)
    np.testing.assert_allclose(points[0], [5.5 * 32, 2.5 * 32], atol=16)  # within the hot 32-px cell
    np.testing.assert_allclose(points[1], [0.5 * 32, 7.5 * 32], atol=16)
    assert b1.shape == (w1.shape[1],)


def test_the_gpu_path_compiles_with_xla(dataset, trained, tmp_path, monkeypatch):
    """On a GPU, train and predict compile their graphs with XLA. The same graphs compile with XLA on this CPU, so
    this runs that path for real (as a GPU would, except for the device): a graph holding the antialiased resize
    (ScaleAndTranslate, which has no XLA kernel) fails at its first batch. The scores are the uncompiled ones."""
    from tower_detector.training import model as model_module
    from tower_detector.training import train as train_module

    monkeypatch.setattr(train_module, "has_gpu", lambda: True)
    monkeypatch.setattr(model_module, "has_gpu", lambda: True)
    said = []
    result = train_module.train(str(dataset), str(tmp_path / "m"), dict(TINY, epochs_phase1=0), weights="none",
                                log=said.append, precision="float32")  # float16 on a CPU: slow, nothing more
    assert any("GPU, XLA" in m for m in said) and 0 <= result["roc_auc"] <= 1

    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(dataset.rglob("*.png"))[:6]])
    xla = Classifier(str(trained[0]))
    assert xla._xla
    xla.warm_up(4)
    assert xla.pad_to == 4  # XLA compiles each batch size: a short batch is padded to the warmed-up one
    scores, points = xla.predict_with_points(images[:6], batch_size=4)
    monkeypatch.setattr(model_module, "has_gpu", lambda: False)
    want_scores, want_points = Classifier(str(trained[0])).predict_with_points(images[:6], batch_size=4)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)
    np.testing.assert_allclose(points, want_points, atol=0.5)
