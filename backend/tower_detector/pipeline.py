"""The pipeline's stages, declared once, in the order data flows through them.

    area -> tiles -> (synthetic scene) -> dataset -> train / search -> predict -> results -> conflate -> export

Each stage is a `tower-detector` command. STAGES says what each one is, which arguments it takes, which of them
name input files, and how it runs: whether it splits into shards across workers (SPLITTABLE), wants a GPU (GPU)
and can run on AWS Batch (REMOTE). The CLI (cli.py) and `remote submit` are built from it; the runners (what each
command does) live in cli.py, the work itself in the packages.

An `arguments(parser, remote=False)` function adds a stage's arguments to an argparse parser and returns the
actions it added; with remote=True it leaves out what the remote side decides (the shard a child scores).
"""

import argparse
import math
from collections.abc import Callable
from typing import NamedTuple

from .training.params import add_training_flags


class Stage(NamedTuple):
    name: str
    help: str
    arguments: Callable
    inputs: tuple = ()  # remote stages: arguments naming input files, which a worker fetches when they are s3://
    splits: bool = False  # shards of one job run on separate workers
    gpu: bool = False
    remote: bool = False  # `remote submit` runs it on AWS Batch


# ---------------------------------------------------------------------------------------------
# checked argument types: a bad value is one line and exit 2 (cli._Parser)
# ---------------------------------------------------------------------------------------------
def _whole(low, high=None):
    """An argparse type: a whole number in low..high."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, not {value}" if high is not None
                                             else f"must be at least {low}, not {value}")
        return value
    return parse


def _number(low, strict=False, high=None):
    """An argparse type: a finite number >= low (> low when strict), and <= high when given."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
        if high is not None and (not math.isfinite(value) or not low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a number from {low:g} to {high:g}, not {text}")
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be a number {'>' if strict else '>='} {low:g}, not {text}")
        return value
    return parse


ZOOM = _whole(0, 24)  # the zooms tile covers support
COUNT = _whole(1)  # shards, workers, tiles, batch sizes...
SEED = _whole(0)  # numpy's generators take seeds >= 0
NON_NEGATIVE = _number(0)  # ratios, prices
POSITIVE = _number(0, strict=True)  # rates, durations

AREA_HELP = "GeoJSON file (Polygon/MultiPolygon, WGS84) or bbox W,S,E,N"
IMAGERY_HELP = "XYZ URL template, GeoTIFF/COG, .mbtiles, or a folder/s3 prefix of x-y-z tiles"
PRECISION_HELP = ("auto (default): mixed float16 on a GPU, mixed bfloat16 on a CPU with AMX-BF16 or AVX512-BF16, "
                  "else float32; mixed: bfloat16 on any CPU")
PRECISIONS = ["auto", "float32", "mixed"]
RATE_LIMIT_HELP = ("at most R requests per second to an XYZ tile server for the whole run, retries included; "
                   "--processes/--gpus N give each process R/N (default: no limit)")
RATE_LIMIT_HELP_REMOTE = ("at most R requests per second to an XYZ tile server for the whole job: each child gets "
                          "R / the children that run at once (the shards, at most the workers at once)")


def rate_share(rate, n):
    """Each of n requesters' share of a rate limit of `rate` requests/s (None: no limit): rate / n, never more, so
    that n of them together stay within it. A float whose str() reads back exactly, for a child's command line."""
    return None if rate is None else rate / max(1, n)


# ---------------------------------------------------------------------------------------------
# each stage's arguments
# ---------------------------------------------------------------------------------------------
def _out(sp, remote, help_text):
    """--out: required here; on AWS optional, in the stack's bucket."""
    if remote:
        return sp.add_argument("--out", help="s3://BUCKET/prefix in the stack's bucket (default: "
                                             "s3://BUCKET/jobs/NAME/...)")
    return sp.add_argument("--out", required=True, help=help_text)


def tiles_arguments(sp, remote=False):
    return [
        sp.add_argument("--area", required=True, help=AREA_HELP),
        sp.add_argument("--zoom", type=ZOOM, default=18),
        sp.add_argument("--shards", type=COUNT, help="split into N X-index ranges of about equal tile counts"),
        sp.add_argument("--out", help="write the cover: .json (compact runs) or .txt (one x-y-z per line)"),
        sp.add_argument("--max-tiles", type=COUNT, help="refuse areas covering more tiles than this"),
        sp.add_argument("--repair", action="store_true",
                        help="repair invalid polygons with make_valid instead of refusing"),
    ]


def synthetic_arguments(sp, remote=False):
    # density and realism: None means not given (the default scene, or the --realism preset's value); --realism's
    # help spells out synthetic.REALISM (a test compares them): importing it here would load numpy for every command
    return [
        sp.add_argument("--out", required=True, help="output directory"),
        sp.add_argument("--tiles-x", type=COUNT, default=8),
        sp.add_argument("--tiles-y", type=COUNT, default=8),
        sp.add_argument("--seed", type=SEED, default=0),
        sp.add_argument("--lon", type=float, default=28.28, help="longitude of the scene's centre"),
        sp.add_argument("--lat", type=float, default=-15.42, help="latitude of the scene's centre"),
        sp.add_argument("--zoom", type=ZOOM, default=18, help=argparse.SUPPRESS),
        sp.add_argument("--hv-lines", type=_whole(0, 100), metavar="N",
                        help="HV lines planned (default: from the scene's size, at least 2); 1 on a 64x64 scene "
                             "gives under 1%% tower tiles"),
        sp.add_argument("--realism", action="store_true",
                        help="all the realism options below at moderate strength: --jpeg-quality 75 "
                             "--low-contrast --lean 6 --haze 0.25 --confusers 1 (each may still be set)"),
        sp.add_argument("--jpeg-quality", type=_whole(1, 100), metavar="Q",
                        help="JPEG-encode each 256-px tile at quality Q, as tile services serve them"),
        sp.add_argument("--low-contrast", action=argparse.BooleanOptionalAction,
                        help="tower steel a few grey levels from the ground under it (pale steel); "
                             "--no-low-contrast undoes --realism's"),
        sp.add_argument("--lean", type=_number(0, high=100), metavar="METRES",
                        help="off-nadir view: a 50 m tower's top drawn this far from its base (lower ones less), "
                             "in one direction for the scene; the tower's point stays at its base"),
        sp.add_argument("--haze", type=_number(0, high=1), metavar="F",
                        help="blend F (0..1) of the way to a pale haze colour, with a little blur"),
        sp.add_argument("--confusers", type=_number(0, high=20), nargs="?", const=1.0, metavar="DENSITY",
                        help="telecom masts, substations and water towers with no HV line (alone: density 1); "
                             "listed with sheds and boulders in confusers.geojson, never in towers.geojson"),
    ]


def dataset_arguments(sp, remote=False):
    return [
        sp.add_argument("--out", required=True, help="output directory"),
        sp.add_argument("--area", help="GeoJSON file or bbox W,S,E,N"),
        sp.add_argument("--towers", help="tower points: overpass[:URL], .osm.pbf, .geojson or .gpkg[:layer]"),
        sp.add_argument("--imagery", help=IMAGERY_HELP),
        sp.add_argument("--config", help="a label-maker config.json instead of --area/--towers/--imagery"),
        sp.add_argument("--zoom", type=ZOOM, default=18),
        sp.add_argument("--background-ratio", type=NON_NEGATIVE, default=3.0, help="background tiles per tower tile"),
        sp.add_argument("--span-negatives", type=NON_NEGATIVE, default=0.0,
                        help="negative tiles per tower tile taken along power=line spans between mapped towers "
                             "(default 0: none)"),
        sp.add_argument("--split", default="0.7,0.15,0.15", help="train,val,test fractions"),
        sp.add_argument("--seed", type=SEED, default=0),
        sp.add_argument("--extra-labels", help="review decisions (GeoPackage/GeoJSON points with a status field)"),
        sp.add_argument("--tower-filter", default="power=tower",
                        help="OSM tag filter: key=value[,value], key, or all"),
        sp.add_argument("--block-size", type=COUNT, default=8, help="split blocks are N x N tiles (default 8)"),
        sp.add_argument("--force", action="store_true",
                        help="allow a background-only dataset when there are no towers"),
        sp.add_argument("--max-tiles", type=COUNT, default=50_000_000, help="refuse areas covering more tiles"),
        sp.add_argument("--cache", help="cache imagery and Overpass answers in this folder"),
        sp.add_argument("--concurrency", type=COUNT, default=16, help="parallel imagery requests"),
    ]


def train_arguments(sp, remote=False):
    return [
        sp.add_argument("--data", required=True,
                        help="a tower-detector dataset directory (or a label-maker data.npz's)"),
        _out(sp, remote, "model directory to write (or to resume)"),
        sp.add_argument("--params", help="JSON file of hyperparameters (docs/training.md); flags below override it"),
        sp.add_argument("--weights", default="imagenet", help="imagenet (downloaded once by Keras), none, or an "
                        "Xception notop .h5 weights file (ignored with --init)"),
        sp.add_argument("--init", metavar="MODEL_DIR", help="fine-tune this trained model on --data instead of "
                        "starting afresh (a warm start: its recipe, backbone and input size are kept)"),
        *add_training_flags(sp, "train"),
        sp.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP),
    ]


def search_arguments(sp, remote=False):
    return [
        sp.add_argument("--data", required=True, help="a tower-detector dataset directory"),
        _out(sp, remote, "search directory to write (or to resume)"),
        sp.add_argument("--trials", type=COUNT, required=True, help="number of trials in all (the first 3 random)"),
        sp.add_argument("--space", help="JSON search space (default: the original project's; docs/training.md)"),
        sp.add_argument("--metric", default="pr_auc", choices=["pr_auc", "roc_auc", "accuracy"],
                        help="chooses the best trial on the validation split (default pr_auc); the test split's "
                        "figures only report"),
        sp.add_argument("--params", help="JSON file of fixed hyperparameters for every trial"),
        sp.add_argument("--weights", default="imagenet", help="imagenet, none, or an Xception notop .h5 file"),
        *add_training_flags(sp, "search"),
        sp.add_argument("--seed", type=SEED, default=0),
    ]


def predict_arguments(sp, remote=False):
    actions = [
        sp.add_argument("--model", required=True, help="model directory (from train or search's best/)"),
        sp.add_argument("--imagery", required=True, help=IMAGERY_HELP),
        sp.add_argument("--area", help="GeoJSON file or bbox W,S,E,N"),
        sp.add_argument("--tiles", help="a tile cover file from `tower-detector tiles --out` (instead of --area)"),
        _out(sp, remote, "results store: a directory or s3://bucket/prefix"),
        sp.add_argument("--zoom", type=ZOOM, default=18),
    ]
    if not remote:  # a remote job's children each take their own shard
        actions += [
            sp.add_argument("--shard", help="i/n: score only shard i of n (X-index ranges; for parallel workers)"),
            sp.add_argument("--processes", type=COUNT, default=1,
                            help="score in N CPU-only processes on this machine, each its share of the chunks, "
                                 "into the one store (default 1: this process)"),
            sp.add_argument("--gpus", type=COUNT, help="score in N processes, one per GPU (CUDA_VISIBLE_DEVICES "
                            "set for each), each its share of the chunks, into the one store"),
            sp.add_argument("--part", help=argparse.SUPPRESS),  # i/n: a --processes/--gpus child's share
        ]
    return actions + [
        sp.add_argument("--shards", type=COUNT, help="split the job into N shards (all scored here unless --shard)"),
        sp.add_argument("--workers", type=COUNT, default=16, help="concurrent imagery requests and decoders"),
        sp.add_argument("--rate-limit", type=POSITIVE, metavar="R", help=RATE_LIMIT_HELP_REMOTE if remote else
                        RATE_LIMIT_HELP),
        sp.add_argument("--checkpoint-every", type=COUNT, default=5000,
                        help="tiles per chunk: the unit of checkpoints"),
        sp.add_argument("--batch-size", type=COUNT, default=64),
        sp.add_argument("--max-tiles", type=COUNT, default=100_000_000),
        sp.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP),
        sp.add_argument("--imagery-name", help="the imagery's name for people (e.g. \"Esri World Imagery\"): kept "
                        "with the job, the changeset source of OSM exports"),
        sp.add_argument("--views", type=int, default=1, choices=[1, 2, 4, 8],
                        help="score each tile this many ways up (turned, and mirrored at 8) and average: steadier "
                             "scores for that many times the model's work (default 1)"),
    ]


def results_arguments(sp, remote=False):
    return [
        sp.add_argument("store", help="results store: a directory or s3://bucket/prefix"),
        sp.add_argument("--heatmap", help="heatmap GeoTIFF to write (EPSG:3857, one pixel per tile)"),
        sp.add_argument("--candidates", help="candidates GeoPackage to write (tiles at or above --threshold); an "
                        "existing one is merged into by tile, its review decisions kept"),
        *_cut_arguments(sp.add_mutually_exclusive_group()),
        sp.add_argument("--yes-threshold", type=float, default=0.97,
                        help="'Yes' band of the overlay (the original project's 0.97)"),
        sp.add_argument("--json", help="the original project's {\"x-y-z\": score} JSON"),
        sp.add_argument("--geojson", help="the original project's GeoJSON overlay (Maybe/Yes bands)"),
        sp.add_argument("--overwrite", action="store_true",
                        help="write the candidates GeoPackage afresh, discarding the review decisions in it"),
        sp.add_argument("--line-rescore", action="store_true",
                        help="re-rank the candidates by line topology before the cut: a tile with scored neighbours "
                        "200-500 m away on opposite sides gains, an isolated one loses (the candidates' score "
                        "becomes the re-scored value, score_raw keeps the model's; docs/cli.md)"),
        sp.add_argument("--lines", metavar="FILE",
                        help="mapped power=line ways (GeoJSON, .osm.pbf/.osm, a saved Overpass answer): a candidate "
                        "within 60 m of one gets line support; implies --line-rescore"),
    ]


def _cut_arguments(group):
    """results' candidate cut: a score threshold, or a review budget (one or the other)."""
    return [
        group.add_argument("--threshold", type=float, default=0.5,
                           help="candidate score cut (see the model's metrics.json)"),
        group.add_argument("--budget", type=COUNT, metavar="N",
                           help="N candidates in all: the threshold giving at most N (the top N scores; a tie at "
                           "the cut is left out whole), in place of --threshold"),
    ]


def conflate_arguments(sp, remote=False):
    return [
        sp.add_argument("--candidates", required=True, help="candidates GeoPackage; gets osm_flags, "
                        "osm_distance_m, osm_ref, and status already_mapped where still unreviewed"),
        sp.add_argument("--osm", required=True, help="overpass[:URL], .osm.pbf/.osm, GeoJSON, a saved Overpass "
                        "JSON answer, or .gpkg[:layer]"),
        sp.add_argument("--duplicate-distance", type=float, metavar="METRES",
                        help="a mapped tower, portal or pole this near a candidate's tower point means already "
                             "mapped (default 30)"),
        sp.add_argument("--buffer", type=float, help=argparse.SUPPRESS),  # gone: conflation decides by the point
        sp.add_argument("--cache", help="cache Overpass answers in this folder"),
    ]


def export_arguments(sp, remote=False):
    return [
        sp.add_argument("kind", help="osm, osm-reference, overlay, maproulette, maproulette-cooperative, "
                        "tasking-manager or labels (docs/cli.md)"),
        sp.add_argument("--candidates", required=True, help="candidates GeoPackage (from `results --candidates`)"),
        sp.add_argument("--out", required=True, help="output file (a folder for tasking-manager)"),
        sp.add_argument("--status", help="comma-separated review statuses to export, or all (default: the kind's)"),
        sp.add_argument("--min-score", type=float, help="export candidates scoring at least this"),
        sp.add_argument("--bbox", help="W,S,E,N: export the candidates whose point lies in this box (degrees)"),
        sp.add_argument("--comment", help="osm: the changeset comment (default: says what was added and how)"),
        sp.add_argument("--source", help="osm: the changeset source (default: the imagery's name the job kept, "
                        "else \"aerial imagery\")"),
        sp.add_argument("--hashtags", help='osm: changeset hashtags, "#one;#two"'),
        sp.add_argument("--yes-threshold", type=float, default=0.97,
                        help="the 'Yes' band (overlay, tasking-manager)"),
        sp.add_argument("--task-zoom", type=int, default=14, help="tasking-manager: tasks are tiles of this zoom"),
        sp.add_argument("--osm", help="osm, maproulette-cooperative: leave out towers OSM has, checked against "
                        "this source (as conflate's --osm; default: the candidates' last conflation)"),
        sp.add_argument("--include-near-duplicates", action="store_true", help="osm, maproulette-cooperative: "
                        "export every confirmed tower, even one OSM may have already"),
        sp.add_argument("--duplicate-distance", type=float, metavar="METRES", help="osm, maproulette-cooperative: "
                        "a mapped support this near a point means OSM has the tower (default: the conflation's, "
                        "else 30)"),
        sp.add_argument("--cache", help="cache Overpass answers in this folder (--osm overpass)"),
    ]


STAGES = [
    Stage("tiles", "Count and list the tiles that cover an area.", tiles_arguments),
    Stage("synthetic", "Write a synthetic aerial scene with HV towers, for tests and demos.", synthetic_arguments),
    Stage("dataset", "Build a label-maker-compatible training set of tower/background tiles.", dataset_arguments),
    Stage("train", "Train the Xception tower classifier on a dataset (resumes when run again).", train_arguments,
          inputs=("data", "params", "weights", "init"), gpu=True, remote=True),
    Stage("search", "Hyperopt TPE search over the training recipe (resumes when run again).", search_arguments,
          inputs=("data", "params", "space", "weights"), gpu=True, remote=True),
    Stage("predict", "Score every tile of an area into a results store (resumes when run again).",
          predict_arguments, inputs=("model", "tiles", "area"), splits=True, gpu=True, remote=True),
    Stage("results", "Merge a results store into a heatmap, candidates and the original project's formats.",
          results_arguments),
    Stage("conflate", "Flag candidates against the towers and lines already in OSM.", conflate_arguments),
    Stage("export", "Export reviewed candidates for JOSM, MapRoulette, the Tasking Manager or the next training "
          "set.", export_arguments),
]
STAGE = {s.name: s for s in STAGES}
SPLITTABLE = [s.name for s in STAGES if s.splits]
GPU = [s.name for s in STAGES if s.gpu]
REMOTE = [s.name for s in STAGES if s.remote]
ALIASES = {"sample": "synthetic"}  # old command names, still accepted with a note


def options(stage, **values):
    """A stage's arguments as its command parses them: every argument's default, then `values` by name (the
    argument's dest, e.g. checkpoint_every). What a library caller (a test, a benchmark) passes to a stage's
    function, as the CLI passes its parsed arguments. TypeError for a name the stage does not take."""
    actions = STAGE[stage].arguments(argparse.ArgumentParser(add_help=False))
    defaults = {a.dest: a.default for a in actions}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise TypeError(f"the {stage} stage takes no {', '.join(unknown)}")
    return argparse.Namespace(**{**defaults, **values})
