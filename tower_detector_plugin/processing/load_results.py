"""towerdetector:loadresults: a heatmap and a candidates GeoPackage added to the project, styled."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterFile,
)

from ..core import result_layers, settings
from ..core.parameters import THRESHOLD
from ..i18n import tr
from .algorithm import CliAlgorithm, load_on_completion, number_parameter


class LoadResultsAlgorithm(CliAlgorithm):
    def name(self):
        return "loadresults"

    def displayName(self):
        return tr("Load results (heatmap and candidates)")

    def shortHelpString(self):
        return tr("Adds a heatmap GeoTIFF and a candidates GeoPackage to the project, styled (the styles are saved "
                  "with the files), the candidates filtered at THRESHOLD.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile("HEATMAP", tr("Heatmap (GeoTIFF)"),
                                                     QgsProcessingParameterFile.File, "tif", None, True))
        self.addParameter(QgsProcessingParameterFile("CANDIDATES", tr("Candidates (GeoPackage)"),
                                                     QgsProcessingParameterFile.File, "gpkg", None, True))
        self.addParameter(number_parameter(THRESHOLD, default=settings.value("results/threshold")))
        self.addOutput(QgsProcessingOutputRasterLayer("HEATMAP_LAYER", tr("Heatmap")))
        self.addOutput(QgsProcessingOutputVectorLayer("CANDIDATES_LAYER", tr("Candidates")))
        self.addOutput(QgsProcessingOutputNumber("CANDIDATE_COUNT", tr("Candidates at or above the threshold")))

    def processAlgorithm(self, parameters, context, feedback):
        heatmap = self.parameterAsFile(parameters, "HEATMAP", context) or None
        candidates = self.parameterAsFile(parameters, "CANDIDATES", context) or None
        threshold = self.parameterAsDouble(parameters, "THRESHOLD", context)
        if not heatmap and not candidates:
            raise QgsProcessingException(tr("give a heatmap, a candidates GeoPackage, or both"))
        try:
            layers = load_on_completion(heatmap, candidates, threshold, context)
        except result_layers.ResultsError as exc:
            raise QgsProcessingException(str(exc)) from None
        count = result_layers.count(layers["candidates"]) if candidates else None
        if count == 0:
            feedback.pushWarning(tr("no candidates at or above {threshold}").format(threshold=threshold))
        return {"HEATMAP_LAYER": heatmap, "CANDIDATES_LAYER": candidates, "CANDIDATE_COUNT": count}
