"""The review dock's OSM editing and export buttons, against real parts: the fake JOSM remote control and Overpass
servers on loopback, the real backend CLI for exports and conflation, the job manager's QGIS tasks."""

import json
import sqlite3
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

import pytest
from qgis.core import Qgis, QgsProject, QgsVectorLayer
from qgis.PyQt.QtGui import QDesktopServices

from tests.fakes.candidates_helpers import centre, make_candidates, scene_features, tile_of
from tests.fakes.josm_server import JosmServer
from tests.fakes.overpass_server import OverpassServer, elements_from_geojson
from tests.plugin import support as support
from tower_detector_plugin.core.jobs import JobManager
from tower_detector_plugin.ui.review_dock import ReviewDock
from tower_detector_plugin.ui.review_exports import ReviewExports

plugin_settings = support.plugin_settings  # a fixture
RS = "\x1e"


@pytest.fixture
def review(tmp_path, qgis_iface, plugin_settings):
    """A dock reviewing candidates on a sample scene's first three tower tiles and two empty tiles; its exports."""
    support.real_cli()
    scene = support.sample_scene(tmp_path / "scene", tiles=8, seed=3)
    towers = scene_features(tmp_path / "scene" / "towers.geojson", "tower")
    tiles = [tile_of(*p) for p in towers[:3]]
    (x0, _x1), (y0, _y1) = scene["tile_range"]["x"], scene["tile_range"]["y"]
    empty = [(x, y) for x in range(x0, x0 + 8) for y in range(y0, y0 + 8)
             if all(abs(x - a) > 1 or abs(y - b) > 1 for a, b in (tile_of(*p) for p in towers))][:2]
    path = make_candidates(tmp_path / "candidates.gpkg", tiles + empty, points=towers[:3] + [None, None])
    layer = QgsVectorLayer(f"{path}|layername=candidates", "tower candidates", "ogr")
    QgsProject.instance().addMapLayer(layer)
    dock = ReviewDock(qgis_iface)
    manager = JobManager(qgis_iface, work_dir=str(tmp_path / "work"))
    exports = ReviewExports(qgis_iface, manager, dock)
    dock.exportRequested.connect(exports.handle)
    dock.start(layer)
    yield {"dock": dock, "exports": exports, "manager": manager, "path": str(path), "scene": tmp_path / "scene",
           "towers": towers, "empty": empty}
    dock.stop()
    QgsProject.instance().removeMapLayer(layer.id())


def finish(manager, job_id):
    support.wait_until(lambda: manager.store.get(job_id)["status"] not in ("queued", "running"), 120, "the job")
    return manager.store.get(job_id)


def test_josm_gets_the_imagerys_name_and_no_tower_osm_has(review, plugin_settings, qgis_iface):
    """Issue 29: the JOSM path sent no changeset source unless one was typed, and its confirmed layer held towers
    OSM already had. The source is the setting, else the imagery's name the job kept, else a generic one (never the
    imagery's host); the confirmed layer leaves out towers OSM has, asking Overpass when nothing was conflated."""
    dock, exports, path = review["dock"], review["exports"], review["path"]
    bar = qgis_iface.messageBar()  # pytest-qgis's: it records what was pushed, by level
    bar.clear_messages()
    with JosmServer() as josm, OverpassServer(elements_from_geojson(review["scene"] / "towers.geojson")) as overpass:
        plugin_settings.set_value("review/josm_url", josm.url)
        plugin_settings.set_value("review/overpass_url", overpass.url)
        exports.handle("josm-zoom")
        assert josm.last("load_and_zoom")["query"]["changeset_source"] == "aerial imagery"  # not tiles.example.com
        with sqlite3.connect(path) as db:  # as `results` copies `predict --imagery-name` into the job table
            db.execute("INSERT INTO job (key, value) VALUES ('imagery_name', ?)", (json.dumps("Esri World Imagery"),))
        exports.handle("josm-zoom")
        q = josm.last("load_and_zoom")["query"]
        lon, lat = review["towers"][0]
        assert float(q["left"]) < lon < float(q["right"]) and float(q["bottom"]) < lat < float(q["top"])
        assert q["changeset_source"] == "Esri World Imagery" and q["changeset_hashtags"] == "#towerdetector"
        assert q["changeset_comment"].startswith("Add power towers")
        plugin_settings.set_value("review/source", "Bing aerial imagery")  # what the reviewer typed comes first
        exports.handle("josm-zoom")
        assert josm.last("load_and_zoom")["query"]["changeset_source"] == "Bing aerial imagery"
        plugin_settings.set_value("review/source", "")

        for status in ("confirmed", "unsure", "unsure", "confirmed"):  # the first tower, which OSM has, and the
            dock.decide(status)                                       # first empty tile, a tower OSM lacks
        exports.handle("josm-layers")
        assert overpass.log and overpass.log[0]["method"] == "POST"  # never conflated: OSM around here, asked now
        reference, confirmed = [r["query"] for r in josm.requests if r["path"] == "/load_data"]
        assert reference["upload_policy"] == "never" and reference["layer_locked"] == "true"
        assert reference["new_layer"] == "true"
        squares = ET.fromstring(reference["data"])
        assert squares.get("upload") == "never" and len(squares.findall("way")) == 5  # all five are within 2 km
        assert confirmed["upload_policy"] == "false" and confirmed["layer_locked"] == "false"
        osm = ET.fromstring(confirmed["data"])
        [node] = osm.findall("node")
        tags = {t.get("k"): t.get("v") for t in node.findall("tag")}
        assert int(node.get("id")) < 0 and tags.pop("power") == "tower"
        assert tags == {"fixme": "position estimated by Tower Detector, not placed by a reviewer: move the node "
                                 "onto the tower"}  # the confirmed point is the detector's, as no reviewer moved it
        assert (float(node.get("lon")), float(node.get("lat"))) == pytest.approx(centre(*review["empty"][0]),
                                                                                 abs=1e-6)
        changeset = {t.get("k"): t.get("v") for t in osm.find("changeset").findall("tag")}
        assert changeset["source"] == "Esri World Imagery" and changeset["hashtags"] == "#towerdetector"
        [text] = bar.get_messages(Qgis.Info)
        assert "1 confirmed towers within 30 m of a tower OSM already has were left out" in text

        # conflated: the file's outcome serves, and Overpass is not asked again
        job = finish(review["manager"], exports.conflate(str(review["scene"] / "towers.geojson")))
        assert job["status"] == "finished", job["message"]
        overpass.clear_log()
        josm.requests.clear()
        exports.handle("josm-layers")
        assert not overpass.log
        _reference, confirmed = [r["query"] for r in josm.requests if r["path"] == "/load_data"]
        assert len(ET.fromstring(confirmed["data"]).findall("node")) == 1


def test_josm_load_here_says_what_it_did(review, plugin_settings, qgis_iface):
    bar = qgis_iface.messageBar()
    bar.clear_messages()
    with JosmServer() as josm:
        plugin_settings.set_value("review/josm_url", josm.url)
        review["exports"].handle("josm-zoom")
        assert josm.last("load_and_zoom") is not None
    [text] = bar.get_messages(Qgis.Success)
    tile_id = review["dock"].session.current()["tile_id"]
    assert text.startswith("Tower Detector:JOSM") and tile_id in text and "changeset" in text and "\n" not in text
    assert bar.get_messages(Qgis.Critical) == []


def test_josm_not_listening_is_one_clear_line_in_the_message_bar(review, plugin_settings, qgis_iface):
    josm = JosmServer()
    josm.start()
    url = josm.url
    josm.stop()  # the port is free now: nothing listens
    plugin_settings.set_value("review/josm_url", url)
    bar = qgis_iface.messageBar()  # pytest-qgis's: it records what was pushed, by level
    bar.clear_messages()
    review["exports"].handle("josm-zoom")
    [text] = bar.get_messages(Qgis.Critical)
    assert "JOSM is not listening" in text and "Remote Control" in text and "\n" not in text


def test_id_and_rapid_open_at_the_candidate(review, monkeypatch):
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()))  # no browser here
    review["exports"].handle("id")
    review["exports"].handle("rapid")
    lon, lat = review["towers"][0]
    for url, host in zip(opened, ("www.openstreetmap.org", "rapideditor.org")):
        parts = urlsplit(url)
        assert parts.netloc == host
        fragment = parse_qs(parts.fragment)
        z, flat, flon = fragment["map"][0].split("/")
        assert z == "19" and (float(flat), float(flon)) == pytest.approx((lat, lon), abs=1e-5)
        assert fragment["hashtags"] == ["#towerdetector"]


def test_file_exports_run_as_jobs(review, tmp_path):
    dock, exports, manager = review["dock"], review["exports"], review["manager"]
    dock.decide("confirmed")
    dock.decide("false_positive")
    job = finish(manager, exports.export("maproulette", str(tmp_path / "tasks.geojson")))
    assert job["status"] == "finished", job["message"]
    lines = (tmp_path / "tasks.geojson").read_text().rstrip("\n").split("\n")  # (splitlines() splits at RS too)
    assert len(lines) == 3 and all(line.startswith(RS) for line in lines)  # the three still unreviewed
    ids = [json.loads(line[1:])["features"][0]["properties"]["id"] for line in lines]
    assert all(i.startswith("18/") for i in ids)

    job = finish(manager, exports.export("labels", str(tmp_path / "labels.geojson")))
    assert job["status"] == "finished"
    labels = json.loads((tmp_path / "labels.geojson").read_text())["features"]
    assert sorted(f["properties"]["status"] for f in labels) == ["confirmed", "false_positive"]

    job = finish(manager, exports.export("osm", str(tmp_path / "none" / "x.osm")))  # a folder that does not exist
    assert job["status"] == "failed" and "\n" not in job["message"]
    assert not (tmp_path / "none").exists()


def test_conflation_through_qgis_networking_marks_what_osm_has(review, plugin_settings):
    dock, exports = review["dock"], review["exports"]
    dock.decide("false_positive")  # a person's decision on the first tower: conflation must keep it
    with OverpassServer(elements_from_geojson(review["scene"] / "towers.geojson")) as overpass:
        plugin_settings.set_value("review/overpass_url", overpass.url)
        job_id = exports.conflate()
        assert overpass.log and overpass.log[0]["method"] == "POST"
    job = finish(review["manager"], job_id)
    assert job["status"] == "finished", job["message"]
    support.wait_until(lambda: not exports.conflate_jobs, 10, "the session to reload")
    status = dict(zip(dock.session.tile_ids, dock.session.status))
    towers = [f"{x}-{y}-18" for x, y in (tile_of(*p) for p in review["towers"][:3])]
    assert status[towers[0]] == "false_positive"
    assert status[towers[1]] == status[towers[2]] == "already_mapped"
    assert sorted(status.values()).count("unreviewed") == 2  # the empty tiles


def test_the_buttons_ask_where_and_run(review, monkeypatch, tmp_path):
    """The dock's buttons: the modal file and choice dialogs answered as a user would, the rest real."""
    from qgis.PyQt.QtWidgets import QFileDialog, QInputDialog

    dock, manager = review["dock"], review["manager"]
    overlay = tmp_path / "overlay.geojson"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(overlay), "GeoJSON (*.geojson)"))
    started = []
    manager.changed.connect(lambda job_id: started.append(job_id) if job_id not in started else None)
    dock.export_actions["overlay"].trigger()  # the Export menu's entry
    assert finish(manager, started[-1])["status"] == "finished"
    assert len(json.loads(overlay.read_text())["features"]) == 5

    monkeypatch.setattr(QInputDialog, "getItem", lambda _parent, _title, _label, items, *a: (items[1], True))
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        lambda *a, **k: (str(review["scene"] / "towers.geojson"), ""))
    dock.findChild(type(dock.next_button), "export_conflate").click()
    assert finish(manager, started[-1])["status"] == "finished"
    support.wait_until(lambda: not review["exports"].conflate_jobs, 10, "the session to reload")
    assert dock.session.status.count("already_mapped") == 3

    monkeypatch.setattr(QInputDialog, "getItem", lambda *a: ("", False))  # cancelled: nothing starts
    count = len(started)
    dock.findChild(type(dock.next_button), "export_conflate").click()
    assert len(started) == count


def test_retrain_with_review_decisions_prefills_from_the_candidates_and_runs(review, tmp_path):
    """Issue 32: "Retrain with review decisions" on reviewed candidates. The candidates name their model, the model
    its training data, whose dataset.json says how it was built: the dialog starts from that model, rebuilds that
    data with the decisions, and says how many decisions of each kind go in. Its export and dataset steps run on
    the real backend; the training step (train --init) is the backend's review-loop test."""
    import subprocess

    from tests.plugin.support import make_model_dir
    from tower_detector_plugin.core import commands

    dock, manager, path, scene = review["dock"], review["manager"], review["path"], review["scene"]
    data = tmp_path / "ds1"
    subprocess.run([support.real_cli(), "dataset", "--area", "area.geojson", "--towers", "towers.geojson",
                    "--imagery", "scene.tif", "--out", str(data), "--split", "0.6,0.2,0.2", "--block-size", "2",
                    "--background-ratio", "1", "--seed", "4"], cwd=scene, check=True, capture_output=True, timeout=300)
    model = make_model_dir(tmp_path / "v1")
    (model / "params.json").write_text(json.dumps({"data_dir": str(data), "backbone": "xception"}))
    with sqlite3.connect(path) as db:  # as `results` copies the job's model into the job table
        db.execute("INSERT INTO job (key, value) VALUES ('model', ?)", (str(model),))

    dock.findChild(type(dock.next_button), "export_retrain").click()  # nothing decided yet: nothing to learn from
    with pytest.raises(ValueError, match="no review decisions to learn from"):
        review["exports"].retrain_dialog.build()
    for status in ("confirmed", "unsure", "already_mapped", "false_positive"):  # 3 tower tiles, then an empty one
        dock.decide(status)
    dock.findChild(type(dock.next_button), "export_retrain").click()
    dialog = review["exports"].retrain_dialog
    assert dialog.isVisible()
    assert dialog.init.filePath() == str(model) and dialog.area.path() == str(scene / "area.geojson")
    assert dialog.towers.text() == str(scene / "towers.geojson")
    assert dialog.imagery.resolved().spec == str(scene / "scene.tif")
    said = dialog.decisions.text()
    assert "confirmed tower: 1 → tower tiles" in said and "false positive: 1 → hard negatives" in said
    assert "already mapped: 1" in said and "unsure / skip: 1" in said and "unreviewed: 1" in said
    dialog.dataset_out.setFilePath(str(tmp_path / "ds2"))
    dialog.model_out.setFilePath(str(tmp_path / "v2"))
    job = dialog.build()
    labels = str(tmp_path / "ds2-labels.gpkg")
    export, dataset, train = job["steps"]
    assert export == commands.export_args("labels", path, labels)
    assert dataset[dataset.index("--extra-labels") + 1] == labels
    assert dataset[dataset.index("--split") + 1] == "0.6,0.2,0.2" and dataset[dataset.index("--seed") + 1] == "4"
    assert train == commands.train_args(str(tmp_path / "ds2"), str(tmp_path / "v2"), init=str(model))
    assert job["outputs"]["model"] == str(tmp_path / "v2")

    job_id = manager.start("dataset", job["title"], [export, dataset], out=str(tmp_path / "ds2"))
    assert finish(manager, job_id)["status"] == "finished"
    built = json.loads((tmp_path / "ds2" / "dataset.json").read_text())
    assert built["sources"]["extra_labels"] == labels and built["hard_negatives"] == 1

    (model / "params.json").unlink()  # the model is gone: the dialog says so and asks for one
    dock.findChild(type(dock.next_button), "export_retrain").click()
    dialog = review["exports"].retrain_dialog
    assert "is not there any more" in dialog.notes.text() and dialog.init.filePath() == ""
    with pytest.raises(ValueError, match="choose the model to start from"):
        dialog.build()


def test_an_osm_export_of_candidates_never_compared_with_osm_asks_to_compare_first(review, monkeypatch, tmp_path):
    """Found by the GUI walk-through: `export osm` refuses candidates never conflated (issue 29: no duplicates), and
    the plugin only showed that refusal. Now it asks once: compare with Overpass or a tower layer of the project
    in the same job, or export anyway (--include-near-duplicates), or cancel."""
    from qgis.PyQt.QtWidgets import QFileDialog, QMessageBox

    dock, manager = review["dock"], review["manager"]
    towers = QgsVectorLayer(f"{review['scene'] / 'towers.geojson'}|geometrytype=Point", "towers", "ogr")
    QgsProject.instance().addMapLayer(towers)
    answer = ["Cancel"]

    def click(box):
        button = next(b for b in box.buttons() if b.text().startswith(answer[0]) or
                      box.standardButton(b) == QMessageBox.Cancel and answer[0] == "Cancel")
        button.click()
        return 0

    monkeypatch.setattr(QMessageBox, "exec_", click)
    out = tmp_path / "confirmed.osm"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), "OSM XML (*.osm)"))
    for status in ("confirmed", "unsure", "unsure", "confirmed"):  # the first tower (the layer has it) and the
        dock.decide(status)                                        # first empty tile (a tower OSM lacks)
    started = []
    manager.changed.connect(lambda job_id: started.append(job_id) if job_id not in started else None)
    dock.export_actions["osm"].trigger()
    assert started == [] and not out.exists()  # cancelled: nothing runs
    answer[0] = "Compare with the layer towers"
    dock.export_actions["osm"].trigger()
    job = finish(manager, started[-1])
    assert job["status"] == "finished", job["message"]
    assert ["conflate" in job["commands"][0].split(), "export" in job["commands"][1].split()] == [True, True]
    assert out.read_text().count("<node ") == 1  # the tower the layer has is left out: no duplicate added
    support.wait_until(lambda: not review["exports"].conflate_jobs, 10, "the review to reload")
    answer[0] = "Compare"  # conflated now: no question, the export runs as it is
    asked = []
    monkeypatch.setattr(QMessageBox, "exec_", lambda box: asked.append(box) or 0)
    dock.export_actions["osm"].trigger()
    assert asked == [] and finish(manager, started[-1])["status"] == "finished"
    QgsProject.instance().removeMapLayer(towers.id())
