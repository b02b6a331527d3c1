"""Bad input is one line on stderr and exit 2, with nothing left behind: outputs that cannot be written (a read-only
folder, a folder in the way, a full disk made real with RLIMIT_FSIZE), areas and covers that are malformed, numbers
that make no sense, a corrupt model; and arguments checked before TensorFlow loads."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.storedata import JOB, TRIANGLE, fill
from tests.fakes.training import TINY_TRAINING
from tower_detector.cli import main
from tower_detector.common.errors import UserError
from tower_detector.geo.areas import load_area
from tower_detector.geo.cover import TileCover, tile_cover
from tower_detector.prediction.store import open_store

AREA = "28,-15,28.01,-14.99"  # 72 zoom-18 tiles

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, fsize=None, timeout=300):
    """The real CLI in a subprocess; fsize: the most bytes any file it writes may hold (writes past it fail with
    EFBIG, as on a full disk)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "tower_detector", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit if fsize else None)


def one_line_error(proc, expected):
    """Exit 2 and exactly one line on stderr, `error: ...` holding `expected`, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert expected in lines[0], lines[0]


def error_event(proc, expected):
    """With --events: exit 2, nothing on stderr, the last event an error holding `expected`."""
    assert proc.returncode == 2 and proc.stderr == "", proc.stderr[-3000:]
    event = json.loads(proc.stdout.strip().splitlines()[-1])
    assert event["event"] == "error" and event["kind"] == "bad_input" and expected in event["message"], event


def leftovers(folder):
    """Temp files (ours: *.tmp, hidden or not) under folder."""
    return sorted(str(p) for p in Path(folder).rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder that refuses new files: mode 555, or /sys where root ignores modes (sysfs refuses everyone)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.geteuid() != 0:
            yield folder
        else:
            try:
                (Path("/sys") / "probe.tmp").write_text("x")
            except OSError:
                yield Path("/sys")
            else:
                pytest.skip("no folder refuses new files to root here")
    finally:
        folder.chmod(0o755)


# --- tiles ------------------------------------------------------------------------------------------------------
def test_tiles_out_in_a_read_only_folder(read_only_dir):
    one_line_error(run_cli("tiles", "--area", AREA, "--out", read_only_dir / "cover.json"),
                   f"cannot write the tile cover {read_only_dir / 'cover.json'}")
    assert not (read_only_dir / "cover.json").exists() and not (read_only_dir / "cover.json.tmp").exists()


def test_tiles_out_naming_a_folder_or_an_unknown_format(tmp_path):
    one_line_error(run_cli("tiles", "--area", AREA, "--out", tmp_path), "is a folder")
    one_line_error(run_cli("tiles", "--area", AREA, "--out", tmp_path / "cover.xyz"), "must end with .json")
    assert os.listdir(tmp_path) == []


def test_tiles_out_on_a_full_disk_leaves_nothing(tmp_path):
    out = tmp_path / "cover.txt"
    out.write_text("the previous cover\n")
    one_line_error(run_cli("tiles", "--area", "28,-15,28.05,-14.95", "--out", out, fsize=4096),
                   f"cannot write the tile cover {out}: File too large")
    assert out.read_text() == "the previous cover\n" and leftovers(tmp_path) == []


def test_tiles_shards_zero_is_refused():
    one_line_error(run_cli("tiles", "--area", AREA, "--shards", "0"), "argument --shards: must be at least 1, not 0")


def test_area_naming_a_folder_or_nested_too_deeply(tmp_path):
    one_line_error(run_cli("tiles", "--area", tmp_path), "is a folder")
    deep = tmp_path / "deep.geojson"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(run_cli("tiles", "--area", deep), "deep is not GeoJSON (nested too deeply)")


def test_a_western_bbox_is_a_value_not_a_flag():
    proc = run_cli("tiles", "--area", "-75,40,-74.99,40.01")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == run_cli("tiles", "--area=-75,40,-74.99,40.01").stdout.split()[0]
    one_line_error(run_cli("tiles", "--area", "-75,40,-74"), "bbox -75,40,-74 has 3 values")


@pytest.mark.parametrize("argv, dest, value", [
    (["dataset", "--out", "d", "--area", "-75,40,-74,41"], "area", "-75,40,-74,41"),
    (["predict", "--model", "m", "--imagery", "i", "--out", "o", "--area", "-75.5,-40,-74,-39"], "area",
     "-75.5,-40,-74,-39"),
    (["export", "osm", "--candidates", "c.gpkg", "--out", "o.osm", "--bbox", "-75,40,-74,41"], "bbox", "-75,40,-74,41"),
    (["remote", "submit", "predict", "--model", "m", "--imagery", "i", "--area", "-1,-1,1,1"], "area", "-1,-1,1,1"),
])
def test_every_area_and_bbox_option_takes_a_western_bbox(argv, dest, value):
    from tower_detector.cli import build_parser

    assert getattr(build_parser().parse_args(argv), dest) == value


@pytest.mark.parametrize("argv, message", [
    (["tiles", "--area", AREA, "--zoom", "25"], "argument --zoom: must be 0 to 24, not 25"),
    (["tiles", "--area", AREA, "--max-tiles", "-1"], "argument --max-tiles: must be at least 1"),
    (["dataset", "--out", "d", "--background-ratio", "-1"], "argument --background-ratio: must be a number >= 0"),
    (["dataset", "--out", "d", "--background-ratio", "nan"], "argument --background-ratio: must be a number >= 0"),
    (["dataset", "--out", "d", "--span-negatives", "-0.5"], "argument --span-negatives: must be a number >= 0"),
    (["dataset", "--out", "d", "--concurrency", "0"], "argument --concurrency: must be at least 1"),
    (["dataset", "--out", "d", "--block-size", "0"], "argument --block-size: must be at least 1"),
    (["dataset", "--out", "d", "--seed", "-1"], "argument --seed: must be at least 0"),
    (["dataset", "--out", "d", "--zoom", "-1"], "argument --zoom: must be 0 to 24"),
    (["search", "--data", "d", "--out", "o", "--trials", "0"], "argument --trials: must be at least 1"),
    (["search", "--data", "d", "--out", "o", "--trials", "2", "--seed", "-1"], "argument --seed: must be at least 0"),
    (["predict", "--workers", "0"], "argument --workers: must be at least 1"),
    (["predict", "--checkpoint-every", "0"], "argument --checkpoint-every: must be at least 1"),
    (["predict", "--batch-size", "-8"], "argument --batch-size: must be at least 1"),
    (["predict", "--shards", "0"], "argument --shards: must be at least 1"),
    (["predict", "--zoom", "30"], "argument --zoom: must be 0 to 24"),
    (["predict", "--rate-limit", "0"], "argument --rate-limit: must be a number > 0, not 0"),
    (["predict", "--rate-limit", "-2"], "argument --rate-limit: must be a number > 0, not -2"),
    (["predict", "--rate-limit", "inf"], "argument --rate-limit: must be a number > 0, not inf"),
    (["predict", "--rate-limit", "ten"], "argument --rate-limit: must be a number, not 'ten'"),
    (["remote", "submit", "predict", "--rate-limit", "nan"], "argument --rate-limit: must be a number > 0"),
    (["remote", "k8s-manifest", "predict", "--rate-limit", "0"], "argument --rate-limit: must be a number > 0"),
    (["remote", "submit", "predict", "--workers", "0"], "argument --workers: must be at least 1"),
    (["remote", "submit", "predict", "--tiles-per-second", "0"], "argument --tiles-per-second: must be a number > 0"),
    (["remote", "submit", "train", "--timeout-hours", "-1"], "argument --timeout-hours: must be a number > 0"),
    (["remote", "submit", "search", "--spot-price", "-0.1"], "argument --spot-price: must be a number >= 0"),
    (["remote", "setup", "--max-vcpus", "0"], "argument --max-vcpus: must be at least 1"),
])
def test_numbers_that_make_no_sense_are_refused_as_parsed(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


# --- tile cover files (predict --tiles) ----------------------------------------------------------------------------
def cover_file(tmp_path, **fields):
    path = tmp_path / "cover.json"
    path.write_text(json.dumps({"format": "tower-detector/tile-cover", "zoom": 18, **fields}))
    return path


@pytest.mark.parametrize("fields, message", [
    ({"runs": [[1, 2]]}, "runs must be [x, y0, y1] triples of whole numbers"),
    ({"runs": [["a", 1, 2]]}, "runs must be [x, y0, y1] triples of whole numbers"),
    ({"runs": [[1.5, 0, 2]]}, "runs must be [x, y0, y1] triples of whole numbers"),
    ({"runs": [[1, 0, 2], [1, 2]]}, "runs must be [x, y0, y1] triples of whole numbers"),
    ({"runs": "x"}, "runs must be [x, y0, y1] triples of whole numbers"),
    ({"runs": [[5, 3, 1]]}, "run 0 [5, 3, 1] is not a run"),
    ({"runs": [[-1, 0, 5]]}, "run 0 [-1, 0, 5] is not a run"),
    ({"runs": [[1, 0, 99_999_999_999]]}, "run 0 [1, 0, 99999999999] is not a run"),
    ({"runs": [[1, 0, 5], [1, 3, 6]]}, "run 1 [1, 3, 6] is not a run"),
    ({"runs": [[2, 0, 5], [1, 0, 5]]}, "run 1 [1, 0, 5] is not a run"),
    ({"runs": [[1, 0, 5]], "count": 4}, "its count 4 is not the 5 tiles"),
    ({"runs": [[1, 0, 5]], "zoom": 99}, "zoom 99 is not a whole number from 0 to 24"),
    ({"runs": [[1, 0, 5]], "zoom": "18"}, "zoom '18' is not a whole number from 0 to 24"),
])
def test_malformed_tile_covers_are_one_line_bad_input(tmp_path, fields, message):
    with pytest.raises(UserError, match="tile cover .*" + message.replace("[", r"\[").replace("]", r"\]")):
        TileCover.load(str(cover_file(tmp_path, **fields)))


def test_a_cover_written_by_tiles_loads_as_it_was(tmp_path):
    cover = tile_cover(load_area(json.dumps(TRIANGLE)), 18)
    cover.save(str(tmp_path / "c.json"))
    back = TileCover.load(str(tmp_path / "c.json"))
    assert back.zoom == 18 and list(back.tile_ids()) == list(cover.tile_ids())
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="cannot read tile cover"):
        TileCover.load(str(deep))


# --- predict -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """A model directory as train writes it, with untrained weights (what is tested here needs no training)."""
    from tower_detector.training.model import build_model, write_params
    from tower_detector.training.params import check_params

    out = tmp_path_factory.mktemp("untrained")
    params = check_params(TINY_TRAINING)
    build_model(params, "none")[0].save(str(out / "model.keras"))
    write_params(str(out), params)
    return out


def test_predict_on_a_full_disk_stops_with_one_line(untrained_model, sample_scene, tmp_path):
    store = tmp_path / "store"
    proc = run_cli("predict", "--model", untrained_model, "--imagery", sample_scene["imagery"], "--area",
                   sample_scene["area"], "--out", store, "--checkpoint-every", 10, "--batch-size", 8, "--events",
                   fsize=1000)  # the job's files fit, a chunk does not
    error_event(proc, f"cannot write to the store {store}: File too large")
    assert any(e["event"] == "progress" and e["done"] for e in map(json.loads, proc.stdout.splitlines()))  # mid-run
    assert leftovers(store) == []


def test_predict_with_a_malformed_tile_cover(untrained_model, sample_scene, tmp_path):
    proc = run_cli("predict", "--model", untrained_model, "--imagery", sample_scene["imagery"], "--tiles",
                   cover_file(tmp_path, runs=[[1, 2]]), "--out", tmp_path / "store", "--events")
    error_event(proc, "runs must be [x, y0, y1] triples")


def test_a_corrupt_model_is_called_corrupt(tmp_path, sample_scene):
    from tower_detector.training.model import write_params
    from tower_detector.training.params import check_params

    write_params(str(tmp_path), check_params(TINY_TRAINING))
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04 cut short by a failed copy")
    one_line_error(run_cli("predict", "--model", tmp_path, "--imagery", sample_scene["imagery"], "--area",
                           sample_scene["area"], "--out", tmp_path / "store"),
                   f"{tmp_path / 'model.keras'} is corrupt")


# --- results -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("results-errors") / "store"
    cover = tile_cover(load_area(json.dumps(TRIANGLE)), 18)
    s = open_store(str(path), create=True)
    s.create_job(JOB, cover, cover.shard_ranges(2), 50)
    fill(s)
    return path


@pytest.mark.parametrize("flag, name", [("--candidates", "c.gpkg"), ("--json", "s.json"), ("--geojson", "g.geojson")])
def test_results_on_a_full_disk_keep_the_old_output(store, tmp_path, flag, name):
    out = tmp_path / name
    assert run_cli("results", store, flag, out, "--threshold", 0.9).returncode == 0
    before = out.read_bytes()
    error_event(run_cli("results", store, flag, out, "--events", fsize=3000), f"cannot write the results ({out})")
    assert out.read_bytes() == before and leftovers(tmp_path) == []


def test_results_heatmap_that_gdal_cannot_finish_is_not_kept(store, tmp_path):
    """GDAL can close a heatmap it could not finish without an error: the heatmap is read back before it counts."""
    whole = tmp_path / "whole.tif"
    assert run_cli("results", store, "--heatmap", whole).returncode == 0
    out = tmp_path / "heat.tif"
    proc = run_cli("results", store, "--heatmap", out, fsize=whole.stat().st_size - 100)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]  # GDAL prints its own lines about the failed writes before it
    assert last == f"error: cannot write the results ({out}): the heatmap does not read back whole (is the disk full?)"
    assert not out.exists() and leftovers(tmp_path) == []


# --- export, train, search ------------------------------------------------------------------------------------------
def test_export_to_a_read_only_folder(tmp_path, read_only_dir):
    candidates = tmp_path / "c.gpkg"
    subprocess.run([sys.executable, "-c", "from tests.fakes.candidates_helpers import make_candidates; "
                    f"make_candidates({str(candidates)!r}, [(154000 + i, 140000) for i in range(3)])"],
                   cwd=REPO, check=True)  # SQLite as the CLI has it, whatever this process loaded
    for kind, out in (("overlay", read_only_dir / "o.geojson"), ("tasking-manager", read_only_dir / "tm")):
        proc = run_cli("export", kind, "--candidates", candidates, "--out", out)
        one_line_error(proc, "cannot ")
        assert not out.exists()


def test_train_checks_its_weights_before_tensorflow_and_writes_nothing(training_set, tmp_path):
    one_line_error(run_cli("train", "--data", training_set, "--out", tmp_path / "m", "--weights",
                           tmp_path / "missing.h5"), "--weights")
    assert not (tmp_path / "m").exists()
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "index.csv").write_text("split,path\ntrain,a.png\n")
    one_line_error(run_cli("train", "--data", tmp_path / "ds", "--out", tmp_path / "m"), "is not a dataset index")


def test_search_checks_its_data_before_any_trial(tmp_path):
    (tmp_path / "not-a-dataset").mkdir()
    one_line_error(run_cli("search", "--data", tmp_path / "not-a-dataset", "--out", tmp_path / "s", "--trials", 3,
                           "--weights", "none"), "is not a dataset")
    assert not (tmp_path / "s").exists()


def test_one_line_of_an_exception():
    from tower_detector.common.errors import one_line

    assert one_line(OSError(28, "No space left on device", "/data/x.tmp")) == "No space left on device"
    assert one_line(ValueError("first\n  second")) == "first second"
    assert one_line(KeyError()) == "KeyError"


def test_tensorflows_start_up_lines_stay_off_stderr_and_its_errors_do_not(tmp_path):
    """TensorFlow 2.21 logs its start-up info through absl before TF_CPP_MIN_LOG_LEVEL applies: a stand-in package
    writes such lines to descriptor 2 as it is imported, and only the error line and Python's own text pass."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os, sys\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1796611544.261805    9746 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "os.write(2, b'W0000 00:00:1796611544.261805    9746 cuda_dnn.cc:8310] Unable to register cuDNN\\n')\n"
        "os.write(2, b'E0000 00:00:1796611544.261805    9746 cuda_driver.cc:152] failed call to cuInit\\n')\n"
        "print('a Python warning', file=sys.stderr)\n"
        "LOADED = True\n")
    code = ("from tower_detector.common.quiet import quiet_tensorflow_import\n"
            "quiet_tensorflow_import()\n"
            "import tensorflow\n"
            "assert tensorflow.LOADED\n"
            "import os; os.write(2, b'I0000 00:00:1.0 1 after.cc:1] later lines are not touched\\n')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO / "backend")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "E0000 00:00:1796611544.261805    9746 cuda_driver.cc:152] failed call to cuInit", "a Python warning",
        "I0000 00:00:1.0 1 after.cc:1] later lines are not touched"]
