"""The original 2018 project's outputs, for interchange: its {"x-y-z": score} JSON and its GeoJSON overlay of
candidate tiles, which mappers loaded in JOSM.

Original JSON: {"x-y-z": score} for every scored tile (6 significant digits), as the 2018 pipeline wrote it. It is
    the one per-tile text output, as big as the job: ask for it only when needed.
GeoJSON overlay (RFC 7946): the tiles at or above threshold as polygons with properties x, y, z, prob (score
    rounded to 3 decimals), label and simplestyle-spec hints (fill, stroke, fill-opacity, stroke-width). Bands,
    decided on the unrounded score: "Yes" (red, #d7191c) at or above yes_threshold (0.97, the 2018 project's
    ROC-chosen cut), "Maybe" (orange, #fdae61) from threshold up to it.
"""

import json

import numpy as np

from ..geo.cover import tile_lonlat

BANDS = {"Yes": {"fill": "#d7191c", "stroke": "#d7191c", "fill-opacity": 0.5, "stroke-width": 1},
         "Maybe": {"fill": "#fdae61", "stroke": "#e66101", "fill-opacity": 0.35, "stroke-width": 1}}


class OriginalJson:
    """{"x-y-z": score, ...} streamed chunk by chunk."""

    def __init__(self, path, zoom):
        self.f = open(path, "w", encoding="utf-8")
        self.zoom = zoom
        self.sep = "{"

    def add(self, x, y, score):
        if len(x):
            z = self.zoom
            self.f.write(self.sep + ",".join(f'"{a}-{b}-{z}":{s:.6g}'
                                             for a, b, s in zip(x.tolist(), y.tolist(), score.tolist())))
            self.sep = ","

    def close(self):
        self.f.write("{}" if self.sep == "{" else "}")
        self.abort()

    def abort(self):
        if not self.f.closed:
            self.f.close()


def write_overlay_geojson(path, zoom, x, y, score, yes_threshold=0.97):
    """The original project's overlay: tile squares with x, y, z, prob, label ("Yes"/"Maybe") and simplestyle hints."""
    w, n = tile_lonlat(x, y, zoom)
    e, s = tile_lonlat(x + 1, y + 1, zoom)
    yes = np.asarray(score, dtype=np.float32) >= np.float32(yes_threshold)
    features = []
    for xi, yi, prob, is_yes, wi, si, ei, ni in zip(
            x.tolist(), y.tolist(), np.round(np.asarray(score, np.float64), 3).tolist(), yes.tolist(),
            *(np.round(v, 8).tolist() for v in (w, s, e, n))):
        label = "Yes" if is_yes else "Maybe"
        ring = [[wi, si], [ei, si], [ei, ni], [wi, ni], [wi, si]]  # counter-clockwise (RFC 7946)
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"x": xi, "y": yi, "z": zoom, "prob": prob, "label": label,
                                        **BANDS[label]}})
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f, separators=(",", ":"))
