"""The Processing provider: tile count, build dataset, train, predict and load results as algorithms, for the
toolbox, batch mode, models and `qgis_process`.

Algorithms run the backend CLI like the dialogs do (commands.py builds the arguments), synchronously in
Processing's own worker thread: feedback gets the progress and log lines, and cancelling it ends the backend's
process tree.
"""

import os

from qgis.core import (
    QgsGeometry,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputString,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingProvider,
    QgsProcessingUtils,
)
from qgis.PyQt.QtGui import QIcon

from . import area, backend, commands, imagery, results, settings

ICON = ":/plugins/tower_detector/icon.svg"


class BackendAlgorithm(QgsProcessingAlgorithm):
    """Shared: running backend commands with feedback, and turning a polygon source into an area file."""

    def group(self):
        return "Tower Detector"

    def groupId(self):  # noqa: N802 - QGIS API
        return "towerdetector"

    def icon(self):
        return QIcon(ICON)

    def createInstance(self):  # noqa: N802
        return type(self)()

    def run_steps(self, steps, feedback, env=None) -> list:
        """Run each step; the result events, or QgsProcessingException with the backend's one-line reason."""
        try:
            be = backend.locate(settings.value("backend/path"))
        except backend.BackendMissing as exc:
            raise QgsProcessingException(str(exc)) from None
        outcomes = []
        for i, args in enumerate(steps):
            feedback.pushCommandInfo(" ".join(be.argv(args)))

            def on_event(event, i=i):
                kind = event.get("event")
                if kind == "progress" and event.get("total"):
                    frac = min(max(float(event.get("done", 0)) / float(event["total"]), 0.0), 1.0)
                    feedback.setProgress(100.0 * (i + frac) / len(steps))
                elif kind == "log":
                    feedback.pushInfo(str(event.get("message", "")))
                elif kind == "result" and event.get("message"):
                    feedback.pushInfo(str(event["message"]))

            outcome = backend.run(be, args, env=env, on_event=on_event, is_canceled=feedback.isCanceled)
            if not outcome.ok:
                if outcome.stderr.strip() and not outcome.canceled:
                    feedback.pushConsoleInfo(outcome.stderr)
                raise QgsProcessingException(f"tower-detector {args[0]}: {outcome.reason()}")
            outcomes.append(outcome.result or {})
        return outcomes

    def area_file(self, parameters, name, context, feedback):
        """The AREA source's polygons, dissolved, in EPSG:4326, as a GeoJSON file in Processing's temp folder."""
        source = self.parameterAsSource(parameters, name, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, name))
        geoms = [f.geometry() for f in source.getFeatures() if f.hasGeometry()]
        if not geoms:
            raise QgsProcessingException("the area layer has no polygons")
        try:
            geom = area.to_wgs84(QgsGeometry.unaryUnion(geoms), source.sourceCrs(), context.transformContext())
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        path = os.path.join(QgsProcessingUtils.tempFolder(), f"area-{self.name()}-{id(feedback)}.geojson")
        return area.write_area(geom, path), geom

    def imagery(self, parameters, context):
        spec = self.parameterAsString(parameters, "IMAGERY", context)
        authcfg = self.parameterAsString(parameters, "AUTHCFG", context)
        try:
            return imagery.resolve(spec, authcfg)
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None

    @staticmethod
    def optional_int(value):
        return int(value) if value else None  # 0 means "the backend's default"


def _int(name, description, default, minimum=0, maximum=None, optional=False):
    param = QgsProcessingParameterNumber(name, description, QgsProcessingParameterNumber.Integer, default, optional,
                                         minimum)
    if maximum is not None:
        param.setMaximum(maximum)
    return param


def _float(name, description, default, minimum=0.0, maximum=None):
    param = QgsProcessingParameterNumber(name, description, QgsProcessingParameterNumber.Double, default, False,
                                         minimum)
    if maximum is not None:
        param.setMaximum(maximum)
    return param


def _area_param():
    return QgsProcessingParameterFeatureSource("AREA", "Area (polygons, any CRS)",
                                               [QgsProcessing.TypeVectorPolygon])


def _imagery_params():
    return [QgsProcessingParameterString("IMAGERY", "Imagery (XYZ URL template with ${TOWER_DETECTOR_TOKEN}, "
                                         "GeoTIFF/COG, .mbtiles or tile folder)", settings.value("imagery/spec")),
            QgsProcessingParameterAuthConfig("AUTHCFG", "Imagery token (QGIS authentication config)",
                                             settings.value("imagery/authcfg"), True)]


class TileCountAlgorithm(BackendAlgorithm):
    def name(self):
        return "tilecount"

    def displayName(self):  # noqa: N802
        return "Count zoom-18 tiles of an area"

    def shortHelpString(self):  # noqa: N802
        return ("The exact number of tiles that cover the area (tower-detector tiles), its km² and a time and cost "
                "estimate. Without a backend, an estimate from the area (EXACT is 0). Fails above MAX_TILES.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_area_param())
        self.addParameter(_int("ZOOM", "Zoom", 18, 1, 22))
        self.addParameter(_int("MAX_TILES", "Refuse above this many tiles (0: the Settings limit)", 0,
                               optional=True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Tile cover (.json runs or .txt ids)",
                                                                "JSON (*.json);;Text (*.txt)", None, True, False))
        for name, description in (("COUNT", "Tiles"), ("AREA_KM2", "Area (km²)"), ("EXACT", "1 if counted exactly"),
                                  ("LOCAL_HOURS", "Estimated local CPU hours"), ("REMOTE_USD", "Estimated AWS $")):
            self.addOutput(QgsProcessingOutputNumber(name, description))
        self.addOutput(QgsProcessingOutputString("AREA_FILE", "Area GeoJSON (EPSG:4326)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        path, geom = self.area_file(parameters, "AREA", context, feedback)
        zoom = self.parameterAsInt(parameters, "ZOOM", context)
        limit = self.parameterAsInt(parameters, "MAX_TILES", context) or settings.value("area/max_tiles")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context) or None
        try:
            backend.locate(settings.value("backend/path"))
        except backend.BackendMissing as exc:
            feedback.pushWarning(f"{exc}; estimating from the area instead")
            count, exact = area.estimate_tiles(geom, zoom, context.transformContext()), 0
            if count > limit:
                raise QgsProcessingException(f"about {count:,} tiles, over the limit of {limit:,}") from None
        else:
            [result] = self.run_steps([commands.tiles_args(path, zoom, out=out, max_tiles=limit)], feedback)
            count, exact = int(result["count"]), 1
        level, text = area.limit_check(count)
        if level == "warn":
            feedback.pushWarning(text)
        cost = area.estimate_cost(count)
        return {"COUNT": count, "EXACT": exact, "AREA_KM2": area.area_km2(geom, context.transformContext()),
                "LOCAL_HOURS": cost.local_hours, "REMOTE_USD": cost.usd, "AREA_FILE": path, "OUTPUT": out}


class BuildDatasetAlgorithm(BackendAlgorithm):
    def name(self):
        return "builddataset"

    def displayName(self):  # noqa: N802
        return "Build training data"

    def shortHelpString(self):  # noqa: N802
        return ("A label-maker-compatible training set (tower and background tiles) for the area, from the imagery "
                "and tower points: OpenStreetMap (Overpass) when no tower layer is given.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_area_param())
        for param in _imagery_params():
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterFeatureSource("TOWERS", "Tower points (empty: OpenStreetMap)",
                                                              [QgsProcessing.TypeVectorPoint], None, True))
        self.addParameter(QgsProcessingParameterString("TOWER_FILTER", "OSM tag filter (empty: power=tower for OSM, "
                                                       "all for a point layer)", None, False, True))
        self.addParameter(_int("ZOOM", "Zoom", 18, 15, 21))
        self.addParameter(_float("BACKGROUND_RATIO", "Background tiles per tower tile", 3.0, 0.5))
        self.addParameter(_float("SPAN_NEGATIVES", "Negative tiles along OSM power lines, per tower tile", 0.0, 0.0))
        self.addParameter(_int("BLOCK_SIZE", "Split block size (tiles)", 8, 1))
        self.addParameter(_int("SEED", "Seed", 0, optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Training data folder"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        path, _geom = self.area_file(parameters, "AREA", context, feedback)
        spec = self.imagery(parameters, context)
        out = self.parameterAsString(parameters, "OUTPUT", context)
        tower_filter = self.parameterAsString(parameters, "TOWER_FILTER", context) or None
        towers = "overpass"
        if parameters.get("TOWERS"):
            source = self.parameterAsSource(parameters, "TOWERS", context)
            towers = _export_source(source, os.path.join(QgsProcessingUtils.tempFolder(), f"towers-{id(feedback)}"
                                                         ".geojson"), context, feedback)
            tower_filter = tower_filter or "all"
        zoom = self.parameterAsInt(parameters, "ZOOM", context)
        span_negatives = self.parameterAsDouble(parameters, "SPAN_NEGATIVES", context) or None
        args = commands.dataset_args(path, towers, spec.spec, out, zoom=zoom,
                                     background_ratio=self.parameterAsDouble(parameters, "BACKGROUND_RATIO", context),
                                     span_negatives=span_negatives,
                                     block_size=self.parameterAsInt(parameters, "BLOCK_SIZE", context),
                                     seed=self.parameterAsInt(parameters, "SEED", context), tower_filter=tower_filter,
                                     max_tiles=settings.value("area/max_tiles"))
        self.run_steps([args], feedback, spec.env)
        return {"OUTPUT": out}


def _export_source(source, path, context, feedback) -> str:
    """A feature source's points as GeoJSON in EPSG:4326."""
    import json

    from qgis.core import QgsCoordinateTransform

    ct = QgsCoordinateTransform(source.sourceCrs(), area.WGS84, context.transformContext())
    features = []
    for f in source.getFeatures():
        if not f.hasGeometry():
            continue
        geom = QgsGeometry(f.geometry())
        geom.transform(ct)
        props = {name: f[name] for name in f.fields().names() if isinstance(f[name], (str, int, float))}
        features.append({"type": "Feature", "properties": props, "geometry": json.loads(geom.asJson(7))})
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"type": "FeatureCollection", "features": features}, fh)
    feedback.pushInfo(f"{len(features)} tower points exported to {path}")
    return path


class TrainAlgorithm(BackendAlgorithm):
    WEIGHTS = ("imagenet", "none", "file")

    def name(self):
        return "train"

    def displayName(self):  # noqa: N802
        return "Train the tower classifier"

    def shortHelpString(self):  # noqa: N802
        return ("Trains the Xception tile classifier on a training data folder (two phases; resumes when run again "
                "with the same output folder). 0 in a number means the backend's default.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("DATA", "Training data folder",
                                                     QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterEnum("WEIGHTS", "Start weights", list(self.WEIGHTS), False, 0))
        self.addParameter(QgsProcessingParameterFile("WEIGHTS_FILE", "Weights file (Start weights: file)",
                                                     QgsProcessingParameterFile.File, "h5", None, True))
        self.addParameter(QgsProcessingParameterFile("PARAMS", "Hyperparameters (JSON)",
                                                     QgsProcessingParameterFile.File, "json", None, True))
        for name, description in (("IMAGE_SIZE", "Image size (px)"), ("EPOCHS_TOP", "Epochs, new top"),
                                  ("EPOCHS_FINE", "Epochs, fine-tuning"), ("BATCH_SIZE", "Batch size")):
            self.addParameter(_int(name, description, 0, optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Model folder"))
        self.addOutput(QgsProcessingOutputNumber("ROC_AUC", "Test ROC AUC"))
        self.addOutput(QgsProcessingOutputNumber("THRESHOLD", "Recommended threshold (Youden)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        weights = self.WEIGHTS[self.parameterAsEnum(parameters, "WEIGHTS", context)]
        if weights == "file":
            weights = self.parameterAsFile(parameters, "WEIGHTS_FILE", context)
            if not weights:
                raise QgsProcessingException("Start weights is 'file' but no weights file is given")
        out = self.parameterAsString(parameters, "OUTPUT", context)
        n = {k: self.optional_int(self.parameterAsInt(parameters, k, context))
             for k in ("IMAGE_SIZE", "EPOCHS_TOP", "EPOCHS_FINE", "BATCH_SIZE")}
        args = commands.train_args(self.parameterAsFile(parameters, "DATA", context), out, weights=weights,
                                   params=self.parameterAsFile(parameters, "PARAMS", context) or None,
                                   image_size=n["IMAGE_SIZE"], epochs_top=n["EPOCHS_TOP"],
                                   epochs_fine=n["EPOCHS_FINE"], batch_size=n["BATCH_SIZE"])
        [result] = self.run_steps([args], feedback)
        return {"OUTPUT": out, "ROC_AUC": result.get("roc_auc"),
                "THRESHOLD": (result.get("thresholds") or {}).get("youden")}


class PredictAlgorithm(BackendAlgorithm):
    def name(self):
        return "predict"

    def displayName(self):  # noqa: N802
        return "Predict towers over an area"

    def shortHelpString(self):  # noqa: N802
        return ("Scores every zoom-18 tile of the area into a results store (checkpointed: run it again to resume), "
                "then writes the heatmap GeoTIFF and the candidates GeoPackage, styled. THRESHOLD -1 takes the "
                "model's recommended (Youden) threshold.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model folder", QgsProcessingParameterFile.Folder))
        for param in _imagery_params():
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterString("IMAGERY_NAME", "Imagery name, the OSM changeset's source "
                                                       "(e.g. Esri World Imagery)", None, False, True))
        self.addParameter(_area_param())
        self.addParameter(_float("THRESHOLD", "Candidate threshold (-1: the model's)", -1.0, -1.0, 1.0))
        for name, description in (("WORKERS", "Imagery workers"), ("CHECKPOINT_EVERY", "Checkpoint every (tiles)"),
                                  ("BATCH_SIZE", "Batch size")):
            self.addParameter(_int(name, f"{description} (0: default)", 0, optional=True))
        self.addParameter(QgsProcessingParameterEnum("VIEWS", "Views per tile (scored turned/mirrored, averaged)",
                                                     [str(n) for n in commands.VIEWS], defaultValue=0))
        self.addParameter(QgsProcessingParameterFolderDestination("STORE", "Results store folder"))
        self.addParameter(QgsProcessingParameterFileDestination("HEATMAP", "Heatmap", "GeoTIFF (*.tif)"))
        self.addParameter(QgsProcessingParameterFileDestination("CANDIDATES", "Candidates", "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputNumber("CANDIDATE_COUNT", "Candidates"))
        self.addOutput(QgsProcessingOutputNumber("SCORED", "Tiles scored"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        model = self.parameterAsFile(parameters, "MODEL", context)
        spec = self.imagery(parameters, context)
        path, _geom = self.area_file(parameters, "AREA", context, feedback)
        views = commands.VIEWS[self.parameterAsEnum(parameters, "VIEWS", context)]
        threshold = self.parameterAsDouble(parameters, "THRESHOLD", context)
        if threshold < 0:
            threshold = results.recommended_threshold(model, views=views)
        store = self.parameterAsString(parameters, "STORE", context)
        heatmap = self.parameterAsFileOutput(parameters, "HEATMAP", context)
        candidates = self.parameterAsFileOutput(parameters, "CANDIDATES", context)
        n = {k: self.optional_int(self.parameterAsInt(parameters, k, context))
             for k in ("WORKERS", "CHECKPOINT_EVERY", "BATCH_SIZE")}
        steps = [commands.predict_args(model, spec.spec, store, area=path, workers=n["WORKERS"],
                                       checkpoint_every=n["CHECKPOINT_EVERY"], batch_size=n["BATCH_SIZE"],
                                       max_tiles=settings.value("area/max_tiles"), views=views,
                                       imagery_name=self.parameterAsString(parameters, "IMAGERY_NAME", context)),
                 commands.results_args(store, heatmap=heatmap, candidates=candidates, threshold=threshold)]
        _predicted, merged = self.run_steps(steps, feedback, spec.env)
        try:
            _load_on_completion(heatmap, candidates, threshold, context)
        except results.ResultsError as exc:
            raise QgsProcessingException(str(exc)) from None
        return {"STORE": store, "HEATMAP": heatmap, "CANDIDATES": candidates,
                "CANDIDATE_COUNT": merged.get("candidates"), "SCORED": merged.get("scored")}


def _load_on_completion(heatmap, candidates, threshold, context) -> dict:
    """Style the files (the styles are saved with them) and hand the styled, filtered layers to Processing, which
    adds them to the project when the algorithm has finished. ResultsError if a file is not a result file."""
    layers = {}
    if heatmap:
        layers["heatmap"] = results.load_heatmap(heatmap, settings.value("results/heatmap_floor"))
    if candidates:
        layers["candidates"] = results.load_candidates(candidates, threshold)
    for key, output in (("candidates", "CANDIDATES"), ("heatmap", "HEATMAP")):
        if key in layers:
            context.temporaryLayerStore().addMapLayer(layers[key])
            context.addLayerToLoadOnCompletion(layers[key].id(), QgsProcessingContext.LayerDetails(
                layers[key].name(), context.project(), output))
    return layers


class LoadResultsAlgorithm(BackendAlgorithm):
    def name(self):
        return "loadresults"

    def displayName(self):  # noqa: N802
        return "Load results (heatmap and candidates)"

    def shortHelpString(self):  # noqa: N802
        return ("Adds a heatmap GeoTIFF and a candidates GeoPackage to the project, styled (the styles are saved "
                "with the files), the candidates filtered at THRESHOLD.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("HEATMAP", "Heatmap (GeoTIFF)", QgsProcessingParameterFile.File,
                                                     "tif", None, True))
        self.addParameter(QgsProcessingParameterFile("CANDIDATES", "Candidates (GeoPackage)",
                                                     QgsProcessingParameterFile.File, "gpkg", None, True))
        self.addParameter(_float("THRESHOLD", "Candidate threshold", settings.value("results/threshold"), 0.0, 1.0))
        self.addOutput(QgsProcessingOutputRasterLayer("HEATMAP_LAYER", "Heatmap"))
        self.addOutput(QgsProcessingOutputVectorLayer("CANDIDATES_LAYER", "Candidates"))
        self.addOutput(QgsProcessingOutputNumber("CANDIDATE_COUNT", "Candidates at or above the threshold"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        heatmap = self.parameterAsFile(parameters, "HEATMAP", context) or None
        candidates = self.parameterAsFile(parameters, "CANDIDATES", context) or None
        threshold = self.parameterAsDouble(parameters, "THRESHOLD", context)
        if not heatmap and not candidates:
            raise QgsProcessingException("give a heatmap, a candidates GeoPackage, or both")
        try:
            layers = _load_on_completion(heatmap, candidates, threshold, context)
        except results.ResultsError as exc:
            raise QgsProcessingException(str(exc)) from None
        count = results.count(layers["candidates"]) if candidates else None
        if count == 0:
            feedback.pushWarning(f"no candidates at or above {threshold}")
        return {"HEATMAP_LAYER": heatmap, "CANDIDATES_LAYER": candidates, "CANDIDATE_COUNT": count}


class ExportReviewAlgorithm(BackendAlgorithm):
    KINDS = commands.EXPORT_KINDS

    def name(self):
        return "exportreview"

    def displayName(self):  # noqa: N802
        return "Export reviewed candidates"

    def shortHelpString(self):  # noqa: N802
        return ("Writes a reviewed candidates GeoPackage for OSM editing or training: osm (the confirmed towers for "
                "JOSM, never uploaded by itself), osm-reference (the candidate squares, upload=never), overlay (the "
                "seed's GeoJSON bands), maproulette and maproulette-cooperative (line-by-line GeoJSON), "
                "tasking-manager (a folder: AOI, task polygons, priority areas), labels (review labels for "
                "`dataset --extra-labels`). osm and maproulette-cooperative leave out towers within 30 m of one OSM "
                "has: checked against the candidates' last conflation, or the OSM data given; candidates never "
                "conflated are refused unless near duplicates are included.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("CANDIDATES", "Candidates GeoPackage",
                                                     QgsProcessingParameterFile.File, "gpkg"))
        self.addParameter(QgsProcessingParameterEnum("FORMAT", "Export", list(self.KINDS), False, 0))
        for key, label in (("COMMENT", "Changeset comment"), ("SOURCE", "Changeset source (the imagery)"),
                           ("HASHTAGS", "Changeset hashtags")):
            self.addParameter(QgsProcessingParameterString(key, label, settings.value(f"review/{key.lower()}"),
                                                           False, True))
        self.addParameter(QgsProcessingParameterFile("OSM", "OSM data to leave out towers OSM has (empty: the "
                                                     "candidates' conflation)", QgsProcessingParameterFile.File,
                                                     None, None, True))
        self.addParameter(QgsProcessingParameterBoolean("INCLUDE_NEAR_DUPLICATES", "Include towers OSM may have "
                                                        "already (unchecked)", False))
        self.addParameter(QgsProcessingParameterString("OUTPUT", "Output file (a folder for tasking-manager)"))
        self.addOutput(QgsProcessingOutputString("MESSAGE", "Summary"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        kind = self.KINDS[self.parameterAsEnum(parameters, "FORMAT", context)]
        out = self.parameterAsString(parameters, "OUTPUT", context)
        tags = {key.lower(): self.parameterAsString(parameters, key, context) or None
                for key in ("COMMENT", "SOURCE", "HASHTAGS")}
        try:
            args = commands.export_args(kind, self.parameterAsFile(parameters, "CANDIDATES", context), out, **tags,
                                        osm=self.parameterAsFile(parameters, "OSM", context) or None,
                                        include_near_duplicates=self.parameterAsBool(
                                            parameters, "INCLUDE_NEAR_DUPLICATES", context))
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        [result] = self.run_steps([args], feedback)
        return {"OUTPUT": out, "MESSAGE": str(result.get("message", ""))}


class ConflateAlgorithm(BackendAlgorithm):
    def name(self):
        return "conflate"

    def displayName(self):  # noqa: N802
        return "Conflate candidates with OSM"

    def shortHelpString(self):  # noqa: N802
        return ("Marks candidates with a mapped power tower, pole or portal within the duplicate distance of their "
                "tower point as already mapped (human decisions are kept), flags new towers on a mapped line, and "
                "mapped towers 30-100 m off that nothing else explains as possibly misplaced. OSM data: a .osm.pbf, "
                ".osm, GeoJSON or Overpass JSON file, or, left empty, Overpass asked through QGIS's networking.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("CANDIDATES", "Candidates GeoPackage",
                                                     QgsProcessingParameterFile.File, "gpkg"))
        self.addParameter(QgsProcessingParameterFile("OSM", "OSM data (empty: Overpass)",
                                                     QgsProcessingParameterFile.File, None, None, True))
        self.addParameter(_float("DUPLICATE_DISTANCE", "Duplicate distance from the tower point (m)",
                                 settings.value("review/duplicate_m"), 0.1, 100.0))
        self.addOutput(QgsProcessingOutputString("MESSAGE", "Summary"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from .review import ReviewError
        from .review_exports import fetch_overpass

        candidates = self.parameterAsFile(parameters, "CANDIDATES", context)
        source = self.parameterAsFile(parameters, "OSM", context)
        if not source:
            try:
                source = fetch_overpass(results.open_candidates(candidates).extent())
            except (ReviewError, results.ResultsError) as exc:
                raise QgsProcessingException(str(exc)) from None
            feedback.pushInfo(f"OSM power features from Overpass saved in {source}")
        args = commands.conflate_args(candidates, source,
                                      duplicate_m=self.parameterAsDouble(parameters, "DUPLICATE_DISTANCE", context))
        [result] = self.run_steps([args], feedback)
        return {"MESSAGE": str(result.get("message", ""))}


class TowerDetectorProvider(QgsProcessingProvider):
    def id(self):
        return "towerdetector"

    def name(self):
        return "Tower Detector"

    def icon(self):
        return QIcon(ICON)

    def loadAlgorithms(self):  # noqa: N802
        for algorithm in (TileCountAlgorithm(), BuildDatasetAlgorithm(), TrainAlgorithm(), PredictAlgorithm(),
                          LoadResultsAlgorithm(), ExportReviewAlgorithm(), ConflateAlgorithm()):
            self.addAlgorithm(algorithm)
