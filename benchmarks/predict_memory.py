"""Where `predict`'s memory goes: resident memory (RSS) after each step of one run, for a small model.

    .venv/bin/python -m benchmarks.predict_memory [--image-size 72] [--tiles 24] [--batch-size 64] [--prefetch 4]
        [--imagery xyz|geotiff] [--precision float32|auto|mixed]

One process, steps in order: Python with the backend's imports; `import tensorflow`; the model loaded
(Xception at --image-size, untrained: built and saved by a child process first, so that building it does not
count) and its warm-up (tracing at --batch-size), both inside predict(); then predict's scoring of a --tiles x
--tiles sample scene (the scene written by a child process too), from the
loopback tile server in a process of its own (xyz, JPEG) or from the scene's GeoTIFF, with --prefetch
batches fetched ahead. A thread samples RSS every 20 ms; each step prints RSS at its end and the peak during
it. Run it once per setting: memory a process has touched is rarely given back, so settings are compared
between runs, not within one.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Sampler:
    """RSS every 20 ms; step(name) prints the RSS now and the peak since the last step."""

    def __init__(self):
        self.peak, self.last = rss_mib(), None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.02)

    def step(self, name):
        now = rss_mib()
        peak = max(self.peak, now)
        grew = "" if self.last is None else f" (+{now - self.last:.0f})"
        print(f"{name:<48} RSS {now:7.0f} MiB{grew}, peak during the step {peak:7.0f} MiB", flush=True)
        self.last, self.peak = now, now


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=72)
    parser.add_argument("--tiles", type=int, default=24, help="scene side in tiles")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--imagery", choices=["xyz", "geotiff"], default="xyz")
    parser.add_argument("--precision", default="float32", help="auto, float32 or mixed (predict's --precision)")
    args = parser.parse_args()

    sampler = Sampler()
    sampler.step("python")
    from tower_detector.pipeline import options
    from tower_detector.prediction.predict import predict

    sampler.step("the backend's imports (numpy, rasterio, ...)")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        build = ("import sys; from tower_detector.training.model import build_model, write_params; "
                 "from tower_detector.training.params import check_params; "
                 "p = check_params({'image_size': int(sys.argv[2])}); m, _ = build_model(p, 'none'); "
                 "import os; os.makedirs(sys.argv[1]); m.save(os.path.join(sys.argv[1], 'model.keras')); "
                 "write_params(sys.argv[1], p, weights='none', data_fingerprint='benchmark')")
        subprocess.run([sys.executable, "-c", build, model_dir, str(args.image_size)], check=True,
                       stderr=subprocess.DEVNULL)
        scene = ("import sys; from tower_detector.synthetic import write_scene; "
                 "write_scene(sys.argv[1], tiles_x=int(sys.argv[2]), tiles_y=int(sys.argv[2]), seed=7)")
        subprocess.run([sys.executable, "-c", scene, tmp, str(args.tiles)], check=True)
        area = os.path.join(tmp, "area.geojson")
        server = None
        if args.imagery == "xyz":
            code = ("import sys, json; from tests.fakes.tileserver import TileServer; "
                    "s = TileServer(sys.argv[1]); s.start(); [s.encoded(x, y, 'jpg') for x, y in s.tiles]; "
                    "print(json.dumps({'url': s.url}), flush=True); sys.stdin.read()")
            server = subprocess.Popen([sys.executable, "-c", code, os.path.join(tmp, "scene.tif")], cwd=ROOT,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            imagery = json.loads(server.stdout.readline())["url"] + "/{z}/{x}/{y}.jpg"
        else:
            imagery = os.path.join(tmp, "scene.tif")
        sampler.step("scene written, tile server started (elsewhere)")
        try:
            import tensorflow as tf  # noqa: F401

            sampler.step("import tensorflow")
            from tower_detector.prediction import predict as module

            load, warm = module._classifier, module._warm_up  # the steps inside predict, timed where they run

            def classifier(*a):
                c = load(*a)
                sampler.step(f"model loaded ({args.image_size} px, {c.policy})")
                return c

            def warm_up(*a):
                warm(*a)
                sampler.step(f"warm-up at batch {args.batch_size}")

            module._classifier, module._warm_up = classifier, warm_up
            opts = options("predict", model=model_dir, imagery=imagery, area=area, out=os.path.join(tmp, "store"),
                           batch_size=args.batch_size, precision=args.precision, workers=args.workers)
            stats = predict(opts, prefetch=args.prefetch, log=lambda *a, **k: None)
            sampler.step(f"scoring: {stats['tiles_scored']} tiles, prefetch {args.prefetch} "
                         f"({stats['tiles_per_second']} tiles/s)")
        finally:
            if server:
                server.stdin.close()
                server.wait()


if __name__ == "__main__":
    main()
