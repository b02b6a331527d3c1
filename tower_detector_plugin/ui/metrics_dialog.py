"""A model's metrics.json as a table, its ROC and score plots, and its card (MODEL_CARD.md)."""

import os

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QPixmap
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
)

from ..core.result_layers import metric_rows, model_verdict, read_metrics
from ..i18n import tr
from .widgets import add_help

CARD = "MODEL_CARD.md"  # written by train beside metrics.json: data, recipe, figures with their uncertainty, limits
VERDICT_STYLES = {"ok": "color: #2e7d32;", "warn": "color: #e65100; font-weight: bold;",
                  "bad": "color: #c62828; font-weight: bold;"}


class MetricsDialog(QDialog):
    """metrics.json as a table, and the ROC and score-distribution plots."""

    def __init__(self, model_dir: str, parent=None):
        super().__init__(parent)
        self.setObjectName("TowerDetectorMetrics")
        self.setWindowTitle(tr("Model metrics: {model_dir}").format(model_dir=model_dir))
        metrics = read_metrics(model_dir)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels((tr("metric"), tr("value")))
        for name, text in metric_rows(metrics):
            r = self.table.rowCount()
            self.table.insertRow(r)
            self.table.setItem(r, 0, QTableWidgetItem(name))
            self.table.setItem(r, 1, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        tabs = QTabWidget()
        tabs.addTab(self.table, tr("Metrics"))
        self.plots = {}
        for filename, title in (("roc.png", tr("ROC curve")), ("scores.png", tr("Scores"))):
            label = QLabel()
            label.setAlignment(Qt.AlignCenter)
            path = os.path.join(model_dir, filename)
            pixmap = QPixmap(path) if os.path.isfile(path) else QPixmap()
            if pixmap.isNull():
                label.setText(tr("{file} not found in the model directory").format(file=filename))
            else:
                label.setPixmap(pixmap.scaled(640, 480, Qt.KeepAspectRatio, Qt.SmoothTransformation))
            self.plots[filename] = label
            scroll = QScrollArea()
            scroll.setWidget(label)
            scroll.setWidgetResizable(True)
            tabs.addTab(scroll, title)
        self.card = QTextBrowser()
        card = os.path.join(model_dir, CARD)
        if os.path.isfile(card):
            with open(card, encoding="utf-8") as f:
                self.card.setMarkdown(f.read())
        else:
            self.card.setPlainText(tr("{file} not found: the model was trained before models had cards")
                                   .format(file=CARD))
        tabs.insertTab(0, self.card, tr("Model card"))
        tabs.setCurrentIndex(0)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        add_help(buttons, "metrics")
        buttons.rejected.connect(self.reject)
        verdict = model_verdict(metrics)  # red or amber when the model is no better than chance
        self.verdict = QLabel(verdict.text)
        self.verdict.setWordWrap(True)
        self.verdict.setStyleSheet(VERDICT_STYLES[verdict.level])
        layout = QVBoxLayout(self)
        layout.addWidget(self.verdict)
        layout.addWidget(tabs)
        layout.addWidget(buttons)
        self.resize(700, 560)
