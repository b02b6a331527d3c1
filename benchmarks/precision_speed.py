"""Training and scoring images/s of the classifier network in float32 and in mixed precision, measured in one run.

    .venv/bin/python -m benchmarks.precision_speed [--image-size 96] [--batch-size 16] [--steps 4]

The network `train` builds (Xception from scratch -> pooling -> dense -> sigmoid), on random tiles: speed does
not depend on the pixels. Mixed is what `--precision mixed` gives: float16 (with XLA, as train and predict
compile it) on a GPU, bfloat16 on a CPU. Each figure is the mean over --steps timed steps after one warm-up
step; the two policies alternate --repeats times and the fastest of each is kept. Prints the device (GPU
name or CPU model, and whether the CPU computes bfloat16 natively: AMX-BF16 or AVX512-BF16) and the ratio
mixed / float32 for training and scoring.
"""

import argparse
import platform
import sys
import time

import numpy as np

from tower_detector.training.model import (
    after_resize,
    build_model,
    cpu_has_native_bfloat16,
    dtype_policy,
    has_gpu,
)
from tower_detector.training.params import check_params


def device_name():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "CPU"
    return f"{model} ({'with' if cpu_has_native_bfloat16() else 'no'} native bfloat16: AMX-BF16 or AVX512-BF16)"


def speeds(policy, size, batch, steps):
    """(training, scoring) images/s of one freshly built model under `policy`."""
    params = check_params({"image_size": size, "batch_size": batch})
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = (np.arange(batch) % 2).astype(np.float32).reshape(-1, 1)
    model = after_resize(build_model(params, "none", policy)[0])  # tiles at image_size, as train fits it
    model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=has_gpu())
    return step_speeds(model, x, y, steps)


def step_speeds(network, x, y, steps):
    """(training, scoring) images/s of a compiled network on the batch x, y: the mean over `steps` timed steps
    after one untimed step, which builds and compiles."""
    network.train_on_batch(x, y)
    network.predict_on_batch(x)
    t = time.perf_counter()
    for _ in range(steps):
        network.train_on_batch(x, y)
    training = len(x) * steps / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(steps):
        network.predict_on_batch(x)
    return training, len(x) * steps / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    mixed = dtype_policy("mixed", has_gpu())
    best = {"float32": (0.0, 0.0), mixed: (0.0, 0.0)}
    for _ in range(args.repeats):
        for policy in best:
            measured = speeds(policy, args.image_size, args.batch_size, args.steps)
            best[policy] = tuple(max(a, b) for a, b in zip(best[policy], measured))
    print(f"device: {device_name()}; {args.image_size} px, batch {args.batch_size}, {args.steps} steps, "
          f"fastest of {args.repeats}")
    for policy, (training, scoring) in best.items():
        print(f"  {policy:15s} training {training:8.1f} images/s   scoring {scoring:8.1f} images/s")
    (t32, s32), (tm, sm) = best["float32"], best[mixed]
    print(f"  {mixed} / float32: training {tm / t32:.2f}x, scoring {sm / s32:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
