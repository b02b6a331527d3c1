#!/usr/bin/env python3
"""Build a QGIS project (.qgz) from a scene, a heatmap and a candidates GeoPackage, styled as the plugin styles
them, and render it to a PNG. PyQGIS only: run it with /usr/bin/python3 (Debian's QGIS) or the venv's Python.

python3 scripts/demo_project.py --scene demo/scene/scene.tif --heatmap demo/results/heatmap.tif \\
    --candidates demo/results/candidates.gpkg --out demo/demo.qgz --png demo/demo.png [--threshold 0.5]
"""

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build(scene, heatmap, candidates, out, png=None, *, threshold=0.5, floor=0.5, size=(1200, 900)) -> dict:
    """Write the project (and the PNG); returns {"project", "png", "layers"}. Needs a running QgsApplication."""
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsMapRendererParallelJob,
        QgsMapSettings,
        QgsProject,
        QgsRasterLayer,
        QgsRectangle,
    )
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    sys.path.insert(0, str(REPO))  # the plugin's styling, from this checkout
    from tower_detector_plugin.core.result_layers import add_results

    project = QgsProject.instance()
    project.clear()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    project.setTitle("Tower Detector results")
    layers = add_results(heatmap, candidates, threshold=threshold, floor=floor, title="Tower Detector results",
                         project=project)
    base = QgsRasterLayer(str(scene), "imagery", "gdal")
    if not base.isValid():
        raise SystemExit(f"not a raster QGIS can open: {scene}")
    project.addMapLayer(base, False)
    project.layerTreeRoot().addLayer(base)  # at the bottom, under the results group
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    if not project.write(str(out)):
        raise SystemExit(f"could not write {out}: {project.error()}")
    result = {"project": str(out), "png": None, "layers": {k: v.name() for k, v in layers.items()}}
    if png:
        settings = QgsMapSettings()
        settings.setDestinationCrs(project.crs())
        settings.setTransformContext(project.transformContext())
        settings.setLayers([layers[k] for k in ("candidates", "heatmap") if k in layers] + [base])
        extent = QgsRectangle(base.extent())
        extent.scale(1.05)
        settings.setOutputSize(QSize(*size))
        settings.setExtent(extent)
        settings.setBackgroundColor(QColor("white"))
        job = QgsMapRendererParallelJob(settings)
        job.start()
        job.waitForFinished()
        if not job.renderedImage().save(str(png)):
            raise SystemExit(f"could not write {png}")
        result["png"] = str(png)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", required=True, help="the imagery GeoTIFF shown under the results")
    parser.add_argument("--heatmap", required=True, help="heatmap GeoTIFF from `tower-detector results`")
    parser.add_argument("--candidates", required=True, help="candidates GeoPackage from `tower-detector results`")
    parser.add_argument("--out", required=True, help="the project file to write (.qgz)")
    parser.add_argument("--png", help="render the map to this PNG")
    parser.add_argument("--threshold", type=float, default=0.5, help="show candidates scoring at least this")
    parser.add_argument("--floor", type=float, default=0.5, help="heatmap scores below this are transparent")
    parser.add_argument("--size", default="1200x900", help="PNG size WIDTHxHEIGHT (default %(default)s)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        result = build(args.scene, args.heatmap, args.candidates, args.out, args.png, threshold=args.threshold,
                       floor=args.floor, size=(width, height))
    finally:
        app.exitQgis()
    print(result["project"])
    if result["png"]:
        print(result["png"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
