"""Writing a synthetic scene's files: the imagery, the power features it shows, and its area.

`write_scene` writes, into one directory:
  scene.tif       RGB uint8 GeoTIFF in EPSG:3857 at exactly zoom-z resolution, its corners on zoom-z tile corners;
  towers.geojson  HV towers (power=tower, at each tower's centre) and their lines (power=line), distribution
                  poles (power=pole) and their lines (power=minor_line): poles are hard negatives, not towers;
  area.geojson    the scene's extent, so that `tower-detector tiles --area` gives exactly its tiles.
The files are written whole (a temp file renamed into place), so a failure never leaves a half-written one.
"""

import json
import os

import rasterio
from rasterio.transform import Affine

from ..common.atomic import atomic_file, remove_if_present, temp_path
from ..common.errors import UserError
from ..geo.tilemath import TILE_SIZE
from .plan import check_seed, plan_scene, scene_grid
from .render import render_scene, render_steps


def write_scene(out, tiles_x=8, tiles_y=8, seed=0, lon=28.28, lat=-15.42, zoom=18, progress=None):
    """Write scene.tif, towers.geojson and area.geojson into directory `out`; return a JSON-able summary.

    tiles_x, tiles_y: the scene's size in zoom-`zoom` tiles, 1..64 each. The tile containing (lon, lat) is the
    centre one (the scene shifts to stay inside the tile grid near its edges). zoom: 17, 18 or 19; towers keep
    their size in metres, so they cover more pixels at higher zooms. The same arguments give byte-identical
    files; another seed gives another layout. progress(done, total, stage=...) is called between stages.
    Bad input, or an output directory that cannot be written, is a UserError with a one-line reason.
    """
    report = progress or (lambda done, total, **fields: None)
    scene_grid(tiles_x, tiles_y, lon, lat, zoom)
    check_seed(seed)
    _prepare_dir(str(out))
    plan = plan_scene(tiles_x, tiles_y, seed, lon, lat, zoom)
    rgb, _ = render_scene(plan, progress=lambda done, total, stage: report(done, total + 1, stage=stage))
    paths = {name: os.path.join(str(out), f) for name, f in
             (("imagery", "scene.tif"), ("towers", "towers.geojson"), ("area", "area.geojson"))}
    _write_geotiff(paths["imagery"], rgb, plan.grid)
    features = _power_features(plan)
    _write_json(paths["towers"], {"type": "FeatureCollection", "features": features})
    _write_json(paths["area"], _area_geojson(plan.grid))
    steps = render_steps(plan) + 1
    report(steps, steps, stage="written")
    g = plan.grid
    kinds = [f["properties"]["power"] for f in features]
    return {
        "files": paths,
        "tiles": g.tiles_x * g.tiles_y,
        "tile_range": {"x": [g.x0, g.x0 + g.tiles_x - 1], "y": [g.y0, g.y0 + g.tiles_y - 1], "z": g.zoom},
        "towers": kinds.count("tower"),
        "lines": kinds.count("line"),
        "poles": kinds.count("pole"),
        "seed": plan.seed,
        "size_px": [g.width, g.height],
    }


def _prepare_dir(out):
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"cannot write the synthetic scene to {out}: {exc.strerror or exc}") from None


def _write_geotiff(path, rgb, grid):
    left, top = grid.origin
    profile = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": 3, "dtype": "uint8",
        "crs": "EPSG:3857", "transform": Affine(grid.res, 0.0, left, 0.0, -grid.res, top), "tiled": True,
        "blockxsize": TILE_SIZE, "blockysize": TILE_SIZE, "compress": "deflate", "predictor": 2, "zlevel": 4,
        "photometric": "RGB", "interleave": "pixel", "num_threads": "ALL_CPUS",
    }
    tmp = temp_path(path)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(rgb)
        os.replace(tmp, path)
    finally:
        remove_if_present(tmp)


def _write_json(path, data):
    with atomic_file(path, encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def _power_features(plan):
    """HV lines and their towers inside the scene, minor lines and their poles inside the scene, in WGS84."""
    grid = plan.grid

    def point(p):
        return list(grid.lonlat(float(p[0]), float(p[1])))

    def feature(geometry_type, coords, **props):
        return {"type": "Feature", "properties": props, "geometry": {"type": geometry_type, "coordinates": coords}}

    features = []
    for line in plan.hv_lines:
        features.append(feature("LineString", [point(p) for p in line.towers], power="line", voltage=line.voltage,
                                ref=line.ref, cables="3"))
        features += [feature("Point", point(p), power="tower", ref=f"{line.ref}-{k + 1}", line=line.ref)
                     for k, p in enumerate(line.towers) if grid.outside_by(p) == 0]
    for poles in plan.minor_lines:
        features.append(feature("LineString", [point(p) for p in poles], power="minor_line"))
        features += [feature("Point", point(p), power="pole") for p in poles if grid.outside_by(p) == 0]
    return features


def _area_geojson(grid):
    corners = ((0, grid.height), (grid.width, grid.height), (grid.width, 0), (0, 0), (0, grid.height))
    return {"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"name": "synthetic scene", "tiles": grid.tiles_x * grid.tiles_y},
        "geometry": {"type": "Polygon", "coordinates": [[list(grid.lonlat(x, y)) for x, y in corners]]}}]}
