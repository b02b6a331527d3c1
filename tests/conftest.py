"""Shared fixtures: one small synthetic scene per test session, moto's S3 on loopback, and the reference data's
location."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

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


def folder_bytes(folder):
    """{relative path: bytes (a file) or None (a folder)} of everything under folder: equal means byte-identical."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


TINY_TRAINING = {"image_size": 72, "batch_size": 16, "epochs_phase1": 1, "epochs_phase2": 1, "dense_size": 32}


@pytest.fixture(scope="session")
def training_set(tmp_path_factory):
    """A dataset from a 16x16-tile scene (seed 7), 0.6/0.2/0.2 in 4x4-tile blocks: every split has both classes."""
    from tower_detector.datasets.dataset import build_dataset, parse_splits
    from tower_detector.synthetic import write_scene

    work = tmp_path_factory.mktemp("training-set")
    write_scene(str(work / "scene"), tiles_x=16, tiles_y=16, seed=7)
    summary = build_dataset(str(work / "scene/area.geojson"), str(work / "scene/towers.geojson"),
                            str(work / "scene/scene.tif"), str(work / "ds"), splits=parse_splits("0.6,0.2,0.2"),
                            block_size=4, background_ratio=2, seed=1, log=lambda *a: None)
    assert all(s["tower"] and s["background"] for s in summary["splits"].values())
    return work / "ds"


@pytest.fixture(scope="session")
def tiny_model(training_set, tmp_path_factory):
    """A model directory trained for real on training_set at a tiny size: (path, the test metrics)."""
    from tower_detector.training.train import train

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    return out, train(str(training_set), str(out), TINY_TRAINING, weights="none", log=lambda *a: None)


def _this_process_qgis_temp_dirs():
    """The empty QTemporaryDirs (QGIS3-XXXXXX: QgsSourceCache's, the project archive's) that this process's
    QgsApplication made; pytest-qgis starts it before this file is imported. Their destructors would remove them,
    but QGIS is never torn down in tests (qgis_disable_exit, and os._exit below), so they are removed at the end.
    Ours: made by this user since this process started."""
    try:
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        with open("/proc/self/stat") as f:
            started = boot + int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return []
    found = []
    for path in Path(tempfile.gettempdir()).glob("QGIS3-??????"):
        try:
            st = path.stat()
            if st.st_uid == os.getuid() and st.st_mtime >= started - 1 and not any(path.iterdir()):
                found.append(path)
        except OSError:
            continue
    return found


_qgis_temp_dirs = _this_process_qgis_temp_dirs()

# QGIS (pytest-qgis) and TensorFlow share this process only in tests; the plugin never loads TensorFlow. Once
# both are loaded, tearing down QGIS or the interpreter segfaults in their native code, after every test has
# run and reported. So when TensorFlow was loaded, leave with the session's status and skip that teardown.
_exit_status = {}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _exit_status["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    for path in _qgis_temp_dirs:
        shutil.rmtree(path, ignore_errors=True)
    if "tensorflow" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status.get("status", 0))
