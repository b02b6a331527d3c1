"""Running the backend from the plugin: finding it, events, failures, cancelling the whole process tree, jobs."""

import json

import pytest
from qgis.core import Qgis, QgsApplication

from tests.plugin import support as support
from tests.plugin.support import CLI, CRASH_SCRIPT, process_gone, real_cli, run_task, wait_until
from tower_detector_plugin.core import commands, runner
from tower_detector_plugin.core.jobs import JobManager, JobStore
from tower_detector_plugin.core.tasks import CliTask
from tower_detector_plugin.ui.jobs_dock import JobsDock

fake_backend = support.fake_backend  # a fixture
plugin_settings = support.plugin_settings  # a fixture


# Prints progress, starts a child that would outlive it, records both pids, then waits to be cancelled.
SPAWNS_AND_WAITS = """
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(os.environ["PIDS_FILE"], "w") as f:
    json.dump({"cli": os.getpid(), "child": child.pid}, f)
print(json.dumps({"event": "progress", "done": 1, "total": 4}), flush=True)
time.sleep(300)
"""


class LogRecorder:
    def __init__(self):
        self.messages = []
        QgsApplication.messageLog().messageReceived.connect(self._got)

    def _got(self, message, tag, level):
        if tag == "Tower Detector":
            self.messages.append((level, message))

    def close(self):
        QgsApplication.messageLog().messageReceived.disconnect(self._got)


@pytest.fixture
def log():
    recorder = LogRecorder()
    yield recorder
    recorder.close()


def test_locate_prefers_configured_then_dev_checkout_then_path(tmp_path, monkeypatch):
    python = tmp_path / "python3.11"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    assert runner.DEV_CHECKOUT_CLI == support.REPO / ".venv" / "bin"  # the checkout's, wherever runner.py lies
    assert runner.locate(str(python)).command == (str(python), "-m", "tower_detector")
    with pytest.raises(runner.CliNotFound, match="not an executable"):
        runner.locate(str(tmp_path / "nowhere"))

    monkeypatch.setattr(runner, "DEV_CHECKOUT_CLI", tmp_path / "no-venv")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(runner.CliNotFound, match="not found"):
        runner.locate("")
    (tmp_path / "bin").mkdir()
    exe = tmp_path / "bin" / "tower-detector"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert runner.locate("") == runner.Cli((str(exe),), "PATH")
    monkeypatch.setattr(runner, "DEV_CHECKOUT_CLI", CLI.parent)
    if CLI.is_file():  # in the dev checkout, its .venv wins over PATH
        assert runner.locate("").source == "dev checkout"


def test_version_check_runs_the_real_cli():
    cli = runner.locate(real_cli())
    assert runner.version(cli).startswith("tower-detector ")


def test_events_from_the_real_tiles_command():
    cli = runner.locate(real_cli())
    seen = []
    result = runner.run(cli, commands.tiles_args("28.0,-15.0,28.01,-14.99"), on_event=seen.append)
    assert result.ok, result.stderr
    assert result.result["count"] == seen[-1]["count"] > 0
    assert result.returncode == 0 and result.error is None


def test_bad_input_gives_the_one_line_reason():
    cli = runner.locate(real_cli())
    result = runner.run(cli, commands.tiles_args("10,10,5"))
    assert result.returncode == 2
    assert result.error["kind"] == "bad_input"
    assert result.reason() == result.error["message"] and "\n" not in result.reason()


def test_non_json_output_becomes_log_events():
    assert runner.parse_event("plain words") == {"event": "log", "message": "plain words"}
    assert runner.parse_event('{"event": "progress", "done": 1, "total": 2}')["done"] == 1
    assert runner.parse_event("[1, 2]")["event"] == "log"


def test_secrets_travel_in_the_environment_and_python_paths_do_not(tmp_path, fake_backend, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/usr/share/qgis/python")
    script = fake_backend('print(json.dumps({"event": "result", "token": os.environ.get("TOWER_DETECTOR_TOKEN"), '
                          '"pythonpath": os.environ.get("PYTHONPATH"), "argv": sys.argv[1:]}))')
    result = runner.run(runner.locate(str(script)), ["tiles", "--events"], env={"TOWER_DETECTOR_TOKEN": "s3cr3t"})
    assert result.result["token"] == "s3cr3t"
    assert result.result["pythonpath"] is None
    assert "s3cr3t" not in json.dumps(result.result["argv"])


def test_crashing_backend_fails_the_task_with_the_last_stderr_line(fake_backend, log):
    script = fake_backend(CRASH_SCRIPT)
    end = run_task(CliTask("crash", [["train", "--events"]], runner.locate(str(script))))
    assert not end.ok and not end.canceled
    assert end.outcome.returncode == 1
    assert end.reason == "exit status 1: RuntimeError: the model exploded"
    critical = [m for level, m in log.messages if level == Qgis.Critical]
    assert any("Traceback (most recent call last)" in m for m in critical)


def test_task_progress_spans_its_steps(fake_backend):
    script = fake_backend('print(json.dumps({"event": "progress", "done": 1, "total": 2}), flush=True)\n'
                          'print(json.dumps({"event": "result", "message": "ok"}))')
    task = CliTask("two steps", [["a", "--events"], ["b", "--events"]], runner.locate(str(script)))
    seen = []
    task.progressChanged.connect(seen.append)
    end = run_task(task)
    assert end.ok
    assert [r.result["message"] for r in end.results] == ["ok", "ok"]
    assert 25.0 in seen and 50.0 in seen and 75.0 in seen and seen[-1] == 100.0


def test_cancel_ends_the_backend_and_its_children(tmp_path, fake_backend, monkeypatch):
    monkeypatch.setenv("PIDS_FILE", str(tmp_path / "pids.json"))
    script = fake_backend(SPAWNS_AND_WAITS)
    task = CliTask("long", [["predict", "--events"]], runner.locate(str(script)))
    events = []
    task.eventReceived.connect(events.append)
    ended = []
    task.done.connect(ended.append)
    QgsApplication.taskManager().addTask(task)
    wait_until(lambda: events and (tmp_path / "pids.json").exists(), 30)
    pids = json.loads((tmp_path / "pids.json").read_text())
    assert not process_gone(pids["child"])
    task.cancel()
    wait_until(lambda: bool(ended), 30)
    assert ended[0].canceled and not ended[0].ok and ended[0].reason == "cancelled"
    wait_until(lambda: process_gone(pids["cli"]) and process_gone(pids["child"]), 15)


def test_missing_backend_fails_the_job_with_where_to_set_it(qgis_iface, plugin_settings, monkeypatch, tmp_path):
    plugin_settings.set_value("cli/path", str(tmp_path / "gone" / "tower-detector"))
    qgis_iface.messageBar().clear_messages()
    manager = JobManager(qgis_iface)
    job_id = manager.start("train", "train m1", [commands.train_args("ds", "m1")])
    job = manager.store.get(job_id)
    assert job["status"] == "failed"
    assert "Settings" in job["message"]
    [message] = qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert "train m1" in message and "not an executable" in message


def test_jobs_are_recorded_and_survive_a_restart(qgis_iface, plugin_settings, fake_backend, tmp_path):
    fake_backend('print(json.dumps({"event": "progress", "done": 3, "total": 3}), flush=True)\n'
                 'print(json.dumps({"event": "result", "message": "scored 9 tiles", "tiles_scored": 9}))')
    manager = JobManager(qgis_iface)
    outputs = {"heatmap": str(tmp_path / "h.tif"), "candidates": str(tmp_path / "c.gpkg")}
    job_id = manager.start("predict", "predict p1", [["predict", "--imagery", "x?key=${TOWER_DETECTOR_SECRET_KEY}",
                                                     "--events"]], out=str(tmp_path), outputs=outputs,
                           env={"TOWER_DETECTOR_SECRET_KEY": "hunter2"})
    wait_until(lambda: manager.store.get(job_id)["status"] == "finished", 30)
    job = manager.store.get(job_id)
    assert job["message"] == "scored 9 tiles" and job["progress"] == 100.0
    assert job["result"]["tiles_scored"] == 9
    text = open(manager.store.path).read()
    assert "hunter2" not in text and "${TOWER_DETECTOR_SECRET_KEY}" in text

    # A job that was running when QGIS stopped comes back as stopped; the finished one as it was.
    manager.store.add({"id": "running1", "kind": "train", "title": "t", "status": "running", "commands": []})
    again = JobStore(manager.store.path)
    assert again.get(job_id)["status"] == "finished"
    assert again.get("running1")["status"] == "stopped"

    dock = JobsDock(JobManager(qgis_iface))
    titles = [dock.table.item(r, 0).text() for r in range(dock.table.rowCount())]
    assert titles == ["t", "predict p1"]  # newest first
    dock.table.selectRow(1)
    assert dock.buttons["Load results"].isEnabled() and not dock.buttons["Cancel"].isEnabled()
    loaded = []
    dock.loadResults.connect(loaded.append)
    dock.buttons["Load results"].click()
    assert loaded[0]["outputs"] == outputs


MARK = "Qz7MARKER"  # in every secret below; in no record or log line


def test_a_secret_under_any_name_reaches_no_job_record_or_log(qgis_iface, plugin_settings, fake_backend, tmp_path):
    """imagery_sources.resolve lifts every value the backend would hide into the environment, and the job record and the
    log are redacted by the same allowlist even when a backend quotes a URL with a secret in it."""
    from tower_detector_plugin.core import imagery_sources

    names = ("access_token", "connectId", "auth", "code", "session", "zzq")
    url = "https://t.example.com/{z}/{x}/{y}.png?format=png&" + "&".join(f"{n}={MARK}-{n}" for n in names)
    spec = imagery_sources.resolve(url)
    assert MARK not in spec.spec and "format=png" in spec.spec and len(spec.env) == len(names)
    assert all(MARK in value for value in spec.env.values())
    # a backend that quotes the URL with its secrets, in a result, an error and on stderr
    quoted = url.replace("://", f"://me:{MARK}-pw@")
    fake_backend(f"print(json.dumps({{'event': 'log', 'message': 'fetching {quoted}'}}), flush=True)\n"
                 f"print(json.dumps({{'event': 'error', 'message': 'HTTP 403 for {quoted}', 'kind': 'failure'}}))\n"
                 f"sys.stderr.write('Traceback: GET {quoted}\\n')\n"
                 "sys.exit(1)")
    log = LogRecorder()
    try:
        manager = JobManager(qgis_iface)
        job_id = manager.start("predict", "predict p1", [commands.predict_args("m", spec.spec, str(tmp_path / "s"),
                                                                       area="a.geojson")],
                               out=str(tmp_path), env=spec.env)
        wait_until(lambda: manager.store.get(job_id)["status"] == "failed", 30)
    finally:
        log.close()
    record = open(manager.store.path).read()
    assert "HTTP 403" in record and "${TOWER_DETECTOR_SECRET_CONNECTID}" in record
    assert MARK not in record
    assert log.messages and not [m for _, m in log.messages if MARK in m]


def test_cancelled_job_is_recorded_as_cancelled(qgis_iface, fake_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("PIDS_FILE", str(tmp_path / "pids.json"))
    fake_backend(SPAWNS_AND_WAITS)
    manager = JobManager(qgis_iface)
    job_id = manager.start("predict", "predict long", [["predict", "--events"]])
    wait_until(lambda: manager.store.get(job_id)["status"] == "running" and (tmp_path / "pids.json").exists(), 30)
    dock = JobsDock(manager)
    dock.table.selectRow(0)
    assert dock.buttons["Cancel"].isEnabled()
    dock.buttons["Cancel"].click()
    wait_until(lambda: manager.store.get(job_id)["status"] == "cancelled", 30)
    pids = json.loads((tmp_path / "pids.json").read_text())
    wait_until(lambda: process_gone(pids["child"]), 15)


def test_failed_job_shows_one_line_and_logs_stderr(qgis_iface, fake_backend, log):
    fake_backend('print(json.dumps({"event": "error", "message": "imagery: HTTP 401 for all of the first 20 tiles", '
                 '"kind": "bad_input"}))\nsys.stderr.write("details\\n")\nsys.exit(2)')
    qgis_iface.messageBar().clear_messages()
    manager = JobManager(qgis_iface)
    job_id = manager.start("dataset", "dataset d1", [["dataset", "--events"]])
    wait_until(lambda: manager.store.get(job_id)["status"] == "failed", 30)
    assert manager.store.get(job_id)["message"] == "imagery: HTTP 401 for all of the first 20 tiles"
    [shown] = qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert "HTTP 401" in shown and "\n" not in shown
    assert any("details" in m for level, m in log.messages if level == Qgis.Critical)


def test_remote_status_is_polled_until_the_job_ends(qgis_iface, fake_backend, tmp_path):
    # A stand-in for `tower-detector remote status NAME --events`: RUNNING twice, then SUCCEEDED.
    counter = tmp_path / "polls"
    fake_backend(f"""
n = int(open({str(counter)!r}).read()) + 1 if os.path.exists({str(counter)!r}) else 1
open({str(counter)!r}, "w").write(str(n))
assert sys.argv[1:4] == ["remote", "status", "p-remote"], sys.argv
state = "SUCCEEDED" if n >= 3 else "RUNNING"
print(json.dumps({{"event": "result", "message": state, "status": state,
                   "progress": {{"tiles_done": 10 * n, "tiles_total": 30}}}}))
""")
    manager = JobManager(qgis_iface)
    job = manager.store.add({"id": "r1", "kind": "remote-submit", "title": "AWS predict p", "status": "submitted",
                             "commands": [], "progress": 0.0, "remote": {"name": "p-remote", "kind": "predict"}})
    poller = manager.poll_remote(job["id"], interval_s=0.05)
    wait_until(lambda: manager.store.get("r1")["status"] == "finished", 30)
    assert not poller.timer.isActive()
    record = manager.store.get("r1")
    assert record["remote"]["state"] == "SUCCEEDED" and record["progress"] == 100.0
    assert int(counter.read_text()) == 3



# --- results that are obviously bad are not reported as success (issue 33, defect 5) ------------------------------
def _finished(manager, job_id):
    wait_until(lambda: manager.store.get(job_id)["status"] not in ("queued", "running"), 30, "the job")
    return manager.store.get(job_id)


def test_a_model_no_better_than_chance_is_a_red_line_not_a_green_one(qgis_iface, plugin_settings, fake_backend,
                                                                      tmp_path):
    fake_backend('out = sys.argv[sys.argv.index("--out") + 1]\n'
                 'os.makedirs(out, exist_ok=True)\n'
                 'auc = float(os.environ["FAKE_AUC"])\n'
                 'json.dump({"roc_auc": auc, "n_tower": 40, "n_background": 120}, open(os.path.join(out, '
                 '"metrics.json"), "w"))\n'
                 'print(json.dumps({"event": "result", "message": f"model written to {out}: test ROC AUC {auc}", '
                 '"roc_auc": auc, "out": out}))')
    manager = JobManager(qgis_iface)
    bar = qgis_iface.messageBar()
    for auc, level, words in ((0.33, Qgis.Critical, "no better than chance: train longer or on more towers"),
                              (0.58, Qgis.Warning, "may be no better than chance"), (0.97, Qgis.Success, None)):
        bar.clear_messages()
        out = tmp_path / f"model-{auc}"
        job_id = manager.start("train", f"train {auc}", [["train", "--out", str(out), "--events"]], out=str(out),
                               outputs={"model": str(out)}, env={"FAKE_AUC": str(auc)})
        job = _finished(manager, job_id)
        assert job["status"] == "finished"
        [text] = bar.get_messages(level)
        if words:
            assert words in text and words in job["message"] and job["verdict"] == ("bad" if auc < 0.5 else "warn")
        else:
            assert "verdict" not in job and bar.get_messages(Qgis.Warning) == bar.get_messages(Qgis.Critical) == []
    dock = JobsDock(manager)
    colours = {dock.table.item(r, 0).text(): dock.table.item(r, 1).background().color().name()
               for r in range(dock.table.rowCount())}
    assert colours["train 0.33"] == "#ffcdd2" and colours["train 0.58"] == "#ffe0b2"
    assert colours["train 0.97"] != colours["train 0.33"]
    dock.deleteLater()


def test_scores_all_alike_warn_of_a_carpet_and_a_dataset_without_test_towers_says_so(qgis_iface, plugin_settings,
                                                                                   fake_backend, tmp_path):
    carpet = support.make_heatmap(tmp_path / "carpet.tif",
                                  [[0.50243 + (i * 16 + j) * 1e-7 for j in range(16)] for i in range(16)])
    fine = support.make_heatmap(tmp_path / "fine.tif", [[0.02, 0.1, 0.97, 0.3]] * 4)
    fake_backend('print(json.dumps({"event": "result", "message": sys.argv[1] + " done", '
                 '"warnings": json.loads(os.environ.get("FAKE_WARNINGS", "[]"))}))')
    manager = JobManager(qgis_iface)
    bar = qgis_iface.messageBar()
    bar.clear_messages()
    job = _finished(manager, manager.start("predict", "predict carpet", [["predict", "--events"]],
                                           outputs={"heatmap": str(carpet), "candidates": ""}))
    [text] = bar.get_messages(Qgis.Warning)
    assert "does not separate" in text and "carpet" in text and "0.5024" in text and job["verdict"] == "warn"
    bar.clear_messages()
    job = _finished(manager, manager.start("predict", "predict fine", [["predict", "--events"]],
                                           outputs={"heatmap": str(fine), "candidates": ""}))
    assert "verdict" not in job and len(bar.get_messages(Qgis.Success)) == 1

    bar.clear_messages()
    warning = "the test split has no tower tile, so training cannot tell how well a model finds towers"
    job = _finished(manager, manager.start("dataset", "dataset d1", [["dataset", "--events"]],
                                           env={"FAKE_WARNINGS": json.dumps([warning])}))
    [text] = bar.get_messages(Qgis.Warning)
    assert warning in text and warning in job["message"] and job["verdict"] == "warn"


# On SIGTERM, finishes the chunk under way for 11 s, reporting as it goes, writes it, and stops as predict does.
FINISHES_ITS_CHUNK = """
import signal
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print(json.dumps({"event": "progress", "done": 1, "total": 100}), flush=True)
while not stop:
    time.sleep(0.05)
for i in range(22):
    time.sleep(0.5)
    print(json.dumps({"event": "progress", "done": 2 + i, "total": 100}), flush=True)
open(os.environ["CHUNK_FILE"], "w").write("written")
print(json.dumps({"event": "error", "kind": "interrupted", "message": "stopped on SIGTERM after writing 1 chunks; "
                  "run the same command again to resume"}), flush=True)
sys.exit(143)
"""

# On SIGTERM, says nothing more and never ends.
HANGS = """
import signal
signal.signal(signal.SIGTERM, lambda *a: None)
print(json.dumps({"event": "progress", "done": 1, "total": 100}), flush=True)
time.sleep(300)
"""


def test_cancel_waits_while_the_backend_finishes_its_chunk(qgis_iface, fake_backend, tmp_path, monkeypatch):
    """Issue 33: a cancelled predict lost the chunk under way (SIGKILL came 10 s after SIGTERM, a chunk took
    500 s). Cancel now waits while the backend still reports progress, so the chunk is written; the job says
    cancelled, and how to resume."""
    monkeypatch.setenv("CHUNK_FILE", str(tmp_path / "chunk"))
    fake_backend(FINISHES_ITS_CHUNK)
    manager = JobManager(qgis_iface)
    job_id = manager.start("predict", "predict long", [["predict", "--events"]])
    wait_until(lambda: manager.store.get(job_id).get("progress", 0) > 0, 30, "the first progress")
    manager.cancel(job_id)
    wait_until(lambda: manager.store.get(job_id)["status"] not in ("queued", "running"), 60, "the job to end")
    job = manager.store.get(job_id)
    assert (tmp_path / "chunk").read_text() == "written"
    assert job["status"] == "cancelled" and "run it again to resume" in job["message"]


def test_cancel_kills_a_backend_that_has_gone_silent(tmp_path, fake_backend, monkeypatch):
    monkeypatch.setattr(runner, "STOP_SILENT_S", 1.0)
    script = fake_backend(HANGS)
    task = CliTask("hangs", [["predict", "--events"]], runner.locate(str(script)))
    events, ended = [], []
    task.eventReceived.connect(events.append)
    task.done.connect(ended.append)
    QgsApplication.taskManager().addTask(task)
    wait_until(lambda: bool(events), 30)
    task.cancel()
    wait_until(lambda: bool(ended), 20, "SIGKILL after a second of silence")
    assert ended[0].canceled and ended[0].outcome.returncode == -9


def test_progress_text_says_epochs_rates_and_retries():
    """Issue 33: the Message column stayed empty while jobs ran. What each kind of event shows there."""
    import time

    epoch = {"event": "progress", "done": 2, "total": 10, "stage": "epochs", "loss": 0.41234, "val_auc": 0.8712}
    assert runner.progress_text(epoch) == "epoch 2/10: loss 0.412, validation AUC 0.871"
    tiles = {"event": "progress", "done": 1500, "total": 7500, "stage": "tiles"}
    assert runner.progress_text(tiles) == "1,500/7,500 tiles"
    # 1,000 tiles in the 10 s since the stage's first event (500 done): 100/s, 6,000 left: 60 s
    assert runner.progress_text(tiles, since=(time.monotonic() - 10, 500)) == \
        "1,500/7,500 tiles, 100.0/s, about 60 s left"
    assert runner.progress_text({**tiles, "tiles_per_second": 2.0}) == "1,500/7,500 tiles, 2.0/s, about 50 min left"
    retry = {"event": "log", "message": "Overpass answered 429: retrying 2/5 in 8 s\nmore"}
    assert runner.progress_text(retry) == "Overpass answered 429: retrying 2/5 in 8 s"
    assert runner.progress_text({"event": "result", "message": "done"}) is None


def test_the_jobs_panel_shows_what_the_backend_says_while_it_runs(qgis_iface, fake_backend, tmp_path, monkeypatch):
    fake_backend("""
print(json.dumps({"event": "log", "message": "Overpass answered 429: retrying 2/5 in 8 s"}), flush=True)
time.sleep(1.5)
print(json.dumps({"event": "progress", "done": 2, "total": 10, "stage": "epochs", "loss": 0.41234,
                  "val_auc": 0.8712}), flush=True)
time.sleep(1.5)
open(os.environ["GO_FILE"], "w").write("")
time.sleep(3)
""")
    monkeypatch.setenv("GO_FILE", str(tmp_path / "go"))
    manager = JobManager(qgis_iface)
    dock = JobsDock(manager)
    job_id = manager.start("train", "train m1", [["train", "--events"]])
    seen = set()
    manager.changed.connect(lambda _id: seen.add(manager.store.get(job_id)["message"]))
    wait_until(lambda: (tmp_path / "go").exists(), 30, "the backend's events")
    wait_until(lambda: "epoch 2/10: loss 0.412, validation AUC 0.871" in seen, 10, "the epoch line")
    assert "Overpass answered 429: retrying 2/5 in 8 s" in seen
    messages = [dock.table.item(0, c).text() for c in range(dock.table.columnCount()) if dock.table.item(0, c)]
    assert "epoch 2/10: loss 0.412, validation AUC 0.871" in messages
    wait_until(lambda: manager.store.get(job_id)["status"] == "finished", 30)


def test_each_finished_job_offers_its_next_step_prefilled(qgis_iface, qgis_new_project, fake_backend, tmp_path):
    """Issue 33: after a dataset, Train's data folder was empty; after training, Predict's model was empty. Each
    finished job now offers its next step, in the message bar and the Jobs panel, prefilled."""
    from qgis.PyQt.QtWidgets import QPushButton

    from tests.fakes.candidates_helpers import make_candidates
    from tests.plugin.support import make_model_dir
    from tower_detector_plugin.plugin import TowerDetectorPlugin

    fake_backend('print(json.dumps({"event": "result", "message": "done"}))')
    plugin = TowerDetectorPlugin(qgis_iface)
    manager = plugin.job_manager()
    bar = qgis_iface.messageBar()
    earlier = set(bar.findChildren(QPushButton))  # the bar outlives tests: other plugins' offers are not ours

    def offered(step):
        def ours():
            return [b for b in bar.findChildren(QPushButton, f"next_step_{step}") if b not in earlier]

        wait_until(ours, 5, f"the {step} button")
        return ours()[-1]

    job_id = manager.start("dataset", "dataset ds1", [["dataset", "--events"]], outputs={"dataset": str(tmp_path)})
    wait_until(lambda: manager.store.get(job_id)["status"] == "finished", 30)
    offered("train").click()
    assert plugin.dialogs["train"].data.filePath() == str(tmp_path)

    model = make_model_dir(tmp_path / "m1")
    job_id = manager.start("train", "train m1", [["train", "--events"]], outputs={"model": str(model)})
    wait_until(lambda: manager.store.get(job_id)["status"] == "finished", 30)
    offered("predict").click()
    assert plugin.dialogs["predict"].model.filePath() == str(model)
    assert plugin.dialogs["predict"].threshold.value() == pytest.approx(0.62)  # the model's own threshold

    candidates = make_candidates(tmp_path / "c.gpkg", [(151_000, 142_000), (151_001, 142_000)])
    job_id = manager.start("predict", "predict p1", [["predict", "--events"]],
                           outputs={"candidates": str(candidates), "threshold": 0.5})
    wait_until(lambda: manager.store.get(job_id)["status"] == "finished", 30)
    dock = plugin.show_jobs()
    dock.table.selectRow(0)
    assert dock.buttons["Next step"].text() == "Review the candidates"
    dock.buttons["Next step"].click()
    assert plugin.review_dock is not None and plugin.review_dock.session is not None
    assert plugin.review_dock.session.layer.source().startswith(str(candidates))
    plugin.unload()


def test_run_again_resumes_with_the_same_commands_and_the_token_fetched_again(qgis_iface, fake_backend, tmp_path,
                                                                              monkeypatch):
    from tower_detector_plugin.core import settings
    from tower_detector_plugin.core.imagery_sources import TOKEN_VAR

    fake_backend('print(json.dumps({"event": "result", "message": "done"}))\n'
                 'open(os.environ["ARGS_FILE"], "a").write(" ".join(sys.argv[1:]) + "\\n")\n'
                 'token = os.environ.get("TOWER_DETECTOR_TOKEN", "-")\n'
                 'open(os.environ["ARGS_FILE"] + ".env", "a").write(token + "\\n")')
    monkeypatch.setenv("ARGS_FILE", str(tmp_path / "args"))
    monkeypatch.setattr(settings, "auth_token", lambda authcfg: "tok-from-" + authcfg)  # STUB: the auth database
    manager = JobManager(qgis_iface)
    first = manager.start("predict", "predict p1", [["predict", "--out", "a b", "--events"]],
                          env={TOKEN_VAR: "tok-from-cfg1"}, authcfg="cfg1")
    wait_until(lambda: manager.store.get(first)["status"] == "finished", 30)
    record = manager.store.get(first)
    assert record["secret_names"] == [TOKEN_VAR] and "tok-from" not in json.dumps(record)
    again = manager.run_again(first)
    wait_until(lambda: manager.store.get(again)["status"] == "finished", 30)
    assert (tmp_path / "args.env").read_text().splitlines() == ["tok-from-cfg1"] * 2
    assert (tmp_path / "args").read_text().splitlines() == ["predict --out a b --events"] * 2
    typed = manager.start("predict", "predict p2", [["predict", "--events"]], env={"TD_SECRET_1": "x"})
    wait_until(lambda: manager.store.get(typed)["status"] == "finished", 30)
    with pytest.raises(ValueError, match="secret typed into the URL"):
        manager.run_again(typed)
