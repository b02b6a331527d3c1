"""The results dock: a live score threshold for the candidate layers and a floor for the heatmap."""

from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QDockWidget,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSpinBox,
    QWidget,
)

from ..core.parameters import THRESHOLD
from ..core.result_layers import FLOOR, budget_threshold, count, set_threshold, style_heatmap
from ..i18n import tr


class ThresholdWidget(QWidget):
    """A slider and spin box bound to candidate layers' filters, and a floor for the heatmap."""

    changed = pyqtSignal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.layers = []
        self.heatmap = None
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, 1000)
        self.spin = QDoubleSpinBox()
        self.spin.setRange(0.0, 1.0)
        self.spin.setDecimals(3)
        self.spin.setSingleStep(0.01)
        self.floor = QDoubleSpinBox()
        self.floor.setRange(0.0, 0.99)
        self.floor.setDecimals(2)
        self.floor.setSingleStep(0.05)
        self.count = QLabel("")
        self.budget = QSpinBox()  # a review budget sets the threshold instead: the N best candidates
        self.budget.setRange(0, 10_000_000)
        self.budget.setSingleStep(100)
        self.budget.setSpecialValueText(tr("no budget"))
        self.budget.setPrefix(tr("best "))
        self.budget.setToolTip(tr("A review budget: the threshold that shows the N best candidates (a tie at the cut "
                                  "is left out whole), as `tower-detector results --budget N` does; 0: set the score "
                                  "yourself"))
        self.slider.setToolTip(tr("Candidates are the tiles scoring at least this: the review goes through them"))
        self.floor.setToolTip(tr("Heatmap cells below this score are transparent, so the imagery shows through"))
        row = QHBoxLayout()
        row.addWidget(self.slider, 1)
        row.addWidget(self.spin)
        below = QHBoxLayout()  # two rows in all: the dock shares a laptop's height with the review dock
        below.addWidget(self.count, 1)
        below.addWidget(self.budget)
        below.addWidget(QLabel(tr("Heatmap floor")))
        below.addWidget(self.floor)
        form = QFormLayout(self)
        form.addRow(tr("Candidate score ≥"), row)
        form.addRow(below)
        self.slider.valueChanged.connect(lambda v: self.spin.setValue(v / 1000.0))
        self.spin.valueChanged.connect(self._apply)
        self.floor.valueChanged.connect(self._apply_floor)
        self.budget.valueChanged.connect(self._apply_budget)

    def bind(self, candidate_layers, heatmap=None, threshold=THRESHOLD.default, floor=FLOOR):
        self.layers = [layer for layer in candidate_layers if layer is not None]
        self.heatmap = heatmap
        self.floor.blockSignals(True)
        self.floor.setValue(floor)
        self.floor.blockSignals(False)
        self.spin.setValue(threshold)
        self._apply(threshold)

    def _apply(self, value, budget=False):
        if not budget and self.budget.value():  # a score set by hand: no budget any more
            self.budget.blockSignals(True)
            self.budget.setValue(0)
            self.budget.blockSignals(False)
        self.slider.blockSignals(True)
        self.slider.setValue(int(round(value * 1000)))
        self.slider.blockSignals(False)
        self.layers = [layer for layer in self.layers if _alive(layer)]
        set_threshold(self.layers, value)
        if self.layers:
            self.count.setText(tr("{n:,} candidates shown").format(n=count(self.layers[0])))
        self.changed.emit(value)

    def _apply_budget(self, n):
        """The threshold of the n best candidates of the first layer's file, applied exactly (the spin box shows it
        rounded)."""
        self.layers = [layer for layer in self.layers if _alive(layer)]
        if not n or not self.layers:
            return
        threshold = budget_threshold(self.layers[0].source().split("|")[0], n)
        if threshold is None:
            return
        self.spin.blockSignals(True)
        self.spin.setValue(threshold)
        self.spin.blockSignals(False)
        self._apply(threshold, budget=True)

    def _apply_floor(self, value):
        if self.heatmap is not None and _alive(self.heatmap):
            style_heatmap(self.heatmap, value)


def _alive(layer) -> bool:
    try:
        return layer.isValid()
    except RuntimeError:  # the user removed the layer: its C++ side is gone
        return False


class ResultsDock(QDockWidget):
    def __init__(self, parent=None):
        super().__init__(tr("Tower Detector results"), parent)
        self.setObjectName("TowerDetectorResultsDock")
        self.threshold = ThresholdWidget()
        self.setWidget(self.threshold)
