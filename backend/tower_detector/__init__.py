"""Tower Detector backend: tile covers, imagery, datasets, training, inference and results."""

__version__ = "0.1.0"
