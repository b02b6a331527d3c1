"""Results as QGIS layers: the heatmap and candidates styled, the candidates' score threshold, a model's metrics,
and plain words when a model or a prediction is obviously no good.

Styles persist where the data is: the candidates' style goes into the GeoPackage's layer_styles table as its
default (saveStyleToDatabase), the heatmap's into a heatmap.qml sidecar, which QGIS loads with the GeoTIFF. So
the layers look the same wherever they are opened, the demo project included. The widgets that drive these are
in ui/results_dock.py and ui/metrics_dialog.py.
"""

import json
import math
import os
from dataclasses import dataclass

from qgis.core import (
    QgsColorRampShader,
    QgsFeatureRequest,
    QgsFillSymbol,
    QgsGeometryGeneratorSymbolLayer,
    QgsGraduatedSymbolRenderer,
    QgsLayerTreeGroup,
    QgsMarkerSymbol,
    QgsProject,
    QgsProperty,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererRange,
    QgsSingleBandPseudoColorRenderer,
    QgsSymbolLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QT_TR_NOOP
from qgis.PyQt.QtGui import QColor

from ..i18n import tr
from .changeset import read_only
from .parameters import THRESHOLD, YES_THRESHOLD
from .settings import DEFAULTS

FLOOR = DEFAULTS["results/heatmap_floor"]
STYLE_NAME = "tower_detector"
ROLE_PROPERTY = "tower_detector/role"
HEATMAP_RAMP = ((0.0, QColor(255, 255, 178)), (0.35, QColor(254, 204, 92)), (0.7, QColor(253, 141, 60)),
                (0.9, QColor(240, 59, 32)), (1.0, QColor(189, 0, 38)))  # positions within floor..1
BAND_COLOURS = (QColor(254, 204, 92), QColor(253, 141, 60), QColor(227, 26, 28))  # below 0.9, to "Yes", "Yes"


def score_bands(yes_score: float = YES_THRESHOLD.default, yes_probability: float = None) -> tuple:
    """(low, high, colour, label) of the candidates' three score bands. The "Yes" band starts at yes_score: the
    score whose calibrated P(tower) is yes_probability when `results` had the model's calibration (the candidates'
    job table says so), else YES_THRESHOLD on the scores themselves."""
    middle = min(0.9, yes_score)
    yes = f"{yes_score:g}" if yes_probability is None else f"{yes_score:.3f}"
    if yes_probability is None:
        yes_label = tr("{yes} and above (the original project's \"Yes\")").format(yes=yes)
    else:
        yes_label = tr("{yes} and above: P(tower) >= {p:g} (the original project's \"Yes\")").format(
            yes=yes, p=yes_probability)
    return ((0.0, middle, BAND_COLOURS[0], tr("below {x:g}").format(x=middle)),
            (middle, yes_score, BAND_COLOURS[1], tr("{x:g} to {yes}").format(x=middle, yes=yes)),
            (yes_score, 1.0, BAND_COLOURS[2], yes_label))


class ResultsError(Exception):
    """A results file that cannot be loaded: the message is one line for the message bar."""


# --- heatmap ------------------------------------------------------------------------------------------------------
def style_heatmap(layer: QgsRasterLayer, floor: float = FLOOR) -> None:
    """Pseudocolor from floor (pale yellow) to 1 (dark red); scores below the floor and nodata are transparent."""
    floor = min(max(float(floor), 0.0), 0.999)
    shader = QgsColorRampShader(floor, 1.0)
    shader.setColorRampType(QgsColorRampShader.Interpolated)
    items = [QgsColorRampShader.ColorRampItem(floor + pos * (1.0 - floor), colour, f"{floor + pos * (1.0 - floor):.2f}")
             for pos, colour in HEATMAP_RAMP]
    shader.setColorRampItemList(items)
    shader.setClip(True)  # clip: values outside floor..1 are not drawn, which is what makes "below floor" clear
    raster_shader = QgsRasterShader(floor, 1.0)
    raster_shader.setRasterShaderFunction(shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, raster_shader)
    renderer.setClassificationMin(floor)
    renderer.setClassificationMax(1.0)
    layer.setRenderer(renderer)
    layer.setOpacity(0.75)
    layer.triggerRepaint()


def heatmap_floor(layer: QgsRasterLayer):
    renderer = layer.renderer()
    return renderer.classificationMin() if isinstance(renderer, QgsSingleBandPseudoColorRenderer) else None


def load_heatmap(path: str, floor: float = FLOOR, name: str = "tower scores (heatmap)",
                 save_style: bool = True) -> QgsRasterLayer:
    if not os.path.isfile(path):
        raise ResultsError(tr("heatmap not found: {path}").format(path=path))
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        raise ResultsError(tr("not a raster QGIS can open: {path}").format(path=path))
    style_heatmap(layer, floor)
    layer.setCustomProperty(ROLE_PROPERTY, "heatmap")  # the review dock hides it to show the imagery
    if save_style:
        layer.saveNamedStyle(os.path.splitext(path)[0] + ".qml")  # QGIS's default style for this file
    return layer


# --- candidates ---------------------------------------------------------------------------------------------------
def _tower_marker() -> QgsGeometryGeneratorSymbolLayer:
    """The tower point (the model's CAM peak, point_lon/point_lat) drawn from the candidate's own row, so one
    layer shows both. (Loading the candidate_points layer beside it would open the GeoPackage twice, and QGIS
    3.22's OGR provider then fails reads of the second filtered layer: "unable to open database file".)"""
    marker = QgsGeometryGeneratorSymbolLayer.create({"geometryModifier": 'make_point("point_lon", "point_lat")',
                                                     "SymbolType": "Marker"})
    marker.setSubSymbol(QgsMarkerSymbol.createSimple(
        {"name": "cross2", "color": "#b71c1c", "outline_color": "#b71c1c", "size": "3", "outline_width": "0.5"}))
    return marker


# Closer than this the mapper is looking at the imagery under the square (reviewing is at 1:2000): the band's
# tint nearly goes, the outline and the tower cross stay. Zoomed out, the tint shows where candidates cluster.
CLOSE_SCALE = 5000
FILL_ALPHA, CLOSE_FILL_ALPHA = 70, 12


def candidates_renderer(bands: tuple = None) -> QgsGraduatedSymbolRenderer:
    """Candidate tiles by score band (score_bands'), each with its tower point as a cross."""
    ranges = []
    for lo, hi, colour, label in bands or score_bands():
        fill = QColor(colour)
        fill.setAlpha(FILL_ALPHA)
        symbol = QgsFillSymbol.createSimple({"color": fill.name(QColor.HexArgb), "outline_color": colour.name(),
                                             "outline_width": "0.6", "outline_width_unit": "MM"})
        symbol.symbolLayer(0).setDataDefinedProperty(QgsSymbolLayer.PropertyFillColor, QgsProperty.fromExpression(
            f"color_rgba({colour.red()}, {colour.green()}, {colour.blue()}, "
            f"if(@map_scale <= {CLOSE_SCALE}, {CLOSE_FILL_ALPHA}, {FILL_ALPHA}))"))
        symbol.appendSymbolLayer(_tower_marker())
        ranges.append(QgsRendererRange(lo, hi, symbol, label))
    return QgsGraduatedSymbolRenderer("score", ranges)


THRESHOLD_PROPERTY = "tower_detector/threshold"


def threshold_filter(threshold: float, kept: bool = False) -> str:
    """Candidates scoring at least threshold; kept: also those the backend kept for their review alone
    (in_results = 0: reviewed, then below the threshold of a later `results`/fetch), so no decision is hidden."""
    text = f'"score" >= {float(threshold)!r}'
    return f'{text} OR "in_results" = 0' if kept else text


def set_threshold(layers, threshold: float) -> None:
    """Show only candidates scoring at least threshold, and the reviewed ones kept below it (a provider filter:
    counts and exports follow it)."""
    for layer in layers:
        if layer is not None and layer.isValid():
            layer.setSubsetString(threshold_filter(threshold, layer.fields().indexOf("in_results") >= 0))
            layer.setCustomProperty(THRESHOLD_PROPERTY, float(threshold))
            layer.triggerRepaint()


def budget_threshold(candidates: str, n: int):
    """The score threshold that keeps the n best candidates of a candidates GeoPackage (all of them when it holds
    fewer); a tie at the cut is left out whole, so a few fewer, as `results --budget` does. None when it holds none.
    Read-only, and whatever the layers' filters."""
    import sqlite3

    try:
        with read_only(candidates) as db:
            scores = [row[0] for row in db.execute("SELECT score FROM candidates WHERE score IS NOT NULL "
                                                    "ORDER BY score DESC LIMIT ?", (n + 1,))]
    except sqlite3.Error as exc:
        message = tr("cannot read the candidates {path}: {error}")
        raise ResultsError(message.format(path=candidates, error=exc)) from None
    if not scores:
        return None
    if len(scores) <= n:
        return scores[-1]
    cut = scores[n - 1]
    if scores[n] < cut:
        return cut
    above = [score for score in scores[:n] if score > cut]  # the tie at the cut is left out whole
    return min(above) if above else math.nextafter(cut, math.inf)


def file_layers(path: str, project: QgsProject = None, layer_name: str = None) -> list:
    """The project's layers that read the file at path (only its layer_name, for a GeoPackage, if given)."""
    project = project or QgsProject.instance()
    real, found = os.path.realpath(path), []
    for layer in project.mapLayers().values():
        parts = layer.source().split("|")
        if os.path.realpath(parts[0]) == real and (layer_name is None or f"layername={layer_name}" in parts[1:]):
            found.append(layer)
    return found


def reload_file_layers(path: str, project: QgsProject = None) -> list:
    """Re-read the project's layers of a file the backend has just changed (a merge into a candidates GeoPackage
    adds rows and columns; a heatmap is a new file): rows, fields, extent; a threshold set here is applied again
    (the file may have gained in_results). Returns those layers."""
    layers = file_layers(path, project)
    for layer in layers:
        layer.reload()
        if isinstance(layer, QgsVectorLayer):
            layer.updateExtents()
            threshold = layer.customProperty(THRESHOLD_PROPERTY)
            if threshold is not None:
                set_threshold((layer,), float(threshold))
        layer.triggerRepaint()
    return layers


def count(layer: QgsVectorLayer) -> int:
    """Features passing the layer's filter, counted by reading them without geometry or attributes. QGIS 3.22's OGR
    provider cannot be trusted with the filtered count of a GeoPackage: for the backend's files it answers the
    whole table's count whatever the filter, and for a second layer of one file it can answer -1."""
    request = QgsFeatureRequest().setFlags(QgsFeatureRequest.NoGeometry).setNoAttributes()
    return sum(1 for _ in layer.getFeatures(request))


def _open_gpkg_layer(path: str, layer_name: str, name: str) -> QgsVectorLayer:
    layer = QgsVectorLayer(f"{path}|layername={layer_name}", name, "ogr")
    if not layer.isValid():
        message = tr("{path} has no layer {layer_name!r}: not a tower-detector candidates GeoPackage")
        raise ResultsError(message.format(path=path, layer_name=layer_name))
    if layer.fields().indexOf("score") < 0:
        raise ResultsError(tr("{path}|{layer_name} has no score field").format(path=path, layer_name=layer_name))
    return layer


def _has_saved_style(layer: QgsVectorLayer) -> bool:
    count, _ids, names, _desc, _err = layer.listStylesInDatabase()
    return count > 0 and STYLE_NAME in names


def open_candidates(path: str, name: str = "tower candidates") -> QgsVectorLayer:
    """The candidates layer of a candidates GeoPackage, as it is."""
    if not os.path.isfile(path):
        raise ResultsError(tr("candidates not found: {path}").format(path=path))
    return _open_gpkg_layer(path, "candidates", name)


def load_candidates(path: str, threshold: float = THRESHOLD.default, name: str = "tower candidates") -> QgsVectorLayer:
    """The candidates layer of a candidates GeoPackage, styled, filtered at threshold. The style is saved into
    the GeoPackage the first time; later loads take the saved one (with any edits the user saved)."""
    layer = open_candidates(path, name)
    if not _has_saved_style(layer):
        yes = _yes_band(path)
        layer.setRenderer(candidates_renderer(score_bands(*yes) if yes else None))
        error = layer.saveStyleToDatabase(STYLE_NAME, "Tower Detector: candidate tiles by score, tower points", True,
                                          "")
        if error:
            raise ResultsError(tr("could not save the style into {path}: {error}").format(path=path, error=error))
    set_threshold((layer,), threshold)
    return layer


def _yes_band(path: str):
    """(yes_score, yes_threshold) from a calibrated candidates GeoPackage's job table, else None."""
    import sqlite3

    try:
        with read_only(path) as db:
            job = dict(db.execute("SELECT key, value FROM job WHERE key IN ('yes_score', 'yes_threshold')"))
        yes_score, yes_threshold = float(job["yes_score"]), float(job["yes_threshold"])
    except (sqlite3.Error, KeyError, TypeError, ValueError):
        return None
    return (yes_score, yes_threshold) if yes_score != yes_threshold else None


def add_results(heatmap: str = None, candidates: str = None, *, threshold: float = THRESHOLD.default,
                floor: float = FLOOR, title: str = "Tower Detector results", project: QgsProject = None) -> dict:
    """Add what exists of a result set to the project in one group, candidates above the heatmap. A file the
    project already shows is re-read in its layer, not opened a second time."""
    project = project or QgsProject.instance()
    layers = {}
    if candidates:
        shown = file_layers(candidates, project, "candidates")
        if shown:
            reload_file_layers(candidates, project)
            set_threshold(shown[:1], threshold)
        layers["candidates"] = shown[0] if shown else load_candidates(candidates, threshold)
    if heatmap:
        shown = file_layers(heatmap, project)
        if shown:
            reload_file_layers(heatmap, project)
            style_heatmap(shown[0], floor)
        layers["heatmap"] = shown[0] if shown else load_heatmap(heatmap, floor)
    if not layers:
        raise ResultsError(tr("nothing to load: give a heatmap or a candidates GeoPackage"))
    new = [key for key in ("candidates", "heatmap") if key in layers and not project.mapLayer(layers[key].id())]
    if new:
        group: QgsLayerTreeGroup = project.layerTreeRoot().insertGroup(0, title)
        for key in new:
            project.addMapLayer(layers[key], False)
            group.addLayer(layers[key])
    return layers


# --- model metrics ------------------------------------------------------------------------------------------------
METRIC_ROWS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")


def read_metrics(model_dir: str) -> dict:
    path = os.path.join(model_dir, "metrics.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        message = tr("no metrics.json in {model_dir}: not a trained model directory")
        raise ResultsError(message.format(model_dir=model_dir)) from None
    except ValueError as exc:
        raise ResultsError(tr("{path} is not valid JSON: {exc}").format(path=path, exc=exc)) from None


def recommended_threshold(model_dir: str, default: float = THRESHOLD.default, views: int = 1) -> float:
    """The model's Youden threshold (metrics.json), the usual choice for candidates, for scores averaged over
    `views` views a tile (predict --views; a model trained before views were evaluated has one view's only);
    default without one."""
    try:
        metrics = read_metrics(model_dir)
    except ResultsError:
        return default
    if views > 1 and str(views) in (metrics.get("views") or {}):
        metrics = metrics["views"][str(views)]
    value = (metrics.get("thresholds") or {}).get("youden")
    return float(value) if isinstance(value, (int, float)) else default


def metric_rows(metrics: dict) -> list:
    """(name, value text) for the table: the headline metrics, then the recommended thresholds."""
    rows = []
    for key in METRIC_ROWS:
        if key in metrics:
            rows.append((key, _fmt(metrics[key])))
    for key, value in sorted((metrics.get("thresholds") or {}).items()):
        rows.append((f"threshold: {key}", _fmt(value)))
    for views, scored in sorted((metrics.get("views") or {}).items(), key=lambda item: int(item[0])):
        rows.append((f"roc_auc, {views} views", _fmt(scored.get("roc_auc"))))
        rows.append((f"threshold: youden, {views} views", _fmt((scored.get("thresholds") or {}).get("youden"))))
    for key, value in sorted(metrics.items()):  # anything else scalar the backend adds
        if key not in METRIC_ROWS and key != "thresholds" and isinstance(value, (int, float, str)):
            rows.append((key, _fmt(value)))
    return rows


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# --- obviously bad results, in words an analyst reads ------------------------------------------------------------
CHANCE_AUC = 0.55  # a test ROC AUC at or below this is no better than guessing
SCORE_SPREAD_MIN = 0.01  # scores closer together than this do not tell tiles apart
STATS_SAMPLE = 1_000_000  # heatmap pixels read for its score range (a country has tens of millions)
ADVICE = QT_TR_NOOP("train longer or on more towers")  # shown through tr()
BACKEND_LEVELS = {"ok": "ok", "chance": "warn", "too_few": "warn"}  # metrics.json's "verdict" level -> ours


@dataclass(frozen=True)
class Verdict:
    level: str  # "ok", "warn" (amber) or "bad" (red)
    text: str = ""


def auc_interval(auc: float, n_tower: int, n_background: int, z: float = 1.96) -> tuple:
    """About 95 % of the ROC AUCs the model would get on other test sets this size (Hanley and McNeil's standard
    error): few tower tiles give a wide interval."""
    if not n_tower or not n_background:
        return 0.0, 1.0
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_tower - 1) * (q1 - auc * auc) + (n_background - 1) * (q2 - auc * auc)) / (
        n_tower * n_background)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


def model_verdict(metrics: dict) -> Verdict:
    """Whether a model's test ROC AUC shows it finds towers at all. At or below CHANCE_AUC it is useless however
    many tiles were tested (red). Otherwise the backend's own verdict in metrics.json (training/card.py: its AUC's
    95 % interval from the tower tile count), amber when it says chance or too few tiles; for a model trained
    before metrics.json had one, the same interval here."""
    auc, n_tower, n_background = metrics.get("roc_auc"), metrics.get("n_tower"), metrics.get("n_background")
    towers = tr("{n:,} tower tiles").format(n=n_tower) if isinstance(n_tower, int) else tr("the test tiles")
    advice = tr(ADVICE)
    if isinstance(auc, (int, float)) and auc <= CHANCE_AUC:
        return Verdict("bad", tr("this model is no better than chance: {advice} (test ROC AUC {auc:.2f} on "
                                 "{towers})").format(advice=advice, auc=auc, towers=towers))
    judged = metrics.get("verdict")
    if isinstance(judged, dict) and judged.get("level") in BACKEND_LEVELS and judged.get("text"):
        return Verdict(BACKEND_LEVELS[judged["level"]], str(judged["text"]))
    if not isinstance(auc, (int, float)):
        return Verdict("warn", tr("this model could not be tested (its test split has no tower tile or no "
                                  "background tile), so nothing shows it finds towers: {advice}").format(advice=advice))
    if isinstance(n_tower, int) and isinstance(n_background, int):
        low, high = auc_interval(auc, n_tower, n_background)
        if low <= 0.5:
            text = tr("this model may be no better than chance: {advice} (test ROC AUC {auc:.2f}, but with only "
                      "{towers} it could be anywhere from {low:.2f} to {high:.2f})")
            return Verdict("warn", text.format(advice=advice, auc=auc, towers=towers, low=low, high=high))
    return Verdict("ok", tr("test ROC AUC {auc:.2f} on {towers}").format(auc=auc, towers=towers))


def score_range(heatmap: str = "", candidates: str = ""):
    """(lowest, highest, tiles) of a prediction's scores: the heatmap's (a sample of a large one), else the
    candidates'; None when neither can be read."""
    if heatmap and os.path.isfile(heatmap):
        layer = QgsRasterLayer(heatmap, "scores", "gdal")
        if layer.isValid():
            stats = layer.dataProvider().bandStatistics(1, QgsRasterBandStats.All,  # All: the count too
                                                        layer.extent(), STATS_SAMPLE)
            if stats.elementCount:
                return stats.minimumValue, stats.maximumValue, stats.elementCount
    if candidates and os.path.isfile(candidates):
        try:
            layer = _open_gpkg_layer(candidates, "candidates", "scores")
        except ResultsError:
            return None
        n = count(layer)
        if n:
            index = layer.fields().indexOf("score")
            return layer.minimumValue(index), layer.maximumValue(index), n
    return None


def prediction_verdict(heatmap: str = "", candidates: str = "") -> Verdict:
    """A warning when all scores lie within SCORE_SPREAD_MIN: the model does not tell tiles apart, and every tile
    past the threshold (or none) is a candidate."""
    found = score_range(heatmap, candidates)
    if found is None:
        return Verdict("ok")
    low, high, n = found
    if n > 1 and high - low < SCORE_SPREAD_MIN:
        text = tr("the model does not separate tiles: all {n:,} scores lie between {low:.5f} and {high:.5f}, so the "
                  "candidates are a carpet over the area, not towers: {advice}")
        return Verdict("warn", text.format(n=n, low=low, high=high, advice=tr(ADVICE)))
    return Verdict("ok")


def dataset_verdict(result: dict) -> Verdict:
    """The dataset build's own warnings (a split without a tower tile), as one line."""
    warnings = [str(w) for w in (result or {}).get("warnings") or []]
    return Verdict("warn", "; ".join(warnings)) if warnings else Verdict("ok")
