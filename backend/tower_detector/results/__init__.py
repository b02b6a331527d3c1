"""Merged outputs of a prediction store: a heatmap GeoTIFF (heatmap.py), a candidates GeoPackage (gpkg.py), the
original project's JSON and GeoJSON overlay (original.py), all written in one pass by merge_results (merge.py).

    summary = merge_results("s3://bucket/zambia", heatmap="zambia.tif", candidates="zambia.gpkg", threshold=0.5,
                            json_path="original.json", geojson_path="overlay.geojson")
"""

from ..geo.cover import tile_lonlat
from .gpkg import (
    GPKG_CORE,
    candidate_points,
    existing_candidates,
    gpkg_connect,
    gpkg_points,
    gpkg_polygons,
    insert_srs,
    merge_candidates_gpkg,
    write_candidates,
    write_candidates_gpkg,
)
from .heatmap import BLOCK, NODATA, heatmap_grid, heatmap_transform
from .merge import check_fraction, merge_results
from .original import BANDS, write_overlay_geojson

__all__ = ["BANDS", "BLOCK", "GPKG_CORE", "NODATA", "candidate_points", "check_fraction", "existing_candidates",
           "gpkg_connect", "gpkg_points", "gpkg_polygons", "heatmap_grid", "heatmap_transform", "insert_srs",
           "merge_candidates_gpkg", "merge_results", "tile_lonlat", "write_candidates", "write_candidates_gpkg",
           "write_overlay_geojson"]
