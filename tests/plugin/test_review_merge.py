"""The plugin's results path keeps review decisions: its own `results` command, run again into the
candidates.gpkg that a layer shows and the review dock is reviewing, merges into it; the layer and the dock
re-read the file, nothing reviewed is hidden or lost, and decisions made after the merge land in the file."""

import os
import sqlite3
from contextlib import closing

from qgis.core import QgsProject

import tower_detector
from tests.fakes.storedata import make_store, scores_b, scores_of
from tests.plugin import support
from tests.plugin.support import wait_until
from tower_detector_plugin.core import commands
from tower_detector_plugin.plugin import TowerDetectorPlugin

plugin_settings = support.plugin_settings  # fixtures
fake_backend = support.fake_backend


def decisions(path):
    with closing(sqlite3.connect(path)) as db:
        return {r[0]: r[1:] for r in db.execute(
            "SELECT tile_id, status, note, reviewer, point_lon, point_lat, point_source FROM candidates "
            "WHERE status != 'unreviewed'")}


def tile_ids(path):
    with closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT tile_id FROM candidates")}


def layers_of(path):
    return [layer for layer in QgsProject.instance().mapLayers().values()
            if os.path.realpath(layer.source().split("|")[0]) == os.path.realpath(path)]


def test_results_again_under_an_open_review_keep_every_decision(qgis_iface, qgis_new_project, fake_backend,
                                                                  tmp_path):
    # the backend this test imports (a checkout's, through PYTHONPATH, which the plugin leaves out of its runs)
    fake_backend(f"os.environ['PYTHONPATH'] = {os.path.dirname(os.path.dirname(tower_detector.__file__))!r}\n"
                 "os.execv(sys.executable, [sys.executable, '-m', 'tower_detector', *sys.argv[1:]])")
    plugin = TowerDetectorPlugin(qgis_iface)
    manager = plugin.job_manager()
    folder = tmp_path / "predict-1"
    folder.mkdir()
    path = str(folder / "candidates.gpkg")

    def results_job(store):
        args = commands.results_args(store, candidates=path, threshold=0.5)
        assert "--overwrite" not in args  # the plugin never discards a review by itself (nor does its Fetch)
        assert "--overwrite" not in commands.remote_args("fetch", "job-1", out=str(folder), threshold=0.5)
        job_id = manager.start("predict", "predict 1", [args], out=str(folder),
                               outputs={"candidates": path, "threshold": 0.5})
        wait_until(lambda: manager.store.get(job_id)["status"] not in ("queued", "running"), 180, job_id)
        job = manager.store.get(job_id)
        assert job["status"] == "finished", job["message"]
        return job

    job = results_job(make_store(tmp_path / "a", scores_of))
    layer = plugin.load_job_results(job)["candidates"]
    dock = plugin.review(layer)
    dock.note.setText("clear lattice tower")
    dock.decide("confirmed")
    dock.note.setText("")
    dock.decide("false_positive")
    dock.session.move_point(*[v + 1e-5 for v in dock.session.current()["point"]])
    dock.decide("confirmed")
    before = decisions(path)
    assert len(before) == 3

    results_job(make_store(tmp_path / "b", scores_b))  # another model's scores, into the same file
    assert decisions(path) == before
    merged = tile_ids(path)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM candidates WHERE in_results = 0").fetchone()[0] >= 1
    # the layer shows the file as it is now: new rows, and the reviewed ones below the threshold
    assert {f["tile_id"] for f in layer.getFeatures()} == merged
    assert len(dock.session.fids) == len(merged)  # the review dock re-read it too
    dock.status_filter.setCurrentIndex(0)  # unreviewed
    dock.next()
    decided = dock.session.current()["tile_id"]
    dock.decide("unsure")  # a decision after the merge lands in the file on disk
    assert decisions(path)[decided][0] == "unsure" and len(decisions(path)) == 4

    plugin.load_job_results(job)  # Load results again: the same layer, re-read, not a second one
    assert layers_of(path) == [layer]
    plugin.unload()
