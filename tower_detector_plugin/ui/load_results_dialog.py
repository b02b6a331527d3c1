"""The Load results dialog: a heatmap and/or a candidates GeoPackage to load, and a model whose metrics to show."""

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from ..core import settings
from ..core.parameters import THRESHOLD
from ..i18n import tr
from .widgets import ERROR_STYLE, add_help, file_widget, parameter_input


class LoadResultsDialog(QDialog):
    """Pick a heatmap and/or candidates GeoPackage (and a model, for its metrics); emits load(...)."""

    load = pyqtSignal(str, str, float, float)  # heatmap, candidates, threshold, floor
    metrics = pyqtSignal(str)  # a model directory

    def __init__(self, parent=None, heatmap="", candidates=""):
        super().__init__(parent)
        self.setWindowTitle(tr("Tower Detector: load results"))
        self.setObjectName("TowerDetectorLoadResultsDialog")
        self.heatmap = file_widget(QgsFileWidget.GetFile, "GeoTIFF (*.tif *.tiff)", heatmap)
        self.candidates = file_widget(QgsFileWidget.GetFile, "GeoPackage (*.gpkg)", candidates)
        self.threshold = parameter_input(THRESHOLD, settings.value("results/threshold"))
        self.floor = QDoubleSpinBox()
        self.floor.setRange(0.0, 0.99)
        self.floor.setValue(settings.value("results/heatmap_floor"))
        self.model = file_widget(QgsFileWidget.GetDirectory)
        show_metrics = QPushButton(tr("Show metrics"))
        show_metrics.clicked.connect(self._metrics)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(show_metrics)
        self.error = QLabel("")
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.setWordWrap(True)
        form = QFormLayout()
        for label, widget in ((tr("Heatmap (GeoTIFF)"), self.heatmap), (tr("Candidates (GeoPackage)"), self.candidates),
                              (tr(THRESHOLD.label), self.threshold), (tr("Heatmap floor"), self.floor),
                              (tr("Model folder"), model_row)):
            form.addRow(label, widget)
        buttons = QDialogButtonBox(QDialogButtonBox.Cancel)
        buttons.addButton(tr("Load"), QDialogButtonBox.AcceptRole).clicked.connect(self.accept_load)
        add_help(buttons, "results")
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(buttons)

    def accept_load(self):
        heatmap, candidates = self.heatmap.filePath().strip(), self.candidates.filePath().strip()
        if not heatmap and not candidates:
            self.error.setText(tr("choose a heatmap, a candidates GeoPackage, or both"))
            return
        self.load.emit(heatmap, candidates, self.threshold.value(), self.floor.value())
        self.accept()

    def _metrics(self):
        if self.model.filePath().strip():
            self.metrics.emit(self.model.filePath().strip())
