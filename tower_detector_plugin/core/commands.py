"""Backend argument lists, one pure function per CLI command (no Qt, no I/O), so each is unit-tested alone.

Every list ends with --events: the plugin always reads JSON-lines events. Secrets never appear here: an imagery
spec carries ${NAME} references, whose values travel in the subprocess environment. Defaults and choices are
core/parameters.py's.
"""

from ..i18n import tr
from .parameters import METRIC, VIEWS, ZOOM


def _opt(args: list, flag: str, value) -> None:
    """Append `flag value` unless value is None or ""."""
    if value is not None and value != "":
        args += [flag, str(value)]


def _need(**values) -> None:
    missing = [name.replace("_", " ") for name, v in values.items() if v is None or str(v).strip() == ""]
    if missing:
        raise ValueError(tr("missing: {join_missing}").format(join_missing=', '.join(missing)))


def tiles_args(area: str, zoom: int = ZOOM.default, out: str = None, shards: int = None, max_tiles: int = None) -> list:
    _need(area=area)
    args = ["tiles", "--area", str(area), "--zoom", str(int(zoom))]
    _opt(args, "--shards", shards)
    _opt(args, "--out", out)
    _opt(args, "--max-tiles", max_tiles)
    return [*args, "--events"]


def dataset_args(area: str, towers: str, imagery: str, out: str, *, zoom: int = ZOOM.default,
                 background_ratio: float = None, split: str = None, seed: int = None, block_size: int = None,
                 tower_filter: str = None, cache: str = None, max_tiles: int = None, extra_labels: str = None,
                 span_negatives: float = None) -> list:
    """towers: "overpass", "overpass:URL" or a GeoJSON/GeoPackage path (a layer exported in EPSG:4326)."""
    _need(area=area, towers=towers, imagery=imagery, out=out)
    args = ["dataset", "--area", str(area), "--towers", str(towers), "--imagery", str(imagery), "--out", str(out),
            "--zoom", str(int(zoom))]
    _opt(args, "--background-ratio", background_ratio)
    _opt(args, "--span-negatives", span_negatives)
    _opt(args, "--split", split)
    _opt(args, "--seed", seed)
    _opt(args, "--block-size", block_size)
    _opt(args, "--tower-filter", tower_filter)
    _opt(args, "--cache", cache)
    _opt(args, "--max-tiles", max_tiles)
    _opt(args, "--extra-labels", extra_labels)
    return [*args, "--events"]


def train_args(data: str, out: str, *, weights: str = None, params: str = None, image_size: int = None,
               epochs_top: int = None, epochs_fine: int = None, batch_size: int = None, seed: int = None,
               backbone: str = None, init: str = None) -> list:
    """init: a model folder to fine-tune (a warm start); weights and backbone are then the model's."""
    _need(data=data, out=out)
    args = ["train", "--data", str(data), "--out", str(out)]
    _opt(args, "--params", params)
    if init:
        _opt(args, "--init", init)
    else:
        _opt(args, "--weights", weights)
        _opt(args, "--backbone", backbone)
    _opt(args, "--image-size", image_size)
    _opt(args, "--epochs-top", epochs_top)
    _opt(args, "--epochs-fine", epochs_fine)
    _opt(args, "--batch-size", batch_size)
    _opt(args, "--seed", seed)
    return [*args, "--events"]


def search_args(data: str, out: str, trials: int, *, space: str = None, metric: str = None, params: str = None,
                weights: str = None, image_size: int = None, epochs_fine: int = None, batch_size: int = None,
                backbone: str = None) -> list:
    _need(data=data, out=out, trials=trials)
    if int(trials) < 1:
        raise ValueError(tr("trials must be at least 1"))
    if metric is not None and metric not in METRIC.choices:
        raise ValueError(tr("metric must be one of {choices}").format(choices=', '.join(METRIC.choices)))
    args = ["search", "--data", str(data), "--out", str(out), "--trials", str(int(trials))]
    _opt(args, "--space", space)
    _opt(args, "--metric", metric)
    _opt(args, "--params", params)
    _opt(args, "--weights", weights)
    _opt(args, "--backbone", backbone)
    _opt(args, "--image-size", image_size)
    _opt(args, "--epochs-fine", epochs_fine)
    _opt(args, "--batch-size", batch_size)
    return [*args, "--events"]


def predict_args(model: str, imagery: str, out: str, *, area: str = None, tiles: str = None, shard: str = None,
                 shards: int = None, workers: int = None, checkpoint_every: int = None, batch_size: int = None,
                 max_tiles: int = None, views: int = None, imagery_name: str = None) -> list:
    """Exactly one of area (GeoJSON or bbox) and tiles (a cover file from `tiles --out`). imagery_name: what the
    imagery is called (a QGIS connection or layer name), kept with the job as the OSM changeset's source."""
    _need(model=model, imagery=imagery, out=out)
    if bool(area) == bool(tiles):
        raise ValueError(tr("give exactly one of an area and a tile cover file"))
    args = ["predict", "--model", str(model), "--imagery", str(imagery)]
    _opt(args, "--imagery-name", imagery_name)
    _opt(args, "--area", area)
    _opt(args, "--tiles", tiles)
    args += ["--out", str(out)]
    _opt(args, "--shards", shards)
    _opt(args, "--shard", shard)
    _opt(args, "--workers", workers)
    _opt(args, "--checkpoint-every", checkpoint_every)
    _opt(args, "--batch-size", batch_size)
    _opt(args, "--max-tiles", max_tiles)
    if views not in (None, *VIEWS.choices):
        message = tr("views must be one of {choices}, not {views}")
        raise ValueError(message.format(choices=', '.join(map(str, VIEWS.choices)), views=views))
    _opt(args, "--views", None if views == VIEWS.default else views)
    return [*args, "--events"]


def results_args(store: str, *, heatmap: str = None, candidates: str = None, threshold: float = None,
                 json_path: str = None, geojson: str = None, line_rescore: bool = False) -> list:
    _need(store=store)
    if not any((heatmap, candidates, json_path, geojson)):
        raise ValueError(tr("ask for at least one output: heatmap, candidates, JSON or GeoJSON"))
    args = ["results", str(store)]
    _opt(args, "--heatmap", heatmap)
    _opt(args, "--candidates", candidates)
    _opt(args, "--threshold", threshold)
    _opt(args, "--json", json_path)
    _opt(args, "--geojson", geojson)
    if line_rescore:
        args.append("--line-rescore")
    return [*args, "--events"]


# --- remote (AWS) -----------------------------------------------------------------------------------------------
def _aws(args: list, profile: str = None, region: str = None) -> list:
    _opt(args, "--profile", profile)
    _opt(args, "--region", region)
    return args


def remote_submit_args(local_args: list, *, name: str = None, profile: str = None, region: str = None) -> list:
    """`remote submit KIND ...` from a local predict/train/search argument list (the backend mirrors their
    arguments); --yes because nobody can answer the cost prompt of an --events run."""
    kind = local_args[0]
    if kind not in ("predict", "train", "search"):
        raise ValueError(tr("remote jobs run predict, train or search, not {kind}").format(kind=kind))
    body = [a for a in local_args[1:] if a != "--events"]
    args = ["remote", "submit", kind, *body]
    _opt(args, "--name", name)
    return [*_aws(args, profile, region), "--yes", "--events"]


def remote_args(action: str, job: str, *, profile: str = None, region: str = None, out: str = None,
                threshold: float = None) -> list:
    """`remote status|cancel|logs|fetch JOB`."""
    if action not in ("status", "cancel", "logs", "fetch"):
        raise ValueError(tr("unknown remote action {action}").format(action=action))
    _need(job=job)
    args = ["remote", action, str(job)]
    if action == "fetch":
        _need(out=out)
        _opt(args, "--out", out)
        _opt(args, "--threshold", threshold)
    return [*_aws(args, profile, region), "--events"]


# --- review: exports and conflation -----------------------------------------------------------------------------
EXPORT_KINDS = ("osm", "osm-reference", "overlay", "maproulette", "maproulette-cooperative", "tasking-manager",
                "labels")


NODE_KINDS = ("osm", "maproulette-cooperative")  # exports that add nodes: checked for towers OSM already has


def export_args(kind: str, candidates: str, out: str, *, comment: str = None, source: str = None,
                hashtags: str = None, min_score: float = None, status: str = None, bbox=None, osm: str = None,
                include_near_duplicates: bool = False) -> list:
    """`export KIND --candidates C.gpkg --out PATH`: the reviewed candidates for OSM editing or training. For the
    kinds that add nodes: osm, an OSM source to leave out towers OSM has (default: the candidates' conflation), or
    include_near_duplicates to keep them all."""
    if kind not in EXPORT_KINDS:
        message = tr("unknown export {kind}; one of {join_EXPORT_KINDS}")
        raise ValueError(message.format(kind=kind, join_EXPORT_KINDS=', '.join(EXPORT_KINDS)))
    _need(candidates=candidates, out=out)
    args = ["export", kind, "--candidates", str(candidates), "--out", str(out)]
    if kind == "osm":  # the changeset tags: only the .osm file has a place for them
        _opt(args, "--comment", comment)
        _opt(args, "--source", source)
        _opt(args, "--hashtags", hashtags)
    if kind in NODE_KINDS:
        _opt(args, "--osm", osm)
        if include_near_duplicates:
            args.append("--include-near-duplicates")
    _opt(args, "--min-score", min_score)
    _opt(args, "--status", status)
    _opt(args, "--bbox", ",".join(f"{v:.7f}" for v in bbox) if bbox else None)
    return [*args, "--events"]


def conflate_args(candidates: str, osm: str, *, duplicate_m: float = None) -> list:
    """`conflate --candidates C.gpkg --osm SRC`: mark candidates OSM already has, flag misplaced towers."""
    _need(candidates=candidates, osm=osm)
    args = ["conflate", "--candidates", str(candidates), "--osm", str(osm)]
    _opt(args, "--duplicate-distance", duplicate_m)
    return [*args, "--events"]
