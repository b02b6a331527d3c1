"""towerdetector:tilecount: the zoom-18 tiles that cover an area, with its km² and a time and cost estimate."""

from dataclasses import replace

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
)

from ..core import area_geometry, commands, estimates, runner, settings
from ..core.parameters import ZOOM
from ..i18n import tr
from .algorithm import CliAlgorithm, area_parameter, int_parameter, number_parameter


class TileCountAlgorithm(CliAlgorithm):
    def name(self):
        return "tilecount"

    def displayName(self):
        return tr("Count zoom-18 tiles of an area")

    def shortHelpString(self):
        return tr("The exact number of tiles that cover the area (tower-detector tiles), its km² and a time and cost "
                  "estimate. Without a backend, an estimate from the area (EXACT is 0). Fails above MAX_TILES.")

    def initAlgorithm(self, config=None):
        self.addParameter(area_parameter())
        self.addParameter(number_parameter(replace(ZOOM, minimum=1, maximum=22)))  # any zoom's tiles can be counted
        self.addParameter(int_parameter("MAX_TILES", tr("Refuse above this many tiles (0: the Settings limit)"), 0,
                                        optional=True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", tr("Tile cover (.json runs or .txt ids)"),
                                                                "JSON (*.json);;Text (*.txt)", None, True, False))
        for name, description in (("COUNT", tr("Tiles")), ("AREA_KM2", tr("Area (km²)")),
                                  ("EXACT", tr("1 if counted exactly")),
                                  ("LOCAL_HOURS", tr("Estimated local CPU hours")),
                                  ("REMOTE_USD", tr("Estimated AWS $"))):
            self.addOutput(QgsProcessingOutputNumber(name, description))
        self.addOutput(QgsProcessingOutputString("AREA_FILE", tr("Area GeoJSON (EPSG:4326)")))

    def processAlgorithm(self, parameters, context, feedback):
        path, geom = self.area_file(parameters, "AREA", context, feedback)
        zoom = self.parameterAsInt(parameters, ZOOM.name, context)
        limit = self.parameterAsInt(parameters, "MAX_TILES", context) or settings.value("area/max_tiles")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context) or None
        try:
            settings.configured_cli()
        except runner.CliNotFound as exc:
            feedback.pushWarning(tr("{reason}; estimating from the area instead").format(reason=exc))
            count, exact = area_geometry.estimate_tiles(geom, zoom, context.transformContext()), 0
            if count > limit:
                raise QgsProcessingException(tr("about {n:,} tiles, over the limit of {limit:,}")
                                             .format(n=count, limit=limit)) from None
        else:
            [result] = self.run_steps([commands.tiles_args(path, zoom, out=out, max_tiles=limit)], feedback)
            count, exact = int(result["count"]), 1
        level, text = estimates.limit_check(count)
        if level == "warn":
            feedback.pushWarning(text)
        cost = estimates.estimate_cost(count)
        return {"COUNT": count, "EXACT": exact, "AREA_KM2": area_geometry.area_km2(geom, context.transformContext()),
                "LOCAL_HOURS": cost.local_hours, "REMOTE_USD": cost.usd, "AREA_FILE": path, "OUTPUT": out}
