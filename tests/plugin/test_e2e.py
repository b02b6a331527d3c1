"""The whole loop through the plugin's own dialogs and jobs with the real backend, on a synthetic scene:
build training data from a point layer, train a tiny model, predict, load the results from the Jobs panel."""

import os
import subprocess

import pytest
from qgis.core import QgsGraduatedSymbolRenderer, QgsProject, QgsVectorLayer

from tests.plugin import support as support
from tests.plugin.support import real_cli, wait_until
from tower_detector_plugin.core import result_layers
from tower_detector_plugin.plugin import TowerDetectorPlugin
from tower_detector_plugin.ui.job_dialogs import BuildDatasetDialog, PredictDialog, TrainDialog
from tower_detector_plugin.ui.jobs_dock import JobsDock

plugin_settings = support.plugin_settings  # a fixture


@pytest.fixture
def scene(tmp_path):
    out = tmp_path / "scene"
    subprocess.run([real_cli(), "sample", "--out", str(out), "--tiles-x", "16", "--tiles-y", "16", "--seed", "7"],
                   check=True, capture_output=True, timeout=120)
    return out


def _finish(manager, job_id, timeout_s=180):
    wait_until(lambda: manager.store.get(job_id)["status"] not in ("queued", "running"), timeout_s, job_id)
    job = manager.store.get(job_id)
    assert job["status"] == "finished", job["message"]
    return job


def test_dataset_train_predict_and_load_results(qgis_iface, qgis_new_project, plugin_settings, scene, tmp_path):
    plugin = TowerDetectorPlugin(qgis_iface)
    manager = plugin.job_manager()
    towers = QgsVectorLayer(f"{scene / 'towers.geojson'}|geometrytype=Point", "towers", "ogr")
    assert towers.isValid()
    QgsProject.instance().addMapLayer(towers)

    dataset = BuildDatasetDialog(qgis_iface, manager)
    dataset.area.set_path(str(scene / "area.geojson"))
    dataset.imagery.set_spec(str(scene / "scene.tif"))
    dataset.from_layer.setChecked(True)
    dataset.points.setLayer(towers)
    dataset.tower_filter.setText("power=tower")
    dataset.out.setFilePath(str(tmp_path / "ds"))
    dataset.split.setText("0.6,0.2,0.2")
    dataset.background_ratio.setValue(2)
    dataset.block_size.setValue(4)
    dataset.seed.setValue(1)
    job = _finish(manager, dataset.run())
    assert os.path.isfile(tmp_path / "ds" / "data.npz") and "53 tiles" in job["message"]

    train = TrainDialog(qgis_iface, manager)
    train.data.setFilePath(str(tmp_path / "ds"))
    train.out.setFilePath(str(tmp_path / "model"))
    train.weights.setCurrentText("none")
    for box, value in ((train.image_size, 72), (train.epochs_top, 1), (train.epochs_fine, 1),
                       (train.batch_size, 16)):
        box.setValue(value)
    job = _finish(manager, train.run())
    assert os.path.isfile(tmp_path / "model" / "metrics.json") and "model written" in job["message"]
    # one epoch on 72 px tiles learns next to nothing: the job says so rather than report a plain success
    verdict = result_layers.model_verdict(result_layers.read_metrics(str(tmp_path / "model")))
    assert job.get("verdict", "ok") == verdict.level
    assert verdict.level == "ok" or verdict.text in job["message"]

    predict = PredictDialog(qgis_iface, manager)
    predict.model.setFilePath(str(tmp_path / "model"))
    predict.imagery.set_spec(str(scene / "scene.tif"))
    predict.area.set_path(str(scene / "area.geojson"))
    predict.name.setText("scene7")
    predict.out.setFilePath(str(tmp_path / "results"))
    predict.threshold.setValue(0.0)  # a one-epoch model's scores are anywhere: keep every tile a candidate
    job = _finish(manager, predict.run())
    assert job["progress"] == 100.0 and "256 tiles scored" in job["message"]

    dock = plugin.show_jobs()
    assert isinstance(dock, JobsDock)
    row = [dock.table.item(r, 0).text() for r in range(dock.table.rowCount())].index("predict scene7")
    dock.table.selectRow(row)
    dock.buttons["Load results"].click()
    group = QgsProject.instance().layerTreeRoot().findGroup("predict scene7")
    names = [node.layer().name() for node in group.findLayers()]
    assert names == ["tower candidates", "tower scores (heatmap)"]
    candidates = group.findLayers()[0].layer()
    assert isinstance(candidates.renderer(), QgsGraduatedSymbolRenderer)
    assert result_layers.count(candidates) == 256

    train_row = [dock.table.item(r, 0).text() for r in range(dock.table.rowCount())].index("train model")
    dock.table.selectRow(train_row)
    assert dock.buttons["Metrics"].isEnabled()
    dock.buttons["Metrics"].click()
    assert plugin.dialogs["metrics"].table.rowCount() >= 6
    plugin.unload()
