"""A synthetic aerial scene with HV towers: the offline stand-in for real imagery in tests, benchmarks and demos.

`write_scene` writes, into one directory:
  scene.tif       RGB uint8 GeoTIFF in EPSG:3857 at exactly zoom-z resolution, its corners on zoom-z tile corners;
  towers.geojson  HV towers (power=tower, at each tower's centre) and their lines (power=line), distribution
                  poles (power=pole) and their lines (power=minor_line): poles are hard negatives, not towers;
  area.geojson    the scene's extent, so that `tower-detector tiles --area` gives exactly its tiles.

A model will learn from this scene, so it avoids shortcuts. Five terrains (sand, farmland, savanna, forest,
rocky hills) blend with frayed boundaries; straight lines, grey things and long shadows are everywhere (roads,
field edges, metal roofs, sheds, pivot irrigation arms, wells, boulders, distribution poles and their wires);
towers are faint lattice squares with cross-arms whose long shadows follow the scene's one sun, in every terrain,
some partly hidden by trees; a final softening and sensor grain cover everything alike.

The scene is planned first (a Plan: geometry in pixels, no pixels yet) and then rendered. Sizes are in metres on
the ground, turned into pixels with the ground resolution at the scene's latitude. All randomness comes from
numpy.random.default_rng(seed), split into one stream per stage, so the same arguments give the same bytes, and
`render_scene(plan, towers=False)` differs from the full scene only where towers, their shadows and conductors
are drawn (the tests compare the two).
"""

import json
import math
import numbers
import os
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from rasterio.transform import Affine

from ..common.errors import UserError
from ..geo.tilemath import (
    MAX_LATITUDE,
    TILE_SIZE,
    ground_resolution,
    lonlat_to_tile,
    mercator_to_lonlat,
    resolution,
    tile_bounds_3857,
)

MAX_TILES = 64  # per side: 64x64 tiles is 16384^2 px, about 2.5 GB of memory and two minutes to draw
ZOOMS = (17, 18, 19)  # coarser tiles show a tower as a few pixels; the model is fed zoom 18
COARSE = 4  # terrain maps are computed on every COARSE-th pixel, then interpolated
STRIP = 256  # rows of ground made at a time, to bound memory

TERRAINS = ("desert", "farmland", "savanna", "forest", "hills")
# ground colour = BASE + patch * ALT per terrain (farmland draws its fields instead)
BASE = np.array([[196, 174, 136], [0, 0, 0], [150, 142, 96], [62, 70, 44], [140, 128, 110]], np.float32)
ALT = np.array([[14, 14, 14], [0, 0, 0], [-22, -14, -18], [-8, -6, -6], [10, 10, 12]], np.float32)
TEXTURE = np.array([0.05, 0.05, 0.13, 0.2, 0.12], np.float32)  # strength of the brightness noise
TREES_PER_M2 = np.array([0.0002, 0.0008, 0.006, 0.022, 0.002])
# trees per terrain: crown radius (m) and height (m) grow together; savanna mixes bushes and trees
CROWN_M = np.array([[0.8, 1.8], [2.0, 5.0], [1.0, 4.5], [2.5, 5.0], [1.0, 2.8]])
TREE_H_M = np.array([[1.0, 2.5], [4.0, 10.0], [1.5, 8.0], [8.0, 15.0], [2.0, 5.0]])
TREE_RGB = np.array([[96, 100, 62], [58, 84, 40], [78, 88, 48], [46, 66, 34], [86, 92, 58]], np.float32)
CROPS = np.array([  # young green, dense green, dry grass, stubble, ploughed, dark soil, fallow, light soil
    [96, 128, 58], [70, 104, 46], [150, 150, 92], [188, 170, 118], [138, 110, 84], [104, 86, 68],
    [160, 150, 104], [176, 152, 118]], np.float32)
CROP_ROWS = np.array([0.08, 0.05, 0.0, 0.06, 0.1, 0.06, 0.0, 0.04], np.float32)  # strength of row stripes
ROOFS = np.array([  # metal greys (as grey as tower steel), rust, red tiles, blue, thatch, white, dark
    [168, 170, 172], [148, 150, 154], [186, 186, 184], [150, 92, 66], [164, 78, 62], [92, 110, 138],
    [142, 118, 82], [214, 212, 204], [96, 96, 98]], np.float32)
METAL_ROOFS = (0, 1, 2, 3, 8)
THATCH = 6
ROCK_RGB = np.array([[150, 142, 128], [124, 114, 100], [162, 156, 146]], np.float32)
SHADOW_KEEP = np.array([0.42, 0.45, 0.54], np.float32)  # what a full shadow leaves of R, G, B: shade is bluish
STEEL = {"bright": (200, 202, 206), "dark": (84, 86, 90)}  # galvanised steel, and how it looks against sand

# HV lines by voltage (OSM tag): footprint (m), height (m), phase spacing (m), cleared corridor half-width (m)
VOLTAGES = (
    ("330000", (11.0, 14.0), (38.0, 50.0), 8.5, 25.0),
    ("220000", (10.0, 12.0), (32.0, 42.0), 7.0, 20.0),
    ("132000", (8.5, 10.5), (27.0, 36.0), 5.0, 15.0),
    ("66000", (8.0, 9.0), (25.0, 30.0), 4.0, 11.0),
)
SPANS_M = np.linspace(262.0, 438.0, 12)  # tower spacing candidates: 250-450 m, with a margin for rounding

FREE, CORRIDOR, HARD = 0, 1, 2  # occupancy while planning: corridors get few trees, hard ground nothing else


# -- the entry point -----------------------------------------------------------------------------------------------
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
    _check_seed(seed)
    _prepare_dir(str(out))
    plan = plan_scene(tiles_x, tiles_y, seed, lon, lat, zoom)
    rgb, _ = render_scene(plan, progress=lambda done, total, stage: report(done, total + 1, stage=stage))
    paths = {name: os.path.join(str(out), f) for name, f in
             (("imagery", "scene.tif"), ("towers", "towers.geojson"), ("area", "area.geojson"))}
    _write_geotiff(paths["imagery"], rgb, plan.grid)
    features = _power_features(plan)
    _write_json(paths["towers"], {"type": "FeatureCollection", "features": features})
    _write_json(paths["area"], _area_geojson(plan.grid))
    steps = _render_steps(plan) + 1
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


# -- where the scene is --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """The scene's pixels: tiles x0.. and y0.. at `zoom`; pixel (col, row) covers [col, col+1) x [row, row+1)."""

    x0: int
    y0: int
    zoom: int
    tiles_x: int
    tiles_y: int

    @property
    def width(self):
        return self.tiles_x * TILE_SIZE

    @property
    def height(self):
        return self.tiles_y * TILE_SIZE

    @property
    def res(self):
        return resolution(self.zoom)

    @property
    def origin(self):
        """(left, top) in EPSG:3857 metres: the top-left corner of tile (x0, y0)."""
        left, _, _, top = tile_bounds_3857(self.x0, self.y0, self.zoom)
        return left, top

    @property
    def ppm(self):
        """Pixels per metre on the ground at the scene's centre latitude."""
        return 1.0 / ground_resolution(self.zoom, self.lonlat(self.width / 2, self.height / 2)[1])

    def lonlat(self, col, row):
        left, top = self.origin
        return mercator_to_lonlat(left + col * self.res, top - row * self.res)

    def outside_by(self, p):
        """How far (px) a point lies outside the scene; 0 inside."""
        dx = max(-p[0], p[0] - self.width, 0.0)
        dy = max(-p[1], p[1] - self.height, 0.0)
        return math.hypot(dx, dy)


def scene_grid(tiles_x, tiles_y, lon, lat, zoom):
    """The checked Grid of a scene centred on the tile containing (lon, lat)."""
    for name, value in (("tiles_x", tiles_x), ("tiles_y", tiles_y)):
        if not _is_whole(value) or not 1 <= value <= MAX_TILES:
            raise UserError(f"{name} must be a whole number of tiles from 1 to {MAX_TILES}, got {value!r}")
    if not _is_whole(zoom) or zoom not in ZOOMS:
        raise UserError(f"zoom {zoom!r} is not supported for synthetic scenes: use one of {', '.join(map(str, ZOOMS))}")
    if not (isinstance(lon, numbers.Real) and math.isfinite(lon) and -180 <= lon <= 180):
        raise UserError(f"longitude {lon!r} is outside -180..180")
    if not (isinstance(lat, numbers.Real) and math.isfinite(lat) and abs(lat) <= MAX_LATITUDE):
        raise UserError(f"latitude {lat!r} is beyond Web Mercator's limit of +-{MAX_LATITUDE:.4f}")
    n = 1 << zoom
    cx, cy = lonlat_to_tile(lon, lat, zoom)
    x0 = min(max(cx - tiles_x // 2, 0), n - tiles_x)
    y0 = min(max(cy - tiles_y // 2, 0), n - tiles_y)
    return Grid(int(x0), int(y0), int(zoom), int(tiles_x), int(tiles_y))


def _is_whole(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_seed(seed):
    if not _is_whole(seed) or seed < 0:
        raise UserError(f"seed must be a whole number >= 0, got {seed!r}")


# -- noise -----------------------------------------------------------------------------------------------------------
def _axis(g, n, smooth):
    i = np.clip(np.floor(g), 0, n - 2).astype(np.intp)
    t = np.clip(g - i, 0.0, 1.0).astype(np.float32)
    return i, (t * t * (3 - 2 * t) if smooth else t)


def _sample_grid(values, gy, gx, smooth=True):
    """Interpolate values (ny, nx) at every (row, column) pair of fractional grid coordinates gy x gx."""
    iy, ty = _axis(gy, values.shape[0], smooth)
    ix, tx = _axis(gx, values.shape[1], smooth)
    top = values[iy]
    rows = top + (values[iy + 1] - top) * ty[:, None]
    left = rows[:, ix]
    return left + (rows[:, ix + 1] - left) * tx


def _upsample(values, r0, r1):
    """Rows r0..r1 (r0 a multiple of COARSE) of maps (..., Hc, Wc) sampled on every COARSE-th pixel, interpolated
    bilinearly to every pixel: the factor is fixed, so broadcasting does it without gathers."""
    t = np.arange(COARSE, dtype=np.float32) / COARSE
    a = values[..., r0 // COARSE: -(-r1 // COARSE) + 1, :]
    rows = a[..., :-1, None, :] + (a[..., 1:, None, :] - a[..., :-1, None, :]) * t[:, None]
    rows = rows.reshape(*a.shape[:-2], -1, a.shape[-1])[..., : r1 - r0, :]
    out = rows[..., :-1, None] + (rows[..., 1:, None] - rows[..., :-1, None]) * t
    return out.reshape(*rows.shape[:-1], -1)


class _Fractal:
    """Fractal value noise, about -1..1: one random lattice per octave (period and amplitude halve each octave)."""

    def __init__(self, rng, shape, period_px, octaves):
        amps = 0.5 ** np.arange(octaves)
        self.octaves = []
        for k in range(octaves):
            p = max(period_px / 2**k, 1.5)
            lattice = rng.uniform(-1, 1, (int(shape[0] / p) + 3, int(shape[1] / p) + 3)).astype(np.float32)
            self.octaves.append((p, np.float32(1.6 * amps[k] / amps.sum()), lattice))

    def grid(self, ys, xs):
        """Noise at every pair of pixel coordinates ys x xs."""
        return sum(a * _sample_grid(lattice, ys / p, xs / p) for p, a, lattice in self.octaves)


# -- the plan: everything about the scene but its pixels ----------------------------------------------------------
@dataclass(frozen=True)
class Sun:
    elevation: float  # degrees
    shadow: np.ndarray  # (dx, dy) px of cast shadow per metre of height
    light: np.ndarray  # unit (dx, dy) towards the sun, in image axes


@dataclass
class Farm:
    """Fields: strips `strip` px wide across direction `angle`, each cut into fields of its own length."""

    angle: float
    strip: float
    offsets: np.ndarray  # (n_strips,) px
    lengths: np.ndarray  # (n_strips,) px
    n_fields: int  # per strip
    table: np.ndarray  # (4, n_strips * n_fields): each field's R, G, B and the strength of its crop rows
    u0: float
    v0: float


@dataclass
class Ground:
    """What the ground painter needs."""

    coarse: np.ndarray  # (8, H/COARSE + 1, W/COARSE + 1): R, G, B, texture, farmland, hills, desert, hillshade
    mid: _Fractal  # metre-scale texture
    fine: _Fractal  # pixel-scale texture
    farm: Farm
    dune_angle: float


@dataclass
class HVLine:
    ref: str
    voltage: str
    towers: np.ndarray  # (n, 2) px, in order along the line; the first and last lie beyond the scene
    footprint: np.ndarray  # (n,) px, side of each tower's square base
    height: np.ndarray  # (n,) m
    steel: np.ndarray  # (n,) how clearly each tower's members show, 0..1 (light, wear, blur)
    phase: float  # px from the centre line to the outer conductors
    corridor: float  # px, half-width of the cleared strip

    def axes(self):
        """Per tower: unit vector along the line (the bisector at angle towers) and across it."""
        d = np.diff(self.towers, axis=0)
        d /= np.hypot(d[:, 0], d[:, 1])[:, None]
        along = np.vstack([d[:1], d[:-1] + d[1:], d[-1:]])
        along /= np.hypot(along[:, 0], along[:, 1])[:, None]
        return along, np.stack([-along[:, 1], along[:, 0]], axis=1)


@dataclass
class Plan:
    grid: Grid
    seed: int
    ppm: float
    sun: Sun
    ground: Ground
    roads: list  # (points (n, 2) px, half-width px, paved)
    pivots: list  # dict(c, r, colours, split, arm, ring)
    tracks: list  # points (n, 2) px
    hv_lines: list  # HVLine
    compounds: list  # (centre, radius px, lumps)
    buildings: list  # dict(c, half=(hu, hv) px, u, colour, height m, round)
    wells: np.ndarray  # (n, 2) px
    minor_lines: list  # pole positions (n, 2) px
    blobs: dict  # trees and boulders, arrays: x, y, r (px), h (m), rgb, rock, over (drawn over towers)


def _streams(seed):
    names = ("terrain", "layout", "lines", "objects", "trees", "render")
    return dict(zip(names, np.random.default_rng(seed).spawn(len(names))))


def plan_scene(tiles_x=8, tiles_y=8, seed=0, lon=28.28, lat=-15.42, zoom=18):
    """Check the arguments and lay the scene out."""
    grid = scene_grid(tiles_x, tiles_y, lon, lat, zoom)
    _check_seed(seed)
    rng = _streams(int(seed))
    ppm = grid.ppm
    sun = _sun(rng["terrain"], ppm)
    ground, weights = _plan_ground(rng["terrain"], grid, ppm, sun)
    occ = np.zeros((grid.height, grid.width), np.uint8)
    roads = _plan_roads(rng["layout"], grid, ppm, occ)
    pivots = _plan_pivots(rng["layout"], grid, ppm, occ)
    tracks = _plan_tracks(rng["layout"], grid, ppm, occ)
    hv_lines = _plan_hv_lines(rng["lines"], grid, ppm, sun, occ)
    compounds, buildings, wells = _plan_settlements(rng["objects"], grid, ppm, occ, roads, pivots)
    return Plan(
        grid=grid, seed=int(seed), ppm=ppm, sun=sun, ground=ground, roads=roads, pivots=pivots, tracks=tracks,
        hv_lines=hv_lines, compounds=compounds, buildings=buildings, wells=wells,
        minor_lines=_plan_minor_lines(rng["lines"], grid, ppm, roads, compounds),
        blobs=_plan_blobs(rng["trees"], grid, ppm, occ, weights, hv_lines),
    )


def _sun(rng, ppm):
    az, el = math.radians(rng.uniform(0, 360)), rng.uniform(40, 70)
    light = np.array([math.sin(az), -math.cos(az)])
    return Sun(el, -light * ppm / math.tan(math.radians(el)), light)


def _plan_ground(rng, grid, ppm, sun):
    """Terrain weights (5, H/COARSE + 1, W/COARSE + 1) and the ground's maps, fields and textures."""
    shape = (grid.height, grid.width)
    ys = np.arange(grid.height // COARSE + 1) * COARSE + 0.5
    xs = np.arange(grid.width // COARSE + 1) * COARSE + 0.5
    bias = rng.uniform(-0.12, 0.12, len(TERRAINS))
    logits = np.stack([_Fractal(rng, shape, 650 * ppm, 2).grid(ys, xs) + b for b in bias])
    logits += 0.35 * _Fractal(rng, shape, 60 * ppm, 3).grid(ys, xs)  # frays the boundaries
    logits = np.exp(9.0 * (logits - logits.max(axis=0)))
    weights = logits / logits.sum(axis=0)
    patch = _Fractal(rng, shape, 40 * ppm, 2).grid(ys, xs)
    rgb = np.einsum("thw,tc->chw", weights, BASE) + np.einsum("thw,tc->chw", weights * patch, ALT)
    texture = np.einsum("thw,t->hw", weights, TEXTURE)
    farm, desert, hills = (weights[TERRAINS.index(t)] for t in ("farmland", "desert", "hills"))
    ridges = 1 - 2 * np.abs(_Fractal(rng, shape, 150 * ppm, 3).grid(ys, xs))
    height = (3 + 25 * hills) * _Fractal(rng, shape, 300 * ppm, 3).grid(ys, xs) + 7 * hills * ridges
    shade = _hillshade(height, COARSE / ppm, sun)
    coarse = np.concatenate([rgb, np.stack([texture, farm, hills, desert, shade])]).astype(np.float32)
    ground = Ground(coarse, _Fractal(rng, shape, 7 * ppm, 2), _Fractal(rng, shape, 2 * ppm, 1),
                    _plan_farm(rng, grid, ppm), rng.uniform(0, np.pi))
    return ground, weights


def _hillshade(height, cell_m, sun):
    """Lambert shading of a height map (metres), 1 on flat ground."""
    dy, dx = np.gradient(height, cell_m)
    el = math.radians(sun.elevation)
    lx, ly = sun.light * math.cos(el)
    shade = (-dx * lx - dy * ly + math.sin(el)) / np.sqrt(dx * dx + dy * dy + 1) / math.sin(el)
    return np.clip(shade, 0.55, 1.35)


def _plan_farm(rng, grid, ppm):
    angle = rng.uniform(0, np.pi)
    c, s = math.cos(angle), math.sin(angle)
    corners = np.array([[0, 0], [grid.width, 0], [0, grid.height], [grid.width, grid.height]], float)
    u, v = corners @ [c, s], corners @ [-s, c]
    strip = rng.uniform(55, 110) * ppm
    n_strips = int((u.max() - u.min()) / strip) + 2
    lengths = rng.uniform(45, 220, n_strips) * ppm
    n_fields = int((v.max() - v.min()) / lengths.min()) + 3
    crops = rng.integers(len(CROPS), size=n_strips * n_fields)
    rgb = CROPS[crops] * rng.uniform(0.88, 1.12, (len(crops), 1))
    table = np.vstack([rgb.T, CROP_ROWS[crops]]).astype(np.float32)
    offsets = (rng.uniform(0, 1, n_strips) * lengths).astype(np.float32)
    return Farm(angle, strip, offsets, lengths.astype(np.float32), n_fields, table, float(u.min()), float(v.min()))


# -- planning helpers -------------------------------------------------------------------------------------------
def _extent_km(grid, ppm):
    return math.sqrt(grid.width * grid.height) / ppm / 1000


def _count(rng, per_km2, grid, ppm, minimum=0):
    return max(minimum, int(rng.poisson(per_km2 * _extent_km(grid, ppm) ** 2)))


def _interior_point(rng, grid, lo=0.0, hi=1.0):
    return np.array([rng.uniform(lo, hi) * grid.width, rng.uniform(lo, hi) * grid.height])


def _wander(rng, start, heading, step, turn_sd, n, pull):
    """A random-walk polyline: the heading changes a little at each step and drifts back to its first value."""
    pts = [np.asarray(start, float)]
    h = heading
    for _ in range(n):
        h += rng.normal(0, turn_sd) + pull * (heading - h)
        pts.append(pts[-1] + step * np.array([math.cos(h), math.sin(h)]))
    return np.array(pts)


def _through(rng, grid, anchor, heading, step, turn_sd, pull):
    """A wandering polyline through `anchor` that leaves the scene at both ends."""
    n = int(2 * (grid.width + grid.height) / step) + 2
    halves = []
    for k in (0, 1):
        half = _wander(rng, anchor, heading + k * np.pi, step, turn_sd, n, pull)
        out = [i for i, p in enumerate(half) if grid.outside_by(p) > 2 * step]
        halves.append(half[: out[0] + 1] if out else half)
    return np.vstack([halves[1][:0:-1], halves[0]])


def _resample(pts, spacing, jitter=0.0, rng=None):
    """Points every `spacing` px (times 1 +- jitter) along a polyline."""
    cum = np.concatenate([[0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    steps = np.full(int(cum[-1] / spacing) + 2, spacing)
    if rng is not None:
        steps *= 1 + rng.uniform(-jitter, jitter, len(steps))
    at = np.concatenate([[0], np.cumsum(steps)])
    at = at[at <= cum[-1]]
    return np.stack([np.interp(at, cum, pts[:, 0]), np.interp(at, cum, pts[:, 1])], axis=1)


def _is_free(occ, c, r):
    """No HARD occupancy within r px of c (around it: a square); outside the scene counts as free."""
    win = _window(occ.shape, (c[0] - r, c[1] - r, c[0] + r, c[1] + r))
    return win is None or occ[win[0]].max() < HARD


# -- planning -------------------------------------------------------------------------------------------------
def _plan_roads(rng, grid, ppm, occ):
    """Paved and gravel roads crossing the scene and each other (crossroads are tower-like at a glance)."""
    roads = []
    heading = rng.uniform(0, 2 * np.pi)
    for i in range(max(2, round(_extent_km(grid, ppm)))):
        paved = i == 0 or rng.random() < 0.4
        half = rng.uniform(3.0, 4.5) * ppm if paved else rng.uniform(2.2, 3.2) * ppm
        heading += rng.uniform(0.9, 2.2)
        pts = _through(rng, grid, _interior_point(rng, grid, 0.25, 0.75), heading, 30 * ppm, 0.05, 0.15)
        roads.append((pts, half, paved))
        _stroke(_mark(occ, HARD), pts, half + 1.5 * ppm, joins=True)
    return roads


def _plan_pivots(rng, grid, ppm, occ):
    """Centre-pivot fields on free ground, smaller where big ones do not fit."""
    pivots = []
    for _ in range(_count(rng, 0.35, grid, ppm, minimum=1)):
        r = min(rng.uniform(60, 190) * ppm, 0.3 * min(grid.width, grid.height))
        for _ in range(25):
            c = _interior_point(rng, grid, 0.05, 0.95)
            if _is_free(occ, c, r):
                _disc_at(_mark(occ, HARD), c, r)
                crops = CROPS[rng.choice([0, 1, 3, 4], 2)] * rng.uniform(0.92, 1.08)
                pivots.append({"c": c, "r": r, "colours": crops, "split": rng.uniform(0, 2 * np.pi, 2),
                               "arm": rng.uniform(0, 2 * np.pi), "ring": rng.uniform(35, 55) * ppm})
                break
            r = max(r * 0.9, 40 * ppm)
    return pivots


def _plan_tracks(rng, grid, ppm, occ):
    """Curvy dirt tracks wandering anywhere."""
    tracks = []
    for _ in range(_count(rng, 4.0, grid, ppm, minimum=2)):
        start, heading = _interior_point(rng, grid), rng.uniform(0, 2 * np.pi)
        pts = _wander(rng, start, heading, 6 * ppm, 0.18, int(rng.uniform(40, 160)), 0.02)
        tracks.append(pts)
        _stroke(_mark(occ, HARD), pts, 1.5 * ppm)
    return tracks


def _plan_hv_lines(rng, grid, ppm, sun, occ):
    """HV lines through the scene, more for bigger scenes: towers off roads, tracks, pivots and each other."""
    lines = []
    for i in range(max(2, round(1.2 * _extent_km(grid, ppm)))):
        voltage, foot, height, phase, corridor = VOLTAGES[rng.integers(len(VOLTAGES))]
        size = rng.uniform(*foot)
        # no tower just outside the scene, where only its legs or shadow would show in an unlabelled tile
        margin = (size / 2 + height[1] * math.hypot(*sun.shadow) / ppm + 5) * ppm
        clear = (size / 2 + 4) * ppm
        anchor = _interior_point(rng, grid, 0.2, 0.8)
        for _ in range(50):
            if _is_free(occ, anchor, clear):
                break
            anchor = _interior_point(rng, grid, 0.2, 0.8)
        heading = rng.uniform(0, 2 * np.pi)
        halves = [_walk_towers(rng, grid, occ, anchor, heading + k * np.pi, ppm, margin, clear) for k in (0, 1)]
        towers = np.vstack([halves[1][:0:-1], halves[0]])
        n = len(towers)
        line = HVLine(f"L{i + 1}", voltage, towers, size * ppm * rng.uniform(0.95, 1.05, n), rng.uniform(*height, n),
                      rng.uniform(0.5, 1.0, n), phase * ppm, corridor * ppm)
        _stroke(_mark(occ, CORRIDOR), towers, line.corridor)
        for c, s in zip(towers, line.footprint):
            _box_at(_mark(occ, HARD), c, s / 2 + 3 * ppm, s / 2 + 3 * ppm, (1.0, 0.0))
        lines.append(line)
    return lines


def _walk_towers(rng, grid, occ, start, heading, ppm, margin, clear):
    """Tower positions from `start` to the first one beyond the scene: spans of 250-450 m, some angle towers."""
    pts = [np.asarray(start, float)]
    h = heading
    while grid.outside_by(pts[-1]) == 0 and len(pts) < 500:
        h += rng.choice([-1, 1]) * rng.uniform(0.14, 0.5) if rng.random() < 0.2 else rng.normal(0, 0.015)
        step = np.array([math.cos(h), math.sin(h)]) * ppm
        spans = rng.permutation(SPANS_M)
        fits = (pts[-1] + d * step for d in spans)
        fit = next((p for p in fits if not 0 < grid.outside_by(p) <= margin and _is_free(occ, p, clear)), None)
        pts.append(pts[-1] + spans[0] * step if fit is None else fit)
    return np.array(pts)


def _plan_settlements(rng, grid, ppm, occ, roads, pivots):
    """Villages by the roads (bare compounds, houses, round huts), sheds anywhere, wells, on free ground."""
    compounds, buildings = [], []
    for _ in range(_count(rng, 0.8, grid, ppm, minimum=1)):
        pts, half, _ = roads[rng.integers(len(roads))]
        inside = [p for p in pts if grid.outside_by(p) == 0] or [pts[len(pts) // 2]]
        spread = rng.uniform(30, 70) * ppm
        centre = inside[rng.integers(len(inside))] + rng.normal(0, 1, 2) * (half + spread * 0.8)
        compounds.append((centre, spread * 1.5, rng.uniform(0, 2 * np.pi, 2)))
        _disc_at(_mark(occ, CORRIDOR), centre, spread * 1.5)  # few trees in a village
        huts, along = rng.random() < 0.5, rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(5, 30))):
            c = centre + rng.normal(0, spread, 2)
            if huts and rng.random() < 0.7:
                hut = rng.uniform(2.0, 3.5) * ppm
                _place(occ, buildings, c, (hut, hut), 0.0, ROOFS[THATCH], rng.uniform(3, 5), True)
            else:
                angle = along + rng.choice([0, np.pi / 2]) + rng.normal(0, 0.08)
                size = rng.uniform([3, 2.5], [8, 5]) * ppm
                _place(occ, buildings, c, size, angle, ROOFS[rng.integers(len(ROOFS))], rng.uniform(3, 7), False)
    for _ in range(_count(rng, 10.0, grid, ppm, minimum=2)):  # sheds: small grey squares, like towers from above
        side = rng.uniform(1.5, 3.0) * ppm
        roof = ROOFS[rng.choice(METAL_ROOFS)]
        _place(occ, buildings, _interior_point(rng, grid), (side, side), rng.uniform(0, np.pi), roof,
               rng.uniform(2.5, 4), False)
    for pivot in pivots:  # the pivot's centre tower
        buildings.append(_building(pivot["c"], (1.5 * ppm, 1.5 * ppm), 0.0, ROOFS[2], 4.0, False))
    wells = []
    for i in range(_count(rng, 6.0, grid, ppm, minimum=1)):
        c = compounds[i % len(compounds)][0] + rng.normal(0, 40 * ppm, 2) if i % 2 else _interior_point(rng, grid)
        if _is_free(occ, c, 3 * ppm):
            _disc_at(_mark(occ, HARD), c, 3 * ppm)
            wells.append(c)
    return compounds, buildings, np.array(wells).reshape(-1, 2)


def _building(c, half, angle, colour, height, round_):
    return {"c": np.asarray(c, float), "half": tuple(half), "u": (math.cos(angle), math.sin(angle)),
            "colour": colour, "height": height, "round": round_}


def _place(occ, buildings, c, half, angle, colour, height, round_):
    """Add a building where the ground is free, and take its ground."""
    building = _building(c, half, angle, colour, height, round_)
    hu, hv = building["half"]
    if _is_free(occ, building["c"], math.hypot(hu, hv) + 2):
        _box_at(_mark(occ, HARD), building["c"], hu + 2, hv + 2, building["u"])
        buildings.append(building)


def _plan_minor_lines(rng, grid, ppm, roads, compounds):
    """Distribution lines: poles every 45-80 m beside a road, or straight-ish from a village into the country."""
    lines = []
    for i in range(max(1, round(1.2 * _extent_km(grid, ppm)))):
        if i % 2 == 0:
            pts, half, _ = roads[rng.integers(len(roads))]
            normal = np.gradient(pts, axis=0) @ [[0, 1], [-1, 0]]
            normal /= np.hypot(*normal.T)[:, None]
            path = pts + normal * (half + rng.uniform(6, 14) * ppm) * rng.choice([-1, 1])
        else:
            start = compounds[rng.integers(len(compounds))][0]
            path = _wander(rng, start, rng.uniform(0, 2 * np.pi), 60 * ppm, 0.05, int(rng.uniform(6, 30)), 0.3)
        poles = _resample(path, rng.uniform(45, 80) * ppm, 0.08, rng)
        near = np.flatnonzero([grid.outside_by(p) < 60 * ppm for p in poles])
        if len(near) >= 2:
            lines.append(poles[near[0]: near[-1] + 1])
    return lines


def _plan_blobs(rng, grid, ppm, occ, weights, hv_lines):
    """Trees (density and kind from the terrain, thinned in corridors), boulder clusters, trees beside towers."""
    area_m2 = grid.width * grid.height / ppm**2
    n = rng.poisson(TREES_PER_M2.max() * area_m2)
    x, y = rng.uniform(0, grid.width, n), rng.uniform(0, grid.height, n)
    dens = weights[:, (y // COARSE).astype(int), (x // COARSE).astype(int)] * TREES_PER_M2[:, None]
    level = occ[y.astype(int), x.astype(int)]
    keep = (rng.random(n) * TREES_PER_M2.max() < dens.sum(axis=0)) & (level < HARD)
    keep &= (level == FREE) | (rng.random(n) < 0.12)  # corridors are cleared, with some regrowth
    x, y, dens = x[keep], y[keep], dens[:, keep]
    kind = (rng.random(len(x)) * dens.sum(axis=0) > np.cumsum(dens, axis=0)).sum(axis=0)
    size = rng.random(len(x))  # bigger crowns on taller trees
    crown = CROWN_M[kind, 0] + size * np.ptp(CROWN_M, axis=1)[kind]
    height = (TREE_H_M[kind, 0] + size * np.ptp(TREE_H_M, axis=1)[kind]) * rng.uniform(0.85, 1.0, len(x))
    rgb = TREE_RGB[kind] * rng.uniform(0.82, 1.18, (len(x), 1))
    trees = (x, y, crown * ppm, height, rgb, np.zeros(len(x), bool), np.zeros(len(x), bool))
    parts = [trees, _boulders(rng, grid, ppm, occ, weights), _occluders(rng, ppm, hv_lines)]
    return dict(zip(("x", "y", "r", "h", "rgb", "rock", "over"), (np.concatenate(p) for p in zip(*parts))))


def _boulders(rng, grid, ppm, occ, weights):
    """Clusters of boulders, mostly in the hills."""
    hills = weights[TERRAINS.index("hills")]
    n = _count(rng, 6.0, grid, ppm) + _count(rng, 40.0 * float(hills.mean()), grid, ppm)
    cells = rng.choice(hills.size, n, p=(hills.ravel() + 0.02) / (hills.sum() + 0.02 * hills.size))
    sizes = rng.integers(2, 14, n)
    x = np.repeat(cells % hills.shape[1] * COARSE, sizes) + rng.normal(0, 6 * ppm, sizes.sum())
    y = np.repeat(cells // hills.shape[1] * COARSE, sizes) + rng.normal(0, 6 * ppm, sizes.sum())
    keep = (x >= 0) & (x < grid.width) & (y >= 0) & (y < grid.height)
    keep[keep] = occ[y[keep].astype(int), x[keep].astype(int)] < HARD
    x, y = x[keep], y[keep]
    r = rng.uniform(0.7, 3.5, len(x)) * ppm
    rgb = ROCK_RGB[rng.integers(len(ROCK_RGB), size=len(x))] * rng.uniform(0.9, 1.1, (len(x), 1))
    return x, y, r, 0.7 * r / ppm, rgb, np.ones(len(x), bool), np.zeros(len(x), bool)


def _occluders(rng, ppm, hv_lines):
    """Trees drawn over some towers' legs, never over their centres."""
    rows = []
    for line in hv_lines:
        for c, s in zip(line.towers, line.footprint):
            if rng.random() < 0.25:
                for _ in range(int(rng.integers(1, 3))):
                    dist, a = s * rng.uniform(0.55, 0.9), rng.uniform(0, 2 * np.pi)
                    r = min(rng.uniform(2.0, 4.0) * ppm, dist - 0.3 * s)
                    rows.append([c[0] + dist * math.cos(a), c[1] + dist * math.sin(a), r, rng.uniform(6, 12)])
    rows = np.array(rows).reshape(-1, 4)
    rgb = TREE_RGB[[3]] * rng.uniform(0.85, 1.15, (len(rows), 1))
    return rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], rgb, np.zeros(len(rows), bool), np.ones(len(rows), bool)


# -- drawing primitives: a shape's coverage alpha on a small window, applied to a layer ------------------------------
def _window(shape, bbox):
    """The clipped pixel window of bbox (x0, y0, x1, y1) px and its pixel-centre coordinates, or None."""
    r0, r1 = max(int(math.floor(bbox[1])), 0), min(int(math.ceil(bbox[3])), shape[0])
    c0, c1 = max(int(math.floor(bbox[0])), 0), min(int(math.ceil(bbox[2])), shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    yy = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
    return (slice(r0, r1), slice(c0, c1)), yy, xx


class _Target:
    """Where a shape goes: a layer's (height, width) and what to do with a window's coverage alpha."""

    def __init__(self, shape, apply):
        self.shape = shape
        self.apply = apply


def _blend(rgb, sl, alpha, colour):
    """Blend a colour (3,) or per-pixel colours (3, h, w) over the window sl of rgb (3, H, W) uint8."""
    view = rgb[:, sl[0], sl[1]]
    v = view.astype(np.float32)
    colour = np.asarray(colour, np.float32)
    view[...] = np.rint(v + ((colour[:, None, None] if colour.ndim == 1 else colour) - v) * alpha)


def _paint(canvas, colour, opacity=1.0):
    return _Target(canvas.shape, lambda sl, alpha: _blend(canvas.rgb, sl, alpha * opacity, colour))


def _cast(canvas, opacity):
    """Into the shadow layer, by maximum: overlapping shadows do not darken twice."""

    def apply(sl, alpha):
        np.maximum(canvas.shadow[sl], (alpha * (255 * opacity)).astype(np.uint8), out=canvas.shadow[sl])

    return _Target(canvas.shape, apply)


def _mark(occ, level):
    def apply(sl, alpha):
        np.maximum(occ[sl], np.where(alpha > 0.3, np.uint8(level), np.uint8(0)), out=occ[sl])

    return _Target(occ.shape, apply)


def _draw(target, bbox, alpha_fn, *args):
    win = _window(target.shape, bbox)
    if win is not None:
        sl, yy, xx = win
        target.apply(sl, alpha_fn(yy, xx, *args))


def _disc(yy, xx, c, r):
    return np.clip(r + 0.5 - np.hypot(xx - c[0], yy - c[1]), 0, 1)


def _box(yy, xx, c, hu, hv, u):
    """A rectangle of half-sizes hu (along unit u) and hv, centred at c."""
    dx, dy = xx - c[0], yy - c[1]
    a = np.abs(dx * u[0] + dy * u[1])
    b = np.abs(dy * u[0] - dx * u[1])
    return np.clip(hu + 0.5 - a, 0, 1) * np.clip(hv + 0.5 - b, 0, 1)


def _band(yy, xx, a, b, r):
    """A flat-capped stroke of half-width r: pixels whose centres project onto [a, b), so pieces tile exactly."""
    d = b - a
    length = math.hypot(*d)
    px, py = xx - a[0], yy - a[1]
    t = (px * d[0] + py * d[1]) / length**2
    return np.clip(r + 0.5 - np.abs(px * d[1] - py * d[0]) / length, 0, 1) * ((t >= 0) & (t < 1))


def _capsule(yy, xx, a, b, r):
    d = b - a
    t = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
    return np.clip(r + 0.5 - np.hypot(xx - a[0] - t * d[0], yy - a[1] - t * d[1]), 0, 1)


def _convex(yy, xx, pts):
    """A convex polygon, vertices in order (either way round)."""
    nxt = np.roll(pts, -1, axis=0)
    sign = np.sign(np.sum(pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1]))
    alpha = np.ones(np.broadcast_shapes(yy.shape, xx.shape), np.float32)
    for (ax, ay), (bx, by) in zip(pts, nxt):
        inward = sign * ((bx - ax) * (yy - ay) - (by - ay) * (xx - ax)) / math.hypot(bx - ax, by - ay)
        alpha = np.minimum(alpha, np.clip(inward + 0.5, 0, 1))
    return alpha


def _bbox(pts, pad):
    pts = np.asarray(pts, float).reshape(-1, 2)
    return (*(pts.min(axis=0) - pad - 1), *(pts.max(axis=0) + pad + 1))


def _disc_at(target, c, r):
    _draw(target, _bbox(c, r), _disc, c, r)


def _box_at(target, c, hu, hv, u):
    _draw(target, _bbox(c, math.hypot(hu, hv)), _box, c, hu, hv, u)


def _capsule_at(target, a, b, r):
    _draw(target, _bbox([a, b], r), _capsule, np.asarray(a, float), np.asarray(b, float), r)


def _stroke(target, pts, r, joins=False, piece=48.0):
    """A polyline of half-width r px, in short flat-capped pieces: small windows and no double-blended seams."""
    pts = np.asarray(pts, float)
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, math.ceil(math.hypot(*(b - a)) / piece))
        for k in range(n):
            pa, pb = a + (b - a) * k / n, a + (b - a) * (k + 1) / n
            _draw(target, _bbox([pa, pb], r), _band, pa, pb, r)
    if joins:  # round the bends of opaque strokes
        for p in pts[1:-1]:
            _disc_at(target, p, r)


def _rect_corners(c, hu, hv, u):
    u = np.asarray(u, float)
    v = np.array([-u[1], u[0]])
    return np.array([c + i * hu * u + j * hv * v for i, j in ((1, 1), (1, -1), (-1, -1), (-1, 1))])


def _prism_shadow(corners, offset):
    """The ground shadow of a box: the hull of its footprint and its footprint moved by the shadow vector."""
    pts = np.vstack([corners, corners + offset])
    return np.asarray(shapely.MultiPoint(pts).convex_hull.exterior.coords)[:-1]


# -- rendering ------------------------------------------------------------------------------------------------------
class _Canvas:
    def __init__(self, height, width):
        self.shape = (height, width)
        self.rgb = np.zeros((3, height, width), np.uint8)
        self.shadow = np.zeros((height, width), np.uint8)  # alpha of cast shadows, combined by maximum
        self.towers = np.zeros((height, width), bool)  # pixels of tower steel

    def apply_shadows(self):
        loss = 1 - SHADOW_KEEP
        for r0 in range(0, self.shape[0], STRIP):
            s = self.shadow[r0: r0 + STRIP].astype(np.float32) / 255
            for ch in range(3):
                band = self.rgb[ch, r0: r0 + STRIP]
                band[...] = np.rint(band * (1 - loss[ch] * s))


def _render_steps(plan):
    return -(-plan.grid.height // STRIP) + 4


def render_scene(plan, towers=True, progress=None):
    """A plan's pixels: (RGB uint8 (3, H, W), tower-steel mask (H, W) bool). towers=False leaves towers out.

    progress(done, total, stage) is called between stages.
    """
    total = _render_steps(plan)
    report = (lambda done, stage: progress(done, total, stage)) if progress else (lambda done, stage: None)
    canvas = _Canvas(plan.grid.height, plan.grid.width)
    rng = _streams(plan.seed)["render"]
    _paint_ground(plan, canvas, report)
    _paint_surface(plan, canvas)
    report(total - 3, "surface")
    sprites = _Sprites(rng, plan)
    lit = [_mean_around(canvas.rgb, line.towers) for line in plan.hv_lines]
    _cast_shadows(plan, canvas, sprites)
    # how bright the ground under each tower is, shadows of other things included: steel is drawn to contrast
    shaded = [_mean_around(canvas.shadow[None], line.towers) / 255 for line in plan.hv_lines]
    ground = [a * (1 - 0.5 * b) for a, b in zip(lit, shaded)]
    if towers:
        for line in plan.hv_lines:
            _cast_tower_line(plan, canvas, line)
    canvas.apply_shadows()
    report(total - 2, "shadows")
    _paint_objects(plan, canvas)
    _paint_blobs(canvas, plan.blobs, sprites, ~plan.blobs["over"])
    if towers:
        for line, lum in zip(plan.hv_lines, ground):
            _paint_tower_line(plan, canvas, line, lum)
    _paint_blobs(canvas, plan.blobs, sprites, plan.blobs["over"])
    report(total - 1, "objects")
    _finish(canvas, rng)
    report(total, "finish")
    return canvas.rgb, canvas.towers


def _paint_ground(plan, canvas, report):
    """Terrain colour, fields, texture, bare rock, wind ripples and hillshade, strip by strip."""
    g, ppm = plan.ground, plan.ppm
    xs = np.arange(plan.grid.width, dtype=np.float32) + 0.5
    for k, r0 in enumerate(range(0, plan.grid.height, STRIP)):
        ys = np.arange(r0, min(r0 + STRIP, plan.grid.height), dtype=np.float32) + 0.5
        rgb, texture, farm, hills, desert, shade = np.split(_upsample(g.coarse, r0, r0 + len(ys)), [3, 4, 5, 6, 7])
        cols = np.flatnonzero(farm.max(axis=1)[0] > 0.01)
        if len(cols):  # fields, only in the columns that have farmland
            span = slice(cols[0], cols[-1] + 1)
            rgb[..., span] += farm[..., span] * _fields(g.farm, ys, xs[span], ppm)
        mid, fine = g.mid.grid(ys, xs), g.fine.grid(ys, xs)
        rgb *= 1 + texture * (0.7 * mid + 0.3 * fine)
        if hills.max() > 0.01:  # bare rock where the noise is high, dark crevices where it is low
            grain = 0.8 * mid + 0.2 * fine
            rock = np.clip((grain - 0.2) * 3, 0, 1) * hills
            rgb += (ROCK_RGB[0][:, None, None] * (0.9 + 0.2 * fine) - rgb) * (0.8 * rock)
            rgb *= 1 - 0.25 * hills * np.clip(-grain - 0.2, 0, 1)
        if desert.max() > 0.01:  # wind ripples
            c, s = math.cos(g.dune_angle), math.sin(g.dune_angle)
            phase = (xs * c + ys[:, None] * s) / (9 * ppm) + 0.8 * mid
            rgb *= 1 + 0.05 * desert * (np.abs(2 * (phase - np.floor(phase)) - 1) - 0.5)
        rgb *= shade
        canvas.rgb[:, r0: r0 + len(ys)] = np.clip(np.rint(rgb), 0, 255)
        report(k + 1, "ground")


def _fields(farm, ys, xs, ppm):
    """Field colours: strips across `angle`, cut into fields, with crop rows and darker field edges."""
    c, s = math.cos(farm.angle), math.sin(farm.angle)
    u = xs * c + ys[:, None] * s - farm.u0
    strip = np.floor(u * (1 / farm.strip))  # np.floor and products: float // and % are ten times slower
    du = u - strip * farm.strip  # across the strip, 0..strip
    strip = np.clip(strip.astype(np.intp), 0, len(farm.lengths) - 1)
    length = np.take(farm.lengths, strip)
    v = ys[:, None] * c - xs * s - farm.v0 + np.take(farm.offsets, strip)
    field = np.floor(v / length)
    dv = v - field * length  # along the strip, 0..length
    field = strip * farm.n_fields + np.clip(field.astype(np.intp), 0, farm.n_fields - 1)
    red, green, blue, strength = np.take(farm.table, field, axis=1)
    rows = u * (1 / (2.2 * ppm))
    light = 1 + strength * (np.abs(2 * (rows - np.floor(rows)) - 1) - 0.5)
    edge = np.minimum(np.minimum(du, farm.strip - du), np.minimum(dv, length - dv))
    light *= 1 - 0.25 * np.clip(1.5 + 0.6 * ppm - edge, 0, 1)
    return np.stack([red, green, blue]) * light


def _mean_around(layers, pts, r=2):
    """The mean of layers (n, H, W) in the (2r+1)-px square around each point (NaN outside the scene)."""
    means = []
    for x, y in pts:
        win = _window(layers.shape[1:], (x - r, y - r, x + r + 1, y + r + 1))
        means.append(layers[:, win[0][0], win[0][1]].mean() if win else np.nan)
    return np.array(means)


def _paint_surface(plan, canvas):
    """Things on the ground: bare village compounds, pivot fields, tracks, roads, wet ground at wells."""
    ppm = plan.ppm
    for c, r, lumps in plan.compounds:
        _draw(_paint(canvas, (178, 152, 116), 0.55), _bbox(c, r * 1.3), _lumpy_disc, c, r, lumps, 6 * ppm)
    for pivot in plan.pivots:
        _paint_pivot(canvas, pivot, ppm)
    for pts in plan.tracks:
        _stroke(_paint(canvas, (176, 150, 114), 0.5), pts, 1.1 * ppm)
    for pts, half, paved in plan.roads:
        if paved:
            _stroke(_paint(canvas, (172, 160, 138)), pts, half + 1.0 * ppm, joins=True)
            _stroke(_paint(canvas, (98, 98, 100)), pts, half, joins=True)
        else:
            _stroke(_paint(canvas, (170, 148, 118)), pts, half, joins=True)
    for c in plan.wells:
        _disc_at(_paint(canvas, (70, 68, 56), 0.35), c, 3.0 * ppm)


def _lumpy_disc(yy, xx, c, r, lumps, soft):
    dx, dy = xx - c[0], yy - c[1]
    theta = np.arctan2(dy, dx)
    edge = r * (1 + 0.18 * np.sin(3 * theta + lumps[0]) + 0.1 * np.sin(5 * theta + lumps[1]))
    return np.clip((edge - np.hypot(dx, dy)) / soft, 0, 1)


def _paint_pivot(canvas, pivot, ppm):
    """A centre-pivot field: two crop sectors with concentric wheel tracks, keeping the ground's texture."""
    c, r = pivot["c"], pivot["r"]
    win = _window(canvas.shape, _bbox(c, r))
    if win is None:
        return
    sl, yy, xx = win
    dx, dy = xx - c[0], yy - c[1]
    d = np.hypot(dx, dy)
    theta = np.mod(np.arctan2(dy, dx) - pivot["split"][0], 2 * np.pi)
    sector = theta < np.mod(pivot["split"][1] - pivot["split"][0], 2 * np.pi)
    colour = np.where(sector, pivot["colours"][0][:, None, None], pivot["colours"][1][:, None, None])
    ring = np.abs((d + pivot["ring"] / 2) % pivot["ring"] - pivot["ring"] / 2)
    texture = canvas.rgb[:, sl[0], sl[1]].mean(axis=0)
    texture = 1 + 0.6 * (texture / texture.mean() - 1)
    colour = colour * texture * (1 - 0.25 * np.clip(1.2 * ppm - ring, 0, 1))
    _blend(canvas.rgb, sl, np.clip(r + 0.5 - d, 0, 1), colour)


def _pivot_arm(pivot):
    return np.array([pivot["c"], pivot["c"] + pivot["r"] * np.array([math.cos(pivot["arm"]), math.sin(pivot["arm"])])])


class _Sprites:
    """Crowns of trees and boulders (alpha, shading) and their shadows, made once per size."""

    def __init__(self, rng, plan):
        self.light = plan.sun.light
        self.shadow_vec = plan.sun.shadow
        self.sin_el = math.sin(math.radians(plan.sun.elevation))
        self.ppm = plan.ppm
        blobs = plan.blobs
        # every variant is made up front, in a fixed order, so the random stream does not depend on what is drawn
        sizes = sorted(set(zip(np.rint(blobs["r"] * 2).astype(int).tolist(), blobs["rock"].tolist())))
        self.crowns = {(*key, variant): self._crown(rng, key[0] / 2, key[1]) for key in sizes for variant in range(4)}
        self.shadows = {}

    def _crown(self, rng, r, rock):
        n = int(math.ceil(r * 1.3)) + 1
        yy, xx = np.mgrid[-n: n + 1, -n: n + 1].astype(np.float32)
        theta = np.arctan2(yy, xx)
        edge = r * (1 + sum(0.1 * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) for k in ((2, 3) if rock else (5, 7))))
        alpha = np.clip(edge + 0.5 - np.hypot(xx, yy), 0, 1)
        lit = (xx * self.light[0] + yy * self.light[1]) / max(r, 1)  # the sunny side is brighter
        cells = (np.arange(2 * n + 1) + 0.5) / (2 * n + 1) * 4
        clumps = _sample_grid(rng.uniform(-1, 1, (6, 6)).astype(np.float32), cells, cells)  # leaf clusters
        dome = (np.hypot(xx, yy) / r) ** 2
        shade = 0.88 + (0.3 if rock else 0.25) * lit + (0.05 if rock else 0.14) * clumps - 0.1 * dome
        return alpha.astype(np.float32), shade.astype(np.float32), n

    def crown(self, r, rock, variant):
        return self.crowns[(int(round(r * 2)), bool(rock), variant)]

    def shadow(self, r, h):
        """Shadow of a round crown of radius r px whose top is h m up, and of its trunk."""
        key = (int(round(r * 2)), int(round(h * 2)))
        if key not in self.shadows:
            r_px, h_m = key[0] / 2, key[1] / 2
            r_m = r_px / self.ppm
            centre_m = max(h_m - r_m, 0.8 * r_m)
            unit = self.shadow_vec / math.hypot(*self.shadow_vec)
            stretch = unit * r_px * (1 / self.sin_el - 1)  # a ball's shadow is longer by 1 / sin(elevation)
            mid = self.shadow_vec * centre_m
            n = int(math.ceil(r_px + abs(mid).max() + abs(stretch).max())) + 2
            yy, xx = np.mgrid[-n: n + 1, -n: n + 1].astype(np.float32)
            body = _capsule(yy, xx, mid - stretch, mid + stretch, 0.95 * r_px)
            trunk = _capsule(yy, xx, np.zeros(2), self.shadow_vec * max(centre_m - r_m, 0), 0.4)
            self.shadows[key] = (np.maximum(body, 0.7 * trunk), n)
        return self.shadows[key]


def _stamp(shape, x, y, n):
    """The window of a layer under a (2n+1)-px sprite centred on pixel (x, y), and the sprite's matching part."""
    cx, cy = int(x), int(y)
    r0, c0 = max(cy - n, 0), max(cx - n, 0)
    r1, c1 = min(cy + n + 1, shape[0]), min(cx + n + 1, shape[1])
    if r0 >= r1 or c0 >= c1:
        return None, None
    return (slice(r0, r1), slice(c0, c1)), (slice(r0 - cy + n, r1 - cy + n), slice(c0 - cx + n, c1 - cx + n))


def _cast_shadows(plan, canvas, sprites):
    """Every shadow but the towers' into the shadow layer."""
    ppm, sv = plan.ppm, plan.sun.shadow
    b = plan.blobs
    for x, y, r, h, rock in zip(b["x"], b["y"], b["r"], b["h"], b["rock"]):
        alpha, n = sprites.shadow(r, h)
        sl, part = _stamp(canvas.shape, x, y, n)
        if sl is not None:
            view = canvas.shadow[sl]
            np.maximum(view, (alpha[part] * (200 if rock else 185)).astype(np.uint8), out=view)
    for bld in plan.buildings:
        if bld["round"]:
            _capsule_at(_cast(canvas, 0.85), bld["c"], bld["c"] + bld["height"] * sv, bld["half"][0])
        else:
            poly = _prism_shadow(_rect_corners(bld["c"], *bld["half"], bld["u"]), bld["height"] * sv)
            _draw(_cast(canvas, 0.85), _bbox(poly, 1), _convex, poly)
    for pivot in plan.pivots:  # the arm, 3 m up on wheeled towers every 45 m
        arm = _pivot_arm(pivot)
        _stroke(_cast(canvas, 0.55), arm + 3.0 * sv, 0.6)
        for p in _resample(arm, 45 * ppm)[1:]:
            _capsule_at(_cast(canvas, 0.6), p, p + 3.5 * sv, 0.8 * ppm)
    for c in plan.wells:
        _capsule_at(_cast(canvas, 0.5), c, c + 0.8 * sv, 1.2 * ppm)
    for poles in plan.minor_lines:
        for p in poles:
            _capsule_at(_cast(canvas, 0.7), p, p + 9.5 * sv, 0.6)
        _stroke(_cast(canvas, 0.2), poles + 8.5 * sv, 0.5)


def _paint_objects(plan, canvas):
    """Roofs, pivot arms, wells and distribution poles (trees and towers are drawn apart)."""
    ppm = plan.ppm
    for bld in plan.buildings:
        _paint_roof(canvas, bld, plan.sun.light)
    for pivot in plan.pivots:
        arm = _pivot_arm(pivot)
        _stroke(_paint(canvas, (186, 186, 184), 0.75), arm, 0.6)
        for p in _resample(arm, 45 * ppm)[1:]:
            _disc_at(_paint(canvas, (120, 118, 112), 0.9), p, 0.8)
    for c in plan.wells:
        _disc_at(_paint(canvas, (196, 190, 178)), c, 1.2 * ppm)
        _disc_at(_paint(canvas, (38, 40, 44)), c, 0.5 * ppm)
    for poles in plan.minor_lines:
        _stroke(_paint(canvas, (52, 52, 50), 0.22), poles, 0.5)
        d = np.gradient(poles, axis=0)
        across = d[:, ::-1] * [-1, 1] / np.hypot(*d.T)[:, None] * 0.9 * ppm  # a 1.8 m cross-arm
        for p, arm in zip(poles, across):
            _capsule_at(_paint(canvas, (96, 90, 80), 0.6), p - arm, p + arm, 0.4)
            _disc_at(_paint(canvas, (70, 62, 52), 0.9), p, 0.9)


def _paint_roof(canvas, bld, light):
    """A roof lit by the sun: gabled (two halves) when rectangular, conical when round."""
    c, (hu, hv), u = bld["c"], bld["half"], bld["u"]
    win = _window(canvas.shape, _bbox(c, math.hypot(hu, hv)))
    if win is None:
        return
    sl, yy, xx = win
    dx, dy = xx - c[0], yy - c[1]
    if bld["round"]:
        alpha = np.clip(hu + 0.5 - np.hypot(dx, dy), 0, 1)
        shade = 1 + 0.3 * (dx * light[0] + dy * light[1]) / hu
    else:
        alpha = _box(yy, xx, c, hu, hv, u)
        across = dy * u[0] - dx * u[1]  # the ridge runs along u
        facing = -u[1] * light[0] + u[0] * light[1]
        shade = 1 + 0.12 * np.sign(across) * np.sign(facing)
    _blend(canvas.rgb, sl, alpha, bld["colour"][:, None, None] * shade)


def _paint_blobs(canvas, blobs, sprites, which):
    for i in np.flatnonzero(which):
        alpha, shade, n = sprites.crown(blobs["r"][i], blobs["rock"][i], i % 4)
        sl, part = _stamp(canvas.shape, blobs["x"][i], blobs["y"][i], n)
        if sl is not None:
            _blend(canvas.rgb, sl, alpha[part], blobs["rgb"][i][:, None, None] * shade[part])


def _finish(canvas, rng):
    """Soften everything a little, as optics and resampling do ([0.2, 0.6, 0.2] both ways), and add sensor grain:
    no drawn shape keeps tell-tale flat colours. In place, strip by strip; the row above each strip is kept."""
    h = canvas.shape[0]
    above = canvas.rgb[:, :1].astype(np.float32)
    for r0 in range(0, h, STRIP):
        r1 = min(r0 + STRIP, h)
        block = canvas.rgb[:, r0:r1].astype(np.float32)
        below = canvas.rgb[:, min(r1, h - 1)][:, None].astype(np.float32)
        rows = np.concatenate([above, block, below], axis=1)
        above = block[:, -1:]
        soft = 0.6 * rows[:, 1:-1] + 0.2 * (rows[:, :-2] + rows[:, 2:])
        soft[..., 1:-1] = 0.6 * soft[..., 1:-1] + 0.2 * (soft[..., :-2] + soft[..., 2:])
        soft += rng.normal(0, 2.0, soft.shape[1:]).astype(np.float32)
        canvas.rgb[:, r0:r1] = np.clip(np.rint(soft), 0, 255)


# -- towers ---------------------------------------------------------------------------------------------------------
def _tower_frames(line, ppm):
    """Per tower: centre, along and across unit vectors, footprint px, height m, steel, cross-arm half-length px."""
    along, across = line.axes()
    arm = line.phase + 0.8 * ppm
    return [(*t, arm) for t in zip(line.towers, along, across, line.footprint, line.height, line.steel)]


def _cast_tower_line(plan, canvas, line):
    """Each tower's lattice shadow and cross-arm shadows, and the sagging conductors' faint shadows."""
    ppm, sv = plan.ppm, plan.sun.shadow
    frames = _tower_frames(line, ppm)
    for c, u, v, s, h, _, arm in frames:
        top = c + 0.9 * h * sv
        _draw(_cast(canvas, 1.0), _bbox([c, top], s), _lattice_shadow, c, top, s, h, u, v)
        a = c + 0.72 * h * sv
        _capsule_at(_cast(canvas, 0.85), a - arm * v, a + arm * v, max(0.6 * ppm, 0.8))
        _capsule_at(_cast(canvas, 0.8), top - 0.3 * arm * v, top + 0.3 * arm * v, 0.7)
    t = np.linspace(0, 1, 9)[:, None]
    for (c0, _, v0, _, h0, *_), (c1, _, v1, _, h1, *_) in zip(frames[:-1], frames[1:]):
        sag = 0.035 * math.hypot(*(c1 - c0)) / ppm
        z = 0.72 * (h0 + (h1 - h0) * t) - 4 * sag * t * (1 - t)
        for k in (-1, 0, 1):
            a, b = c0 + k * line.phase * v0, c1 + k * line.phase * v1
            _stroke(_cast(canvas, 0.2), a + (b - a) * t + z * sv, 0.5)


def _lattice_shadow(yy, xx, c, top, s, h, u, v):
    """A tapering lattice's shadow: a trapezoid from the base (the footprint's width across the sun) to the top,
    dark along its edges, zig-zag diagonals and panel struts, lighter in between."""
    axis = top - c
    length = math.hypot(*axis)
    e = axis / length
    n = np.array([-e[1], e[0]])
    w0 = s / 2 * (abs(u @ n) + abs(v @ n))
    dx, dy = xx - c[0], yy - c[1]
    t = (dx * e[0] + dy * e[1]) / length
    q = dx * n[0] + dy * n[1]
    w = w0 * (1 - 0.9 * np.clip(t, 0, 1))
    inside = np.clip(w + 0.5 - np.abs(q), 0, 1) * np.clip(t * length + 0.5 * w0, 0, 1) * np.clip((1 - t) * length, 0, 1)
    panels = max(2, round(h / 6))
    phase = t * panels - np.floor(t * panels)
    zig = (2 * phase - 1) * w
    members = np.minimum(np.minimum(np.abs(q - zig), np.abs(q + zig)), w - np.abs(q))
    members = np.minimum(members, np.minimum(phase, 1 - phase) * length / panels)
    return inside * (0.3 + 0.6 * np.clip(1.3 - members, 0, 1))


def _paint_tower_line(plan, canvas, line, ground):
    """Conductors, then each tower's steel, bright or dark against the `ground` brightness under each tower."""
    ppm = plan.ppm
    frames = _tower_frames(line, ppm)
    for (c0, _, v0, *_), (c1, _, v1, *_) in zip(frames[:-1], frames[1:]):
        for k in (-1, 0, 1):
            _stroke(_paint(canvas, (206, 206, 202), 0.16), [c0 + k * line.phase * v0, c1 + k * line.phase * v1], 0.5)
    for (c, u, v, s, _, steel, arm), lum in zip(frames, ground):
        win = _window(canvas.shape, _bbox(c, max(s, arm) + 2))
        if win is None:
            continue
        sl, yy, xx = win
        alpha = _tower_alpha(yy, xx, c, u, v, s, steel, arm, ppm)
        _blend(canvas.rgb, sl, alpha, STEEL["dark" if lum >= 150 else "bright"])
        canvas.towers[sl] |= alpha > 0.35


def _tower_alpha(yy, xx, c, u, v, s, steel, arm, ppm):
    """Coverage of a lattice tower seen from above: base square, legs to the waist, waist, cross-arm, insulators;
    its peak, nearest the camera, stays clear whatever `steel`."""
    corners = [c + (i * u + j * v) * s / 2 for i, j in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    waist = [c + (i * u + j * v) * s * 0.18 for i, j in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    parts = []
    for k in range(4):
        parts.append(0.7 * _capsule(yy, xx, corners[k], corners[k - 1], 0.45))
        parts.append(0.85 * _capsule(yy, xx, corners[k], waist[k], 0.6))
        parts.append(0.6 * _capsule(yy, xx, waist[k], waist[k - 1], 0.4))
        parts.append(0.9 * _disc(yy, xx, corners[k], 0.9))
    parts.append(0.9 * _capsule(yy, xx, c - arm * v, c + arm * v, max(0.6 * ppm, 0.8)))
    for k in (-1, 1):
        parts.append(0.8 * _disc(yy, xx, c + k * (arm - 0.8 * ppm) * v, 0.9))
    half = max(1.0, 0.7 * ppm)
    return np.maximum(steel * np.maximum.reduce(parts), _box(yy, xx, c, half, half, u))


# -- outputs --------------------------------------------------------------------------------------------------------
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
    tmp = path + ".tmp"
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(rgb)
    os.replace(tmp, path)


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


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
