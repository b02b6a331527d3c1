"""What goes where in a synthetic scene: a Plan holds everything about it but its pixels (terrain maps, roads,
fields, buildings, HV lines and their towers, distribution poles, trees and boulders, confusers, the sun), in
pixels of the scene's Grid. Sizes are in metres on the ground, turned into pixels with the ground resolution at the
scene's latitude. All randomness comes from numpy.random.default_rng(seed), split into one stream per stage
(streams, which render.py uses too), so the same arguments give the same plan and the same pixels.

Options (density and realism) all default to the original scene: with the defaults, no stream draws a number more
or less than before, so the same seed gives the same bytes as before the options existed.
"""

import math
import numbers
from dataclasses import dataclass

import numpy as np

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
from .noise import Fractal
from .shapes import box_at, disc_at, mark, stroke, window

MAX_TILES = 64  # per side: the whole scene is drawn in memory
ZOOMS = (17, 18, 19)  # coarser tiles show a tower as a few pixels; the model is fed zoom 18
COARSE = 4  # terrain maps are computed on every COARSE-th pixel, then interpolated

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

# HV lines by voltage (OSM tag): footprint (m), height (m), phase spacing (m), cleared corridor half-width (m)
VOLTAGES = (
    ("330000", (11.0, 14.0), (38.0, 50.0), 8.5, 25.0),
    ("220000", (10.0, 12.0), (32.0, 42.0), 7.0, 20.0),
    ("132000", (8.5, 10.5), (27.0, 36.0), 5.0, 15.0),
    ("66000", (8.0, 9.0), (25.0, 30.0), 4.0, 11.0),
)
SPANS_M = np.linspace(262.0, 438.0, 12)  # tower spacing candidates: 250-450 m, with a margin for rounding

MAX_TOWER_H_M = max(h[1] for _, _, h, _, _ in VOLTAGES)  # --lean moves the tallest tower's top this much
MAX_HV_LINES = 100
TOWER_TILE_BUFFER_PX = 5  # label-maker's tippecanoe buffer (5/256 of a tile): a tower this near a tile labels it too
# confusers per km² at --confusers 1 (each kind at least once when it fits)
CONFUSERS_PER_KM2 = {"telecom_mast": 0.4, "substation": 0.08, "water_tower": 0.4}

FREE, CORRIDOR, HARD = 0, 1, 2  # occupancy while planning: corridors get few trees, hard ground nothing else


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


def check_seed(seed):
    if not _is_whole(seed) or seed < 0:
        raise UserError(f"seed must be a whole number >= 0, got {seed!r}")


@dataclass(frozen=True)
class Options:
    """Density and realism options; the defaults give the original scene (docs/cli.md, `synthetic`)."""

    hv_lines: int | None = None  # HV lines planned; None: from the scene's size
    jpeg_quality: int | None = None  # JPEG-encode each 256-px tile at this quality (1..100), as tile services do
    low_contrast: bool = False  # tower steel close to the ground's brightness
    lean: float = 0.0  # m: off-nadir view, the tallest tower's top displaced this much from its base
    haze: float = 0.0  # 0..1: blend towards a pale haze colour, and soften
    confusers: float = 0.0  # density of telecom masts, substations and water towers (1: moderate)

    @property
    def default(self):
        return self == Options()


REALISM = {"jpeg_quality": 75, "low_contrast": True, "lean": 6.0, "haze": 0.25, "confusers": 1.0}


def scene_options(realism=False, **given):
    """Checked Options: the `given` values (None: not given), the rest from the --realism preset when `realism`,
    else the defaults. UserError (one line) for a bad value."""
    unknown = set(given) - set(Options.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown synthetic scene options: {', '.join(sorted(unknown))}")
    values = {**(REALISM if realism else {}), **{k: v for k, v in given.items() if v is not None}}
    opts = Options(**values)
    if opts.hv_lines is not None and not (_is_whole(opts.hv_lines) and 0 <= opts.hv_lines <= MAX_HV_LINES):
        raise UserError(f"hv_lines must be a whole number from 0 to {MAX_HV_LINES}, got {opts.hv_lines!r}")
    if opts.jpeg_quality is not None and not (_is_whole(opts.jpeg_quality) and 1 <= opts.jpeg_quality <= 100):
        raise UserError(f"jpeg_quality must be a whole number from 1 to 100, got {opts.jpeg_quality!r}")
    for name, high in (("lean", 100.0), ("haze", 1.0), ("confusers", 20.0)):
        value = getattr(opts, name)
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= high):
            raise UserError(f"{name} must be a number from 0 to {high:g}, got {value!r}")
    if not isinstance(opts.low_contrast, bool):
        raise UserError(f"low_contrast must be true or false, got {opts.low_contrast!r}")
    return opts


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
    mid: Fractal  # metre-scale texture
    fine: Fractal  # pixel-scale texture
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
    boulder_clusters: np.ndarray = None  # (n, 2) px: centres of the boulder clusters
    confusers: list = ()  # dict(kind, c, ...): telecom masts, substations, water towers (--confusers)
    lean: np.ndarray = None  # (dx, dy) px of displacement per metre of height (--lean); None: straight down
    options: Options = Options()


def streams(seed):
    # "realism" comes last: spawning one more child leaves the first ones as they were
    names = ("terrain", "layout", "lines", "objects", "trees", "render", "realism")
    return dict(zip(names, np.random.default_rng(seed).spawn(len(names))))


def plan_scene(tiles_x=8, tiles_y=8, seed=0, lon=28.28, lat=-15.42, zoom=18, options=None):
    """Check the arguments and lay the scene out. options: Options (scene_options); None: the defaults."""
    grid = scene_grid(tiles_x, tiles_y, lon, lat, zoom)
    check_seed(seed)
    opts = options or Options()
    rng = streams(int(seed))
    ppm = grid.ppm
    sun = _sun(rng["terrain"], ppm)
    ground, weights = _plan_ground(rng["terrain"], grid, ppm, sun)
    occ = np.zeros((grid.height, grid.width), np.uint8)
    roads = _plan_roads(rng["layout"], grid, ppm, occ)
    pivots = _plan_pivots(rng["layout"], grid, ppm, occ)
    tracks = _plan_tracks(rng["layout"], grid, ppm, occ)
    hv_lines = _plan_hv_lines(rng["lines"], grid, ppm, sun, occ, opts.hv_lines)
    compounds, buildings, wells = _plan_settlements(rng["objects"], grid, ppm, occ, roads, pivots)
    lean = None
    if opts.lean > 0:  # one scene-wide direction: the view's, away from the camera's nadir point
        a = rng["realism"].uniform(0, 2 * np.pi)
        lean = np.array([math.cos(a), math.sin(a)]) * opts.lean / MAX_TOWER_H_M * ppm
    confusers = []
    if opts.confusers > 0:
        confusers = _plan_confusers(rng["realism"], grid, ppm, occ, hv_lines, opts.confusers)
    blobs, clusters = _plan_blobs(rng["trees"], grid, ppm, occ, weights, hv_lines)
    return Plan(
        grid=grid, seed=int(seed), ppm=ppm, sun=sun, ground=ground, roads=roads, pivots=pivots, tracks=tracks,
        hv_lines=hv_lines, compounds=compounds, buildings=buildings, wells=wells,
        minor_lines=_plan_minor_lines(rng["lines"], grid, ppm, roads, compounds),
        blobs=blobs, boulder_clusters=clusters, confusers=confusers, lean=lean, options=opts,
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
    logits = np.stack([Fractal(rng, shape, 650 * ppm, 2).grid(ys, xs) + b for b in bias])
    logits += 0.35 * Fractal(rng, shape, 60 * ppm, 3).grid(ys, xs)  # frays the boundaries
    logits = np.exp(9.0 * (logits - logits.max(axis=0)))
    weights = logits / logits.sum(axis=0)
    patch = Fractal(rng, shape, 40 * ppm, 2).grid(ys, xs)
    rgb = np.einsum("thw,tc->chw", weights, BASE) + np.einsum("thw,tc->chw", weights * patch, ALT)
    texture = np.einsum("thw,t->hw", weights, TEXTURE)
    farm, desert, hills = (weights[TERRAINS.index(t)] for t in ("farmland", "desert", "hills"))
    ridges = 1 - 2 * np.abs(Fractal(rng, shape, 150 * ppm, 3).grid(ys, xs))
    height = (3 + 25 * hills) * Fractal(rng, shape, 300 * ppm, 3).grid(ys, xs) + 7 * hills * ridges
    shade = _hillshade(height, COARSE / ppm, sun)
    coarse = np.concatenate([rgb, np.stack([texture, farm, hills, desert, shade])]).astype(np.float32)
    ground = Ground(coarse, Fractal(rng, shape, 7 * ppm, 2), Fractal(rng, shape, 2 * ppm, 1),
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


def resample(pts, spacing, jitter=0.0, rng=None):
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
    win = window(occ.shape, (c[0] - r, c[1] - r, c[0] + r, c[1] + r))
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
        stroke(mark(occ, HARD), pts, half + 1.5 * ppm, joins=True)
    return roads


def _plan_pivots(rng, grid, ppm, occ):
    """Centre-pivot fields on free ground, smaller where big ones do not fit."""
    pivots = []
    for _ in range(_count(rng, 0.35, grid, ppm, minimum=1)):
        r = min(rng.uniform(60, 190) * ppm, 0.3 * min(grid.width, grid.height))
        for _ in range(25):
            c = _interior_point(rng, grid, 0.05, 0.95)
            if _is_free(occ, c, r):
                disc_at(mark(occ, HARD), c, r)
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
        stroke(mark(occ, HARD), pts, 1.5 * ppm)
    return tracks


def _plan_hv_lines(rng, grid, ppm, sun, occ, count=None):
    """HV lines through the scene, `count` or more for bigger scenes: towers off roads, tracks, pivots and each
    other."""
    lines = []
    for i in range(max(2, round(1.2 * _extent_km(grid, ppm))) if count is None else count):
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
        stroke(mark(occ, CORRIDOR), towers, line.corridor)
        for c, s in zip(towers, line.footprint):
            box_at(mark(occ, HARD), c, s / 2 + 3 * ppm, s / 2 + 3 * ppm, (1.0, 0.0))
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
        disc_at(mark(occ, CORRIDOR), centre, spread * 1.5)  # few trees in a village
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
               rng.uniform(2.5, 4), False, kind="shed")
    for pivot in pivots:  # the pivot's centre tower
        buildings.append(_building(pivot["c"], (1.5 * ppm, 1.5 * ppm), 0.0, ROOFS[2], 4.0, False))
    wells = []
    for i in range(_count(rng, 6.0, grid, ppm, minimum=1)):
        c = compounds[i % len(compounds)][0] + rng.normal(0, 40 * ppm, 2) if i % 2 else _interior_point(rng, grid)
        if _is_free(occ, c, 3 * ppm):
            disc_at(mark(occ, HARD), c, 3 * ppm)
            wells.append(c)
    return compounds, buildings, np.array(wells).reshape(-1, 2)


def _building(c, half, angle, colour, height, round_, kind=None):
    return {"c": np.asarray(c, float), "half": tuple(half), "u": (math.cos(angle), math.sin(angle)),
            "colour": colour, "height": height, "round": round_, "kind": kind}


def _place(occ, buildings, c, half, angle, colour, height, round_, kind=None):
    """Add a building where the ground is free, and take its ground."""
    building = _building(c, half, angle, colour, height, round_, kind)
    hu, hv = building["half"]
    if _is_free(occ, building["c"], math.hypot(hu, hv) + 2):
        box_at(mark(occ, HARD), building["c"], hu + 2, hv + 2, building["u"])
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
        poles = resample(path, rng.uniform(45, 80) * ppm, 0.08, rng)
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
    *boulders, clusters = _boulders(rng, grid, ppm, occ, weights)
    parts = [trees, boulders, _occluders(rng, ppm, hv_lines)]
    return dict(zip(("x", "y", "r", "h", "rgb", "rock", "over"), (np.concatenate(p) for p in zip(*parts)))), clusters


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
    # the clusters that kept a boulder, at their boulders' mean
    cluster = np.repeat(np.arange(n), sizes)[keep]
    x, y = x[keep], y[keep]
    found = np.unique(cluster)
    counts = np.bincount(cluster, minlength=n)[found]
    centres = np.stack([np.bincount(cluster, x, n)[found], np.bincount(cluster, y, n)[found]], axis=1)
    centres = centres / np.maximum(counts, 1)[:, None]
    r = rng.uniform(0.7, 3.5, len(x)) * ppm
    rgb = ROCK_RGB[rng.integers(len(ROCK_RGB), size=len(x))] * rng.uniform(0.9, 1.1, (len(x), 1))
    return x, y, r, 0.7 * r / ppm, rgb, np.ones(len(x), bool), np.zeros(len(x), bool), centres.reshape(-1, 2)


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


# -- density and confusers ----------------------------------------------------------------------------------------
def tower_tiles(grid, hv_lines):
    """(tiles_y, tiles_x) bool: the scene's tiles that a dataset labels tower, those holding a tower of hv_lines
    within label-maker's buffer (TOWER_TILE_BUFFER_PX)."""
    mask = np.zeros((grid.tiles_y, grid.tiles_x), bool)
    reach = TOWER_TILE_BUFFER_PX
    for line in hv_lines:
        for x, y in line.towers:
            if grid.outside_by((x, y)) > 0:
                continue
            c0, c1 = (int(math.floor(v / TILE_SIZE)) for v in (x - reach, x + reach))
            r0, r1 = (int(math.floor(v / TILE_SIZE)) for v in (y - reach, y + reach))
            mask[max(r0, 0): r1 + 1, max(c0, 0): c1 + 1] = True
    return mask


def _plan_confusers(rng, grid, ppm, occ, hv_lines, density):
    """Tower-like things with no HV line: lattice telecom masts (some guyed), substations (a fenced yard of grey
    gear and short connectors) and water towers, on free ground in tiles without a tower."""
    near_towers = tower_tiles(grid, hv_lines)
    made = []
    km2 = _extent_km(grid, ppm) ** 2
    for kind, per_km2 in CONFUSERS_PER_KM2.items():
        for _ in range(max(1, int(rng.poisson(density * per_km2 * km2)))):
            size = {"telecom_mast": 3.0, "substation": rng.uniform(18, 45), "water_tower": 6.0}[kind] * ppm
            reach = size + (40 * ppm if kind != "substation" else 0)  # masts' guys and shadows reach far
            for _ in range(30):
                c = _interior_point(rng, grid, 0.05, 0.95)
                tiles = np.floor((np.array([c - reach, c + reach])) / TILE_SIZE).astype(int)
                (c0, r0), (c1, r1) = np.clip(tiles, 0, [grid.tiles_x - 1, grid.tiles_y - 1])
                if near_towers[r0: r1 + 1, c0: c1 + 1].any() or not _is_free(occ, c, size + 2 * ppm):
                    continue
                made.append(_confuser(rng, kind, c, size, ppm))
                box_at(mark(occ, HARD), c, size + 2 * ppm, size + 2 * ppm, (1.0, 0.0))
                break
    return made


def _confuser(rng, kind, c, size, ppm):
    angle = rng.uniform(0, np.pi)
    u = np.array([math.cos(angle), math.sin(angle)])
    if kind == "telecom_mast":  # a narrow lattice, 25-60 m tall; guyed ones have three anchors
        height = rng.uniform(25, 60)
        guys = int(rng.choice([0, 0, 3]))
        start = rng.uniform(0, 2 * np.pi)
        anchors = [c + 0.55 * height * ppm * np.array([math.cos(start + k * 2 * np.pi / 3),
                                                       math.sin(start + k * 2 * np.pi / 3)]) for k in range(guys)]
        return {"kind": kind, "c": c, "side": rng.uniform(1.6, 3.0) * ppm, "height": height, "u": u,
                "anchors": np.array(anchors).reshape(-1, 2), "shelter": rng.random() < 0.6}
    if kind == "water_tower":  # a round tank on a column or legs
        return {"kind": kind, "c": c, "r": rng.uniform(2.5, 5.0) * ppm, "height": rng.uniform(12, 28), "u": u,
                "colour": np.array([[196, 198, 200], [178, 184, 190], [150, 160, 172]][rng.integers(3)], float)}
    # substation: a fenced yard, bays of grey gear joined by short connectors, a control building
    hu, hv = size, size * rng.uniform(0.55, 0.9)
    v = np.array([-u[1], u[0]])
    bays = max(2, int(2 * hu / (7 * ppm)))
    gear, links = [], []
    for b in range(bays):
        along = -hu + (b + 0.5) * 2 * hu / bays
        row = [c + along * u + t * hv * v for t in np.linspace(-0.6, 0.45, int(rng.integers(3, 5)))]
        for k, p in enumerate(row):
            transformer = k == len(row) - 1 and rng.random() < 0.5
            half = (rng.uniform(1.6, 2.6) if transformer else rng.uniform(0.6, 1.0)) * ppm
            gear.append((p, half, 2.5 if transformer else 3.5))
        links += list(zip(row[:-1], row[1:]))
    building = c + (hv * 0.8) * v - hu * 0.6 * u
    return {"kind": kind, "c": c, "half": (hu, hv), "u": u, "gear": gear, "links": links,
            "building": building, "gantries": [c + (-hu + (b + 0.5) * 2 * hu / bays) * u for b in range(bays)]}
