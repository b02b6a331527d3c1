"""The plugin in (pytest-qgis's) QGIS: its actions open their dialogs and docks, and unloading removes it all."""

from qgis.core import QgsApplication
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent

from tests.plugin import support as support
from tower_detector_plugin.plugin import TowerDetectorPlugin
from tower_detector_plugin.ui.area_picker import AreaPickerDialog
from tower_detector_plugin.ui.job_dialogs import BuildDatasetDialog, PredictDialog, TrainDialog
from tower_detector_plugin.ui.jobs_dock import JobsDock
from tower_detector_plugin.ui.load_results_dialog import LoadResultsDialog
from tower_detector_plugin.ui.settings_dialog import SettingsDialog

plugin_settings = support.plugin_settings  # a fixture

ACTIONS = {"Pick area": ("area", AreaPickerDialog), "Build training data": ("dataset", BuildDatasetDialog),
           "Train": ("train", TrainDialog), "Predict": ("predict", PredictDialog),
           "Load results": ("results", LoadResultsDialog), "Settings": ("settings", SettingsDialog)}


def test_every_action_opens_its_dialog_once_and_unload_removes_everything(qgis_iface, plugin_settings,
                                                                          qgis_new_project):
    plugin = TowerDetectorPlugin(qgis_iface)
    plugin.initGui()
    try:
        texts = [a.text() for a in plugin.actions]
        assert texts == ["Pick area", "Build training data", "Train", "Predict", "Load results",
                         "Review candidates", "Jobs", "Settings", "About Tower Detector"]
        assert all(not a.icon().isNull() for a in plugin.actions)
        assert QgsApplication.processingRegistry().providerById("towerdetector") is plugin.provider
        by_text = {a.text(): a for a in plugin.actions}
        for text, (key, kind) in ACTIONS.items():
            by_text[text].trigger()
            dialog = plugin.dialogs[key]
            assert isinstance(dialog, kind) and dialog.isVisible() and not dialog.isModal()
            by_text[text].trigger()
            assert plugin.dialogs[key] is dialog  # raised again, not opened twice
        by_text["Jobs"].trigger()
        assert isinstance(plugin.jobs_dock, JobsDock) and not plugin.jobs_dock.isHidden()
        by_text["Review candidates"].trigger()  # no candidates layer in the project: a warning, no dock
        assert plugin.review_dock is None
        dialogs, dock = list(plugin.dialogs.values()), plugin.jobs_dock
    finally:
        plugin.unload()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    assert QgsApplication.processingRegistry().providerById("towerdetector") is None
    assert all(sip.isdeleted(d) for d in dialogs) and sip.isdeleted(dock)
    assert plugin.actions == [] and plugin.dialogs == {}


def test_every_module_imports_with_debians_python_and_no_backend_library(tmp_path):
    import importlib.util
    import subprocess

    spec = importlib.util.spec_from_file_location("build_plugin", support.REPO / "scripts" / "build_plugin.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    folder = build.build_plugin(tmp_path / "plugins")
    modules = sorted(".".join(p.relative_to(folder).with_suffix("").parts) for p in folder.rglob("*.py")
                     if p.stem != "__init__")
    code = (
        "import sys\n"
        "from qgis.core import QgsApplication\n"
        "app = QgsApplication([], False); app.initQgis()\n"
        f"for name in {modules!r}: __import__('tower_detector_plugin.' + name)\n"
        "heavy = ('tensorflow', 'keras', 'hyperopt', 'boto3', 'rasterio', 'numpy', 'requests', 'tower_detector')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    env = support.offscreen_env(PYTHONPATH=str(folder.parent))
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(["/usr/bin/python3", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert {"plugin", "core.commands", "core.runner", "core.jobs", "core.settings", "core.tasks", "ui.job_dialogs",
            "ui.review_dock", "processing.provider", "processing.predict"} <= set(modules)
