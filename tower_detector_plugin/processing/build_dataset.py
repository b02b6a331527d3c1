"""towerdetector:builddataset: a label-maker-compatible training set for an area."""

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from ..core import commands, settings
from ..core.parameters import (
    BACKGROUND_RATIO,
    BLOCK_SIZE,
    DATASET_OUT,
    SEED,
    SPAN_NEGATIVES,
    TOWER_FILTER,
    TOWERS,
    ZOOM,
)
from ..core.point_export import export_source_points
from ..i18n import tr
from .algorithm import CliAlgorithm, area_parameter, imagery_parameters, number_parameter, with_help


class BuildDatasetAlgorithm(CliAlgorithm):
    def name(self):
        return "builddataset"

    def displayName(self):
        return tr("Build training data")

    def shortHelpString(self):
        return tr("A label-maker-compatible training set (tower and background tiles) for the area, from the imagery "
                  "and tower points: OpenStreetMap (Overpass) when no tower layer is given.")

    def initAlgorithm(self, config=None):
        self.addParameter(area_parameter())
        for param in imagery_parameters():
            self.addParameter(param)
        self.addParameter(with_help(QgsProcessingParameterFeatureSource(
            "TOWERS", tr("Tower points (empty: OpenStreetMap)"), [QgsProcessing.TypeVectorPoint], None, True), TOWERS))
        self.addParameter(with_help(QgsProcessingParameterString(
            "TOWER_FILTER", tr("OSM tag filter (empty: power=tower for OSM, all for a point layer)"), None, False,
            True), TOWER_FILTER))
        for param in (ZOOM, BACKGROUND_RATIO, SPAN_NEGATIVES, BLOCK_SIZE):
            self.addParameter(number_parameter(param))
        self.addParameter(number_parameter(SEED, optional=True))
        self.addParameter(with_help(QgsProcessingParameterFolderDestination("OUTPUT", tr("Training data folder")),
                                    DATASET_OUT))

    def processAlgorithm(self, parameters, context, feedback):
        path, _geom = self.area_file(parameters, "AREA", context, feedback)
        spec = self.imagery(parameters, context)
        out = self.parameterAsString(parameters, "OUTPUT", context)
        tower_filter = self.parameterAsString(parameters, "TOWER_FILTER", context) or None
        towers = "overpass"
        if parameters.get("TOWERS"):
            source = self.parameterAsSource(parameters, "TOWERS", context)
            towers = os.path.join(QgsProcessingUtils.tempFolder(), f"towers-{id(feedback)}.geojson")
            count = export_source_points(source, towers, context.transformContext())
            feedback.pushInfo(tr("{n} tower points exported to {file}").format(n=count, file=towers))
            tower_filter = tower_filter or "all"
        args = commands.dataset_args(
            path, towers, spec.spec, out, zoom=self.parameterAsInt(parameters, ZOOM.name, context),
            background_ratio=self.parameterAsDouble(parameters, BACKGROUND_RATIO.name, context),
            span_negatives=self.parameterAsDouble(parameters, SPAN_NEGATIVES.name, context) or None,  # 0: none
            block_size=self.parameterAsInt(parameters, BLOCK_SIZE.name, context),
            seed=self.parameterAsInt(parameters, SEED.name, context), tower_filter=tower_filter,
            max_tiles=settings.value("area/max_tiles"))
        self.run_steps([args], feedback, spec.env)
        return {"OUTPUT": out}
