"""The review dock: filters, next/previous, status buttons with keyboard shortcuts, a note, the proposed tower
point (a click on the canvas moves it onto the real tower), progress, and the exports' buttons. The review's state
and decisions are core/review_session.py's ReviewSession.
"""

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsMapToolEmitPoint, QgsRubberBand, QgsVertexMarker
from qgis.PyQt.QtCore import QT_TR_NOOP, QSize, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QKeySequence
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QScrollArea,
    QShortcut,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core import settings
from ..core.result_layers import ROLE_PROPERTY
from ..core.review_session import STATUSES, UNREVIEWED, ReviewError, ReviewSession, login_name
from ..i18n import tr

NEXT_KEYS, PREVIOUS_KEYS = (".", "PgDown"), (",", "PgUp")
WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")


# --- the canvas ---------------------------------------------------------------------------------------------------
class PointPickTool(QgsMapToolEmitPoint):
    """A click on the canvas: the tower's real position, in the canvas CRS."""

    picked = pyqtSignal(QgsPointXY)

    def __init__(self, canvas):
        super().__init__(canvas)
        self.canvasClicked.connect(lambda point, _button: self.picked.emit(point))


class CanvasMarks:
    """The current candidate's tile outline and proposed tower point on the canvas."""

    def __init__(self, canvas):
        self.canvas = canvas
        self.outline = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
        self.outline.setStrokeColor(QColor(0, 200, 255))
        self.outline.setFillColor(QColor(0, 0, 0, 0))
        self.outline.setWidth(3)
        self.point = QgsVertexMarker(canvas)
        self.point.setIconType(QgsVertexMarker.ICON_CIRCLE)
        self.point.setColor(QColor(0, 200, 255))
        self.point.setIconSize(16)
        self.point.setPenWidth(3)
        self.point.hide()

    def to_canvas(self, crs) -> QgsCoordinateTransform:
        return QgsCoordinateTransform(crs, self.canvas.mapSettings().destinationCrs(), QgsProject.instance())

    def show(self, box, point, layer_crs, scale, flash=True):
        rect = self.to_canvas(layer_crs).transformBoundingBox(QgsRectangle(*box))
        geometry = QgsGeometry.fromRect(rect)
        self.outline.setToGeometry(geometry, None)
        lon, lat = point
        if lon is not None and lat is not None:
            self.point.setCenter(self.to_canvas(WGS84).transform(QgsPointXY(lon, lat)))
            self.point.show()
        else:
            self.point.hide()
        if self.canvas.extent().isEmpty():  # a canvas that has shown nothing yet has no extent to move
            self.canvas.setExtent(rect)
        self.canvas.setCenter(rect.center())
        if scale:
            self.canvas.zoomScale(scale)
        else:
            self.canvas.refresh()
        if flash:
            self.canvas.flashGeometries([geometry], self.canvas.mapSettings().destinationCrs())

    def move_point(self, canvas_point):
        self.point.setCenter(canvas_point)
        self.point.show()

    def clear(self):
        self.outline.reset(QgsWkbTypes.PolygonGeometry)
        self.point.hide()

    def remove(self):
        self.clear()
        scene = self.canvas.scene()
        for item in (self.outline, self.point):
            scene.removeItem(item)


# --- the dock -----------------------------------------------------------------------------------------------------
# (English text, shown through tr(); the statuses it lets through)
STATUS_FILTERS = ((QT_TR_NOOP("Unreviewed"), {UNREVIEWED}), (QT_TR_NOOP("All"), None),
                  (QT_TR_NOOP("Reviewed"), {s for s, _t, _k in STATUSES}),
                  *((text, {status}) for status, text, _k in STATUSES))


class ReviewDock(QDockWidget):
    """The review panel. Its export and editor buttons emit exportRequested(kind), which ui/review_exports.py's
    ReviewExports carries out; each decision emits decided(fid, status)."""

    exportRequested = pyqtSignal(str)  # "josm-zoom", "josm-layers", "id", "rapid", "osm", "overlay", ...
    decided = pyqtSignal(int, str)  # fid, status

    # (what exportRequested says, its English text, shown through tr()): menus of the editors and of the file
    # exports, then buttons
    EDITORS = (("josm-zoom", QT_TR_NOOP("JOSM: load here")), ("josm-layers", QT_TR_NOOP("JOSM: send layers")),
               ("id", QT_TR_NOOP("Open in iD")), ("rapid", QT_TR_NOOP("Open in Rapid")))
    FILES = (("osm", QT_TR_NOOP(".osm of confirmed towers")), ("overlay", QT_TR_NOOP("GeoJSON overlay")),
             ("maproulette", QT_TR_NOOP("MapRoulette")),
             ("maproulette-cooperative", QT_TR_NOOP("MapRoulette (cooperative)")),
             ("tasking-manager", QT_TR_NOOP("Tasking Manager")), ("labels", QT_TR_NOOP("Training labels")))
    BUTTONS = (("conflate", QT_TR_NOOP("Conflate…"),
                QT_TR_NOOP("Conflate with OSM: mark the candidates OSM already has")),
               ("retrain", QT_TR_NOOP("Retrain…"),
                QT_TR_NOOP("Retrain with review decisions: the confirmed towers and false positives teach the model "
                           "that found them")))
    EXPORTS = EDITORS + FILES + tuple(b[:2] for b in BUTTONS)

    def __init__(self, iface, parent=None):
        super().__init__(tr("Tower Detector review"), parent)
        self.setObjectName("TowerDetectorReviewDock")
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.session = None
        self._navigating = False  # True while the dock itself moves the canvas
        self.marks = CanvasMarks(self.canvas)
        self.pick_tool = PointPickTool(self.canvas)
        self.pick_tool.picked.connect(self._picked)

        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setSpacing(4)
        layout.setContentsMargins(4, 4, 4, 4)
        self.layer_label = QLabel(tr("No candidates: Load results, then Review candidates."))
        self.layer_label.setWordWrap(True)
        layout.addWidget(self.layer_label)
        layout.addWidget(self._filter_box())
        self._add_navigation(layout)
        self._add_decision_inputs(layout)
        layout.addWidget(self._changeset_box())
        layout.addWidget(self._export_box())
        layout.addStretch(1)
        # it fits a 1366 x 768 laptop beside the results dock (tests/plugin/test_review.py); on a smaller screen it
        # scrolls rather than push QGIS's window past the screen
        scroll = _ScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setWidget(body)
        self.setWidget(scroll)
        self._connect_inputs()
        self.shortcuts = self._make_shortcuts()
        self._show_current()

    # -- building the panel, top to bottom
    def _filter_box(self) -> QgsCollapsibleGroupBox:
        """Score range, status, "only inside the current view", and whether to hide the heatmap."""
        filters = QgsCollapsibleGroupBox(tr("Filter"))
        filters.setObjectName("review_filter")
        grid = QGridLayout(filters)
        grid.setContentsMargins(6, 2, 6, 2)
        grid.setVerticalSpacing(2)
        self.min_score, self.max_score = _score_spin(0.0), _score_spin(1.0)
        scores = QHBoxLayout()
        scores.addWidget(QLabel(tr("Score")))
        scores.addWidget(self.min_score)
        scores.addWidget(QLabel(tr("to")))
        scores.addWidget(self.max_score)
        self.status_filter = QComboBox()
        for text, _statuses in STATUS_FILTERS:
            self.status_filter.addItem(tr(text))
        self.status_filter.setToolTip(tr("Which candidates Next and Previous go through, by their review status"))
        scores.addWidget(self.status_filter, 1)
        grid.addLayout(scores, 0, 0, 1, 2)
        self.in_view = QCheckBox(tr("Only in view"))
        self.in_view.setToolTip(tr("Only the candidates inside the current map view"))
        self.hide_heatmap = QCheckBox(tr("Hide heatmap"))
        self.hide_heatmap.setToolTip(tr("Hide the heatmap while reviewing: it covers the imagery"))
        self.hide_heatmap.setChecked(True)
        grid.addWidget(self.in_view, 1, 0)
        grid.addWidget(self.hide_heatmap, 1, 1)
        return filters

    def _add_navigation(self, layout) -> None:
        """The current candidate's line, then Previous, Next and the scale candidates are shown at."""
        self.current_label = QLabel("")
        self.current_label.setWordWrap(True)
        layout.addWidget(self.current_label)
        nav = QHBoxLayout()
        self.previous_button = QPushButton(tr("◀ Previous"))
        self.next_button = QPushButton(tr("Next ▶"))
        self.scale = QSpinBox()
        self.scale.setRange(0, 1_000_000)
        self.scale.setSingleStep(500)
        self.scale.setPrefix("1:")
        self.scale.setSpecialValueText(tr("keep scale"))
        self.scale.setValue(int(settings.value("review/scale")))
        self.scale.setToolTip(tr("The map scale each candidate is shown at"))
        nav.addWidget(self.previous_button)
        nav.addWidget(self.next_button)
        nav.addWidget(self.scale)
        layout.addLayout(nav)

    def _add_decision_inputs(self, layout) -> None:
        """A button per status (with its key), the note, moving the tower point, the progress."""
        grid = QGridLayout()
        grid.setSpacing(3)
        self.status_buttons = {}
        for n, (status, text, key) in enumerate(STATUSES):
            button = QPushButton(tr("{status} [{key}]").format(status=tr(text), key=key))
            button.setObjectName(f"status_{status}")
            button.setToolTip(tr("Decide the current candidate: {status} (key {key}), then go to the next")
                              .format(status=tr(text).lower(), key=key))
            button.clicked.connect(lambda _checked=False, s=status: self.decide(s))
            grid.addWidget(button, n // 2, n % 2)
            self.status_buttons[status] = button
        layout.addLayout(grid)
        row = QHBoxLayout()
        self.note = QLineEdit()
        self.note.setPlaceholderText(tr("Note (saved with the decision)"))
        row.addWidget(self.note, 2)
        self.move_button = QPushButton(tr("Move tower point"))
        self.move_button.setToolTip(tr("Then click the tower on the map: the point exported to OSM goes there"))
        self.move_button.setCheckable(True)
        row.addWidget(self.move_button)
        layout.addLayout(row)
        self.progress_label = QLabel("")
        layout.addWidget(self.progress_label)

    def _changeset_box(self) -> QgsCollapsibleGroupBox:
        """The reviewer, and the changeset tags, saved in the settings as they are edited."""
        changeset = QgsCollapsibleGroupBox(tr("Reviewer and changeset tags"))
        changeset.setObjectName("review_changeset")
        changeset.setToolTip(tr("The reviewer saved with each decision; the tags pre-filled in JOSM, iD, Rapid and "
                                "the .osm file"))
        changeset.setCollapsed(True)  # set once: out of the way while reviewing
        tags = QFormLayout(changeset)
        self.reviewer = QLineEdit(settings.value("review/reviewer") or login_name())
        self.reviewer.setToolTip(tr("Your name, saved with each decision"))
        tags.addRow(tr("Reviewer"), self.reviewer)
        self.changeset = {}
        for key, label in (("comment", tr("Comment")), ("source", tr("Source")), ("hashtags", tr("Hashtags"))):
            edit = QLineEdit(settings.value(f"review/{key}"))
            edit.editingFinished.connect(lambda k=key, e=edit: settings.set_value(f"review/{k}", e.text().strip()))
            tags.addRow(label, edit)
            self.changeset[key] = edit
        self.changeset["source"].setPlaceholderText(tr("the imagery, e.g. Esri World Imagery"))
        return changeset

    def _export_box(self) -> QWidget:
        exports = QWidget()
        exports.setToolTip(tr("Nothing is uploaded by itself: every path ends in an editor or a file a person checks"))
        grid = QHBoxLayout(exports)
        grid.setContentsMargins(0, 0, 0, 0)
        self.export_actions = {}  # kind -> the QAction (a menu entry) or QPushButton that asks for it
        for title, entries in ((QT_TR_NOOP("OSM editors"), self.EDITORS),
                               (QT_TR_NOOP("Export"), self.FILES)):
            button = QToolButton()
            button.setText(tr(title))
            button.setObjectName(f"menu_{title.split()[-1].lower()}")
            button.setPopupMode(QToolButton.InstantPopup)
            button.setToolButtonStyle(Qt.ToolButtonTextOnly)
            button.setSizePolicy(button.sizePolicy().Expanding, button.sizePolicy().Fixed)
            menu = QMenu(button)
            for kind, text in entries:
                action = menu.addAction(tr(text))
                action.setObjectName(f"export_{kind}")
                action.triggered.connect(lambda _checked=False, k=kind: self.exportRequested.emit(k))
                self.export_actions[kind] = action
            button.setMenu(menu)
            grid.addWidget(button)
        for kind, text, tip in self.BUTTONS:
            button = QPushButton(tr(text))
            button.setToolTip(tr(tip))
            button.setObjectName(f"export_{kind}")
            button.clicked.connect(lambda _checked=False, k=kind: self.exportRequested.emit(k))
            self.export_actions[kind] = button
            grid.addWidget(button)
        return exports

    def _connect_inputs(self) -> None:
        self.previous_button.clicked.connect(self.previous)
        self.next_button.clicked.connect(self.next)
        self.min_score.valueChanged.connect(self._filters_changed)
        self.max_score.valueChanged.connect(self._filters_changed)
        self.status_filter.currentIndexChanged.connect(self._filters_changed)
        self.in_view.toggled.connect(self._filters_changed)
        self.canvas.extentsChanged.connect(self._extent_changed)
        self.move_button.toggled.connect(self._move_mode)
        self.hide_heatmap.toggled.connect(self._show_heatmaps)
        self.scale.valueChanged.connect(lambda v: settings.set_value("review/scale", int(v)))
        self.reviewer.editingFinished.connect(self._reviewer_changed)

    def _make_shortcuts(self):
        """Window-wide keys (so they work while the canvas has the focus), live only while the dock is shown."""
        window = self.iface.mainWindow()
        keys = [(k, self.next) for k in NEXT_KEYS] + [(k, self.previous) for k in PREVIOUS_KEYS]
        keys += [(key, lambda s=status: self.decide(s)) for status, _t, key in STATUSES]
        shortcuts = []
        for key, slot in keys:
            shortcut = QShortcut(QKeySequence(key), window)
            shortcut.setContext(Qt.WindowShortcut)
            shortcut.activated.connect(slot)
            shortcut.setEnabled(False)
            shortcuts.append(shortcut)
        self.visibilityChanged.connect(lambda visible: [s.setEnabled(visible) for s in shortcuts])
        return shortcuts

    # -- the session
    def start(self, layer: QgsVectorLayer):
        """Review `layer` (a candidates layer); raises ReviewError when it is not one."""
        session = ReviewSession(layer, self.reviewer.text().strip())
        self._follow_layer(False)
        self.session = session
        self._follow_layer(True)
        self._show_heatmaps()
        self._filters_changed()
        self._show_layer_label()
        if self.session.next() is not None:
            self._show_current()
        else:
            self._show_current(flash=False)
        return self.session

    def _follow_layer(self, on: bool):
        """Follow the reviewed layer's filter (the results dock's threshold) while it is reviewed."""
        if self.session is None:
            return
        try:
            if on:
                self.session.layer.subsetStringChanged.connect(self._layer_filter_changed)
            else:
                self.session.layer.subsetStringChanged.disconnect(self._layer_filter_changed)
        except (RuntimeError, TypeError):  # a removed layer, or nothing connected
            pass

    def _show_layer_label(self):
        name, n = self.session.layer.name(), len(self.session.fids)
        self.layer_label.setText(tr("{layer}: {n:,} candidates, best first").format(layer=name, n=n))
        self.layer_label.setToolTip(tr("Reviewing {layer}: {n:,} candidates in the layer's filter (the results dock's "
                                       "threshold), best score first").format(layer=name, n=n))

    def _layer_filter_changed(self):
        """The threshold moved: read the candidates in the new filter, keeping the current one if it still shows."""
        if self.session is None:
            return
        self.session.reload()
        self._filters_changed()
        self._show_layer_label()
        if not self.session.current():
            self._show_current(flash=False)  # the current one went below the threshold: its marks go too

    def reload(self):
        """Read the layer again after something else (the backend) changed its file."""
        if self.session is not None:
            self.session.layer.reload()  # rows and fields (a merge may add columns)
            self.session.reload()
            self._filters_changed()

    def _show_heatmaps(self, hide=None):
        hide = self.hide_heatmap.isChecked() if hide is None else hide
        root = QgsProject.instance().layerTreeRoot()
        for layer in QgsProject.instance().mapLayers().values():
            node = root.findLayer(layer.id())
            if node is not None and layer.customProperty(ROLE_PROPERTY) == "heatmap":
                node.setItemVisibilityChecked(not hide)

    def _filters_changed(self, *_):
        if self.session is None:
            return
        _text, statuses = STATUS_FILTERS[self.status_filter.currentIndex()]
        self.session.set_filter(self.min_score.value(), self.max_score.value(), statuses, self._view_extent())
        self._update_labels()

    def _view_extent(self):
        if not self.in_view.isChecked() or self.session is None:
            return None
        to_layer = QgsCoordinateTransform(self.canvas.mapSettings().destinationCrs(), self.session.layer.crs(),
                                          QgsProject.instance())
        return to_layer.transformBoundingBox(self.canvas.extent())

    def _extent_changed(self):
        # panning to a candidate must not shrink the "in view" filter around it: only the user's own moves count
        if self.in_view.isChecked() and not self._navigating:
            self._filters_changed()

    def next(self):
        if self.session is not None and self.session.next() is not None:
            self._show_current()
        else:
            self._update_labels(end=True)

    def previous(self):
        if self.session is not None and self.session.previous() is not None:
            self._show_current()

    def decide(self, status: str):
        if self.session is None or self.session.position is None:
            return
        note = self.note.text().strip()
        fid = self.session.current_fid()
        try:
            self.session.decide(status, note)
        except ReviewError as exc:
            self.iface.messageBar().pushCritical(tr("Tower Detector"), str(exc))
            return
        self.decided.emit(fid, status)
        self.next()

    def _picked(self, canvas_point):
        if self.session is None or self.session.position is None:
            return
        to_wgs84 = QgsCoordinateTransform(self.canvas.mapSettings().destinationCrs(), WGS84, QgsProject.instance())
        point = to_wgs84.transform(canvas_point)
        try:
            self.session.move_point(point.x(), point.y())
        except ReviewError as exc:
            self.iface.messageBar().pushCritical(tr("Tower Detector"), str(exc))
            return
        self.marks.move_point(canvas_point)
        self._update_labels()

    def _move_mode(self, on):
        if on:
            self.canvas.setMapTool(self.pick_tool)
        elif self.canvas.mapTool() is self.pick_tool:
            self.canvas.unsetMapTool(self.pick_tool)

    def _reviewer_changed(self):
        name = self.reviewer.text().strip()
        settings.set_value("review/reviewer", name)
        if self.session is not None:
            self.session.reviewer = name or login_name()

    def _show_current(self, flash=True):
        current = self.session.current() if self.session is not None else {}
        if current:
            self.note.setText(current["note"])
            self._navigating = True
            try:
                self.marks.show(current["box"], current["point"], self.session.layer.crs(), self.scale.value(),
                                flash=flash)
            finally:
                self._navigating = False
        else:
            self.marks.clear()
        self._update_labels()

    def _update_labels(self, end=False):
        if self.session is None:
            self.current_label.setText("")
            self.progress_label.setText("")
            return
        current = self.session.current()
        p = self.session.progress()
        if current:
            where = (tr("{position:,} of {n:,} in the filter").format(position=current["filter_position"],
                                                                       n=p["in_filter"])
                     if current["filter_position"] else tr("not in the filter"))
            lon, lat = current["point"]
            point = f"{lat:.6f}, {lon:.6f}" if lon is not None and lat is not None else tr("none")
            self.current_label.setText(tr("<b>{tile}</b> score {score:.3f} · {status} · {where}<br>tower point {point}")
                                       .format(tile=current["tile_id"], score=current["score"],
                                               status=current["status"].replace("_", " "), where=where, point=point))
        else:
            self.current_label.setText(tr("No candidate in the filter.") if not p["in_filter"] else tr("Press Next."))
        text = tr("Reviewed {reviewed:,} of {total:,} · confirmed {confirmed:,}").format(
            reviewed=p["reviewed"], total=p["total"], confirmed=p["confirmed"])
        if end:
            text += tr(" · end of the filter")
        self.progress_label.setText(text)

    def stop(self):
        self._follow_layer(False)
        self._move_mode(False)
        self.marks.remove()
        for shortcut in self.shortcuts:
            shortcut.setEnabled(False)
            shortcut.deleteLater()
        self.shortcuts = []


class _ScrollArea(QScrollArea):
    """A scroll area that asks for all of its content's height (Qt's own asks for a fixed, smaller box), so that
    the dock is given its whole height when the screen has it, and scrolls only when it has not."""

    def sizeHint(self):
        if self.widget() is None:
            return super().sizeHint()
        return self.widget().sizeHint() + QSize(self.verticalScrollBar().sizeHint().width(), 2 * self.frameWidth())


def _score_spin(value) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.0, 1.0)
    spin.setDecimals(3)
    spin.setSingleStep(0.05)
    spin.setValue(value)
    return spin
