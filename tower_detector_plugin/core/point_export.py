"""Tower points for `dataset --towers`, as GeoJSON in EPSG:4326 (what the CLI reads): a layer's (the dialog) or a
feature source's (Processing, which gives a source rather than a layer)."""

import json
import os

from qgis.core import QgsCoordinateTransform, QgsGeometry, QgsProject, QgsVectorFileWriter

from ..i18n import tr
from .area_geometry import WGS84


def export_layer_points(layer, path: str) -> str:
    """The layer's points as GeoJSON in EPSG:4326 (what the backend reads), at path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GeoJSON"
    options.fileEncoding = "UTF-8"
    options.ct = QgsCoordinateTransform(layer.crs(), WGS84, QgsProject.instance().transformContext())
    context = QgsProject.instance().transformContext()
    error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, context, options)
    if error != QgsVectorFileWriter.NoError:
        message = tr("could not export {name} to {path}: {message}")
        raise ValueError(message.format(name=layer.name(), path=path, message=message))
    return path


def export_source_points(source, path: str, transform_context) -> int:
    """A Processing feature source's points as GeoJSON in EPSG:4326 at path, with their text and number attributes;
    how many points it wrote."""
    ct = QgsCoordinateTransform(source.sourceCrs(), WGS84, transform_context)
    features = []
    for f in source.getFeatures():
        if not f.hasGeometry():
            continue
        geom = QgsGeometry(f.geometry())
        geom.transform(ct)
        props = {name: f[name] for name in f.fields().names() if isinstance(f[name], (str, int, float))}
        features.append({"type": "Feature", "properties": props, "geometry": json.loads(geom.asJson(7))})
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"type": "FeatureCollection", "features": features}, fh)
    return len(features)
