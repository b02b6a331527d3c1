"""Dialogs, imagery sources and secrets: what each dialog turns into, and the settings dialog."""

import json
import os
from pathlib import Path

import pytest
from qgis.core import (
    QgsApplication,
    QgsAuthMethodConfig,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsSettings,
    QgsVectorLayer,
)

from tests.plugin import support as support
from tests.plugin.support import CRASH_SCRIPT, REPO, make_heatmap, make_model_dir, real_cli
from tower_detector_plugin.core import commands, imagery_sources
from tower_detector_plugin.core.jobs import JobManager
from tower_detector_plugin.core.point_export import export_layer_points
from tower_detector_plugin.ui.job_dialogs import BuildDatasetDialog, PredictDialog, TrainDialog
from tower_detector_plugin.ui.load_results_dialog import LoadResultsDialog
from tower_detector_plugin.ui.settings_dialog import SettingsDialog

fake_backend = support.fake_backend  # a fixture
plugin_settings = support.plugin_settings  # a fixture

URL = "https://tiles.example.com/{z}/{x}/{y}.jpg"
TOKEN = "tok-3f9a-SECRET"


@pytest.fixture
def token_authcfg():
    """A Basic auth config in QGIS's authentication database whose password is the imagery token."""
    manager = QgsApplication.authManager()
    if not manager.masterPasswordIsSet() and not manager.setMasterPassword("tower-detector-tests", True):
        pytest.skip("this QGIS profile's authentication database has another master password")
    config = QgsAuthMethodConfig("Basic")
    config.setName("imagery token")
    config.setConfig("username", "token")
    config.setConfig("password", TOKEN)
    ok, config = manager.storeAuthenticationConfig(config)
    assert ok
    yield config.id()
    manager.removeAuthenticationConfig(config.id())


@pytest.fixture
def area_file(plugin_settings, tmp_path):
    path = tmp_path / "work" / "areas" / "a.geojson"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [[[28, -15], [28.01, -15], [28.01, -14.99],
                                                                     [28, -14.99], [28, -15]]]}))
    return str(path)


@pytest.fixture
def manager(qgis_iface, plugin_settings):
    return JobManager(qgis_iface)


def test_tokens_come_from_the_auth_manager_into_the_environment_only(token_authcfg):
    spec = imagery_sources.resolve(f"{URL}?access_token={imagery_sources.TOKEN_REF}", token_authcfg)
    assert spec.spec == f"{URL}?access_token=${{TOWER_DETECTOR_TOKEN}}"
    assert spec.env == {"TOWER_DETECTOR_TOKEN": TOKEN}
    with pytest.raises(ValueError, match="has no"):
        imagery_sources.resolve(URL, token_authcfg)
    with pytest.raises(ValueError, match="not found"):
        imagery_sources.resolve(f"{URL}?t={imagery_sources.TOKEN_REF}", "nosuchid")


def test_literal_secrets_in_urls_are_lifted_into_the_environment(monkeypatch):
    monkeypatch.delenv("TOWER_DETECTOR_TOKEN", raising=False)
    spec = imagery_sources.resolve(f"{URL}?api_key=abc%2F123&style=x&access_token=pk.999")
    assert spec.spec == (f"{URL}?api_key=${{TOWER_DETECTOR_SECRET_API_KEY}}&style=x"
                         "&access_token=${TOWER_DETECTOR_SECRET_ACCESS_TOKEN}")
    # as written, percent-escapes included: the backend puts the value back into the URL verbatim
    assert spec.env == {"TOWER_DETECTOR_SECRET_API_KEY": "abc%2F123", "TOWER_DETECTOR_SECRET_ACCESS_TOKEN": "pk.999"}
    assert imagery_sources.literal_secrets(f"{URL}?key=abc&style=x") == ["key"]
    assert imagery_sources.literal_secrets(f"{URL}?key={imagery_sources.TOKEN_REF}") == []
    with pytest.raises(ValueError, match="user:password@"):
        imagery_sources.resolve("https://me:pw@tiles.example.com/{z}/{x}/{y}.png")
    with pytest.raises(ValueError, match="choose the authentication config"):
        imagery_sources.resolve(f"{URL}?t={imagery_sources.TOKEN_REF}")
    assert imagery_sources.resolve("/data/scene.tif") == imagery_sources.ImagerySpec("/data/scene.tif", {})


def test_the_plugin_redacts_with_the_backends_own_module(monkeypatch):
    """The plugin's redaction.py is the backend's file (copied by scripts/build_plugin.py), and imagery uses it:
    every query value but a harmless parameter's is lifted, whatever the parameter is called."""
    from tower_detector_plugin.core import redaction

    backend = (REPO / "backend" / "tower_detector" / "common" / "redaction.py").read_text()
    assert Path(redaction.__file__).read_text().split("\n", 1)[1] == backend
    assert imagery_sources.redact is redaction.redact and imagery_sources.secrets is redaction.secrets
    monkeypatch.delenv("TOWER_DETECTOR_TOKEN", raising=False)
    spec = imagery_sources.resolve(f"{URL}?connectId=c1&layer=Topo&auth=a1&zzq=z1&tilematrix={{z}}&session=")
    assert spec.spec == (f"{URL}?connectId=${{TOWER_DETECTOR_SECRET_CONNECTID}}&layer=Topo"
                         "&auth=${TOWER_DETECTOR_SECRET_AUTH}&zzq=${TOWER_DETECTOR_SECRET_ZZQ}&tilematrix={z}&session=")
    assert spec.env == {"TOWER_DETECTOR_SECRET_CONNECTID": "c1", "TOWER_DETECTOR_SECRET_AUTH": "a1",
                        "TOWER_DETECTOR_SECRET_ZZQ": "z1"}
    assert imagery_sources.literal_secrets(f"{URL}?code=x&format=png&session=${{S}}") == ["code"]


def test_imagery_sources_are_the_users_xyz_connections_and_raster_layers(qgis_new_project, tmp_path):
    settings = QgsSettings()
    settings.setValue("qgis/connections-xyz/Aerial test/url", f"{URL}?access_token={imagery_sources.TOKEN_REF}")
    settings.setValue("qgis/connections-xyz/Aerial test/authcfg", "abc1234")
    settings.setValue("qgis/connections-xyz/Hidden one/url", URL)
    settings.setValue("qgis/connections-xyz/Hidden one/hidden", "true")
    try:
        sources = {s.label: s for s in imagery_sources.xyz_connections()}
        assert sources["XYZ connection: Aerial test"].authcfg == "abc1234"
        assert sources["XYZ connection: Aerial test"].name == "Aerial test"
        assert "XYZ connection: Hidden one" not in sources
    finally:
        settings.remove("qgis/connections-xyz/Aerial test")
        settings.remove("qgis/connections-xyz/Hidden one")
    tif = make_heatmap(tmp_path / "scene.tif", [[0.5]])
    QgsProject.instance().addMapLayer(QgsRasterLayer(str(tif), "scene", "gdal"))
    xyz = QgsRasterLayer(f"type=xyz&url={URL.replace('{', '%7B').replace('}', '%7D')}", "basemap", "wms")
    QgsProject.instance().addMapLayer(xyz, True)
    layers = {s.label: s.spec for s in imagery_sources.raster_layer_sources()}
    assert layers["Layer: scene"] == str(tif)
    assert {s.label: s.name for s in imagery_sources.raster_layer_sources()}["Layer: scene"] == "scene"
    if xyz.isValid():  # the wms provider may refuse a layer it cannot reach; the decoding is what is tested
        assert layers["Layer: basemap"] == URL


def test_dataset_dialog_exports_a_utm_point_layer_and_builds_the_command(qgis_iface, qgis_new_project, manager,
                                                                         area_file, token_authcfg, tmp_path):
    points = QgsVectorLayer("Point?crs=EPSG:32735&field=power:string", "my towers", "memory")
    feature = QgsFeature(points.fields())
    feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(500_000, 8_290_000)))
    feature["power"] = "tower"
    points.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(points)
    dialog = BuildDatasetDialog(qgis_iface, manager)
    dialog.area.set_path(area_file)
    dialog.imagery.set_spec(f"{URL}?access_token={imagery_sources.TOKEN_REF}", token_authcfg)
    dialog.out.setFilePath(str(tmp_path / "ds1"))
    dialog.from_layer.setChecked(True)
    dialog.points.setLayer(points)
    job = dialog.build()
    towers = str(tmp_path / "ds1-towers.geojson")
    assert job["steps"] == [commands.dataset_args(
        area_file, towers, f"{URL}?access_token=${{TOWER_DETECTOR_TOKEN}}", str(tmp_path / "ds1"), zoom=18,
        background_ratio=3.0, split="0.7,0.15,0.15", block_size=8, seed=0, tower_filter="all",
        cache=str(tmp_path / "work" / "cache"), max_tiles=100_000_000)]
    assert job["env"] == {"TOWER_DETECTOR_TOKEN": TOKEN}
    assert TOKEN not in json.dumps(job["steps"])
    lon, lat = json.load(open(towers))["features"][0]["geometry"]["coordinates"]
    assert lon == pytest.approx(27.0, abs=1e-6) and -15.5 < lat < -15.4  # exported in EPSG:4326

    dialog.overpass.setChecked(True)
    dialog.span_negatives.setValue(1.5)  # OSM's lines give negatives along their spans
    step = dialog.build()["steps"][0]
    assert step[step.index("--towers") + 1] == "overpass" and "--tower-filter" not in step
    assert step[step.index("--span-negatives") + 1] == "1.5"
    dialog.deleteLater()


def test_dialog_errors_are_one_line_and_start_nothing(qgis_iface, manager, plugin_settings):
    dialog = PredictDialog(qgis_iface, manager)
    dialog.imagery.set_spec("")
    assert dialog.run() is None
    assert dialog.error.text() == "choose the model folder"
    assert manager.store.jobs == []
    dialog.deleteLater()


def test_train_dialog_builds_train_or_search(qgis_iface, manager, tmp_path):
    dialog = TrainDialog(qgis_iface, manager)
    dialog.data.setFilePath(str(tmp_path / "ds"))
    dialog.out.setFilePath(str(tmp_path / "m"))
    dialog.weights.setCurrentText("none")
    dialog.image_size.setValue(72)
    job = dialog.build()
    assert job["steps"] == [commands.train_args(str(tmp_path / "ds"), str(tmp_path / "m"), weights="none",
                                                image_size=72)]
    assert job["outputs"] == {"model": str(tmp_path / "m")}
    dialog.mode.setCurrentIndex(1)
    dialog.trials.setValue(12)
    job = dialog.build()
    assert job["kind"] == "search" and job["outputs"]["model"] == str(tmp_path / "m" / "best")
    assert job["steps"][0][:7] == ["search", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "m"),
                                   "--trials", "12"]
    dialog.weights.setCurrentText("file…")
    with pytest.raises(ValueError, match="weights file"):
        dialog.build()
    dialog.deleteLater()


def test_train_dialog_starts_from_a_model_or_on_another_backbone(qgis_iface, manager, tmp_path):
    model = make_model_dir(tmp_path / "v1")
    dialog = TrainDialog(qgis_iface, manager)
    dialog.data.setFilePath(str(tmp_path / "ds"))
    dialog.out.setFilePath(str(tmp_path / "v2"))
    dialog.backbone.setCurrentText("mobilenet_v3_small")
    job = dialog.build()
    assert job["steps"][0][job["steps"][0].index("--backbone") + 1] == "mobilenet_v3_small"
    # the compact backbone has no pretrained weights: the weights input goes grey and none is sent
    dialog.weights.setCurrentText("imagenet")
    dialog.backbone.setCurrentText("compact")
    assert not dialog.weights.isEnabled() and not dialog.weights_file.isEnabled()
    step = dialog.build()["steps"][0]
    assert step[step.index("--backbone") + 1] == "compact" and step[step.index("--weights") + 1] == "none"
    dialog.backbone.setCurrentText("xception")  # the default is left to the CLI (a params file may set another)
    assert dialog.weights.isEnabled() and "--backbone" not in dialog.build()["steps"][0]
    # a warm start: the model brings its weights and backbone, so their inputs go grey and are not sent
    dialog.init.setFilePath(str(model))
    assert not dialog.weights.isEnabled() and not dialog.backbone.isEnabled() and dialog.epochs_fine.isEnabled()
    dialog.epochs_fine.setValue(5)
    job = dialog.build()
    assert job["steps"] == [commands.train_args(str(tmp_path / "ds"), str(tmp_path / "v2"), init=str(model),
                                                epochs_fine=5)]
    assert "--init" in job["steps"][0] and "--weights" not in job["steps"][0]
    dialog.mode.setCurrentIndex(1)
    with pytest.raises(ValueError, match="a search trains many models afresh"):
        dialog.build()
    dialog.mode.setCurrentIndex(0)
    dialog.init.setFilePath(str(tmp_path))
    with pytest.raises(ValueError, match="not a model folder made by Train"):
        dialog.build()
    dialog.init.setFilePath("")
    assert dialog.weights.isEnabled() and dialog.backbone.isEnabled()
    dialog.deleteLater()


def test_predict_dialog_runs_predict_then_results_with_the_models_threshold(qgis_iface, manager, area_file,
                                                                            tmp_path):
    model = make_model_dir(tmp_path / "model")
    dialog = PredictDialog(qgis_iface, manager)
    dialog.model.setFilePath(str(model))
    assert dialog.threshold.value() == pytest.approx(0.62)  # the model's Youden threshold
    dialog.imagery.set_spec(str(tmp_path / "scene.tif"))
    dialog.area.set_path(area_file)
    dialog.name.setText("p1")
    dialog.out.setFilePath(str(tmp_path / "results"))
    dialog.workers.setValue(4)
    assert dialog.views.currentData() == 1  # the default: one view, the fastest
    dialog.views.setCurrentIndex(3)
    assert dialog.threshold.value() == pytest.approx(0.54)  # the Youden threshold of the 8-view scores
    dialog.views.setCurrentIndex(0)
    assert dialog.threshold.value() == pytest.approx(0.62)
    dialog.views.setCurrentIndex(3)
    job = dialog.build()
    folder = tmp_path / "results" / "p1"
    predict, merge = job["steps"]
    # a local run's chunks hold a minute of work at the Settings' rate (10 tiles/s), so a cancel loses little
    assert predict == commands.predict_args(str(model), str(tmp_path / "scene.tif"), str(folder / "store"),
                                            area=area_file, workers=4, max_tiles=100_000_000, views=8,
                                            checkpoint_every=600)
    assert predict[predict.index("--views") + 1] == "8"
    assert merge == commands.results_args(str(folder / "store"), heatmap=str(folder / "heatmap.tif"),
                                          candidates=str(folder / "candidates.gpkg"), threshold=0.54,
                                          json_path=str(folder / "scores.json"))
    assert job["outputs"]["candidates"] == str(folder / "candidates.gpkg") and job["outputs"]["threshold"] == 0.54
    assert "--line-rescore" not in merge  # off unless asked for
    dialog.line_rescore.setChecked(True)
    assert "--line-rescore" in dialog.build()["steps"][1]
    dialog.where.setCurrentIndex(1)  # a remote run is fetched without re-scoring: the choice goes grey
    assert not dialog.line_rescore.isEnabled()
    dialog.deleteLater()


def test_remote_predict_needs_a_backend_with_remote_and_a_bucket(qgis_iface, manager, area_file, plugin_settings,
                                                                 fake_backend, tmp_path):
    model = make_model_dir(tmp_path / "model")
    dialog = PredictDialog(qgis_iface, manager)
    dialog.model.setFilePath(str(model))
    dialog.imagery.set_spec(str(tmp_path / "scene.tif"))
    dialog.area.set_path(area_file)
    dialog.name.setText("p2")
    dialog.where.setCurrentIndex(1)
    with pytest.raises(ValueError, match="AWS bucket"):
        dialog.build()
    plugin_settings.set_value("aws/bucket", "my-bucket")
    plugin_settings.set_value("aws/profile", "work")
    fake_backend("sys.exit(2)")  # knows no command at all
    with pytest.raises(ValueError, match="no `tower-detector remote`"):
        dialog.build()

    plugin_settings.set_value("cli/path", real_cli())
    job = dialog.build()
    [step] = job["steps"]
    assert job["kind"] == "remote-submit" and job["remote"]["kind"] == "predict"
    assert step[:3] == ["remote", "submit", "predict"] and "s3://my-bucket/jobs/p2/store" in step
    assert step[step.index("--profile") + 1] == "work" and step[step.index("--name") + 1] == "p2"
    dialog.deleteLater()


def test_settings_dialog_checks_the_backend_and_keeps_secrets_out(plugin_settings, fake_backend, token_authcfg):
    dialog = SettingsDialog()
    dialog.cli_path.setFilePath(real_cli())
    assert dialog.check()
    assert dialog.check_label.text().startswith("tower-detector ")
    crash = fake_backend(CRASH_SCRIPT)
    dialog.cli_path.setFilePath(str(crash))
    assert not dialog.check()
    assert "RuntimeError: the model exploded" in dialog.check_label.text()

    dialog.edits["imagery/spec"].setText(f"{URL}?access_token={TOKEN}")
    assert not dialog.save()
    assert "access_token" in dialog.check_label.text()
    assert plugin_settings.value("imagery/spec") == ""
    dialog.edits["imagery/spec"].setText(f"{URL}?access_token={imagery_sources.TOKEN_REF}")
    dialog.cli_path.setFilePath(real_cli())  # a backend that works saves at once
    dialog.auth.setConfigId(token_authcfg)
    dialog.numbers["area/max_tiles"].setValue(5000)
    assert dialog.save()
    assert plugin_settings.value("imagery/authcfg") == token_authcfg
    assert plugin_settings.value("area/max_tiles") == 5000
    QgsSettings().sync()
    assert TOKEN not in open(QgsSettings().fileName(), encoding="utf-8").read()
    dialog.deleteLater()


def test_settings_check_a_backend_on_save_and_show_the_whole_result(plugin_settings, fake_backend, tmp_path):
    """Save kept a backend path that did not work, and Check's answer was cut off."""
    from qgis.PyQt.QtWidgets import QApplication

    plugin_settings.set_value("cli/path", real_cli())
    crash = fake_backend(CRASH_SCRIPT)  # configures itself: put the working one back
    plugin_settings.set_value("cli/path", real_cli())
    dialog = SettingsDialog()
    dialog.show()
    try:
        for broken, reason in ((tmp_path / "missing" / "tower-detector", "not an executable"),
                               (crash, "RuntimeError: the model exploded")):
            dialog.cli_path.setFilePath(str(broken))
            assert not dialog.save()  # not saved: said why, and offered to keep it anyway
            assert plugin_settings.value("cli/path") == real_cli() and not dialog.result()
            text = dialog.check_label.text()
            assert reason in text and "Save anyway" in text
            assert dialog.save_button.text() == "Save anyway"
            QApplication.processEvents()
            label = dialog.check_label
            assert label.wordWrap() and label.height() >= label.heightForWidth(label.width())
        assert dialog.save()  # the second Save keeps the path the user insists on
        assert plugin_settings.value("cli/path") == str(crash)

        fixed = SettingsDialog()
        fixed.cli_path.setFilePath(str(crash))
        assert not fixed.save()
        fixed.cli_path.setFilePath(real_cli())  # fixed: saves at once, and the button says Save again
        assert fixed.save_button.text() == "Save"
        assert fixed.save() and plugin_settings.value("cli/path") == real_cli()
        fixed.deleteLater()
    finally:
        dialog.close()
        dialog.deleteLater()


def test_settings_are_grouped_and_fit_a_laptop_screen(plugin_settings):
    from qgis.PyQt.QtWidgets import QFormLayout, QGroupBox

    dialog = SettingsDialog()
    groups = {box.title(): box for box in dialog.findChildren(QGroupBox)}
    assert list(groups) == ["Local", "Imagery", "AWS", "Estimates and limits", "Results and review"]

    def group_of(widget):
        while widget is not None and not isinstance(widget, QGroupBox):
            widget = widget.parentWidget()
        return widget.title() if widget is not None else None

    assert {group_of(w) for w in (dialog.run_on, dialog.cli_path, dialog.check_label, dialog.work_dir)} == {"Local"}
    assert {group_of(dialog.edits[k]) for k in ("aws/profile", "aws/region", "aws/bucket", "aws/queue")} == {"AWS"}
    assert {group_of(dialog.edits["imagery/spec"]), group_of(dialog.auth)} == {"Imagery"}
    assert {group_of(dialog.numbers[k]) for k in ("estimate/local_tiles_per_s", "estimate/remote_usd_per_hour",
                                                  "area/warn_tiles", "area/max_tiles")} == {"Estimates and limits"}
    assert {group_of(dialog.numbers[k]) for k in ("results/heatmap_floor", "results/threshold")} | {
        group_of(dialog.edits[k]) for k in ("review/josm_url", "review/overpass_url")} == {"Results and review"}
    for box in groups.values():  # every input says what it is for
        form = box.layout()
        for row in range(form.rowCount()):
            field = form.itemAt(row, QFormLayout.FieldRole) or form.itemAt(row, QFormLayout.SpanningRole)
            widgets = [field.widget()] if field.widget() is not None else [
                field.layout().itemAt(i).widget() for i in range(field.layout().count())]
            if widgets[0] is not dialog.check_label:
                assert len(widgets[0].toolTip()) > 15, (box.title(), row)
    hint = dialog.sizeHint()
    assert hint.width() <= 1366 and hint.height() <= 700  # a 1366 x 768 laptop, less QGIS's title and task bars
    dialog.edits["review/josm_url"].setText("http://127.0.0.1:8112")
    assert dialog.save() and plugin_settings.value("review/josm_url") == "http://127.0.0.1:8112"
    dialog.deleteLater()


def test_settings_under_their_old_names_move_to_the_new_ones(plugin_settings):
    store = QgsSettings()
    store.remove("tower_detector/cli/path")
    store.setValue("tower_detector/backend/path", "/opt/td/bin/tower-detector")
    store.setValue("tower_detector/backend/mode", "aws")
    assert plugin_settings.value("cli/path") == "/opt/td/bin/tower-detector"
    assert plugin_settings.value("jobs/run_on") == "aws"
    assert not store.contains("tower_detector/backend/path") and not store.contains("tower_detector/backend/mode")
    assert plugin_settings.value("backend/path") == "/opt/td/bin/tower-detector"  # the old name still answers
    store.setValue("tower_detector/backend/mode", "local")  # a stale old value never replaces a new one
    assert plugin_settings.value("jobs/run_on") == "aws"


def test_export_layer_points_writes_wgs84_geojson(qgis_new_project, tmp_path):
    layer = QgsVectorLayer("Point?crs=EPSG:3857", "p", "memory")
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(1_113_194.9079, 0)))
    layer.dataProvider().addFeatures([f])
    path = export_layer_points(layer, str(tmp_path / "sub" / "p.geojson"))
    lon, lat = json.load(open(path))["features"][0]["geometry"]["coordinates"]
    assert (lon, lat) == (pytest.approx(10.0, abs=1e-6), pytest.approx(0.0, abs=1e-9))


def test_load_results_dialog_emits_what_to_load(tmp_path):
    dialog = LoadResultsDialog(heatmap=str(tmp_path / "h.tif"))
    got = []
    dialog.load.connect(lambda *a: got.append(a))
    dialog.threshold.setValue(0.8)
    dialog.accept_load()
    assert got == [(str(tmp_path / "h.tif"), "", pytest.approx(0.8), pytest.approx(0.5))]
    empty = LoadResultsDialog()
    empty.accept_load()
    assert "choose a heatmap" in empty.error.text()
    dialog.deleteLater()
    empty.deleteLater()


def test_predict_names_the_imagery_after_the_chosen_connection(qgis_iface, manager, area_file, tmp_path):
    """The name goes with the job (`predict --imagery-name`): the OSM changeset's source, never a host."""
    settings = QgsSettings()
    settings.setValue("qgis/connections-xyz/Esri World Imagery/url", URL)
    try:
        dialog = PredictDialog(qgis_iface, manager)
        dialog.model.setFilePath(str(make_model_dir(tmp_path / "model")))
        dialog.area.set_path(area_file)
        dialog.out.setFilePath(str(tmp_path / "results"))
        labels = [dialog.imagery.combo.itemText(i) for i in range(dialog.imagery.combo.count())]
        dialog.imagery.combo.setCurrentIndex(labels.index("XYZ connection: Esri World Imagery"))
        predict = dialog.build()["steps"][0]
        assert predict[predict.index("--imagery-name") + 1] == "Esri World Imagery"
        assert predict[predict.index("--imagery") + 1] == URL
        dialog.imagery.spec.setText(URL + "?style=other")  # edited: no longer that connection
        assert "--imagery-name" not in dialog.build()["steps"][0]
        dialog.deleteLater()
    finally:
        settings.remove("qgis/connections-xyz/Esri World Imagery")


def test_osm_tile_servers_are_never_offered_as_imagery(qgis_new_project):
    settings = QgsSettings()
    settings.setValue("qgis/connections-xyz/OSM test/url", "https://tile.openstreetmap.org/{z}/{x}/{y}.png")
    settings.setValue("qgis/connections-xyz/Aerial test/url", URL)
    try:
        labels = [s.label for s in imagery_sources.xyz_connections()]
        assert "XYZ connection: Aerial test" in labels and "XYZ connection: OSM test" not in labels
    finally:
        settings.remove("qgis/connections-xyz/OSM test")
        settings.remove("qgis/connections-xyz/Aerial test")


def test_dialogs_start_from_the_project_and_remember_their_last_run(qgis_iface, qgis_new_project, manager,
                                                                   area_file, fake_backend, tmp_path):
    """Issue 33: imagery defaulted to "URL" with a raster layer loaded, tower labels to Overpass with a point layer
    loaded, and a dialog reopened after a failure came back blank."""
    fake_backend('print(json.dumps({"event": "error", "message": "imagery unreachable", "kind": "bad_input"}))\n'
                 'sys.exit(2)')
    tif = make_heatmap(tmp_path / "scene.tif", [[0.5]])
    QgsProject.instance().addMapLayer(QgsRasterLayer(str(tif), "scene", "gdal"))
    heatmap = QgsRasterLayer(str(make_heatmap(tmp_path / "heat.tif", [[0.5]])), "a heatmap", "gdal")
    heatmap.setCustomProperty("tower_detector/role", "heatmap")  # the plugin's own: never imagery
    QgsProject.instance().addMapLayer(heatmap)
    points = QgsVectorLayer("Point?crs=EPSG:4326&field=power:string", "my towers", "memory")
    candidates = QgsVectorLayer("Point?crs=EPSG:4326&field=tile_id:string&field=score:double", "candidate points",
                                "memory")
    QgsProject.instance().addMapLayers([candidates, points])
    dialog = BuildDatasetDialog(qgis_iface, manager)
    assert dialog.imagery.resolved().spec == str(tif) and dialog.imagery.name() == "scene"
    assert dialog.from_layer.isChecked() and dialog.points.currentLayer() is points
    dialog.deleteLater()

    model = make_model_dir(tmp_path / "model")
    dialog = PredictDialog(qgis_iface, manager)
    dialog.model.setFilePath(str(model))
    dialog.imagery.set_spec(f"{URL}?access_token=tok-9d8e-LITERAL")  # a secret typed in: never remembered
    dialog.area.set_path(area_file)
    dialog.workers.setValue(7)
    dialog.views.setCurrentIndex(2)
    job_id = dialog.run()
    support.wait_until(lambda: manager.store.get(job_id)["status"] == "failed", 30, "the failure")
    again = PredictDialog(qgis_iface, manager)
    assert again.model.filePath() == str(model) and again.area.path() == area_file
    assert again.workers.value() == 7 and again.views.currentData() == 4
    assert again.imagery.resolved().spec == str(tif)  # the project's layer again, not the URL with its secret
    assert "name" not in PredictDialog.remembered  # each run gets its own folder name
    assert "tok-9d8e-LITERAL" not in json.dumps({k: QgsSettings().value(k) for k in QgsSettings().allKeys()})
    again.imagery.combo.setCurrentIndex(again.imagery.combo.findText("Layer: scene"))
    again.run()
    third = PredictDialog(qgis_iface, manager)
    assert third.imagery.combo.currentText() == "Layer: scene" and third.imagery.name() == "scene"
    for d in (dialog, again, third):
        d.deleteLater()


def test_predict_dataset_and_train_show_their_cost_and_ask_before_large_runs(qgis_iface, manager, area_file,
                                                                            plugin_settings, monkeypatch, tmp_path):
    """Issue 33: Predict had no tile or cost check (a 50 M-tile country started with no question: 58 days at the
    plugin's own rate); only the backend refused an area over the limit, 27 s later, in CLI wording."""
    from qgis.PyQt.QtWidgets import QMessageBox

    asked = []
    answer = [QMessageBox.No]
    monkeypatch.setattr(QMessageBox, "question", lambda _parent, _title, text, *a: asked.append(text) or answer[0])
    model = make_model_dir(tmp_path / "model")
    dialog = PredictDialog(qgis_iface, manager)  # the area file: about 1.1 x 1.1 km, about 8 x 8 tiles
    dialog.model.setFilePath(str(model))
    dialog.imagery.set_spec(str(tmp_path / "scene.tif"))
    dialog.area.set_path(area_file)
    tiles = int(dialog.estimate.text().split(" tiles")[0].lstrip("≈ ").replace(",", ""))
    assert 50 < tiles < 100 and "this computer ≈" in dialog.estimate.text() and "$" in dialog.estimate.text()
    assert dialog.run() is not None and asked == []  # small: no question

    plugin_settings.set_value("area/warn_tiles", 10)  # large: asked, and No starts nothing
    count = len(manager.store.jobs)
    assert dialog.run() is None and "large job" in asked[-1] and dialog.error.text() == "not started"
    assert len(manager.store.jobs) == count
    answer[0] = QMessageBox.Yes
    assert dialog.run() is not None
    plugin_settings.set_value("area/max_tiles", 30)  # over the limit: refused at once, in one line
    assert dialog.run() is None and "over the limit of 30" in dialog.error.text()
    assert len(manager.store.jobs) == count + 1

    dataset = BuildDatasetDialog(qgis_iface, manager)
    dataset.area.set_path(area_file)
    assert "area ≈" in dataset.estimate.text()
    dataset.imagery.set_spec(str(tmp_path / "scene.tif"))
    dataset.out.setFilePath(str(tmp_path / "ds"))
    assert dataset.run() is None and "over the limit of 30" in dataset.error.text()

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"splits": {"train": {"tiles": 1000}}}))
    train = TrainDialog(qgis_iface, manager)
    train.data.setFilePath(str(tmp_path / "ds"))
    train.out.setFilePath(str(tmp_path / "m"))
    train.weights.setCurrentText("none")
    assert "1,000 training tiles x up to 23 epochs" in train.estimate.text()
    train.epochs_fine.setValue(30)  # 1,000 x 30 x 3 scorings at 10 tiles/s: 2.5 h, over the 2 h that asks first
    assert "x 30 epochs: this computer ≈ 2.5 h" in train.estimate.text()
    answer[0] = QMessageBox.No
    assert train.run() is None and "takes about 2.5 h" in asked[-1]
    for d in (dialog, dataset, train):
        d.deleteLater()


def test_every_dialog_has_help_at_its_section_and_greys_what_does_not_apply(qgis_iface, manager, monkeypatch,
                                                                            tmp_path):
    """Issue 33: no help link anywhere, and fields that did not apply stayed enabled (a weights file with weights
    "none"). Each dialog's Help opens its own section of the user guide; the anchor exists there."""
    import re

    from qgis.PyQt.QtGui import QDesktopServices
    from qgis.PyQt.QtWidgets import QDialogButtonBox

    from tower_detector_plugin.core.help import TOPICS, help_url
    from tower_detector_plugin.ui.area_picker import AreaPickerDialog
    from tower_detector_plugin.ui.metrics_dialog import MetricsDialog

    guide = (REPO / "docs" / "user-guide.md").read_text()
    assert set(re.findall(r'<a id="([a-z]+)"></a>', guide)) >= set(TOPICS)
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()) or True)
    dialogs = {"dataset": BuildDatasetDialog(qgis_iface, manager), "train": TrainDialog(qgis_iface, manager),
               "predict": PredictDialog(qgis_iface, manager), "results": LoadResultsDialog(),
               "settings": SettingsDialog(), "area": AreaPickerDialog(qgis_iface),
               "metrics": MetricsDialog(str(make_model_dir(tmp_path / "m")))}
    for topic, dialog in dialogs.items():
        box = dialog.findChild(QDialogButtonBox)
        box.button(QDialogButtonBox.Help).click()
        assert opened[-1] == help_url(topic) and opened[-1].endswith(f"docs/user-guide.md#{topic}")
        assert opened[-1].startswith("https://github.com/tower-detector/tower-detector/blob/main/")

    train = dialogs["train"]
    train.weights.setCurrentText("none")
    assert not train.weights_file.isEnabled()
    train.weights.setCurrentText("file…")
    assert train.weights_file.isEnabled()
    assert not train.trials.isEnabled() and not train.space.isEnabled() and train.init.isEnabled()
    train.mode.setCurrentIndex(1)  # a search: its own inputs, and no model to start from
    assert train.trials.isEnabled() and train.metric.isEnabled() and not train.init.isEnabled()
    dataset = dialogs["dataset"]
    dataset.overpass.setChecked(True)
    assert not dataset.points.isEnabled()
    dataset.from_layer.setChecked(True)
    assert dataset.points.isEnabled()
    for dialog in dialogs.values():
        dialog.deleteLater()


def test_the_work_folder_is_asked_for_on_first_use_and_old_work_is_kept(qgis_iface, plugin_settings, monkeypatch,
                                                                       tmp_path):
    """Issue 33: the work folder was hidden deep in the QGIS profile. The first job dialog asks for one, offering
    "Tower Detector" in the user's documents; a profile folder that already holds work is kept without asking."""
    from qgis.PyQt.QtCore import QStandardPaths
    from qgis.PyQt.QtWidgets import QDialog

    from tower_detector_plugin.plugin import TowerDetectorPlugin

    documents = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation)
    assert plugin_settings.suggested_work_dir() == os.path.join(documents, "Tower Detector")
    monkeypatch.setattr(plugin_settings, "suggested_work_dir", lambda: str(tmp_path / "Documents" / "Tower Detector"))
    monkeypatch.setattr(plugin_settings, "profile_work_dir", lambda: str(tmp_path / "profile" / "tower_detector"))
    plugin_settings.set_value("work_dir", "")
    asked = []
    monkeypatch.setattr(QDialog, "exec_", lambda self: asked.append(self.objectName()) or QDialog.Rejected)
    plugin = TowerDetectorPlugin(qgis_iface)
    assert plugin.build_dataset() is None and asked == ["TowerDetectorWorkFolder"]  # cancelled: nothing opens
    assert plugin_settings.value("work_dir") == ""
    monkeypatch.setattr(QDialog, "exec_", lambda self: asked.append(self.objectName()) or QDialog.Accepted)
    dialog = plugin.build_dataset()
    assert dialog is not None and plugin_settings.value("work_dir") == str(tmp_path / "Documents" / "Tower Detector")
    assert os.path.isdir(tmp_path / "Documents" / "Tower Detector")
    plugin.train()
    assert asked == ["TowerDetectorWorkFolder"] * 2  # asked once, then never again

    plugin_settings.set_value("work_dir", "")  # an older install: its work in the profile is kept, unasked
    (tmp_path / "profile" / "tower_detector").mkdir(parents=True)
    (tmp_path / "profile" / "tower_detector" / "jobs.json").write_text("{}")
    plugin.predict()
    assert asked == ["TowerDetectorWorkFolder"] * 2
    assert plugin_settings.value("work_dir") == str(tmp_path / "profile" / "tower_detector")
    plugin.unload()


def test_an_area_can_be_a_layers_extent(qgis_iface, qgis_new_project, manager, plugin_settings, tmp_path):
    """With no area drawn yet, the dialogs offer the extent of the project's layers (the imagery's first) as the
    area: written as an area file when the dialog runs, and offered by name from then on."""
    from tower_detector_plugin.ui.widgets import AreaWidget

    tif = make_heatmap(tmp_path / "scene.tif", [[0.5] * 4] * 4)
    QgsProject.instance().addMapLayer(QgsRasterLayer(str(tif), "scene", "gdal"))
    widget = AreaWidget(qgis_iface)
    assert widget.combo.currentText() == "Extent of scene"
    draft = widget.current()
    assert "/.drafts/" in draft and json.load(open(draft))["features"]
    path = widget.path()  # what a run takes: the area is now the user's
    assert path == str(tmp_path / "work" / "areas" / "scene.geojson") and os.path.isfile(path)
    again = AreaWidget(qgis_iface)
    assert again.combo.currentText() == "scene" and again.current() == path and again.combo.toolTip() == path


def test_file_inputs_show_the_name_end_of_a_long_path_and_the_whole_path_as_tooltip(qgis_app):
    """Issue 33: long paths were cut off everywhere, their names out of sight."""
    from qgis.gui import QgsFileWidget

    from tower_detector_plugin.ui.widgets import file_widget

    path = "/home/analyst/Documents/Tower Detector/models/" + "x" * 80 + "/model-20261207-055517"
    widget = file_widget(QgsFileWidget.GetDirectory, path=path)
    assert widget.toolTip() == path and widget.lineEdit().cursorPosition() == len(path)
    widget.setFilePath("/tmp/other")
    assert widget.toolTip() == "/tmp/other"
