"""The Processing provider: the Tower Detector algorithms, for the toolbox, batch mode, models and `qgis_process`.
Each algorithm is a module of this package; what they share is in algorithm.py and the plugin's core."""

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..i18n import tr
from .algorithm import ICON
from .build_dataset import BuildDatasetAlgorithm
from .conflate import ConflateAlgorithm
from .export_review import ExportReviewAlgorithm
from .load_results import LoadResultsAlgorithm
from .predict import PredictAlgorithm
from .tile_count import TileCountAlgorithm
from .train import TrainAlgorithm


class TowerDetectorProvider(QgsProcessingProvider):
    def id(self):
        return "towerdetector"

    def name(self):
        return tr("Tower Detector")

    def icon(self):
        return QIcon(ICON)

    def loadAlgorithms(self):
        for algorithm in (TileCountAlgorithm(), BuildDatasetAlgorithm(), TrainAlgorithm(), PredictAlgorithm(),
                          LoadResultsAlgorithm(), ExportReviewAlgorithm(), ConflateAlgorithm()):
            self.addAlgorithm(algorithm)
