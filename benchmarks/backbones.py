"""Training and scoring images/s, and model size, of each backbone `train --backbone` offers, measured in one run.

    .venv/bin/python -m benchmarks.backbones [--image-size 96] [--compact-size 256] [--batch-size 32] [--steps 4] \\
        [--repeats 2] [--precision auto]

The network `train` builds from scratch (the backbone -> pooling -> dense -> sigmoid, fitted after its resize
layer as train fits it, with the loss of the from-scratch recipe), on random tiles: speed does not depend on the
pixels. The compact backbone is measured at --compact-size, the full tile it trains on (its cells head), the
others at --image-size. Each figure is the mean over --steps timed steps after one warm-up step; the backbones alternate
--repeats times and the fastest of each is kept. The size is that of the saved model.keras. Prints each
backbone's figures and its ratio to Xception's. Quality on the synthetic scenes comes from
`python -m benchmarks.train_quality --params p.json` with {"backbone": ...} in p.json (docs/benchmarks/backbones.md).
"""

import argparse
import os
import sys
import tempfile

import numpy as np

from benchmarks.precision_speed import device_name, step_speeds
from tower_detector.training.model import after_resize, build_model, dtype_policy, has_gpu
from tower_detector.training.params import BACKBONE_LAYERS, check_params, default_params
from tower_detector.training.train import tile_loss


def measure(backbone, size, batch, steps, policy, folder):
    """(training images/s, scoring images/s, model.keras MB, weights) of a freshly built model."""
    params = check_params({"backbone": backbone, "image_size": size, "batch_size": batch},
                          base=default_params("none", backbone))
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = (np.arange(batch) % 2).astype(np.float32).reshape(-1, 1)
    model = build_model(params, "none", policy)[0]
    network = after_resize(model)
    network.compile(optimizer="adam", loss=tile_loss(params), jit_compile=has_gpu())
    training, scoring = step_speeds(network, x, y, steps)
    path = os.path.join(folder, f"{backbone}.keras")
    model.save(path)
    return training, scoring, os.path.getsize(path) / 1e6, model.count_params()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--compact-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "mixed"])
    args = p.parse_args()
    policy = dtype_policy(args.precision, has_gpu())
    best = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for backbone in BACKBONE_LAYERS:
                size = args.compact_size if backbone == "compact" else args.image_size
                measured = measure(backbone, size, args.batch_size, args.steps, policy, folder)
                old = best.get(backbone, (0.0, 0.0, 0.0, 0))
                best[backbone] = (max(old[0], measured[0]), max(old[1], measured[1]), measured[2], measured[3])
    print(f"device: {device_name()}; {policy}; {args.image_size} px (compact {args.compact_size} px), batch "
          f"{args.batch_size}, {args.steps} steps, fastest of {args.repeats}")
    base_train, base_score = best["xception"][:2]
    for backbone, (training, scoring, megabytes, weights) in best.items():
        print(f"  {backbone:20s} training {training:7.1f} images/s ({training / base_train:5.2f}x)   scoring "
              f"{scoring:7.1f} images/s ({scoring / base_score:5.2f}x)   model.keras {megabytes:6.1f} MB, "
              f"{weights / 1e6:.2f} M weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
