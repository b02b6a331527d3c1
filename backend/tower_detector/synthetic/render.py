"""The pixels of a planned synthetic scene: ground strip by strip, things on the ground, every shadow (cast by the
one sun, combined by maximum), roofs, trees, confusers and towers, then a softening and sensor grain over everything
alike, and the options' haze and JPEG tiles. render_scene(plan, towers=False) differs from the full scene only where
towers, their shadows and conductors are drawn (the tests compare the two).
"""

import io
import math

import numpy as np
from PIL import Image

from ..geo.tilemath import TILE_SIZE
from .noise import sample_grid
from .plan import COARSE, ROCK_RGB, resample, streams
from .shapes import (
    bbox,
    blend,
    box,
    box_at,
    capsule,
    capsule_at,
    cast,
    convex,
    disc,
    disc_at,
    draw,
    paint,
    prism_shadow,
    rect_corners,
    stroke,
    window,
)

STRIP = 256  # rows of ground made at a time, to bound memory
SHADOW_KEEP = np.array([0.42, 0.45, 0.54], np.float32)  # what a full shadow leaves of R, G, B: shade is bluish
STEEL = {"bright": (200, 202, 206), "dark": (84, 86, 90)}  # galvanised steel, and how it looks against sand
PALE_STEP = 16  # --low-contrast: steel this many grey levels from the ground under it, paler where it can be
HAZE_RGB = np.array([214, 218, 226], np.float32)  # --haze: the pale, slightly blue veil
# heights of a tower's parts, as fractions of its height, where --lean shears them: waist, cross-arm, peak
WAIST_Z, ARM_Z, PEAK_Z = 0.6, 0.72, 1.0


def _upsample(values, r0, r1):
    """Rows r0..r1 (r0 a multiple of COARSE) of maps (..., Hc, Wc) sampled on every COARSE-th pixel, interpolated
    bilinearly to every pixel: the factor is fixed, so broadcasting does it without gathers."""
    t = np.arange(COARSE, dtype=np.float32) / COARSE
    a = values[..., r0 // COARSE: -(-r1 // COARSE) + 1, :]
    rows = a[..., :-1, None, :] + (a[..., 1:, None, :] - a[..., :-1, None, :]) * t[:, None]
    rows = rows.reshape(*a.shape[:-2], -1, a.shape[-1])[..., : r1 - r0, :]
    out = rows[..., :-1, None] + (rows[..., 1:, None] - rows[..., :-1, None]) * t
    return out.reshape(*rows.shape[:-1], -1)


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
                channel = self.rgb[ch, r0: r0 + STRIP]
                channel[...] = np.rint(channel * (1 - loss[ch] * s))


def render_steps(plan):
    return -(-plan.grid.height // STRIP) + 4


def render_scene(plan, towers=True, progress=None):
    """A plan's pixels: (RGB uint8 (3, H, W), tower-steel mask (H, W) bool). towers=False leaves towers out.

    progress(done, total, stage) is called between stages.
    """
    total = render_steps(plan)
    report = (lambda done, stage: progress(done, total, stage)) if progress else (lambda done, stage: None)
    canvas = _Canvas(plan.grid.height, plan.grid.width)
    rng = streams(plan.seed)["render"]
    _paint_ground(plan, canvas, report)
    _paint_surface(plan, canvas)
    _paint_confuser_ground(plan, canvas)
    report(total - 3, "surface")
    sprites = _Sprites(rng, plan)
    lit = [_mean_around(canvas.rgb, line.towers) for line in plan.hv_lines]
    masts = [f for f in plan.confusers if f["kind"] == "telecom_mast"]
    mast_lum = _mean_around(canvas.rgb, [f["c"] for f in masts]) if masts else []
    _cast_shadows(plan, canvas, sprites)
    _cast_confusers(plan, canvas)
    # how bright the ground under each tower is, shadows of other things included: steel is drawn to contrast
    shaded = [_mean_around(canvas.shadow[None], line.towers) / 255 for line in plan.hv_lines]
    ground = [a * (1 - 0.5 * b) for a, b in zip(lit, shaded)]
    if towers:
        for line in plan.hv_lines:
            _cast_tower_line(plan, canvas, line)
    canvas.apply_shadows()
    report(total - 2, "shadows")
    _paint_objects(plan, canvas)
    _paint_confusers(plan, canvas, dict(zip((id(f) for f in masts), mast_lum)))
    _paint_blobs(canvas, plan.blobs, sprites, ~plan.blobs["over"])
    if towers:
        for line, lum in zip(plan.hv_lines, ground):
            _paint_tower_line(plan, canvas, line, lum)
    _paint_blobs(canvas, plan.blobs, sprites, plan.blobs["over"])
    report(total - 1, "objects")
    _finish(canvas, rng)
    if plan.options.haze > 0:
        _haze(canvas, plan.options.haze)
    if plan.options.jpeg_quality is not None:
        _jpeg_tiles(canvas.rgb, plan.options.jpeg_quality)
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
    strip = np.floor(u * (1 / farm.strip))  # np.floor and products: faster than float // and %
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
        win = window(layers.shape[1:], (x - r, y - r, x + r + 1, y + r + 1))
        means.append(layers[:, win[0][0], win[0][1]].mean() if win else np.nan)
    return np.array(means)


def _paint_surface(plan, canvas):
    """Things on the ground: bare village compounds, pivot fields, tracks, roads, wet ground at wells."""
    ppm = plan.ppm
    for c, r, lumps in plan.compounds:
        draw(paint(canvas, (178, 152, 116), 0.55), bbox(c, r * 1.3), _lumpy_disc, c, r, lumps, 6 * ppm)
    for pivot in plan.pivots:
        _paint_pivot(canvas, pivot, ppm)
    for pts in plan.tracks:
        stroke(paint(canvas, (176, 150, 114), 0.5), pts, 1.1 * ppm)
    for pts, half, paved in plan.roads:
        if paved:
            stroke(paint(canvas, (172, 160, 138)), pts, half + 1.0 * ppm, joins=True)
            stroke(paint(canvas, (98, 98, 100)), pts, half, joins=True)
        else:
            stroke(paint(canvas, (170, 148, 118)), pts, half, joins=True)
    for c in plan.wells:
        disc_at(paint(canvas, (70, 68, 56), 0.35), c, 3.0 * ppm)


def _lumpy_disc(yy, xx, c, r, lumps, soft):
    dx, dy = xx - c[0], yy - c[1]
    theta = np.arctan2(dy, dx)
    edge = r * (1 + 0.18 * np.sin(3 * theta + lumps[0]) + 0.1 * np.sin(5 * theta + lumps[1]))
    return np.clip((edge - np.hypot(dx, dy)) / soft, 0, 1)


def _paint_pivot(canvas, pivot, ppm):
    """A centre-pivot field: two crop sectors with concentric wheel tracks, keeping the ground's texture."""
    c, r = pivot["c"], pivot["r"]
    win = window(canvas.shape, bbox(c, r))
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
    blend(canvas.rgb, sl, np.clip(r + 0.5 - d, 0, 1), colour)


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
        clumps = sample_grid(rng.uniform(-1, 1, (6, 6)).astype(np.float32), cells, cells)  # leaf clusters
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
            body = capsule(yy, xx, mid - stretch, mid + stretch, 0.95 * r_px)
            trunk = capsule(yy, xx, np.zeros(2), self.shadow_vec * max(centre_m - r_m, 0), 0.4)
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
            capsule_at(cast(canvas, 0.85), bld["c"], bld["c"] + bld["height"] * sv, bld["half"][0])
        else:
            poly = prism_shadow(rect_corners(bld["c"], *bld["half"], bld["u"]), bld["height"] * sv)
            draw(cast(canvas, 0.85), bbox(poly, 1), convex, poly)
    for pivot in plan.pivots:  # the arm, 3 m up on wheeled towers every 45 m
        arm = _pivot_arm(pivot)
        stroke(cast(canvas, 0.55), arm + 3.0 * sv, 0.6)
        for p in resample(arm, 45 * ppm)[1:]:
            capsule_at(cast(canvas, 0.6), p, p + 3.5 * sv, 0.8 * ppm)
    for c in plan.wells:
        capsule_at(cast(canvas, 0.5), c, c + 0.8 * sv, 1.2 * ppm)
    for poles in plan.minor_lines:
        for p in poles:
            capsule_at(cast(canvas, 0.7), p, p + 9.5 * sv, 0.6)
        stroke(cast(canvas, 0.2), poles + 8.5 * sv, 0.5)


def _paint_objects(plan, canvas):
    """Roofs, pivot arms, wells and distribution poles (trees and towers are drawn apart)."""
    ppm = plan.ppm
    for bld in plan.buildings:
        _paint_roof(canvas, bld, plan.sun.light)
    for pivot in plan.pivots:
        arm = _pivot_arm(pivot)
        stroke(paint(canvas, (186, 186, 184), 0.75), arm, 0.6)
        for p in resample(arm, 45 * ppm)[1:]:
            disc_at(paint(canvas, (120, 118, 112), 0.9), p, 0.8)
    for c in plan.wells:
        disc_at(paint(canvas, (196, 190, 178)), c, 1.2 * ppm)
        disc_at(paint(canvas, (38, 40, 44)), c, 0.5 * ppm)
    for poles in plan.minor_lines:
        stroke(paint(canvas, (52, 52, 50), 0.22), poles, 0.5)
        d = np.gradient(poles, axis=0)
        across = d[:, ::-1] * [-1, 1] / np.hypot(*d.T)[:, None] * 0.9 * ppm  # a 1.8 m cross-arm
        for p, arm in zip(poles, across):
            capsule_at(paint(canvas, (96, 90, 80), 0.6), p - arm, p + arm, 0.4)
            disc_at(paint(canvas, (70, 62, 52), 0.9), p, 0.9)


def _paint_roof(canvas, bld, light):
    """A roof lit by the sun: gabled (two halves) when rectangular, conical when round."""
    c, (hu, hv), u = bld["c"], bld["half"], bld["u"]
    win = window(canvas.shape, bbox(c, math.hypot(hu, hv)))
    if win is None:
        return
    sl, yy, xx = win
    dx, dy = xx - c[0], yy - c[1]
    if bld["round"]:
        alpha = np.clip(hu + 0.5 - np.hypot(dx, dy), 0, 1)
        shade = 1 + 0.3 * (dx * light[0] + dy * light[1]) / hu
    else:
        alpha = box(yy, xx, c, hu, hv, u)
        across = dy * u[0] - dx * u[1]  # the ridge runs along u
        facing = -u[1] * light[0] + u[0] * light[1]
        shade = 1 + 0.12 * np.sign(across) * np.sign(facing)
    blend(canvas.rgb, sl, alpha, bld["colour"][:, None, None] * shade)


def _paint_blobs(canvas, blobs, sprites, which):
    for i in np.flatnonzero(which):
        alpha, shade, n = sprites.crown(blobs["r"][i], blobs["rock"][i], i % 4)
        sl, part = _stamp(canvas.shape, blobs["x"][i], blobs["y"][i], n)
        if sl is not None:
            blend(canvas.rgb, sl, alpha[part], blobs["rgb"][i][:, None, None] * shade[part])


def _by_strips(canvas, step):
    """canvas.rgb = step(rows), strip by strip, in place: rows (3, n + 2, W) float32 are a strip with the row above
    and the row below it (as they were: each strip's top row is kept for the next), edges repeated."""
    h = canvas.shape[0]
    above = canvas.rgb[:, :1].astype(np.float32)
    for r0 in range(0, h, STRIP):
        r1 = min(r0 + STRIP, h)
        block = canvas.rgb[:, r0:r1].astype(np.float32)
        below = canvas.rgb[:, min(r1, h - 1)][:, None].astype(np.float32)
        rows = np.concatenate([above, block, below], axis=1)
        above = block[:, -1:]
        canvas.rgb[:, r0:r1] = np.clip(np.rint(step(rows)), 0, 255)


def _soften(rows):
    """[0.2, 0.6, 0.2] both ways, on the inner rows of rows (3, n + 2, W)."""
    soft = 0.6 * rows[:, 1:-1] + 0.2 * (rows[:, :-2] + rows[:, 2:])
    soft[..., 1:-1] = 0.6 * soft[..., 1:-1] + 0.2 * (soft[..., :-2] + soft[..., 2:])
    return soft


def _finish(canvas, rng):
    """Soften everything a little, as optics and resampling do, and add sensor grain: no drawn shape keeps
    tell-tale flat colours."""

    def step(rows):
        soft = _soften(rows)
        soft += rng.normal(0, 2.0, soft.shape[1:]).astype(np.float32)
        return soft

    _by_strips(canvas, step)


def _haze(canvas, amount):
    """A veil over everything: a blend `amount` of the way to a pale haze colour, and a little blur (the light the
    haze scatters), so brightness rises and contrast falls."""
    blur = min(1.0, 2 * amount)

    def step(rows):
        mid = rows[:, 1:-1]
        hazy = mid + (_soften(rows) - mid) * blur
        return hazy + (HAZE_RGB[:, None, None] - hazy) * amount

    _by_strips(canvas, step)


def _jpeg_tiles(rgb, quality):
    """Each 256-px tile through JPEG at `quality` (Pillow: 4:2:0 chroma, as tile services serve), in place: the
    8-px blocks line up with the tile grid, as in imagery stitched from a tile service."""
    for r0 in range(0, rgb.shape[1], TILE_SIZE):
        for c0 in range(0, rgb.shape[2], TILE_SIZE):
            view = rgb[:, r0: r0 + TILE_SIZE, c0: c0 + TILE_SIZE]
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(np.moveaxis(view, 0, -1))).save(buf, "JPEG", quality=quality)
            with Image.open(buf) as img:
                view[...] = np.moveaxis(np.asarray(img.convert("RGB")), -1, 0)


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
        draw(cast(canvas, 1.0), bbox([c, top], s), _lattice_shadow, c, top, s, h, u, v)
        a = c + 0.72 * h * sv
        capsule_at(cast(canvas, 0.85), a - arm * v, a + arm * v, max(0.6 * ppm, 0.8))
        capsule_at(cast(canvas, 0.8), top - 0.3 * arm * v, top + 0.3 * arm * v, 0.7)
    t = np.linspace(0, 1, 9)[:, None]
    for (c0, _, v0, _, h0, *_), (c1, _, v1, _, h1, *_) in zip(frames[:-1], frames[1:]):
        sag = 0.035 * math.hypot(*(c1 - c0)) / ppm
        z = 0.72 * (h0 + (h1 - h0) * t) - 4 * sag * t * (1 - t)
        for k in (-1, 0, 1):
            a, b = c0 + k * line.phase * v0, c1 + k * line.phase * v1
            stroke(cast(canvas, 0.2), a + (b - a) * t + z * sv, 0.5)


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


def steel_colour(lum, low_contrast=False):
    """Tower steel against ground of brightness `lum`: dark on bright ground, bright on dark ground; with
    low_contrast, a grey PALE_STEP levels from the ground's (brighter where there is room: pale steel)."""
    if not low_contrast:
        return STEEL["dark" if lum >= 150 else "bright"]
    lum = float(np.nan_to_num(lum, nan=150.0))
    return (min(lum + PALE_STEP, 255.0) if lum <= 255 - PALE_STEP else lum - PALE_STEP,) * 3


def _paint_tower_line(plan, canvas, line, ground):
    """Conductors, then each tower's steel, bright or dark against the `ground` brightness under each tower; with
    --lean, each part moved along the view's lean by its height (the base stays where the tower stands)."""
    ppm, lean = plan.ppm, plan.lean
    frames = _tower_frames(line, ppm)
    for (c0, _, v0, _, h0, *_), (c1, _, v1, _, h1, *_) in zip(frames[:-1], frames[1:]):
        for k in (-1, 0, 1):
            a, b = c0 + k * line.phase * v0, c1 + k * line.phase * v1
            if lean is None:
                stroke(paint(canvas, (206, 206, 202), 0.16), [a, b], 0.5)
            else:
                pts, z = _conductor(a, b, h0, h1, ppm)
                stroke(paint(canvas, (206, 206, 202), 0.16), pts + z * lean, 0.5)
    for (c, u, v, s, h, steel, arm), lum in zip(frames, ground):
        top = None if lean is None else lean * h
        win = window(canvas.shape, bbox([c, c if top is None else c + top], max(s, arm) + 2))
        if win is None:
            continue
        sl, yy, xx = win
        alpha = _tower_alpha(yy, xx, c, u, v, s, steel, arm, ppm, top)
        blend(canvas.rgb, sl, alpha, steel_colour(lum, plan.options.low_contrast))
        canvas.towers[sl] |= alpha > 0.35


def _conductor(a, b, h0, h1, ppm, points=9):
    """Points along a sagging conductor from a to b, and each one's height (m) above the ground."""
    t = np.linspace(0, 1, points)[:, None]
    sag = 0.035 * math.hypot(*(b - a)) / ppm
    return a + (b - a) * t, ARM_Z * (h0 + (h1 - h0) * t) - 4 * sag * t * (1 - t)


def _tower_alpha(yy, xx, c, u, v, s, steel, arm, ppm, top=None):
    """Coverage of a lattice tower seen from above: base square, legs to the waist, waist, cross-arm, insulators;
    its peak, nearest the camera, stays clear whatever `steel`. top: px the peak is moved by the view's lean (the
    waist and cross-arm by their share of it); None: seen straight down."""
    def lifted(z):
        return c if top is None else c + top * z

    corners = [c + (i * u + j * v) * s / 2 for i, j in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    waist = [lifted(WAIST_Z) + (i * u + j * v) * s * 0.18 for i, j in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    parts = []
    for k in range(4):
        parts.append(0.7 * capsule(yy, xx, corners[k], corners[k - 1], 0.45))
        parts.append(0.85 * capsule(yy, xx, corners[k], waist[k], 0.6))
        parts.append(0.6 * capsule(yy, xx, waist[k], waist[k - 1], 0.4))
        parts.append(0.9 * disc(yy, xx, corners[k], 0.9))
    a = lifted(ARM_Z)
    parts.append(0.9 * capsule(yy, xx, a - arm * v, a + arm * v, max(0.6 * ppm, 0.8)))
    for k in (-1, 1):
        parts.append(0.8 * disc(yy, xx, a + k * (arm - 0.8 * ppm) * v, 0.9))
    half = max(1.0, 0.7 * ppm)
    return np.maximum(steel * np.maximum.reduce(parts), box(yy, xx, lifted(PEAK_Z), half, half, u))


# -- confusers (--confusers) ----------------------------------------------------------------------------------------
def _fence(c, hu, hv, u):
    corners = rect_corners(c, hu, hv, u)
    return np.vstack([corners, corners[:1]])


def _paint_confuser_ground(plan, canvas):
    """Substations' gravel yards, under everything that casts a shadow."""
    for f in plan.confusers:
        if f["kind"] == "substation":
            hu, hv = f["half"]
            box_corners = rect_corners(f["c"], hu, hv, f["u"])
            draw(paint(canvas, (172, 168, 158), 0.9), bbox(box_corners, 1), convex, box_corners)


def _cast_confusers(plan, canvas):
    """Confusers' shadows: a mast's lattice and guy wires, a water tower's column and tank, a substation's gear,
    gantries and fence."""
    ppm, sv = plan.ppm, plan.sun.shadow
    for f in plan.confusers:
        c, u, kind = f["c"], np.asarray(f["u"]), f["kind"]
        v = np.array([-u[1], u[0]])
        if kind == "telecom_mast":
            h, s = f["height"], f["side"]
            top = c + 0.95 * h * sv
            draw(cast(canvas, 1.0), bbox([c, top], s), _lattice_shadow, c, top, s, h, u, v)
            for anchor in f["anchors"]:
                stroke(cast(canvas, 0.25), [c + 0.85 * h * sv, anchor], 0.5)
            if f["shelter"]:
                shelter = c + 6 * ppm * v
                poly = prism_shadow(rect_corners(shelter, 1.5 * ppm, 1.2 * ppm, u), 2.6 * sv)
                draw(cast(canvas, 0.85), bbox(poly, 1), convex, poly)
        elif kind == "water_tower":
            h, r = f["height"], f["r"]
            r_m = r / ppm
            capsule_at(cast(canvas, 0.75), c, c + (h - 1.6 * r_m) * sv, max(0.6 * ppm, 0.8))
            capsule_at(cast(canvas, 0.9), c + (h - 1.6 * r_m) * sv, c + h * sv, r)
        else:
            hu, hv = f["half"]
            stroke(cast(canvas, 0.3), _fence(c, hu, hv, u) + 2.0 * sv, 0.5)
            for p, half, height in f["gear"]:
                poly = prism_shadow(rect_corners(p, half, half, u), height * sv)
                draw(cast(canvas, 0.8), bbox(poly, 1), convex, poly)
            for g in f["gantries"]:
                stroke(cast(canvas, 0.6), [g - 0.8 * hv * v + 8 * sv, g + 0.8 * hv * v + 8 * sv], 0.6)
            poly = prism_shadow(rect_corners(f["building"], 4 * ppm, 2.5 * ppm, u), 4 * sv)
            draw(cast(canvas, 0.85), bbox(poly, 1), convex, poly)


def _paint_confusers(plan, canvas, mast_lum):
    """Confusers seen from above (leaning with the view, as towers do): a mast's small lattice square, its guys and
    shelter; a water tower's lit tank on its column; a substation's gear, connectors, gantries, fence and building."""
    ppm = plan.ppm
    lean = np.zeros(2) if plan.lean is None else plan.lean
    for f in plan.confusers:
        c, u, kind = f["c"], np.asarray(f["u"]), f["kind"]
        v = np.array([-u[1], u[0]])
        if kind == "telecom_mast":
            h, s = f["height"], f["side"]
            colour = steel_colour(mast_lum[id(f)], plan.options.low_contrast)
            corners = rect_corners(c, s / 2, s / 2, u)
            top = c + lean * h
            for k in range(4):
                capsule_at(paint(canvas, colour, 0.8), corners[k], corners[k - 1], 0.45)
                capsule_at(paint(canvas, colour, 0.6), corners[k], top, 0.4)
            box_at(paint(canvas, colour, 0.9), top, max(0.8, 0.5 * ppm), max(0.8, 0.5 * ppm), u)
            for anchor in f["anchors"]:
                stroke(paint(canvas, (200, 200, 198), 0.15), [c + lean * 0.85 * h, anchor], 0.5)
                disc_at(paint(canvas, (90, 88, 84), 0.7), anchor, 0.7)
            if f["shelter"]:
                _paint_roof(canvas, {"c": c + 6 * ppm * v, "half": (1.5 * ppm, 1.2 * ppm), "u": u,
                                     "colour": np.array([186, 186, 184], np.float32), "round": False},
                            plan.sun.light)
                stroke(paint(canvas, (96, 96, 94), 0.4), _fence(c + 3 * ppm * v, 7 * ppm, 7 * ppm, u), 0.4)
        elif kind == "water_tower":
            h, r = f["height"], f["r"]
            tank = c + lean * (h - r / ppm)
            if plan.lean is not None:
                capsule_at(paint(canvas, (150, 150, 150), 0.9), c, tank, max(0.6 * ppm, 0.8))
            _paint_roof(canvas, {"c": tank, "half": (r, r), "u": u, "colour": f["colour"], "round": True},
                        plan.sun.light)
        else:
            hu, hv = f["half"]
            for a, b in f["links"]:
                stroke(paint(canvas, (204, 204, 200), 0.5), [a, b], 0.4)
            for p, half, _ in f["gear"]:
                box_at(paint(canvas, (128, 130, 132)), p, half, half, u)
                disc_at(paint(canvas, (176, 178, 180)), p, max(0.5, 0.35 * half))
            for g in f["gantries"]:
                stroke(paint(canvas, (150, 152, 156), 0.6), [g - 0.8 * hv * v, g + 0.8 * hv * v], 0.5)
            stroke(paint(canvas, (84, 84, 82), 0.55), _fence(c, hu, hv, u), 0.45)
            _paint_roof(canvas, {"c": f["building"], "half": (4 * ppm, 2.5 * ppm), "u": u,
                                 "colour": np.array([196, 190, 180], np.float32), "round": False}, plan.sun.light)
