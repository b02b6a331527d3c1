"""The steps' parameters as the plugin offers them, each defined once: its CLI option, label, default, range and
help. The dialogs (ui/) and the Processing algorithms (processing/) both build their inputs from these, and
core/commands.py uses their defaults and choices.

default is the CLI's own default, so that an untouched input sends what the CLI would use anyway. None means the
plugin leaves the value to the CLI: the input shows "default" at its minimum (Processing takes 0), and the option
is not sent. tests/plugin/test_parameters.py checks every default against the CLI's.
"""

from dataclasses import dataclass

from qgis.PyQt.QtCore import QT_TR_NOOP


@dataclass(frozen=True)
class Parameter:
    flag: str  # the CLI option, e.g. "--background-ratio"
    label: str  # the input's label, in a dialog and in the Processing toolbox
    default: object = None  # the CLI's default; None: the CLI decides, and the plugin sends nothing
    minimum: float = 0
    maximum: float = None
    help: str = ""  # plain words: the input's tooltip and its Processing help
    decimals: int = 0  # 0 for a whole number
    choices: tuple = ()  # the values allowed, when there is a fixed list

    @property
    def key(self) -> str:
        """The argument's name in core/commands.py: background_ratio for --background-ratio."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def name(self) -> str:
        """The Processing parameter's name: BACKGROUND_RATIO for --background-ratio."""
        return self.key.upper()


# -- tiles and dataset
ZOOM = Parameter(
    "--zoom",
    QT_TR_NOOP("Zoom"),
    18,
    15,
    21,
    QT_TR_NOOP("The zoom level of the tiles; a model is trained and run at one zoom (18 is about 0.6 m a pixel)."),
)
BACKGROUND_RATIO = Parameter(
    "--background-ratio",
    QT_TR_NOOP("Background tiles per tower tile"),
    3.0,
    0.5,
    50,
    QT_TR_NOOP("How many tiles without a tower to take for each tile with one."),
    decimals=2,
)
SPAN_NEGATIVES = Parameter(
    "--span-negatives",
    QT_TR_NOOP("Negative tiles along OSM power lines, per tower tile"),
    0.0,
    0,
    20,
    QT_TR_NOOP(
        "Tiles under mapped power lines between towers, which look like towers but are not: "
        "hard examples for the model. 0: none. Only OSM towers have lines."
    ),
    decimals=2,
)
SPLIT = Parameter(
    "--split",
    QT_TR_NOOP("Share for training, checking, testing"),
    "0.7,0.15,0.15",
    help=QT_TR_NOOP("The fractions of the tiles for training, validation and the final test."),
)
BLOCK_SIZE = Parameter(
    "--block-size",
    QT_TR_NOOP("Tiles kept together (side)"),
    8,
    1,
    256,
    QT_TR_NOOP(
        "The area is split in blocks of N x N tiles, and each block goes whole to training, validation "
        "or test, so that neighbouring tiles do not leak from one to another."
    ),
)
SEED = Parameter(
    "--seed", QT_TR_NOOP("Seed"), 0, 0, 1_000_000, QT_TR_NOOP("The random seed: the same seed gives the same dataset.")
)

# -- train and search
WEIGHTS = Parameter(
    "--weights",
    QT_TR_NOOP("Start weights"),
    "imagenet",
    choices=("imagenet", "none"),
    help=QT_TR_NOOP(
        "imagenet: start from the ImageNet weights (downloaded once); none: from random weights; "
        "or a Keras weights file."
    ),
)
BACKBONE = Parameter(
    "--backbone",
    QT_TR_NOOP("Backbone"),
    "xception",
    choices=("xception", "mobilenet_v3_small", "efficientnetv2_b0", "compact"),
    help=QT_TR_NOOP(
        "The network under the classifier: xception (the original project's; best with a GPU), a smaller, "
        "faster one for a computer without a GPU, or compact: a small network of our own that learns "
        "in minutes on a CPU, always from random weights."
    ),
)
IMAGE_SIZE = Parameter(
    "--image-size",
    QT_TR_NOOP("Image size (px)"),
    None,
    0,
    1024,
    QT_TR_NOOP("The model's input size; tiles are resized to it."),
)
EPOCHS_TOP = Parameter(
    "--epochs-top",
    QT_TR_NOOP("Epochs, new classifier only"),
    None,
    0,
    100,
    QT_TR_NOOP("Phase 1: epochs that train only the new classifier on top of Xception."),
)
EPOCHS_FINE = Parameter(
    "--epochs-fine",
    QT_TR_NOOP("Epochs, fine-tuning"),
    None,
    0,
    1000,
    QT_TR_NOOP("Phase 2: epochs that fine-tune the upper layers of Xception too."),
)
BATCH_SIZE = Parameter(
    "--batch-size", QT_TR_NOOP("Batch size"), None, 0, 4096, QT_TR_NOOP("Tiles per step through the model.")
)
TRIALS = Parameter(
    "--trials",
    QT_TR_NOOP("Search trials"),
    100,
    1,
    10_000,
    QT_TR_NOOP("How many training recipes the hyperparameter search tries in all (the first 3 at random)."),
)
METRIC = Parameter(
    "--metric",
    QT_TR_NOOP("Search picks by"),
    "pr_auc",
    choices=("pr_auc", "roc_auc", "accuracy"),
    help=QT_TR_NOOP("The validation-split measure that chooses the best trial (the test split only reports)."),
)

# -- predict and results
WORKERS = Parameter(
    "--workers", QT_TR_NOOP("Imagery workers"), None, 0, 256, QT_TR_NOOP("Concurrent imagery requests and decoders.")
)
CHECKPOINT_EVERY = Parameter(
    "--checkpoint-every",
    QT_TR_NOOP("Save progress every (tiles)"),
    None,
    0,
    1_000_000,
    QT_TR_NOOP(
        "Tiles per chunk of the results store: a stopped run resumes from the last chunk. "
        "Default: about a minute of work on this computer, 5,000 on AWS."
    ),
)
SHARDS = Parameter(
    "--shards",
    QT_TR_NOOP("Parts run in parallel"),
    None,
    0,
    1000,
    QT_TR_NOOP("Split the job into N parts by tile column, for parallel workers."),
)
VIEWS = Parameter(
    "--views",
    QT_TR_NOOP("Views per tile"),
    1,
    choices=(1, 2, 4, 8),
    help=QT_TR_NOOP(
        "Score each tile this many ways up (turned, and mirrored at 8) and average the scores: "
        "steadier scores for that many times the model's work."
    ),
)
MAX_TILES = Parameter(
    "--max-tiles",
    QT_TR_NOOP("Refuse above (tiles)"),
    100_000_000,
    1,
    help=QT_TR_NOOP("Areas covering more tiles than this are refused."),
)
THRESHOLD = Parameter(
    "--threshold",
    QT_TR_NOOP("Candidate threshold"),
    0.5,
    0.0,
    1.0,
    QT_TR_NOOP("Tiles scoring at least this become candidates (the model's metrics recommend one)."),
    decimals=3,
)
LINE_RESCORE = Parameter(
    "--line-rescore",
    QT_TR_NOOP("Re-score along power lines"),
    False,
    help=QT_TR_NOOP(
        "Towers stand in chains 250-450 m apart: a candidate with likely towers a span away on both sides "
        "moves up, an isolated one moves down. It can drop a line's first tower or a single tower."
    ),
)
YES_THRESHOLD = Parameter(
    "--yes-threshold",
    QT_TR_NOOP('"Yes" band from'),
    0.97,
    0.0,
    1.0,
    QT_TR_NOOP(
        'Candidates scoring at least this are the overlay\'s "Yes" band, as in the original '
        "project, whose ROC analysis chose 0.97."
    ),
    decimals=3,
)

# -- conflate
DUPLICATE_DISTANCE = Parameter(
    "--duplicate-distance",
    QT_TR_NOOP("Duplicate distance from the tower point (m)"),
    30.0,
    0.1,
    100.0,
    QT_TR_NOOP(
        "A mapped tower, pole or portal this close to a candidate's tower point means OSM has that tower already."
    ),
    decimals=1,
)

# -- the files and sources the steps read and write: a label and help only (no default to keep in step with the CLI)
AREA = Parameter(
    "--area",
    QT_TR_NOOP("Area"),
    help=QT_TR_NOOP(
        "The area to work on: a polygon drawn on the map or taken from a layer, in "
        "any CRS (the backend gets it as WGS84 GeoJSON)."
    ),
)
IMAGERY = Parameter(
    "--imagery",
    QT_TR_NOOP("Imagery"),
    help=QT_TR_NOOP(
        "Where the pictures come from: an XYZ connection or URL template "
        "(a token written as ${TOWER_DETECTOR_TOKEN}), a GeoTIFF/COG, an .mbtiles file or a tile folder."
    ),
)
TOWERS = Parameter(
    "--towers",
    QT_TR_NOOP("Tower labels"),
    help=QT_TR_NOOP(
        "Where the known towers come from: OpenStreetMap (asked through "
        "Overpass) or the points of a layer of the project."
    ),
)
TOWER_FILTER = Parameter(
    "--tower-filter",
    QT_TR_NOOP("OSM tag filter"),
    help=QT_TR_NOOP(
        "Which points count as towers, as key=value (e.g. "
        "power=tower). Empty: power=tower for OpenStreetMap, every point of a layer."
    ),
)
DATASET_OUT = Parameter(
    "--out",
    QT_TR_NOOP("Output folder"),
    help=QT_TR_NOOP(
        "The folder the training data goes to (tiles, labels and a summary); a dataset already there is replaced whole."
    ),
)
DATA = Parameter("--data", QT_TR_NOOP("Training data folder"), help=QT_TR_NOOP("A folder made by Build training data."))
MODEL_OUT = Parameter(
    "--out",
    QT_TR_NOOP("Output folder"),
    help=QT_TR_NOOP("The folder the trained model goes to, with its metrics and plots."),
)
WEIGHTS_FILE = Parameter(
    "--weights",
    QT_TR_NOOP("Weights file"),
    help=QT_TR_NOOP("A Keras weights file to start from, when Start weights is a file."),
)
INIT = Parameter(
    "--init",
    QT_TR_NOOP("Start from model"),
    help=QT_TR_NOOP(
        "A model folder made by Train, to fine-tune on this training data "
        "instead of starting afresh: for example after review decisions went into a new training set. Its "
        "backbone and image size are kept; one training, not a search."
    ),
)
PARAMS = Parameter(
    "--params",
    QT_TR_NOOP("Hyperparameters (JSON)"),
    help=QT_TR_NOOP("A JSON file of training settings, such as a search's best trial; the fields below override it."),
)
SPACE = Parameter(
    "--space",
    QT_TR_NOOP("Search space (JSON)"),
    help=QT_TR_NOOP("A JSON file of the ranges the hyperparameter search tries; empty: the built-in ranges."),
)
MODEL = Parameter(
    "--model",
    QT_TR_NOOP("Model folder"),
    help=QT_TR_NOOP("A folder made by Train: the model and its metrics.json (which recommends a threshold)."),
)


@dataclass(frozen=True)
class Field:
    """A dialog's input that is no CLI option: its label and help."""

    label: str
    help: str


MODE = Field(
    QT_TR_NOOP("What"),
    QT_TR_NOOP("Train one model with the settings below, or search for the best settings (many trainings)."),
)
RUN_ON = Field(
    QT_TR_NOOP("Run on"),
    QT_TR_NOOP("This computer, or AWS Batch through tower-detector remote (Settings holds the AWS account)."),
)
RUN_NAME = Field(
    QT_TR_NOOP("Name"), QT_TR_NOOP("The prediction's name: its folder under Results under, and its job's title.")
)
RESULTS_UNDER = Field(
    QT_TR_NOOP("Results under"),
    QT_TR_NOOP("The folder each prediction's own folder (store, heatmap, candidates) goes in."),
)

# The parameters each CLI command takes from the plugin (what the defaults test compares with the CLI).
STEPS = {
    "tiles": (ZOOM,),
    "dataset": (ZOOM, BACKGROUND_RATIO, SPAN_NEGATIVES, SPLIT, BLOCK_SIZE, SEED),
    "train": (WEIGHTS, BACKBONE, IMAGE_SIZE, EPOCHS_TOP, EPOCHS_FINE, BATCH_SIZE),
    "search": (WEIGHTS, BACKBONE, IMAGE_SIZE, EPOCHS_FINE, BATCH_SIZE, TRIALS, METRIC),
    "predict": (WORKERS, CHECKPOINT_EVERY, BATCH_SIZE, SHARDS, VIEWS, MAX_TILES),
    "results": (THRESHOLD, YES_THRESHOLD),
    "conflate": (DUPLICATE_DISTANCE,),
}
