"""Value noise for the synthetic scene: smooth random fields that give terrain, texture and clumps their shape."""

import numpy as np


def _axis(g, n, smooth):
    i = np.clip(np.floor(g), 0, n - 2).astype(np.intp)
    t = np.clip(g - i, 0.0, 1.0).astype(np.float32)
    return i, (t * t * (3 - 2 * t) if smooth else t)


def sample_grid(values, gy, gx, smooth=True):
    """Interpolate values (ny, nx) at every (row, column) pair of fractional grid coordinates gy x gx."""
    iy, ty = _axis(gy, values.shape[0], smooth)
    ix, tx = _axis(gx, values.shape[1], smooth)
    top = values[iy]
    rows = top + (values[iy + 1] - top) * ty[:, None]
    left = rows[:, ix]
    return left + (rows[:, ix + 1] - left) * tx


class Fractal:
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
        return sum(a * sample_grid(lattice, ys / p, xs / p) for p, a, lattice in self.octaves)
