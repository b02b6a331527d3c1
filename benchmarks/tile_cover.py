"""Tile-cover speed and memory at country scale, and against a per-tile shapely walk.

    .venv/bin/python -m benchmarks.tile_cover [--boundary zambia.geojson] [--region training_roi_zambia.geojson]

Prints (1) Zambia's zoom-18 cover: tiles, runs, seconds, peak memory; (2) on a training region, our cover
against the original project's approach (every tile of the bbox built as a shapely box and tested for
intersection with the area, one Python object per tile), both timed in this run, and their ratio.
Needs ../shared/data; exits 0 with a note when it is absent.
"""

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

from shapely.geometry import box

from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import tile_cover
from tower_detector.geo.tilemath import lonlat_to_tile, tile_bounds_4326

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "boundaries"


def timed(func, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def per_tile_walk(area, zoom):
    """The original project's way: enumerate the bbox's tiles and test each tile polygon against the area."""
    west, south, east, north = area.geometry.bounds
    x0, y0 = lonlat_to_tile(west, north, zoom)
    x1, y1 = lonlat_to_tile(east, south, zoom)
    geom = area.geometry
    count = 0
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            if geom.intersects(box(*tile_bounds_4326(x, y, zoom))):
                count += 1
    return count


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boundary", default=str(DATA / "zambia.geojson"))
    ap.add_argument("--region", default=str(DATA / "training_roi_zambia.geojson"))
    ap.add_argument("--zoom", type=int, default=18)
    args = ap.parse_args()
    if not Path(args.boundary).exists():
        print(f"skipped: reference data absent ({args.boundary})")
        return 0

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    start = time.perf_counter()
    country = tile_cover(load_area(args.boundary), args.zoom)
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"country cover   {Path(args.boundary).name} zoom {args.zoom}: {country.count:,} tiles in "
          f"{len(country.x):,} runs, {seconds:.3f} s (with file parsing), "
          f"peak memory {traced_peak / 2**20:.1f} MiB allocated, process peak RSS {rss_peak:.0f} MiB "
          f"(was {rss_before:.0f} MiB before)")
    n_batches = sum(1 for _ in country.iter_batches(size=1 << 20))
    print(f"                iterating all tiles in {n_batches} numpy batches: "
          f"{timed(lambda: sum(len(x) for x, _ in country.iter_batches(size=1 << 20)), 1)[0]:.2f} s")

    region = load_area(args.region)
    ours, cover = timed(lambda: tile_cover(region, args.zoom))
    walk, walk_count = timed(lambda: per_tile_walk(region, args.zoom), repeat=1)
    print(f"training region {Path(args.region).name} zoom {args.zoom}: {cover.count:,} tiles")
    print(f"                ours {ours * 1000:.1f} ms, per-tile shapely walk {walk:.2f} s "
          f"({walk_count:,} tiles): ratio {walk / ours:,.0f}x faster")
    if walk_count != cover.count:
        print(f"                note: the walk counts tiles that only touch the area's edge too "
              f"({walk_count - cover.count:+d})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
