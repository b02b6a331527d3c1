"""The review dock and its session: order, filters, navigation, decisions written at once, a killed review."""

import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
from qgis.core import QgsProject, QgsRectangle, QgsVectorLayer
from qgis.PyQt.QtCore import QPoint, Qt
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication

from tests.fakes.candidates_helpers import make_candidates
from tests.plugin import support as support
from tower_detector_plugin.core import result_layers
from tower_detector_plugin.core.review_session import STATUSES, UNREVIEWED, ReviewError, ReviewSession
from tower_detector_plugin.ui.review_dock import STATUS_FILTERS, ReviewDock

plugin_settings = support.plugin_settings  # a fixture

X0, Y0 = 151_000, 142_000


def backend_candidates(path, scores):
    """A candidates GeoPackage by the backend's own writer: one row of tiles from (X0, Y0), best first."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tiles = [(X0 + i % 1000, Y0 + i // 1000) for i in range(len(scores))]
    return str(make_candidates(path, tiles, scores=[scores[i] for i in order]))


def rows(path):
    with sqlite3.connect(path) as db:
        return {r[0]: r[1:] for r in db.execute(
            "SELECT tile_id, status, note, reviewer, reviewed_at, point_lon, point_lat, point_source FROM candidates")}


@pytest.fixture
def layer(tmp_path, qgis_app):
    path = backend_candidates(tmp_path / "candidates.gpkg", [0.6, 0.95, 0.7, 0.99, 0.8])
    layer = QgsVectorLayer(f"{path}|layername=candidates", "tower candidates", "ogr")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().removeMapLayer(layer.id())


def test_session_goes_best_first_filters_and_writes_each_decision_at_once(layer):
    path = layer.source().split("|")[0]
    session = ReviewSession(layer, reviewer="ana")
    assert session.scores == sorted(session.scores, reverse=True) and len(session.fids) == 5
    assert session.previous() is None  # nothing before the start
    first = session.next()
    assert session.current()["score"] == pytest.approx(0.99) and session.current()["filter_position"] == 1
    session.decide("confirmed", "lattice tower, clear shadow")
    stored = rows(path)[session.current()["tile_id"]]
    assert stored[:3] == ("confirmed", "lattice tower, clear shadow", "ana") and stored[3].endswith("Z")
    session.move_point(10.5, -3.25)
    assert rows(path)[session.current()["tile_id"]][4:] == (10.5, -3.25, "reviewer")

    # the default filter is "unreviewed": the decided one drops out, next goes on from it in score order
    session.set_filter(statuses={"unreviewed"})
    assert session.current()["filter_position"] is None
    assert session.next() != first and session.current()["score"] == pytest.approx(0.95)
    session.set_filter(min_score=0.65, max_score=0.9)
    assert [session.scores[i] for i in session.visible] == pytest.approx([0.8, 0.7])
    assert session.next() is not None and session.current()["score"] == pytest.approx(0.8)
    assert session.next() is not None and session.next() is None  # the end of the filter; the position stays
    assert session.current()["score"] == pytest.approx(0.7)
    assert session.previous() is not None and session.current()["score"] == pytest.approx(0.8)
    session.set_filter(min_score=0.0, max_score=1.0, statuses=None, extent=QgsRectangle(0, 0, 1, 1))
    assert session.visible == []  # nothing inside that view
    assert session.progress() == {"reviewed": 1, "total": 5, "confirmed": 1, "in_filter": 0}

    # decisions survive a reload, and the layer's own filter (the score threshold) bounds the review
    layer.setSubsetString('"score" >= 0.75')
    again = ReviewSession(layer)
    assert len(again.fids) == 3 and again.progress()["confirmed"] == 1
    again.next()
    with pytest.raises(ReviewError, match="unknown review status"):
        again.decide("maybe")


def test_a_layer_that_is_not_a_candidates_layer_is_refused(qgis_app):
    points = QgsVectorLayer("Point?crs=EPSG:4326&field=score:double", "points", "memory")
    with pytest.raises(ReviewError, match="not a tower-detector candidates layer .*status"):
        ReviewSession(points)


def test_dock_review_with_buttons_keys_and_a_click_on_the_tower(layer, qgis_iface, plugin_settings, tmp_path):
    canvas = qgis_iface.mapCanvas()
    canvas.resize(600, 400)
    canvas.setDestinationCrs(layer.crs())
    dock = ReviewDock(qgis_iface)
    window = qgis_iface.mainWindow()
    window.addDockWidget(Qt.RightDockWidgetArea, dock)
    window.show()
    dock.show()
    path = layer.source().split("|")[0]
    heatmap = result_layers.load_heatmap(str(support.make_heatmap(tmp_path / "heatmap.tif", [[0.9, 0.6]])))
    QgsProject.instance().addMapLayer(heatmap)
    heatmap_node = QgsProject.instance().layerTreeRoot().findLayer(heatmap.id())
    try:
        dock.scale.setValue(1500)
        session = dock.start(layer)
        assert not heatmap_node.isVisible()  # the imagery under the candidate must show
        dock.hide_heatmap.setChecked(False)
        assert heatmap_node.isVisible()
        assert session.current()["score"] == pytest.approx(0.99)
        assert canvas.extent().contains(session.current()["box"][0] + 1e-7, session.current()["box"][1] + 1e-7)
        assert round(canvas.scale()) == 1500
        assert "Reviewed 0 of 5" in dock.progress_label.text()

        dock.note.setText("clear")
        QTest.mouseClick(dock.status_buttons["confirmed"], Qt.LeftButton)
        assert session.current()["score"] == pytest.approx(0.95)  # moved on by itself
        QTest.mouseClick(dock.status_buttons["false_positive"], Qt.LeftButton)
        # the window-wide keys: 3 = already mapped, "." = next, "," = previous
        QApplication.setActiveWindow(window)  # offscreen, nothing activates a window by itself
        for shortcut in dock.shortcuts:
            assert shortcut.isEnabled()
        QTest.keyClick(canvas, Qt.Key_3)  # where the focus is while reviewing
        statuses = sorted(s for s, *_ in rows(path).values())
        assert statuses.count("confirmed") == 1 and statuses.count("false_positive") == 1
        assert statuses.count("already_mapped") == 1 and "Reviewed 3 of 5 · confirmed 1" in dock.progress_label.text()
        at = session.current()["score"]
        QTest.keyClick(canvas, Qt.Key_Comma)
        assert session.current()["score"] > at
        QTest.keyClick(canvas, Qt.Key_Period)
        assert session.current()["score"] == pytest.approx(at)

        # the tower point: toggle the tool and click on the canvas
        dock.move_button.setChecked(True)
        assert canvas.mapTool() is dock.pick_tool
        QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, QPoint(300, 200))
        lon, lat = session.current()["point"]
        centre = canvas.getCoordinateTransform().toMapCoordinates(300, 200)
        assert (lon, lat) == pytest.approx((centre.x(), centre.y()), abs=1e-5)
        assert rows(path)[session.current()["tile_id"]][6] == "reviewer"
        dock.move_button.setChecked(False)
        assert canvas.mapTool() is not dock.pick_tool

        # filters from the widgets
        dock.status_filter.setCurrentIndex([text for text, _s in STATUS_FILTERS].index("Confirmed tower"))
        assert len(session.visible) == 1
        dock.min_score.setValue(0.995)
        assert session.visible == [] and "not in the filter" in dock.current_label.text()
        QTest.mouseClick(dock.next_button, Qt.LeftButton)
        assert "end of the filter" in dock.progress_label.text()
    finally:
        dock.stop()
        QgsProject.instance().removeMapLayer(heatmap.id())
        window.removeDockWidget(dock)
        dock.deleteLater()


KILLED_REVIEW = r"""
import sys
from qgis.core import QgsApplication, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
sys.path.insert(0, sys.argv[2])
from tower_detector_plugin.core import result_layers
from tower_detector_plugin.core.review_session import ReviewSession
session = ReviewSession(QgsVectorLayer(sys.argv[1] + "|layername=candidates", "c", "ogr"), reviewer="kim")
statuses = ["confirmed", "false_positive", "unsure"]
n = 0
while session.next() is not None:
    session.decide(statuses[n % 3], f"decision {n}")
    print(session.current()["tile_id"], statuses[n % 3], flush=True)
    n += 1
print("all done", flush=True)
"""


def test_review_follows_the_results_threshold_without_reopening(layer, qgis_iface, plugin_settings):
    from tower_detector_plugin.ui.results_dock import ThresholdWidget

    widget = ThresholdWidget()
    widget.bind([layer], None, threshold=0.5)
    dock = ReviewDock(qgis_iface)
    try:
        session = dock.start(layer)
        assert len(session.visible) == 5 and session.current()["score"] == pytest.approx(0.99)
        widget.slider.setValue(900)  # the results dock's slider moves while the review is open
        assert dock.session is session and len(session.fids) == 2
        assert "2 candidates" in dock.layer_label.text()
        assert session.current()["score"] == pytest.approx(0.99)  # the current one is kept while it still shows
        dock.next()
        assert session.current()["score"] == pytest.approx(0.95)
        dock.next()  # the end of the filter: 0.8 is below the threshold now
        assert session.current()["score"] == pytest.approx(0.95) and "end of the filter" in dock.progress_label.text()
        widget.slider.setValue(650)
        assert len(session.fids) == 4
        assert "Reviewed 0 of 4" in dock.progress_label.text()
    finally:
        dock.stop()
        dock.deleteLater()
        widget.deleteLater()


def test_a_review_killed_mid_way_loses_no_decision_already_made(tmp_path):
    path = backend_candidates(tmp_path / "big.gpkg", list(np.linspace(0.5, 0.99, 400)))
    script = tmp_path / "review.py"
    script.write_text(KILLED_REVIEW)
    proc = subprocess.Popen(["/usr/bin/python3", str(script), path, str(support.REPO)], stdout=subprocess.PIPE,
                            text=True, env=support.offscreen_env())
    decided = []
    try:
        deadline = time.monotonic() + 120
        while len(decided) < 25 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line and line != "all done\n", "the review ended before it could be killed"
            decided.append(line.split())
        proc.send_signal(signal.SIGKILL)  # as a crash: no clean-up of any kind
    finally:
        proc.kill()
        proc.wait(30)
    assert len(decided) == 25
    stored = rows(path)
    for tile_id, status in decided:
        assert stored[tile_id][0] == status and stored[tile_id][2] == "kim"
    reviewed = [r for r in stored.values() if r[0] != "unreviewed"]
    assert 25 <= len(reviewed) < 400  # it was really killed mid-way; nothing decided was lost
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_status_vocabulary_matches_the_dataset_builder():
    # `tower-detector dataset --extra-labels` learns from exactly these two
    assert {s for s, *_ in STATUSES} >= {"confirmed", "false_positive"}
    assert len({key for *_, key in STATUSES}) == len(STATUSES)
    assert UNREVIEWED == "unreviewed"


def test_the_review_dock_fits_a_laptop_beside_the_results_dock(qgis_iface, plugin_settings):
    """Issue 33: the review dock needed 855 px with no scroll area, so QGIS grew past a 1000 px screen and the
    export buttons went off it. On a 1366 x 768 laptop, QGIS's title, menus, two toolbar rows, status bar and a
    task bar leave the right dock area about 560 px: the review dock and the results dock fit in it together, all
    of the review dock shown. On a smaller screen it scrolls instead of growing the window."""
    from qgis.PyQt.QtWidgets import QMainWindow, QScrollArea, QWidget

    from tower_detector_plugin.ui.results_dock import ResultsDock

    window = QMainWindow()
    window.setCentralWidget(QWidget())
    review, results = ReviewDock(qgis_iface, window), ResultsDock(window)
    for dock in (results, review):
        window.addDockWidget(Qt.RightDockWidgetArea, dock)
    window.resize(1366, 560)
    window.show()
    for _ in range(3):  # the collapsible boxes collapse once shown, then the scroll area lays out again
        QApplication.processEvents()
    try:
        scroll = review.findChild(QScrollArea)
        title = review.height() - scroll.height()  # the dock's title bar
        assert scroll.widget().sizeHint().height() + title + results.height() <= 560
        assert scroll.verticalScrollBar().maximum() == 0  # nothing hidden below the fold
        assert review.width() <= 500 and window.width() == 1366
        for kind in ReviewDock.EXPORTS:  # every action is reachable: a button, or an entry of a menu button
            assert review.export_actions[kind[0]] is not None
        window.resize(1366, 400)  # a smaller screen: the window keeps its size, the dock scrolls
        QApplication.processEvents()
        assert window.height() == 400 and scroll.verticalScrollBar().maximum() > 0
    finally:
        review.marks.remove()
        window.hide()
        window.deleteLater()
