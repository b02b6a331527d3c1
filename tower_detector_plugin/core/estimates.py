"""What predicting N tiles costs in time and money, and whether an area of N tiles is allowed: from Settings."""

from dataclasses import dataclass

from ..i18n import tr
from . import settings


@dataclass
class Estimate:
    local_hours: float
    gpu_hours: float
    remote_hours: float
    usd: float
    workers: int


def estimate_cost(tiles: int) -> Estimate:
    """Time and money to predict `tiles` tiles, from the throughput and price settings."""
    local = tiles / max(settings.value("estimate/local_tiles_per_s"), 1e-9) / 3600
    gpu = tiles / max(settings.value("estimate/remote_tiles_per_s"), 1e-9) / 3600
    workers = max(1, settings.value("estimate/remote_workers"))
    return Estimate(local, gpu, gpu / workers, gpu * settings.value("estimate/remote_usd_per_hour"), workers)


CHUNK_SECONDS = 60  # a local prediction's chunk: about a minute of work, so a cancel or a crash loses little


def local_chunk_tiles() -> int:
    """Tiles per chunk of a local prediction: a minute at this computer's rate (Settings), within 100 to 5,000
    (the backend's default, sized for S3)."""
    return int(min(5000, max(100, round(settings.value("estimate/local_tiles_per_s") * CHUNK_SECONDS))))


def format_hours(hours: float) -> str:
    if hours < 1 / 60:
        return tr("{n:.0f} s").format(n=max(hours * 3600, 1))
    if hours < 1:
        return tr("{n:.0f} min").format(n=hours * 60)
    if hours < 48:
        return tr("{n:.1f} h").format(n=hours)
    return tr("{n:.1f} days").format(n=hours / 24)


TRAIN_COST = 3.0  # a training step costs about three scoring steps of a tile (forward and backward passes)
DEFAULT_EPOCHS = 23  # the backend's recipe, when the dialog leaves epochs at "default": 3 + 20 (params.py)
CONFIRM_HOURS = 2.0  # a run estimated to take longer than this on this computer asks first


@dataclass
class Plan:
    """What a dialog's run will cost: the line it shows, and the question to ask first ("" if none)."""

    text: str
    question: str = ""
    refusal: str = ""


def _question(tiles: int, hours: float, what: str) -> str:
    """what: the run, already in words ("prediction", through tr())."""
    level, limit_text = limit_check(tiles) if tiles else ("ok", "")
    if level == "warn":
        return tr("{limit}. Start the {what}?").format(limit=limit_text, what=what)
    if hours > CONFIRM_HOURS:
        return tr("This {what} takes about {time} on this computer. Start it?").format(what=what,
                                                                                     time=format_hours(hours))
    return ""


def predict_plan(tiles: int, views: int = 1, remote: bool = False) -> Plan:
    """Scoring `tiles` tiles (an estimate of the area's cover) `views` times, here or on AWS."""
    est = estimate_cost(tiles * views)
    text = tr("≈ {tiles:,} tiles{views}: this computer ≈ {local}; AWS ≈ {gpu:,.2f} GPU-h, ≈ ${usd:,.2f}, ≈ {wall} "
              "with {workers} GPUs (rates in Settings)").format(
        tiles=tiles, views=tr(" x {n} views").format(n=views) if views > 1 else "",
        local=format_hours(est.local_hours), gpu=est.gpu_hours, usd=est.usd, wall=format_hours(est.remote_hours),
        workers=est.workers)
    level, limit_text = limit_check(tiles)
    if level == "refuse":
        return Plan(text, refusal=limit_text)
    return Plan(text, _question(tiles, 0.0 if remote else est.local_hours, tr("prediction")))


def dataset_plan(area_tiles: int) -> Plan:
    """Building training data over an area of `area_tiles` tiles: it fetches only the tiles it picks."""
    text = tr("area ≈ {tiles:,} tiles; the dataset fetches the tower tiles and about the background ratio as many "
              "others").format(tiles=area_tiles)
    level, limit_text = limit_check(area_tiles)
    if level == "refuse":
        return Plan(text, refusal=limit_text)
    return Plan(text, _question(area_tiles, 0.0, tr("dataset")))


def train_plan(train_tiles: int, epochs: int = None, remote: bool = False) -> Plan:
    """Training on `train_tiles` tiles for `epochs` epochs (None: the backend's recipe, at most DEFAULT_EPOCHS)."""
    n = epochs or DEFAULT_EPOCHS
    steps = train_tiles * n * TRAIN_COST  # in tile-scorings
    est = estimate_cost(int(steps))
    dollars = est.gpu_hours * settings.value("estimate/remote_usd_per_hour")  # one GPU
    epochs_text = tr("up to {n} epochs").format(n=n) if epochs is None else tr("{n} epochs").format(n=n)
    text = tr("{tiles:,} training tiles x {epochs}: this computer ≈ {local}; AWS ≈ {gpu}, ≈ ${usd:,.2f} (one GPU; "
              "rates in Settings)").format(tiles=train_tiles, epochs=epochs_text,
                                           local=format_hours(est.local_hours), gpu=format_hours(est.gpu_hours),
                                           usd=dollars)
    return Plan(text, _question(0, 0.0 if remote else est.local_hours, tr("training")))


def limit_check(tiles: int):
    """(level, text): level "ok", "warn" or "refuse", from the area limits in Settings."""
    warn, hard = settings.value("area/warn_tiles"), settings.value("area/max_tiles")
    if tiles > hard:
        return "refuse", tr("{tiles:,} tiles is over the limit of {hard:,} (Settings): choose a smaller area").format(
            tiles=tiles, hard=hard)
    if tiles > warn:
        return "warn", tr("{tiles:,} tiles is a large job (over {warn:,}): check the time and cost below").format(
            tiles=tiles, warn=warn)
    return "ok", ""
