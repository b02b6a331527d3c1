"""Peak memory of `results --heatmap` on synthetic stores of N tiles, and its extrapolation to a country.

    .venv/bin/python -m benchmarks.results_memory [--tiles 1000000 5000000 20000000] [--chunk 50000] [--keep DIR]

Each store covers a square of about N zoom-18 tiles (near 30 N, so the heatmap raster is N pixels), every
chunk written with seeded random scores, mostly low as a country's are (no TensorFlow: the store is written
directly, as tests/fakes/storedata does). Each `results STORE --heatmap H` is a fresh process whose peak RSS
(ru_maxrss, from wait4) is read when it ends; its wall time is printed too. The PYTHONPATH the benchmark runs
with picks the code measured: point it at another checkout for a before/after. The last line fits peak RSS
as a + b x tiles between the two largest sizes (where GDAL's cache is full: the bounded part stops growing)
and extrapolates it to 50 M tiles.
"""

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import tile_cover
from tower_detector.geo.tilemath import lonlat_to_tile, tile_bounds_4326
from tower_detector.prediction.store import open_store

ZOOM = 18


def square_store(folder, tiles, chunk):
    """A finished store over a square of about `tiles` tiles; returns its tile count."""
    side = max(int(math.sqrt(tiles)), 1)
    x0, y0 = lonlat_to_tile(60.0, 30.0, ZOOM)
    west, _, _, north = tile_bounds_4326(x0, y0, ZOOM)
    _, south, east, _ = tile_bounds_4326(x0 + side - 1, y0 + side - 1, ZOOM)
    eps = 1e-9  # inside the edge tiles, so that the cover is exactly side x side
    cover = tile_cover(load_area(f"{west + eps},{south + eps},{east - eps},{north - eps}"), ZOOM)
    store = open_store(folder, create=True)
    store.create_job({"identity": {"model": "benchmark", "imagery": "none"}}, cover, None, chunk)
    for shard, index in store.plan.all_chunks():
        x, y = store.plan.chunk_tiles(shard, index)
        score = (np.random.default_rng(len(x) + x[0] * 7 + y[0]).random(len(x)) ** 8).astype(np.float32)
        store.write_chunk(shard, index, x, y, score, errors=[None] * len(x))
    store.close()
    return cover.count


def run_results(store, heatmap):
    """(peak RSS in MiB, seconds) of one `results --heatmap` process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "tower_detector", "results", store, "--heatmap", heatmap],
                             stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"results exited {child.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--chunk", type=int, default=50_000, help="tiles per chunk of the synthetic store")
    parser.add_argument("--keep", help="build the stores in this folder and keep them (reused when run again)")
    args = parser.parse_args()
    import tower_detector

    print(f"code: {os.path.dirname(tower_detector.__file__)}; {os.cpu_count()} CPUs")
    work = args.keep or tempfile.mkdtemp(prefix="results-memory-")
    points = []
    try:
        for n in sorted(args.tiles):
            folder = os.path.join(work, f"store-{n}")
            if not os.path.exists(os.path.join(folder, "job.json")):
                shutil.rmtree(folder, ignore_errors=True)
                square_store(folder, n, args.chunk)
            count = open_store(folder).cover.count
            heatmap = os.path.join(work, f"heatmap-{n}.tif")
            peak, seconds = run_results(folder, heatmap)
            points.append((count, peak))
            print(f"{count:>11,} tiles: results --heatmap peak RSS {peak:7.1f} MiB, {seconds:6.1f} s, "
                  f"heatmap {os.path.getsize(heatmap) / 2**20:.1f} MiB")
            os.remove(heatmap)
        if len(points) >= 2:
            (n0, p0), (n1, p1) = points[-2], points[-1]
            slope = (p1 - p0) / (n1 - n0)
            print(f"fit: {p0 - slope * n0:.0f} MiB + {slope * 1e6:.1f} MiB per million tiles; "
                  f"50 M tiles: {p0 + slope * (50e6 - n0):.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
