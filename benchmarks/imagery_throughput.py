"""Imagery throughput from a tile server that takes 20 ms per request: our XYZ source vs one request at a time.

    .venv/bin/python -m benchmarks.imagery_throughput [--tiles-x 16 --tiles-y 16 --latency 0.02 --concurrency 16]

Both read the same tiles of a generated sample scene, as PNG then as JPEG, from tests/fakes/tileserver.py on
127.0.0.1 (in this process, so the server's work shares the CPUs; tiles are encoded before timing). The serial
loop is requests.get + Pillow decode per tile, the way a simple script downloads tiles; ours is
open_imagery(...).fetch() with a bounded pool of concurrent requests (median of three runs, no cache). Both
must return the same pixels.
"""

import argparse
import io
import os
import tempfile
import time

import numpy as np
import requests
from PIL import Image

from tests.fakes.tileserver import TileServer
from tower_detector.sources.imagery import open_imagery
from tower_detector.synthetic import write_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serial(server, tiles, ext):
    images = []
    with requests.Session() as session:
        for x, y in tiles:
            response = session.get(f"{server.url}/{server.zoom}/{x}/{y}.{ext}", timeout=30)
            response.raise_for_status()
            images.append(np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")))
    return images


def ours(server, tiles, ext, concurrency):
    with open_imagery(server.template(ext), concurrency=concurrency) as source:
        results = list(source.fetch((x, y, server.zoom) for x, y in tiles))
    assert all(r.error is None for r in results), [r.error for r in results if r.error][:3]
    return [r.image for r in results]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles-x", type=int, default=16)
    parser.add_argument("--tiles-y", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the server waits per request")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        write_scene(tmp, tiles_x=args.tiles_x, tiles_y=args.tiles_y, seed=7)
        with TileServer(os.path.join(tmp, "scene.tif"), latency=args.latency) as server:
            tiles = server.tiles
            print(f"{len(tiles)} tiles, {args.latency * 1000:.0f} ms server latency, {os.cpu_count()} CPUs")
            for ext in ("png", "jpg"):
                for x, y in tiles:
                    server.encoded(x, y, ext)
                start = time.perf_counter()
                a = serial(server, tiles, ext)
                t_serial = time.perf_counter() - start

                times = []
                for _ in range(3):  # ours takes about a second: the median of three steadies it
                    server.reset()
                    start = time.perf_counter()
                    b = ours(server, tiles, ext, args.concurrency)
                    times.append(time.perf_counter() - start)
                t_ours = sorted(times)[1]

                assert all(np.array_equal(p, q) for p, q in zip(a, b)), "the two readers disagree"
                rate_serial, rate_ours = len(tiles) / t_serial, len(tiles) / t_ours
                print(f"{ext}: serial requests.get + PIL {rate_serial:6.1f} tiles/s; open_imagery (concurrency "
                      f"{args.concurrency}, at most {server.max_in_flight} in flight) {rate_ours:6.1f} tiles/s; "
                      f"ratio {rate_ours / rate_serial:.1f}x")

if __name__ == "__main__":
    main()
