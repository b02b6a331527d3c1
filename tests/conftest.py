"""Shared fixtures: one small synthetic scene per test session, moto's S3 on loopback, and the reference data's
location."""

from pathlib import Path

import pytest

# Debian's GDAL (osgeo), which some tests use to check GeoPackages as QGIS reads them, loaded before anything
# else: loaded after a Keras model was saved in this process, its SQLite lacked R*Tree ("no such module: rtree").
from osgeo import gdal  # noqa: F401  (first, on purpose)

from tests.fakes.training import TINY_TRAINING

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def sample_scene(tmp_path_factory):
    """An 8x8-tile scene (seed 3): {"dir", "imagery", "towers", "area", "info"} with Paths."""
    from tower_detector.synthetic import write_scene

    out = tmp_path_factory.mktemp("scene")
    info = write_scene(str(out), tiles_x=8, tiles_y=8, seed=3)
    return {"dir": out, "imagery": out / "scene.tif", "towers": out / "towers.geojson",
            "area": out / "area.geojson", "info": info}


@pytest.fixture
def shared_data():
    """../shared/data, or a skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data absent: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on loopback, with dummy credentials in the environment; yields a boto3 client.

    AWS_ENDPOINT_URL points at the server (client.meta.endpoint_url), so boto3 and GDAL's /vsis3/ in the code
    under test reach it. Buckets are the tests' to create; moto keeps them for the whole process, so use names
    no other module uses.
    """
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true",
                           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(key, raising=False)
        yield boto3.client("s3")
    moto.stop()


@pytest.fixture(scope="session")
def training_set(tmp_path_factory):
    """A dataset from a 16x16-tile scene (seed 7), 0.6/0.2/0.2 in 2x2-tile blocks joined along power lines:
    every split has both classes."""
    from tower_detector.datasets.dataset import build_dataset
    from tower_detector.pipeline import options
    from tower_detector.synthetic import write_scene

    work = tmp_path_factory.mktemp("training-set")
    write_scene(str(work / "scene"), tiles_x=16, tiles_y=16, seed=7)
    summary = build_dataset(options("dataset", area=str(work / "scene/area.geojson"),
                                    towers=str(work / "scene/towers.geojson"), imagery=str(work / "scene/scene.tif"),
                                    out=str(work / "ds"), split="0.6,0.2,0.2", block_size=2, background_ratio=2,
                                    seed=1), log=lambda *a: None)
    assert all(s["tower"] and s["background"] for s in summary["splits"].values())
    return work / "ds"


@pytest.fixture(scope="session")
def tiny_model(training_set, tmp_path_factory):
    """A model directory trained for real on training_set at a tiny size: (path, the test metrics)."""
    from tower_detector.training.train import train

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    return out, train(str(training_set), str(out), TINY_TRAINING, weights="none", log=lambda *a: None)


# Tests that train or score with TensorFlow (through these fixtures) are slow: `make test-fast` leaves them out.
SLOW_FIXTURES = {"training_set", "tiny_model", "remote"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
