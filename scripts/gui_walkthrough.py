"""The whole loop as a new user does it, in the real QGIS desktop: `qgis --code scripts/gui_walkthrough.py` (see
tests/plugin/test_gui.py, which starts it under Xvfb at 1366 x 768 with a fresh profile from
scripts/qgis_profile.py: no work folder set yet).

From an empty project: the imagery and a tower layer dropped in, the work folder question (the first-use
settings), Build training data, Train, Predict, Review, a confirmed tower, and the .osm export (compared with the
tower layer first, as the export asks). Only what a user
can do: menu actions, the buttons the plugin offers, the fields a user sets, keys; each is counted in
report["actions"] and followed by a screenshot of what it shows ($TD_WALK_OUT/NN_step.png). Every dialog and dock
shown is checked against the screen (report["too_big"]). Inputs: $TD_WALK_SCENE (a folder with scene.tif and
towers.geojson), $TD_WALK_PARAMS (a quick training recipe, JSON), $TD_WALK_OSM (where the .osm goes).
"""

import json
import os
import traceback

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QDialogButtonBox, QLineEdit, QPushButton
from qgis.utils import iface, plugins

OUT = os.environ.get("TD_WALK_OUT", "walk-out")
SCENE = os.environ.get("TD_WALK_SCENE", "")
PLUGIN = "tower_detector_plugin"
JOB_MS = 900_000  # the longest a job may take here (a training on 2 CPUs)
report = {"ok": False, "actions": [], "shots": {}, "too_big": [], "jobs": {}, "errors": []}


def settle(ms=200):
    end = QTimer()
    end.setSingleShot(True)
    end.start(ms)
    while end.isActive():
        QApplication.processEvents()


def wait_for(predicate, ms, what):
    end = QTimer()
    end.setSingleShot(True)
    end.start(ms)
    while not predicate():
        if not end.isActive():
            raise RuntimeError(f"timed out waiting for {what}")
        QApplication.processEvents()
    settle()


def screen():
    return QApplication.primaryScreen().geometry()


def check_fits(widget, name):
    """A dialog or dock larger than the screen, or reaching past it, is a defect."""
    frame = widget.frameGeometry()
    if widget.isWindow():
        fits = frame.width() <= screen().width() and frame.height() <= screen().height()
    else:
        fits = widget.height() <= screen().height() and widget.width() <= screen().width()
    if not fits:
        report["too_big"].append(f"{name}: {frame.width()}x{frame.height()} on a {screen().width()}x"
                                 f"{screen().height()} screen")


def shot(widget, name):
    settle()
    check_fits(widget, name)
    path = os.path.join(OUT, f"{len(report['actions']):02d}_{name}.png")
    pixmap = widget.grab()
    pixmap.save(path, "PNG", 0)
    report["shots"][name] = {"path": path, "width": pixmap.width(), "height": pixmap.height()}


def act(name, do):
    """One user action: counted, done, then what it shows is captured."""
    report["actions"].append(name)
    return do()


def on_modal(handle, name):
    """A modal dialog the next action opens: captured and answered from a timer, as a person would."""

    def check():
        widget = QApplication.activeModalWidget()
        if widget is None:
            return QTimer.singleShot(100, check)
        try:
            shot(widget, name)
            handle(widget)
        except Exception:  # said in the report, and the dialog closed, or QGIS would wait on it for ever
            report["errors"].append(traceback.format_exc())
            widget.reject()

    QTimer.singleShot(200, check)


def offered(step):
    """The button the finished job's message offers (plugin.py _offer_next_step), once it is the one shown."""
    def shown():
        return [b for b in iface.messageBar().findChildren(QPushButton, f"next_step_{step}") if b.isVisible()]

    wait_for(lambda: bool(shown()), 10_000, f"the message bar's {step} button")
    return shown()[-1]


def finish(manager, job_id, kind):
    wait_for(lambda: manager.store.get(job_id)["status"] not in ("queued", "running"), JOB_MS, f"the {kind} job")
    job = manager.store.get(job_id)
    report["jobs"][kind] = {k: job.get(k) for k in ("status", "message", "verdict", "outputs")}
    if job["status"] != "finished":
        raise RuntimeError(f"the {kind} job {job['status']}: {job['message']}")
    return job


def walk():
    window = iface.mainWindow()
    plugin = plugins[PLUGIN]
    action = {a.text(): a for a in plugin.actions}

    def drop_files():  # a drag and drop of the two files from the file manager
        iface.addRasterLayer(os.path.join(SCENE, "scene.tif"), "scene")
        iface.addVectorLayer(os.path.join(SCENE, "towers.geojson") + "|geometrytype=Point", "towers", "ogr")
        iface.zoomToActiveLayer()

    act("drop scene.tif and towers.geojson on QGIS", drop_files)
    iface.setActiveLayer(QgsProject.instance().mapLayersByName("scene")[0])
    iface.zoomToActiveLayer()
    iface.mapCanvas().waitWhileRendering()
    shot(window, "project")

    on_modal(lambda d: act("work folder: OK (the first-use setting)", d.accept), "work_folder")
    act("Tower Detector > Build training data", action["Build training data"].trigger)
    dataset = plugin.dialogs["dataset"]
    manager = plugin.job_manager()  # made by the dialog, in the work folder just chosen
    shot(dataset, "build_training_data")
    job_id = act("Run", dataset.run)
    finish(manager, job_id, "dataset")
    shot(window, "dataset_done")

    act("Train on this dataset", offered("train").click)
    train = plugin.dialogs["train"]
    act("Start weights: none (no download)", lambda: train.weights.setCurrentText("none"))
    act("Hyperparameters: the quick recipe", lambda: train.params.setFilePath(os.environ["TD_WALK_PARAMS"]))
    shot(train, "train")
    job_id = act("Run", train.run)
    finish(manager, job_id, "train")
    shot(window, "train_done")

    act("Predict with this model", offered("predict").click)
    predict = plugin.dialogs["predict"]
    shot(predict, "predict")
    job_id = act("Run", predict.run)
    finish(manager, job_id, "predict")
    shot(window, "predict_done")

    act("Review the candidates", offered("review").click)
    review = plugin.review_dock
    iface.mapCanvas().waitWhileRendering()
    shot(window, "review")
    report["candidates"] = len(review.session.fids) if review.session else 0
    act("Confirmed tower [1]", review.status_buttons["confirmed"].click)
    report["confirmed"] = review.session.status.count("confirmed") if review.session else 0
    shot(review, "review_dock")

    def save_as(dialog):  # the file name typed, then Save
        dialog.findChild(QLineEdit, "fileNameEdit").setText(os.environ["TD_WALK_OSM"])
        save = dialog.findChild(QDialogButtonBox, "buttonBox").button(QDialogButtonBox.Save)
        act("Save", save.click)

    def compare_first(box):  # never compared with OSM: compare with the tower layer, in the same job
        on_modal(save_as, "save_osm")
        button = next(b for b in box.buttons() if b.text().startswith("Compare with the layer"))
        act(f"{button.text()}", button.click)

    on_modal(compare_first, "compare_first")
    act("Export > .osm of confirmed towers", review.export_actions["osm"].trigger)
    jobs = [j for j in manager.store.jobs if j.get("kind") == "export"]
    finish(manager, jobs[-1]["id"], "export")
    plugin.show_jobs()
    shot(window, "exported")
    for dock in (plugin.review_dock, plugin.results_dock, plugin.jobs_dock):
        if dock is not None:
            check_fits(dock, dock.objectName())
    check_fits(window, "the main window")


def run():
    try:
        os.makedirs(OUT, exist_ok=True)
        iface.mainWindow().setGeometry(QApplication.primaryScreen().availableGeometry())  # Xvfb has no window
        iface.mainWindow().show()                                                        # manager to maximise
        settle(500)
        walk()
        report["ok"] = True
    except Exception:  # the report says what went wrong; QGIS must still quit
        report["errors"].append(traceback.format_exc())
    finally:
        with open(os.path.join(OUT, "report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=str)
        QgsProject.instance().setDirty(False)
        QTimer.singleShot(0, QgsApplication.instance().quit)


QTimer.singleShot(1500, run)
