"""Jobs: starting backend tasks and remembering them in <work dir>/jobs.json (the Jobs panel is ui/jobs_dock.py).

A job is one CliTask (one or more backend commands). Its record (command lines with ${...} references, never
secret values; status, progress, output paths) is written to jobs.json on every change, so the list survives a
QGIS restart. A job that was running when QGIS stopped is shown as "stopped": the backend resumes it when the
same command runs again.

Remote (AWS) jobs: `remote submit` is a local job whose result names the remote job; a RemotePoller then runs
`tower-detector remote status NAME --events` every POLL_S seconds (QTimer) until the job ends.
"""

import json
import os
import shlex
import threading
import time
import uuid

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import QT_TR_NOOP, QObject, QTimer, pyqtSignal

from ..i18n import tr
from . import commands, result_layers, runner, settings
from .redaction import redact
from .tasks import LOG_TAG, CliTask

ACTIVE = ("queued", "running", "submitted")
REMOTE_DONE = {"SUCCEEDED": "finished", "FAILED": "failed"}  # AWS Batch states that end a job
POLL_S = 60


class JobStore:
    """jobs.json: a list of job records, newest last, written atomically."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self.jobs = []
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    self.jobs = [j for j in json.load(f).get("jobs", []) if isinstance(j, dict) and j.get("id")]
            except (OSError, ValueError) as exc:
                QgsMessageLog.logMessage(f"could not read {path}: {exc}; starting an empty job list", LOG_TAG,
                                         Qgis.Warning)
        for job in self.jobs:  # QGIS stopped while these ran locally
            if job.get("status") in ("queued", "running"):
                job["status"] = "stopped"
                job["message"] = "QGIS closed while it ran; run the same command again to resume"

    def get(self, job_id: str) -> dict:
        return next((j for j in self.jobs if j["id"] == job_id), None)

    def add(self, job: dict) -> dict:
        self.jobs.append(job)
        self.save()
        return job

    def update(self, job_id: str, **fields) -> dict:
        job = self.get(job_id)
        if job is not None:
            job.update(fields)
            self.save()
        return job

    def remove(self, job_id: str) -> None:
        self.jobs = [j for j in self.jobs if j["id"] != job_id]
        self.save()

    def save(self) -> None:
        with self._lock:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                # commands carry ${NAME} references only; redacting the rest (messages, results) is the last check
                f.write(redact(json.dumps({"format": "tower-detector/plugin-jobs", "jobs": self.jobs}, indent=1)))
            os.replace(tmp, self.path)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def next_step(job: dict):
    """(button text, step) of what naturally follows a finished job, or None: a dataset is trained on, a model
    predicts, a prediction's candidates are reviewed. Offered even after a verdict (amber or red): its message
    says what is wrong, and the user decides."""
    if job.get("status") != "finished":
        return None
    outputs, kind = job.get("outputs") or {}, job.get("kind")
    if kind == "dataset" and outputs.get("dataset"):
        return QT_TR_NOOP("Train on this dataset"), "train"
    if kind in ("train", "search", "remote-fetch") and outputs.get("model"):
        return QT_TR_NOOP("Predict with this model"), "predict"
    if outputs.get("candidates"):
        return QT_TR_NOOP("Review the candidates"), "review"
    return None


class JobManager(QObject):
    """Starts jobs as tasks, keeps their records, reports their ends in the message bar (iface may be None)."""

    changed = pyqtSignal(str)  # a job id
    finished = pyqtSignal(str)  # a job id, once it has ended however

    def __init__(self, iface=None, work_dir: str = None, parent=None):
        super().__init__(parent)
        self.iface = iface
        self.store = JobStore(os.path.join(work_dir or settings.work_dir(), "jobs.json"))
        self.tasks = {}  # job id -> CliTask; Python must keep them while QGIS runs them
        self._since = {}  # job id -> (monotonic time, done, stage) at the first progress event of its stage
        self._shown = {}  # job id -> when its progress text was last written
        self.pollers = {}
        self.offer_next_step = None  # the plugin's: offer_next_step(text, step, job, level): text with a button
        for job in self.store.jobs:
            if job.get("status") == "submitted" and job.get("remote"):
                self.poll_remote(job["id"])

    def start(self, kind: str, title: str, steps: list, *, out: str = "", outputs: dict = None, env: dict = None,
              remote: dict = None, authcfg: str = "") -> str:
        """Start a job; returns its id. A missing backend fails the job at once, with the reason. authcfg: the QGIS
        auth config that env's imagery token came from, so that Run again can fetch it again (the record keeps
        the names of env's variables, never their values)."""
        job = self.store.add({
            "id": uuid.uuid4().hex[:12], "kind": kind, "title": title,
            "commands": [shlex.join(step) for step in steps], "status": "queued", "started": _now(), "ended": "",
            "progress": 0.0, "out": out, "outputs": outputs or {}, "message": "", "remote": remote or {},
            "secret_names": sorted(env or {}), "authcfg": authcfg or "",
        })
        try:
            cli = settings.configured_cli()
        except runner.CliNotFound as exc:
            self._end(job["id"], "failed", str(exc))
            return job["id"]
        task = CliTask(f"Tower Detector: {title}", steps, cli, env)
        self.tasks[job["id"]] = task
        task.begun.connect(lambda: self._set(job["id"], status="running"))
        task.progressChanged.connect(lambda p: self._progress(job["id"], p))
        task.eventReceived.connect(lambda event: self._event(job["id"], event))
        task.done.connect(lambda end: self._task_done(job["id"], end))
        QgsApplication.taskManager().addTask(task)
        self.changed.emit(job["id"])
        return job["id"]

    def cancel(self, job_id: str) -> None:
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
        elif job_id in self.pollers:
            self.pollers.pop(job_id).stop()
            self._set(job_id, status="cancelled", message=tr("no longer followed here (the remote job goes on; "
                                                             "`tower-detector remote cancel` stops it)"))

    def _set(self, job_id, **fields):
        self.store.update(job_id, **fields)
        self.changed.emit(job_id)

    def _progress(self, job_id, value):
        job = self.store.get(job_id)
        if job is not None and int(value) != int(job.get("progress", 0)):  # ~100 writes per job at most
            self._set(job_id, progress=float(value))

    def _event(self, job_id, event):
        if event.get("event") == "result" and event.get("message"):
            QgsMessageLog.logMessage(str(event["message"]), LOG_TAG, Qgis.Success)
        if event.get("event") == "progress":  # the rate counts from the first progress event of each stage
            since = self._since.get(job_id)
            if since is None or since[2] != event.get("stage") or event.get("done", 0) < since[1]:
                since = self._since[job_id] = (time.monotonic(), event.get("done", 0), event.get("stage"))
        text = runner.progress_text(event, self._since.get(job_id))
        job = self.store.get(job_id)
        # at most once a second: each update rewrites jobs.json and redraws the panel
        if text and job is not None and job.get("status") == "running" and \
                self._shown.get(job_id, 0) + 1.0 < time.monotonic():
            self._shown[job_id] = time.monotonic()
            task = self.tasks.get(job_id)
            try:
                if task is not None:  # the task manager's line
                    task.setDescription(f"Tower Detector: {job['title']}: {text}")
            except RuntimeError:  # QGIS has deleted the task
                pass
            self._set(job_id, message=text)

    def _task_done(self, job_id, end):
        self.tasks.pop(job_id, None)
        job = self.store.get(job_id)
        if job is None:
            return
        if end.ok:
            result = end.result
            if job.get("kind") == "remote-submit" and result.get("name"):
                remote = {**job.get("remote", {}), "name": result["name"], "job_id": result.get("job_id"),
                          "out": result.get("out")}
                self._set(job_id, status="submitted", remote=remote, progress=0.0,
                          message=str(result.get("message", "")).splitlines()[0] if result.get("message") else "")
                self._notify(f"{job['title']}: submitted as {result['name']}", Qgis.Info)
                self.poll_remote(job_id)
                return
            self._end(job_id, "finished", str(result.get("message") or "done").splitlines()[0], result=result)
        elif end.canceled:
            safe = ((end.outcome.error if end.outcome else None) or {}).get("kind") == "interrupted"
            self._end(job_id, "cancelled", tr("cancelled at a safe point: what it finished is kept; run it again to "
                                              "resume") if safe else tr("cancelled"))
        else:
            kind = ((end.outcome.error if end.outcome else None) or {}).get("kind")
            self._end(job_id, "stopped" if kind == "interrupted" else "failed", end.reason)

    def _end(self, job_id, status, message, result=None):
        fields = {"status": status, "message": message, "ended": _now()}
        if status == "finished":
            fields["progress"] = 100.0
        if result:
            fields["result"] = {k: v for k, v in result.items() if k not in ("event",)}
        verdict = self._verdict(self.store.get(job_id), result) if status == "finished" else None
        if verdict is not None and verdict.level != "ok":  # finished, but obviously no good: never a green line
            fields["message"] = message = f"{verdict.text} ({message})"
            fields["verdict"] = verdict.level
        self._set(job_id, **fields)
        job = self.store.get(job_id)
        level = {"finished": Qgis.Success, "cancelled": Qgis.Info}.get(status, Qgis.Critical)
        text = f"{job['title']}: {message}"
        if "verdict" in fields:  # finished, obviously no good: said in red or amber, and the user decides
            level = Qgis.Critical if fields["verdict"] == "bad" else Qgis.Warning
        elif level == Qgis.Critical:
            text += tr(" (details in the log panel, Tower Detector tab)")
            QgsMessageLog.logMessage(f"{job['title']} {status}: {message}", LOG_TAG, Qgis.Critical)
        step = next_step(job) if self.offer_next_step is not None else None
        if step:  # the message offers what comes next, prefilled
            self.offer_next_step(text, step, dict(job), level)
        else:
            self._notify(text, level)
        self.finished.emit(job_id)

    @staticmethod
    def _verdict(job, result):
        """Plain words when what a finished job made is obviously no good: a model no better than chance, a
        prediction whose scores are all alike, a dataset split without a tower tile."""
        if job is None:
            return None
        kind, outputs = job.get("kind"), job.get("outputs") or {}
        try:
            if kind in ("train", "search") and outputs.get("model"):
                return result_layers.model_verdict(result_layers.read_metrics(outputs["model"]))
            if outputs.get("heatmap") or outputs.get("candidates"):
                return result_layers.prediction_verdict(outputs.get("heatmap", ""), outputs.get("candidates", ""))
            if kind == "dataset":
                return result_layers.dataset_verdict(result)
        except result_layers.ResultsError:
            return None
        return None

    def _notify(self, text, level):
        if self.iface is not None:
            self.iface.messageBar().pushMessage(tr("Tower Detector"), text, level=level,
                                                duration=0 if level == Qgis.Critical else 8)

    # -- remote jobs
    def poll_remote(self, job_id: str, interval_s: float = POLL_S) -> "RemotePoller":
        poller = RemotePoller(self, job_id, interval_s)
        self.pollers[job_id] = poller
        poller.start()
        return poller

    def fetch_remote(self, job_id: str) -> str:
        """Start `remote fetch` for a submitted job into <its out>/fetched; returns the fetch job's id."""
        job = self.store.get(job_id)
        remote = job.get("remote", {})
        out = os.path.join(job.get("out") or settings.work_dir(), "fetched")
        args = commands.remote_args("fetch", remote["name"], profile=remote.get("profile"),
                                    region=remote.get("region"), out=out, threshold=remote.get("threshold"))
        if remote.get("kind") == "predict":
            outputs = {"heatmap": os.path.join(out, "heatmap.tif"), "candidates": os.path.join(out, "candidates.gpkg")}
        else:
            outputs = {"model": os.path.join(out, "best") if remote.get("kind") == "search" else out}
        return self.start("remote-fetch", f"fetch {remote['name']}", [args], out=out, outputs=outputs)

    def run_again(self, job_id: str) -> str:
        """Start an ended local job's commands again (a stopped or failed prediction, dataset or training resumes
        where it stopped); the new job's id. ValueError with one line when it cannot be."""
        job = self.store.get(job_id)
        if job is None or job.get("status") in ACTIVE:
            raise ValueError(tr("the job is still running"))
        if job.get("kind", "").startswith("remote"):
            raise ValueError(tr("an AWS job: `tower-detector remote retry` resubmits its failed parts"))
        names, env = job.get("secret_names") or [], {}
        if names:
            from .imagery_sources import TOKEN_VAR

            if names != [TOKEN_VAR] or not job.get("authcfg"):
                raise ValueError(tr("its imagery had a secret typed into the URL, which is never kept: run it from its "
                                 "dialog again"))
            env = {TOKEN_VAR: settings.auth_token(job["authcfg"])}
        return self.start(job["kind"], job["title"], [shlex.split(c) for c in job["commands"]], out=job.get("out", ""),
                          outputs=job.get("outputs"), env=env, remote=job.get("remote"), authcfg=job.get("authcfg"))

    def remove(self, job_id: str) -> None:
        if job_id in self.tasks or job_id in self.pollers:
            raise ValueError(tr("cancel the job first"))
        self.store.remove(job_id)
        self.changed.emit(job_id)

    def shutdown(self):
        """Plugin unload: stop polling; running tasks are QGIS's (it cancels them when it quits)."""
        for poller in self.pollers.values():
            poller.stop()
        self.pollers.clear()


class RemotePoller(QObject):
    """Asks `tower-detector remote status NAME --events` every interval (QTimer) and updates the job record."""

    def __init__(self, manager: JobManager, job_id: str, interval_s: float):
        super().__init__(manager)
        self.manager, self.job_id = manager, job_id
        self.timer = QTimer(self)
        self.timer.setInterval(int(interval_s * 1000))
        self.timer.timeout.connect(self.poll)
        self.task = None

    def start(self):
        self.timer.start()
        self.poll()

    def stop(self):
        self.timer.stop()

    def poll(self):
        if self.task is not None:
            return  # the last status question is still out
        job = self.manager.store.get(self.job_id)
        if job is None or not job.get("remote", {}).get("name"):
            return self.stop()
        remote = job["remote"]
        try:
            cli = settings.configured_cli()
        except runner.CliNotFound as exc:
            return self.manager._set(self.job_id, message=str(exc))
        args = commands.remote_args("status", remote["name"], profile=remote.get("profile"),
                                    region=remote.get("region"))
        self.task = CliTask(f"Tower Detector: status of {remote['name']}", [args], cli)
        self.task.done.connect(self._answered)
        QgsApplication.taskManager().addTask(self.task)

    def _answered(self, end):
        self.task = None
        result = end.result
        state = result.get("status")
        if not state:
            return self.manager._set(self.job_id, message=tr("status unknown: {reason}").format(
                reason=end.reason or tr("no answer")))
        fields = {"message": remote_status_message(result)}
        progress = result.get("progress") or {}
        if progress.get("tiles_total"):
            fields["progress"] = 100.0 * progress["tiles_done"] / progress["tiles_total"]
        self.manager._set(self.job_id, remote={**self.manager.store.get(self.job_id)["remote"], "state": state},
                          **fields)
        if state in REMOTE_DONE:
            self.stop()
            self.manager.pollers.pop(self.job_id, None)
            reason = ((end.outcome.error if end.outcome else None) or {}).get("message")
            self.manager._end(self.job_id, REMOTE_DONE[state], reason or tr("remote job {state}").format(
                state=state.lower()))


def remote_status_message(result: dict) -> str:
    """One line for the Jobs dock from `remote status --events`' result: the state, then what the fields tell
    (children waiting for capacity, the ETA, the cost so far, children failed for good)."""
    parts = [tr("remote: {status}").format(status=result.get("status"))]
    waiting = result.get("waiting") or {}
    if waiting.get("jobs"):
        parts.append(tr("{n} waiting for capacity").format(n=waiting["jobs"])
                     + (f" ({waiting['reason'].split(' - ')[0]})" if waiting.get("reason") else ""))
    rate = result.get("rate") or {}
    eta = rate.get("eta_seconds")
    if eta is not None and rate.get("tiles_left"):
        parts.append(tr("ETA about {eta} with {n} running").format(eta=_duration(eta), n=rate.get("workers_running")))
    cost = result.get("cost") or {}
    if cost.get("worker_hours"):
        parts.append(tr("about ${dollars:,.2f} so far (estimate)").format(dollars=cost["dollars"]))
    failed = sum(((result.get("failures") or {}).get("children") or {}).values())
    if failed:
        parts.append(tr("{n} failed for good: remote retry once it ends").format(n=failed))
    return "; ".join(parts)


def _duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"
