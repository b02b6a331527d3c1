"""Exports of a reviewed candidates GeoPackage: to get towers mapped in OSM, and back into training.

    summary = export("osm", "zambia.gpkg", "zambia.osm", source="Esri World Imagery", hashtags="#towers")

Every kind reads the `candidates` layer of a GeoPackage written by `tower-detector results --candidates` (its
statuses as the QGIS review dock writes them), keeps the rows whose status and score pass the filters, and
writes its output to a temp file next to the final name, renamed at the end: a failure never leaves a
half-written file. Bad input (a missing or foreign file, nothing to export, an unwritable output) is a
UserError with a one-line reason, and then nothing is written.

Kinds, and the documents they follow:
  osm             JOSM's .osm file (OSM XML 0.6 with JOSM's extensions; wiki.openstreetmap.org/wiki/JOSM_file_format):
                  the confirmed candidates' points (point_lon/point_lat, where the reviewer put them) as new nodes,
                  ids -1, -2, ... and no action attribute, tagged power=tower and nothing else (no score or tile
                  tags: they are not map data). A point no reviewer placed (the detector's CAM point, or the tile
                  centre) gets fixme=UNPLACED_FIXME as well, which JOSM's validator lists before an upload: the
                  mapper moves the node onto the tower or drops it. Points closer to a better-ranked one than
                  their error allows are one tower (two tiles sharing a tower on their edge are both candidates)
                  and become one node: within MERGE_M where both points were placed by reviewers, within
                  DETECTOR_MERGE_M where either is the detector's. The osm element
                  has upload="false", so JOSM asks before uploading, and a <changeset> element whose tags (comment,
                  source, hashtags) JOSM keeps as the layer's changeset tags for its upload dialog. The source is
                  the imagery's name (--source, else the job's imagery_name, else GENERIC_SOURCE), never a host or
                  a file name.
  osm-reference   the candidate squares as closed ways (corner nodes shared by neighbours) tagged
                  tower_detector:candidate=yes, tower_detector:score, :rank, :status and :tile_id, with
                  upload="never": a reference layer to lock in JOSM, never data to upload.
  overlay         the original project's GeoJSON overlay, written by results.write_overlay_geojson (x, y, z, prob,
                  Maybe/Yes).
  maproulette     MapRoulette's line-by-line GeoJSON (learn.maproulette.org, "Line-by-Line GeoJSON Format"; RFC 7464):
                  one task per candidate, a line of RS (0x1E) then a FeatureCollection of one Point feature at the
                  candidate point. Properties: id "z/x/y" (MapRoulette takes the `id` property as the task's external
                  id; it has no OSM-id shape such as node/123, so it is never taken for one), tile_id, prob, rank,
                  status and tile_bbox "west,south,east,north" (the tile the model scored).
  maproulette-cooperative  MapRoulette's cooperative challenge (learn.maproulette.org, "Cooperative Challenges",
                  the GeoJSON variant, as mr-cli writes it): each confirmed point's line also carries cooperativeWork
                  {"meta": {"version": 2, "type": 2}, "file": {"type": "xml", "format": "osc", "encoding":
                  "base64", "content": ...}}, content the RFC 4648 base64 of an osmChange whose <create> holds the
                  new node (id -1, power=tower), which JOSM loads when the mapper edits the task.
  tasking-manager a folder for a HOT Tasking Manager project with arbitrary tasks (learnosm.org "Tasking Manager
                  Administrator Guide", define arbitrary geometries; TM's GridService.tasks_from_aoi_features, which
                  takes every Polygon/MultiPolygon feature as a task and keeps its properties as the task's
                  extra_properties): tasks.geojson groups the candidates by their zoom-`task_zoom` tile (14: about
                  2.4 km at the equator), one Polygon per tile holding candidates, with properties tile_id,
                  candidates, max_score, yes (at or above the Yes threshold) and confirmed. aoi.geojson is the union
                  of the tasks as one MultiPolygon feature (the job table stores the cover's hash, not an area
                  polygon, and TM's arbitrary tasks must make up the project area anyway). priority_areas.geojson is
                  the union of the tasks with a Yes candidate, one Polygon feature per part (TM stores priority
                  areas as Polygons only). RFC 7946: WGS84 lon/lat, no crs member, exterior rings counter-clockwise,
                  coordinates to 1e-7 degrees. The folder is built beside `out` and swapped in whole; a folder
                  holding other files is refused, not replaced.
  labels          the review's feedback for the next training set: confirmed candidates at their points and false
                  positives at their candidate points (the tile centre if the point is not inside the tile), with
                  fields status, tile_id and score, as GeoJSON (.geojson, .json) or a GeoPackage (.gpkg, layer
                  `labels`): what `tower-detector dataset --extra-labels` reads.

Default statuses: osm, maproulette-cooperative: confirmed only (always); labels: confirmed and false_positive
(always); maproulette: unreviewed and unsure; overlay: all but false_positive; tasking-manager: all but
false_positive, already_mapped and bad_imagery; osm-reference: all.

Kinds that add nodes to OSM (NODE_KINDS) leave out the points within the duplicate distance of a mapped tower,
portal or pole: OSM has that tower already. They check against `osm` when given (any source conflate reads;
Overpass is asked around the candidates), else against the supports the last `tower-detector conflate` kept in the
GeoPackage (with its duplicate distance), so a point a reviewer moved since is checked where it is now. Candidates
never conflated, with no `osm` either, are refused: nothing proves they are not duplicates.
include_near_duplicates exports them all, unchecked.
"""

import base64
import json
import os
import re
import sqlite3
import xml.etree.ElementTree as ET
from contextlib import closing
from pathlib import Path

import numpy as np
import shapely

from .. import __version__
from ..common.atomic import building, remove_if_present, temp_path
from ..common.errors import UserError
from ..geo.cover import tile_lonlat
from ..geo.tilemath import EARTH_RADIUS
from ..results import GPKG_CORE, check_fraction, gpkg_points, insert_srs, write_overlay_geojson
from ..training.evaluate import score_of_probability

STATUSES = ("unreviewed", "confirmed", "false_positive", "already_mapped", "misplaced", "unsure", "bad_imagery")
KINDS = ("osm", "osm-reference", "overlay", "maproulette", "maproulette-cooperative", "tasking-manager", "labels")
FIXED_STATUSES = {"osm": ("confirmed",), "maproulette-cooperative": ("confirmed",),
                  "labels": ("confirmed", "false_positive")}
DEFAULT_STATUSES = {"osm-reference": STATUSES, "overlay": tuple(s for s in STATUSES if s != "false_positive"),
                    "maproulette": ("unreviewed", "unsure"),
                    "tasking-manager": tuple(s for s in STATUSES
                                             if s not in ("false_positive", "already_mapped", "bad_imagery"))}
NODE_KINDS = ("osm", "maproulette-cooperative")  # the kinds whose output adds nodes to OSM
DEFAULT_COMMENT = "Add power towers checked on imagery (candidates found by tower-detector)"
GENERIC_SOURCE = "aerial imagery"  # the changeset source when the job names no imagery
MEAN_EARTH_RADIUS = 6371008.8
MERGE_M = 10.0  # reviewer-placed points closer than this are one tower (towers stand 250-450 m apart on a line)
# a point the detector placed is one tower with another this near: about its median error on the synthetic
# benchmark (docs/benchmarks/train_quality.md), still well under the spacing of towers on a line
DETECTOR_MERGE_M = 25.0
UNPLACED_FIXME = "position estimated by Tower Detector, not placed by a reviewer: move the node onto the tower"
COLUMNS = ("fid", "tile_id", "x", "y", "z", "score", "rank", "point_lon", "point_lat", "point_source", "status",
           "reviewer")
GENERATOR = f"tower-detector {__version__}"
_NOT_CANDIDATES = "is not a candidates GeoPackage (from `tower-detector results --candidates`)"


def export(kind, candidates, out, *, statuses=None, min_score=None, bbox=None, comment=None, source=None,
           hashtags=None, yes_threshold=0.97, task_zoom=14, osm=None, include_near_duplicates=False,
           duplicate_m=None, cache_dir=None):
    """Write one export of a candidates GeoPackage (see the module docstring); return its summary.

    statuses: "a,b", a list, "all" or None (the kind's default); min_score: keep scores at or above it;
    bbox: "W,S,E,N" (or a 4-tuple) in degrees: keep the candidates whose point lies in it;
    comment (None: DEFAULT_COMMENT), source (None: the job's imagery name) and hashtags ("#a;#b"): osm's changeset
    tags. NODE_KINDS: osm (an OSM source), include_near_duplicates, duplicate_m (None: the conflation's, or
    conflate.DUPLICATE_M with osm) and cache_dir (Overpass answers) for the duplicate check.
    Summary: kind, out, candidates (rows in the file), exported, statuses {status: count exported}, and per kind
    merged (osm, maproulette-cooperative), near_duplicates, duplicate_m and checked_against (NODE_KINDS; None when
    not checked), tasks and priority_areas (tasking-manager), files (tasking-manager).
    """
    if kind not in KINDS:
        raise UserError(f"unknown export kind {kind!r}: one of {', '.join(KINDS)}")
    out = os.fspath(out)
    yes_threshold = check_fraction(yes_threshold, "--yes-threshold")
    rows, job = read_candidates(candidates)
    yes_score = score_of_probability(yes_threshold, job.get("calibration"))  # the "Yes" band is a probability
    wanted = _statuses(kind, statuses)
    keep = np.ones(len(rows["fid"]), bool) if wanted is None else np.isin(rows["status"], wanted)
    if min_score is not None:
        keep &= rows["score"].astype(np.float32) >= np.float32(check_fraction(min_score, "--min-score"))
    if bbox is not None:
        w, s, e, n = _bbox(bbox)
        lon, lat = rows["point_lon"], rows["point_lat"]
        keep &= (lon >= w) & (lon <= e) & (lat >= s) & (lat <= n)
    if not keep.any():
        what = "any status" if wanted is None else " or ".join(wanted)
        cut = f" scoring at least {min_score}" if min_score is not None else ""
        cut += f" inside {bbox}" if bbox is not None else ""
        raise UserError(f"nothing to export: no candidates in {os.path.basename(candidates)} with status {what}{cut}")
    checked = {}
    if kind in NODE_KINDS:
        checked = {"near_duplicates": None, "duplicate_m": None, "checked_against": None}
        if not include_near_duplicates:
            near, checked["duplicate_m"], checked["checked_against"] = _mapped_nearby(
                {k: v[keep] for k, v in rows.items()}, candidates, job, osm, duplicate_m, cache_dir)
            checked["near_duplicates"] = int(near.sum())
            if near.all():
                raise UserError(f"nothing to export: all {near.size} confirmed candidates are within "
                                f"{checked['duplicate_m']:g} m of a mapped tower or pole (checked against "
                                f"{checked['checked_against']}); --include-near-duplicates exports them anyway")
            keep[np.flatnonzero(keep)[near]] = False
    picked = {k: v[keep] for k, v in rows.items()}
    summary = {"kind": kind, "out": out, "candidates": len(rows["fid"]), "exported": int(keep.sum()),
               "statuses": dict(zip(*(a.tolist() for a in np.unique(picked["status"], return_counts=True)))),
               **checked}
    if kind == "osm":
        summary.update(_osm(picked, out, comment or DEFAULT_COMMENT, _source(source, job), _hashtags(hashtags)))
    elif kind == "osm-reference":
        _write(out, _osm_reference(picked), ".osm")
    elif kind == "overlay":
        _write(out, lambda tmp: write_overlay_geojson(tmp, int(picked["z"][0]), picked["x"], picked["y"],
                                                      picked["score"], yes_score), ".geojson", ".json")
    elif kind in ("maproulette", "maproulette-cooperative"):
        summary.update(_maproulette(picked, out, cooperative=kind == "maproulette-cooperative"))
    elif kind == "tasking-manager":
        summary.update(_tasking_manager(picked, out, yes_score, task_zoom))
    else:
        _labels(picked, out)
    return summary


# ---------------------------------------------------------------------------------------------
# reading and checks
# ---------------------------------------------------------------------------------------------
def read_candidates(path):
    """({column: numpy array} of the candidates layer in rank order, {key: value} of the job table) of a
    candidates GeoPackage; job values that are JSON text are decoded. All candidates share one zoom."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise UserError(f"candidates file not found: {path}")
    try:
        with closing(sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)) as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(candidates)")}
            missing = [c for c in COLUMNS if c not in have]
            if missing:
                why = "it has no candidates layer" if not have else f"its candidates layer lacks {', '.join(missing)}"
                raise UserError(f"{name} {_NOT_CANDIDATES}: {why}")
            values = db.execute(f"SELECT {', '.join(COLUMNS)} FROM candidates ORDER BY rank, fid").fetchall()
            has_job = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job'").fetchone()
            job = dict(db.execute("SELECT key, value FROM job").fetchall()) if has_job else {}
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{name} {_NOT_CANDIDATES}: {exc}") from None
    cols = list(zip(*values)) if values else [()] * len(COLUMNS)
    rows = {}
    for column, data in zip(COLUMNS, cols):
        if column in ("fid", "x", "y", "z", "rank"):
            rows[column] = np.array(data, dtype=np.int64)
        elif column in ("score", "point_lon", "point_lat"):
            rows[column] = np.array([np.nan if v is None else v for v in data], dtype=np.float64)
        else:
            rows[column] = np.array(data, dtype=object)
    zooms = sorted(set(rows["z"].tolist()))
    if len(zooms) > 1:
        raise UserError(f"{name}: candidates of several zooms ({zooms}); expected one")
    rows["status"] = np.array(["unreviewed" if v is None else v for v in rows["status"]], dtype=object)
    # the point where the reviewer left it; the tile centre where a client cleared it
    lon, lat = tile_lonlat(rows["x"] + 0.5, rows["y"] + 0.5, zooms[0] if zooms else 0)
    unset = np.isnan(rows["point_lon"]) | np.isnan(rows["point_lat"])
    rows["point_lon"] = np.where(unset, lon, rows["point_lon"])
    rows["point_lat"] = np.where(unset, lat, rows["point_lat"])
    rows["point_source"] = np.where(unset, "tile_centre", rows["point_source"]).astype(object)
    return rows, {k: _json_or_text(v) for k, v in job.items()}


def _bbox(value):
    try:
        w, s, e, n = (float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise UserError(f"--bbox {value!r} is not W,S,E,N in degrees") from None
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise UserError(f"--bbox {value!r} is not W,S,E,N in degrees with W < E and S < N")
    return w, s, e, n


def _json_or_text(value):
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _statuses(kind, statuses):
    """The statuses to export, or None for every status."""
    if kind in FIXED_STATUSES:
        if statuses is not None and set(_parse_statuses(statuses) or STATUSES) != set(FIXED_STATUSES[kind]):
            raise UserError(f"export {kind} takes {' and '.join(FIXED_STATUSES[kind])} candidates only; "
                            "--status is for the other kinds")
        return list(FIXED_STATUSES[kind])
    return list(DEFAULT_STATUSES[kind]) if statuses is None else _parse_statuses(statuses)


def _parse_statuses(statuses):
    values = [v.strip() for v in (statuses.split(",") if isinstance(statuses, str) else statuses) if v.strip()]
    if values == ["all"]:
        return None
    unknown = [v for v in values if v not in STATUSES]
    if unknown or not values:
        raise UserError(f"unknown --status {', '.join(unknown) or '(empty)'}: "
                        f"use all, or some of {', '.join(STATUSES)}")
    return values


def _source(source, job):
    """The changeset's source: --source, else the imagery's name the job kept (`predict --imagery-name`), else
    GENERIC_SOURCE; never a host or a file name, which say nothing to a mapper (and a host may be private)."""
    name = job.get("imagery_name")
    return source or (str(name).strip() if name not in (None, "") else "") or GENERIC_SOURCE


def _mapped_nearby(rows, candidates, job, osm, duplicate_m, cache_dir):
    """(mask of the rows whose point is within the duplicate distance of a mapped support, that distance, what
    they were checked against): see the module docstring."""
    from .conflate import DUPLICATE_M, check_duplicate_m, load_supports, stored_supports  # conflate imports us

    if osm is not None:
        supports = load_supports(osm, rows, cache_dir=cache_dir)
        against, default = f"OSM from {supports.source}", DUPLICATE_M
    else:
        supports, record = stored_supports(candidates)
        if supports is None:
            what = ("was conflated by an older version, which kept no OSM supports to check against" if
                    "conflation" in job else "was never conflated with OSM")
            raise UserError(f"{os.path.basename(candidates)} {what}, so towers OSM already has could be added again: "
                            "run `tower-detector conflate` on it, give --osm, or pass --include-near-duplicates")
        later = _not_conflated(candidates, rows["fid"])
        if later:
            raise UserError(f"{later} of the candidates to export in {os.path.basename(candidates)} came after its "
                            "last conflation (a later `results`), so towers OSM already has could be added again: "
                            "run `tower-detector conflate` on it again, give --osm, or pass --include-near-duplicates")
        against = f"the conflation of {record.get('time', 'an earlier run')} with {supports.source}"
        default = record.get("duplicate_m", DUPLICATE_M)
    distance = check_duplicate_m(default if duplicate_m is None else duplicate_m)
    near = np.zeros(len(rows["fid"]), bool)
    if len(supports):
        i, _, _ = pairs_within(rows["point_lon"], rows["point_lat"], supports.lon, supports.lat, distance)
        near[i] = True
    return near, distance, against


def _not_conflated(candidates, fids):
    """How many of the rows `fids` no conflation has looked at (osm_flags is NULL: added by a later merge)."""
    with closing(sqlite3.connect(Path(candidates).resolve().as_uri() + "?mode=ro", uri=True)) as db:
        flags = dict(db.execute("SELECT fid, osm_flags FROM candidates").fetchall())
    return sum(flags.get(int(fid)) is None for fid in fids)


def _hashtags(text):
    if not text:
        return None
    tags = [t.strip() for t in text.split(";") if t.strip()]
    if not all(re.fullmatch(r"#\S+", t) for t in tags):
        raise UserError(f"--hashtags must look like \"#one;#two\", not {text!r}")
    return ";".join(tags)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _write(path, content, *suffixes):
    """Write bytes, text or content(temp_path) to path atomically: a temp file next to it, then a rename."""
    if suffixes and not path.lower().endswith(suffixes):
        raise UserError(f"the output {path} must end with {' or '.join(suffixes)}")
    tmp = temp_path(path)
    try:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(tmp, path)
    except (OSError, sqlite3.OperationalError) as exc:
        raise UserError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        remove_if_present(tmp)


def _xml(root):
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n"


def _deg(value):
    return f"{value:.7f}"  # OSM's precision (~1 cm)


def _tower_node(parent, node_id, lon, lat, placed=True):
    node = ET.SubElement(parent, "node", id=str(node_id), lat=_deg(lat), lon=_deg(lon))
    ET.SubElement(node, "tag", k="power", v="tower")
    if not placed:
        ET.SubElement(node, "tag", k="fixme", v=UNPLACED_FIXME)


def _placed(rows):
    """Which rows' points a reviewer placed (point_source reviewer), not the detector."""
    return rows["point_source"] == "reviewer"


def _one_per_tower(rows):
    """_distinct_points with each point's merge distance: MERGE_M when a reviewer placed it, else DETECTOR_MERGE_M."""
    return _distinct_points(rows["point_lon"], rows["point_lat"],
                            np.where(_placed(rows), MERGE_M, DETECTOR_MERGE_M))


def _osm(rows, out, comment, source, hashtags):
    keep = _one_per_tower(rows)
    placed = _placed(rows)
    root = ET.Element("osm", version="0.6", generator=GENERATOR, upload="false")
    changeset = ET.SubElement(root, "changeset")
    for key, value in (("comment", comment), ("source", source), ("hashtags", hashtags)):
        if value:
            ET.SubElement(changeset, "tag", k=key, v=value)
    for i, (lon, lat, by_reviewer) in enumerate(zip(rows["point_lon"][keep].tolist(), rows["point_lat"][keep].tolist(),
                                                    placed[keep].tolist()), 1):
        _tower_node(root, -i, lon, lat, by_reviewer)
    _write(out, _xml(root), ".osm")
    return {"nodes": int(keep.sum()), "merged": int((~keep).sum()), "unplaced": int((keep & ~placed).sum()),
            "source": source}


def _osm_reference(rows):
    x, y, z = rows["x"], rows["y"], int(rows["z"][0])
    # corners counter-clockwise from the south-west, as integer tile-grid points shared with the neighbours
    cx, cy = np.stack([x, x + 1, x + 1, x], axis=1), np.stack([y + 1, y + 1, y, y], axis=1)
    corners, corner_of = np.unique(cx * ((1 << z) + 1) + cy, return_inverse=True)
    corner_of = corner_of.reshape(-1, 4)
    lon, lat = tile_lonlat(corners // ((1 << z) + 1), corners % ((1 << z) + 1), z)
    root = ET.Element("osm", version="0.6", generator=GENERATOR, upload="never")
    for i, (lo, la) in enumerate(zip(lon.tolist(), lat.tolist()), 1):
        ET.SubElement(root, "node", id=str(-i), lat=_deg(la), lon=_deg(lo))
    for k, refs in enumerate(corner_of.tolist()):
        way = ET.SubElement(root, "way", id=str(-(len(corners) + k + 1)))  # ids apart from the nodes'
        for ref in refs + refs[:1]:
            ET.SubElement(way, "nd", ref=str(-(ref + 1)))
        for key, value in (("candidate", "yes"), ("tile_id", rows["tile_id"][k]), ("score", f"{rows['score'][k]:g}"),
                           ("rank", str(rows["rank"][k])), ("status", rows["status"][k])):
            ET.SubElement(way, "tag", k=f"tower_detector:{key}", v=str(value))
    return _xml(root)


def _maproulette(rows, out, cooperative):
    keep = _one_per_tower(rows) if cooperative else np.ones(len(rows["fid"]), bool)
    rows = {k: v[keep] for k, v in rows.items()}
    placed = _placed(rows)
    x, y, z = rows["x"], rows["y"], int(rows["z"][0])
    w, n = tile_lonlat(x, y, z)
    e, s = tile_lonlat(x + 1, y + 1, z)
    lines = []
    for i in range(len(x)):
        lon, lat = round(float(rows["point_lon"][i]), 7), round(float(rows["point_lat"][i]), 7)
        props = {"id": f"{z}/{x[i]}/{y[i]}", "tile_id": rows["tile_id"][i], "prob": round(float(rows["score"][i]), 3),
                 "rank": int(rows["rank"][i]), "status": rows["status"][i],
                 "tile_bbox": ",".join(f"{v:.7f}" for v in (w[i], s[i], e[i], n[i]))}
        task = {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]}, "properties": props}]}
        if cooperative:
            change = ET.Element("osmChange", version="0.6", generator=GENERATOR)
            _tower_node(ET.SubElement(change, "create"), -1, lon, lat, bool(placed[i]))
            task["cooperativeWork"] = {"meta": {"version": 2, "type": 2}, "file": {
                "type": "xml", "format": "osc", "encoding": "base64",
                "content": base64.b64encode(_xml(change)).decode("ascii")}}
        lines.append("\x1e" + json.dumps(task, separators=(",", ":")) + "\n")
    _write(out, "".join(lines))
    return {"tasks": len(lines), **({"merged": int((~keep).sum()), "unplaced": int((~placed).sum())}
                                    if cooperative else {})}


def _tasking_manager(rows, out, yes_threshold, task_zoom):
    zoom = int(rows["z"][0])
    if not (isinstance(task_zoom, int) and 0 <= task_zoom <= zoom):
        raise UserError(f"--task-zoom must be a whole number from 0 to the candidates' zoom {zoom}, not {task_zoom}")
    shift = zoom - task_zoom
    tiles, task_of = np.unique(np.stack([rows["x"] >> shift, rows["y"] >> shift], axis=1), axis=0,
                               return_inverse=True)
    task_of = task_of.ravel()
    count = np.bincount(task_of, minlength=len(tiles))
    best = np.full(len(tiles), -np.inf)
    np.maximum.at(best, task_of, rows["score"])
    # float32 like the scores as the model gave them, so a cut of 0.97 keeps a score of 0.97
    yes = np.bincount(task_of, weights=rows["score"].astype(np.float32) >= np.float32(yes_threshold),
                      minlength=len(tiles))
    confirmed = np.bincount(task_of, weights=rows["status"] == "confirmed", minlength=len(tiles))
    w, n = tile_lonlat(tiles[:, 0], tiles[:, 1], task_zoom)
    e, s = tile_lonlat(tiles[:, 0] + 1, tiles[:, 1] + 1, task_zoom)
    boxes = shapely.box(w, s, e, n)
    tasks = [_feature(box, {"tile_id": f"{tx}-{ty}-{task_zoom}", "candidates": int(c), "max_score": round(float(b), 3),
                            "yes": int(k), "confirmed": int(f)})
             for box, (tx, ty), c, b, k, f in zip(boxes, tiles.tolist(), count, best, yes, confirmed)]
    aoi = shapely.union_all(boxes)
    priority = shapely.get_parts(shapely.union_all(boxes[yes > 0])) if (yes > 0).any() else []
    layers = {"tasks": tasks, "aoi": [_feature(shapely.MultiPolygon(list(shapely.get_parts(aoi))),
                                               {"name": "tower-detector candidates"})],
              "priority_areas": [_feature(p, {"priority": "yes"}) for p in priority]}
    files = {name: os.path.join(out, f"{name}.geojson") for name in layers}
    if os.path.isfile(out):
        raise UserError(f"the output {out} is a file: tasking-manager writes a folder")
    others = sorted(set(os.listdir(out)) - {os.path.basename(f) for f in files.values()}) if os.path.isdir(out) else []
    if others:
        raise UserError(f"{out} holds other files than a Tasking Manager export ({', '.join(others[:3])}), and the "
                        "export replaces its folder whole: choose a new or empty folder")
    # built in a new folder beside out and swapped in whole: a failure leaves the previous export as it was
    try:
        with building(out) as folder:
            for name, features in layers.items():
                with open(os.path.join(folder, f"{name}.geojson"), "w", encoding="utf-8") as f:
                    json.dump({"type": "FeatureCollection", "features": features}, f, separators=(",", ":"))
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return {"tasks": len(tasks), "task_zoom": task_zoom, "priority_areas": len(priority), "files": files}


def _feature(geometry, properties):
    """An RFC 7946 feature of a (Multi)Polygon: exterior rings counter-clockwise, coordinates to 1e-7 degrees."""
    geometry = shapely.orient_polygons(geometry)
    polygons = shapely.get_parts(geometry)
    rings = [[np.round(np.asarray(r.coords), 7).tolist() for r in (p.exterior, *p.interiors)] for p in polygons]
    kind = shapely.get_type_id(geometry)
    coordinates = rings[0] if kind == shapely.GeometryType.POLYGON else rings
    return {"type": "Feature", "properties": properties,
            "geometry": {"type": "Polygon" if kind == shapely.GeometryType.POLYGON else "MultiPolygon",
                         "coordinates": coordinates}}


def _labels(rows, out):
    if not out.lower().endswith((".geojson", ".json", ".gpkg")):
        raise UserError(f"the labels output {out} must end with .geojson, .json or .gpkg")
    x, y, z = rows["x"], rows["y"], int(rows["z"][0])
    lon, lat = rows["point_lon"].copy(), rows["point_lat"].copy()
    # a false positive stands for its tile: its point must be inside the tile, or the tile centre is used
    w, n = tile_lonlat(x, y, z)
    e, s = tile_lonlat(x + 1, y + 1, z)
    cx, cy = tile_lonlat(x + 0.5, y + 0.5, z)
    outside = (rows["status"] == "false_positive") & ~((w < lon) & (lon < e) & (s < lat) & (lat < n))
    lon[outside], lat[outside] = cx[outside], cy[outside]
    fields = [{"status": st, "tile_id": t, "score": float(sc)}
              for st, t, sc in zip(rows["status"].tolist(), rows["tile_id"].tolist(), rows["score"].tolist())]
    if out.lower().endswith(".gpkg"):
        _write(out, lambda tmp: _write_labels_gpkg(tmp, lon, lat, fields))
        return
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [round(a, 8), round(b, 8)]},
                 "properties": p} for a, b, p in zip(lon.tolist(), lat.tolist(), fields)]
    _write(out, json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")))


def _write_labels_gpkg(path, lon, lat, fields):
    with closing(sqlite3.connect(path)) as db:
        db.executescript(GPKG_CORE + "CREATE TABLE labels (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
                                      "geom POINT, status TEXT NOT NULL, tile_id TEXT, score REAL);")
        insert_srs(db)
        db.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, min_x, min_y, max_x, "
                   "max_y, srs_id) VALUES ('labels', 'features', 'labels', 'review decisions as training labels', "
                   "?, ?, ?, ?, 4326)", (float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())))
        db.execute("INSERT INTO gpkg_geometry_columns VALUES ('labels', 'geom', 'POINT', 4326, 0, 0)")
        db.executemany("INSERT INTO labels (geom, status, tile_id, score) VALUES (?, ?, ?, ?)",
                       [(g, f["status"], f["tile_id"], f["score"]) for g, f in zip(gpkg_points(lon, lat), fields)])
        db.commit()


# ---------------------------------------------------------------------------------------------
# distances in metres
# ---------------------------------------------------------------------------------------------
def mercator(lon, lat):
    """Web-Mercator metres of lon/lat arrays (distances there are true metres / cos(lat))."""
    lam, phi = np.radians(np.asarray(lon, np.float64)), np.radians(np.asarray(lat, np.float64))
    return EARTH_RADIUS * lam, EARTH_RADIUS * np.arcsinh(np.tan(phi))


def haversine_m(lon1, lat1, lon2, lat2):
    """Great-circle distances in metres (the Earth's mean radius; within 0.5 % of the ellipsoid's), element-wise."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(np.subtract(lon2, lon1)) / 2) ** 2
    return 2 * MEAN_EARTH_RADIUS * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def pairs_within(lon, lat, tree_lon, tree_lat, radius_m):
    """(i, j, metres) of every point i and tree point j at most radius_m apart (an STRtree in Web Mercator,
    queried with each point's own radius there, then the true distance)."""
    tx, ty = mercator(tree_lon, tree_lat)
    px, py = mercator(lon, lat)
    tree = shapely.STRtree(shapely.points(tx, ty))
    scale = np.cos(np.radians(lat))
    # 2 % slack covers the sphere and the ellipsoid disagreeing; the true distance decides
    i, j = tree.query(shapely.points(px, py), predicate="dwithin", distance=radius_m / scale * 1.02)
    d = haversine_m(lon[i], lat[i], tree_lon[j], tree_lat[j])
    ok = d <= radius_m
    return i[ok], j[ok], d[ok]


def _distinct_points(lon, lat, radius_m):
    """Mask of the points kept when each one within reach of a kept earlier point is dropped; radius_m: one
    distance, or one per point (two points are in reach within the larger of theirs)."""
    radius = np.broadcast_to(np.asarray(radius_m, dtype=np.float64), np.shape(lon))
    i, j, d = pairs_within(lon, lat, lon, lat, float(radius.max()) if len(radius) else 0.0)
    near = d <= np.maximum(radius[i], radius[j])
    i, j = i[near], j[near]
    later = i > j
    keep = np.ones(len(lon), bool)
    for a, b in sorted(zip(i[later].tolist(), j[later].tolist())):  # in rank order: the better point stays
        if keep[b]:
            keep[a] = False
    return keep
