"""towerdetector:exportreview: reviewed candidates written for OSM editing or for training."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
)

from ..core import commands, settings
from ..core.parameters import DUPLICATE_DISTANCE
from ..i18n import tr
from .algorithm import CliAlgorithm


class ExportReviewAlgorithm(CliAlgorithm):
    KINDS = commands.EXPORT_KINDS

    def name(self):
        return "exportreview"

    def displayName(self):
        return tr("Export reviewed candidates")

    def shortHelpString(self):
        return tr("Writes a reviewed candidates GeoPackage for OSM editing or training: osm (the confirmed towers "
                  "for JOSM, never uploaded by itself), osm-reference (the candidate squares, upload=never), overlay "
                  "(the original project's GeoJSON bands), maproulette and maproulette-cooperative (line-by-line "
                  "GeoJSON), tasking-manager (a folder: AOI, task polygons, priority areas), labels (review labels "
                  "for `dataset --extra-labels`). osm and maproulette-cooperative leave out towers within {m:g} m of "
                  "one OSM has: checked against the candidates' last conflation, or the OSM data given; candidates "
                  "never conflated are refused unless near duplicates are included.").format(
                      m=DUPLICATE_DISTANCE.default)

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile("CANDIDATES", tr("Candidates GeoPackage"),
                                                     QgsProcessingParameterFile.File, "gpkg"))
        self.addParameter(QgsProcessingParameterEnum("FORMAT", tr("Export"), list(self.KINDS), False, 0))
        for key, label in (("COMMENT", tr("Changeset comment")), ("SOURCE", tr("Changeset source (the imagery)")),
                           ("HASHTAGS", tr("Changeset hashtags"))):
            self.addParameter(QgsProcessingParameterString(key, label, settings.value(f"review/{key.lower()}"),
                                                           False, True))
        self.addParameter(QgsProcessingParameterFile("OSM", tr("OSM data to leave out towers OSM has (empty: the "
                                                        "candidates' conflation)"), QgsProcessingParameterFile.File,
                                                     None, None, True))
        self.addParameter(QgsProcessingParameterBoolean("INCLUDE_NEAR_DUPLICATES", tr("Include towers OSM may "
                                                                                         "have already (unchecked)"),
                                                        False))
        self.addParameter(QgsProcessingParameterString("OUTPUT", tr("Output file (a folder for tasking-manager)")))
        self.addOutput(QgsProcessingOutputString("MESSAGE", tr("Summary")))

    def processAlgorithm(self, parameters, context, feedback):
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
