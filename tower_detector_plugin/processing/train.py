"""towerdetector:train: trains the Xception tile classifier on a training data folder."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
)

from ..core import commands
from .algorithm import CliAlgorithm, int_parameter


class TrainAlgorithm(CliAlgorithm):
    WEIGHTS = ("imagenet", "none", "file")

    def name(self):
        return "train"

    def displayName(self):
        return "Train the tower classifier"

    def shortHelpString(self):
        return ("Trains the Xception tile classifier on a training data folder (two phases; resumes when run again "
                "with the same output folder). 0 in a number means the backend's default.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile("DATA", "Training data folder",
                                                     QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterEnum("WEIGHTS", "Start weights", list(self.WEIGHTS), False, 0))
        self.addParameter(QgsProcessingParameterFile("WEIGHTS_FILE", "Weights file (Start weights: file)",
                                                     QgsProcessingParameterFile.File, "h5", None, True))
        self.addParameter(QgsProcessingParameterFile("PARAMS", "Hyperparameters (JSON)",
                                                     QgsProcessingParameterFile.File, "json", None, True))
        for name, description in (("IMAGE_SIZE", "Image size (px)"), ("EPOCHS_TOP", "Epochs, new top"),
                                  ("EPOCHS_FINE", "Epochs, fine-tuning"), ("BATCH_SIZE", "Batch size")):
            self.addParameter(int_parameter(name, description, 0, optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Model folder"))
        self.addOutput(QgsProcessingOutputNumber("ROC_AUC", "Test ROC AUC"))
        self.addOutput(QgsProcessingOutputNumber("THRESHOLD", "Recommended threshold (Youden)"))

    def processAlgorithm(self, parameters, context, feedback):
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
