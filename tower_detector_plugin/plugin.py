"""The plugin's entry point in QGIS: its menu, toolbar, docks, dialogs and Processing provider.

This module wires the packages together: ui/ (widgets, dialogs, docks) and processing/ (the algorithms) both
build on core/ (the logic, no widgets); only this module knows all three. The ui and processing modules are
imported on first use, so starting QGIS (or qgis_process) stays cheap."""

import configparser
import os
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsProject
from qgis.PyQt.QtCore import QT_TR_NOOP, Qt, QTimer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMessageBox

from . import resources  # registers :/plugins/tower_detector/* with Qt
from .i18n import install_translator, remove_translator, tr

OFFER_DELAY_MS = 300

MENU = QT_TR_NOOP("&Tower Detector")  # shown through tr()
ICON = ":/plugins/tower_detector/icon.svg"


def _icon(name: str) -> str:
    return f":/plugins/tower_detector/{name}.svg"


def plugin_version() -> str:
    """The version in metadata.txt: inside the installed plugin, or at the top of a dev checkout."""
    here = Path(__file__).resolve().parent
    for path in (here / "metadata.txt", here.parent / "metadata.txt"):
        if path.is_file():
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(path, encoding="utf-8")
            return parser.get("general", "version", fallback="unknown")
    return "unknown"


class TowerDetectorPlugin:
    """iface is None under qgis_process, which only calls initProcessing()."""

    def __init__(self, iface):
        self.iface = iface
        self.actions: list[QAction] = []
        self.toolbar = None
        self.provider = None
        self.manager = None
        self.jobs_dock = None
        self.results_dock = None
        self.review_dock = None
        self.review_exports = None
        self.dialogs = {}  # non-modal dialogs, kept alive here
        self.translator = install_translator()  # before any text is made; None without a translation

    # -- QGIS plugin API
    def initProcessing(self):
        from .processing.provider import TowerDetectorProvider

        if self.provider is None:
            self.provider = TowerDetectorProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        resources.qInitResources()  # again after an unload (Qt ignores a second registration of the same data)
        self.initProcessing()
        self.toolbar = self.iface.addToolBar(tr("Tower Detector"))
        self.toolbar.setObjectName("TowerDetectorToolbar")
        for text, icon, callback in (
            (QT_TR_NOOP("Pick area"), "area", self.pick_area),
            (QT_TR_NOOP("Build training data"), "dataset", self.build_dataset),
            (QT_TR_NOOP("Train"), "train", self.train),
            (QT_TR_NOOP("Predict"), "predict", self.predict),
            (QT_TR_NOOP("Load results"), "results", self.load_results_dialog),
            (QT_TR_NOOP("Review candidates"), "review", self.review),
            (QT_TR_NOOP("Jobs"), "jobs", self.show_jobs),
            (QT_TR_NOOP("Settings"), "settings", self.show_settings),
            (QT_TR_NOOP("About Tower Detector"), "icon", self.show_about),
        ):
            self._add_action(text, _icon(icon), callback)

    def _add_action(self, text: str, icon: str, callback) -> QAction:
        """Add an action to the plugin menu and toolbar; unload() removes it again. text: the English text, which
        names the action (tests and users' shortcuts find it by name); the action shows its translation."""
        action = QAction(QIcon(icon), tr(text), self.iface.mainWindow())
        action.setObjectName("TowerDetector" + "".join(w.capitalize() for w in text.split()))
        action.triggered.connect(lambda _checked=False: callback())  # not the "checked" flag as an argument
        self.iface.addPluginToMenu(tr(MENU), action)
        self.toolbar.addAction(action)
        self.actions.append(action)
        return action

    def unload(self):
        for dialog in self.dialogs.values():
            dialog.close()
            dialog.deleteLater()
        self.dialogs.clear()
        if self.review_dock is not None:
            self.review_dock.stop()
        for dock in (self.jobs_dock, self.results_dock, self.review_dock):
            if dock is not None:
                self.iface.removeDockWidget(dock)
                dock.deleteLater()
        self.jobs_dock = self.results_dock = self.review_dock = self.review_exports = None
        if self.manager is not None:
            self.manager.shutdown()
            self.manager = None
        for action in self.actions:
            self.iface.removePluginMenu(tr(MENU), action)
            action.deleteLater()
        self.actions.clear()
        if self.toolbar is not None:
            # QGIS's main window owns the toolbar; delete it or it stays there after unloading.
            self.toolbar.deleteLater()
            self.toolbar = None
        remove_translator(self.translator)
        self.translator = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        # QGIS deletes this package's modules after unload(); Qt must forget resources.py's data before Python
        # frees it, or the next lookup of any ":/" path reads freed memory (a crash on plugin reload).
        resources.qCleanupResources()

    # -- pieces made on first use
    def job_manager(self):
        if self.manager is None:
            from .core.jobs import JobManager

            self.manager = JobManager(self.iface)
            self.manager.changed.connect(self._job_started)
            self.manager.finished.connect(self._job_finished)
            self.manager.offer_next_step = self._offer_next_step
        return self.manager

    def _job_started(self, job_id):
        job = self.manager.store.get(job_id)
        if job is not None and job.get("status") == "queued":
            self.show_jobs()

    def _job_finished(self, job_id):
        """A job that wrote files the project shows (results merged into a candidates GeoPackage, a fetch, a new
        heatmap): their layers, and the review dock on one of them, read them again."""
        from .core.result_layers import reload_file_layers

        job = self.manager.store.get(job_id)
        if job is None or job.get("status") != "finished":
            return
        outputs = job.get("outputs") or {}
        changed = [layer for key in ("candidates", "heatmap") if outputs.get(key)
                   for layer in reload_file_layers(outputs[key])]
        session = self.review_dock.session if self.review_dock is not None else None
        if session is not None and any(layer is session.layer for layer in changed):
            self.review_dock.reload()

    def ensure_work_dir(self) -> bool:
        """Before the first job: a work folder the user chose (the plugin's areas, job list and outputs go there,
        not deep in the QGIS profile). An old folder in the profile that holds work is kept without asking. False
        when the user cancels."""
        from .core import settings
        from .ui.widgets import ask_work_dir

        if settings.value("work_dir") or settings.adopt_old_work_dir():
            return True
        path = ask_work_dir(self.iface.mainWindow(), settings.suggested_work_dir())
        if not path:
            return False
        os.makedirs(path, exist_ok=True)
        settings.set_value("work_dir", path)
        self.iface.messageBar().pushMessage(tr("Tower Detector"),
                                            tr("work folder: {path} (Settings changes it)").format(path=path),
                                            level=Qgis.Info, duration=8)
        return True

    def _show_dialog(self, key, factory):
        """One non-modal dialog per kind: raise it if open, else make a new one."""
        dialog = self.dialogs.get(key)
        if dialog is None or not dialog.isVisible():
            if dialog is not None:
                dialog.deleteLater()
            dialog = self.dialogs[key] = factory()
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    # -- actions
    def pick_area(self):
        if not self.ensure_work_dir():
            return None
        from .ui.area_picker import AreaPickerDialog

        def make():
            dialog = AreaPickerDialog(self.iface)
            dialog.areaChosen.connect(lambda path: self._area_chosen(dialog, path))
            return dialog

        return self._show_dialog("area", make)

    def _area_chosen(self, picker, path):
        """The toolbar's "Use this area": the area as a layer of the project, and a line that says so."""
        from .core.area_geometry import add_area_layer

        name = picker.name.text().strip() or tr("area")
        try:
            add_area_layer(path, name)
        except ValueError as exc:
            self.iface.messageBar().pushMessage(tr("Tower Detector"), str(exc), level=Qgis.Critical, duration=0)
            return
        tiles = tr(" ({n:,} tiles)").format(n=picker.tiles) if picker.tiles is not None else ""
        self.iface.messageBar().pushMessage(
            tr("Tower Detector"), tr("area {name}{tiles} added to the project as a layer; Build training data and "
                                     "Predict can use its file, {path}").format(name=name, tiles=tiles, path=path),
            level=Qgis.Success, duration=10)

    def build_dataset(self):
        if not self.ensure_work_dir():
            return None
        from .ui.job_dialogs import BuildDatasetDialog

        return self._show_dialog("dataset", lambda: BuildDatasetDialog(self.iface, self.job_manager()))

    def train(self):
        if not self.ensure_work_dir():
            return None
        from .ui.job_dialogs import TrainDialog

        return self._show_dialog("train", lambda: TrainDialog(self.iface, self.job_manager()))

    def predict(self):
        if not self.ensure_work_dir():
            return None
        from .ui.job_dialogs import PredictDialog

        return self._show_dialog("predict", lambda: PredictDialog(self.iface, self.job_manager()))

    def load_results_dialog(self, heatmap="", candidates=""):
        from .ui.load_results_dialog import LoadResultsDialog

        def make():
            dialog = LoadResultsDialog(self.iface.mainWindow(), heatmap, candidates)
            dialog.load.connect(self.load_results)
            dialog.metrics.connect(self.show_metrics)
            return dialog

        return self._show_dialog("results", make)

    def load_results(self, heatmap="", candidates="", threshold=None, floor=None, title=None):
        from .core import settings
        from .core.result_layers import ResultsError, add_results, count, prediction_verdict
        from .ui.results_dock import ResultsDock

        title = tr("Tower Detector results") if title is None else title
        threshold = settings.value("results/threshold") if threshold is None else threshold
        floor = settings.value("results/heatmap_floor") if floor is None else floor
        try:
            layers = add_results(heatmap or None, candidates or None, threshold=threshold, floor=floor, title=title)
        except ResultsError as exc:
            self.iface.messageBar().pushMessage(tr("Tower Detector"), str(exc), level=Qgis.Critical, duration=0)
            return None
        if self.results_dock is None:
            self.results_dock = ResultsDock(self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.results_dock)
        self.results_dock.threshold.bind([layers.get("candidates")], layers.get("heatmap"), threshold, floor)
        self.results_dock.show()
        if "candidates" in layers and count(layers["candidates"]) == 0:
            self.iface.messageBar().pushMessage(tr("Tower Detector"), tr("no candidates at or above {threshold:g}")
                                                .format(threshold=threshold),
                                                level=Qgis.Warning, duration=8)
        verdict = prediction_verdict(heatmap or "", candidates or "")  # a carpet of candidates, not towers
        if verdict.level != "ok":
            self.iface.messageBar().pushMessage(tr("Tower Detector"), verdict.text, level=Qgis.Warning, duration=0)
        return layers

    def load_job_results(self, job):
        outputs = job.get("outputs", {})
        return self.load_results(outputs.get("heatmap", ""), outputs.get("candidates", ""),
                                 outputs.get("threshold"), title=job.get("title") or tr("Tower Detector results"))

    def show_metrics(self, model_dir):
        from .core.result_layers import ResultsError
        from .ui.metrics_dialog import MetricsDialog

        try:
            return self._show_dialog("metrics", lambda: MetricsDialog(model_dir, self.iface.mainWindow()))
        except ResultsError as exc:
            self.iface.messageBar().pushMessage(tr("Tower Detector"), str(exc), level=Qgis.Critical, duration=0)
            return None

    def show_jobs(self):
        if not self.ensure_work_dir():  # the job list lives in the work folder
            return None
        from .ui.jobs_dock import JobsDock

        if self.jobs_dock is None:
            self.jobs_dock = JobsDock(self.job_manager(), self.iface.mainWindow())
            self.jobs_dock.loadResults.connect(self.load_job_results)
            self.jobs_dock.showMetrics.connect(self.show_metrics)
            self.jobs_dock.nextStep.connect(self.run_next_step)
            self.iface.addDockWidget(Qt.BottomDockWidgetArea, self.jobs_dock)
        self.jobs_dock.show()
        self.jobs_dock.raise_()
        return self.jobs_dock

    def review(self, layer=None):
        """The review dock on `layer`, else the active layer if it is a candidates layer, else the first one."""
        from .core.review_session import ReviewError, is_candidates_layer
        from .ui.review_dock import ReviewDock
        from .ui.review_exports import ReviewExports

        if layer is None:
            active = self.iface.activeLayer()
            layers = [active] + list(QgsProject.instance().mapLayers().values())
            layer = next((lyr for lyr in layers if is_candidates_layer(lyr)), None)
        if layer is None:
            self.iface.messageBar().pushMessage(tr("Tower Detector"), tr("no candidates layer in the project: load "
                                                "results first (Tower Detector > Load results)"), level=Qgis.Warning,
                                                duration=8)
            return None
        if self.review_dock is None:
            self.review_dock = ReviewDock(self.iface, self.iface.mainWindow())
            self.review_exports = ReviewExports(self.iface, self.job_manager(), self.review_dock)
            self.review_dock.exportRequested.connect(self.review_exports.handle)
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.review_dock)
            self._fit_right_docks()
        self.review_dock.show()
        self.review_dock.raise_()
        try:
            self.review_dock.start(layer)
        except ReviewError as exc:
            self.iface.messageBar().pushMessage(tr("Tower Detector"), str(exc), level=Qgis.Critical, duration=0)
        return self.review_dock

    def _offer_next_step(self, text, step, job, level=Qgis.Success):
        """A finished job's message, with a button for what follows (core/jobs.py next_step)."""
        from qgis.PyQt.QtWidgets import QPushButton

        bar = self.iface.messageBar()
        widget = bar.createMessage(tr("Tower Detector"), text)
        button = QPushButton(tr(step[0]))
        button.setObjectName(f"next_step_{step[1]}")
        button.clicked.connect(lambda _checked=False: self.run_next_step(job))
        widget.layout().addWidget(button)
        # a moment later than QGIS's own "Task complete" line (shown in the bar where the desktop has no
        # notifications), so that the offer is the message on top
        QTimer.singleShot(OFFER_DELAY_MS, lambda: bar.pushWidget(widget, level, 0))

    def run_next_step(self, job):
        """What follows a finished job, prefilled with what it made (core/jobs.py next_step): Train on its
        dataset, Predict with its model, or its candidates loaded and under review."""
        from .core.jobs import next_step

        step = next_step(job)
        outputs = job.get("outputs") or {}
        if step is None:
            return None
        if step[1] == "train":
            dialog = self.train()
            dialog.data.setFilePath(outputs["dataset"])
            return dialog
        if step[1] == "predict":
            dialog = self.predict()
            dialog.model.setFilePath(outputs["model"])
            return dialog
        layers = self.load_job_results(job) or {}
        return self.review(layers.get("candidates"))

    def _fit_right_docks(self):
        """The review dock as wide as its content and the results dock only as tall as its two rows, so that the
        review shows whole on a laptop (QMainWindow otherwise splits the area evenly, or by the first dock)."""
        docks = [d for d in (self.results_dock, self.review_dock) if d is not None and not d.isFloating()
                 and self.iface.mainWindow().dockWidgetArea(d) == Qt.RightDockWidgetArea]
        if self.review_dock in docks:
            self.iface.mainWindow().resizeDocks([self.review_dock], [self.review_dock.sizeHint().width()],
                                                Qt.Horizontal)
        if len(docks) == 2:
            self.iface.mainWindow().resizeDocks(docks, [self.results_dock.minimumSizeHint().height(),
                                                        self.review_dock.sizeHint().height()], Qt.Vertical)

    def show_settings(self):
        from .ui.settings_dialog import SettingsDialog

        return self._show_dialog("settings", lambda: SettingsDialog(self.iface.mainWindow()))

    def show_about(self):
        QMessageBox.about(
            self.iface.mainWindow(),
            tr("About Tower Detector"),
            tr("<b>Tower Detector</b> {version}<br><br>"
               "Finds high-voltage power towers in aerial imagery with deep learning and helps you review them "
               "for OpenStreetMap. Training and prediction run in the tower-detector backend, outside QGIS.")
            .format(version=plugin_version()),
        )
