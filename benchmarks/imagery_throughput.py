"""Imagery throughput from a tile server that takes 20 ms per request: our XYZ source vs one request at a time.

    .venv/bin/python -m benchmarks.imagery_throughput [--tiles-x 16 --tiles-y 16 --latency 0.02 --concurrency 16]
        [--processes 2] [--rounds 8]

Both read the same tiles of a generated sample scene, as PNG then as JPEG, from tests/fakes/tileserver.py on
127.0.0.1 (in this process, so the server's work shares the CPUs; tiles are encoded before timing). The serial
loop is requests.get + Pillow decode per tile, the way a simple script downloads tiles; ours is
open_imagery(...).fetch() with a bounded pool of concurrent requests (median of three runs, no cache). Both
must return the same pixels.

Then fetch + decode in 1 and in --processes child processes (as `predict --processes/--gpus` runs them), JPEG,
from the tile server in a process of its own: each child fetches its share of --rounds passes over the tiles
with open_imagery(..., concurrency=--concurrency), all starting together. Prints tiles/s for each, their ratio
(goal >= 1.8x for 2 processes: one process is held to one CPU's worth of Python by the GIL), and the children's
CPU milliseconds per tile (user + system, goal <= 1.0 ms for a 256-px JPEG) next to the server's.
"""

import argparse
import io
import json
import multiprocessing
import os
import subprocess
import sys
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


def _child(template, tiles, concurrency, start, out):
    """One fetch + decode process: waits for `start`, then fetches its tiles; puts (seconds, CPU seconds)."""
    with open_imagery(template, concurrency=concurrency) as source:
        start.wait()
        wall, cpu = time.perf_counter(), time.process_time()
        n = sum(r.error is None for r in source.fetch(tiles))
        out.put((time.perf_counter() - wall, time.process_time() - cpu, n))


def processes_run(template, tiles, n, concurrency):
    """(tiles/s, CPU seconds of the children) of n processes, each fetching every n-th tile."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=_child, args=(template, tiles[i::n], concurrency, start, out)) for i in range(n)]
    for child in children:
        child.start()
    time.sleep(3)  # every child has imported and opened its source
    start.set()
    results = [out.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    assert sum(r[2] for r in results) == len(tiles), "some tiles failed"
    return len(tiles) / max(r[0] for r in results), sum(r[1] for r in results)


def processes(args, geotiff):
    """Fetch + decode in 1 and in args.processes processes from a tile server process (JPEG)."""
    code = ("import sys, json; from tests.fakes.tileserver import TileServer; "
            "s = TileServer(sys.argv[1], latency=float(sys.argv[2])); s.start(); "
            "[s.encoded(x, y, 'jpg') for x, y in s.tiles]; "
            "print(json.dumps({'url': s.url, 'tiles': s.tiles}), flush=True); sys.stdin.read()")
    server = subprocess.Popen([sys.executable, "-c", code, geotiff, str(args.latency)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(server.stdout.readline())
        template = f"{info['url']}/{{z}}/{{x}}/{{y}}.jpg"
        tiles = [(x, y, 18) for x, y in info["tiles"]] * args.rounds
        rates = {}
        for n in (1, args.processes):
            before = _cpu_seconds(server.pid)
            rate, cpu = processes_run(template, tiles, n, args.concurrency)
            server_ms = (_cpu_seconds(server.pid) - before) * 1000 / len(tiles)
            rates[n] = rate
            print(f"jpg, {n} process{'es' if n > 1 else ''}: {rate:6.1f} tiles/s; fetch + decode "
                  f"{cpu * 1000 / len(tiles):.2f} CPU-ms a tile (goal <= 1.0); the tile server "
                  f"{server_ms:.2f} CPU-ms a tile")
        print(f"{args.processes} processes / 1: {rates[args.processes] / rates[1]:.2f}x (goal >= 1.8x), "
              f"{len(tiles)} tiles each run, {os.cpu_count()} CPUs shared with the tile server")
    finally:
        server.stdin.close()
        server.wait()


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles-x", type=int, default=16)
    parser.add_argument("--tiles-y", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the server waits per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2, help="processes to compare with one (0: skip)")
    parser.add_argument("--rounds", type=int, default=8, help="passes over the tiles in the processes' runs")
    parser.add_argument("--only-processes", action="store_true", help="skip the serial comparison")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        write_scene(tmp, tiles_x=args.tiles_x, tiles_y=args.tiles_y, seed=7)
        if not args.only_processes:
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
        if args.processes > 1:
            processes(args, os.path.join(tmp, "scene.tif"))


if __name__ == "__main__":
    main()
