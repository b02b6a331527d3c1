"""The pipeline's stages are declared once (pipeline.STAGES), and the command line, `remote submit` and the docs
are built from the declarations."""

import subprocess
import sys
from pathlib import Path

import pytest

from tower_detector.cli import build_parser
from tower_detector.pipeline import GPU, REMOTE, SPLITTABLE, STAGES
from tower_detector.training.params import TRAINING, markdown_table, training_flags

REPO = Path(__file__).resolve().parents[2]


def test_every_stage_is_a_command_in_pipeline_order_and_remote_takes_the_same_arguments():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps no public view of its subcommands
    assert [name for name in commands if name in {s.name for s in STAGES}] == [s.name for s in STAGES]
    assert SPLITTABLE == ["predict"] and GPU == ["train", "search", "predict"] == REMOTE
    submit = commands["remote"]._subparsers._group_actions[0].choices["submit"]
    kinds = submit._subparsers._group_actions[0].choices
    assert list(kinds) == REMOTE
    for kind in REMOTE:
        local = {a.dest for a in commands[kind]._actions}
        remote = {a.dest for a in kinds[kind]._actions}
        # the same arguments, less the shard (each child takes its own) and the local runner's processes, plus
        # the AWS ones
        assert local - remote == ({"shard", "processes", "gpus", "part"} if kind == "predict" else set())
        assert remote - local == {"profile", "region", "stack", "name", "yes", "spot_price", "timeout_hours"} | (
            {"tiles_per_second", "pilot", "from_pilot"} if kind == "predict" else set())


def test_training_flags_come_from_the_parameter_definitions():
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--epochs-top", "2", "--image-size",
                                      "96"])
    assert (args.epochs_top, args.image_size, args.epochs_fine) == (2, 96, None)
    assert training_flags(args) == {"epochs_phase1": 2, "image_size": 96}
    flagged = {p.flags[0] for p in TRAINING if p.flags}
    assert flagged == {"--backbone", "--head", "--epochs-top", "--epochs-fine", "--batch-size", "--image-size",
                       "--seed"}
    proc = subprocess.run([sys.executable, "-m", "tower_detector", "train", "--data", "d", "--out", "o",
                           "--image-size", "50"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "image_size must be between 71 and 1024" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_docs_table_is_the_parameter_definitions():
    text = (REPO / "docs" / "training.md").read_text()
    block = text.split("<!-- generated: training parameters -->\n", 1)[1].split("<!-- end generated -->", 1)[0]
    assert block == markdown_table(), "regenerate it: python -m tower_detector.training.params"


@pytest.mark.parametrize("old", ["sample"])
def test_old_command_names_still_work_with_a_note(old, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tower_detector", old, "--out", tmp_path / "s", "--tiles-x", "2",
                           "--tiles-y", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "`tower-detector sample` is now `tower-detector synthetic`" in proc.stderr
    assert (tmp_path / "s" / "scene.tif").exists()
