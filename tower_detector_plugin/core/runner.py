"""Finding and running the `tower-detector` CLI: a subprocess, never an import.

The backend brings TensorFlow, Keras and friends, which QGIS installs do not have and which would block QGIS's
event loop; so the plugin only ever runs its CLI with `--events` and reads JSON lines from its stdout.
Standard library only (no Qt here), so Processing algorithms, tasks and dialogs share it.

Network note: the plugin itself makes no network calls. Any future one (e.g. checking for a backend release)
must go through QgsNetworkAccessManager / QgsBlockingNetworkRequest, so that QGIS's proxy, SSL and auth
settings apply; never requests or urllib.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .redaction import redact

EXE = "tower-detector.exe" if sys.platform == "win32" else "tower-detector"
DEV_CHECKOUT_CLI = Path(__file__).resolve().parents[2] / ".venv" / ("Scripts" if sys.platform == "win32" else "bin")
# A cancel sends SIGTERM: predict finishes the chunk under way (reporting progress as it goes), writes it and
# exits. SIGKILL comes only once the backend has said nothing for STOP_SILENT_S, or after STOP_MAX_S in all.
STOP_SILENT_S = 30.0
STOP_MAX_S = 900.0
STDERR_KEEP = 200_000  # characters of stderr kept for the log panel (the tail; tracebacks end there)


@dataclass(frozen=True)
class Cli:
    """The tower-detector CLI to run: its argv prefix and where it was found."""

    command: tuple  # the argv prefix: ("/path/tower-detector",) or ("/path/python", "-m", "tower_detector")
    source: str  # "configured", "dev checkout" or "PATH"

    def argv(self, args) -> list:
        return [*self.command, *args]


class CliNotFound(Exception):
    """No tower-detector CLI: the message says where we looked and what to set."""


def locate(configured: str = "") -> Cli:
    """The CLI to run: the configured path (an executable, or a Python that has tower_detector), else the
    dev checkout's ../.venv next to the plugin source, else `tower-detector` on PATH."""
    if configured:
        path = Path(configured).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise CliNotFound(f"the configured tower-detector {configured} is not an executable file; fix it in "
                              "Tower Detector > Settings")
        if path.name.lower().startswith("python"):
            return Cli((str(path), "-m", "tower_detector"), "configured")
        return Cli((str(path),), "configured")
    dev = DEV_CHECKOUT_CLI / EXE
    if dev.is_file() and os.access(dev, os.X_OK):
        return Cli((str(dev),), "dev checkout")
    found = shutil.which("tower-detector")
    if found:
        return Cli((found,), "PATH")
    raise CliNotFound("the tower-detector CLI was not found (not configured, no dev checkout .venv, not on PATH); "
                      "install it (pip install tower-detector) and set its path in Tower Detector > Settings")


def environment(extra=None) -> dict:
    """The backend's environment: ours, minus what points a Python at QGIS's own libraries, plus `extra`
    (secrets such as TOWER_DETECTOR_TOKEN travel only here, never on the command line)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    env["PYTHONUNBUFFERED"] = "1"  # events must arrive as they happen, not when a pipe buffer fills
    env.update(extra or {})
    return env


def parse_event(line: str) -> dict:
    """One stdout line as an event; anything that is not a JSON event becomes a log event. Redacted first (the
    backend redacts what it prints; this is the last check before events reach records, logs and the screen)."""
    line = redact(line.strip())
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("event"), str):
        return event
    return {"event": "log", "message": line}


def step_progress(event: dict, step: int, steps: int):
    """The percentage of a run of `steps` commands that a progress event of command number `step` (from 0) marks,
    or None for an event that is not progress."""
    if event.get("event") != "progress" or not event.get("total"):
        return None
    fraction = min(max(float(event.get("done", 0)) / float(event["total"]), 0.0), 1.0)
    return 100.0 * (step + fraction) / steps


def progress_text(event: dict, since=None):
    """A line for the Jobs panel and the task manager from an event, or None: a training's epoch with its loss and
    validation AUC, tiles done with the rate and the time left (since: (monotonic time, done) at the first progress
    event of this stage, or None), a search's trial, a log event's first line (e.g. Overpass retrying)."""
    kind = event.get("event")
    if kind == "log":
        lines = str(event.get("message") or "").strip().splitlines()
        return lines[0][:160] if lines else None
    if kind != "progress" or not event.get("total"):
        return None
    done, total, stage = event.get("done", 0), event["total"], event.get("stage")
    if stage == "epochs":
        text = f"epoch {done}/{total}"
        figures = [f"{name} {event[key]:.3f}" for key, name in (("loss", "loss"), ("val_auc", "validation AUC"))
                   if isinstance(event.get(key), (int, float))]
        return text + (": " + ", ".join(figures) if figures else "")
    if stage == "trials":
        return f"trial {done}/{total}" + (f", this trial {event['value']:.3f}"
                                           if isinstance(event.get("value"), (int, float)) else "")
    text = f"{done:,}/{total:,} {stage or 'done'}"
    rate = event.get("tiles_per_second")
    if rate is None and since is not None:
        seconds = time.monotonic() - since[0]
        rate = (done - since[1]) / seconds if seconds >= 1 and done > since[1] else None
    if rate:
        left = (total - done) / rate
        eta = f"{left / 3600:.1f} h" if left >= 5400 else f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
        text += f", {rate:,.1f}/s, about {eta} left"
    return text


@dataclass
class RunResult:
    returncode: int
    result: dict = None  # the last result event
    error: dict = None  # the error event, if any
    stderr: str = ""
    canceled: bool = False
    events: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.canceled

    def reason(self) -> str:
        """One line for the message bar."""
        if self.canceled:
            return "cancelled"
        if self.error and self.error.get("message"):
            return str(self.error["message"]).splitlines()[0]
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        if lines:  # a crash without an error event: the traceback's last line names the exception
            return f"exit status {self.returncode}: {lines[-1].strip()}"
        return f"exit status {self.returncode}"


def _popen_options() -> dict:
    # Its own session / process group, so that cancelling reaches every process it started (data loaders,
    # tippecanoe, ...), not just the CLI itself.
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def kill_tree(proc: subprocess.Popen, last_heard=None, silent: float = None, longest: float = None) -> None:
    """End proc and everything in its process group at a safe point: SIGTERM, then wait while it still reports
    (last_heard(): the monotonic time of its latest event), and SIGKILL once it has been silent for `silent` seconds
    or `longest` have passed."""
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True, check=False)
        return
    silent = STOP_SILENT_S if silent is None else silent
    longest = STOP_MAX_S if longest is None else longest
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return  # the whole group is gone
    asked = time.monotonic()
    while _group_alive(proc.pid):
        now = time.monotonic()
        heard = max(asked, last_heard() if last_heard else asked)
        if now - heard > silent or now - asked > longest:
            break
        proc.poll()
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run(cli: Cli, args, *, env=None, on_event=None, is_canceled=None, cwd=None) -> RunResult:
    """Run one CLI command to its end in this thread, passing each event to on_event(event).

    is_canceled() is polled by a watcher thread while the command runs; when it turns true the process tree is
    ended and the result says canceled. Never raises for the command's own failures: see RunResult.
    """
    out = RunResult(returncode=-1)
    stderr_parts = []
    # the context closes the pipes once the command has ended (unclosed, each run left a ResourceWarning)
    with subprocess.Popen(cli.argv(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1,
                          env=environment(env), cwd=cwd, **_popen_options()) as proc:

        def drain_stderr():  # read it all the time, or a chatty backend blocks on a full pipe
            for chunk in iter(lambda: proc.stderr.read(4096), ""):
                stderr_parts.append(chunk)

        heard = [time.monotonic()]  # when the backend last said something on stdout

        def watch():
            while proc.poll() is None:
                if is_canceled and is_canceled():
                    out.canceled = True
                    kill_tree(proc, last_heard=lambda: heard[0])
                    return
                time.sleep(0.1)

        threads = [threading.Thread(target=drain_stderr, daemon=True), threading.Thread(target=watch, daemon=True)]
        for thread in threads:
            thread.start()
        for line in proc.stdout:
            heard[0] = time.monotonic()
            if not line.strip():
                continue
            event = parse_event(line)
            out.events.append(event)
            if event["event"] == "result":
                out.result = event
            elif event["event"] == "error":
                out.error = event
            if on_event:
                on_event(event)
        out.returncode = proc.wait()
        for thread in threads:
            thread.join(timeout=30)
    out.stderr = redact("".join(stderr_parts)[-STDERR_KEEP:])
    return out


def run_quick(cli: Cli, args, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """A short command (--version, --help) with a timeout; raises OSError/TimeoutExpired as subprocess does."""
    return subprocess.run(cli.argv(args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=environment(), check=False)


def version(cli: Cli) -> str:
    """`tower-detector --version`'s answer, or raise RuntimeError with the reason."""
    try:
        done = run_quick(cli, ["--version"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{' '.join(cli.command)} did not run: {exc}") from None
    text = (done.stdout or done.stderr).strip()
    if done.returncode != 0 or not text.startswith("tower-detector"):
        last = text.splitlines()[-1] if text else f"exit status {done.returncode}"
        raise RuntimeError(f"{' '.join(cli.command)} --version failed: {last}")
    return text


def has_command(cli: Cli, *command) -> bool:
    """Whether this CLI knows `tower-detector COMMAND...` (older backends lack e.g. `remote`)."""
    try:
        return run_quick(cli, [*command, "--help"]).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
