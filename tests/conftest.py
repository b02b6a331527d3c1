"""Shared fixtures: one small synthetic scene per test session, and the reference data's location."""

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
