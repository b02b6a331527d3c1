"""Widgets the dialogs share: an area file, an imagery source, file pickers and the inputs of step parameters."""

import glob
import os
import time

from qgis.core import QgsGeometry, QgsMapLayerType, QgsProject
from qgis.gui import QgsAuthConfigSelect, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QAbstractButton,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core import imagery_sources, settings
from ..core.help import help_url
from ..i18n import tr
from .area_picker import AreaPickerDialog

ERROR_STYLE = "color: #c62828;"


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def file_widget(mode, filt="", path=""):
    """A file or folder input that shows the end of its path (the name) when it is too long to show whole, with
    the whole path in its tooltip."""
    widget = QgsFileWidget()
    widget.setStorageMode(mode)
    if filt:
        widget.setFilter(filt)

    def show_name(text):
        widget.setToolTip(text)
        if not widget.lineEdit().hasFocus():
            widget.lineEdit().setCursorPosition(len(text))

    widget.fileChanged.connect(show_name)
    widget.setFilePath(path)
    show_name(widget.filePath())
    return widget


def parameter_input(param, value=None):
    """The input for a step parameter of core/parameters.py, starting at value (else the definition's default): a
    line edit for text, else a spin box over the definition's range. A parameter the CLI decides shows "default"
    at its minimum, which spin_value reads as None."""
    value = param.default if value is None else value
    if isinstance(value, str):
        widget = QLineEdit(value)
    else:
        widget = QDoubleSpinBox() if param.decimals else QSpinBox()
        if param.decimals:
            widget.setDecimals(param.decimals)
            widget.setRange(param.minimum, param.maximum if param.maximum is not None else 1e12)
        else:
            widget.setRange(int(param.minimum), int(param.maximum) if param.maximum is not None else 2**31 - 1)
        widget.setValue(param.minimum if value is None else value)
        if value is None:
            widget.setSpecialValueText(tr("default"))
    widget.setToolTip(tr(param.help))
    return widget


def add_help(buttons, topic: str):
    """A Help button in a dialog's button box: the user guide's section on `topic` (core/help.py)."""
    from qgis.PyQt.QtCore import QUrl
    from qgis.PyQt.QtGui import QDesktopServices
    from qgis.PyQt.QtWidgets import QDialogButtonBox

    button = buttons.addButton(QDialogButtonBox.Help)
    button.setToolTip(tr("Open the user guide at this step ({url})").format(url=help_url(topic)))
    button.clicked.connect(lambda _checked=False: QDesktopServices.openUrl(QUrl(help_url(topic))))
    return button


def spin_value(box):
    """A spin box's value; None at "default"."""
    return None if box.specialValueText() and box.value() == box.minimum() else box.value()


class AreaWidget(QWidget):
    """An area file: one from the work dir's areas/ (the areas used in the picker), any GeoJSON, or a new one from
    the picker. It shows the files' names; the whole path is the tooltip. changed(path) when another is chosen."""

    changed = pyqtSignal(str)

    def __init__(self, iface, parent=None):
        super().__init__(parent)
        self.iface = iface
        self.combo = QComboBox()
        self.combo.setMinimumContentsLength(24)
        for path in sorted(glob.glob(os.path.join(settings.work_dir(), "areas", "*.geojson")), key=os.path.getmtime,
                           reverse=True):
            self._add(path)
        # the extents of the project's layers (the imagery's, first): an area without drawing one
        for layer in sorted(_extent_layers(), key=lambda lyr: lyr.type() != QgsMapLayerType.RasterLayer):
            self.combo.addItem(tr("Extent of {layer}").format(layer=layer.name()), f"layer:{layer.id()}")
            self.combo.setItemData(self.combo.count() - 1, f"the extent of the layer {layer.name()}, written as an "
                                   "area file when the dialog runs", Qt.ToolTipRole)
        browse = QPushButton("…")
        browse.setToolTip(tr("a GeoJSON polygon file (WGS84)"))
        browse.clicked.connect(self._browse)
        pick = QPushButton(tr("Pick…"))
        pick.setToolTip(tr("draw or choose the area on the map"))
        pick.clicked.connect(self.pick)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(browse)
        row.addWidget(pick)
        self.picker = None
        self.combo.currentIndexChanged.connect(self._chosen)
        self._chosen()

    def _add(self, path):
        self.combo.addItem(os.path.splitext(os.path.basename(path))[0], path)
        self.combo.setItemData(self.combo.count() - 1, path, Qt.ToolTipRole)

    def _chosen(self, *_):
        self.combo.setToolTip(self.current() or "no area yet: Pick… draws one on the map")
        self.changed.emit(self.current())

    def _browse(self):
        path, _ = QFileDialog.getOpenFileName(self, tr("Area"), settings.work_dir(), "GeoJSON (*.geojson *.json)")
        if path:
            self.set_path(path)

    def pick(self):
        self.picker = AreaPickerDialog(self.iface, self.window())
        self.picker.areaChosen.connect(self.set_path)
        self.picker.show()

    def set_path(self, path):
        path = str(path)
        index = self.combo.findData(path)
        if index < 0:
            self._add(path)
            index = self.combo.count() - 1
        self.combo.setCurrentIndex(index)

    def current(self) -> str:
        """The chosen file's path ("" if none); a layer's extent is written as a draft area file first."""
        data = self.combo.currentData() or ""
        if not data.startswith("layer:"):
            return data
        layer = QgsProject.instance().mapLayer(data[len("layer:"):])
        if layer is None:
            return ""
        from ..core.area_geometry import to_wgs84, write_area

        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer.name()) or "area"
        geometry = to_wgs84(QgsGeometry.fromRect(layer.extent()), layer.crs(), QgsProject.instance().transformContext())
        return write_area(geometry, os.path.join(settings.work_dir(), "areas", ".drafts", f"{name}.geojson"), name)

    def path(self) -> str:
        """The chosen area file's path, for a run: a layer's extent becomes an area of its own (areas/), offered
        from then on; ValueError with one line when there is none."""
        path = self.current()
        if not path:
            raise ValueError(tr("choose an area (Pick… draws one on the map)"))
        if not os.path.isfile(path):
            raise ValueError(tr("area file not found: {path}").format(path=path))
        if os.path.basename(os.path.dirname(path)) == ".drafts":
            accepted = os.path.join(os.path.dirname(os.path.dirname(path)), os.path.basename(path))
            os.replace(path, accepted)
            path = accepted
        return path


class ImageryWidget(QWidget):
    """An imagery source: the default from Settings, an XYZ connection, a raster layer, or typed in; plus the
    QGIS authentication config that holds its token."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.sources = []
        default = settings.value("imagery/spec")
        if default:
            self.sources.append(imagery_sources.Source(tr("Default (Settings)"), default,
                                                       settings.value("imagery/authcfg")))
        self.sources += imagery_sources.xyz_connections() + imagery_sources.raster_layer_sources()
        self.combo = QComboBox()
        self.combo.addItem(tr("URL template or file (type below)"))
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
        # the Settings' default, else the first raster layer of the project; nothing else is chosen for the user
        layers = [i for i, source in enumerate(self.sources) if source.kind == "layer"]
        if default or layers:
            self.combo.setCurrentIndex(1 if default else 1 + layers[0])

    def _chosen(self, index):
        if index >= 1:
            source = self.sources[index - 1]
            self.spec.setText(source.spec)
            self.auth.setConfigId(source.authcfg)

    def set_spec(self, spec, authcfg=""):
        self.combo.setCurrentIndex(0)
        self.spec.setText(spec)
        self.auth.setConfigId(authcfg)

    def resolved(self) -> imagery_sources.ImagerySpec:
        return imagery_sources.resolve(self.spec.text(), self.auth.configId())

    def name(self) -> str:
        """The chosen connection's or layer's name while its spec is as chosen ("" for one typed in): what the OSM
        changeset will name as its source."""
        index = self.combo.currentIndex()
        chosen = self.sources[index - 1] if index >= 1 else None
        return chosen.name if chosen and chosen.spec == self.spec.text() else ""


# --- what a dialog remembers of its last run --------------------------------------------------------------------
def input_value(widget):
    """A JSON-able value of an input, for the dialog's memory; None for one not to remember (a secret typed in)."""
    if isinstance(widget, ImageryWidget):
        spec = widget.spec.text()
        if imagery_sources.literal_secrets(spec):
            return None  # a token written into the URL is never stored
        return {"choice": widget.combo.currentText(), "spec": spec, "authcfg": widget.auth.configId()}
    if isinstance(widget, AreaWidget):  # a layer's extent: its run made it an area file, listed first next time
        data = widget.combo.currentData() or ""
        return None if data.startswith("layer:") else data
    if isinstance(widget, QgsFileWidget):
        return widget.filePath()
    if isinstance(widget, QgsMapLayerComboBox):
        return widget.currentLayer().id() if widget.currentLayer() else None
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        return widget.value()
    if isinstance(widget, QComboBox):
        return widget.currentText()
    if isinstance(widget, QLineEdit):
        return widget.text()
    if isinstance(widget, QAbstractButton):
        return widget.isChecked()
    raise TypeError(tr("no memory for {name}").format(name=type(widget).__name__))


def set_input_value(widget, value):
    """Put a remembered value back (one that no longer applies, such as a removed layer, is left out)."""
    if value is None:
        return
    if isinstance(widget, ImageryWidget):
        index = widget.combo.findText(value.get("choice", ""))
        if index >= 1 and widget.sources[index - 1].spec == value.get("spec"):
            widget.combo.setCurrentIndex(index)
        else:
            widget.set_spec(value.get("spec", ""), value.get("authcfg", ""))
    elif isinstance(widget, AreaWidget):
        if os.path.isfile(value):
            widget.set_path(value)
    elif isinstance(widget, QgsFileWidget):
        widget.setFilePath(value)
    elif isinstance(widget, QgsMapLayerComboBox):
        layer = QgsProject.instance().mapLayer(value)
        if layer is not None:
            widget.setLayer(layer)
    elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        widget.setValue(value)
    elif isinstance(widget, QComboBox):
        index = widget.findText(value)
        if index >= 0:
            widget.setCurrentIndex(index)
    elif isinstance(widget, QLineEdit):
        widget.setText(value)
    elif isinstance(widget, QAbstractButton):
        widget.setChecked(bool(value))


def _extent_layers() -> list:
    """The project's layers whose extent may be an area: not the plugin's own (heatmaps, candidates)."""
    from ..core.result_layers import ROLE_PROPERTY

    return [layer for layer in QgsProject.instance().mapLayers().values()
            if layer.isValid() and not layer.customProperty(ROLE_PROPERTY) and not layer.extent().isEmpty()
            and not (layer.type() == QgsMapLayerType.VectorLayer and layer.fields().indexOf("tile_id") >= 0)]


def ask_work_dir(parent, suggested: str) -> str:
    """The first-use question: where the plugin keeps its areas, job list and outputs; the chosen folder, or ""."""
    from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QLabel, QVBoxLayout

    dialog = QDialog(parent)
    dialog.setObjectName("TowerDetectorWorkFolder")
    dialog.setWindowTitle(tr("Tower Detector: work folder"))
    layout = QVBoxLayout(dialog)
    text = QLabel(tr("Where should Tower Detector keep its areas, training data, models and results? You can "
                     "change it later in Settings."))
    text.setWordWrap(True)
    folder = file_widget(QgsFileWidget.GetDirectory, path=suggested)
    buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    for widget in (text, folder, buttons):
        layout.addWidget(widget)
    if dialog.exec_() != QDialog.Accepted:
        return ""
    return folder.filePath().strip()
