"""The one definition of each step parameter on the plugin's side (core/parameters.py): its defaults and choices
are the CLI's, and the dialogs and the Processing algorithms both start from it."""

import json
import re
import subprocess
import sys
from functools import cache

import pytest

from tests.plugin import support as support
from tower_detector_plugin.core import parameters
from tower_detector_plugin.core.jobs import JobManager
from tower_detector_plugin.processing.build_dataset import BuildDatasetAlgorithm
from tower_detector_plugin.processing.predict import PredictAlgorithm
from tower_detector_plugin.processing.train import TrainAlgorithm
from tower_detector_plugin.ui.job_dialogs import BuildDatasetDialog, PredictDialog, TrainDialog
from tower_detector_plugin.ui.widgets import spin_value

plugin_settings = support.plugin_settings  # a fixture

# What each command requires, so that parsing it gives the CLI's defaults for everything else.
REQUIRED = {"tiles": ["--area", "a"], "dataset": ["--out", "o"], "train": ["--data", "d", "--out", "o"],
            "search": ["--data", "d", "--out", "o", "--trials", "1"],
            "predict": ["--model", "m", "--imagery", "i", "--out", "o"], "results": ["store"],
            "conflate": ["--candidates", "c", "--osm", "o"]}
# Run in the CLI's own Python: the parser's defaults, command by command (argparse's public parse_args only).
CLI_DEFAULTS = """
import json, sys
from tower_detector.cli import build_parser
out = {}
for command, args in json.loads(sys.argv[1]).items():
    parsed = vars(build_parser().parse_args([command, *args]))
    out[command] = {key: value for key, value in parsed.items() if isinstance(value, (str, int, float, type(None)))}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cli_defaults():
    done = subprocess.run([sys.executable, "-c", CLI_DEFAULTS, json.dumps(REQUIRED)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@cache
def option_help(command: str, flag: str) -> str:
    """What `tower-detector COMMAND --help` says of FLAG, on one line."""
    done = subprocess.run([sys.executable, "-m", "tower_detector", command, "--help"], capture_output=True,
                          text=True, timeout=120, check=True)
    for block in re.split(r"\n(?=  -)", done.stdout):
        if re.match(rf"\s+{re.escape(flag)}\b", block):
            return " ".join(block.split())
    raise AssertionError(f"tower-detector {command} has no {flag}")


def test_every_default_is_the_clis(cli_defaults):
    checked = 0
    for command, params in parameters.STEPS.items():
        for param in params:
            assert param.key in cli_defaults[command], f"tower-detector {command} has no {param.flag}"
            if param.flag in REQUIRED[command] or param.default is None:
                continue  # the user must give it, or the plugin leaves it to the CLI
            cli = cli_defaults[command][param.key]
            if cli is None:  # the CLI decides in code, and says so in its help
                said = re.search(r"\(default:? ([^)\s;,]+)", option_help(command, param.flag))
                assert said, f"{command} {param.flag}: no default in the CLI's help"
                cli = type(param.default)(said.group(1).strip('"'))
            assert cli == param.default, f"{command} {param.flag}: the CLI's default is {cli!r}"
            checked += 1
    assert checked >= 10


def test_every_choice_is_the_clis():
    for command, params in parameters.STEPS.items():
        for param in params:
            if param.choices:
                text = option_help(command, param.flag)
                listed = re.search(r"\{([^}]*)\}", text)  # argparse's choices, as {a,b}
                if listed:
                    assert listed.group(1).split(",") == [str(c) for c in param.choices], (command, param.flag)
                else:  # a free value whose usual ones the help names
                    assert all(str(c) in text for c in param.choices), (command, param.flag, text)


def _default(algorithm, param):
    return algorithm.parameterDefinition(param.name).defaultValue()


def _dialogs_by_algorithm(qgis_iface):
    """The dataset, train and predict algorithms (initialised), each with its dialog."""
    manager = JobManager(qgis_iface)
    algorithms = [cls() for cls in (BuildDatasetAlgorithm, TrainAlgorithm, PredictAlgorithm)]
    for algorithm in algorithms:
        algorithm.initAlgorithm()
    return dict(zip(algorithms, (BuildDatasetDialog(qgis_iface, manager), TrainDialog(qgis_iface, manager),
                                 PredictDialog(qgis_iface, manager)), strict=True))


def test_the_dialogs_and_the_algorithms_start_from_the_definitions(qgis_iface, plugin_settings):
    dialogs = _dialogs_by_algorithm(qgis_iface)
    dataset, train, predict = dialogs
    numbers = {dataset: ("ZOOM", "BACKGROUND_RATIO", "SPAN_NEGATIVES", "BLOCK_SIZE", "SEED"),
               train: ("IMAGE_SIZE", "EPOCHS_TOP", "EPOCHS_FINE", "BATCH_SIZE"),
               predict: ("WORKERS", "CHECKPOINT_EVERY", "BATCH_SIZE")}
    for algorithm, names in numbers.items():
        for name in names:
            param = getattr(parameters, name)
            assert _default(algorithm, param) == (0 if param.default is None else param.default), name
            assert spin_value(getattr(dialogs[algorithm], param.key)) == param.default, name
    assert dialogs[dataset].split.text() == parameters.SPLIT.default
    for algorithm, param in ((train, parameters.WEIGHTS), (train, parameters.BACKBONE), (predict, parameters.VIEWS)):
        assert _default(algorithm, param) == param.choices.index(param.default)
        assert getattr(dialogs[algorithm], param.key).currentData() == param.default
    assert dialogs[train].metric.currentData() == parameters.METRIC.default
    assert dialogs[train].trials.value() == parameters.TRIALS.default
    for dialog in dialogs.values():
        dialog.deleteLater()


def test_every_job_dialog_field_has_help_in_plain_words_shared_with_processing(qgis_iface, plugin_settings):
    """Issue 33 (12): 3 tooltips across about 40 fields. Every field says what it is, and a field that Processing
    has too says the same there (one definition, in core/parameters.py)."""
    from qgis.PyQt.QtWidgets import QFormLayout

    dialogs = _dialogs_by_algorithm(qgis_iface)
    dataset, train, predict = dialogs
    for dialog in dialogs.values():
        form = dialog.form
        for row in range(form.rowCount()):
            label = form.itemAt(row, QFormLayout.LabelRole)
            field = form.itemAt(row, QFormLayout.FieldRole) or form.itemAt(row, QFormLayout.SpanningRole)
            name = label.widget().text() if label is not None and label.widget() is not None else f"row {row}"
            assert field.widget() is not None and len(field.widget().toolTip()) > 15, f"{dialog.title}: {name}"
    shared = {dataset: {"AREA": dialogs[dataset].area, "IMAGERY": dialogs[dataset].imagery,
                        "TOWER_FILTER": dialogs[dataset].tower_filter, "OUTPUT": dialogs[dataset].out},
              train: {"DATA": dialogs[train].data, "PARAMS": dialogs[train].params, "OUTPUT": dialogs[train].out,
                      "WEIGHTS_FILE": dialogs[train].weights_file, "INIT": dialogs[train].init},
              predict: {"MODEL": dialogs[predict].model, "AREA": dialogs[predict].area,
                        "IMAGERY": dialogs[predict].imagery}}
    for algorithm, widgets in shared.items():
        for name, widget in widgets.items():
            help_text = algorithm.parameterDefinition(name).help()
            assert help_text and widget.toolTip() == help_text, f"{algorithm.id()} {name}"
    for dialog in dialogs.values():
        dialog.deleteLater()
