"""The plugin's dialogs: Settings, Build training data, Train, Predict and Load results.

Each job dialog's build() turns its widgets into a job (argument lists from commands.py, output paths, the
secret environment) or raises ValueError with one line; run() starts it. Dialogs are non-modal, as QGIS's own.
"""

import glob
import os
import time

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsVectorFileWriter,
)
from qgis.gui import QgsAuthConfigSelect, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import backend, commands, imagery, settings
from .area import AreaPickerDialog
from .results import recommended_threshold

RED = "color: #c62828;"


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _file_widget(mode, filt="", path=""):
    widget = QgsFileWidget()
    widget.setStorageMode(mode)
    if filt:
        widget.setFilter(filt)
    widget.setFilePath(path)
    return widget


def _spin(minimum, maximum, value, special="default"):
    """An int spin box where the minimum means "the backend's default" (None)."""
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def _value(box):
    return None if box.specialValueText() and box.value() == box.minimum() else box.value()


# --- shared widgets -----------------------------------------------------------------------------------------------
class AreaWidget(QWidget):
    """An area file: one from the work dir's areas/, any GeoJSON, or a new one from the picker."""

    def __init__(self, iface, parent=None):
        super().__init__(parent)
        self.iface = iface
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setMinimumContentsLength(30)
        for path in sorted(glob.glob(os.path.join(settings.work_dir(), "areas", "*.geojson")), key=os.path.getmtime,
                           reverse=True):
            self.combo.addItem(path)
        browse = QPushButton("…")
        browse.setToolTip("a GeoJSON polygon file (WGS84)")
        browse.clicked.connect(self._browse)
        pick = QPushButton("Pick…")
        pick.setToolTip("draw or choose the area on the map")
        pick.clicked.connect(self.pick)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(browse)
        row.addWidget(pick)
        self.picker = None

    def _browse(self):
        from qgis.PyQt.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Area", settings.work_dir(), "GeoJSON (*.geojson *.json)")
        if path:
            self.set_path(path)

    def pick(self):
        self.picker = AreaPickerDialog(self.iface, self.window())
        self.picker.areaChosen.connect(self.set_path)
        self.picker.show()

    def set_path(self, path):
        self.combo.setCurrentText(path)

    def path(self) -> str:
        path = self.combo.currentText().strip()
        if not path:
            raise ValueError("choose an area (Pick… draws one on the map)")
        if not os.path.isfile(path):
            raise ValueError(f"area file not found: {path}")
        return path


class ImageryWidget(QWidget):
    """An imagery source: the default from Settings, an XYZ connection, a raster layer, or typed in; plus the
    QGIS authentication config that holds its token."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.sources = []
        default = settings.value("imagery/spec")
        if default:
            self.sources.append(imagery.Source("Default (Settings)", default, settings.value("imagery/authcfg")))
        self.sources += imagery.xyz_connections() + imagery.raster_layer_sources()
        self.combo = QComboBox()
        self.combo.addItem("URL template or file (type below)")
        for source in self.sources:
            self.combo.addItem(source.label)
        self.spec = QLineEdit()
        self.spec.setPlaceholderText("https://…/{z}/{x}/{y}.jpg?access_token=${TOWER_DETECTOR_TOKEN}, or a GeoTIFF")
        self.auth = QgsAuthConfigSelect(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self.spec)
        layout.addWidget(self.auth)
        self.combo.currentIndexChanged.connect(self._chosen)
        if default:  # nothing else is chosen for the user: the imagery decides what the model can see
            self.combo.setCurrentIndex(1)

    def _chosen(self, index):
        if index >= 1:
            source = self.sources[index - 1]
            self.spec.setText(source.spec)
            self.auth.setConfigId(source.authcfg)

    def set_spec(self, spec, authcfg=""):
        self.combo.setCurrentIndex(0)
        self.spec.setText(spec)
        self.auth.setConfigId(authcfg)

    def resolved(self) -> imagery.ImagerySpec:
        return imagery.resolve(self.spec.text(), self.auth.configId())

    def name(self) -> str:
        """The chosen connection's or layer's name while its spec is as chosen ("" for one typed in): what the OSM
        changeset will name as its source."""
        index = self.combo.currentIndex()
        chosen = self.sources[index - 1] if index >= 1 else None
        return chosen.name if chosen and chosen.spec == self.spec.text() else ""


# --- job dialogs --------------------------------------------------------------------------------------------------
class JobDialog(QDialog):
    """A form, an error line, and Run. Subclasses fill self.form and implement build()."""

    title = "Tower Detector"

    def __init__(self, iface, manager, parent=None):
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.iface, self.manager = iface, manager
        self.setWindowTitle(self.title)
        self.setObjectName("TowerDetector" + type(self).__name__)
        self.form = QFormLayout()
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(RED)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Cancel)
        self.run_button = self.buttons.addButton("Run", QDialogButtonBox.AcceptRole)
        self.run_button.clicked.connect(self.run)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)
        self.last_job = None

    def build(self) -> dict:
        """{"kind", "title", "steps", "out", "outputs", "env", "remote"} or ValueError."""
        raise NotImplementedError

    def run(self):
        try:
            job = self.build()
        except ValueError as exc:
            self.error.setText(str(exc))
            return None
        self.error.setText("")
        self.last_job = self.manager.start(job["kind"], job["title"], job["steps"], out=job.get("out", ""),
                                           outputs=job.get("outputs"), env=job.get("env"), remote=job.get("remote"))
        self.accept()
        return self.last_job

    def _out_dir(self, widget, what):
        path = widget.filePath().strip()
        if not path:
            raise ValueError(f"choose the {what}")
        return path


class BuildDatasetDialog(JobDialog):
    title = "Tower Detector: build training data"

    def __init__(self, iface, manager, parent=None):
        super().__init__(iface, manager, parent)
        self.area = AreaWidget(iface)
        self.imagery = ImageryWidget()
        self.overpass = QRadioButton("OpenStreetMap towers (Overpass)")
        self.overpass.setChecked(True)
        self.from_layer = QRadioButton("Points of a layer")
        self.points = QgsMapLayerComboBox()
        self.points.setFilters(QgsMapLayerProxyModel.PointLayer)
        self.tower_filter = QLineEdit("")
        self.tower_filter.setPlaceholderText("power=tower for Overpass; all for a plain point layer")
        labels = QGroupBox("Tower labels")
        box = QFormLayout(labels)
        box.addRow(self.overpass)
        box.addRow(self.from_layer, self.points)
        box.addRow("OSM tag filter", self.tower_filter)
        self.out = _file_widget(QgsFileWidget.GetDirectory,
                                path=os.path.join(settings.work_dir(), "datasets", f"dataset-{_stamp()}"))
        self.zoom = _spin(15, 21, 18, special="")
        self.background_ratio = QDoubleSpinBox()
        self.background_ratio.setRange(0.5, 50)
        self.background_ratio.setValue(3.0)
        self.span_negatives = QDoubleSpinBox()  # 0: none; OSM lines give them (a point layer has none)
        self.span_negatives.setRange(0, 20)
        self.span_negatives.setValue(0)
        self.split = QLineEdit("0.7,0.15,0.15")
        self.block_size = _spin(1, 256, 8, special="")
        self.seed = _spin(0, 1_000_000, 0, special="")
        for label, widget in (("Area", self.area), ("Imagery", self.imagery), ("", labels), ("Output folder", self.out),
                              ("Zoom", self.zoom), ("Background tiles per tower tile", self.background_ratio),
                              ("Line tiles per tower tile (negatives)", self.span_negatives),
                              ("Split train,val,test", self.split), ("Split block size (tiles)", self.block_size),
                              ("Seed", self.seed)):
            self.form.addRow(label, widget)

    def build(self) -> dict:
        area = self.area.path()
        spec = self.imagery.resolved()
        out = self._out_dir(self.out, "output folder")
        tower_filter = self.tower_filter.text().strip() or None
        if self.from_layer.isChecked():
            layer = self.points.currentLayer()
            if layer is None:
                raise ValueError("choose a point layer with the towers, or use OpenStreetMap")
            towers = export_points(layer, os.path.join(os.path.dirname(out.rstrip("/\\")) or settings.work_dir(),
                                                       f"{os.path.basename(out.rstrip('/'))}-towers.geojson"))
            tower_filter = tower_filter or "all"
        else:
            towers = "overpass"
        args = commands.dataset_args(area, towers, spec.spec, out, zoom=self.zoom.value(),
                                     background_ratio=self.background_ratio.value(),
                                     span_negatives=self.span_negatives.value() or None,
                                     split=self.split.text().strip(),
                                     block_size=self.block_size.value(),
                                     seed=self.seed.value(), tower_filter=tower_filter,
                                     cache=os.path.join(settings.work_dir(), "cache"),
                                     max_tiles=settings.value("area/max_tiles"))
        return {"kind": "dataset", "title": f"dataset {os.path.basename(out)}", "steps": [args], "out": out,
                "outputs": {"dataset": out}, "env": spec.env}


def export_points(layer, path: str) -> str:
    """The layer's points as GeoJSON in EPSG:4326 (what the backend reads), at path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GeoJSON"
    options.fileEncoding = "UTF-8"
    options.ct = QgsCoordinateTransform(layer.crs(), QgsCoordinateReferenceSystem("EPSG:4326"),
                                        QgsProject.instance().transformContext())
    context = QgsProject.instance().transformContext()
    error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, context, options)
    if error != QgsVectorFileWriter.NoError:
        raise ValueError(f"could not export {layer.name()} to {path}: {message}")
    return path


class TrainDialog(JobDialog):
    title = "Tower Detector: train"

    def __init__(self, iface, manager, parent=None):
        super().__init__(iface, manager, parent)
        self.data = _file_widget(QgsFileWidget.GetDirectory)
        self.out = _file_widget(QgsFileWidget.GetDirectory,
                                path=os.path.join(settings.work_dir(), "models", f"model-{_stamp()}"))
        self.mode = QComboBox()
        self.mode.addItems(["Train one model", "Hyperparameter search (Hyperopt)"])
        self.weights = QComboBox()
        self.weights.addItems(["imagenet", "none", "file…"])
        self.weights_file = _file_widget(QgsFileWidget.GetFile, "Keras weights (*.h5 *.keras)")
        self.params = _file_widget(QgsFileWidget.GetFile, "JSON (*.json)")
        self.image_size = _spin(0, 1024, 0)
        self.epochs_top = _spin(0, 100, 0)
        self.epochs_fine = _spin(0, 1000, 0)
        self.batch_size = _spin(0, 4096, 0)
        self.trials = _spin(1, 10_000, 100, special="")
        self.metric = QComboBox()
        self.metric.addItems(commands.METRICS)
        self.space = _file_widget(QgsFileWidget.GetFile, "JSON (*.json)")
        self.where = _where_combo()
        for label, widget in (("Training data folder", self.data), ("Output folder", self.out), ("What", self.mode),
                              ("Start weights", self.weights), ("Weights file", self.weights_file),
                              ("Hyperparameters (JSON)", self.params), ("Image size (px)", self.image_size),
                              ("Epochs, new top", self.epochs_top), ("Epochs, fine-tuning", self.epochs_fine),
                              ("Batch size", self.batch_size), ("Search trials", self.trials),
                              ("Search picks by", self.metric), ("Search space (JSON)", self.space),
                              ("Run on", self.where)):
            self.form.addRow(label, widget)

    def build(self) -> dict:
        data = self._out_dir(self.data, "training data folder")
        out = self._out_dir(self.out, "output folder")
        weights = self.weights.currentText()
        if weights.startswith("file"):
            weights = self.weights_file.filePath().strip()
            if not weights:
                raise ValueError("choose the weights file, or imagenet / none")
        common = dict(weights=weights, params=self.params.filePath().strip() or None,
                      image_size=_value(self.image_size), epochs_fine=_value(self.epochs_fine),
                      batch_size=_value(self.batch_size))
        if self.mode.currentIndex() == 1:
            args = commands.search_args(data, out, self.trials.value(), space=self.space.filePath().strip() or None,
                                        metric=self.metric.currentText(), **common)
            kind, model = "search", os.path.join(out, "best")
        else:
            args = commands.train_args(data, out, epochs_top=_value(self.epochs_top), **common)
            kind, model = "train", out
        job = {"kind": kind, "title": f"{kind} {os.path.basename(out)}", "steps": [args], "out": out,
               "outputs": {"model": model}}
        return _maybe_remote(job, self.where)


class PredictDialog(JobDialog):
    title = "Tower Detector: predict"

    def __init__(self, iface, manager, parent=None):
        super().__init__(iface, manager, parent)
        self.model = _file_widget(QgsFileWidget.GetDirectory)
        self.model.fileChanged.connect(self._model_chosen)
        self.imagery = ImageryWidget()
        self.area = AreaWidget(iface)
        self.name = QLineEdit(f"predict-{_stamp()}")
        self.out = _file_widget(QgsFileWidget.GetDirectory, path=os.path.join(settings.work_dir(), "results"))
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setDecimals(3)
        self.threshold.setValue(settings.value("results/threshold"))
        self.workers = _spin(0, 256, 0)
        self.checkpoint_every = _spin(0, 1_000_000, 0)
        self.batch_size = _spin(0, 4096, 0)
        self.shards = _spin(0, 1000, 0)
        self.views = QComboBox()
        for n, text in zip(commands.VIEWS, ("1 (fastest)", "2", "4: turned", "8: turned and mirrored")):
            self.views.addItem(text, n)
        self.views.setToolTip("Score each tile this many ways up and average the scores: steadier scores for "
                              "that many times the model's work")
        self.views.currentIndexChanged.connect(self._model_chosen)
        self.where = _where_combo()
        for label, widget in (("Model folder", self.model), ("Imagery", self.imagery), ("Area", self.area),
                              ("Name", self.name), ("Results under", self.out),
                              ("Candidate threshold", self.threshold), ("Imagery workers", self.workers),
                              ("Checkpoint every (tiles)", self.checkpoint_every), ("Batch size", self.batch_size),
                              ("Shards", self.shards), ("Views per tile", self.views), ("Run on", self.where)):
            self.form.addRow(label, widget)

    def _model_chosen(self, *_):
        """The model's recommended threshold for the views chosen (its scores shift a little with them)."""
        path = self.model.filePath().strip()
        if path and os.path.isfile(os.path.join(path, "metrics.json")):
            self.threshold.setValue(recommended_threshold(path, self.threshold.value(), self.views.currentData()))

    def build(self) -> dict:
        model = self._out_dir(self.model, "model folder")
        spec = self.imagery.resolved()
        area = self.area.path()
        name = self.name.text().strip() or f"predict-{_stamp()}"
        folder = os.path.join(self._out_dir(self.out, "results folder"), name)
        threshold = round(self.threshold.value(), 6)
        options = dict(area=area, shards=_value(self.shards), workers=_value(self.workers),
                       checkpoint_every=_value(self.checkpoint_every), batch_size=_value(self.batch_size),
                       max_tiles=settings.value("area/max_tiles"),
                       views=self.views.currentData(), imagery_name=self.imagery.name() or None)
        if self.where.currentData() == "aws":
            bucket = settings.value("aws/bucket")
            store = f"s3://{bucket}/jobs/{name}/store" if bucket else None
            if not store:
                raise ValueError("set the AWS bucket in Tower Detector > Settings for remote predictions")
            job = {"kind": "predict", "title": f"predict {name}", "out": folder, "env": spec.env,
                   "steps": [commands.predict_args(model, spec.spec, store, **options)]}
            return _maybe_remote(job, self.where, name=name, threshold=threshold)
        store = os.path.join(folder, "store")
        heatmap, candidates = os.path.join(folder, "heatmap.tif"), os.path.join(folder, "candidates.gpkg")
        steps = [commands.predict_args(model, spec.spec, store, **options),
                 commands.results_args(store, heatmap=heatmap, candidates=candidates, threshold=threshold,
                                       json_path=os.path.join(folder, "scores.json"))]
        return {"kind": "predict", "title": f"predict {name}", "steps": steps, "out": folder, "env": spec.env,
                "outputs": {"store": store, "heatmap": heatmap, "candidates": candidates, "threshold": threshold}}


def _where_combo() -> QComboBox:
    combo = QComboBox()
    combo.addItem("this computer", "local")
    combo.addItem("AWS (tower-detector remote)", "aws")
    combo.setCurrentIndex(1 if settings.value("backend/mode") == "aws" else 0)
    return combo


def _maybe_remote(job: dict, where: QComboBox, name: str = None, threshold: float = None) -> dict:
    """The job as is, or as a `remote submit` of it when "Run on" says AWS."""
    if where.currentData() != "aws":
        return job
    try:
        be = backend.locate(settings.value("backend/path"))
    except backend.BackendMissing as exc:
        raise ValueError(str(exc)) from None
    if not backend.has_command(be, "remote", "submit"):
        raise ValueError("this backend has no `tower-detector remote`: update it, or run on this computer")
    profile, region = settings.value("aws/profile") or None, settings.value("aws/region") or None
    [local] = job["steps"]
    steps = [commands.remote_submit_args(local, name=name, profile=profile, region=region)]
    remote = {"kind": job["kind"], "profile": profile, "region": region, "threshold": threshold}
    return {**job, "kind": "remote-submit", "title": f"AWS {job['title']}", "steps": steps, "outputs": {},
            "remote": remote}


# --- load results -------------------------------------------------------------------------------------------------
class LoadResultsDialog(QDialog):
    """Pick a heatmap and/or candidates GeoPackage (and a model, for its metrics); emits load(...)."""

    load = pyqtSignal(str, str, float, float)  # heatmap, candidates, threshold, floor
    metrics = pyqtSignal(str)  # a model directory

    def __init__(self, parent=None, heatmap="", candidates=""):
        super().__init__(parent)
        self.setWindowTitle("Tower Detector: load results")
        self.setObjectName("TowerDetectorLoadResultsDialog")
        self.heatmap = _file_widget(QgsFileWidget.GetFile, "GeoTIFF (*.tif *.tiff)", heatmap)
        self.candidates = _file_widget(QgsFileWidget.GetFile, "GeoPackage (*.gpkg)", candidates)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setDecimals(3)
        self.threshold.setValue(settings.value("results/threshold"))
        self.floor = QDoubleSpinBox()
        self.floor.setRange(0.0, 0.99)
        self.floor.setValue(settings.value("results/heatmap_floor"))
        self.model = _file_widget(QgsFileWidget.GetDirectory)
        show_metrics = QPushButton("Show metrics")
        show_metrics.clicked.connect(self._metrics)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(show_metrics)
        self.error = QLabel("")
        self.error.setStyleSheet(RED)
        self.error.setWordWrap(True)
        form = QFormLayout()
        for label, widget in (("Heatmap (GeoTIFF)", self.heatmap), ("Candidates (GeoPackage)", self.candidates),
                              ("Candidate threshold", self.threshold), ("Heatmap floor", self.floor),
                              ("Model folder", model_row)):
            form.addRow(label, widget)
        buttons = QDialogButtonBox(QDialogButtonBox.Cancel)
        buttons.addButton("Load", QDialogButtonBox.AcceptRole).clicked.connect(self.accept_load)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(buttons)

    def accept_load(self):
        heatmap, candidates = self.heatmap.filePath().strip(), self.candidates.filePath().strip()
        if not heatmap and not candidates:
            self.error.setText("choose a heatmap, a candidates GeoPackage, or both")
            return
        self.load.emit(heatmap, candidates, self.threshold.value(), self.floor.value())
        self.accept()

    def _metrics(self):
        if self.model.filePath().strip():
            self.metrics.emit(self.model.filePath().strip())


# --- settings -----------------------------------------------------------------------------------------------------
class SettingsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Tower Detector: settings")
        self.setObjectName("TowerDetectorSettingsDialog")
        self.mode = QComboBox()
        self.mode.addItem("local (this computer)", "local")
        self.mode.addItem("AWS (tower-detector remote)", "aws")
        self.mode.setCurrentIndex(self.mode.findData(settings.value("backend/mode")))
        self.backend_path = _file_widget(QgsFileWidget.GetFile, path=settings.value("backend/path"))
        self.backend_path.lineEdit().setPlaceholderText("auto: the dev checkout's .venv, then PATH")
        self.check_button = QPushButton("Check")
        self.check_button.clicked.connect(self.check)
        self.check_label = QLabel("")
        self.check_label.setWordWrap(True)
        self.check_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        backend_row = QHBoxLayout()
        backend_row.addWidget(self.backend_path, 1)
        backend_row.addWidget(self.check_button)
        self.work_dir = _file_widget(QgsFileWidget.GetDirectory, path=settings.value("work_dir"))
        self.work_dir.lineEdit().setPlaceholderText(settings.work_dir())
        self.edits = {key: QLineEdit(settings.value(key)) for key in ("aws/profile", "aws/region", "aws/bucket",
                                                                      "aws/queue", "imagery/spec")}
        self.edits["imagery/spec"].setPlaceholderText("https://…/{z}/{x}/{y}.jpg?access_token=${TOWER_DETECTOR_TOKEN}")
        self.auth = QgsAuthConfigSelect(self)
        self.auth.setConfigId(settings.value("imagery/authcfg"))
        self.numbers = {}
        for key, decimals, maximum in (("estimate/local_tiles_per_s", 2, 1e6), ("estimate/remote_tiles_per_s", 2, 1e6),
                                       ("estimate/remote_usd_per_hour", 3, 1e4), ("estimate/remote_workers", 0, 1e4),
                                       ("area/warn_tiles", 0, 1e10), ("area/max_tiles", 0, 1e10),
                                       ("results/heatmap_floor", 2, 0.99), ("results/threshold", 3, 1.0)):
            box = QDoubleSpinBox()
            box.setDecimals(decimals)
            box.setRange(0, maximum)
            box.setValue(settings.value(key))
            if decimals == 0:
                box.setGroupSeparatorShown(True)
            self.numbers[key] = box
        form = QFormLayout()
        rows = [("Backend", self.mode), ("tower-detector (or its Python)", backend_row), ("", self.check_label),
                ("Work folder", self.work_dir), ("AWS profile", self.edits["aws/profile"]),
                ("AWS region", self.edits["aws/region"]), ("AWS bucket", self.edits["aws/bucket"]),
                ("AWS job queue", self.edits["aws/queue"]), ("Default imagery", self.edits["imagery/spec"]),
                ("Imagery token (QGIS authentication)", self.auth)]
        rows += [(label, self.numbers[key]) for key, label in (
            ("estimate/local_tiles_per_s", "Local CPU tiles/s (estimates)"),
            ("estimate/remote_tiles_per_s", "Remote GPU tiles/s (estimates)"),
            ("estimate/remote_usd_per_hour", "Remote GPU $/hour (estimates)"),
            ("estimate/remote_workers", "Remote GPU workers (estimates)"),
            ("area/warn_tiles", "Warn above (tiles)"), ("area/max_tiles", "Refuse above (tiles)"),
            ("results/heatmap_floor", "Heatmap floor (transparent below)"),
            ("results/threshold", "Default candidate threshold"))]
        for label, widget in rows:
            form.addRow(label, widget)
        buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def check(self) -> bool:
        """Locate the backend as these (unsaved) settings say and run `tower-detector --version`."""
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            be = backend.locate(self.backend_path.filePath().strip())
            remote = "yes" if backend.has_command(be, "remote") else "no (this backend has no `remote`)"
            text, ok = f"{backend.version(be)} ({be.source}: {' '.join(be.command)}); AWS jobs: {remote}", True
        except (backend.BackendMissing, RuntimeError) as exc:
            text, ok = str(exc), False
        finally:
            QApplication.restoreOverrideCursor()
        self.check_label.setStyleSheet("" if ok else RED)
        self.check_label.setText(text)
        return ok

    def save(self) -> bool:
        secrets = imagery.literal_secrets(self.edits["imagery/spec"].text())
        if secrets:
            self.check_label.setStyleSheet(RED)
            self.check_label.setText(f"the default imagery holds a secret ({', '.join(secrets)}): keep it in a QGIS "
                                     f"authentication config and write {imagery.TOKEN_REF} in its place")
            return False
        settings.set_value("backend/mode", self.mode.currentData())
        settings.set_value("backend/path", self.backend_path.filePath().strip())
        settings.set_value("work_dir", self.work_dir.filePath().strip())
        for key, edit in self.edits.items():
            settings.set_value(key, edit.text().strip())
        settings.set_value("imagery/authcfg", self.auth.configId())
        for key, box in self.numbers.items():
            settings.set_value(key, int(box.value()) if box.decimals() == 0 else box.value())
        self.accept()
        return True
