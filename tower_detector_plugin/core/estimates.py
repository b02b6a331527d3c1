"""What predicting N tiles costs in time and money, and whether an area of N tiles is allowed: from Settings."""

from dataclasses import dataclass

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
        return f"{max(hours * 3600, 1):.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def limit_check(tiles: int):
    """(level, text): level "ok", "warn" or "refuse", from the area limits in Settings."""
    warn, hard = settings.value("area/warn_tiles"), settings.value("area/max_tiles")
    if tiles > hard:
        return "refuse", f"{tiles:,} tiles is over the limit of {hard:,} (Settings): choose a smaller area"
    if tiles > warn:
        return "warn", f"{tiles:,} tiles is a large job (over {warn:,}): check the time and cost below"
    return "ok", ""
