"""The area picker: draw, or take an extent or features, in any CRS; write it as WGS84 GeoJSON; count its tiles.

The exact zoom-18 tile count comes from `tower-detector tiles` (in a task); without a backend the picker shows an
estimate from the area and perimeter and says so. Above the warning limit it warns; above the hard limit it
refuses the area (the backend's own --max-tiles refuses it too).
"""

import os
import time

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRectangle,
    QgsWkbTypes,
)
from qgis.gui import QgsMapLayerComboBox, QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

from ..core import commands, runner, settings
from ..core.area_geometry import WGS84, ZOOM, area_km2, estimate_tiles, to_wgs84, write_area
from ..core.estimates import estimate_cost, format_hours, limit_check
from ..core.tasks import CliTask
from ..i18n import tr

PICKER_WIDTH = 440  # px: wide enough for its buttons, narrow enough to leave the middle of the map clear


# --- map tools ----------------------------------------------------------------------------------------------------
def _band(canvas) -> QgsRubberBand:
    band = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
    band.setStrokeColor(QColor(245, 124, 0))
    band.setFillColor(QColor(245, 124, 0, 50))
    band.setWidth(2)
    return band


class RectangleTool(QgsMapTool):
    """Press, drag, release: a rectangle in the canvas CRS."""

    drawn = pyqtSignal(QgsGeometry)

    def __init__(self, canvas):
        super().__init__(canvas)
        self.band = _band(canvas)
        self.start = None

    def canvasPressEvent(self, e):
        self.start = e.mapPoint()

    def canvasMoveEvent(self, e):
        if self.start is not None:
            self.band.setToGeometry(QgsGeometry.fromRect(QgsRectangle(self.start, e.mapPoint())), None)

    def canvasReleaseEvent(self, e):
        if self.start is None:
            return
        rect = QgsRectangle(self.start, e.mapPoint())
        self.start = None
        self.band.reset(QgsWkbTypes.PolygonGeometry)
        if rect.width() > 0 and rect.height() > 0:
            self.drawn.emit(QgsGeometry.fromRect(rect))

    def deactivate(self):
        self.band.reset(QgsWkbTypes.PolygonGeometry)
        super().deactivate()


class PolygonTool(QgsMapTool):
    """Left click adds a vertex; right click (or double click) closes the polygon; Escape starts over."""

    drawn = pyqtSignal(QgsGeometry)

    def __init__(self, canvas):
        super().__init__(canvas)
        self.band = _band(canvas)
        self.points = []

    def _show(self, extra=None):
        pts = self.points + ([extra] if extra is not None else [])
        self.band.reset(QgsWkbTypes.PolygonGeometry)
        for p in pts:
            self.band.addPoint(p, False)
        self.band.show()

    def canvasReleaseEvent(self, e):
        if e.button() == Qt.RightButton:
            self.finish()
        else:
            self.points.append(e.mapPoint())
            self._show()

    def canvasDoubleClickEvent(self, e):
        self.finish()

    def canvasMoveEvent(self, e):
        if self.points:
            self._show(e.mapPoint())

    def keyPressEvent(self, e):
        if e.key() == Qt.Key_Escape:
            self.points = []
            self.band.reset(QgsWkbTypes.PolygonGeometry)

    def finish(self):
        points, self.points = self.points, []
        self.band.reset(QgsWkbTypes.PolygonGeometry)
        if len(points) >= 3:
            geom = QgsGeometry.fromPolygonXY([points + [points[0]]])
            if geom.area() > 0:
                self.drawn.emit(geom)

    def deactivate(self):
        self.points = []
        self.band.reset(QgsWkbTypes.PolygonGeometry)
        super().deactivate()


# --- the dialog ---------------------------------------------------------------------------------------------------
class AreaPickerDialog(QDialog):
    """Non-modal: the user draws on the canvas while it is open. Emits areaChosen(path) on "Use this area"."""

    areaChosen = pyqtSignal(str)

    def __init__(self, iface, parent=None):
        super().__init__(parent or iface.mainWindow())
        self.setWindowTitle(tr("Tower Detector: pick an area"))
        self.setObjectName("TowerDetectorAreaPicker")
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.project = QgsProject.instance()
        self.geometry4326 = None
        self.path = None
        self.tiles = None
        self.exact = False
        self.task = None
        self._previous_tool = None
        self.shown_band = _band(self.canvas)

        self.name = QLineEdit(time.strftime("area-%Y%m%d-%H%M%S"))
        source_box = self._source_box()
        info = self._info_form()
        self.buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.use_button = self.buttons.addButton(tr("Use this area"), QDialogButtonBox.AcceptRole)
        from .widgets import add_help  # widgets imports this module

        add_help(self.buttons, "area")
        self.use_button.setEnabled(False)
        self.buttons.rejected.connect(self.reject)
        self.use_button.clicked.connect(self._use)
        layout = QVBoxLayout(self)
        layout.addWidget(source_box)
        layout.addLayout(info)
        layout.addWidget(self.buttons)
        self.setMinimumWidth(PICKER_WIDTH)
        self.setMaximumWidth(int(PICKER_WIDTH * 1.4))
        self._placed = False

    def showEvent(self, event):
        super().showEvent(event)
        if not self._placed:  # the first time only: where the user moves it, it stays
            self._placed = True
            self._place_beside_the_middle()

    def _place_beside_the_middle(self):
        """At the map's top right corner, inside QGIS's window: the middle of the map, where the user draws,
        stays clear (centred over the map, it covered what was being picked)."""
        canvas = self.canvas
        if not canvas.isVisible():
            return
        top_left = canvas.mapToGlobal(canvas.rect().topLeft())
        frame = self.frameGeometry()
        margin = 8
        x = top_left.x() + canvas.width() - frame.width() - margin
        y = top_left.y() + margin
        window = self.iface.mainWindow().frameGeometry()
        x = max(window.left(), min(x, window.right() - frame.width()))
        y = max(window.top(), min(y, window.bottom() - frame.height()))
        self.move(x, y)

    def _fit(self):
        """Grow to show every line of the labels whose text just changed (wrapped labels need more height)."""
        self.layout().activate()
        width = self.width()
        self.resize(width, max(self.height(), self.layout().totalHeightForWidth(width)))

    def _source_box(self) -> QGroupBox:
        """The ways to give the area: draw it, or take the map's extent, a layer's, or selected polygons."""
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.HasGeometry | QgsMapLayerProxyModel.RasterLayer)
        self.polygon_combo = QgsMapLayerComboBox()
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        buttons = QGridLayout()
        self.rect_button = QPushButton(tr("Draw rectangle"))
        self.poly_button = QPushButton(tr("Draw polygon"))
        self.extent_button = QPushButton(tr("Current map extent"))
        self.layer_button = QPushButton(tr("Extent of layer"))
        self.selected_button = QPushButton(tr("Selected features of"))
        for row, (button, widget) in enumerate(((self.rect_button, self.poly_button),
                                                (self.extent_button, None),
                                                (self.layer_button, self.layer_combo),
                                                (self.selected_button, self.polygon_combo))):
            buttons.addWidget(button, row, 0)
            if widget is not None:
                buttons.addWidget(widget, row, 1)
        self.rect_button.clicked.connect(lambda: self._activate_tool(RectangleTool))
        self.poly_button.clicked.connect(lambda: self._activate_tool(PolygonTool))
        self.extent_button.clicked.connect(self.use_canvas_extent)
        self.layer_button.clicked.connect(lambda: self.use_layer_extent(self.layer_combo.currentLayer()))
        self.selected_button.clicked.connect(lambda: self.use_selected_features(self.polygon_combo.currentLayer()))
        source_box = QGroupBox(tr("Area"))
        source_box.setLayout(buttons)
        return source_box

    def _info_form(self) -> QFormLayout:
        """The area's name, tile count, km², time and cost, limit warning and file."""
        self.tiles_label = QLabel("-")
        self.km2_label = QLabel("-")
        self.time_label = QLabel("-")
        self.time_label.setWordWrap(True)
        self.limit_label = QLabel("")
        self.limit_label.setWordWrap(True)
        self.limit_label.hide()  # until there is a warning
        self.tiles_label.setWordWrap(True)
        self.file_label = QLabel("-")  # the file's name; its whole path in the tooltip
        self.file_label.setWordWrap(True)
        self.file_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        info = QFormLayout()
        info.addRow(tr("Name"), self.name)
        info.addRow(tr("Zoom-{zoom} tiles").format(zoom=ZOOM), self.tiles_label)
        info.addRow(tr("Area"), self.km2_label)
        info.addRow(tr("Predict"), self.time_label)
        info.addRow("", self.limit_label)
        info.addRow(tr("File"), self.file_label)
        return info

    # -- sources
    def _activate_tool(self, tool_class):
        self._previous_tool = self.canvas.mapTool()
        self.tool = tool_class(self.canvas)
        self.tool.drawn.connect(self._drawn)
        self.canvas.setMapTool(self.tool)

    def _drawn(self, geom):
        if self._previous_tool is not None:
            self.canvas.setMapTool(self._previous_tool)
        else:
            self.canvas.unsetMapTool(self.tool)
        self.set_area(geom, self.canvas.mapSettings().destinationCrs())

    def use_canvas_extent(self):
        self.set_area(QgsGeometry.fromRect(self.canvas.extent()), self.canvas.mapSettings().destinationCrs())

    def use_layer_extent(self, layer):
        if layer is None:
            return self._fail(tr("choose a layer"))
        self.set_area(QgsGeometry.fromRect(layer.extent()), layer.crs())

    def use_selected_features(self, layer):
        if layer is None or not layer.selectedFeatureCount():
            return self._fail(tr("select one or more polygons of a polygon layer first"))
        geom = QgsGeometry.unaryUnion([f.geometry() for f in layer.getSelectedFeatures() if f.hasGeometry()])
        self.set_area(geom, layer.crs())

    # -- the area
    def set_area(self, geom: QgsGeometry, crs: QgsCoordinateReferenceSystem):
        """Transform, write, measure and start the tile count."""
        try:
            self.geometry4326 = to_wgs84(geom, crs, self.project.transformContext())
        except ValueError as exc:
            return self._fail(str(exc))
        ct = QgsCoordinateTransform(WGS84, self.canvas.mapSettings().destinationCrs(), self.project.transformContext())
        shown = QgsGeometry(self.geometry4326)
        shown.transform(ct)
        self.shown_band.setToGeometry(shown, None)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name.text().strip()) or "area"
        # drafts wait in areas/.drafts until "Use this area": only accepted areas are offered to the dialogs
        self.path = write_area(self.geometry4326, os.path.join(settings.work_dir(), "areas", ".drafts",
                                                               f"{name}.geojson"), name)
        self.file_label.setText(os.path.basename(self.path))
        self.file_label.setToolTip(self.path)
        km2 = area_km2(self.geometry4326, self.project.transformContext())
        self.km2_label.setText(tr("{km2:,.2f} km²").format(km2=km2))
        self.tiles, self.exact = None, False
        self.use_button.setEnabled(False)
        self._count_tiles()

    def _count_tiles(self):
        try:
            cli = settings.configured_cli()
        except runner.CliNotFound as exc:
            return self._show_count(self._estimate(), False, str(exc))
        self.tiles_label.setText(tr("counting…"))
        self.task = CliTask(tr("Tower Detector: tile count"), [commands.tiles_args(self.path, ZOOM)], cli)
        self.task.done.connect(self._counted)
        QgsApplication.taskManager().addTask(self.task)

    def _counted(self, end):
        self.task = None
        if end.ok and "count" in end.result:
            return self._show_count(int(end.result["count"]), True)
        self._show_count(self._estimate(), False, tr("backend: {reason}").format(
            reason=end.reason or tr("tile count failed")))

    def _estimate(self) -> int:
        return estimate_tiles(self.geometry4326, ZOOM, self.project.transformContext())

    def _show_count(self, tiles: int, exact: bool, note: str = ""):
        self.tiles, self.exact = tiles, exact
        if exact:
            self.tiles_label.setText(tr("{tiles:,} (exact, from tower-detector tiles)").format(tiles=tiles))
        else:
            self.tiles_label.setText(tr("≈ {tiles:,} (estimate from the area; {note})").format(tiles=tiles, note=note))
        est = estimate_cost(tiles)
        self.time_label.setText(tr(
            "local CPU ≈ {local} at {rate:g} tiles/s; AWS ≈ {gpu_hours:,.2f} GPU-h, ≈ ${usd:,.2f}, ≈ {remote} with "
            "{workers} GPUs (rates and price in Settings)").format(
                local=format_hours(est.local_hours), rate=settings.value("estimate/local_tiles_per_s"),
                gpu_hours=est.gpu_hours, usd=est.usd, remote=format_hours(est.remote_hours), workers=est.workers))
        level, text = limit_check(tiles)
        colour = {"ok": "", "warn": "color: #e65100;", "refuse": "color: #c62828; font-weight: bold;"}[level]
        self.limit_label.setStyleSheet(colour)
        self.limit_label.setText(text)
        self.limit_label.setVisible(bool(text))  # no blank line under the estimate
        self.use_button.setEnabled(level != "refuse")
        self._fit()

    def _fail(self, message):
        self.limit_label.setStyleSheet("color: #c62828;")
        self.limit_label.setText(message)
        self.limit_label.show()
        self._fit()

    def _use(self):
        if self.path and self.use_button.isEnabled():
            accepted = os.path.join(settings.work_dir(), "areas", os.path.basename(self.path))
            os.replace(self.path, accepted)
            self.path = accepted
            self.file_label.setToolTip(accepted)
            self.areaChosen.emit(accepted)
            self.accept()

    def done(self, result):  # closing, however: leave no rubber band or map tool behind
        self.shown_band.reset(QgsWkbTypes.PolygonGeometry)
        tool = getattr(self, "tool", None)
        if tool is not None and self.canvas.mapTool() is tool:
            self.canvas.unsetMapTool(tool)
        super().done(result)
