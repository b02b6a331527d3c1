"""The job dialogs: Build training data, Train (or search), Predict, and Retrain with review decisions.

Each dialog's build() turns its widgets into a job (argument lists from core/commands.py, output paths, the secret
environment) or raises ValueError with one line; run() starts it. Dialogs are non-modal, as QGIS's own.
"""

import json
import os

from qgis.core import QgsMapLayerProxyModel, QgsProject, QgsVectorLayer, QgsWkbTypes
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QRadioButton,
    QVBoxLayout,
)

from ..core import commands, retrain, runner, settings
from ..core.area_geometry import estimate_tiles, read_area
from ..core.estimates import dataset_plan, local_chunk_tiles, predict_plan, train_plan
from ..core.parameters import (
    AREA,
    BACKBONE,
    BACKGROUND_RATIO,
    BATCH_SIZE,
    BLOCK_SIZE,
    CHECKPOINT_EVERY,
    DATA,
    DATASET_OUT,
    EPOCHS_FINE,
    EPOCHS_TOP,
    IMAGE_SIZE,
    IMAGERY,
    INIT,
    LINE_RESCORE,
    METRIC,
    MODE,
    MODEL,
    MODEL_OUT,
    PARAMS,
    RESULTS_UNDER,
    RUN_NAME,
    RUN_ON,
    SEED,
    SHARDS,
    SPACE,
    SPAN_NEGATIVES,
    SPLIT,
    THRESHOLD,
    TOWER_FILTER,
    TOWERS,
    TRIALS,
    VIEWS,
    WEIGHTS,
    WEIGHTS_FILE,
    WORKERS,
    ZOOM,
)
from ..core.point_export import export_layer_points
from ..core.result_layers import recommended_threshold
from ..i18n import tr
from .widgets import (
    ERROR_STYLE,
    AreaWidget,
    ImageryWidget,
    add_help,
    file_widget,
    input_value,
    parameter_input,
    set_input_value,
    spin_value,
    timestamp,
)


class JobDialog(QDialog):
    """A form, an error line, and Run. Subclasses fill self.form and implement build(), and call _restore() once
    their inputs exist: the inputs named in `remembered` start as the dialog last ran (output folders, which get
    a new name each time, are not remembered)."""

    title = "Tower Detector"
    remembered = ()
    help_topic = ""  # its section of the user guide (core/help.py)

    def __init__(self, iface, manager, parent=None):
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.iface, self.manager = iface, manager
        self.setWindowTitle(self.title)
        self.setObjectName("TowerDetector" + type(self).__name__)
        self.form = QFormLayout()
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(ERROR_STYLE)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Cancel)
        self.run_button = self.buttons.addButton(tr("Run"), QDialogButtonBox.AcceptRole)
        self.run_button.clicked.connect(self.run)
        self.buttons.rejected.connect(self.reject)
        if self.help_topic:
            add_help(self.buttons, self.help_topic)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)
        self.last_job = None

    def build(self) -> dict:
        """{"kind", "title", "steps", "out", "outputs", "env", "remote"} or ValueError."""
        raise NotImplementedError

    def plan(self):
        """What the run will cost (core/estimates.py Plan), or None when nothing can be said yet."""
        return None

    def _add_estimate(self, *signals):
        """An Estimate row, updated when any of `signals` fires."""
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        self.estimate.setToolTip(tr("From the rates and price in Settings: measure yours and put them there"))
        self.form.addRow(tr("Estimate"), self.estimate)
        for signal in signals:
            signal.connect(self._show_plan)

    def _show_plan(self, *_):
        try:
            plan = self.plan()
        except ValueError:
            plan = None
        self.estimate.setText(plan.text if plan else "")

    def _ask(self, question: str) -> bool:
        return QMessageBox.question(self, self.title, question, QMessageBox.Yes | QMessageBox.No,
                                    QMessageBox.No) == QMessageBox.Yes

    def run(self):
        try:
            job = self.build()
            plan = self.plan()
            if plan is not None and plan.refusal:
                raise ValueError(plan.refusal)
            if plan is not None and plan.question and not self._ask(plan.question):
                raise ValueError(tr("not started"))
        except ValueError as exc:
            self.error.setText(str(exc))
            return None
        self.error.setText("")
        self._remember()
        self.last_job = self.manager.start(job["kind"], job["title"], job["steps"], out=job.get("out", ""),
                                           outputs=job.get("outputs"), env=job.get("env"), remote=job.get("remote"),
                                           authcfg=job.get("authcfg", ""))
        self.accept()
        return self.last_job

    def _restore(self):
        state = settings.dialog_state(type(self).__name__)
        for name in self.remembered:
            if name in state:
                set_input_value(getattr(self, name), state[name])

    def _remember(self):
        settings.save_dialog_state(type(self).__name__,
                                   {name: input_value(getattr(self, name)) for name in self.remembered})

    def _add_input(self, param, value=None):
        """A row for a step parameter of core/parameters.py; its input."""
        widget = parameter_input(param, value)
        self.form.addRow(tr(param.label), widget)
        return widget

    def _add_rows(self, *rows):
        """Rows of (definition in core/parameters.py, input): its label, and its help as the input's tooltip."""
        for param, widget in rows:
            widget.setToolTip(tr(param.help))
            self.form.addRow(tr(param.label), widget)

    def _out_dir(self, widget, what):
        path = widget.filePath().strip()
        if not path:
            raise ValueError(tr("choose the {what}").format(what=what))
        return path


class BuildDatasetDialog(JobDialog):
    title = "Tower Detector: build training data"
    help_topic = "dataset"
    remembered = ("area", "imagery", "overpass", "from_layer", "points", "tower_filter", "zoom", "background_ratio",
                  "span_negatives", "split", "block_size", "seed")

    def __init__(self, iface, manager, parent=None):
        super().__init__(iface, manager, parent)
        self.area = AreaWidget(iface)
        self.imagery = ImageryWidget()
        self.overpass = QRadioButton(tr("OpenStreetMap towers (Overpass)"))
        self.overpass.setChecked(True)
        self.from_layer = QRadioButton(tr("Points of a layer"))
        self.points = QgsMapLayerComboBox()
        self.points.setFilters(QgsMapLayerProxyModel.PointLayer)
        self.tower_filter = QLineEdit("")
        self.tower_filter.setPlaceholderText(tr("power=tower for Overpass; all for a plain point layer"))
        labels = QGroupBox(tr(TOWERS.label))
        labels.setToolTip(tr(TOWERS.help))
        box = QFormLayout(labels)
        box.addRow(self.overpass)
        box.addRow(self.from_layer, self.points)
        box.addRow(tr(TOWER_FILTER.label), self.tower_filter)
        self.tower_filter.setToolTip(tr(TOWER_FILTER.help))
        self.out = file_widget(QgsFileWidget.GetDirectory,
                               path=os.path.join(settings.work_dir(), "datasets", f"dataset-{timestamp()}"))
        self._add_rows((AREA, self.area), (IMAGERY, self.imagery))
        self.form.addRow("", labels)
        self._add_rows((DATASET_OUT, self.out))
        self.zoom, self.background_ratio, self.span_negatives, self.split, self.block_size, self.seed = (
            self._add_input(param) for param in (ZOOM, BACKGROUND_RATIO, SPAN_NEGATIVES, SPLIT, BLOCK_SIZE, SEED))
        if tower_point_layers():  # the user loaded their towers: start from them, not from OSM
            self.from_layer.setChecked(True)
            self.points.setLayer(tower_point_layers()[0])
        self._add_estimate(self.area.changed)
        self.from_layer.toggled.connect(self.points.setEnabled)
        self._restore()
        self.points.setEnabled(self.from_layer.isChecked())
        self._show_plan()

    def plan(self):
        return dataset_plan(estimate_tiles(read_area(self.area.current()), spin_value(self.zoom) or ZOOM.default))

    def build(self) -> dict:
        area = self.area.path()
        spec = self.imagery.resolved()
        out = self._out_dir(self.out, "output folder")
        tower_filter = self.tower_filter.text().strip() or None
        if self.from_layer.isChecked():
            layer = self.points.currentLayer()
            if layer is None:
                raise ValueError(tr("choose a point layer with the towers, or use OpenStreetMap"))
            towers = export_layer_points(layer, os.path.join(os.path.dirname(out.rstrip("/\\")) or settings.work_dir(),
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
                "outputs": {"dataset": out}, "env": spec.env, "authcfg": self.imagery.auth.configId()}


class TrainDialog(JobDialog):
    title = "Tower Detector: train"
    help_topic = "train"
    remembered = ("data", "mode", "weights", "weights_file", "backbone", "params", "image_size", "epochs_top",
                  "epochs_fine", "batch_size", "trials", "metric", "space", "where")

    def __init__(self, iface, manager, parent=None):
        super().__init__(iface, manager, parent)
        self.data = file_widget(QgsFileWidget.GetDirectory)
        self.out = file_widget(QgsFileWidget.GetDirectory,
                               path=os.path.join(settings.work_dir(), "models", f"model-{timestamp()}"))
        self.mode = QComboBox()
        self.mode.addItems(["Train one model", "Hyperparameter search (Hyperopt)"])
        self.weights = _choices(WEIGHTS, extra=("file…",))
        self.weights_file = file_widget(QgsFileWidget.GetFile, "Keras weights (*.h5 *.keras)")
        self.backbone = _choices(BACKBONE)
        self.init = file_widget(QgsFileWidget.GetDirectory)
        self.init.fileChanged.connect(self._init_chosen)
        self.params = file_widget(QgsFileWidget.GetFile, "JSON (*.json)")
        self._add_rows((DATA, self.data), (MODEL_OUT, self.out), (MODE, self.mode), (INIT, self.init),
                       (WEIGHTS, self.weights), (WEIGHTS_FILE, self.weights_file), (BACKBONE, self.backbone),
                       (PARAMS, self.params))
        self.image_size, self.epochs_top, self.epochs_fine, self.batch_size, self.trials = (
            self._add_input(param) for param in (IMAGE_SIZE, EPOCHS_TOP, EPOCHS_FINE, BATCH_SIZE, TRIALS))
        self.metric = _choices(METRIC)
        self.space = file_widget(QgsFileWidget.GetFile, "JSON (*.json)")
        self.where = _where_combo()
        self._add_rows((METRIC, self.metric), (SPACE, self.space), (RUN_ON, self.where))
        self._add_estimate(self.data.fileChanged, self.epochs_top.valueChanged, self.epochs_fine.valueChanged,
                           self.mode.currentIndexChanged, self.trials.valueChanged, self.where.currentIndexChanged)
        self.mode.currentIndexChanged.connect(self._init_chosen)
        self.weights.currentIndexChanged.connect(self._init_chosen)
        self.backbone.currentIndexChanged.connect(self._init_chosen)
        self._restore()
        self._init_chosen()
        self._show_plan()

    def plan(self):
        try:
            with open(os.path.join(self.data.filePath().strip(), "dataset.json"), encoding="utf-8") as f:
                splits = json.load(f).get("splits") or {}
        except (OSError, ValueError):
            return None
        epochs = None
        if spin_value(self.epochs_top) is not None or spin_value(self.epochs_fine) is not None:
            epochs = (spin_value(self.epochs_top) or 0) + (spin_value(self.epochs_fine) or 0)
        trials = self.trials.value() if self.mode.currentIndex() == 1 else 1
        plan = train_plan(int((splits.get("train") or {}).get("tiles", 0)) * trials, epochs,
                          remote=self.where.currentData() == "aws")
        if trials > 1:
            plan.text = f"{trials} trials: " + plan.text
        return plan

    def _init_chosen(self, *_):
        """Only the inputs that apply are enabled: a model to start from brings its own weights and backbone; a
        weights file only with weights "file…"; trials, metric and search space only for a search, whose models
        all start afresh (no model to start from, no first-phase epochs of a single training). The compact backbone
        has no pretrained weights: it always starts from none."""
        search = self.mode.currentIndex() == 1
        warm = bool(self.init.filePath().strip()) and not search
        compact = self.backbone.currentData() == "compact"
        self.init.setEnabled(not search)
        self.backbone.setEnabled(not warm)
        self.weights.setEnabled(not warm and not compact)
        self.weights_file.setEnabled(not warm and not compact and self.weights.currentData() is None)
        for widget in (self.trials, self.metric, self.space):
            widget.setEnabled(search)
        self.epochs_top.setEnabled(not search)

    def build(self) -> dict:
        data = self._out_dir(self.data, "training data folder")
        out = self._out_dir(self.out, "output folder")
        init = self.init.filePath().strip() or None
        if init and self.mode.currentIndex() == 1:
            raise ValueError(tr("a search trains many models afresh: clear Start from model, or train one model"))
        if init and not os.path.isfile(os.path.join(init, "params.json")):
            raise ValueError(tr("{init} is not a model folder made by Train (it has no params.json)").format(init=init))
        backbone = self.backbone.currentData()
        weights = "none" if backbone == "compact" else self.weights.currentData()
        if weights is None and not init:  # file…
            weights = self.weights_file.filePath().strip()
            if not weights:
                raise ValueError(tr("choose the weights file, or imagenet / none"))
        common = dict(weights=weights, params=self.params.filePath().strip() or None,
                      backbone=None if backbone == BACKBONE.default else backbone,  # a params file may set it
                      image_size=spin_value(self.image_size), epochs_fine=spin_value(self.epochs_fine),
                      batch_size=spin_value(self.batch_size))
        if self.mode.currentIndex() == 1:
            args = commands.search_args(data, out, self.trials.value(), space=self.space.filePath().strip() or None,
                                        metric=self.metric.currentData(), **common)
            kind, model = "search", os.path.join(out, "best")
        else:
            args = commands.train_args(data, out, epochs_top=spin_value(self.epochs_top), init=init, **common)
            kind, model = "train", out
        job = {"kind": kind, "title": f"{kind} {os.path.basename(out)}", "steps": [args], "out": out,
               "outputs": {"model": model}}
        return _maybe_remote(job, self.where)


class PredictDialog(JobDialog):
    title = "Tower Detector: predict"
    help_topic = "predict"
    remembered = ("model", "imagery", "area", "out", "workers", "checkpoint_every", "batch_size", "shards", "views",
                  "line_rescore", "where")

    def __init__(self, iface, manager, parent=None):
        super().__init__(iface, manager, parent)
        self.model = file_widget(QgsFileWidget.GetDirectory)
        self.model.fileChanged.connect(self._model_chosen)
        self.imagery = ImageryWidget()
        self.area = AreaWidget(iface)
        self.name = QLineEdit(f"predict-{timestamp()}")
        self.out = file_widget(QgsFileWidget.GetDirectory, path=os.path.join(settings.work_dir(), "results"))
        self._add_rows((MODEL, self.model), (IMAGERY, self.imagery), (AREA, self.area), (RUN_NAME, self.name),
                       (RESULTS_UNDER, self.out))
        self.threshold = self._add_input(THRESHOLD, settings.value("results/threshold"))
        self.workers, self.checkpoint_every, self.batch_size, self.shards = (
            self._add_input(param) for param in (WORKERS, CHECKPOINT_EVERY, BATCH_SIZE, SHARDS))
        self.views = _choices(VIEWS, texts=("1 (fastest)", "2", "4: turned", "8: turned and mirrored"))
        self.views.currentIndexChanged.connect(self._model_chosen)
        self.line_rescore = QCheckBox()
        self.where = _where_combo()
        self.where.currentIndexChanged.connect(self._where_chosen)
        self._add_rows((VIEWS, self.views), (LINE_RESCORE, self.line_rescore), (RUN_ON, self.where))
        self._add_estimate(self.area.changed, self.views.currentIndexChanged,
                           self.where.currentIndexChanged)
        self._restore()
        self._where_chosen()
        self._show_plan()

    def _where_chosen(self, *_):
        """A remote run's results are made when it is fetched, without re-scoring: the choice is for local runs."""
        self.line_rescore.setEnabled(self.where.currentData() != "aws")

    def plan(self):
        return predict_plan(estimate_tiles(read_area(self.area.current())), self.views.currentData(),
                            remote=self.where.currentData() == "aws")

    def _model_chosen(self, *_):
        """The model's recommended threshold for the views chosen (its scores shift a little with them)."""
        path = self.model.filePath().strip()
        if path and os.path.isfile(os.path.join(path, "metrics.json")):
            self.threshold.setValue(recommended_threshold(path, self.threshold.value(), self.views.currentData()))

    def build(self) -> dict:
        model = self._out_dir(self.model, "model folder")
        spec = self.imagery.resolved()
        area = self.area.path()
        name = self.name.text().strip() or f"predict-{timestamp()}"
        folder = os.path.join(self._out_dir(self.out, "results folder"), name)
        threshold = round(self.threshold.value(), 6)
        options = dict(area=area, shards=spin_value(self.shards), workers=spin_value(self.workers),
                       checkpoint_every=spin_value(self.checkpoint_every), batch_size=spin_value(self.batch_size),
                       max_tiles=settings.value("area/max_tiles"),
                       views=self.views.currentData(), imagery_name=self.imagery.name() or None)
        if self.where.currentData() == "aws":
            bucket = settings.value("aws/bucket")
            store = f"s3://{bucket}/jobs/{name}/store" if bucket else None
            if not store:
                raise ValueError(tr("set the AWS bucket in Tower Detector > Settings for remote predictions"))
            job = {"kind": "predict", "title": f"predict {name}", "out": folder, "env": spec.env,
                   "authcfg": self.imagery.auth.configId(),
                   "steps": [commands.predict_args(model, spec.spec, store, **options)]}
            return _maybe_remote(job, self.where, name=name, threshold=threshold)
        if options["checkpoint_every"] is None:  # a local run: chunks of about a minute, so a cancel loses little
            options["checkpoint_every"] = local_chunk_tiles()
        store = os.path.join(folder, "store")
        heatmap, candidates = os.path.join(folder, "heatmap.tif"), os.path.join(folder, "candidates.gpkg")
        steps = [commands.predict_args(model, spec.spec, store, **options),
                 commands.results_args(store, heatmap=heatmap, candidates=candidates, threshold=threshold,
                                       json_path=os.path.join(folder, "scores.json"),
                                       line_rescore=self.line_rescore.isChecked())]
        return {"kind": "predict", "title": f"predict {name}", "steps": steps, "out": folder, "env": spec.env,
                "authcfg": self.imagery.auth.configId(),
                "outputs": {"store": store, "heatmap": heatmap, "candidates": candidates, "threshold": threshold}}


class RetrainDialog(JobDialog):
    """A reviewed candidates layer teaches the model that found it: export its decisions as labels, rebuild that
    model's training data with them (the decided tiles join wherever they lie), and fine-tune the model on it.
    Prefilled from the candidates' provenance (core/retrain.py); the counts say what goes in."""

    title = "Tower Detector: retrain with review decisions"
    help_topic = "retrain"

    def __init__(self, iface, manager, candidates, parent=None):
        super().__init__(iface, manager, parent)
        self.candidates = candidates
        self.run_button.setText(tr("Retrain"))
        found = retrain.provenance(candidates)
        self.counts, dataset, sources = found["counts"], found["dataset"], found["dataset"].get("sources") or {}
        self.dataset = dataset
        layer = QLabel(os.path.basename(candidates))
        layer.setToolTip(candidates)
        self.decisions = QLabel(retrain.decisions_text(self.counts))
        self.decisions.setWordWrap(True)
        self.decisions.setToolTip(tr("Confirmed towers become tower tiles and false positives hard negatives of the "
                                     "new training set; the other decisions and unreviewed candidates are not used."))
        self.notes = QLabel("\n".join(found["notes"]))
        self.notes.setWordWrap(True)
        self.form.addRow(tr("Candidates"), layer)
        self.form.addRow(tr("Decisions"), self.decisions)
        if found["notes"]:
            self.form.addRow("", self.notes)
        self.init = file_widget(QgsFileWidget.GetDirectory, path=found["model"])
        self.area = AreaWidget(iface)
        if sources.get("area") and os.path.isfile(sources["area"]):
            self.area.set_path(sources["area"])
        self.towers = QLineEdit(sources.get("towers_spec") or "overpass")
        self.imagery = ImageryWidget()
        if sources.get("imagery_spec"):
            self.imagery.set_spec(sources["imagery_spec"])
        stem = os.path.basename(found["model"].rstrip("/\\")) or "model"
        self.dataset_out = file_widget(QgsFileWidget.GetDirectory, path=os.path.join(
            settings.work_dir(), "datasets", f"{stem}-reviewed-{timestamp()}"))
        self.model_out = file_widget(QgsFileWidget.GetDirectory, path=os.path.join(
            settings.work_dir(), "models", f"{stem}-reviewed-{timestamp()}"))
        self._add_rows((INIT, self.init), (AREA, self.area), (TOWERS, self.towers), (IMAGERY, self.imagery),
                       (DATASET_OUT, self.dataset_out), (MODEL_OUT, self.model_out))
        self.form.labelForField(self.dataset_out).setText(tr("Training data folder"))
        self.form.labelForField(self.model_out).setText(tr("New model folder"))
        self.epochs_fine = self._add_input(EPOCHS_FINE)

    def build(self) -> dict:
        if not any(self.counts.get(status) for status in retrain.LEARNED):
            raise ValueError(tr("no review decisions to learn from yet: confirm towers or mark false positives first"))
        model = self.init.filePath().strip()
        if not model or not os.path.isfile(os.path.join(model, "params.json")):
            raise ValueError(tr("choose the model to start from (a folder made by Train)"))
        area = self.area.path()
        towers = self.towers.text().strip()
        if not towers:
            raise ValueError(tr("give the tower labels of the area: overpass, or a GeoJSON/GeoPackage file"))
        spec = self.imagery.resolved()
        data = self._out_dir(self.dataset_out, "training data folder")
        out = self._out_dir(self.model_out, "new model folder")
        folder = data.rstrip("/\\")
        labels = os.path.join(os.path.dirname(folder) or settings.work_dir(), os.path.basename(folder) + "-labels.gpkg")
        d = self.dataset
        steps = [commands.export_args("labels", self.candidates, labels),
                 commands.dataset_args(area, towers, spec.spec, data, zoom=d.get("zoom", ZOOM.default),
                                       background_ratio=d.get("background_ratio"), split=retrain.split_text(d) or None,
                                       seed=d.get("seed"), block_size=d.get("block_size"),
                                       tower_filter=d.get("tower_filter"), extra_labels=labels,
                                       cache=os.path.join(settings.work_dir(), "cache"),
                                       max_tiles=settings.value("area/max_tiles")),
                 commands.train_args(data, out, init=model, epochs_fine=spin_value(self.epochs_fine))]
        return {"kind": "train", "title": f"retrain {os.path.basename(out)}", "steps": steps, "out": out,
                "outputs": {"dataset": data, "model": out, "labels": labels}, "env": spec.env,
                "authcfg": self.imagery.auth.configId()}


def tower_point_layers() -> list:
    """The project's point layers that may hold towers: not the plugin's own candidate points."""
    return [layer for layer in QgsProject.instance().mapLayers().values()
            if isinstance(layer, QgsVectorLayer) and layer.isValid()
            and layer.geometryType() == QgsWkbTypes.PointGeometry
            and not (layer.fields().indexOf("tile_id") >= 0 and layer.fields().indexOf("score") >= 0)]


def _choices(param, texts=None, extra=()) -> QComboBox:
    """A combo box of a step parameter's choices (shown as texts, if given), at its default; the extra items come
    after them, with no value."""
    combo = QComboBox()
    for choice, text in zip(param.choices, texts or [str(c) for c in param.choices]):
        combo.addItem(text, choice)
    for text in extra:
        combo.addItem(text, None)
    combo.setCurrentIndex(param.choices.index(param.default))
    combo.setToolTip(tr(param.help))
    return combo


def _where_combo() -> QComboBox:
    combo = QComboBox()
    combo.addItem(tr("this computer"), "local")
    combo.addItem(tr("AWS (tower-detector remote)"), "aws")
    combo.setCurrentIndex(1 if settings.value("jobs/run_on") == "aws" else 0)
    return combo


def _maybe_remote(job: dict, where: QComboBox, name: str = None, threshold: float = None) -> dict:
    """The job as is, or as a `remote submit` of it when "Run on" says AWS."""
    if where.currentData() != "aws":
        return job
    try:
        cli = settings.configured_cli()
    except runner.CliNotFound as exc:
        raise ValueError(str(exc)) from None
    if not runner.has_command(cli, "remote", "submit"):
        raise ValueError(tr("this backend has no `tower-detector remote`: update it, or run on this computer"))
    profile, region = settings.value("aws/profile") or None, settings.value("aws/region") or None
    [local] = job["steps"]
    steps = [commands.remote_submit_args(local, name=name, profile=profile, region=region)]
    remote = {"kind": job["kind"], "profile": profile, "region": region, "threshold": threshold}
    return {**job, "kind": "remote-submit", "title": f"AWS {job['title']}", "steps": steps, "outputs": {},
            "remote": remote}
