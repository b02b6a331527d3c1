"""Moving to the next candidate in the review dock, with 100 and with 10,000 candidates (goal: <= 100 ms).

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m benchmarks.review_next [--candidates 10000] [--steps 200]

A candidates GeoPackage as the backend writes it, loaded as a layer on a real QgsMapCanvas (offscreen, 800x600)
in a real ReviewDock; each step is what pressing "." does: the next candidate in the filter, the canvas
centred on it at 1:2000, its outline, tower point and flash. Timed per step: the call itself (what the UI waits
for) and until the canvas has finished drawing the candidates layer again. Every other step records a decision
(one write to the GeoPackage), as a reviewer does. Prints median, 95th percentile and worst step for both
sizes, and the ratio of the large one to the small one (1.0: the size does not matter).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from qgis.core import QgsApplication, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import QEventLoop

from tower_detector.results import write_candidates_gpkg

REPO = Path(__file__).resolve().parent.parent


def make_candidates(path, n, seed=0):
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n * 4)))
    cells = rng.choice(side * side, n, replace=False)  # scattered over a square of tiles, as real candidates are
    x, y = 151_000 + cells % side, 142_000 + cells // side
    score = np.sort(rng.uniform(0.5, 1.0, n).astype(np.float32))[::-1]
    write_candidates_gpkg(str(path), 18, x, y, score, rng.uniform(0, 256, n), rng.uniform(0, 256, n),
                          {"threshold": 0.5})
    return str(path)


class Iface:
    """What the dock uses of QGIS's iface: the real canvas, window and message bar."""

    def __init__(self, canvas, window, bar):
        self.mapCanvas, self.mainWindow, self.messageBar = (lambda: canvas), (lambda: window), (lambda: bar)


def run(n, steps, work):
    from qgis.gui import QgsMapCanvas, QgsMessageBar
    from qgis.PyQt.QtWidgets import QMainWindow

    from tower_detector_plugin.ui.review_dock import ReviewDock

    path = make_candidates(Path(work) / f"candidates-{n}.gpkg", n)
    layer = QgsVectorLayer(f"{path}|layername=candidates", "tower candidates", "ogr")
    QgsProject.instance().addMapLayer(layer)
    window = QMainWindow()
    canvas = QgsMapCanvas(window)
    window.setCentralWidget(canvas)
    window.resize(1000, 600)
    window.show()
    canvas.setDestinationCrs(layer.crs())
    canvas.setLayers([layer])
    canvas.setExtent(layer.extent())
    iface = Iface(canvas, window, QgsMessageBar(window))
    dock = ReviewDock(iface)
    dock.scale.setValue(2000)
    dock.start(layer)
    drawn = []
    canvas.mapCanvasRefreshed.connect(lambda: drawn.append(time.perf_counter()))
    call_ms, drawn_ms = [], []
    for step in range(steps):
        drawn.clear()
        t0 = time.perf_counter()
        if step % 2:
            dock.decide("confirmed" if step % 4 == 1 else "false_positive")  # writes, then moves on
        else:
            dock.next()
        call_ms.append((time.perf_counter() - t0) * 1000)
        deadline = t0 + 10
        while not drawn and time.perf_counter() < deadline:
            QgsApplication.processEvents(QEventLoop.AllEvents, 5)
        drawn_ms.append(((drawn[0] if drawn else time.perf_counter()) - t0) * 1000)
    dock.stop()
    QgsProject.instance().removeMapLayer(layer.id())
    return call_ms, drawn_ms


def summary(values):
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))], ordered[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    app = QgsApplication([], True)
    app.initQgis()
    with tempfile.TemporaryDirectory() as work:
        figures = {n: run(n, args.steps, work) for n in (100, args.candidates)}
    print(f"{'candidates':>10} | {'next() median / p95 / max ms':>29} | {'until drawn median / p95 / max ms':>34}")
    for n, (call, drawn) in figures.items():
        c, d = summary(call), summary(drawn)
        print(f"{n:>10,} | {c[0]:8.2f} / {c[1]:7.2f} / {c[2]:7.2f} | {d[0]:10.2f} / {d[1]:8.2f} / {d[2]:8.2f}")
    small, large = (summary(figures[n][1])[0] for n in (100, args.candidates))
    print(f"until drawn, {args.candidates:,} vs 100 candidates (median): {large / small:.2f}x; goal <= 100 ms: "
          f"{'met' if summary(figures[args.candidates][1])[1] <= 100 else 'NOT met'} at the 95th percentile")


if __name__ == "__main__":
    main()
