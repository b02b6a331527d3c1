"""What the Tower Detector algorithms share: running CLI commands with Processing's feedback, the area and imagery
inputs, and handing styled result layers to the project.

Algorithms run the CLI like the dialogs do (core/commands.py builds the arguments), synchronously in Processing's
own worker thread: feedback gets the progress and log lines, and cancelling it ends the CLI's process tree.
"""

import os

from qgis.core import (
    QgsGeometry,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)
from qgis.PyQt.QtGui import QIcon

from ..core import area_geometry, imagery_sources, result_layers, runner, settings
from ..core.parameters import AREA, IMAGERY
from ..i18n import tr

ICON = ":/plugins/tower_detector/icon.svg"


class CliAlgorithm(QgsProcessingAlgorithm):
    """A Processing algorithm that runs tower-detector commands; subclasses add the parameters and the steps."""

    def group(self):
        return ""  # straight under the provider, which is already called Tower Detector

    def groupId(self):
        return ""

    def icon(self):
        return QIcon(ICON)

    def createInstance(self):
        return type(self)()

    def run_steps(self, steps, feedback, env=None) -> list:
        """Run each step; the result events, or QgsProcessingException with the CLI's one-line reason."""
        try:
            cli = settings.configured_cli()
        except runner.CliNotFound as exc:
            raise QgsProcessingException(str(exc)) from None
        outcomes = []
        for i, args in enumerate(steps):
            feedback.pushCommandInfo(" ".join(cli.argv(args)))

            def on_event(event, i=i):
                progress = runner.step_progress(event, i, len(steps))
                if progress is not None:
                    feedback.setProgress(progress)
                elif event.get("event") == "log":
                    feedback.pushInfo(str(event.get("message", "")))
                elif event.get("event") == "result" and event.get("message"):
                    feedback.pushInfo(str(event["message"]))

            outcome = runner.run(cli, args, env=env, on_event=on_event, is_canceled=feedback.isCanceled)
            if not outcome.ok:
                if outcome.stderr.strip() and not outcome.canceled:
                    feedback.pushConsoleInfo(outcome.stderr)
                raise QgsProcessingException(tr("tower-detector {command}: {reason}").format(command=args[0],
                                                                                             reason=outcome.reason()))
            outcomes.append(outcome.result or {})
        return outcomes

    def area_file(self, parameters, name, context, feedback):
        """The AREA source's polygons, dissolved, in EPSG:4326, as a GeoJSON file in Processing's temp folder."""
        source = self.parameterAsSource(parameters, name, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, name))
        geoms = [f.geometry() for f in source.getFeatures() if f.hasGeometry()]
        if not geoms:
            raise QgsProcessingException(tr("the area layer has no polygons"))
        try:
            geom = area_geometry.to_wgs84(QgsGeometry.unaryUnion(geoms), source.sourceCrs(),
                                          context.transformContext())
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        path = os.path.join(QgsProcessingUtils.tempFolder(), f"area-{self.name()}-{id(feedback)}.geojson")
        return area_geometry.write_area(geom, path), geom

    def imagery(self, parameters, context):
        spec = self.parameterAsString(parameters, "IMAGERY", context)
        authcfg = self.parameterAsString(parameters, "AUTHCFG", context)
        try:
            return imagery_sources.resolve(spec, authcfg)
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None

    @staticmethod
    def optional_int(value):
        return int(value) if value else None  # 0 means "the backend's default"


def number_parameter(param, default=None, optional=None) -> QgsProcessingParameterNumber:
    """The Processing input for a step parameter of core/parameters.py. default: a value to start from instead of
    the definition's (a setting the user chose). A parameter the CLI decides is optional, and 0 stands for "the
    CLI's default" (optional_int turns it into None)."""
    value = param.default if default is None else default
    kind = QgsProcessingParameterNumber.Double if param.decimals else QgsProcessingParameterNumber.Integer
    label = tr(param.label) if value is not None else tr("{label} (0: default)").format(label=tr(param.label))
    number = QgsProcessingParameterNumber(param.name, label, kind, 0 if value is None else value,
                                          value is None if optional is None else optional, param.minimum)
    if param.maximum is not None:
        number.setMaximum(param.maximum)
    number.setHelp(tr(param.help))
    return number


def choice_parameter(param, options=None) -> QgsProcessingParameterEnum:
    """The Processing input for a step parameter with choices; options: the choices and the algorithm's own
    options after them (the default is the definition's)."""
    options = [str(option) for option in (options or param.choices)]
    choice = QgsProcessingParameterEnum(param.name, tr(param.label), options, False,
                                        param.choices.index(param.default))
    choice.setHelp(tr(param.help))
    return choice


def int_parameter(name, description, default, minimum=0, maximum=None, optional=False):
    param = QgsProcessingParameterNumber(name, description, QgsProcessingParameterNumber.Integer, default, optional,
                                         minimum)
    if maximum is not None:
        param.setMaximum(maximum)
    return param


def float_parameter(name, description, default, minimum=0.0, maximum=None):
    param = QgsProcessingParameterNumber(name, description, QgsProcessingParameterNumber.Double, default, False,
                                         minimum)
    if maximum is not None:
        param.setMaximum(maximum)
    return param


def with_help(parameter, definition):
    """parameter with the help of its definition in core/parameters.py (the dialogs' tooltip too)."""
    parameter.setHelp(tr(definition.help))
    return parameter


def area_parameter():
    return with_help(QgsProcessingParameterFeatureSource("AREA", tr("Area (polygons, any CRS)"),
                                                         [QgsProcessing.TypeVectorPolygon]), AREA)


def imagery_parameters():
    return [with_help(QgsProcessingParameterString("IMAGERY", tr("Imagery (XYZ URL template with "
                                                      "${TOWER_DETECTOR_TOKEN}, GeoTIFF/COG, .mbtiles or tile "
                                                      "folder)"),
                                                   settings.value("imagery/spec")), IMAGERY),
            QgsProcessingParameterAuthConfig("AUTHCFG", tr("Imagery token (QGIS authentication config)"),
                                             settings.value("imagery/authcfg"), True)]


def load_on_completion(heatmap, candidates, threshold, context) -> dict:
    """Style the files (the styles are saved with them) and hand the styled, filtered layers to Processing, which
    adds them to the project when the algorithm has finished. ResultsError if a file is not a result file."""
    layers = {}
    if heatmap:
        layers["heatmap"] = result_layers.load_heatmap(heatmap, settings.value("results/heatmap_floor"))
    if candidates:
        layers["candidates"] = result_layers.load_candidates(candidates, threshold)
    for key, output in (("candidates", "CANDIDATES"), ("heatmap", "HEATMAP")):
        if key in layers:
            context.temporaryLayerStore().addMapLayer(layers[key])
            context.addLayerToLoadOnCompletion(layers[key].id(), QgsProcessingContext.LayerDetails(
                layers[key].name(), context.project(), output))
    return layers
