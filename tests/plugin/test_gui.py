"""GUI smoke test: the real QGIS desktop under Xvfb, with the plugin installed into a throw-away profile, opens
the Tower Detector menu, every dialog and the docks; the screenshots land in tests/artifacts/gui/."""

import importlib.util
import json
import os
import shutil
import subprocess

import pytest
from qgis.PyQt.QtGui import QImage

from tests.plugin.support import REPO, fake_results, sample_scene

ARTIFACTS = REPO / "tests" / "artifacts" / "gui"
QGIS = shutil.which("qgis")
XVFB = shutil.which("xvfb-run")
DIALOGS = ("area_picker", "build_training_data", "train", "predict", "load_results", "settings", "jobs", "about")


def _qgis_profile():
    spec = importlib.util.spec_from_file_location("qgis_profile", REPO / "scripts" / "qgis_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _distinct_colours(path, step=7) -> int:
    image = QImage(str(path))
    return len({image.pixel(x, y) for x in range(0, image.width(), step) for y in range(0, image.height(), step)})


@pytest.mark.skipif(not QGIS or not XVFB, reason="needs the QGIS desktop (apt: qgis) and Xvfb (apt: xvfb)")
def test_qgis_desktop_opens_the_menu_and_every_dialog(tmp_path):
    scene = sample_scene(tmp_path / "scene", tiles=8, seed=3)
    heatmap, candidates = fake_results(tmp_path / "scene", scene["tile_range"], tmp_path / "results")
    profiles = _qgis_profile()
    profiles.prepare(tmp_path / "profiles", "smoke", work_dir=tmp_path / "work")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    # The desktop needs a real (virtual) display, and its own profile, not pytest-qgis's.
    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH", "VIRTUAL_ENV")}
    env.update(TD_SMOKE_OUT=str(ARTIFACTS), TD_SMOKE_SCENE=str(tmp_path / "scene" / "scene.tif"),
               TD_SMOKE_HEATMAP=heatmap, TD_SMOKE_CANDIDATES=candidates, HOME=str(tmp_path / "home"))
    smoke = ["--code", str(REPO / "scripts" / "gui_smoke.py")]
    command = [XVFB, "-a", "-s", "-screen 0 1400x900x24", *profiles.qgis_command(tmp_path / "profiles", "smoke", smoke)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    report_path = ARTIFACTS / "report.json"
    assert report_path.is_file(), f"QGIS exited {done.returncode} without a report:\n{done.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    assert report["errors"] == [] and report["ok"], "\n".join(report["errors"])
    assert report["plugin_loaded"]
    assert report["actions"] == ["Pick area", "Build training data", "Train", "Predict", "Load results",
                                 "Review candidates", "Jobs", "Settings", "About Tower Detector"]
    for name in (*DIALOGS, "menu", "main_window", "results_dock", "review_dock"):
        shot = report["shots"][name]
        assert shot["width"] > 100 and shot["height"] > 100 or name == "menu"
        assert _distinct_colours(shot["path"]) > 5, f"{name}.png is blank"
    assert report["job"]["status"] == "finished" and report["job"]["message"] == "64 tiles at zoom 18"
    # The main window shows the loaded results: the heatmap's reds and oranges are on the canvas.
    image = QImage(report["shots"]["main_window"]["path"])
    reds = sum(1 for x in range(0, image.width(), 4) for y in range(0, image.height(), 4)
               if (lambda c: c.red() > 200 and c.green() < 160 and c.blue() < 100)(image.pixelColor(x, y)))
    assert reds > 50
