"""Writing a synthetic scene's files: the imagery, the power features it shows, and its area.

`write_scene` writes, into one directory:
  scene.tif       RGB uint8 GeoTIFF in EPSG:3857 at exactly zoom-z resolution, its corners on zoom-z tile corners;
  towers.geojson  HV towers (power=tower, at each tower's centre) and their lines (power=line), distribution
                  poles (power=pole) and their lines (power=minor_line): poles are hard negatives, not towers;
  area.geojson    the scene's extent, so that `tower-detector tiles --area` gives exactly its tiles;
  confusers.geojson  with --confusers only: tower-like things that are not towers (property `confuser`: telecom_mast,
                  substation, water_tower, shed, boulders; no `power` tag, so no tower filter takes them), those in
                  tiles without a tower: hard negatives to evaluate by kind.
The files are written whole (a temp file renamed into place), so a failure never leaves a half-written one.
"""

import json
import os

import numpy as np
import rasterio
from rasterio.transform import Affine

from ..common.atomic import atomic_file, remove_if_present, temp_path
from ..common.errors import UserError
from ..geo.tilemath import TILE_SIZE
from .plan import check_seed, plan_scene, scene_grid, scene_options, tower_tiles
from .render import render_scene, render_steps


def write_scene(out, tiles_x=8, tiles_y=8, seed=0, lon=28.28, lat=-15.42, zoom=18, progress=None, realism=False,
                **options):
    """Write scene.tif, towers.geojson and area.geojson (and confusers.geojson) into directory `out`; return a
    JSON-able summary.

    tiles_x, tiles_y: the scene's size in zoom-`zoom` tiles, 1..64 each. The tile containing (lon, lat) is the
    centre one (the scene shifts to stay inside the tile grid near its edges). zoom: 17, 18 or 19; towers keep
    their size in metres, so they cover more pixels at higher zooms. options: the density and realism options of
    plan.Options by name (None: not given), realism=True: the --realism preset for those not given; all default to
    the original scene. The same arguments give byte-identical files; another seed gives another layout.
    progress(done, total, stage=...) is called between stages. Bad input, or an output directory that cannot be
    written, is a UserError with a one-line reason.
    """
    report = progress or (lambda done, total, **fields: None)
    scene_grid(tiles_x, tiles_y, lon, lat, zoom)
    check_seed(seed)
    opts = scene_options(realism, **options)
    _prepare_dir(str(out))
    plan = plan_scene(tiles_x, tiles_y, seed, lon, lat, zoom, options=opts)
    rgb, _ = render_scene(plan, progress=lambda done, total, stage: report(done, total + 1, stage=stage))
    names = [("imagery", "scene.tif"), ("towers", "towers.geojson"), ("area", "area.geojson")]
    if opts.confusers > 0:
        names.append(("confusers", "confusers.geojson"))
    paths = {name: os.path.join(str(out), f) for name, f in names}
    _write_geotiff(paths["imagery"], rgb, plan.grid)
    features = _power_features(plan)
    _write_json(paths["towers"], {"type": "FeatureCollection", "features": features})
    _write_json(paths["area"], _area_geojson(plan.grid))
    confusers = []
    if "confusers" in paths:
        confusers = confuser_features(plan)
        _write_json(paths["confusers"], {"type": "FeatureCollection", "features": confusers})
    steps = render_steps(plan) + 1
    report(steps, steps, stage="written")
    g = plan.grid
    kinds = [f["properties"]["power"] for f in features]
    positive = int(tower_tiles(g, plan.hv_lines).sum())
    summary = {
        "files": paths,
        "tiles": g.tiles_x * g.tiles_y,
        "tile_range": {"x": [g.x0, g.x0 + g.tiles_x - 1], "y": [g.y0, g.y0 + g.tiles_y - 1], "z": g.zoom},
        "towers": kinds.count("tower"),
        "tower_tiles": positive,
        "tower_tile_share": round(positive / (g.tiles_x * g.tiles_y), 5),
        "lines": kinds.count("line"),
        "poles": kinds.count("pole"),
        "seed": plan.seed,
        "size_px": [g.width, g.height],
    }
    if "confusers" in paths:
        summary["confusers"] = {k: sum(f["properties"]["confuser"] == k for f in confusers)
                                for k in sorted({f["properties"]["confuser"] for f in confusers})}
    if not opts.default:
        summary["options"] = {k: v for k, v in vars(opts).items() if v != getattr(type(opts)(), k)}
    return summary


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


def confuser_features(plan):
    """Points (WGS84) of the plan's confusers, sheds and boulder clusters that lie in tiles without a tower (a
    confuser's whole footprint, reach included): property `confuser` says what it is; none has a `power` tag."""
    grid = plan.grid
    ppm = plan.ppm
    found = [(f["kind"], f["c"], 0.0) for f in plan.confusers]
    found += [("shed", b["c"], max(b["half"]) + b["height"] * float(np.hypot(*plan.sun.shadow)))
              for b in plan.buildings if b.get("kind") == "shed"]
    found += [("boulders", c, 15 * ppm) for c in plan.boulder_clusters]
    clear = ~tower_tiles(grid, plan.hv_lines)
    features = []
    for kind, c, reach in found:
        if grid.outside_by(c) > 0:
            continue
        (c0, r0), (c1, r1) = (np.clip(np.floor(np.asarray(p) / TILE_SIZE).astype(int), 0,
                                      [grid.tiles_x - 1, grid.tiles_y - 1]) for p in (c - reach, c + reach))
        if clear[r0: r1 + 1, c0: c1 + 1].all():
            features.append({"type": "Feature", "properties": {"confuser": kind},
                             "geometry": {"type": "Point", "coordinates": list(grid.lonlat(float(c[0]),
                                                                                           float(c[1])))}})
    return features


def _area_geojson(grid):
    corners = ((0, grid.height), (grid.width, grid.height), (grid.width, 0), (0, 0), (0, grid.height))
    return {"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"name": "synthetic scene", "tiles": grid.tiles_x * grid.tiles_y},
        "geometry": {"type": "Polygon", "coordinates": [[list(grid.lonlat(x, y)) for x, y in corners]]}}]}
