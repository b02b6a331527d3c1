"""Tower points from OSM sources: the Overpass API, a .osm.pbf/.osm extract, a GeoJSON or a GeoPackage.

`load_towers(spec, ...)` reads any of them into `Towers` (WGS84 points with ids). Spec forms:
  overpass               the public Overpass API (needs an area)
  overpass:URL           any Overpass `interpreter` endpoint
  PATH.osm.pbf | .pbf | .osm | .osm.gz | .osm.bz2    an OSM extract, read with pyosmium
  PATH.geojson | .json   points with OSM tags as properties, flat or nested under "tags"; or a saved
                         Overpass JSON answer ({"elements": [...]}, nodes with "tags")
  PATH.gpkg, PATH.gpkg:LAYER, PATH.gpkg|layername=LAYER    a GeoPackage point layer (read with sqlite3)

`load_lines(spec, ...)` reads ways (power=line,minor_line by default) from the same sources into `Lines`:
Overpass (`way[...]` with `out geom`), OSM extracts, GeoJSON LineStrings and saved Overpass answers (ways
with "geometry" from `out geom`, or with "nodes" resolved against the answer's nodes). GeoPackage sources
give points only: lines from one are an empty Lines with a note saying so.

`tag_filter` takes "power=tower", "power=tower,pole", "power" or "all" (model.py: Towers, Lines, the filters).
Overpass is queried in chunks with a cache (overpass.py); files are read by files.py. Every problem a user can fix
is a UserError with a one-line reason.
"""

import os

from ...common.errors import UserError
from ...geo.areas import load_area
from .files import read_lines_file, read_towers_file
from .model import Lines, TagFilter, Towers, parse_tag_filter
from .overpass import CHUNK_DEGREES, DEFAULT_OVERPASS_URL, Overpass, overpass_chunks, overpass_query

__all__ = ["CHUNK_DEGREES", "DEFAULT_OVERPASS_URL", "Lines", "TagFilter", "Towers", "load_lines", "load_towers",
           "overpass_chunks", "overpass_query", "parse_tag_filter"]


def load_towers(spec, *, area=None, tag_filter="power=tower", overpass_url=None, cache_dir=None, timeout=180,
                retries=4, backoff=2.0, chunk_degrees=CHUNK_DEGREES, progress=None, log=None):
    """Tower points from `spec` (see the module docstring), inside `area` (an Area or area spec) when given.

    Overpass only: `timeout` is the query's [timeout:N] (the client waits a little longer), `retries` the
    extra tries after 429/50x answers, timeouts and connection errors (waiting Retry-After, else `backoff`
    seconds doubling each time; `log(line)` hears each retry), `cache_dir` keeps each chunk's answer,
    `progress(done, total)` is called per chunk. An Overpass answer with no towers is an empty Towers, not an error.
    """
    flt = parse_tag_filter(tag_filter)
    spec = str(spec).strip()
    area, client = _source(spec, area, "towers", overpass_url, timeout, retries, backoff, cache_dir, log)
    towers = client.towers(area.geometry, flt, chunk_degrees, progress) if client else read_towers_file(spec, flt)
    return towers if area is None else towers.within(area)


def load_lines(spec, *, area=None, tag_filter="power=line,minor_line", overpass_url=None, cache_dir=None,
               timeout=180, retries=4, backoff=2.0, chunk_degrees=CHUNK_DEGREES, progress=None, log=None):
    """Ways matching tag_filter from `spec` as Lines, those meeting `area` when given; arguments as load_towers."""
    flt = parse_tag_filter(tag_filter)
    if flt.key is None:
        raise UserError("tag filter 'all' is for plain point files; lines need a tag, e.g. power=line")
    spec = str(spec).strip()
    area, client = _source(spec, area, "lines", overpass_url, timeout, retries, backoff, cache_dir, log)
    lines = client.lines(area.geometry, flt, chunk_degrees, progress) if client else read_lines_file(spec, flt)
    return lines if area is None else lines.intersecting(area)


def _source(spec, area, what, overpass_url, timeout, retries, backoff, cache_dir, log=None):
    """(the area loaded, an Overpass client when spec names Overpass, else None)."""
    if isinstance(area, (str, os.PathLike)):
        area = load_area(str(area))
    if not (spec == "overpass" or spec.startswith("overpass:")):
        return area, None
    if area is None:
        raise UserError(f"the overpass {what} source needs an area to query")
    url = spec[len("overpass:"):] or overpass_url or DEFAULT_OVERPASS_URL
    return area, Overpass(url, timeout, retries, backoff, cache_dir, log)
