"""Results in QGIS: heatmap and candidates layers, styles saved with the files, the live threshold, metrics."""

import json
import sqlite3

import pytest
from qgis.core import (
    Qgis,
    QgsGraduatedSymbolRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)

from tests.plugin import support as support
from tests.plugin.support import make_candidates, make_heatmap, make_model_dir, tile_bounds_3857
from tower_detector_plugin.core import result_layers
from tower_detector_plugin.plugin import TowerDetectorPlugin
from tower_detector_plugin.ui.metrics_dialog import MetricsDialog
from tower_detector_plugin.ui.results_dock import ThresholdWidget

plugin_settings = support.plugin_settings  # a fixture

SCORES = [[-1, 0.1, 0.3, 0.45], [0.5, 0.55, 0.7, 0.8], [0.9, 0.93, 0.97, 0.99]]  # -1: not scored
TILES = [(151_000 + i, 142_000, s) for i, s in enumerate((0.55, 0.62, 0.8, 0.91, 0.95, 0.97, 0.99))]


@pytest.fixture
def heatmap(tmp_path):
    return str(make_heatmap(tmp_path / "heatmap.tif", SCORES))


@pytest.fixture
def candidates(tmp_path):
    return str(make_candidates(tmp_path / "candidates.gpkg", TILES))


def _pixel_alpha(layer, col, row):
    """Alpha of the rendered colour of heatmap pixel (col, row)."""
    x0, _s, _e, y1 = tile_bounds_3857(151_000 + col, 142_000 + row)
    ext = layer.extent()
    ext.setXMinimum(x0)
    ext.setXMaximum(x0 + layer.rasterUnitsPerPixelX())
    ext.setYMaximum(y1)
    ext.setYMinimum(y1 - layer.rasterUnitsPerPixelY())
    return (layer.renderer().block(1, ext, 1, 1).color(0, 0) >> 24) & 0xFF


def test_heatmap_is_pseudocolor_transparent_below_the_floor_and_keeps_its_style(heatmap):
    layer = result_layers.load_heatmap(heatmap, floor=0.5)
    renderer = layer.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    assert renderer.classificationMin() == 0.5 and renderer.classificationMax() == 1.0
    legend = [label for label, _colour in renderer.legendSymbologyItems()]
    assert legend[0] == "0.50" and legend[-1] == "1.00"
    assert _pixel_alpha(layer, 0, 0) == 0  # nodata
    assert _pixel_alpha(layer, 2, 0) == 0  # 0.3, under the floor
    assert _pixel_alpha(layer, 1, 1) == _pixel_alpha(layer, 3, 2) == round(255 * layer.opacity()) > 0
    # The style went into heatmap.qml: QGIS applies it to the file wherever it is opened.
    again = QgsRasterLayer(heatmap, "again", "gdal")
    assert isinstance(again.renderer(), QgsSingleBandPseudoColorRenderer)
    assert again.renderer().classificationMin() == 0.5
    result_layers.style_heatmap(layer, 0.9)
    assert _pixel_alpha(layer, 1, 1) == 0 and result_layers.heatmap_floor(layer) == 0.9


def test_candidates_are_graduated_filtered_and_their_style_lives_in_the_geopackage(candidates):
    layer = result_layers.load_candidates(candidates, threshold=0.9)
    renderer = layer.renderer()
    assert isinstance(renderer, QgsGraduatedSymbolRenderer) and renderer.classAttribute() == "score"
    ranges = renderer.ranges()  # keep the copies alive while their symbols are looked at
    assert ranges[-1].label().startswith("0.97 and above")
    marker = ranges[0].symbol().symbolLayer(1)  # the tower point, from the same row
    assert marker.geometryExpression() == 'make_point("point_lon", "point_lat")'
    assert layer.subsetString() == '"score" >= 0.9' and result_layers.count(layer) == 4
    with sqlite3.connect(candidates) as db:
        styles = db.execute("SELECT f_table_name, styleName, useAsDefault FROM layer_styles").fetchall()
    assert styles == [("candidates", "tower_detector", 1)]
    fresh = QgsVectorLayer(f"{candidates}|layername=candidates", "fresh", "ogr")
    assert isinstance(fresh.renderer(), QgsGraduatedSymbolRenderer)  # QGIS itself applies the saved default

    result_layers.set_threshold((layer,), 0.6)
    assert result_layers.count(layer) == 6
    del layer, fresh
    again = result_layers.load_candidates(candidates, threshold=0.5)  # a later load keeps the saved style
    assert result_layers.count(again) == 7
    with sqlite3.connect(candidates) as db:
        assert db.execute("SELECT COUNT(*) FROM layer_styles").fetchone()[0] == 1


def _render_green(layer, x, y, size_px):
    """Green channel at a quarter of tile (x, y)'s width from its west edge, mid-height (clear of the outline and
    the tower cross), rendered on white in EPSG:3857 to a size_px square; and the map scale it was drawn at."""
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsExpressionContext,
        QgsExpressionContextUtils,
        QgsMapRendererSequentialJob,
        QgsMapSettings,
        QgsRectangle,
    )
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    x0, y0, x1, y1 = tile_bounds_3857(x, y)
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    settings.setBackgroundColor(QColor("white"))
    settings.setOutputSize(QSize(size_px, size_px))
    settings.setExtent(QgsRectangle(x0, y0, x1, y1))
    context = QgsExpressionContext()  # @map_scale, as a map canvas gives its layers
    context.appendScope(QgsExpressionContextUtils.mapSettingsScope(settings))
    settings.setExpressionContext(context)
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    return QColor(image.pixel(int(size_px * 0.25), size_px // 2)).green(), settings.scale()


def test_candidate_tint_fades_when_zoomed_in_for_review(candidates):
    layer = result_layers.load_candidates(candidates, threshold=0.97)
    x, y, _ = TILES[-1]  # 0.99: the strongest band, red
    close, close_scale = _render_green(layer, x, y, 800)
    far, far_scale = _render_green(layer, x, y, 24)
    assert close_scale <= result_layers.CLOSE_SCALE < far_scale
    assert close > 235, "at review scale the imagery under the square must show through"
    assert far < 205, "zoomed out the band's tint shows"


def test_threshold_widget_filters_live(candidates, heatmap, qgis_new_project):
    layer = result_layers.load_candidates(candidates, threshold=0.5)
    hm = result_layers.load_heatmap(heatmap, 0.5)
    widget = ThresholdWidget()
    widget.bind([layer], hm, threshold=0.5, floor=0.5)
    assert widget.count.text() == "7 candidates shown"
    widget.slider.setValue(960)
    assert widget.spin.value() == pytest.approx(0.96)
    assert layer.subsetString() == '"score" >= 0.96' and result_layers.count(layer) == 2
    assert widget.count.text() == "2 candidates shown"
    widget.floor.setValue(0.8)
    assert result_layers.heatmap_floor(hm) == pytest.approx(0.8)
    widget.deleteLater()


def test_threshold_count_is_what_the_filter_shows_with_a_backend_written_geopackage(tmp_path, qgis_new_project):
    """QGIS's OGR count of the backend's GeoPackage ignores the filter (256 "shown" while none passed it)."""
    from tests.fakes.candidates_helpers import make_candidates as backend_candidates

    tiles = [(151_000 + i % 16, 142_000 + i // 16) for i in range(256)]
    path = backend_candidates(tmp_path / "c.gpkg", tiles, scores=[0.50243 + i * 1e-7 for i in range(256)])
    layer = result_layers.load_candidates(str(path), threshold=0.5)
    widget = ThresholdWidget()
    widget.bind([layer], None, threshold=0.5)
    assert widget.count.text() == "256 candidates shown"
    for value in (900, 890):
        widget.slider.setValue(value)
        assert sum(1 for _ in layer.getFeatures()) == 0
        assert widget.count.text() == "0 candidates shown"
    widget.spin.setValue(0.502)
    assert widget.count.text() == "256 candidates shown"
    widget.deleteLater()


def test_plugin_loads_a_result_set_into_one_group(qgis_iface, qgis_new_project, plugin_settings, heatmap,
                                                  candidates):
    plugin = TowerDetectorPlugin(qgis_iface)
    layers = plugin.load_results(heatmap, candidates, threshold=0.9, floor=0.5, title="run 1")
    group = QgsProject.instance().layerTreeRoot().findGroup("run 1")
    assert [node.layer() for node in group.findLayers()] == [layers["candidates"], layers["heatmap"]]
    assert plugin.results_dock.threshold.spin.value() == pytest.approx(0.9)
    assert plugin.results_dock.threshold.count.text() == "4 candidates shown"
    plugin.results_dock.deleteLater()


def test_empty_results_load_and_say_there_are_no_candidates(qgis_iface, qgis_new_project, plugin_settings, tmp_path):
    empty = str(make_candidates(tmp_path / "empty.gpkg", []))
    qgis_iface.messageBar().clear_messages()
    plugin = TowerDetectorPlugin(qgis_iface)
    layers = plugin.load_results("", empty, threshold=0.5)
    assert layers["candidates"].isValid() and result_layers.count(layers["candidates"]) == 0
    assert "heatmap" not in layers
    assert qgis_iface.messageBar().get_messages(Qgis.Warning) == ["Tower Detector:no candidates at or above 0.5"]
    plugin.results_dock.deleteLater()


def test_bad_results_files_are_reported_in_one_line(qgis_iface, plugin_settings, tmp_path):
    not_gpkg = tmp_path / "other.gpkg"
    from osgeo import ogr

    ogr.GetDriverByName("GPKG").CreateDataSource(str(not_gpkg)).CreateLayer("roads", None, ogr.wkbLineString)
    with pytest.raises(result_layers.ResultsError, match="no layer 'candidates'"):
        result_layers.load_candidates(str(not_gpkg))
    with pytest.raises(result_layers.ResultsError, match="heatmap not found"):
        result_layers.load_heatmap(str(tmp_path / "none.tif"))
    qgis_iface.messageBar().clear_messages()
    assert TowerDetectorPlugin(qgis_iface).load_results("", str(not_gpkg)) is None
    [shown] = qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert "no layer 'candidates'" in shown


def test_metrics_dialog_shows_the_table_and_plots(tmp_path):
    model = make_model_dir(tmp_path / "model", with_plots=("roc.png",))
    dialog = MetricsDialog(str(model))
    rows = {dialog.table.item(r, 0).text(): dialog.table.item(r, 1).text() for r in range(dialog.table.rowCount())}
    assert rows["roc_auc"] == "0.9550" and rows["threshold: youden"] == "0.6200"
    assert rows["threshold: seed"] == "0.9700"
    assert not dialog.plots["roc.png"].pixmap().isNull()
    assert dialog.plots["scores.png"].text() == "scores.png not found in the model directory"
    assert rows["roc_auc, 8 views"] == "0.9630" and rows["threshold: youden, 8 views"] == "0.5400"
    assert result_layers.recommended_threshold(str(model)) == 0.62
    assert result_layers.recommended_threshold(str(model), views=8) == pytest.approx(0.54)
    old = json.loads((model / "metrics.json").read_text())
    del old["views"]  # a model trained before the views were evaluated: its one-view threshold
    (model / "metrics.json").write_text(json.dumps(old))
    assert result_layers.recommended_threshold(str(model), views=8) == 0.62
    assert result_layers.recommended_threshold(str(tmp_path), 0.5) == 0.5
    with pytest.raises(result_layers.ResultsError, match="no metrics.json"):
        MetricsDialog(str(tmp_path))
    dialog.deleteLater()


def test_metrics_dialog_opens_on_the_model_card(tmp_path):
    model = make_model_dir(tmp_path / "model")
    dialog = MetricsDialog(str(model))
    assert "MODEL_CARD.md not found" in dialog.card.toPlainText()
    dialog.deleteLater()
    (model / "MODEL_CARD.md").write_text("# Model card: model\n\n**Better than chance: test ROC AUC 0.96.**\n\n"
                                         "| figure | value |\n| --- | --- |\n| ROC AUC, 1 view | 0.955 |\n")
    dialog = MetricsDialog(str(model))
    text = dialog.card.toPlainText()
    assert text.startswith("Model card: model") and "Better than chance" in text and "0.955" in text
    assert "**" not in text and "| ---" not in text  # rendered, not shown as markdown source
    assert dialog.card.parent().parent().currentWidget() is dialog.card
    dialog.deleteLater()


CHANCE = {"level": "chance", "text": "This model is no better than chance: test ROC AUC 0.60 (95 % interval "
          "0.45-0.75, from 12 tower tiles). Train longer or on more towers before using its candidates."}


@pytest.mark.parametrize("auc, n_tower, backend, level", [
    (0.33, 40, None, "bad"), (0.55, 400, None, "bad"), (0.62, 6, None, "warn"), (0.62, 400, None, "ok"),
    (0.955, 40, None, "ok"), (None, 0, None, "warn"),
    # metrics.json's own verdict (the backend's rule) wins, except that 0.55 or less is red however many tiles
    (0.60, 12, CHANCE, "warn"), (0.33, 400, {"level": "ok", "text": "Better than chance"}, "bad"),
    (0.9, 5, {"level": "too_few", "text": "Too few tiles to judge this model: train longer or on more towers"},
     "warn")])
def test_metrics_dialog_says_when_a_model_is_no_better_than_chance(tmp_path, auc, n_tower, backend, level):
    model = make_model_dir(tmp_path / "model")
    metrics = json.loads((model / "metrics.json").read_text())
    metrics.update(roc_auc=auc, n_tower=n_tower, n_background=3 * n_tower)
    if backend:
        metrics["verdict"] = backend
    (model / "metrics.json").write_text(json.dumps(metrics))
    verdict = result_layers.model_verdict(metrics)
    assert verdict.level == level
    dialog = MetricsDialog(str(model))
    text, style = dialog.verdict.text(), dialog.verdict.styleSheet()
    if level == "ok":
        assert "better than chance" not in text and "#2e7d32" in style  # green only here
    else:
        assert "train longer or on more towers" in text.lower()
        if backend and level == "warn":
            assert text == backend["text"]
        assert ("#c62828" if level == "bad" else "#e65100") in style
    dialog.deleteLater()


def test_the_auc_interval_narrows_with_more_tower_tiles():
    wide = result_layers.auc_interval(0.62, 6, 18)
    narrow = result_layers.auc_interval(0.62, 400, 1200)
    assert wide[0] < 0.5 < 0.62 < wide[1] and 0.5 < narrow[0] < 0.62 < narrow[1] < wide[1]


def test_loading_a_carpet_of_alike_scores_warns(qgis_iface, qgis_new_project, plugin_settings, tmp_path):
    carpet = make_heatmap(tmp_path / "carpet.tif", [[0.50243 + (i * 16 + j) * 1e-7 for j in range(16)]
                                                    for i in range(16)])
    candidates = make_candidates(tmp_path / "carpet.gpkg", [(151_000 + i, 142_000, 0.50243 + i * 1e-7)
                                                            for i in range(16)])
    bar = qgis_iface.messageBar()
    bar.clear_messages()
    plugin = TowerDetectorPlugin(qgis_iface)
    plugin.load_results(str(carpet), str(candidates), threshold=0.5)
    [text] = bar.get_messages(Qgis.Warning)
    assert "does not separate tiles" in text and "256 scores" in text and "carpet" in text
    bar.clear_messages()
    plugin.load_results("", str(candidates), threshold=0.5)  # no heatmap: the candidates' scores tell
    [text] = bar.get_messages(Qgis.Warning)
    assert "16 scores" in text
    bar.clear_messages()
    plugin.load_results("", str(make_candidates(tmp_path / "fine.gpkg", TILES)), threshold=0.5)
    assert bar.get_messages(Qgis.Warning) == []
    plugin.results_dock.deleteLater()


def test_a_review_budget_sets_the_threshold_of_the_n_best(tmp_path, qgis_new_project):
    """Issue 31: the results dock offers `results --budget N`'s choice: the threshold that shows the N best
    candidates, a tie at the cut left out whole; a score set by hand ends the budget."""
    from tests.fakes.candidates_helpers import make_candidates as backend_candidates

    scores = [0.99, 0.95, 0.9, 0.9, 0.8, 0.7, 0.6]
    path = backend_candidates(tmp_path / "c.gpkg", [(151_000 + i, 142_000) for i in range(len(scores))],
                              scores=scores)
    layer = result_layers.load_candidates(str(path), threshold=0.5)
    widget = ThresholdWidget()
    widget.bind([layer], None, threshold=0.5)
    widget.budget.setValue(2)
    assert result_layers.count(layer) == 2 and widget.count.text() == "2 candidates shown"
    widget.budget.setValue(3)  # 0.9 twice at the cut: both left out, 2 shown, as the backend's --budget
    assert result_layers.count(layer) == 2 and widget.spin.value() == pytest.approx(0.95)
    widget.budget.setValue(5)
    assert result_layers.count(layer) == 5 and widget.spin.value() == pytest.approx(0.8)
    widget.budget.setValue(100)  # more than there are: all of them
    assert result_layers.count(layer) == 7
    widget.slider.setValue(960)  # by hand
    assert widget.budget.value() == 0 and result_layers.count(layer) == 1
    assert result_layers.budget_threshold(str(path), 4) == pytest.approx(0.9)  # both 0.9s fit in 4
    widget.deleteLater()


def test_the_yes_band_of_calibrated_candidates_is_a_probability(tmp_path, qgis_new_project):
    """Issue 31: with the model's calibration, `results` starts the "Yes" band at the score whose P(tower) is 0.97
    (its job table says which); the plugin's style draws the same band, and says so in the legend."""
    import sqlite3

    from tests.fakes.candidates_helpers import make_candidates as backend_candidates

    path = backend_candidates(tmp_path / "c.gpkg", [(151_000, 142_000), (151_001, 142_000)], scores=[0.99, 0.95])
    with sqlite3.connect(path) as db:
        db.executemany("INSERT OR REPLACE INTO job (key, value) VALUES (?, ?)",
                       [("yes_threshold", "0.97"), ("yes_score", "0.9483")])
    layer = result_layers.load_candidates(str(path), threshold=0.5)
    ranges = layer.renderer().ranges()
    assert ranges[2].lowerValue() == pytest.approx(0.9483) and "P(tower) >= 0.97" in ranges[2].label()
    assert [r.label() for r in result_layers.candidates_renderer().ranges()] == [
        "below 0.9", "0.9 to 0.97", "0.97 and above (the original project's \"Yes\")"]
