"""CliTask: runs one or more tower-detector commands in a QgsTask, so QGIS stays responsive.

Why subprocess in the task thread and not QProcess: QgsTask.run() executes in a worker thread with no Qt event
loop, where a QProcess would need one to deliver its output; and Qt 5's QProcess cannot start the child in its
own process group/session, which cancelling needs to reach the backend's own children. subprocess.Popen with
start_new_session gives both, and its blocking reads are exactly what a worker thread is for.
"""

from dataclasses import dataclass, field

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from . import runner

LOG_TAG = "Tower Detector"


@dataclass
class TaskEnd:
    """How a CliTask ended; what done() carries, since QGIS deletes the task itself right after."""

    ok: bool  # every step succeeded
    canceled: bool
    reason: str  # one line: why not ok ("" when ok)
    results: list = field(default_factory=list)  # a RunResult per step that ran

    @property
    def outcome(self):
        return self.results[-1] if self.results else None

    @property
    def result(self) -> dict:
        """The last step's result event ({} if none)."""
        return (self.outcome.result or {}) if self.outcome else {}


class CliTask(QgsTask):
    """Run `steps` (argument lists) one after the other; stop at the first that fails.

    Signals (queued to the main thread): eventReceived(dict) for every event; done(TaskEnd) once the task has
    ended, however it ended. QGIS deletes the task after that: keep the TaskEnd, not the task.
    """

    eventReceived = pyqtSignal(dict)
    done = pyqtSignal(object)

    def __init__(self, title: str, steps: list, cli: runner.Cli, env: dict = None):
        # QGIS 3.26+ has Silent: no OS notification, since the job manager says how each job ended
        flags = QgsTask.CanCancel
        if hasattr(QgsTask, "Silent"):
            flags |= QgsTask.Silent
        super().__init__(title, flags)
        self.title = title
        self.steps = [list(step) for step in steps]
        self.cli = cli
        self.env = dict(env or {})
        self.results: list[runner.RunResult] = []
        self.start_error = None  # an OSError starting the CLI, as one line

    @property
    def outcome(self):
        return self.results[-1] if self.results else None

    def run(self) -> bool:
        """True when every step succeeded, or when the user cancelled: a cancel is no failure, and QGIS would
        announce a False as "Task failed" (the TaskEnd says canceled)."""
        try:
            return self._run_steps()
        finally:  # the job manager wrote progress into the description; QGIS's "Task complete" names the task
            self.setDescription(self.title)

    def _run_steps(self) -> bool:
        n = len(self.steps)
        for i, args in enumerate(self.steps):
            if self.isCanceled():
                return True

            def on_event(event, i=i):
                progress = runner.step_progress(event, i, n)
                if progress is not None:
                    self.setProgress(progress)
                elif event.get("event") == "log":
                    QgsMessageLog.logMessage(f"{self.description()}: {event.get('message', '')}", LOG_TAG, Qgis.Info)
                self.eventReceived.emit(event)

            QgsMessageLog.logMessage(f"{self.description()}: {' '.join(self.cli.argv(args))}", LOG_TAG, Qgis.Info)
            try:
                result = runner.run(self.cli, args, env=self.env, on_event=on_event, is_canceled=self.isCanceled)
            except OSError as exc:
                self.start_error = f"could not start {self.cli.command[0]}: {exc}"
                return False
            self.results.append(result)
            if result.canceled:
                return True
            if not result.ok:
                if result.stderr.strip() and not result.canceled:
                    QgsMessageLog.logMessage(f"{self.description()} failed; tower-detector stderr:\n{result.stderr}",
                                             LOG_TAG, Qgis.Critical)
                return False
            self.setProgress(100.0 * (i + 1) / n)
        return True

    def finished(self, result: bool):  # main thread, however run() ended
        ok = bool(result) and not self.isCanceled() and len(self.results) == len(self.steps) and all(
            r.ok for r in self.results)
        self.done.emit(TaskEnd(ok, self.isCanceled(), "" if ok else self.reason(), list(self.results)))

    def reason(self) -> str:
        """One line saying why the task did not succeed."""
        if self.start_error:
            return self.start_error
        if self.outcome is None:
            return "cancelled" if self.isCanceled() else "did not run"
        return self.outcome.reason()
