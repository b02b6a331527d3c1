"""Shared fixtures: one small synthetic scene per test session, and the reference data's location."""

import os
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def sample_scene(tmp_path_factory):
    """An 8x8-tile scene (seed 3): {"dir", "imagery", "towers", "area", "info"} with Paths."""
    from tower_detector.sample import write_sample_scene

    out = tmp_path_factory.mktemp("scene")
    info = write_sample_scene(str(out), tiles_x=8, tiles_y=8, seed=3)
    return {"dir": out, "imagery": out / "scene.tif", "towers": out / "towers.geojson",
            "area": out / "area.geojson", "info": info}


@pytest.fixture
def shared_data():
    """../shared/data, or a skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data absent: {SHARED_DATA}")
    return SHARED_DATA


# QGIS (pytest-qgis) and TensorFlow share this process only in tests; the plugin never loads TensorFlow. Once
# both are loaded, tearing down QGIS or the interpreter segfaults in their native code, after every test has
# run and reported. So when TensorFlow was loaded, leave with the session's status and skip that teardown.
_exit_status = {}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _exit_status["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "tensorflow" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status.get("status", 0))
