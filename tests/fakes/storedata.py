"""Known chunk contents for store and results tests: deterministic scores, CAM points, failures and unscored
tiles derived from tile indices, so that any test can recompute what a chunk must hold."""

import numpy as np

from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import tile_cover
from tower_detector.prediction.store import open_store

# a triangle: columns of many different heights, so chunks start and end inside runs
TRIANGLE = {"type": "Polygon", "coordinates": [[[28.0, -15.0], [28.05, -15.0], [28.01, -14.96], [28.0, -15.0]]]}
JOB = {"identity": {"model": "sha256:model-a", "imagery": "scene.tif"}, "note": "test"}
REASONS = ("HTTP 404", "timeout after 4 retries")


def scores_of(x, y):
    """Deterministic scores in 0..1 (steps of 0.01, so 0.5, 0.97 and 1.0 all occur) from tile indices."""
    return (((x * 7 + y * 13) % 101) / 100).astype(np.float32)


def payload(plan, shard, index):
    """(x, y, score, cam_x, cam_y, errors) for a chunk: failures where (x + y) % 17 == 0 (two reasons), left
    unscored (NaN, no error) where x * y % 23 == 0, no CAM point where x % 3 == 0."""
    x, y = plan.chunk_tiles(shard, index)
    score = scores_of(x, y)
    score[(x * y) % 23 == 0] = np.nan
    cam_x = np.where(x % 3 == 0, np.nan, (x * 31) % 256).astype(np.float32)
    cam_y = np.where(x % 3 == 0, np.nan, (y * 17) % 256).astype(np.float32)
    errors = [REASONS[(a + b) % 2] if (a + b) % 17 == 0 else None for a, b in zip(x.tolist(), y.tolist())]
    return x, y, score, cam_x, cam_y, errors


def fill(store, skip=()):
    """Write every chunk of the store's plan but `skip`, with payload()'s contents."""
    for shard, index in store.plan.all_chunks():
        if (shard, index) not in skip:
            store.write_chunk(shard, index, *payload(store.plan, shard, index))


def expected(plan, chunks):
    """What the chunks hold, concatenated: dict of x, y, score (NaN where failed or unscored), cam_x, cam_y,
    failed (bool), reason (str or None)."""
    parts = []
    for shard, index in chunks:
        x, y, score, cam_x, cam_y, errors = payload(plan, shard, index)
        failed = np.array([e is not None for e in errors])
        parts.append((x, y, np.where(failed, np.nan, score).astype(np.float32), cam_x, cam_y, failed,
                      np.array(errors, dtype=object)))
    keys = ("x", "y", "score", "cam_x", "cam_y", "failed", "reason")
    return {k: np.concatenate(v) for k, v in zip(keys, zip(*parts))}


def check_chunk(arrays, plan, shard, index):
    """Assert that a chunk read back holds exactly payload()'s contents, with the stored dtypes."""
    x, y, score, cam_x, cam_y, errors = payload(plan, shard, index)
    failed = np.array([e is not None for e in errors])
    assert arrays["x"].dtype == np.uint32 and arrays["y"].dtype == np.uint32
    assert np.array_equal(arrays["x"], x) and np.array_equal(arrays["y"], y)
    assert arrays["score"].dtype == np.float32
    assert np.array_equal(arrays["score"], np.where(failed, np.nan, score), equal_nan=True)
    assert np.array_equal(arrays["cam_x"], cam_x, equal_nan=True)
    assert np.array_equal(arrays["cam_y"], cam_y, equal_nan=True)
    assert arrays["error_index"].tolist() == np.flatnonzero(failed).tolist()
    assert arrays["error_reason"].tolist() == [e for e in errors if e is not None]


# a finished store of known scores over a small area (results merges and the plugin's reloads are tested on it)
AREA = "28.0,-15.0,28.01,-14.99"


def scores_b(x, y):
    """Another model's scores: a different pattern over the same tiles."""
    return (((y * 7 + x * 13) % 101) / 100).astype(np.float32)


def make_store(spec, score_of, failed=(), cam_shift=0):
    """A finished store over AREA whose tile (x, y) scores score_of(x, y); tiles in `failed` have no imagery;
    CAM points from the tile indices, moved by cam_shift pixels."""
    cover = tile_cover(load_area(AREA), 18)
    store = open_store(spec, create=True)
    store.create_job(JOB, cover, cover.shard_ranges(2), 16)
    for shard, index in store.plan.all_chunks():
        x, y = store.plan.chunk_tiles(shard, index)
        score = score_of(x, y)
        errors = [None] * len(x)
        for k, tile in enumerate(zip(x.tolist(), y.tolist())):
            if tile in failed:
                score[k], errors[k] = np.nan, "HTTP 404"
        cam = ((x * 31 + cam_shift) % 256).astype(np.float32), ((y * 17) % 256).astype(np.float32)
        store.write_chunk(shard, index, x, y, score, *cam, errors=errors)
    store.close()
    return str(spec)
