"""Training datasets in label-maker's format, built from an area, tower points and an imagery source.

Output directory:
  config.json    a label-maker config describing what was done (valid against label-maker's schema)
  labels.npz     "x-y-z" -> [background, tower] for every tile in the dataset (label-maker's format)
  data.npz       x_<split> (n, 256, 256, 3) uint8 and y_<split> (n, 2) one-hot, per split (label-maker's)
  tiles/         one PNG per tile, x-y-z.png (lossless copies of what the model sees)
  index.csv      tile_id, x, y, z, split, label, path: the list training streams from
  towers.csv     tile_id, px, py: where each tower tile's towers stand, in tile pixels (for the point loss)
  dataset.json   the summary: counts per split, skipped tiles and why, sources, block size, fingerprint

Splits are spatially blocked and line-aware: tiles are grouped in blocks of block_size x block_size tiles, and the
tiles holding towers of one power line (a tower is on a line when it is one of the line's vertices, as in OSM), with
the blocks where that line holds the most tower tiles, form one group, so that a line's towers - alike in design,
steel and ground - never straddle train and test. Whole groups go to one split (groups holding towers first, each to
the split furthest behind its share of towers), and where two splits touch (8-connected) the tile of the bigger
split is dropped, so no two touching tiles - which share towers near their edges and conductors - straddle train and
test, and the evaluation splits keep theirs. Towers on no known line (a points-only source) keep their block as
their group.
Arrays are streamed to disk split by split, so a dataset larger than memory is never held in it.

The directory is built in a new folder beside it and swapped in whole once complete (atomic.building): a build
that fails leaves the previous dataset as it was, or no folder at all; a rebuild replaces every file. An existing
folder that is not a dataset (neither dataset.json nor index.csv) is refused rather than replaced.
"""

import csv
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image

from ..common.atomic import building
from ..common.errors import UserError
from ..geo.areas import load_area
from ..geo.cover import lonlat_to_tile_space, tile_cover
from ..geo.tilemath import TILE_SIZE, tile_id
from .labels import positive_tiles

TOWER_CLASS = {"name": "tower", "filter": ["==", "power", "tower"]}
TOWER_LINES = "power=line,minor_line"  # the lines whose towers (or poles) must share a split
SPAN_LINES = "power=line"  # the lines whose spans give negatives (HV: minor lines hang on poles, not towers)
SNAP_DEGREES = 1e-7  # a line vertex this close to a tower point is that tower (in OSM: the same node)
TOWER_MARGIN = 6  # towers.csv keeps towers this far (pixels) outside a tile: label-maker's 5-px buffer, rounded up
SPAN_CLEARANCE = 0.2  # span tiles keep this far (tiles, ~30 m at zoom 18) from every tower: legs, shadow


def parse_splits(text, names=None):
    """'0.7,0.15,0.15' -> (("train", .7), ("val", .15), ("test", .15)); fractions must sum to 1."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"--split must be comma-separated fractions like 0.7,0.15,0.15, not {text!r}") from None
    names = names or {1: ["train"], 2: ["train", "test"], 3: ["train", "val", "test"]}.get(len(values))
    if not names or len(names) != len(values):
        raise UserError(f"--split needs 1 to 3 fractions (train[,val],test), got {len(values)}")
    if any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise UserError(f"--split fractions must be >= 0 and sum to 1, got {text}")
    return tuple(zip(names, values))


def build_dataset(opts, *, splits=None, progress=None, log=print):
    """Build the dataset into opts.out and return the summary written to dataset.json.

    opts: the dataset stage's arguments (the CLI's parsed arguments, or pipeline.options("dataset", ...)): area,
    towers, imagery, out, zoom, background_ratio, span_negatives, split, seed, extra_labels, tower_filter,
    block_size, force, max_tiles, cache, concurrency. span_negatives: negative tiles taken along mapped lines, per
    tower tile (see span_tiles), beside the random background: a line's conductors and corridor are the easy cue a
    model learns first, and these tiles teach it that they are not a tower. splits: parse_splits' splits, in
    place of opts.split's (label-maker's named splits)."""
    from ..sources.imagery import open_imagery
    from ..sources.osm import load_lines, load_towers

    progress = progress or (lambda *a, **k: None)
    area, towers, imagery, out, zoom, seed = opts.area, opts.towers, opts.imagery, opts.out, opts.zoom, opts.seed
    background_ratio, span_negatives, tower_filter = opts.background_ratio, opts.span_negatives, opts.tower_filter
    extra_labels, block_size, force, max_tiles = opts.extra_labels, opts.block_size, opts.force, opts.max_tiles
    cache_dir, concurrency = opts.cache, opts.concurrency
    splits = parse_splits(opts.split) if splits is None else splits
    if not (isinstance(span_negatives, (int, float)) and 0 <= span_negatives <= 100):
        raise UserError(f"--span-negatives must be 0 to 100 tiles per tower tile, not {span_negatives}")
    _check_out(out, cache_dir)
    region = load_area(area)
    cover = tile_cover(region, zoom)
    if cover.count > max_tiles:
        raise UserError(f"the area covers {cover.count:,} zoom-{zoom} tiles, over the limit of {max_tiles:,}")

    points = load_towers(towers, area=region, tag_filter=tower_filter, cache_dir=cache_dir, log=log).within(region)
    log(f"{len(points)} towers ({tower_filter}) in the area from {points.source}")
    pos = positive_tiles(points.lon, points.lat, zoom)
    pos = pos[cover.contains(pos[:, 0], pos[:, 1])]
    hard_negatives = np.zeros((0, 2), dtype=np.int64)
    n_outside = 0
    if extra_labels:  # decided tiles count wherever they lie (a review of another area); OSM's stay the area's
        pos, hard_negatives, n_outside = _add_review_labels(extra_labels, cover, zoom, pos, load_towers, log)
    if len(pos) == 0 and not force:
        raise UserError(f"no towers ({tower_filter}) in the area, so no positive tiles; "
                        "pass --force for a background-only dataset")

    rng = np.random.default_rng(seed)
    spans = np.zeros((0, 2), dtype=np.int64)
    if span_negatives and len(pos):
        lines = load_lines(towers, area=region, tag_filter=SPAN_LINES, cache_dir=cache_dir, log=log)
        found = span_tiles(lines, points, zoom)
        found = _without(found[cover.contains(found[:, 0], found[:, 1])], np.concatenate([pos, hard_negatives]),
                         zoom)
        take = min(len(found), int(round(span_negatives * len(pos))))
        spans = found[np.sort(rng.choice(len(found), take, replace=False))] if take else spans
        log(f"{len(lines)} lines ({SPAN_LINES}): {len(found)} tiles on spans between mapped towers, {len(spans)} "
            "taken as negatives")
    taken = np.concatenate([hard_negatives, spans])
    n_background = int(round(background_ratio * len(pos))) if len(pos) else min(cover.count, 1000)
    background = _sample_background(cover, pos, taken, n_background, rng)
    tiles = np.concatenate([pos, taken, background])
    labels = np.concatenate([np.ones(len(pos), np.int8), np.zeros(len(taken) + len(background), np.int8)])
    by_line = {"lines": 0, "towers_on_lines": 0, "groups": 0, "notes": []}
    linked = []
    if len(pos):
        lines = load_lines(towers, area=region, tag_filter=TOWER_LINES, cache_dir=cache_dir, log=log)
        on_lines = tower_lines(lines, points)
        linked = line_tile_sets(on_lines, points, tiles, zoom)
        by_line.update(lines=len(linked), notes=list(lines.notes),
                       towers_on_lines=len(np.unique(np.concatenate([np.zeros(0, np.int64), *on_lines]))))
    split_of, by_line["groups"] = _blocked_splits(tiles, labels, splits, block_size, rng, linked)
    log(f"splits by line: {by_line['lines']} lines with towers joined {len(tiles)} tiles into "
        f"{by_line['groups']} groups" + "".join(f"; {n}" for n in by_line["notes"]))
    keep = split_of >= 0
    log(f"{len(tiles)} tiles selected ({len(pos)} tower, {len(hard_negatives)} reviewed false positives, "
        + (f"{len(spans)} on line spans, " if span_negatives else "")
        + f"{len(background)} background); {int((~keep).sum())} dropped at split borders")
    tiles, labels, split_of = tiles[keep], labels[keep], split_of[keep]
    towerless = [name for i, (name, f) in enumerate(splits) if f > 0 and len(pos) and not labels[split_of == i].any()]
    if towerless:
        log(f"warning: {', '.join(towerless)} holds no tower tile: the area has too few separate lines for the "
            "splits; use a bigger area or a smaller --block-size")

    with open_imagery(imagery, cache_dir=cache_dir, concurrency=concurrency) as source:
        try:
            with building(out) as folder:
                written, skipped = _write_tiles(folder, source, tiles, labels, split_of, splits, zoom, progress)
                write_tower_pixels(os.path.join(folder, "towers.csv"), points, written, zoom)
                summary = _summarise(folder, written, skipped, splits, zoom, seed, block_size, background_ratio,
                                     tower_filter, points, source.description, towers, area, extra_labels,
                                     len(hard_negatives), n_outside, span_negatives, len(spans), by_line)
                _write_label_maker_config(folder, region, towers, source.description, zoom, background_ratio, seed,
                                          splits, tower_filter)
        except OSError as exc:
            raise _cannot_write(out, exc) from None
    for warning in summary["warnings"]:
        log(warning)
    return summary


def _split_warnings(per_split):
    """Plain words for each evaluation split without a tower tile: training could not measure a model on it."""
    return [f"the {name} split has no tower tile, so training cannot tell how well a model finds towers: build "
            "from an area with more towers, or use fewer splits" for name, s in per_split.items()
            if name != "train" and s["tiles"] and not s["tower"]]


def _check_out(out, cache_dir):
    """Refuse an --out that a rebuild must not replace, or cannot write, before any work."""
    out = os.path.abspath(out)
    if os.path.isfile(out):
        raise UserError(f"--out {out} is a file; give a folder for the dataset")
    if os.path.isdir(out) and os.listdir(out) and not any(
            os.path.isfile(os.path.join(out, name)) for name in ("dataset.json", "index.csv")):
        raise UserError(f"{out} exists and is not a dataset (no dataset.json or index.csv): give a new or empty "
                        "--out, since a build replaces the folder whole")
    cache = os.path.abspath(cache_dir) if cache_dir else None
    if cache and os.path.splitdrive(cache)[0] == os.path.splitdrive(out)[0] and os.path.commonpath([out, cache]) == out:
        raise UserError(f"--cache {cache_dir} is inside --out {out}, which a build replaces whole: keep it apart")
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with tempfile.TemporaryFile(dir=os.path.dirname(out)):  # the new folder is made beside out
            pass
    except OSError as exc:
        raise _cannot_write(out, exc) from None


def _cannot_write(out, exc):
    if exc.errno == errno.ENOSPC:
        return UserError(f"the output disk is full while writing {out}; free space and run again")
    return UserError(f"cannot write the dataset to {out}: {exc.strerror or exc}")


def _add_review_labels(path, cover, zoom, pos, load_towers, log):
    """Review decisions as labels: confirmed towers are positives, rejected candidates hard negatives, inside the
    area's cover or not: (positives, hard negatives, how many of the decided tiles lie outside the cover)."""
    confirmed = load_towers(path, tag_filter="status=confirmed")
    rejected = load_towers(path, tag_filter="status=false_positive")
    reviewed = positive_tiles(confirmed.lon, confirmed.lat, zoom)
    pos = np.unique(np.concatenate([pos, reviewed]), axis=0)
    # a false positive marks the tile that holds the candidate point, unless a tower is really there
    negatives = _without(positive_tiles(rejected.lon, rejected.lat, zoom, buffer=0), pos, zoom)
    decided = np.concatenate([reviewed, negatives])
    outside = int((~cover.contains(decided[:, 0], decided[:, 1])).sum()) if len(decided) else 0
    log(f"review labels from {path}: {len(confirmed)} confirmed towers, {len(rejected)} false positives"
        + (f"; {outside} of their tiles lie outside the area and join the dataset as their own" if outside else ""))
    return pos, negatives, outside


def span_tiles(lines, points, zoom):
    """Tiles crossed by a span, a stretch of line between two consecutive vertices that are both mapped towers,
    keeping SPAN_CLEARANCE from every tower. Between two mapped towers stands no tower, so these are safe
    negatives; a stretch with an unmapped vertex may hide an unmapped tower and is skipped."""
    import shapely

    from ..geo.cover import lonlat_to_tile_space

    if not len(lines) or not len(points):
        return np.zeros((0, 2), dtype=np.int64)
    tree = shapely.STRtree(shapely.points(points.lon, points.lat))
    found = []
    for geometry in lines.geometries:
        for part in getattr(geometry, "geoms", [geometry]):
            xy = shapely.get_coordinates(part)
            is_tower = np.zeros(len(xy), dtype=bool)
            is_tower[tree.query(shapely.points(xy), predicate="dwithin", distance=SNAP_DEGREES)[0]] = True
            span = is_tower[:-1] & is_tower[1:]
            for (lon0, lat0), (lon1, lat1) in zip(xy[:-1][span], xy[1:][span]):
                fx, fy = lonlat_to_tile_space(np.array([lon0, lon1]), np.array([lat0, lat1]), zoom)
                steps = int(np.ceil(np.hypot(fx[1] - fx[0], fy[1] - fy[0]) * 16)) + 2  # 16 samples a tile
                t = np.linspace(0.0, 1.0, steps)
                found.append(np.stack([np.floor(fx[0] + t * (fx[1] - fx[0])),
                                       np.floor(fy[0] + t * (fy[1] - fy[0]))], axis=1).astype(np.int64))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    near_towers = positive_tiles(points.lon, points.lat, zoom, buffer=SPAN_CLEARANCE)
    return _without(np.unique(np.concatenate(found), axis=0), near_towers, zoom)


def tower_lines(lines, points):
    """For each line, the indices of the points that are its vertices (within SNAP_DEGREES: in OSM, the same
    node). A line with no tower among its vertices has an empty array."""
    import shapely

    if not len(lines) or not len(points):
        return [np.zeros(0, dtype=np.int64) for _ in range(len(lines))]
    tree = shapely.STRtree(shapely.points(points.lon, points.lat))
    found = []
    for geometry in lines.geometries:
        xy = shapely.get_coordinates(geometry)
        hits = tree.query(shapely.points(xy), predicate="dwithin", distance=SNAP_DEGREES)[1] if len(xy) else []
        found.append(np.unique(np.asarray(hits, dtype=np.int64)))
    return found


def line_tile_sets(on_lines, points, tiles, zoom):
    """on_lines: tower_lines' answer. Per line holding towers, the indices into `tiles` of the tiles its towers
    make positive: the tiles that must share a split. Lines whose towers hold none of `tiles` are left out."""
    index = {int(k): i for i, k in enumerate(_keys(tiles, zoom))}
    sets = []
    for members in on_lines:
        if not len(members):
            continue
        held = positive_tiles(points.lon[members], points.lat[members], zoom)
        at = [index[int(k)] for k in _keys(held, zoom) if int(k) in index]
        if at:
            sets.append(np.array(sorted(set(at)), dtype=np.int64))
    return sets


def _keys(tiles, zoom):
    return tiles[:, 0] * (1 << zoom) + tiles[:, 1]


def _without(tiles, remove, zoom):
    return tiles[~np.isin(_keys(tiles, zoom), _keys(remove, zoom))] if len(tiles) else tiles


def _sample_background(cover, pos, hard_negatives, n, rng):
    """n random cover tiles that are neither positives nor hard negatives, without listing the cover."""
    if n <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    zoom = cover.zoom
    taken = np.concatenate([pos, hard_negatives])
    available = cover.count - len(taken)
    n = min(n, max(available, 0))
    lengths = cover.y1 - cover.y0
    ends = np.cumsum(lengths)
    chosen = np.zeros((0, 2), dtype=np.int64)
    while len(chosen) < n:  # rarely loops: only when draws land on positives
        idx = rng.choice(cover.count, size=min(cover.count, n - len(chosen) + len(taken)), replace=False)
        run = np.searchsorted(ends, idx, side="right")
        y = cover.y0[run] + idx - (ends[run] - lengths[run])
        draw = _without(np.stack([cover.x[run], y], axis=1), np.concatenate([taken, chosen]), zoom)
        chosen = np.concatenate([chosen, np.unique(draw, axis=0)])[:n]
    return chosen


def _blocked_splits(tiles, labels, splits, block_size, rng, linked=()):
    """(split index per tile (-1: dropped at a border), the number of groups): whole groups per split, towers
    spread in proportion. linked: arrays of tile indices that must share a split (one power line's tower tiles).
    A group is one line's tower tiles with the blocks where that line holds the most tower tiles, or a block
    without tower tiles of a line. Lines are never chained into one group: in a meshed network every line crosses
    or meets another, and chaining them through shared tiles or blocks leaves one group that no split can share.
    A tile two lines share (a crossing, a common end) goes with its first line's group, and is dropped where
    another of its lines went to another split: no line's towers are in two splits."""
    fractions = np.array([f for _, f in splits])
    cells, cell_of = np.unique(tiles // block_size, axis=0, return_inverse=True)
    cell_of = cell_of.ravel()
    owners = {}  # tile -> the lines with a tower in it, in order
    for i, members in enumerate(linked):
        for t in np.unique(members).tolist():
            owners.setdefault(t, []).append(i)
    line_tiles = np.array(sorted(owners), dtype=np.int64)
    _, line_of = np.unique([owners[t][0] for t in line_tiles.tolist()], return_inverse=True)
    n_lines = int(line_of.max()) + 1 if len(line_tiles) else 0
    # each block follows the line holding most of its tower tiles (ties: the first line); the others' tiles in it
    # stay with their own line
    counts = np.zeros((len(cells), max(n_lines, 1)), dtype=np.int64)
    np.add.at(counts, (cell_of[line_tiles], line_of.ravel()), 1)
    key = np.where(counts.any(axis=1), counts.argmax(axis=1), n_lines + np.arange(len(cells)))[cell_of]
    key[line_tiles] = line_of.ravel()
    blocks, block_of = np.unique(key, return_inverse=True)  # "blocks" from here on are the groups
    block_of = block_of.ravel()
    n_tiles = np.bincount(block_of, minlength=len(blocks))
    n_pos = np.bincount(block_of, weights=labels, minlength=len(blocks))
    wanted_tiles, wanted_pos = fractions * len(tiles), fractions * max(labels.sum(), 1)
    have_tiles, have_pos = np.zeros(len(splits)), np.zeros(len(splits))
    block_split = np.empty(len(blocks), dtype=np.int64)
    # random order, then blocks with towers first, so each split gets its share of the scarce class
    order = rng.permutation(len(blocks))
    order = order[np.argsort(-n_pos[order], kind="stable")]
    with np.errstate(divide="ignore", invalid="ignore"):
        for b in order:
            # the split furthest behind its share, relative to that share: of towers while blocks hold towers,
            # then of tiles, so that small splits get their share of the scarce class too
            need = (wanted_pos - have_pos) / wanted_pos if n_pos[b] else (wanted_tiles - have_tiles) / wanted_tiles
            need[fractions == 0] = -np.inf
            s = int(np.argmax(need))
            block_split[b] = s
            have_tiles[s] += n_tiles[b]
            have_pos[s] += n_pos[b]
    split_of = block_split[block_of]
    empty = [name for i, (name, f) in enumerate(splits) if f > 0 and not (split_of == i).any()]
    if empty:
        raise UserError(f"too few tiles for the splits: {len(cells)} blocks of {block_size}x{block_size} tiles "
                        f"in {len(blocks)} groups (a power line's tower tiles are one group) leave "
                        f"{', '.join(empty)} empty; use a bigger area or a smaller --block-size")
    # where splits touch, the bigger split gives way: the evaluation splits keep their tiles
    keep_rank = np.argsort(np.lexsort((np.arange(len(splits)), -fractions)))
    kept = _drop_border_tiles(tiles, split_of, keep_rank)
    line_split = {}  # each line's split: that of the tiles whose first line it is
    for t, lines in owners.items():
        line_split.setdefault(lines[0], split_of[t])
    for t, lines in owners.items():
        if any(line_split.get(line, split_of[t]) != split_of[t] for line in lines[1:]):
            kept[t] = -1
    return kept, len(blocks)


def _drop_border_tiles(tiles, split_of, keep_rank):
    """A tile touching a tile of a split with a higher keep_rank leaves its split (-1)."""
    width = int(tiles[:, 1].max()) + 3
    keys = (tiles[:, 0] + 1) * width + tiles[:, 1] + 1
    order = np.argsort(keys)
    sorted_keys, sorted_split = keys[order], split_of[order]
    result = split_of.copy()
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx == dy == 0:
                continue
            at = np.searchsorted(sorted_keys, keys + dx * width + dy)
            at = np.minimum(at, len(keys) - 1)
            found = sorted_keys[at] == keys + dx * width + dy
            result[found & (keep_rank[sorted_split[at]] > keep_rank[split_of])] = -1
    return result


def _write_tiles(out, source, tiles, labels, split_of, splits, zoom, progress):
    """Fetch, save and stream each split's arrays into data.npz; returns (written rows, skipped reasons)."""
    raws = os.path.join(out, ".raw")
    os.makedirs(os.path.join(out, "tiles"))
    os.makedirs(raws)
    written, skipped = [], []
    total, done = len(tiles), 0
    counts = {}
    for s, (name, _) in enumerate(splits):
        members = np.flatnonzero(split_of == s)
        members = members[np.lexsort((tiles[members, 1], tiles[members, 0]))]
        n_ok = 0
        with open(os.path.join(raws, f"x_{name}.raw"), "wb") as raw:
            for i, result in zip(members, source.fetch((int(x), int(y), zoom) for x, y in tiles[members])):
                done += 1
                if result.error is not None:
                    skipped.append({"tile": tile_id(result.x, result.y, zoom), "reason": result.error})
                else:
                    tid = tile_id(result.x, result.y, zoom)
                    Image.fromarray(result.image).save(os.path.join(out, "tiles", f"{tid}.png"))
                    raw.write(np.ascontiguousarray(result.image, dtype=np.uint8).tobytes())
                    written.append((tid, result.x, result.y, zoom, name, int(labels[i]), f"tiles/{tid}.png"))
                    n_ok += 1
                progress(done, total, stage="tiles")
        counts[name] = n_ok
    if not written:
        reasons = sorted({s["reason"] for s in skipped})[:3]
        raise UserError(f"no imagery could be read for any of the {total} tiles ({'; '.join(reasons)})")
    _write_npz(os.path.join(out, "data.npz"), raws, splits, counts, written)
    shutil.rmtree(raws)
    np.savez(os.path.join(out, "labels.npz"),
             **{row[0]: np.array([1 - row[5], row[5]], dtype=np.int64) for row in written})
    with open(os.path.join(out, "index.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tile_id", "x", "y", "z", "split", "label", "path"])
        w.writerows(written)
    return written, skipped


def write_tower_pixels(path, points, written, zoom):
    """towers.csv: tile_id, px, py of every tower in each written tile (tile pixels, x right, y down; a tower
    just over the edge that label-maker counts in the tile lies a few pixels outside 0..256). Training uses
    these positions for its point loss; the tile labels stay label-maker's."""
    fx, fy = lonlat_to_tile_space(points.lon, points.lat, zoom)
    by_tile = {}
    for px, py in zip(fx, fy):
        by_tile.setdefault((int(np.floor(px)), int(np.floor(py))), []).append((px, py))
    rows = []
    for tid, x, y, _, _, label, _ in written:
        if not label:
            continue
        for dx in (-1, 0, 1):  # the tower may stand in a neighbour, within label-maker's buffer
            for dy in (-1, 0, 1):
                for px, py in by_tile.get((x + dx, y + dy), ()):
                    u, v = (px - x) * TILE_SIZE, (py - y) * TILE_SIZE
                    if max(-u, -v, u - TILE_SIZE, v - TILE_SIZE) <= TOWER_MARGIN:
                        rows.append((tid, round(u, 2), round(v, 2)))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tile_id", "px", "py"])
        writer.writerows(rows)


def _write_npz(path, raws, splits, counts, written):
    """data.npz without holding a split in memory: each x_<split> is copied from its raw file in chunks."""
    shape = (256, 256, 3)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, _ in splits:
            n = counts[name]
            header = {"descr": "|u1", "fortran_order": False, "shape": (n, *shape)}
            with zf.open(f"x_{name}.npy", "w", force_zip64=True) as f, open(os.path.join(raws, f"x_{name}.raw"),
                                                                            "rb") as raw:
                np.lib.format.write_array_header_2_0(f, header)
                shutil.copyfileobj(raw, f, length=16 << 20)
            y = np.array([[1 - row[5], row[5]] for row in written if row[4] == name], dtype=np.int64).reshape(-1, 2)
            with zf.open(f"y_{name}.npy", "w") as f:
                np.lib.format.write_array(f, y)


def _summarise(out, written, skipped, splits, zoom, seed, block_size, background_ratio, tower_filter, points,
               imagery_description, towers_spec, area_spec, extra_labels, n_hard_negatives, n_outside, span_negatives,
               n_span_negatives, by_line):
    per_split = {}
    for name, fraction in splits:
        rows = [r for r in written if r[4] == name]
        per_split[name] = {"fraction": fraction, "tiles": len(rows), "tower": sum(r[5] for r in rows),
                           "background": sum(1 - r[5] for r in rows)}
    fingerprint = hashlib.sha256("\n".join(f"{r[0]},{r[4]},{r[5]}" for r in written).encode()).hexdigest()
    summary = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "zoom": zoom, "tiles": len(written), "splits": per_split, "skipped": len(skipped),
        "skipped_tiles": skipped[:100], "towers_in_area": len(points), "hard_negatives": n_hard_negatives,
        "review_tiles_outside_area": n_outside,
        "span_negatives": span_negatives, "span_negative_tiles": n_span_negatives,
        "seed": seed, "block_size": block_size,
        # splits keep each power line's towers in one split; lines: the lines whose towers hold dataset tiles
        "split_by_line": {"line_aware": True, "lines": by_line["lines"], "towers_on_lines": by_line["towers_on_lines"],
                          "groups": by_line["groups"], "notes": by_line["notes"]},
        "background_ratio": background_ratio, "tower_filter": tower_filter,
        # area, towers_spec, imagery_spec and extra_labels as arguments a rebuild can take (files made absolute;
        # the imagery redacted); towers and imagery: what they are, in words
        "sources": {"area": _absolute(area_spec), "towers": points.source, "towers_spec": _absolute(towers_spec),
                    "imagery": imagery_description, "imagery_spec": _absolute(imagery_description),
                    "extra_labels": _absolute(extra_labels) if extra_labels else None},
        "image_size": 256, "classes": ["background", "tower"], "fingerprint": fingerprint,
        "warnings": _split_warnings(per_split),
    }
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _absolute(spec):
    """A file's absolute path; anything else (a bbox, a URL, overpass) as it is."""
    return os.path.abspath(str(spec)) if os.path.isfile(str(spec)) else str(spec)


def _write_label_maker_config(out, region, towers_spec, imagery_description, zoom, background_ratio, seed, splits,
                              tower_filter):
    key, _, values = tower_filter.partition("=")
    values = [v for v in values.split(",") if v]
    if len(values) == 1:
        class_filter = ["==", key, values[0]]
    elif values:
        class_filter = ["in", key, *values]
    else:
        class_filter = ["has", key]
    west, south, east, north = region.geometry.bounds
    config = {
        "bounding_box": [west, south, min(east, 180.0), north],
        "zoom": zoom,
        "classes": [{"name": "tower", "filter": class_filter}],
        "imagery": imagery_description,
        "background_ratio": float(background_ratio),
        "ml_type": "classification",
        "seed": int(seed),
        "split_vals": [float(f) for _, f in splits],
        "split_names": [n for n, _ in splits],
    }
    if os.path.isfile(str(towers_spec)):
        config["geojson"] = os.path.abspath(str(towers_spec))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return config


def dataset_from_label_maker_config(opts, **kwargs):
    """Run `dataset` from the label-maker config.json opts.config (validated with label-maker's own schema): its
    area, labels, imagery, zoom, background ratio, seed, splits and class in place of opts'."""
    import argparse

    from .labelmaker import validate_config

    path = opts.config
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read label-maker config {path}: {exc}") from None
    validate_config(config)
    if config["ml_type"] != "classification":
        raise UserError(f"ml_type {config['ml_type']!r} is not supported: tower detection is classification")
    if "country" in config and "geojson" not in config:
        raise UserError("label-maker's OSM QA tiles ('country') were discontinued in 2023; "
                        "give a 'geojson' label source instead")
    if "geojson" not in config or "bounding_box" not in config:
        raise UserError("the config needs 'geojson' (tower points) and 'bounding_box'")
    names = config.get("split_names", ["train", "test"])
    splits = parse_splits(",".join(str(v) for v in config.get("split_vals", [0.8, 0.2])), names=names)
    from_config = {"area": ",".join(str(v) for v in config["bounding_box"]), "towers": config["geojson"],
                   "imagery": config["imagery"], "zoom": config["zoom"], "seed": config.get("seed", 0),
                   "background_ratio": config.get("background_ratio", 3.0),
                   "tower_filter": _tag_filter(config["classes"])}
    return build_dataset(argparse.Namespace(**{**vars(opts), **from_config}), splits=splits, **kwargs)


def _tag_filter(classes):
    """label-maker's Mapbox GL filter of its one class -> our key=value[,value] tag filter."""
    if len(classes) != 1:
        raise UserError(f"tower detection has one class besides background; the config has {len(classes)}")
    flt = classes[0]["filter"]
    op = flt[0] if flt else None
    if op == "==" and len(flt) == 3:
        return f"{flt[1]}={flt[2]}"
    if op == "in" and len(flt) >= 3:
        return f"{flt[1]}={','.join(str(v) for v in flt[2:])}"
    if op == "has" and len(flt) == 2:
        return str(flt[1])
    raise UserError(f"class filter {flt} is not supported: use [\"==\", key, value], [\"in\", key, ...] or "
                    "[\"has\", key]")
