"""towerdetector:train: trains the tile classifier on a training data folder, afresh or from a model."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
)

from ..core import commands
from ..core.parameters import (
    BACKBONE,
    BATCH_SIZE,
    DATA,
    EPOCHS_FINE,
    EPOCHS_TOP,
    IMAGE_SIZE,
    INIT,
    MODEL_OUT,
    PARAMS,
    WEIGHTS,
    WEIGHTS_FILE,
)
from ..i18n import tr
from .algorithm import CliAlgorithm, choice_parameter, number_parameter, with_help

NUMBERS = (IMAGE_SIZE, EPOCHS_TOP, EPOCHS_FINE, BATCH_SIZE)


class TrainAlgorithm(CliAlgorithm):
    WEIGHT_OPTIONS = (*WEIGHTS.choices, "file")  # "file": the WEIGHTS_FILE below

    def name(self):
        return "train"

    def displayName(self):
        return tr("Train the tower classifier")

    def shortHelpString(self):
        return tr("Trains the tile classifier (Xception, or a smaller backbone) on a training data folder, afresh or "
                  "from a model (Start from model); it resumes when run again with the same output folder. 0 in a "
                  "number means the backend's default.")

    def initAlgorithm(self, config=None):
        self.addParameter(with_help(QgsProcessingParameterFile("DATA", tr("Training data folder"),
                                                               QgsProcessingParameterFile.Folder), DATA))
        self.addParameter(with_help(QgsProcessingParameterFile("INIT", tr(INIT.label),
                                                               QgsProcessingParameterFile.Folder, optional=True), INIT))
        self.addParameter(choice_parameter(WEIGHTS, self.WEIGHT_OPTIONS))
        self.addParameter(choice_parameter(BACKBONE))
        self.addParameter(with_help(QgsProcessingParameterFile("WEIGHTS_FILE", tr("Weights file (Start weights: file)"),
                                                               QgsProcessingParameterFile.File, "h5", None, True),
                                    WEIGHTS_FILE))
        self.addParameter(with_help(QgsProcessingParameterFile("PARAMS", tr("Hyperparameters (JSON)"),
                                                               QgsProcessingParameterFile.File, "json", None, True),
                                    PARAMS))
        for param in NUMBERS:
            self.addParameter(number_parameter(param))
        self.addParameter(with_help(QgsProcessingParameterFolderDestination("OUTPUT", tr("Model folder")), MODEL_OUT))
        self.addOutput(QgsProcessingOutputNumber("ROC_AUC", tr("Test ROC AUC")))
        self.addOutput(QgsProcessingOutputNumber("THRESHOLD", tr("Recommended threshold (Youden)")))

    def processAlgorithm(self, parameters, context, feedback):
        weights = self.WEIGHT_OPTIONS[self.parameterAsEnum(parameters, WEIGHTS.name, context)]
        if weights == "file":
            weights = self.parameterAsFile(parameters, "WEIGHTS_FILE", context)
            if not weights:
                raise QgsProcessingException(tr("Start weights is 'file' but no weights file is given"))
        out = self.parameterAsString(parameters, "OUTPUT", context)
        numbers = {p.key: self.optional_int(self.parameterAsInt(parameters, p.name, context)) for p in NUMBERS}
        backbone = BACKBONE.choices[self.parameterAsEnum(parameters, BACKBONE.name, context)]
        args = commands.train_args(self.parameterAsFile(parameters, "DATA", context), out, weights=weights,
                                   params=self.parameterAsFile(parameters, "PARAMS", context) or None,
                                   backbone=None if backbone == BACKBONE.default else backbone,
                                   init=self.parameterAsFile(parameters, "INIT", context) or None, **numbers)
        [result] = self.run_steps([args], feedback)
        return {"OUTPUT": out, "ROC_AUC": result.get("roc_auc"),
                "THRESHOLD": (result.get("thresholds") or {}).get("youden")}
