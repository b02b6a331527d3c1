"""Imagery: 256x256x3 uint8 tiles for zoom-z tile ids, read concurrently from four kinds of source.

    with open_imagery("https://tiles.example.com/{z}/{x}/{y}.jpg?access_token=...", cache_dir="cache") as src:
        print(src.description)                     # the spec with secrets replaced by ***
        for t in src.fetch(cover):                 # TileResult(x, y, z, image, error), in input order
            ...
        images, errors = src.fetch_batch(xs, ys, 18)

open_imagery(spec, *, cache_dir=None, concurrency=16, rate_limit=None, retries=4, timeout=20.0, deadline=60.0,
             backoff=0.5, tms=False, subdomains="abc", tile_size=256, bands=None, request_log=None) -> ImagerySource
    picks the source from the spec's form; each lives in its own module, behind the base class in base.py (which
    documents fetching, failures, the cache and secrets):
    XYZ/TMS template  http(s)://...{z}/{x}/{y}...                                     xyz.py
    GeoTIFF/COG/VRT   a path, http(s) URL, s3:// or /vsi... path ending .tif, .tiff or .vrt     geotiff.py
    MBTiles           a local .mbtiles file                                               mbtiles.py
    tile directory    a directory or s3://bucket/prefix of x-y-z.{jpg,png,webp} files     tiledir.py
    is_tile_template(spec): whether the spec is the first form, whose requests `rate_limit` (requests/s, one bucket
    for the template's host) limits; the other forms make no such requests and ignore it.
    request_log: a RequestLog (base.py) to fill with each request's latency and outcome (XYZ sources only).
    ${NAME} in a spec is replaced by the environment variable's value (how a secret reaches the backend without a
    command line or a file); the description keeps ${NAME}. Anything else is a UserError naming the forms.
"""

import os
import re
from urllib.parse import urlsplit

from ...common.errors import UserError
from ...common.redaction import redact
from ...geo.tilemath import TILE_SIZE
from .base import (
    FAIL_FAST,
    TRANSIENT_KINDS,
    ImagerySource,
    ImageryUnreachable,
    OutageGuard,
    RequestLog,
    TileResult,
    decode_tile,
)
from .geotiff import GeoTiffSource
from .mbtiles import MBTilesSource
from .tiledir import TileDirSource
from .xyz import XyzSource

__all__ = ["FAIL_FAST", "TRANSIENT_KINDS", "GeoTiffSource", "ImagerySource", "ImageryUnreachable", "MBTilesSource",
           "OutageGuard", "RequestLog", "TileDirSource", "TileResult", "XyzSource", "decode_tile", "is_tile_template",
           "open_imagery",
           "redact"]

_FORMS = ("an XYZ URL template (https://.../{z}/{x}/{y}.png), a GeoTIFF/COG/VRT (.tif, .tiff or .vrt: a path, "
          "an http(s) URL or s3://), an .mbtiles file, or a directory or s3://bucket/prefix of x-y-z.jpg/png/webp "
          "tiles")


def open_imagery(spec, *, cache_dir=None, concurrency=16, rate_limit=None, retries=4, timeout=20.0, deadline=60.0,
                 backoff=0.5, tms=False, subdomains="abc", tile_size=TILE_SIZE, bands=None, request_log=None):
    """An ImagerySource for `spec` (see the module docstring for the forms); UserError for anything else."""
    written = os.fspath(spec).strip()
    source = _open(_expand_env(written), cache_dir, concurrency, rate_limit, retries, timeout, deadline, backoff,
                   tms, subdomains, tile_size, bands)
    source.request_log = request_log
    if "${" in written:  # keep ${NAME}, never its value, wherever the spec is shown or stored
        source.description = redact(written)
    return source


def is_tile_template(spec):
    """Whether the spec is an XYZ/TMS URL template (one request a tile: what `rate_limit` limits)."""
    spec = os.fspath(spec).strip()
    return spec.lower().startswith(("http://", "https://")) and any(k in spec for k in ("{x}", "{-y}", "{q}"))


def _expand_env(spec):
    """${NAME} references -> their environment values: how secrets reach us without a command line or file."""
    def value(match):
        name = match.group(1)
        if name not in os.environ:
            raise UserError(f"the imagery spec refers to ${{{name}}}, which is not set in the environment")
        return os.environ[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value, spec)


def _open(spec, cache_dir, concurrency, rate_limit, retries, timeout, deadline, backoff, tms, subdomains, tile_size,
          bands):
    common = dict(cache_dir=cache_dir, concurrency=concurrency, tile_size=tile_size)
    lower = spec.lower()
    is_url = lower.startswith(("http://", "https://"))
    remote = is_url or lower.startswith(("s3://", "/vsi"))
    path = urlsplit(spec).path.lower() if is_url else lower
    if is_tile_template(spec):
        return XyzSource(spec, tms=tms, subdomains=subdomains, retries=retries, timeout=timeout, deadline=deadline,
                         backoff=backoff, rate_limit=rate_limit, **common)
    if path.endswith((".tif", ".tiff", ".vrt")):
        if not remote and not os.path.isfile(spec):
            raise UserError(f"imagery file not found: {spec}")
        return GeoTiffSource(spec, bands=bands, retries=retries, timeout=timeout, backoff=backoff, **common)
    if path.endswith(".mbtiles"):
        if remote:
            raise UserError(f"MBTiles must be a local file, not {redact(spec)}")
        if not os.path.isfile(spec):
            raise UserError(f"imagery file not found: {spec}")
        return MBTilesSource(spec, **common)
    if lower.startswith("s3://") or (not remote and os.path.isdir(spec)):
        return TileDirSource(spec, retries=retries, timeout=timeout, **common)
    if not remote and not os.path.exists(spec):
        raise UserError(f"imagery not found: {spec}; expected {_FORMS}")
    raise UserError(f"unrecognised imagery {redact(spec)}; expected {_FORMS}")
