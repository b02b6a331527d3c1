"""The results store: deterministic chunk plans, write-once atomic chunks on disk and on S3 (moto's server on
loopback, behind a fault-injecting proxy), job identity on resume, and writers killed mid-write."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tests.fakes.s3proxy import FAULTS, FaultProxy
from tests.fakes.storedata import JOB, TRIANGLE, check_chunk, fill, payload, scores_of
from tower_detector.common.errors import UserError
from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import tile_cover
from tower_detector.prediction.store import ChunkPlan, Store, chunk_count, chunk_tiles, open_store


@pytest.fixture(scope="module")
def cover():
    return tile_cover(load_area(json.dumps(TRIANGLE)), 18)


# -- the plan --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shards,chunk_size", [(1, 1), (1, 50), (3, 37), (3, 10_000), (5, 64)])
def test_plan_holds_every_tile_exactly_once_in_column_order(cover, shards, chunk_size):
    ranges = cover.shard_ranges(shards)
    plan = ChunkPlan(cover, ranges, chunk_size)
    ids = []
    for shard, (a, b) in enumerate(ranges):
        sizes = []
        n = cover.shard(a, b).count
        assert plan.chunk_count(shard) == chunk_count(cover, (a, b), chunk_size) == -(-n // chunk_size)
        first, last = plan.chunk_columns(shard)
        for index in range(plan.chunk_count(shard)):
            x, y = plan.chunk_tiles(shard, index)
            x2, y2 = chunk_tiles(cover, (a, b), chunk_size, index)
            assert x.dtype == y.dtype == np.int64 and np.array_equal(x, x2) and np.array_equal(y, y2)
            assert ((x >= a) & (x < b)).all()
            assert (first[index], last[index]) == (x.min(), x.max())
            sizes.append(len(x))
            ids += [f"{i}-{j}-18" for i, j in zip(x.tolist(), y.tolist())]
        assert all(s == chunk_size for s in sizes[:-1])  # only the shard's last chunk may be short
        assert sizes[-1] == n - (plan.chunk_count(shard) - 1) * chunk_size
    assert ids == list(cover.tile_ids())  # every tile once, in the runs' order (x, then y)
    with pytest.raises(IndexError):
        plan.chunk_tiles(0, plan.chunk_count(0))
    with pytest.raises(IndexError):
        plan.chunk_tiles(len(ranges), 0)


def test_plan_at_country_scale_never_lists_the_tiles():
    # a bbox of ~36 M zoom-18 tiles (a Zambia-sized rectangle): its tile list would take ~600 MB
    cover = tile_cover(load_area("22.0,-18.0,33.0,-11.0"), 18)
    assert cover.count > 30_000_000
    (xmin, ymin, xmax, ymax), height = cover.bounds(), cover.bounds()[3] - cover.bounds()[1] + 1
    tracemalloc.start()
    plan = ChunkPlan(cover, cover.shard_ranges(8), 5000)
    last_shard = len(plan.shards) - 1
    x, y = plan.chunk_tiles(last_shard, plan.chunk_count(last_shard) - 1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20
    # a rectangle: position k of the cover is column xmin + k // height, row ymin + k % height
    k = cover.count - len(x) + np.arange(len(x))
    assert np.array_equal(x, xmin + k // height) and np.array_equal(y, ymin + k % height)
    assert x[-1] == xmax and y[-1] == ymax
    assert sum(plan.count(i) for i in range(8)) == cover.count


# -- jobs ------------------------------------------------------------------------------------------
def test_job_is_written_once_and_a_resume_must_match(cover, tmp_path):
    store = open_store(tmp_path / "run", create=True)
    shards = cover.shard_ranges(3)
    secret_job = {**JOB, "identity": {**JOB["identity"], "imagery": "https://t.example/{z}/{x}/{y}.png?access_token=S3CR3T"}}
    job = store.create_job(secret_job, cover, shards, 50)
    text = (tmp_path / "run" / "job.json").read_text()
    assert "S3CR3T" not in text and "access_token=***" in text
    assert job["plan"]["chunks"] == ChunkPlan(cover, shards, 50).total_chunks
    assert job["plan"]["shards"][0] == {"x_start": shards[0][0], "x_end": shards[0][1],
                                        "count": cover.shard(*shards[0]).count,
                                        "chunks": -(-cover.shard(*shards[0]).count // 50)}
    saved = json.loads((tmp_path / "run" / "cover.json").read_text())
    assert saved["count"] == cover.count and len(saved["shards"]) == 3

    # the same job again (another worker, or a resume): accepted, nothing rewritten
    before = (tmp_path / "run" / "job.json").stat().st_mtime_ns
    again = open_store(tmp_path / "run", create=True).create_job({**secret_job, "note": "resumed"}, cover, shards, 50)
    assert again == job and (tmp_path / "run" / "job.json").stat().st_mtime_ns == before

    other_cover = tile_cover(load_area("28.0,-15.0,28.01,-14.99"), 18)
    for args, what in (((dict(secret_job, identity={**secret_job["identity"], "model": "b"}), cover, shards, 50),
                        'identity model: "sha256:model-a" there, "b" now'),
                       ((secret_job, cover, shards, 40), "plan chunk_size"),
                       ((secret_job, cover, cover.shard_ranges(2), 50), "plan shards"),
                       ((secret_job, other_cover, None, 50),
                        f"plan count: {cover.count} there, {other_cover.count} now")):
        with pytest.raises(UserError, match="already holds a different job") as caught:
            open_store(tmp_path / "run", create=True).create_job(*args)
        message = str(caught.value)
        assert what in message and message.endswith("use a new --out") and "\n" not in message

    reopened = open_store(tmp_path / "run")
    assert reopened.read_job() == job
    assert reopened.plan.all_chunks() == ChunkPlan(cover, shards, 50).all_chunks()
    assert np.array_equal(reopened.cover.x, cover.x)


def test_bad_job_specs_are_user_errors(cover, tmp_path):
    store = open_store(tmp_path / "run", create=True)
    (a, b), (c, d) = cover.shard_ranges(2)
    for shards, chunk_size, match in (([(a, b)], 10, "hold .* of the cover's"),
                                      ([(a, d), (c, d)], 10, "disjoint"),
                                      ([(b, a)], 10, "ascending"),
                                      ([], 10, "empty"),
                                      ([(a, b), (c, d)], 0, "chunk size must be at least 1")):
        with pytest.raises(UserError, match=match):
            store.create_job(JOB, cover, shards, chunk_size)
    assert not (tmp_path / "run" / "job.json").exists()
    with pytest.raises(UserError, match="no prediction job in"):
        store.read_job()


# -- chunks on disk --------------------------------------------------------------------------------
@pytest.fixture
def local_store(cover, tmp_path):
    store = open_store(tmp_path / "run", create=True)
    store.create_job(JOB, cover, cover.shard_ranges(3), 50)
    return store


def test_chunks_round_trip_and_are_written_once(local_store, tmp_path):
    plan = local_store.plan
    x, y, score, cam_x, cam_y, errors = payload(plan, 1, 2)
    result = local_store.write_chunk(1, 2, x, y, score, cam_x, cam_y, errors)
    assert result.written and result.name == "chunks/s0001/c0000002.npz"
    path = tmp_path / "run" / "chunks" / "s0001" / "c0000002.npz"
    assert result.nbytes == path.stat().st_size
    check_chunk(local_store.read_chunk(1, 2), plan, 1, 2)
    with np.load(path, allow_pickle=False) as z:  # a plain npz any numpy reads
        assert sorted(z.files) == ["cam_x", "cam_y", "error_index", "error_reason", "error_transient", "score", "x",
                                   "y"]

    # a second write (a racing worker, a retry) changes nothing
    original = path.read_bytes()
    again = local_store.write_chunk(1, 2, x, y, np.zeros_like(score))
    assert not again.written and again.nbytes == 0 and path.read_bytes() == original
    assert local_store.stats == {"chunks_written": 1, "chunks_existing": 1, "bytes_written": result.nbytes}

    assert local_store.has_chunk(1, 2) and not local_store.has_chunk(1, 3)
    assert local_store.done_chunks() == {(1, 2)} == local_store.done_chunks(shard=1)
    assert local_store.done_chunks(shard=0) == set()
    assert (1, 2) not in local_store.missing_chunks() and len(local_store.missing_chunks()) == plan.total_chunks - 1

    # defaults: no CAM, no errors; errors as {position: reason}
    x, y = plan.chunk_tiles(0, 0)
    local_store.write_chunk(0, 0, x, y, scores_of(x, y), errors={3: "HTTP 500", 0: "outside imagery"})
    arrays = local_store.read_chunk(0, 0)
    assert np.isnan(arrays["cam_x"]).all() and np.isnan(arrays["cam_y"]).all()
    assert arrays["error_index"].tolist() == [0, 3]
    assert arrays["error_reason"].tolist() == ["outside imagery", "HTTP 500"]
    assert np.isnan(arrays["score"][[0, 3]]).all() and not np.isnan(arrays["score"][[1, 2]]).any()


def test_write_chunk_refuses_caller_mistakes(local_store):
    x, y = local_store.plan.chunk_tiles(0, 1)
    s = scores_of(x, y)
    for kwargs, match in ((dict(x=x[::-1], y=y[::-1], score=s), "not the plan's tiles"),
                          (dict(x=x[:-1], y=y[:-1], score=s[:-1]), "not the plan's tiles"),
                          (dict(x=x, y=y, score=s[:-1]), "score has"),
                          (dict(x=x, y=y, score=s + 1.5), "score values must lie in 0..1"),
                          (dict(x=x, y=y, score=s, cam_x=np.full(len(x), 300.0)), "cam_x values"),
                          (dict(x=x, y=y, score=s, errors=[None] * 3), "errors has"),
                          (dict(x=x, y=y, score=s, errors={len(x): "HTTP 404"}), "error positions")):
        with pytest.raises(ValueError, match=match):
            local_store.write_chunk(0, 1, **kwargs)
    assert local_store.done_chunks() == set()


def _snapshot(root):
    return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files}


def test_a_checkpoint_writes_one_new_file_of_constant_size(tmp_path):
    # 36 columns x 280 rows, 100 chunks of 100 tiles: random-looking scores so chunks compress alike
    cover = tile_cover(load_area("28.0,-15.2,28.05,-15.0"), 18)
    store = open_store(tmp_path / "run", create=True)
    store.create_job(JOB, cover, cover.shard_ranges(2), 100)
    chunks = store.plan.all_chunks()
    rng = np.random.default_rng(0)
    sizes = {}
    for k, (shard, index) in enumerate(chunks):
        x, y = store.plan.chunk_tiles(shard, index)
        if len(x) < 100:
            continue  # each shard's short last chunk
        before = _snapshot(tmp_path / "run")
        result = store.write_chunk(shard, index, x, y, rng.random(len(x)).astype(np.float32))
        after = _snapshot(tmp_path / "run")
        assert set(after) - set(before) == {os.path.join(*result.name.split("/"))}  # one new file, no temp left
        assert all(after[name] == mtime for name, mtime in before.items())  # nothing else rewritten
        sizes[k / len(chunks)] = result.nbytes
    early = [n for frac, n in sizes.items() if frac <= 0.1]
    late = [n for frac, n in sizes.items() if frac >= 0.9]
    assert early and late
    assert abs(np.mean(late) / np.mean(early) - 1) < 0.05  # the same bytes per checkpoint at 10% and at 90%
    files = _snapshot(tmp_path / "run")
    assert store.stats["bytes_written"] == sum(os.path.getsize(tmp_path / "run" / n) for n in files
                                               if n.startswith("chunks"))


_KILLED_WRITER = textwrap.dedent("""
    import os, stat, sys, time
    sys.path.insert(0, {repo!r})
    from tests.fakes.storedata import payload
    from tower_detector.prediction.store import open_store

    store = open_store(sys.argv[1])
    chunks = store.plan.all_chunks()
    hang_at = int(sys.argv[2])
    real_fsync = os.fsync

    def fsync(fd):
        real_fsync(fd)
        # a chunk's temp file (not a directory, not a marker): whole but not yet linked to its name
        chunk_temp = stat.S_ISREG(os.fstat(fd).st_mode) and ".npz." in os.readlink("/proc/self/fd/" + str(fd))
        if chunk_temp and len(store.done_chunks()) >= hang_at:
            print("HANG", flush=True)
            time.sleep(600)
    os.fsync = fsync
    for shard, index in chunks:
        store.write_chunk(shard, index, *payload(store.plan, shard, index))
        print("WROTE", shard, index, flush=True)
""")


def _run_until(args, marker, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER.format(repo=str(Path(__file__).resolve().parents[2])))
    proc = subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.split())
            if line.startswith(marker):
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    return lines


def test_a_writer_killed_mid_write_leaves_no_partial_chunk(local_store, tmp_path):
    root = tmp_path / "run"
    lines = _run_until([root, 4], "HANG", tmp_path)
    assert lines[-1] == ["HANG"] and len(lines) == 5
    store = open_store(root)
    done = store.done_chunks()
    assert len(done) == 4
    for shard, index in done:
        check_chunk(store.read_chunk(shard, index), store.plan, shard, index)
    temps = [n for n in _snapshot(root) if n.endswith(".tmp")]
    assert len(temps) == 1 and os.path.basename(temps[0]).startswith(".c0000004.npz.")  # killed before the link

    # a resume recomputes exactly the missing chunks, ignoring the dead writer's temp file
    store.create_job(JOB, store.cover, [(s["x_start"], s["x_end"]) for s in store.read_job()["plan"]["shards"]], 50)
    missing = store.missing_chunks()
    assert len(missing) == store.plan.total_chunks - 4 and (0, 4) in missing
    fill(store)
    assert store.stats["chunks_written"] == len(missing) and store.stats["chunks_existing"] == 4
    for shard, index in store.plan.all_chunks():
        check_chunk(store.read_chunk(shard, index), store.plan, shard, index)


def test_a_writer_killed_at_any_moment_leaves_only_whole_chunks(local_store, tmp_path):
    root = tmp_path / "run"
    _run_until([root, 10**9], "WROTE 1 2", tmp_path)  # killed somewhere in the next chunk's work
    store = open_store(root)
    done = store.done_chunks()
    assert len(done) >= 8
    for shard, index in done:
        check_chunk(store.read_chunk(shard, index), store.plan, shard, index)


def test_stale_temp_files_are_cleared_on_resume_and_corrupt_chunks_named(local_store, cover, tmp_path):
    folder = tmp_path / "run" / "chunks" / "s0000"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".c0000000.npz.0123456789ab.tmp", folder / ".c0000001.npz.0123456789ab.tmp"
    stale.write_bytes(b"half a chunk")
    fresh.write_bytes(b"another worker's chunk in progress")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    open_store(tmp_path / "run", create=True).create_job(JOB, cover, cover.shard_ranges(3), 50)
    assert not stale.exists() and fresh.exists()
    assert local_store.done_chunks() == set()

    fill(local_store)
    path = folder / "c0000003.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match=r"corrupt chunk chunks/s0000/c0000003.npz .*delete it and resume"):
        local_store.read_chunk(0, 3)
    path.unlink()
    with pytest.raises(UserError, match="chunk chunks/s0000/c0000003.npz is not in"):
        local_store.read_chunk(0, 3)


def test_iter_chunks_and_the_manifest(local_store):
    plan = local_store.plan
    fill(local_store, skip={(1, 1), (2, 0), (2, 1)})
    seen = [(s, i) for s, i, arrays in local_store.iter_chunks(concurrency=3)
            if check_chunk(arrays, plan, s, i) is None]
    assert seen == sorted(set(plan.all_chunks()) - {(1, 1), (2, 0), (2, 1)})
    assert [(s, i) for s, i, _ in local_store.iter_chunks([(2, 2), (0, 0)])] == [(2, 2), (0, 0)]

    manifest = local_store.finalize({"timings": {"predict_s": 1.5}})
    assert local_store.read_manifest() == manifest
    assert manifest["chunks_total"] == plan.total_chunks and manifest["chunks_done"] == plan.total_chunks - 3
    assert not manifest["complete"] and manifest["timings"] == {"predict_s": 1.5}
    assert manifest["shards"][1]["done"] == [[0, 1], [2, plan.chunk_count(1)]]
    assert manifest["shards"][2]["done"] == [[2, plan.chunk_count(2)]]
    assert manifest["tiles_done"] == plan.cover.count - sum(plan.chunk_len(*c) for c in [(1, 1), (2, 0), (2, 1)])
    fill(local_store)
    assert local_store.finalize()["complete"]  # rewritable


def test_open_store_bad_inputs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for spec, kwargs, match in ((blocker / "store", {"create": True}, "cannot write to the store"),
                                (tmp_path / "absent", {}, "no prediction job in .*absent: no such directory"),
                                ("https://example.com/store", {}, "unsupported store"),
                                ("s3://", {}, "no bucket in s3://"),
                                ("", {}, "the store is empty")):
        with pytest.raises(UserError, match=match) as caught:
            open_store(spec, **kwargs)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="no prediction job in"):
        open_store(tmp_path).read_job()


# -- S3 --------------------------------------------------------------------------------------------
_buckets = iter(range(10**6))


@pytest.fixture
def bucket(s3):
    name = f"store-test-{next(_buckets)}"
    s3.create_bucket(Bucket=name)
    return name


def _keys(s3, bucket):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_s3_store_one_put_per_chunk_write_once_and_paginated_listing(s3, bucket, cover, monkeypatch):
    with FaultProxy(s3.meta.endpoint_url, every=0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = open_store(f"s3://{bucket}/runs/zambia/", create=True, page_size=4)
        assert store.spec == f"s3://{bucket}/runs/zambia/"
        store.create_job(JOB, cover, cover.shard_ranges(3), 50)
        plan = store.plan
        puts = proxy.count("PUT")
        x, y, score, cam_x, cam_y, errors = payload(plan, 0, 1)
        assert any(errors)
        result = store.write_chunk(0, 1, x, y, score, cam_x, cam_y, errors)
        # one request per checkpoint, and one for the marker of a chunk with failed tiles
        assert result.written and proxy.count("PUT") == puts + 2
        put = [r for r in proxy.requests if r[0] == "PUT"][-1]
        assert "chunks/s0000/c0000001.npz" in put[1] and put[2] >= result.nbytes

        original = s3.get_object(Bucket=bucket, Key="runs/zambia/chunks/s0000/c0000001.npz")["Body"].read()
        again = store.write_chunk(0, 1, x, y, np.zeros_like(score))
        assert not again.written  # the conditional PUT was refused: the object is as first written
        assert s3.get_object(Bucket=bucket, Key="runs/zambia/chunks/s0000/c0000001.npz")["Body"].read() == original

        fill(store, skip={(2, 3)})
        n = len([k for k in _keys(s3, bucket) if "/chunks/" in k])  # chunks and their markers
        lists = proxy.count("GET", "list-type=2")
        heads = proxy.count("HEAD")
        done = store.done_chunks()
        assert done == set(plan.all_chunks()) - {(2, 3)}
        assert proxy.count("GET", "list-type=2") - lists == -(-n // 4)  # pages of 4 keys, no per-chunk requests
        assert proxy.count("HEAD") == heads
        assert store.done_chunks(shard=2) == {c for c in done if c[0] == 2}
        for shard, index, arrays in store.iter_chunks():
            check_chunk(arrays, plan, shard, index)
    markers = [f"runs/zambia/{Store.chunk_name(*c)[:-4]}.failed" for c in done if any(payload(plan, *c)[5])]
    assert _keys(s3, bucket) == sorted(["runs/zambia/job.json", "runs/zambia/cover.json",
                                        "runs/zambia/failures-marked.json"] + markers
                                       + [f"runs/zambia/{Store.chunk_name(*c)}" for c in done])


def test_s3_faults_lose_nothing(s3, bucket, cover, monkeypatch):
    with FaultProxy(s3.meta.endpoint_url, every=2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = open_store(f"s3://{bucket}/faulty", create=True, page_size=3)
        store.create_job(JOB, cover, cover.shard_ranges(3), 80)
        fill(store)
        written = store.stats
        assert store.done_chunks() == set(store.plan.all_chunks())
        for shard, index, arrays in store.iter_chunks():
            check_chunk(arrays, store.plan, shard, index)
        manifest = store.finalize()
        assert manifest["complete"]
        assert all(proxy.injected[kind] >= 1 for kind in FAULTS), proxy.injected
    # every chunk once; a PUT whose answer was lost is retried, finds its own object (412) and reports it there
    lost = {path for method, path, _, fault in proxy.requests
            if method == "PUT" and fault == "lost" and "chunks/" in path and ".npz" in path}
    assert written["chunks_existing"] == len(lost) >= 1
    assert written["chunks_written"] + written["chunks_existing"] == store.plan.total_chunks
    markers = [f"faulty/{Store.chunk_name(*c)[:-4]}.failed" for c in store.plan.all_chunks()
               if any(payload(store.plan, *c)[5])]
    assert _keys(s3, bucket) == sorted([f"faulty/{n}" for n in ("job.json", "cover.json", "manifest.json",
                                                                "failures-marked.json")] + markers
                                       + [f"faulty/{Store.chunk_name(*c)}" for c in store.plan.all_chunks()])
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.meta.endpoint_url)
    direct = open_store(f"s3://{bucket}/faulty")  # straight to moto, no proxy
    for shard, index, arrays in direct.iter_chunks():
        check_chunk(arrays, direct.plan, shard, index)


def test_s3_bad_inputs_are_one_line_without_secrets(s3, bucket, monkeypatch):
    secret = "wJalrXUtnFEMI-K7MDENG-SECRET"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    cases = [("s3://no-such-bucket-here/x", "S3 bucket 'no-such-bucket-here' does not exist")]
    for spec, match in cases:
        with pytest.raises(UserError, match=match) as caught:
            open_store(spec, create=True)
        assert secret not in str(caught.value) and "\n" not in str(caught.value)
    with FaultProxy(s3.meta.endpoint_url, deny=True) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(UserError, match=rf"access denied to s3://{bucket}/x/ \(403\)") as caught:
            open_store(f"s3://{bucket}/x")
        assert secret not in str(caught.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.meta.endpoint_url)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match=rf"no AWS credentials for s3://{bucket}/"):
        open_store(f"s3://{bucket}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(UserError, match=rf"no prediction job in s3://{bucket}/empty/"):
        open_store(f"s3://{bucket}/empty").read_job()
