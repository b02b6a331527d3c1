"""`tower-detector predict` and `results`: a tiny trained model scoring the 8x8 sample scene into real stores
(local and moto's S3 on loopback), killed with SIGKILL and SIGTERM, with failing tiles."""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
from tileserver import TileServer

from tower_detector.areas import load_area
from tower_detector.cover import tile_cover
from tower_detector.store import open_store


def run(*args, timeout=300, env=None):
    proc = subprocess.run([sys.executable, "-m", "tower_detector", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def scores_of(store_spec):
    """{(x, y): (score, cam_x, cam_y)} and {(x, y): reason} from every chunk; asserts no tile appears twice."""
    store = open_store(store_spec)
    scores, failed = {}, {}
    for shard, index in sorted(store.done_chunks()):
        chunk = store.read_chunk(shard, index)
        for i, (x, y) in enumerate(zip(chunk["x"].tolist(), chunk["y"].tolist())):
            assert (x, y) not in scores, f"tile {x}-{y} scored twice"
            scores[(x, y)] = (chunk["score"][i], chunk["cam_x"][i], chunk["cam_y"][i])
        for i, reason in zip(chunk["error_index"].tolist(), chunk["error_reason"].tolist()):
            failed[(int(chunk["x"][i]), int(chunk["y"][i]))] = reason
    return scores, failed


@pytest.fixture(scope="module")
def scene_tiles(sample_scene):
    cover = tile_cover(load_area(str(sample_scene["area"])), 18)
    return {(int(x), int(y)) for x, y in (map(int, t.split("-")[:2]) for t in cover.tile_ids())}


@pytest.fixture(scope="module")
def scene_images(scene_tiles, sample_scene):
    """The scene's tiles, sorted, and their images as the imagery source gives them."""
    from tower_detector.imagery import open_imagery

    tiles = sorted(scene_tiles)
    with open_imagery(str(sample_scene["imagery"])) as src:
        images, _ = src.fetch_batch(np.array([t[0] for t in tiles]), np.array([t[1] for t in tiles]), 18)
    return tiles, images


@pytest.fixture(scope="module")
def reference(tiny_model, sample_scene, tmp_path_factory):
    """An uninterrupted run over the scene: 64 tiles, 2 shards, chunks of 10 tiles."""
    out = tmp_path_factory.mktemp("reference") / "store"
    proc, events = run("predict", "--model", tiny_model[0], "--imagery", sample_scene["imagery"], "--area",
                       sample_scene["area"], "--out", out, "--shards", 2, "--checkpoint-every", 10, "--batch-size",
                       4, "--precision", "float32", "--events")  # float32 everywhere: the scores compare exactly
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, events[-1]


def test_every_tile_is_scored_once_and_matches_the_model(reference, scene_tiles, scene_images, tiny_model):
    from tower_detector.model import Classifier, use_model_streams

    out, result = reference
    scores, failed = scores_of(out)
    assert set(scores) == scene_tiles and not failed
    assert result["tiles_scored"] == 64 and result["chunks_written"] == 8 and result["tiles_failed"] == 0
    # the CLI splits a CPU-only machine's CPUs into two concurrent model calls; in this process TensorFlow is
    # running already, so here it keeps one (and the scores agree below)
    assert result["model_streams"] == (2 if (os.cpu_count() or 1) >= 2 else 1)
    assert isinstance(result["warm_up_seconds"], float)  # tracing the graph, reported outside the run's seconds
    assert isinstance(result["checkpoint_seconds"], float)  # reported, and its share in the summary line:
    assert f"{100 * result['checkpoint_seconds'] / result['seconds']:.1f} % of the time writing checkpoints" in \
        result["message"]
    tiles, images = scene_images
    classifier = Classifier(str(tiny_model[0]))
    assert use_model_streams() == 1 and classifier.streams == 1
    expected = classifier.predict(images, batch_size=4)
    np.testing.assert_allclose([scores[t][0] for t in tiles], expected, atol=1e-5)
    cams = np.array([scores[t][1:] for t in tiles])
    assert np.isfinite(cams).all() and (cams >= 0).all() and (cams <= 256).all()


def test_two_model_streams_give_every_batch_its_own_scores(scene_images, tiny_model):
    from tower_detector.model import Classifier

    tiles, images = scene_images
    want_scores, want_points = Classifier(str(tiny_model[0])).predict_with_points(images, batch_size=4)
    two = Classifier(str(tiny_model[0]))
    two.streams = 2  # as use_model_streams sets it in a predict process; 16 batches over two threads
    scores, points = two.predict_with_points(images, batch_size=4)
    np.testing.assert_array_equal(scores, want_scores)  # the same threads per call, so the same arithmetic
    np.testing.assert_array_equal(points, want_points)
    batches = want_points.reshape(16, -1)  # no two batches alike, so a batch in another's place would show
    assert len(np.unique(batches, axis=0)) == 16


def test_warm_up_traces_uncounted_and_padded_batches_score_as_unpadded(scene_images, tiny_model):
    from tower_detector.model import Classifier

    tiles, images = scene_images
    classifier = Classifier(str(tiny_model[0]))
    classifier.warm_up(8)
    assert classifier.model_seconds == 0 and classifier.pad_to is None  # a CPU: any batch size, no padding
    want_scores, want_points = classifier.predict_with_points(images[:3], batch_size=3)
    classifier.pad_to = 8  # as warm_up sets it on a GPU, where XLA would compile each batch size anew
    scores, points = classifier.predict_with_points(images[:3], batch_size=3)
    assert scores.shape == (3,) and points.shape == (3, 2)  # the padding's scores are dropped
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    np.testing.assert_allclose(points, want_points, atol=1e-4)


def test_views_average_the_turned_tiles_and_turn_the_points_back(scene_images, tiny_model):
    from tower_detector.events import UserError
    from tower_detector.model import Classifier, view

    tiles, images = scene_images
    images = images[:12]
    one, eight = Classifier(str(tiny_model[0])), Classifier(str(tiny_model[0]), views=8)
    # the tiny model's scores all lie within 1e-5 of 0.5: its logits, centred and scaled up 100,000 times, spread
    # them over 0..1, so that what a turn changes shows above float32's rounding
    p = one.predict(images)
    centre = float(np.mean(np.log(p / (1 - p))))
    for classifier in (one, eight):
        tower = classifier.model.get_layer("tower")
        kernel, bias = tower.get_weights()
        tower.set_weights([kernel * 1e5, (bias - centre) * 1e5])
    scores, points = eight.predict_with_points(images, batch_size=5)
    assert scores.max() - scores.min() > 0.1
    views = [one.predict(np.ascontiguousarray(view(images, i))) for i in range(8)]
    np.testing.assert_allclose(scores, np.mean(views, axis=0), atol=1e-5)
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))  # a quarter turn counter-clockwise
    assert np.abs(one.predict(turned) - views[0]).max() > 1e-4  # one view's score depends on the turn
    turned_scores, turned_points = eight.predict_with_points(turned, batch_size=5)
    np.testing.assert_allclose(turned_scores, scores, atol=1e-5)  # eight views' does not
    # and the point turns with the tile: (x, y) -> (y, 256 - x), which an unturned cell map would not give
    np.testing.assert_allclose(turned_points, np.stack([points[:, 1], 256 - points[:, 0]], axis=1), atol=1e-3)
    assert np.abs(points - [128, 128]).max() > 10  # points off the centre, so that turning them shows
    with pytest.raises(UserError, match="views must be one of 1, 2, 4, 8, not 3"):
        Classifier(str(tiny_model[0]), views=3)


def test_predict_views_score_the_store_and_are_part_of_the_job(tiny_model, sample_scene, scene_images, tmp_path):
    from tower_detector.model import Classifier

    common = ["--model", tiny_model[0], "--imagery", sample_scene["imagery"], "--area", sample_scene["area"],
              "--out", tmp_path / "store", "--batch-size", 8, "--precision", "float32", "--events"]
    proc, events = run("predict", *common, "--views", 4)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any("4 views a tile" in e.get("message", "") for e in events)
    tiles, images = scene_images
    scores, _ = scores_of(tmp_path / "store")
    np.testing.assert_allclose([scores[t][0] for t in tiles],
                               Classifier(str(tiny_model[0]), views=4).predict(images, batch_size=8), atol=1e-5)
    # resumed with other views, the store would mix two kinds of scores: refused, the store as it was
    before = sorted(os.listdir(tmp_path / "store"))
    proc, events = run("predict", *common, "--views", 1)
    assert proc.returncode != 0
    assert "already holds a different job (identity views: 4 there, null now)" in events[-1]["message"]
    assert sorted(os.listdir(tmp_path / "store")) == before
    proc, events = run("predict", *common, "--views", 3)
    assert proc.returncode == 2 and "--views: invalid choice: 3 (choose from 1, 2, 4, 8)" in events[-1]["message"]


def test_mixed_precision_scores_agree_with_float32(reference, scene_images, tiny_model, sample_scene, tmp_path):
    from tower_detector.model import SLOW_BFLOAT16, Classifier, cpu_has_native_bfloat16

    assert reference[1]["dtype_policy"] == "float32"  # as asked
    assert Classifier(str(tiny_model[0]), precision="auto").policy == \
        ("mixed_bfloat16" if cpu_has_native_bfloat16() else "float32")  # auto on a CPU: bfloat16 where native
    tiles, images = scene_images
    mixed = Classifier(str(tiny_model[0]), precision="mixed")
    assert mixed.policy == "mixed_bfloat16"
    assert {layer.dtype_policy.name for layer in mixed.model.get_layer("xception").layers} == {"mixed_bfloat16"}
    scores, points = mixed.predict_with_points(images, batch_size=8)
    expected, expected_points = Classifier(str(tiny_model[0])).predict_with_points(images, batch_size=8)
    assert scores.dtype == np.float32 and points.shape == expected_points.shape
    np.testing.assert_allclose(scores, expected, atol=0.02)  # bfloat16 keeps ~3 significant digits

    proc, events = run("predict", "--model", tiny_model[0], "--imagery", sample_scene["imagery"], "--area",
                       sample_scene["area"], "--out", tmp_path / "store", "--precision", "mixed", "--events")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert events[-1]["dtype_policy"] == "mixed_bfloat16" and events[-1]["tiles_scored"] == len(tiles)
    warned = [e for e in events if e.get("message", "").startswith(f"warning: {SLOW_BFLOAT16}")]
    assert len(warned) == (0 if cpu_has_native_bfloat16() else 1)  # emulated bfloat16 is slower: the log says so


def test_results_outputs(reference, tmp_path):
    out, _ = reference
    scores, _ = scores_of(out)
    threshold = float(np.median([s[0] for s in scores.values()]))
    proc, events = run("results", out, "--heatmap", tmp_path / "h.tif", "--candidates", tmp_path / "c.gpkg",
                       "--json", tmp_path / "seed.json", "--geojson", tmp_path / "o.geojson", "--threshold",
                       threshold, "--events")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = events[-1]
    above = sum(s[0] >= threshold for s in scores.values())
    assert summary["complete"] and summary["scored"] == 64 and summary["candidates"] == above
    seed = json.loads((tmp_path / "seed.json").read_text())
    assert {tuple(map(int, k.split("-")[:2])) for k in seed} == set(scores)
    assert all(abs(seed[f"{x}-{y}-18"] - scores[(x, y)][0]) < 1e-5 for x, y in scores)
    overlay = json.loads((tmp_path / "o.geojson").read_text())
    assert len(overlay["features"]) == above


def test_killed_at_random_points_ends_identical_to_an_uninterrupted_run(reference, tiny_model, sample_scene,
                                                                         tmp_path):
    out = tmp_path / "store"
    args = [sys.executable, "-m", "tower_detector", "predict", "--model", str(tiny_model[0]), "--imagery",
            str(sample_scene["imagery"]), "--area", str(sample_scene["area"]), "--out", str(out), "--shards", "2",
            "--checkpoint-every", "10", "--batch-size", "4", "--precision", "float32", "--events"]
    rng = random.Random(5)
    kills = 0
    for _ in range(12):  # bounded: every run scores at least one chunk before its kill point
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        target = rng.randint(1, 10)  # kill after this many progress events (4 tiles each) of this run
        seen = 0
        for line in proc.stdout:
            if json.loads(line)["event"] == "progress":
                seen += 1
                if seen == target:
                    proc.kill()
                    kills += 1
                    break
        if proc.wait(timeout=120) == 0:
            break
    assert kills >= 3 and proc.returncode == 0
    got, failed = scores_of(out)
    want, _ = scores_of(reference[0])
    assert not failed and got.keys() == want.keys()
    for tile, values in want.items():
        np.testing.assert_array_equal(got[tile], values)


def test_sigterm_finishes_the_chunk_then_exits_143_and_resumes(tiny_model, sample_scene, tmp_path):
    out = tmp_path / "store"
    with TileServer(sample_scene["imagery"], latency=0.05) as server:
        args = [sys.executable, "-m", "tower_detector", "predict", "--model", str(tiny_model[0]), "--imagery",
                server.template("png"), "--area", str(sample_scene["area"]), "--out", str(out), "--workers", "1",
                "--checkpoint-every", "16", "--batch-size", "4", "--events"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "progress" and events[-1]["done"] == 20:  # chunk 1, second batch
                proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
        store = open_store(out)
        assert store.done_chunks() == {(0, 0), (0, 1)}  # the chunk under way was finished, no other begun
        assert events[-1]["event"] == "error" and events[-1]["kind"] == "interrupted"
        proc, events = run(*args[3:])
    assert proc.returncode == 0 and events[-1]["chunks_existing"] == 2 and events[-1]["tiles_scored"] == 32
    assert len(scores_of(out)[0]) == 64


def test_missing_and_corrupt_tiles_are_recorded_and_the_run_completes(tiny_model, sample_scene, tmp_path):
    out = tmp_path / "store"
    with TileServer(sample_scene["imagery"]) as server:
        missing, corrupt = server.tiles[30], server.tiles[41]
        server.status = {missing: 404}
        server.corrupt = {corrupt}
        proc, events = run("predict", "--model", tiny_model[0], "--imagery", server.template("png"), "--area",
                           sample_scene["area"], "--out", out, "--checkpoint-every", 16, "--events")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert events[-1]["tiles_failed"] == 2 and events[-1]["tiles_scored"] == 62
    scores, failed = scores_of(out)
    assert failed[missing] == "HTTP 404" and failed[corrupt].startswith("truncated/corrupt image")
    assert np.isnan(scores[missing][0]) and np.isnan(scores[corrupt][0])
    proc, events = run("results", out, "--heatmap", tmp_path / "h.tif", "--events")
    assert events[-1]["failed"] == 2 and events[-1]["failures"]["HTTP 404"] == 1


def test_s3_store_with_throttling_and_500s_loses_nothing(tiny_model, sample_scene, s3, reference, tmp_path):
    from s3proxy import FaultProxy

    s3.create_bucket(Bucket="predict-jobs")
    with FaultProxy(s3.meta.endpoint_url, every=3) as proxy:
        env = dict(os.environ, AWS_ENDPOINT_URL=proxy.url)
        proc, events = run("predict", "--model", tiny_model[0], "--imagery", sample_scene["imagery"], "--area",
                           sample_scene["area"], "--out", "s3://predict-jobs/scene", "--shards", 2,
                           "--checkpoint-every", 10, "--batch-size", 4, "--precision", "float32", "--events", env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert sum(proxy.injected.values()) >= 3
    got, _ = scores_of("s3://predict-jobs/scene")
    want, _ = scores_of(reference[0])
    assert got.keys() == want.keys()
    for tile, values in want.items():
        np.testing.assert_array_equal(got[tile], values)


@pytest.mark.parametrize("extra, message", [
    (["--shard", "3/2"], "need 0 <= i < n"),
    (["--shard=-1/4"], "need 0 <= i < n"),
    (["--shard", "a/b"], "--shard must be i/n"),
    (["--zoom", "17"], "HTTP 404"),
])
def test_bad_shards_and_a_zoom_the_imagery_lacks(tiny_model, sample_scene, tmp_path, extra, message):
    with TileServer(sample_scene["imagery"]) as server:
        proc, events = run("predict", "--model", tiny_model[0], "--imagery", server.template("png"), "--area",
                           sample_scene["area"], "--out", tmp_path / "store", *extra, "--events")
    assert proc.returncode == 2 and events[-1]["event"] == "error"
    assert message in events[-1]["message"] and "\n" not in events[-1]["message"]


def test_bad_models_stores_and_tile_lists(tiny_model, sample_scene, tmp_path):
    import shutil

    def fails(*args, message):
        proc, events = run("predict", *args, "--imagery", sample_scene["imagery"], "--events")
        assert proc.returncode == 2 and message in events[-1]["message"], events[-1]

    area = ["--area", sample_scene["area"]]
    fails("--model", tmp_path / "none", *area, "--out", tmp_path / "s", message="no model directory")
    old = tmp_path / "old"
    shutil.copytree(tiny_model[0], old)
    params = json.loads((old / "params.json").read_text())
    (old / "params.json").write_text(json.dumps(dict(params, version=2)))
    fails("--model", old, *area, "--out", tmp_path / "s", message="model format 2")
    (tmp_path / "file").write_text("x")
    fails("--model", tiny_model[0], *area, "--out", tmp_path / "file" / "store", message="cannot write to the store")
    (tmp_path / "empty.json").write_text(json.dumps({"format": "tower-detector/tile-cover", "zoom": 18, "count": 0,
                                                     "runs": []}))
    fails("--model", tiny_model[0], "--tiles", tmp_path / "empty.json", "--out", tmp_path / "s",
          message="holds no tiles")


def test_a_batch_too_big_for_the_gpu_fails_before_any_chunk(tiny_model, sample_scene, tmp_path, monkeypatch):
    import tensorflow as tf

    from tower_detector.events import UserError
    from tower_detector.model import Classifier
    from tower_detector.predict import predict

    def out_of_memory(self, batch_size, tile_size=256, points=True):
        # a GPU's out-of-memory error, which a CPU-only machine cannot produce without exhausting the host
        raise tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating tensor with shape[{batch_size}]")

    monkeypatch.setattr(Classifier, "warm_up", out_of_memory)
    with pytest.raises(UserError, match=r"out of memory scoring a batch of 64 tiles: try --batch-size 32$"):
        predict(str(tiny_model[0]), str(sample_scene["imagery"]), str(tmp_path / "store"),
                area=str(sample_scene["area"]), log=lambda *a, **k: None)
    assert not list((tmp_path / "store").glob("chunks/*/*.npz"))  # nothing scored, nothing written
