"""`tower-detector predict` and `results`: a tiny trained model scoring the 8x8 sample scene into real stores
(local and moto's S3 on loopback), killed with SIGKILL and SIGTERM, with failing tiles and imagery outages."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.fakes.tileserver import TileServer
from tower_detector.common.errors import UserError
from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import tile_cover
from tower_detector.prediction.store import open_store
from tower_detector.sources.imagery import ImageryUnreachable, open_imagery


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
    from tower_detector.sources.imagery import open_imagery

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
    from tower_detector.training.model import Classifier, use_model_streams

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
    from tower_detector.training.model import Classifier

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
    from tower_detector.training.model import Classifier

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
    from tower_detector.common.errors import UserError
    from tower_detector.training.model import Classifier, view

    tiles, images = scene_images
    images = images[:12]
    one, eight = Classifier(str(tiny_model[0])), Classifier(str(tiny_model[0]), views=8)
    # the tiny model's scores all lie within about 1e-5 of 0.5: its logits, centred and scaled up to a spread of
    # 8, spread them over 0..1, so that what a turn changes shows above float32's rounding
    p = one.predict(images).astype(np.float64)
    logits = np.log(p / (1 - p))
    centre, scale = float(np.mean(logits)), 8.0 / float(np.ptp(logits))
    for classifier in (one, eight):
        tower = classifier.model.get_layer("tower")
        kernel, bias = tower.get_weights()
        tower.set_weights([kernel * scale, (bias - centre) * scale])
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
    from tower_detector.training.model import Classifier

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
    with open_store(str(tmp_path / "store")) as store:  # calibrated on one view's scores: not for 4 views
        assert "calibration" not in store.read_job()
    assert sorted(os.listdir(tmp_path / "store")) == before
    proc, events = run("predict", *common, "--views", 3)
    assert proc.returncode == 2 and "--views: invalid choice: 3 (choose from 1, 2, 4, 8)" in events[-1]["message"]


def test_mixed_precision_scores_agree_with_float32(reference, scene_images, tiny_model, sample_scene, tmp_path):
    from tower_detector.training.model import SLOW_BFLOAT16, Classifier, cpu_has_native_bfloat16

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


def tiny_model_dir(store):
    """The model directory a store's job was scored with."""
    with open_store(str(store)) as s:
        return Path(s.read_job()["model"])


def test_results_outputs(reference, tmp_path):
    out, _ = reference
    scores, _ = scores_of(out)
    threshold = float(np.median([s[0] for s in scores.values()]))
    proc, events = run("results", out, "--heatmap", tmp_path / "h.tif", "--candidates", tmp_path / "c.gpkg",
                       "--json", tmp_path / "original.json", "--geojson", tmp_path / "o.geojson", "--threshold",
                       threshold, "--events")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = events[-1]
    above = sum(s[0] >= threshold for s in scores.values())
    assert summary["complete"] and summary["scored"] == 64 and summary["candidates"] == above
    seed = json.loads((tmp_path / "original.json").read_text())
    assert {tuple(map(int, k.split("-")[:2])) for k in seed} == set(scores)
    assert all(abs(seed[f"{x}-{y}-18"] - scores[(x, y)][0]) < 1e-5 for x, y in scores)
    overlay = json.loads((tmp_path / "o.geojson").read_text())
    assert len(overlay["features"]) == above
    # the job keeps the model's calibration (one view): the summary gives the cut as a calibrated probability
    from tower_detector.training.evaluate import calibrate

    calibration = json.loads((tiny_model_dir(out) / "metrics.json").read_text())["validation"]["calibration"]
    with open_store(str(out)) as store:
        assert store.read_job()["calibration"] == calibration
    assert summary["threshold_probability"] == pytest.approx(float(calibrate([threshold], calibration)[0]))
    # --budget: the 10 highest scores
    proc, events = run("results", out, "--candidates", tmp_path / "b.gpkg", "--budget", 10, "--events")
    assert proc.returncode == 0, proc.stderr[-2000:]
    top = sorted((s[0] for s in scores.values()), reverse=True)
    assert events[-1]["candidates"] == sum(v > top[10] for v in top) and events[-1]["budget"] == 10


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
    from tests.fakes.s3proxy import FaultProxy

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

    from tower_detector.common.errors import UserError
    from tower_detector.pipeline import options
    from tower_detector.prediction.predict import predict
    from tower_detector.training.model import Classifier

    def out_of_memory(self, batch_size, tile_size=256, points=True):
        # a GPU's out-of-memory error, which a CPU-only machine cannot produce without exhausting the host
        raise tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating tensor with shape[{batch_size}]")

    monkeypatch.setattr(Classifier, "warm_up", out_of_memory)
    with pytest.raises(UserError, match=r"out of memory scoring a batch of 64 tiles: try --batch-size 32$"):
        predict(options("predict", model=str(tiny_model[0]), imagery=str(sample_scene["imagery"]),
                        out=str(tmp_path / "store"), area=str(sample_scene["area"])), log=lambda *a, **k: None)
    assert not list((tmp_path / "store").glob("chunks/*/*.npz"))  # nothing scored, nothing written


# -- an imagery outage never becomes finished work ------------------------------------------------
def predict_args(tiny_model, sample_scene, imagery, out, *extra):
    return ["predict", "--model", tiny_model[0], "--imagery", imagery, "--area", sample_scene["area"], "--out", out,
            "--checkpoint-every", 16, "--batch-size", 8, "--workers", 8, *extra, "--events"]


def tile_requests(server):
    return [p for p in server.paths if p.endswith(".png")]


def test_an_outage_stops_the_run_marks_nothing_done_and_the_same_command_resumes(tiny_model, sample_scene, tmp_path):
    out = tmp_path / "store"
    with TileServer(sample_scene["imagery"]) as server:
        args = predict_args(tiny_model, sample_scene, server.template("png"), out)
        server.status = {tile: 500 for tile in server.tiles}  # a server answering 500 to everything
        proc, events = run(*args)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert events[-1]["event"] == "error" and events[-1]["kind"] == "failure" and events[-1]["retry"]
        message = events[-1]["message"]
        # the whole first chunk, or the first 20 tiles, failed: whichever rule came first
        assert re.match(r"imagery unreachable: (16|20) of the last \1 tiles failed: HTTP 500 after 4 retries;", message)
        assert message.endswith("run the same command again to resume") and "\n" not in message
        # nothing answered: nothing was written, so nothing can be taken for finished
        assert list(out.iterdir()) == []

        server.reset()  # the server is back
        proc, events = run(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert events[-1]["tiles_scored"] == 64 and events[-1]["job_complete"]
        requested = tile_requests(server)
        assert len(requested) == len(set(requested)) == 64  # every tile fetched once, none skipped
    assert len(scores_of(out)[0]) == 64


def test_transient_failures_are_not_done_and_only_they_are_fetched_again(tiny_model, sample_scene, tmp_path):
    out = tmp_path / "store"
    with TileServer(sample_scene["imagery"]) as server:
        args = predict_args(tiny_model, sample_scene, server.template("png"), out)
        missing = server.tiles[3]
        server.status = {missing: 404}  # no imagery there: a permanent failure
        # three tiles of one column (one chunk): 500 for the first try and its 4 retries; two of them again for
        # the run's own retry pass; then each is served
        blip, flaky = server.tiles[20], server.tiles[28:37:8]
        server.flaky = {blip: (500, 5), **{tile: (500, 10) for tile in flaky}}
        proc, events = run(*args)
        assert proc.returncode == 1, proc.stderr[-2000:]
        error = events[-1]
        assert error["event"] == "error" and error["retry"]
        assert error["message"] == ("2 tiles failed transiently (HTTP 500 after 4 retries x2) and are not done; run "
                                    "the same command again to fetch them")
        requested = tile_requests(server)
        assert requested.count("/18/{}/{}.png".format(*blip)) == 6  # five tries, then served by the retry pass
        assert all(requested.count(f"/18/{x}/{y}.png") == 10 for x, y in flaky)  # tried in both passes
        manifest = json.loads((out / "manifest.json").read_text())
        assert not manifest["complete"] and manifest["tiles_failed_transient"] == 2
        assert manifest["tiles_failed_permanent"] == 1 and manifest["tiles_done"] == 62
        proc, events = run("results", out, "--heatmap", tmp_path / "h.tif", "--events")
        assert events[-1]["failed_transient"] == 2 and events[-1]["failed_permanent"] == 1
        assert not events[-1]["complete"] and "2 failed transiently" in events[-1]["message"]

        chunks = {p: p.read_bytes() for p in (out / "chunks").rglob("*.npz")}
        server.paths.clear()
        proc, events = run(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert events[-1]["tiles_retried"] == 2 and events[-1]["job_complete"]
        # exactly the transient failures were fetched again, once; the 404 is done and was not asked again
        assert sorted(tile_requests(server)) == sorted(f"/18/{x}/{y}.png" for x, y in flaky)
    # chunks are immutable: the re-scores went into retry layers beside them, one per pass that scored any
    assert all(p.read_bytes() == data for p, data in chunks.items())
    store = open_store(out)
    (shard, index), = [(s, c) for s, c in store.plan.all_chunks() if blip in set(zip(*store.plan.chunk_tiles(s, c)))]
    layers = sorted(str(p.relative_to(out / "chunks")) for p in (out / "chunks").rglob("*.r*.npz"))
    name = store.chunk_name(shard, index)[len("chunks/"):-len(".npz")]
    assert layers == [f"{name}.r01.npz", f"{name}.r02.npz"]
    scores, failed = scores_of(out)
    assert len(scores) == 64 and failed == {missing: "HTTP 404"}
    assert all(np.isfinite(scores[t][0]) for t in [blip, *flaky])
    assert store.pending_retries() == [] and store.progress()["complete"]
    proc, events = run("results", out, "--heatmap", tmp_path / "h.tif", "--events")
    assert events[-1]["complete"] and events[-1]["scored"] == 63 and events[-1]["failed_transient"] == 0


def test_a_resume_with_another_spelling_of_the_imagery_path_is_the_same_job(tiny_model, sample_scene, tmp_path):
    out = tmp_path / "store"
    relative = os.path.relpath(sample_scene["imagery"])
    proc, events = run(*predict_args(tiny_model, sample_scene, relative, out, "--shard", "0/2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc, events = run(*predict_args(tiny_model, sample_scene, os.path.abspath(relative), out, "--shard", "1/2"))
    assert proc.returncode == 0, events[-1]
    assert events[-1]["job_complete"]


def test_a_run_refused_by_the_imagery_binds_nothing_to_the_store(tiny_model, sample_scene, tmp_path):
    out = tmp_path / "store"
    with TileServer(sample_scene["imagery"], token="right") as server:
        proc, events = run(*predict_args(tiny_model, sample_scene, server.template("png", "wrong"), out))
        assert proc.returncode == 2 and "HTTP 403" in events[-1]["message"]
        assert not (out / "job.json").exists()
        proc, events = run(*predict_args(tiny_model, sample_scene, server.template("png", "right"), out))
        assert proc.returncode == 0, events[-1]


def test_a_store_written_before_failures_were_told_apart_gets_its_holes_filled(tiny_model, sample_scene, tmp_path):
    """The defect's store: every tile failed with a timeout, recorded as done, no markers. The new version finds
    those failures as transient, and fetches them."""
    out = tmp_path / "store"
    proc, _ = run(*predict_args(tiny_model, sample_scene, str(sample_scene["imagery"]), out))
    assert proc.returncode == 0
    store = open_store(out)
    old = tmp_path / "old"
    (old / "chunks").mkdir(parents=True)
    for name in ("job.json", "cover.json"):
        (old / name).write_bytes((out / name).read_bytes())
    for path in (out / "chunks").rglob("*.npz"):  # as the old version wrote them: no error_transient, no marker
        s, c = int(path.parent.name[1:]), int(path.stem[1:])
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k != "error_transient"}
        n = len(arrays["x"])
        arrays.update(score=np.full(n, np.nan, np.float32), error_index=np.arange(n, dtype=np.int32),
                      error_reason=np.array(["timeout after 4 retries"] * n))
        target = old / Path(*store.chunk_name(s, c).split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(target, **arrays)
    proc, events = run(*predict_args(tiny_model, sample_scene, str(sample_scene["imagery"]), old))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert events[-1]["tiles_retried"] == 64 and events[-1]["job_complete"]
    assert len(scores_of(old)[0]) == 64 and not scores_of(old)[1]


# -- the imagery's rules for giving up -----------------------------------------------------------------
@pytest.fixture
def black_hole():
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/{{z}}/{{x}}/{{y}}.png"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_is_given_up_on(black_hole):
    tiles = [(x, 100, 18) for x in range(40)]
    with open_imagery(black_hole, concurrency=20, timeout=0.3, deadline=0.8, backoff=0.05) as src:
        with pytest.raises(ImageryUnreachable, match=r"^imagery unreachable: 20 of the last 20 tiles failed: "
                                                     r"timeout after \d retr(y|ies); run the same command again"):
            list(src.fetch(tiles))


def test_a_refused_connection_says_so():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with open_imagery(f"http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png", retries=1, backoff=0.01) as src:
        result = next(src.fetch([(1, 1, 18)], give_up=False))
    assert result.error == "connection refused after 1 retry" and result.transient


def test_the_outage_rule_counts_only_transient_failures(sample_scene):
    """Half of the last 100 tiles failing transiently is an outage; permanent failures (no imagery) never are."""
    from tower_detector.sources.imagery import OutageGuard, TileResult

    guard = OutageGuard()
    for i in range(300):
        guard.check(TileResult(i, 0, 18, None, "HTTP 404"))  # no imagery anywhere here: never an outage
    for i in range(200):  # one in three failing: bad luck, not an outage
        guard.check(TileResult(i, 0, 18, None, "HTTP 503 after 4 retries", True) if i % 3 == 0
                    else TileResult(i, 0, 18, np.zeros((1, 1, 3), np.uint8), None))
    with pytest.raises(ImageryUnreachable, match="50 of the last 100 tiles failed: HTTP 503"):
        for i in range(100):
            guard.check(TileResult(i, 0, 18, None, "HTTP 503 after 4 retries", i % 4 != 0))


def test_bad_stores_of_retries_are_refused(tmp_path):
    from tests.fakes.storedata import JOB, TRIANGLE, payload
    from tower_detector.geo.areas import load_area
    from tower_detector.geo.cover import tile_cover

    cover = tile_cover(load_area(json.dumps(TRIANGLE)), 18)
    store = open_store(tmp_path / "s", create=True)
    store.create_job(JOB, cover, None, 40)
    x, y, score, cam_x, cam_y, _ = payload(store.plan, 0, 0)
    store.write_chunk(0, 0, x, y, score, cam_x, cam_y, errors={1: ("timeout after 4 retries", True),
                                                               2: ("HTTP 404", False)})
    retry, = store.pending_retries()
    assert retry.layer == 1 and retry.pos.tolist() == [1]
    with pytest.raises(ValueError, match="not the plan's tiles"):
        store.write_retry(retry._replace(x=retry.x + 1), [0.5])
    assert store.write_retry(retry, [0.25]).written
    assert not store.write_retry(retry, [0.75]).written  # written once: the first layer stays
    arrays = store.read_chunk(0, 0)
    assert arrays["score"][1] == np.float32(0.25) and arrays["error_index"].tolist() == [2]
    assert store.pending_retries() == []
    (tmp_path / "s" / "chunks" / "s0000" / "c0000000.r01.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="corrupt chunk chunks/s0000/c0000000.r01.npz"):
        store.read_chunk(0, 0)


# -- predict --processes N / --gpus N: N children into one store -------------------------------------------
def test_two_processes_score_what_one_does(reference, tiny_model, sample_scene, tmp_path):
    out = tmp_path / "store"
    proc, events = run("predict", "--model", tiny_model[0], "--imagery", sample_scene["imagery"], "--area",
                       sample_scene["area"], "--out", out, "--shards", 2, "--checkpoint-every", 10, "--batch-size",
                       4, "--precision", "float32", "--processes", 2, "--events")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = events[-1]
    assert result["event"] == "result" and result["workers"] == 2 and result["job_complete"] is True
    assert result["tiles_scored"] == 64 and result["chunks_written"] == 8
    # two shards of 32 tiles, chunks of 10, 10, 10, 2 each: the plan's chunks alternate between the workers
    assert [w["tiles_scored"] for w in result["per_worker"]] == [10 + 10 + 10 + 10, 10 + 2 + 10 + 2]
    starts = [e for e in events if e["event"] == "log" and "pid" in e]
    assert len(starts) == 2 and len({e["pid"] for e in starts}) == 2 and all("CPU only" in e["message"]
                                                                             for e in starts)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 64 and progress[-1]["workers"] == 2
    assert any(e["event"] == "log" and e["message"].startswith("worker 1/2: scoring with") for e in events)
    got, failed = scores_of(out)
    want, _ = scores_of(reference[0])
    assert not failed and got.keys() == want.keys()
    for tile, values in want.items():
        np.testing.assert_allclose(got[tile], values, atol=1e-5)  # one CPU a child: sums may add up in another order


def test_a_killed_child_fails_the_run_and_the_same_command_resumes(reference, tiny_model, sample_scene, tmp_path):
    out = tmp_path / "store"
    args = ["predict", "--model", tiny_model[0], "--imagery", sample_scene["imagery"], "--area",
            sample_scene["area"], "--out", out, "--shards", 2, "--checkpoint-every", 10, "--batch-size", 4,
            "--precision", "float32", "--gpus", 2, "--events"]  # no GPU here: the children score on the CPU
    parent = subprocess.Popen([sys.executable, "-m", "tower_detector", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    events = []
    for line in parent.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "log" and events[-1].get("worker") == 1 and "pid" in events[-1]:
            os.kill(events[-1]["pid"], signal.SIGKILL)  # before it loads its model: its part stays unscored
    assert parent.wait(timeout=300) == 1
    assert [e.get("message", "").split(":")[0] for e in events if e["event"] == "log" and "pid" in e] == [
        "worker 0/2", "worker 1/2"]
    assert events[-1]["event"] == "error" and events[-1]["retry"] is True
    assert "worker 1/2 was killed (SIGKILL)" in events[-1]["message"] and "run the same command" in \
        events[-1]["message"]
    store = open_store(out)
    assert 0 < len(store.done_chunks()) < 8 and not store.read_manifest()["complete"]
    proc, events = run(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # worker 0's four chunks were there; worker 1 scores its own (10 + 2 + 10 + 2 tiles)
    assert events[-1]["chunks_existing"] == 4 and events[-1]["tiles_scored"] == 24
    assert events[-1]["job_complete"] is True
    got, _ = scores_of(out)
    assert got.keys() == scores_of(reference[0])[0].keys()


def test_sigterm_reaches_every_child_and_the_run_resumes(tiny_model, sample_scene, tmp_path):
    out = tmp_path / "store"
    with TileServer(sample_scene["imagery"], latency=0.05) as server:
        args = ["predict", "--model", tiny_model[0], "--imagery", server.template("png"), "--area",
                sample_scene["area"], "--out", out, "--workers", 1, "--checkpoint-every", 8, "--batch-size", 4,
                "--processes", 2, "--events"]
        parent = subprocess.Popen([sys.executable, "-m", "tower_detector", *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        events = []
        for line in parent.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "progress" and events[-1]["done"] >= 8 and events[-1]["workers"] == 2:
                parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=120) == 143
        assert events[-1]["event"] == "error" and events[-1]["kind"] == "interrupted"
        store = open_store(out)
        assert 0 < len(store.done_chunks()) < 8  # each child finished the chunk under way, and stopped
        proc, events = run(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert events[-1]["job_complete"] is True and len(scores_of(out)[0]) == 64


def test_bad_input_for_processes_is_refused_before_any_child_starts(tiny_model, sample_scene, tmp_path):
    base = ["predict", "--model", tiny_model[0], "--imagery", sample_scene["imagery"], "--out", tmp_path / "s"]
    for extra, message in ((["--area", sample_scene["area"], "--processes", 2, "--gpus", 2], "not both"),
                           (["--processes", 2], "needs --area or --tiles"),
                           (["--area", sample_scene["area"], "--processes", 0], "--processes")):
        proc, events = run(*base, *extra, "--events")
        assert proc.returncode == 2 and events[-1]["event"] == "error" and message in events[-1]["message"]
        assert not any(e["event"] == "log" and "pid" in e for e in events)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="3")
    proc, events = run(*base, "--area", sample_scene["area"], "--gpus", 2, "--events", env=env)
    assert proc.returncode == 2 and "names 1 GPUs" in events[-1]["message"]


# -- predict --rate-limit R: at most R imagery requests a second for the whole run ---------------------------
def most_requests_allowed(rate, seconds, buckets):
    """The most requests that `buckets` token buckets of rate / buckets each (capacity 1: the first request of each
    is free, the next ones evenly spaced) can send within `seconds` as the server saw them; the slack covers
    one first request's connection set-up delaying its arrival."""
    return rate * (seconds + 0.05) + buckets


def test_rate_limit_bounds_the_runs_requests_retries_included(tiny_model, sample_scene, tmp_path):
    with TileServer(sample_scene["imagery"]) as server:
        server.flaky = {tile: (500, 1) for tile in server.tiles[3:6]}  # each answered once with a 500, then served
        proc, events = run("predict", "--model", tiny_model[0], "--imagery", server.template("png"), "--area",
                           sample_scene["area"], "--out", tmp_path / "store", "--workers", 8, "--checkpoint-every", 16,
                           "--batch-size", 8, "--rate-limit", 20, "--events")
        arrivals = list(server.arrivals)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert events[-1]["tiles_scored"] == 64 and events[-1]["job_complete"] is True
    assert len(arrivals) == 64 + 3  # every tile once, and the three retries
    assert any("at most 20 imagery requests a second (--rate-limit)" in e.get("message", "") for e in events)
    # by the server's clock: 67 requests, evenly spaced at 20 a second, take at least 66 / 20 = 3.3 s
    # (unlimited, eight workers fetch the scene on loopback many times faster)
    seconds = max(arrivals) - min(arrivals)
    assert len(arrivals) <= most_requests_allowed(20, seconds, 1), seconds


def test_processes_share_the_rate_limit_and_stay_within_it_together(tiny_model, sample_scene, tmp_path):
    with TileServer(sample_scene["imagery"]) as server:
        proc, events = run("predict", "--model", tiny_model[0], "--imagery", server.template("png"), "--area",
                           sample_scene["area"], "--out", tmp_path / "store", "--workers", 8, "--checkpoint-every", 8,
                           "--batch-size", 8, "--processes", 2, "--rate-limit", 8, "--events")
        arrivals = list(server.arrivals)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert events[-1]["tiles_scored"] == 64 and events[-1]["workers"] == 2
    assert any(e.get("message") == "--rate-limit 8: 4 requests/s for each of the 2 processes" for e in events)
    assert sum(any(e.get("message", "") == f"worker {i}/2: at most 4 imagery requests a second (--rate-limit), "
                   "retries included" for e in events) for i in range(2)) == 2
    # each child its bucket of 4 a second: together at most 8 a second; had each taken the run's 8, the two
    # together would fetch the 64 tiles in about 4 s, over this bound
    seconds = max(arrivals) - min(arrivals)
    assert len(arrivals) == 64 and len(arrivals) <= most_requests_allowed(8, seconds, 2), seconds


def test_a_rate_limit_needs_a_tile_server_and_a_positive_number(tiny_model, sample_scene, tmp_path):
    from tower_detector.pipeline import options
    from tower_detector.prediction.predict import check_inputs

    for extra in ([], ["--processes", 2]):  # refused before TensorFlow loads, and before any child starts
        proc, events = run("predict", "--model", tiny_model[0], "--imagery", sample_scene["imagery"], "--area",
                           sample_scene["area"], "--out", tmp_path / "store", "--rate-limit", 5, *extra, "--events")
        assert proc.returncode == 2 and events[-1]["event"] == "error"
        assert "--rate-limit limits the requests to an XYZ tile server" in events[-1]["message"]
        assert not any(e["event"] == "log" and "pid" in e for e in events)
    assert not (tmp_path / "store").exists()
    for bad in (0, -1.5, float("nan"), float("inf"), "5", True):  # a library caller's values
        opts = options("predict", model=str(tiny_model[0]), imagery="http://127.0.0.1:9/{z}/{x}/{y}.png",
                       area=str(sample_scene["area"]), out=str(tmp_path / "s"), rate_limit=bad)
        with pytest.raises(UserError, match="--rate-limit must be a positive number of requests per second"):
            check_inputs(opts)
