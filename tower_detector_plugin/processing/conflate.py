"""towerdetector:conflate: candidates compared with the towers and lines OSM already maps."""

from qgis.core import QgsProcessingException, QgsProcessingOutputString, QgsProcessingParameterFile

from ..core import commands, result_layers, settings
from ..core.overpass import fetch_overpass
from ..core.parameters import DUPLICATE_DISTANCE
from ..core.review_session import ReviewError
from ..i18n import tr
from .algorithm import CliAlgorithm, number_parameter


class ConflateAlgorithm(CliAlgorithm):
    def name(self):
        return "conflate"

    def displayName(self):
        return tr("Conflate candidates with OSM")

    def shortHelpString(self):
        return tr("Marks candidates with a mapped power tower, pole or portal within the duplicate distance of their "
                  "tower point as already mapped (human decisions are kept), flags new towers on a mapped line, and "
                  "mapped towers 30-100 m off that nothing else explains as possibly misplaced. OSM data: a .osm.pbf, "
                  ".osm, GeoJSON or Overpass JSON file, or, left empty, Overpass asked through QGIS's networking.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile("CANDIDATES", tr("Candidates GeoPackage"),
                                                     QgsProcessingParameterFile.File, "gpkg"))
        self.addParameter(QgsProcessingParameterFile("OSM", tr("OSM data (empty: Overpass)"),
                                                     QgsProcessingParameterFile.File, None, None, True))
        self.addParameter(number_parameter(DUPLICATE_DISTANCE, default=settings.value("review/duplicate_m")))
        self.addOutput(QgsProcessingOutputString("MESSAGE", tr("Summary")))

    def processAlgorithm(self, parameters, context, feedback):
        candidates = self.parameterAsFile(parameters, "CANDIDATES", context)
        source = self.parameterAsFile(parameters, "OSM", context)
        if not source:
            try:
                source = fetch_overpass(result_layers.open_candidates(candidates).extent())
            except (ReviewError, result_layers.ResultsError) as exc:
                raise QgsProcessingException(str(exc)) from None
            feedback.pushInfo(tr("OSM power features from Overpass saved in {file}").format(file=source))
        args = commands.conflate_args(candidates, source,
                                      duplicate_m=self.parameterAsDouble(parameters, DUPLICATE_DISTANCE.name, context))
        [result] = self.run_steps([args], feedback)
        return {"MESSAGE": str(result.get("message", ""))}
