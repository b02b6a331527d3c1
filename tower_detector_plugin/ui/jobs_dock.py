"""The Jobs panel: the job list, and cancel, run again, the next step, fetch, load results, metrics, open folder and
remove."""

import os

from qgis.core import Qgis
from qgis.PyQt.QtCore import QT_TR_NOOP, Qt, QUrl, pyqtSignal
from qgis.PyQt.QtGui import QColor, QDesktopServices
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.jobs import ACTIVE, JobManager, next_step
from ..i18n import tr

# the table's headers, in English; shown through tr()
COLUMNS = (QT_TR_NOOP("Job"), QT_TR_NOOP("Status"), QT_TR_NOOP("Started"), QT_TR_NOOP("Progress"),
           QT_TR_NOOP("Output"), QT_TR_NOOP("Message"))
VERDICT_COLOURS = {"bad": QColor("#ffcdd2"), "warn": QColor("#ffe0b2")}  # finished, but obviously no good


class JobsDock(QDockWidget):
    """Lists the jobs; cancel, open the output folder, load a prediction's results, show a model's metrics."""

    loadResults = pyqtSignal(dict)
    showMetrics = pyqtSignal(str)
    nextStep = pyqtSignal(dict)  # the job whose next step (core/jobs.py next_step) the user asked for

    def __init__(self, manager: JobManager, parent=None):
        super().__init__(tr("Tower Detector jobs"), parent)
        self.setObjectName("TowerDetectorJobsDock")
        self.manager = manager
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([tr(column) for column in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.buttons = {}  # by English name; each shows its translation
        row = QHBoxLayout()
        for name, slot in ((QT_TR_NOOP("Cancel"), self._cancel), (QT_TR_NOOP("Run again"), self._again),
                           (QT_TR_NOOP("Next step"), self._next), (QT_TR_NOOP("Fetch"), self._fetch),
                           (QT_TR_NOOP("Load results"), self._load), (QT_TR_NOOP("Metrics"), self._metrics),
                           (QT_TR_NOOP("Open folder"), self._open), (QT_TR_NOOP("Remove"), self._remove)):
            button = QPushButton(tr(name))
            button.clicked.connect(slot)
            row.addWidget(button)
            self.buttons[name] = button
        row.addStretch(1)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self.table)
        layout.addLayout(row)
        self.setWidget(body)
        manager.changed.connect(lambda _id: self.refresh())
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.refresh()

    def refresh(self):
        selected = self.selected_id()
        jobs = list(reversed(self.manager.store.jobs))  # newest first
        self.table.setRowCount(len(jobs))
        for r, job in enumerate(jobs):
            out = job.get("out", "")
            values = (job.get("title", job.get("kind", "")), job.get("status", ""), job.get("started", ""),
                      f"{job.get('progress', 0):.0f} %", os.path.basename(out.rstrip("/\\")) or out,
                      job.get("message", ""))
            for c, text in enumerate(values):
                item = QTableWidgetItem(str(text))
                item.setData(Qt.UserRole, job["id"])
                if c == 0:
                    item.setToolTip("\n".join(job.get("commands", [])))
                elif c == 4:
                    item.setToolTip(out)  # the name shows, the whole path here
                elif c == len(values) - 1:
                    item.setToolTip(str(text))  # the whole message, however narrow the column
                if job.get("verdict") in VERDICT_COLOURS:
                    item.setBackground(VERDICT_COLOURS[job["verdict"]])
                self.table.setItem(r, c, item)
            if job["id"] == selected:
                self.table.selectRow(r)
        self._update_buttons()

    def selected_id(self):
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.table.item(rows[0].row(), 0).data(Qt.UserRole) if rows else None

    def selected_job(self):
        job_id = self.selected_id()
        return self.manager.store.get(job_id) if job_id else None

    def _update_buttons(self):
        job = self.selected_job() or {}
        done = job.get("status") == "finished"
        self.buttons["Cancel"].setEnabled(job.get("status") in ACTIVE)
        self.buttons["Run again"].setEnabled(bool(job) and job.get("status") not in ACTIVE
                                             and not job.get("kind", "").startswith("remote"))
        self.buttons["Run again"].setToolTip(tr("Run the same commands again: a stopped or failed prediction, "
                                                "dataset or training resumes where it stopped"))
        step = next_step(job) if job else None
        self.buttons["Next step"].setEnabled(step is not None)
        self.buttons["Next step"].setText(tr(step[0]) if step else tr("Next step"))
        self.buttons["Fetch"].setEnabled(job.get("kind") == "remote-submit" and bool(job.get("remote", {}).get("name")))
        self.buttons["Load results"].setEnabled(done and bool(job.get("outputs", {}).get("heatmap")
                                                              or job.get("outputs", {}).get("candidates")))
        self.buttons["Metrics"].setEnabled(done and bool(job.get("outputs", {}).get("model")))
        self.buttons["Open folder"].setEnabled(bool(job.get("out")) and os.path.isdir(job.get("out", "")))
        self.buttons["Remove"].setEnabled(bool(job) and job.get("status") not in ACTIVE)

    def _cancel(self):
        if self.selected_id():
            self.manager.cancel(self.selected_id())

    def _again(self):
        if self.selected_id():
            try:
                self.manager.run_again(self.selected_id())
            except ValueError as exc:
                if self.manager.iface is not None:
                    self.manager.iface.messageBar().pushMessage(tr("Tower Detector"), str(exc), level=Qgis.Warning,
                                                                duration=8)

    def _next(self):
        if self.selected_job():
            self.nextStep.emit(self.selected_job())

    def _fetch(self):
        if self.selected_id():
            self.manager.fetch_remote(self.selected_id())

    def _load(self):
        if self.selected_job():
            self.loadResults.emit(self.selected_job())

    def _metrics(self):
        if self.selected_job():
            self.showMetrics.emit(self.selected_job()["outputs"]["model"])

    def _open(self):
        if self.selected_job():
            QDesktopServices.openUrl(QUrl.fromLocalFile(self.selected_job()["out"]))

    def _remove(self):
        if self.selected_id():
            self.manager.remove(self.selected_id())
