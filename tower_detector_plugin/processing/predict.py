"""towerdetector:predict: scores every tile of an area, then writes and loads the heatmap and candidates."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterString,
)

from ..core import commands, result_layers, settings
from ..core.parameters import BATCH_SIZE, CHECKPOINT_EVERY, MODEL, VIEWS, WORKERS
from ..i18n import tr
from .algorithm import (
    CliAlgorithm,
    area_parameter,
    choice_parameter,
    float_parameter,
    imagery_parameters,
    load_on_completion,
    number_parameter,
    with_help,
)

NUMBERS = (WORKERS, CHECKPOINT_EVERY, BATCH_SIZE)


class PredictAlgorithm(CliAlgorithm):
    def name(self):
        return "predict"

    def displayName(self):
        return tr("Predict towers over an area")

    def shortHelpString(self):
        return tr("Scores every zoom-18 tile of the area into a results store (checkpointed: run it again to resume), "
                  "then writes the heatmap GeoTIFF and the candidates GeoPackage, styled. THRESHOLD -1 takes the "
                  "model's recommended (Youden) threshold.")

    def initAlgorithm(self, config=None):
        self.addParameter(with_help(QgsProcessingParameterFile("MODEL", tr("Model folder"),
                                                               QgsProcessingParameterFile.Folder), MODEL))
        for param in imagery_parameters():
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterString("IMAGERY_NAME", tr("Imagery name, the OSM changeset's source "
                                                          "(e.g. Esri World Imagery)"), None, False, True))
        self.addParameter(area_parameter())
        self.addParameter(float_parameter("THRESHOLD", tr("Candidate threshold (-1: the model's)"), -1.0, -1.0, 1.0))
        for param in NUMBERS:
            self.addParameter(number_parameter(param))
        self.addParameter(choice_parameter(VIEWS))
        self.addParameter(QgsProcessingParameterFolderDestination("STORE", tr("Results store folder")))
        self.addParameter(QgsProcessingParameterFileDestination("HEATMAP", tr("Heatmap"), "GeoTIFF (*.tif)"))
        self.addParameter(QgsProcessingParameterFileDestination("CANDIDATES", tr("Candidates"), "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputNumber("CANDIDATE_COUNT", tr("Candidates")))
        self.addOutput(QgsProcessingOutputNumber("SCORED", tr("Tiles scored")))

    def processAlgorithm(self, parameters, context, feedback):
        model = self.parameterAsFile(parameters, "MODEL", context)
        spec = self.imagery(parameters, context)
        path, _geom = self.area_file(parameters, "AREA", context, feedback)
        views = VIEWS.choices[self.parameterAsEnum(parameters, VIEWS.name, context)]
        threshold = self.parameterAsDouble(parameters, "THRESHOLD", context)
        if threshold < 0:
            threshold = result_layers.recommended_threshold(model, views=views)
        store = self.parameterAsString(parameters, "STORE", context)
        heatmap = self.parameterAsFileOutput(parameters, "HEATMAP", context)
        candidates = self.parameterAsFileOutput(parameters, "CANDIDATES", context)
        numbers = {p.key: self.optional_int(self.parameterAsInt(parameters, p.name, context)) for p in NUMBERS}
        steps = [commands.predict_args(model, spec.spec, store, area=path, **numbers,
                                       max_tiles=settings.value("area/max_tiles"), views=views,
                                       imagery_name=self.parameterAsString(parameters, "IMAGERY_NAME", context)),
                 commands.results_args(store, heatmap=heatmap, candidates=candidates, threshold=threshold)]
        _predicted, merged = self.run_steps(steps, feedback, spec.env)
        try:
            load_on_completion(heatmap, candidates, threshold, context)
        except result_layers.ResultsError as exc:
            raise QgsProcessingException(str(exc)) from None
        return {"STORE": store, "HEATMAP": heatmap, "CANDIDATES": candidates,
                "CANDIDATE_COUNT": merged.get("candidates"), "SCORED": merged.get("scored")}
