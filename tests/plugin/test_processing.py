"""The Processing provider: from Python (processing.run, a model) and from the command line (qgis_process.bin)."""

import json
import shutil
import subprocess
import sys

import pytest
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsGraduatedSymbolRenderer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterVectorLayer,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)

from tests.plugin import support as support
from tests.plugin.support import REPO, make_candidates, make_heatmap, make_model_dir, offscreen_env, real_cli
from tower_detector_plugin.core import result_layers
from tower_detector_plugin.core.commands import EXPORT_KINDS
from tower_detector_plugin.processing.provider import TowerDetectorProvider

fake_backend = support.fake_backend  # a fixture
plugin_settings = support.plugin_settings  # a fixture

QGIS_PROCESS = shutil.which("qgis_process.bin")
BOX = QgsRectangle(500_000, 8_290_000, 502_000, 8_292_000)


@pytest.fixture(scope="module")
def provider(qgis_processing):
    provider = TowerDetectorProvider()
    assert QgsApplication.processingRegistry().addProvider(provider)
    yield provider
    QgsApplication.processingRegistry().removeProvider(provider)


@pytest.fixture
def utm_area(qgis_new_project):
    layer = QgsVectorLayer("Polygon?crs=EPSG:32735", "area", "memory")
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromRect(BOX))
    layer.dataProvider().addFeatures([f])
    QgsProject.instance().addMapLayer(layer)
    return layer


def _run(algorithm, params):
    import processing

    return processing.run(algorithm, params, feedback=QgsProcessingFeedback())


def _cli_count(area_file):
    out = subprocess.run([real_cli(), "tiles", "--area", area_file, "--events"], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout.splitlines()[-1])["count"]


def test_provider_lists_its_algorithms(provider):
    assert sorted(a.id() for a in provider.algorithms()) == [
        "towerdetector:builddataset", "towerdetector:conflate", "towerdetector:exportreview",
        "towerdetector:loadresults", "towerdetector:predict", "towerdetector:tilecount", "towerdetector:train"]
    assert all(a.shortHelpString() for a in provider.algorithms())
    # straight under the provider in the toolbox: no "Tower Detector" group inside "Tower Detector"
    assert all(a.group() == "" and a.groupId() == "" for a in provider.algorithms())


def test_a_backend_run_leaves_no_file_open(provider, utm_area, plugin_settings):
    """qgis_process warned of an unclosed file: the backend's pipes are closed when its run ends."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        result = _run("towerdetector:tilecount", {"AREA": utm_area})
        gc.collect()
    assert result["EXACT"] == 1
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_tile_count_of_a_utm_layer(provider, utm_area, plugin_settings, tmp_path):
    result = _run("towerdetector:tilecount", {"AREA": utm_area, "ZOOM": 18, "OUTPUT": str(tmp_path / "c.json")})
    assert result["EXACT"] == 1
    assert result["COUNT"] == _cli_count(result["AREA_FILE"]) > 0
    assert result["AREA_KM2"] == pytest.approx(4.0 / 0.9996**2, rel=1e-3)
    assert json.load(open(tmp_path / "c.json"))["count"] == result["COUNT"]
    with pytest.raises(QgsProcessingException, match="over --max-tiles 10"):
        _run("towerdetector:tilecount", {"AREA": utm_area, "MAX_TILES": 10})

    plugin_settings.set_value("cli/path", str(tmp_path / "no" / "tower-detector"))
    estimate = _run("towerdetector:tilecount", {"AREA": utm_area})
    assert estimate["EXACT"] == 0 and estimate["COUNT"] == pytest.approx(result["COUNT"], rel=0.1)


def test_tile_count_in_a_processing_model(provider, utm_area, plugin_settings, tmp_path):
    model = QgsProcessingModelAlgorithm("count tiles", "tests")
    model.addModelParameter(QgsProcessingParameterVectorLayer("area", "area"), QgsProcessingModelParameter("area"))
    child = QgsProcessingModelChildAlgorithm("towerdetector:tilecount")
    child.setChildId("count")
    child.addParameterSources("AREA", [QgsProcessingModelChildParameterSource.fromModelParameter("area")])
    child.addParameterSources("ZOOM", [QgsProcessingModelChildParameterSource.fromStaticValue(17)])
    out = QgsProcessingModelOutput("cover")
    out.setChildOutputName("OUTPUT")
    child.setModelOutputs({"cover": out})
    model.addChildAlgorithm(child)
    ok, problems = model.validate()
    assert ok, problems
    result = _run(model, {"area": utm_area, "count:cover": str(tmp_path / "cover.json")})
    cover = json.load(open(result["count:cover"]))
    assert cover["zoom"] == 17 and cover["count"] > 0


def test_build_dataset_from_a_point_layer_with_the_real_backend(provider, plugin_settings, tmp_path):
    scene = tmp_path / "scene"
    subprocess.run([real_cli(), "sample", "--out", str(scene), "--tiles-x", "8", "--tiles-y", "8", "--seed", "3"],
                   check=True, capture_output=True, timeout=120)
    towers = QgsVectorLayer(f"{scene / 'towers.geojson'}|geometrytype=Point", "towers", "ogr")
    result = _run("towerdetector:builddataset", {
        "AREA": str(scene / "area.geojson"), "IMAGERY": str(scene / "scene.tif"), "TOWERS": towers,
        "TOWER_FILTER": "power=tower", "BLOCK_SIZE": 2, "OUTPUT": str(tmp_path / "ds")})
    assert result["OUTPUT"] == str(tmp_path / "ds")
    summary = json.load(open(tmp_path / "ds" / "dataset.json"))
    assert summary["tiles"] > 0 and summary["tower_filter"] == "power=tower"


# A stand-in backend recording its arguments; its `results` writes the files that the test made beforehand.
RECORDER = """
with open(os.environ["ARGV_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[0] == "results":
    import shutil
    shutil.copy(os.environ["HEATMAP_SRC"], args[args.index("--heatmap") + 1])
    shutil.copy(os.environ["CANDIDATES_SRC"], args[args.index("--candidates") + 1])
    print(json.dumps({"event": "result", "message": "merged", "scored": 12, "candidates": 3}))
elif args[0] == "train":
    print(json.dumps({"event": "progress", "done": 1, "total": 2}), flush=True)
    print(json.dumps({"event": "result", "message": "trained", "roc_auc": 0.9, "thresholds": {"youden": 0.6}}))
else:
    print(json.dumps({"event": "result", "message": "ok"}))
"""


@pytest.fixture
def recorder(fake_backend, monkeypatch, tmp_path):
    monkeypatch.setenv("ARGV_LOG", str(tmp_path / "argv.jsonl"))
    monkeypatch.setenv("HEATMAP_SRC", str(make_heatmap(tmp_path / "src.tif", [[0.2, 0.9], [0.95, 0.99]])))
    monkeypatch.setenv("CANDIDATES_SRC", str(make_candidates(tmp_path / "src.gpkg", [(151_000, 142_000, 0.9),
                                                                                      (151_001, 142_000, 0.95),
                                                                                      (151_001, 142_001, 0.99)])))
    fake_backend(RECORDER)
    return lambda: [json.loads(line) for line in open(tmp_path / "argv.jsonl")]


def test_train_maps_its_parameters_to_the_cli(provider, recorder, tmp_path):
    result = _run("towerdetector:train", {"DATA": str(tmp_path), "WEIGHTS": 1, "IMAGE_SIZE": 72, "EPOCHS_FINE": 3,
                                          "OUTPUT": str(tmp_path / "m")})
    assert recorder() == [["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--weights", "none",
                           "--image-size", "72", "--epochs-fine", "3", "--events"]]
    assert result["ROC_AUC"] == 0.9 and result["THRESHOLD"] == 0.6
    with pytest.raises(QgsProcessingException, match="no weights file"):
        _run("towerdetector:train", {"DATA": str(tmp_path), "WEIGHTS": 2, "OUTPUT": str(tmp_path / "m")})


def test_predict_runs_predict_then_results_and_styles_the_outputs(provider, recorder, utm_area, tmp_path):
    model = make_model_dir(tmp_path / "model")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    import processing

    result = processing.run("towerdetector:predict", {
        "MODEL": str(model), "IMAGERY": str(tmp_path / "src.tif"), "AREA": utm_area, "STORE": str(tmp_path / "s"),
        "HEATMAP": str(tmp_path / "h.tif"), "CANDIDATES": str(tmp_path / "c.gpkg"), "WORKERS": 2,
        "VIEWS": 2},  # the third choice: 4 views
        context=context, feedback=QgsProcessingFeedback())
    predict, merge = recorder()
    assert predict[:5] == ["predict", "--model", str(model), "--imagery", str(tmp_path / "src.tif")]
    assert predict[predict.index("--workers") + 1] == "2" and predict[predict.index("--out") + 1] == str(tmp_path / "s")
    assert predict[predict.index("--views") + 1] == "4"
    assert merge == ["results", str(tmp_path / "s"), "--heatmap", str(tmp_path / "h.tif"), "--candidates",
                     str(tmp_path / "c.gpkg"), "--threshold", "0.58", "--events"]  # -1: the model's Youden at 4 views
    assert (result["CANDIDATE_COUNT"], result["SCORED"]) == (3, 12)
    assert (tmp_path / "h.qml").is_file()
    assert isinstance(QgsVectorLayer(f"{tmp_path / 'c.gpkg'}|layername=candidates").renderer(),
                      QgsGraduatedSymbolRenderer)
    names = sorted(d.name for d in context.layersToLoadOnCompletion().values())
    assert names == ["tower candidates", "tower scores (heatmap)"]


def test_failures_become_processing_exceptions_with_the_reason(provider, fake_backend, utm_area, tmp_path):
    from tests.plugin.support import CRASH_SCRIPT

    fake_backend(CRASH_SCRIPT)
    with pytest.raises(QgsProcessingException, match="RuntimeError: the model exploded"):
        _run("towerdetector:tilecount", {"AREA": utm_area})
    with pytest.raises(QgsProcessingException, match="has no"):
        _run("towerdetector:builddataset", {"AREA": utm_area, "IMAGERY": "https://t/{z}/{x}/{y}.png",
                                            "AUTHCFG": "abc1234", "OUTPUT": str(tmp_path / "ds")})


def test_load_results_adds_styled_filtered_layers(provider, qgis_new_project, plugin_settings, tmp_path):
    import processing

    heatmap = make_heatmap(tmp_path / "h.tif", [[0.2, 0.9]])
    candidates = make_candidates(tmp_path / "c.gpkg", [(151_000, 142_000, 0.9), (151_001, 142_000, 0.4)])
    result = processing.runAndLoadResults("towerdetector:loadresults", {
        "HEATMAP": str(heatmap), "CANDIDATES": str(candidates), "THRESHOLD": 0.5}, feedback=QgsProcessingFeedback())
    assert result["CANDIDATE_COUNT"] == 1
    layers = {layer.name(): layer for layer in QgsProject.instance().mapLayers().values()}
    assert layers["tower candidates"].subsetString() == '"score" >= 0.5'
    assert result_layers.count(layers["tower candidates"]) == 1
    assert isinstance(layers["tower candidates"].renderer(), QgsGraduatedSymbolRenderer)
    assert layers["tower scores (heatmap)"].renderer().type() == "singlebandpseudocolor"
    empty = make_candidates(tmp_path / "e.gpkg", [])
    assert processing.run("towerdetector:loadresults", {"CANDIDATES": str(empty)})["CANDIDATE_COUNT"] == 0


@pytest.mark.skipif(not QGIS_PROCESS, reason="qgis_process.bin is not installed (Debian package qgis-providers)")
def test_qgis_process_runs_the_installed_plugin(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import build_plugin

    plugins = tmp_path / "plugins"
    build_plugin.build_plugin(plugins)
    # A profile of its own: pytest-qgis points QGIS_CUSTOM_CONFIG_PATH at the repository's .qgis-settings.
    env = offscreen_env(HOME=str(tmp_path / "home"), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
                        QGIS_OPTIONS_PATH=str(tmp_path / "profile"), QGIS_PLUGINPATH=str(plugins),
                        PATH=f"{REPO / '.venv' / 'bin'}:{offscreen_env()['PATH']}")
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "tower_detector_plugin"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert enable.returncode == 0, enable.stderr
    listed = subprocess.run([QGIS_PROCESS, "list"], env=env, capture_output=True, text=True, timeout=120)
    assert "towerdetector:tilecount" in listed.stdout and "towerdetector:predict" in listed.stdout
    area = tmp_path / "a.geojson"
    area.write_text(json.dumps({"type": "Polygon", "coordinates": [[[28, -15], [28.01, -15], [28.01, -14.99],
                                                                     [28, -14.99], [28, -15]]]}))
    run = subprocess.run([QGIS_PROCESS, "--json", "run", "towerdetector:tilecount", "--", f"AREA={area}", "ZOOM=18"],
                         env={**env, "PYTHONWARNINGS": "always::ResourceWarning"}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr + run.stdout
    assert "ResourceWarning" not in run.stderr  # the backend's pipes are closed
    answer = json.loads(run.stdout[run.stdout.index("{"):])["results"]
    assert answer["EXACT"] == 1 and answer["COUNT"] == _cli_count(str(area))


def test_export_and_conflate_algorithms_run_the_backend(provider, plugin_settings, tmp_path):
    from tests.fakes import candidates_helpers as ch

    real_cli()
    support.sample_scene(tmp_path / "scene", tiles=8, seed=3)
    towers = ch.scene_features(tmp_path / "scene" / "towers.geojson", "tower")
    tiles = [ch.tile_of(*p) for p in towers[:2]]
    path = str(ch.make_candidates(tmp_path / "c.gpkg", tiles, points=towers[:2]))
    ch.review(path, tiles[0], "confirmed")
    out = tmp_path / "confirmed.osm"
    kinds = list(EXPORT_KINDS)
    osm = str(tmp_path / "scene" / "towers.geojson")
    # the confirmed tower is one OSM has: unchecked candidates are refused, OSM data or the asking lets them through
    with pytest.raises(QgsProcessingException, match="never conflated with OSM"):
        _run("towerdetector:exportreview", {"CANDIDATES": path, "FORMAT": kinds.index("osm"), "OUTPUT": str(out)})
    with pytest.raises(QgsProcessingException, match="all 1 confirmed candidates are within 30 m"):
        _run("towerdetector:exportreview", {"CANDIDATES": path, "FORMAT": kinds.index("osm"), "OSM": osm,
                                            "OUTPUT": str(out)})
    result = _run("towerdetector:exportreview", {"CANDIDATES": path, "FORMAT": kinds.index("osm"),
                                                 "SOURCE": "Esri World Imagery", "INCLUDE_NEAR_DUPLICATES": True,
                                                 "OUTPUT": str(out)})
    assert result["MESSAGE"].startswith("1 candidates") and out.is_file()
    assert 'k="power" v="tower"' in out.read_text() and 'v="Esri World Imagery"' in out.read_text()
    with pytest.raises(QgsProcessingException, match="tower-detector export: .*\\.osm"):
        _run("towerdetector:exportreview", {"CANDIDATES": path, "FORMAT": kinds.index("osm"),
                                            "INCLUDE_NEAR_DUPLICATES": True, "OUTPUT": str(tmp_path / "confirmed.txt")})
    result = _run("towerdetector:conflate", {"CANDIDATES": path, "OSM": osm, "DUPLICATE_DISTANCE": 30})
    assert "1 newly marked, 1 reviewed by people left as they were" in result["MESSAGE"]
    statuses = ch.rows(path)
    assert statuses[f"{tiles[0][0]}-{tiles[0][1]}-18"]["status"] == "confirmed"  # a person's decision, kept
    assert statuses[f"{tiles[1][0]}-{tiles[1][1]}-18"]["status"] == "already_mapped"
