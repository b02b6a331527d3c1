"""GUI smoke run, executed inside the real QGIS desktop: `qgis --code scripts/gui_smoke.py` (see
tests/plugin/test_gui.py, which starts it under Xvfb with a throw-away profile from scripts/qgis_profile.py).

Opens the Tower Detector menu, every dialog and dock, grabs each with QWidget.grab() into $TD_SMOKE_OUT, writes
$TD_SMOKE_OUT/report.json and quits QGIS. With $TD_SMOKE_SCENE (a GeoTIFF), $TD_SMOKE_HEATMAP and
$TD_SMOKE_CANDIDATES it first loads them, so the main window shot shows results.
"""

import json
import os
import traceback

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QPoint, Qt, QTimer
from qgis.PyQt.QtWidgets import QApplication, QMenu
from qgis.utils import iface, plugins

OUT = os.environ.get("TD_SMOKE_OUT", "smoke-out")
PLUGIN = "tower_detector_plugin"
report = {"ok": False, "plugin_loaded": False, "actions": [], "shots": {}, "errors": []}


def settle(ms=150):
    loop_end = QTimer()
    loop_end.setSingleShot(True)
    loop_end.start(ms)
    while loop_end.isActive():
        QApplication.processEvents()


def shot(widget, name):
    settle()
    path = os.path.join(OUT, f"{name}.png")
    pixmap = widget.grab()
    pixmap.save(path, "PNG", 0)  # 0: the smallest file
    report["shots"][name] = {"path": path, "width": pixmap.width(), "height": pixmap.height()}


def close_modal_later(name):
    """QMessageBox.about is modal: grab and close it from a timer while it runs its own loop."""

    def grab_and_close():
        widget = QApplication.activeModalWidget()
        if widget is None:
            return QTimer.singleShot(100, grab_and_close)
        shot(widget, name)
        widget.close()

    QTimer.singleShot(300, grab_and_close)


def load_sample_data(plugin):
    scene = os.environ.get("TD_SMOKE_SCENE")
    if scene:
        layer = QgsRasterLayer(scene, "sample scene", "gdal")
        QgsProject.instance().addMapLayer(layer)
        iface.mapCanvas().setExtent(layer.extent())
    if os.environ.get("TD_SMOKE_HEATMAP") or os.environ.get("TD_SMOKE_CANDIDATES"):
        plugin.load_results(os.environ.get("TD_SMOKE_HEATMAP", ""), os.environ.get("TD_SMOKE_CANDIDATES", ""),
                            threshold=0.6, floor=0.5, title="sample results")
        root = QgsProject.instance().layerTreeRoot()
        for node in root.children():  # the results' legends open, the scene's bands closed
            node.setExpanded(False)  # (toggled: the view only follows changes)
            node.setExpanded(node.name() == "sample results")
        for node in root.findGroup("sample results").findLayers():
            node.setExpanded(False)
            node.setExpanded(True)
    iface.mapCanvas().refreshAllLayers()


def run_a_real_job(plugin):
    """A tile count of the scene's area through the plugin's job machinery, so the Jobs panel has a row."""
    area = os.path.join(os.path.dirname(os.environ.get("TD_SMOKE_SCENE", "")), "area.geojson")
    if not os.path.isfile(area):
        return
    from tower_detector_plugin.core import commands

    manager = plugin.job_manager()
    job_id = manager.start("tiles", "tile count of the sample scene", [commands.tiles_args(area, 18)],
                           out=os.path.dirname(area))
    wait_for(lambda: manager.store.get(job_id)["status"] not in ("queued", "running"), 20_000)
    report["job"] = manager.store.get(job_id)


def wait_for(predicate, ms):
    deadline = QTimer()
    deadline.setSingleShot(True)
    deadline.start(ms)
    while not predicate() and deadline.isActive():
        QApplication.processEvents()


def run():
    try:
        os.makedirs(OUT, exist_ok=True)
        window = iface.mainWindow()
        window.resize(1366, 800)
        plugin = plugins.get(PLUGIN)
        report["plugin_loaded"] = plugin is not None
        if plugin is None:
            raise RuntimeError(f"{PLUGIN} is not loaded; plugins: {sorted(plugins)}")
        report["actions"] = [action.text() for action in plugin.actions]
        load_sample_data(plugin)

        menu = QMenu()
        for action in plugin.actions:
            menu.addAction(action)
        menu.popup(window.mapToGlobal(QPoint(40, 40)))
        shot(menu, "menu")
        menu.close()

        for key, open_it in (("area_picker", plugin.pick_area), ("build_training_data", plugin.build_dataset),
                             ("train", plugin.train), ("predict", plugin.predict),
                             ("load_results", plugin.load_results_dialog), ("settings", plugin.show_settings)):
            dialog = open_it()
            if key == "area_picker":
                dialog.use_canvas_extent()
                wait_for(lambda d=dialog: d.tiles is not None, 20_000)
            dialog.adjustSize()
            shot(dialog, key)
            dialog.close()
        run_a_real_job(plugin)
        dock = plugin.show_jobs()
        window.resizeDocks([dock], [170], Qt.Vertical)
        shot(dock, "jobs")
        if plugin.results_dock is not None:
            shot(plugin.results_dock, "results_dock")
        review = plugin.review()  # on the candidates just loaded: the best one, centred and outlined
        if review is not None:
            iface.mapCanvas().waitWhileRendering()
            shot(review, "review_dock")
        close_modal_later("about")
        plugin.show_about()
        settle(500)
        iface.mapCanvas().waitWhileRendering()
        shot(window, "main_window")
        report["ok"] = True
    except Exception:  # the report says what went wrong; QGIS must still quit
        report["errors"].append(traceback.format_exc())
    finally:
        with open(os.path.join(OUT, "report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        QgsProject.instance().setDirty(False)
        QTimer.singleShot(0, QgsApplication.instance().quit)


QTimer.singleShot(1500, run)
