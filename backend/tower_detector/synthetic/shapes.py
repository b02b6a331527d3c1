"""Drawing primitives of the synthetic scene: a shape's coverage alpha (anti-aliased, 0..1) on the small window of
pixels it can touch, applied to a layer by a Target: painted over the colours, cast into the shadow layer, or marked
as occupied ground while planning."""

import math

import numpy as np
import shapely


def window(shape, bounds):
    """The clipped pixel window of bounds (x0, y0, x1, y1) px and its pixel-centre coordinates, or None."""
    r0, r1 = max(int(math.floor(bounds[1])), 0), min(int(math.ceil(bounds[3])), shape[0])
    c0, c1 = max(int(math.floor(bounds[0])), 0), min(int(math.ceil(bounds[2])), shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    yy = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
    return (slice(r0, r1), slice(c0, c1)), yy, xx


class Target:
    """Where a shape goes: a layer's (height, width) and what to do with a window's coverage alpha."""

    def __init__(self, shape, apply):
        self.shape = shape
        self.apply = apply


def blend(rgb, sl, alpha, colour):
    """Blend a colour (3,) or per-pixel colours (3, h, w) over the window sl of rgb (3, H, W) uint8."""
    view = rgb[:, sl[0], sl[1]]
    v = view.astype(np.float32)
    colour = np.asarray(colour, np.float32)
    view[...] = np.rint(v + ((colour[:, None, None] if colour.ndim == 1 else colour) - v) * alpha)


def paint(canvas, colour, opacity=1.0):
    return Target(canvas.shape, lambda sl, alpha: blend(canvas.rgb, sl, alpha * opacity, colour))


def cast(canvas, opacity):
    """Into the shadow layer, by maximum: overlapping shadows do not darken twice."""

    def apply(sl, alpha):
        np.maximum(canvas.shadow[sl], (alpha * (255 * opacity)).astype(np.uint8), out=canvas.shadow[sl])

    return Target(canvas.shape, apply)


def mark(occ, level):
    def apply(sl, alpha):
        np.maximum(occ[sl], np.where(alpha > 0.3, np.uint8(level), np.uint8(0)), out=occ[sl])

    return Target(occ.shape, apply)


def draw(target, bounds, alpha_fn, *args):
    """Apply alpha_fn(yy, xx, *args), the shape's coverage over the window of bounds, to target."""
    win = window(target.shape, bounds)
    if win is not None:
        sl, yy, xx = win
        target.apply(sl, alpha_fn(yy, xx, *args))


def disc(yy, xx, c, r):
    return np.clip(r + 0.5 - np.hypot(xx - c[0], yy - c[1]), 0, 1)


def box(yy, xx, c, hu, hv, u):
    """A rectangle of half-sizes hu (along unit u) and hv, centred at c."""
    dx, dy = xx - c[0], yy - c[1]
    a = np.abs(dx * u[0] + dy * u[1])
    b = np.abs(dy * u[0] - dx * u[1])
    return np.clip(hu + 0.5 - a, 0, 1) * np.clip(hv + 0.5 - b, 0, 1)


def band(yy, xx, a, b, r):
    """A flat-capped stroke of half-width r: pixels whose centres project onto [a, b), so pieces tile exactly."""
    d = b - a
    length = math.hypot(*d)
    px, py = xx - a[0], yy - a[1]
    t = (px * d[0] + py * d[1]) / length**2
    return np.clip(r + 0.5 - np.abs(px * d[1] - py * d[0]) / length, 0, 1) * ((t >= 0) & (t < 1))


def capsule(yy, xx, a, b, r):
    d = b - a
    t = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
    return np.clip(r + 0.5 - np.hypot(xx - a[0] - t * d[0], yy - a[1] - t * d[1]), 0, 1)


def convex(yy, xx, pts):
    """A convex polygon, vertices in order (either way round)."""
    nxt = np.roll(pts, -1, axis=0)
    sign = np.sign(np.sum(pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1]))
    alpha = np.ones(np.broadcast_shapes(yy.shape, xx.shape), np.float32)
    for (ax, ay), (bx, by) in zip(pts, nxt):
        inward = sign * ((bx - ax) * (yy - ay) - (by - ay) * (xx - ax)) / math.hypot(bx - ax, by - ay)
        alpha = np.minimum(alpha, np.clip(inward + 0.5, 0, 1))
    return alpha


def bbox(pts, pad):
    pts = np.asarray(pts, float).reshape(-1, 2)
    return (*(pts.min(axis=0) - pad - 1), *(pts.max(axis=0) + pad + 1))


def disc_at(target, c, r):
    draw(target, bbox(c, r), disc, c, r)


def box_at(target, c, hu, hv, u):
    draw(target, bbox(c, math.hypot(hu, hv)), box, c, hu, hv, u)


def capsule_at(target, a, b, r):
    draw(target, bbox([a, b], r), capsule, np.asarray(a, float), np.asarray(b, float), r)


def stroke(target, pts, r, joins=False, piece=48.0):
    """A polyline of half-width r px, in short flat-capped pieces: small windows and no double-blended seams."""
    pts = np.asarray(pts, float)
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, math.ceil(math.hypot(*(b - a)) / piece))
        for k in range(n):
            pa, pb = a + (b - a) * k / n, a + (b - a) * (k + 1) / n
            draw(target, bbox([pa, pb], r), band, pa, pb, r)
    if joins:  # round the bends of opaque strokes
        for p in pts[1:-1]:
            disc_at(target, p, r)


def rect_corners(c, hu, hv, u):
    u = np.asarray(u, float)
    v = np.array([-u[1], u[0]])
    return np.array([c + i * hu * u + j * hv * v for i, j in ((1, 1), (1, -1), (-1, -1), (-1, 1))])


def prism_shadow(corners, offset):
    """The ground shadow of a box: the hull of its footprint and its footprint moved by the shadow vector."""
    pts = np.vstack([corners, corners + offset])
    return np.asarray(shapely.MultiPoint(pts).convex_hull.exterior.coords)[:-1]
