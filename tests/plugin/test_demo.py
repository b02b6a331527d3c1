"""scripts/demo_project.py: a styled .qgz and its PNG from a sample scene and result files, with Debian's Python."""

import subprocess

from qgis.core import QgsGraduatedSymbolRenderer, QgsProject, QgsSingleBandPseudoColorRenderer
from qgis.PyQt.QtGui import QImage

from tests.plugin.support import REPO, fake_results, offscreen_env, sample_scene


def test_demo_project_is_styled_and_rendered(tmp_path, qgis_new_project):
    scene = sample_scene(tmp_path / "scene", tiles=8, seed=3)
    heatmap, candidates = fake_results(tmp_path / "scene", scene["tile_range"], tmp_path / "results")
    out, png = tmp_path / "demo" / "demo.qgz", tmp_path / "demo" / "demo.png"
    done = subprocess.run(["/usr/bin/python3", str(REPO / "scripts" / "demo_project.py"),
                           "--scene", str(tmp_path / "scene" / "scene.tif"), "--heatmap", heatmap,
                           "--candidates", candidates, "--out", str(out), "--png", str(png), "--threshold", "0.6",
                           "--size", "800x600"], env=offscreen_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out), str(png)]

    project = QgsProject.instance()
    assert project.read(str(out))
    layers = {layer.name(): layer for layer in project.mapLayers().values()}
    assert sorted(layers) == ["imagery", "tower candidates", "tower scores (heatmap)"]
    assert isinstance(layers["tower candidates"].renderer(), QgsGraduatedSymbolRenderer)
    assert layers["tower candidates"].subsetString() == '"score" >= 0.6'
    assert isinstance(layers["tower scores (heatmap)"].renderer(), QgsSingleBandPseudoColorRenderer)
    order = [node.layer().name() for node in project.layerTreeRoot().findLayers()]
    assert order[-1] == "imagery"  # the results draw above the imagery

    image = QImage(str(png))
    assert (image.width(), image.height()) == (800, 600)
    colours = [image.pixelColor(x, y) for x in range(0, 800, 5) for y in range(0, 600, 5)]
    reds = sum(1 for c in colours if c.red() > 200 and c.green() < 160 and c.blue() < 100)
    assert reds > 100 and len({c.rgb() for c in colours}) > 1000  # candidates over a textured scene
