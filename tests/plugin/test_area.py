"""The area picker: drawing and choosing areas in a UTM project, WGS84 GeoJSON, tile counts, limits."""

import json
import subprocess

import pytest
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsMapMouseEvent
from qgis.PyQt.QtCore import QEvent, QPoint, Qt

from tests.plugin import support as support
from tests.plugin.support import CRASH_SCRIPT, real_cli, wait_until
from tower_detector_plugin.core import area_geometry, estimates
from tower_detector_plugin.ui import area_picker

fake_backend = support.fake_backend  # a fixture
plugin_settings = support.plugin_settings  # a fixture

UTM35S = QgsCoordinateReferenceSystem("EPSG:32735")  # Zambia's UTM zone: metres, not degrees
BOX = QgsRectangle(500_000, 8_290_000, 502_000, 8_292_000)  # 2 km x 2 km near 27 E, 15.4 S


@pytest.fixture
def utm_project(qgis_iface, qgis_new_project):
    canvas = qgis_iface.mapCanvas()
    QgsProject.instance().setCrs(UTM35S)
    canvas.resize(800, 600)
    canvas.setDestinationCrs(UTM35S)
    canvas.setExtent(QgsRectangle(499_000, 8_289_000, 503_000, 8_293_000))
    return canvas


@pytest.fixture
def picker(qgis_iface, plugin_settings, utm_project):
    dialog = area_picker.AreaPickerDialog(qgis_iface)
    yield dialog
    dialog.close()
    dialog.deleteLater()


def _mouse(canvas, kind, point: QgsPointXY, button=Qt.LeftButton):
    pixel = canvas.getCoordinateTransform().transform(point)
    return QgsMapMouseEvent(canvas, kind, QPoint(round(pixel.x()), round(pixel.y())), button, button, Qt.NoModifier)


def _exact_count(path) -> int:
    out = subprocess.run([real_cli(), "tiles", "--area", str(path), "--zoom", "18", "--events"], capture_output=True,
                         text=True, check=True, timeout=60)
    return json.loads(out.stdout.splitlines()[-1])["count"]


def test_utm_rectangle_becomes_a_densified_wgs84_polygon(qgis_new_project):
    geom = area_geometry.to_wgs84(QgsGeometry.fromRect(BOX), UTM35S)
    box = geom.boundingBox()
    assert 26.99 < box.xMinimum() < box.xMaximum() < 27.03
    assert -15.47 < box.yMinimum() < box.yMaximum() < -15.44
    assert geom.constGet().nCoordinates() > 5 * 4  # densified: the edges follow the projected rectangle
    # 4 km² in UTM; UTM's scale factor 0.9996 makes the true area 0.08 % larger at the central meridian
    assert area_geometry.area_km2(geom) == pytest.approx(4.0 / 0.9996**2, rel=1e-3)


def test_web_mercator_limit_is_refused():
    with pytest.raises(ValueError, match="beyond latitude"):
        area_geometry.to_wgs84(QgsGeometry.fromRect(QgsRectangle(0, 80, 1, 86)), area_geometry.WGS84)


def test_drawn_rectangle_is_written_and_counted_exactly(picker, utm_project, plugin_settings):
    picker.name.setText("my area")
    picker._activate_tool(area_picker.RectangleTool)
    tool = utm_project.mapTool()
    assert isinstance(tool, area_picker.RectangleTool)
    tool.canvasPressEvent(_mouse(utm_project, QEvent.MouseButtonPress, QgsPointXY(500_000, 8_292_000)))
    tool.canvasMoveEvent(_mouse(utm_project, QEvent.MouseMove, QgsPointXY(501_000, 8_291_000)))
    tool.canvasReleaseEvent(_mouse(utm_project, QEvent.MouseButtonRelease, QgsPointXY(502_000, 8_290_000)))
    assert utm_project.mapTool() is not tool  # drawing one area ends the tool

    assert picker.path.endswith("areas/.drafts/my_area.geojson")  # a draft until used
    assert picker.path.startswith(plugin_settings.value("work_dir"))
    data = json.load(open(picker.path))
    lon, lat = data["features"][0]["geometry"]["coordinates"][0][0]
    assert 26.9 < lon < 27.1 and -15.5 < lat < -15.4  # degrees, not metres
    # 2 x 2 km, drawn in whole pixels: within a pixel's rounding at the canvas's scale (the canvas's size can be
    # another test's, which changes its metres a pixel)
    assert float(picker.km2_label.text().split()[0]) == pytest.approx(4.0, abs=0.05)
    wait_until(lambda: picker.tiles is not None, 60, "the tile count")
    assert picker.exact and picker.tiles == _exact_count(picker.path)
    assert "exact" in picker.tiles_label.text()
    assert "local CPU" in picker.time_label.text() and "$" in picker.time_label.text()
    assert picker.use_button.isEnabled()
    chosen = []
    picker.areaChosen.connect(chosen.append)
    picker.use_button.click()
    assert chosen == [picker.path] and picker.path.endswith("areas/my_area.geojson")
    assert json.load(open(picker.path)) == data


def test_only_accepted_areas_are_offered(picker, utm_project, plugin_settings, qgis_iface):
    """Issue 33: Pick area refused 366 M tiles, yet wrote the area file, and Predict prefilled that newest file.
    A refused (or abandoned) area stays a draft that no dialog offers."""
    from tower_detector_plugin.ui.widgets import AreaWidget

    plugin_settings.set_value("area/max_tiles", 100)
    picker.name.setText("too big")
    picker.use_canvas_extent()
    wait_until(lambda: picker.tiles is not None, 60, "the tile count")
    assert not picker.use_button.isEnabled()
    picker._use()  # however it is asked
    offered = AreaWidget(qgis_iface)
    assert [offered.combo.itemText(i) for i in range(offered.combo.count())] == []


def test_polygon_tool_and_selected_features(picker, utm_project):
    picker._activate_tool(area_picker.PolygonTool)
    tool = utm_project.mapTool()
    for x, y in ((500_000, 8_290_000), (502_000, 8_290_000), (501_000, 8_292_000)):
        tool.canvasReleaseEvent(_mouse(utm_project, QEvent.MouseButtonRelease, QgsPointXY(x, y)))
    tool.canvasReleaseEvent(_mouse(utm_project, QEvent.MouseButtonRelease, QgsPointXY(0, 0), Qt.RightButton))
    assert picker.geometry4326 is not None
    assert area_geometry.area_km2(picker.geometry4326) == pytest.approx(2.0, rel=0.01)

    layer = QgsVectorLayer("Polygon?crs=EPSG:32735", "fields", "memory")
    features = []
    for rect in (BOX, QgsRectangle(510_000, 8_290_000, 511_000, 8_291_000)):
        f = QgsFeature()
        f.setGeometry(QgsGeometry.fromRect(rect))
        features.append(f)
    layer.dataProvider().addFeatures(features)
    QgsProject.instance().addMapLayer(layer)
    picker.use_selected_features(layer)
    assert "select one or more" in picker.limit_label.text()
    layer.selectByIds([f.id() for f in layer.getFeatures()][1:])
    picker.use_selected_features(layer)
    assert area_geometry.area_km2(picker.geometry4326) == pytest.approx(1.0, rel=0.01)
    picker.use_layer_extent(layer)
    assert area_geometry.area_km2(picker.geometry4326) == pytest.approx(11.0 * 2.0, rel=0.01)


def test_without_a_backend_the_count_is_an_estimate_and_says_so(picker, utm_project, plugin_settings, tmp_path):
    exact_path = tmp_path / "box.geojson"
    area_geometry.write_area(area_geometry.to_wgs84(QgsGeometry.fromRect(BOX), UTM35S), str(exact_path))
    exact = _exact_count(exact_path)
    plugin_settings.set_value("cli/path", str(tmp_path / "missing" / "tower-detector"))
    picker.set_area(QgsGeometry.fromRect(BOX), UTM35S)
    assert picker.tiles is not None and not picker.exact
    assert picker.tiles_label.text().startswith("≈")
    assert "estimate" in picker.tiles_label.text() and "not an executable" in picker.tiles_label.text()
    assert picker.tiles == pytest.approx(exact, rel=0.1)


def test_crashing_backend_falls_back_to_the_estimate(picker, utm_project, fake_backend):
    fake_backend(CRASH_SCRIPT)
    picker.set_area(QgsGeometry.fromRect(BOX), UTM35S)
    wait_until(lambda: picker.tiles is not None, 30, "the fallback")
    assert not picker.exact
    assert "RuntimeError: the model exploded" in picker.tiles_label.text()


def test_large_areas_warn_then_are_refused(picker, utm_project, plugin_settings):
    plugin_settings.set_value("area/warn_tiles", 10)
    picker.use_canvas_extent()
    wait_until(lambda: picker.tiles is not None, 60, "the tile count")
    assert picker.tiles > 10
    assert "large job" in picker.limit_label.text() and picker.use_button.isEnabled()

    plugin_settings.set_value("area/max_tiles", 100)
    picker.use_canvas_extent()
    wait_until(lambda: picker.tiles is not None, 60, "the tile count")
    assert "over the limit of 100" in picker.limit_label.text()
    assert not picker.use_button.isEnabled()
    assert estimates.limit_check(50) == ("warn", estimates.limit_check(50)[1])
    assert estimates.limit_check(5)[0] == "ok"


def test_cost_estimate_uses_the_settings(plugin_settings):
    plugin_settings.set_value("estimate/local_tiles_per_s", 100.0)
    plugin_settings.set_value("estimate/remote_tiles_per_s", 1000.0)
    plugin_settings.set_value("estimate/remote_usd_per_hour", 0.5)
    plugin_settings.set_value("estimate/remote_workers", 4)
    est = estimates.estimate_cost(3_600_000)
    assert (est.local_hours, est.gpu_hours, est.remote_hours, est.usd) == (10.0, 1.0, 0.25, 0.5)
    assert estimates.format_hours(est.local_hours) == "10.0 h" and estimates.format_hours(0.25) == "15 min"


@pytest.mark.parametrize("origin", [(151_000, 142_000), (150_997, 142_003)])
def test_an_area_from_a_tile_aligned_layer_counts_exactly(picker, utm_project, plugin_settings, tmp_path, origin):
    """A heatmap of 16 x 16 zoom-18 tiles (EPSG:3857, tile-aligned): its extent is exactly those 256 tiles, in the
    picker and in the backend's `tiles` of the file it wrote (7 decimals rounded edges outward: 272)."""
    from qgis.core import QgsRasterLayer

    x0, y0 = origin
    path = support.make_heatmap(tmp_path / "heatmap.tif", [[0.5] * 16 for _ in range(16)], x0, y0)
    layer = QgsRasterLayer(str(path), "heatmap")
    assert layer.isValid()
    picker.use_layer_extent(layer)
    wait_until(lambda: picker.tiles is not None, 60, "the tile count")
    assert picker.exact and picker.tiles == 256
    assert _exact_count(picker.path) == 256

    # the same tiles as a WGS84 layer's extent (bounds with float noise a few mm off the tile edges)
    (w, _s, _e, n), (_w, s, e, _n) = support.tile_lonlat(x0, y0), support.tile_lonlat(x0 + 15, y0 + 15)
    box = QgsRectangle(w - 2e-8, s + 3e-8, e + 1e-8, n - 2e-8)
    vector = QgsVectorLayer("Polygon?crs=EPSG:4326", "box", "memory")
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromRect(box))
    vector.dataProvider().addFeatures([f])
    vector.updateExtents()
    picker.use_layer_extent(vector)
    wait_until(lambda: picker.tiles is not None, 60, "the tile count")
    assert picker.tiles == 256 and _exact_count(picker.path) == 256


def test_use_this_area_from_the_toolbar_loads_a_styled_layer_and_says_so(qgis_iface, plugin_settings, utm_project):
    from qgis.core import QgsWkbTypes

    from tower_detector_plugin.plugin import TowerDetectorPlugin

    plugin = TowerDetectorPlugin(qgis_iface)
    qgis_iface.messageBar().clear_messages()
    for _ in range(2):  # the same area used twice: one layer, read again
        picker = plugin.pick_area()
        picker.name.setText("farm")
        picker.set_area(QgsGeometry.fromRect(BOX), UTM35S)
        wait_until(lambda p=picker: p.tiles is not None, 60, "the tile count")
        picker.use_button.click()
        assert not picker.isVisible()
    layers = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.source().startswith(picker.path)]
    assert len(layers) == 1
    layer = layers[0]
    assert layer.isValid() and layer.name() == "farm" and layer.geometryType() == QgsWkbTypes.PolygonGeometry
    symbol = layer.renderer().symbol()
    assert symbol.symbolLayer(0).fillColor().alpha() < 100  # an outline the imagery shows through
    assert symbol.symbolLayer(0).strokeColor().name() == "#f57c00"  # the picker's orange
    messages = qgis_iface.messageBar().get_messages(Qgis.Success)
    assert any("farm" in m and "added" in m and "225 tiles" in m for m in messages), messages
    plugin.unload()


def test_the_picker_sits_beside_the_middle_of_the_map_and_shows_all_its_text(qgis_iface, plugin_settings,
                                                                           utm_project):
    from qgis.PyQt.QtWidgets import QApplication, QLabel

    window = qgis_iface.mainWindow()
    window.resize(1366, 768)
    window.show()
    utm_project.resize(1200, 700)
    picker = area_picker.AreaPickerDialog(qgis_iface)
    picker.show()
    try:
        picker.set_area(QgsGeometry.fromRect(BOX), UTM35S)
        wait_until(lambda: picker.tiles is not None, 60, "the tile count")
        picker._fail("a long warning that has to wrap onto a second line of the picker, or be cut off at its edge "
                     "where nobody can read the end of it")
        QApplication.processEvents()
        centre = utm_project.mapToGlobal(utm_project.rect().center())
        assert not picker.frameGeometry().contains(centre)
        assert picker.width() <= 600
        for label in picker.findChildren(QLabel):
            if label.isVisible() and label.text():
                if label.wordWrap():
                    assert label.height() >= label.heightForWidth(label.width()), label.text()
                else:
                    assert label.width() >= label.sizeHint().width(), label.text()
        assert picker.file_label.toolTip() == picker.path  # the name shows, the whole path in its tooltip
    finally:
        picker.close()
        picker.deleteLater()
