"""Tile covers: exactness against a brute-force walk, edge cases, shards, files, country scale."""

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from tower_detector.geo.areas import Area, load_area
from tower_detector.geo.cover import TileCover, lonlat_to_tile_space, tile_cover
from tower_detector.geo.tilemath import tile_bounds_4326

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def brute_force(geometry, zoom):
    """Every tile of the bbox whose square overlaps the area with positive area (tested with shapely)."""
    g = shapely.transform(geometry, lambda c: np.stack(lonlat_to_tile_space(c[:, 0], c[:, 1], zoom), axis=1))
    minx, miny, maxx, maxy = g.bounds
    tiles = set()
    for x in range(int(np.floor(minx)) - 1, int(np.ceil(maxx)) + 1):
        for y in range(int(np.floor(miny)) - 1, int(np.ceil(maxy)) + 1):
            square = box(x, y, x + 1, y + 1)
            if g.intersects(square) and not g.touches(square):
                tiles.add((x % (1 << zoom), y))
    return tiles


def tiles_of(cover):
    found = set()
    for xs, ys in cover.iter_batches(size=97):  # odd batch size: exercises batch edges inside runs
        found |= set(zip(xs.tolist(), ys.tolist()))
    assert len(found) == cover.count, "a tile was produced twice"
    return found


def random_polygon(rng, with_hole):
    cx, cy = rng.uniform(-170, 170), rng.uniform(-70, 70)
    k = int(rng.integers(3, 14))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = rng.uniform(0.005, 0.15, k)
    outer = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)]
    if not with_hole:
        return Polygon(outer)
    inner = [(cx + 0.3 * r * np.cos(a), cy + 0.3 * r * np.sin(a)) for a, r in zip(angles, radii)]
    return Polygon(outer, [inner[::-1]])


@pytest.mark.parametrize("seed", range(6))
def test_random_polygons_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    for i in range(25):
        poly = random_polygon(rng, with_hole=i % 3 == 0)
        if not poly.is_valid:
            continue
        zoom = int(rng.integers(9, 16))
        assert tiles_of(tile_cover(Area(poly), zoom)) == brute_force(poly, zoom)
        checked += 1
    assert checked > 10


def test_cover_is_not_the_bbox():
    triangle = Polygon([(28.0, -15.0), (28.05, -15.0), (28.0, -14.95)])
    cover = tile_cover(Area(triangle), 16)
    x0, y0, x1, y1 = cover.bounds()
    bbox_tiles = (x1 - x0 + 1) * (y1 - y0 + 1)
    assert cover.count < 0.65 * bbox_tiles  # a triangle covers about half its bbox
    assert tiles_of(cover) == brute_force(triangle, 16)


def test_area_on_tile_edges_takes_no_neighbours():
    # a square made of exactly 3x2 tiles' bounds: neither the row nor the column beyond it touches inside
    w, _, _, n = tile_bounds_4326(1000, 2000, 12)
    _, s, e, _ = tile_bounds_4326(1002, 2001, 12)
    cover = tile_cover(Area(box(w, s, e, n)), 12)
    assert tiles_of(cover) == {(x, y) for x in range(1000, 1003) for y in range(2000, 2002)}


def test_tiles_touching_only_at_a_corner_are_excluded():
    # a diamond whose four vertices are tile corners: the tiles beyond each vertex only touch it
    z = 14
    corners = [tile_bounds_4326(x, y, z) for x, y in [(500, 600), (502, 600), (500, 602)]]
    west, north = corners[0][0], corners[0][3]
    east = corners[1][0]
    south = corners[2][3]
    mid_lon = (west + east) / 2
    mid_lat = tile_bounds_4326(501, 601, z)[3]  # the line between rows 600 and 601
    diamond = Polygon([(mid_lon, north), (east, mid_lat), (mid_lon, south), (west, mid_lat)])
    cover = tiles_of(tile_cover(Area(diamond), z))
    assert cover == brute_force(diamond, z)
    assert cover == {(500, 600), (501, 600), (500, 601), (501, 601)}


def test_holes_and_multipolygons():
    outer = box(10.0, 10.0, 10.1, 10.1)
    hole = box(10.03, 10.03, 10.07, 10.07)
    donut = Polygon(outer.exterior.coords, [hole.exterior.coords])
    island = box(10.2, 10.0, 10.22, 10.02)
    multi = MultiPolygon([donut, island])
    cover = tile_cover(Area(multi), 15)
    assert tiles_of(cover) == brute_force(multi, 15)
    # the hole's interior tiles are really gone
    centre = lonlat_to_tile_space(np.array([10.05]), np.array([10.05]), 15)
    assert not cover.contains(np.floor(centre[0]).astype(int), np.floor(centre[1]).astype(int))[0]


def test_antimeridian_polygon_is_split_not_a_world_strip(tmp_path):
    ring = [[179.95, -16.9], [-179.95, -16.9], [-179.95, -16.8], [179.95, -16.8], [179.95, -16.9]]
    path = tmp_path / "fiji.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    cover = tile_cover(load_area(str(path)), 14)
    n = 1 << 14
    xs = {x for x, _ in tiles_of(cover)}
    assert cover.count < 100  # a world-wide strip would be ~ 2^14 columns wide
    assert 0 in xs and n - 1 in xs
    east = box(179.95, -16.9, 180, -16.8)
    west = box(-180, -16.9, -179.95, -16.8)
    assert tiles_of(cover) == brute_force(east, 14) | brute_force(west, 14)
    assert tile_cover(load_area("179.95,-16.9,-179.95,-16.8"), 14).count == cover.count  # W > E bbox


def test_shards_are_x_ranges_of_about_equal_counts():
    cover = tile_cover(load_area("27.4,-12.93,28.3,-12.35"), 16)
    ranges = cover.shard_ranges(7)
    assert len(ranges) == 7
    assert ranges[0][0] == cover.x.min() and ranges[-1][1] == cover.x.max() + 1
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no overlap
    counts = [cover.shard(a, b).count for a, b in ranges]
    assert sum(counts) == cover.count
    column = cover.count / len(np.unique(cover.x))
    assert max(counts) - min(counts) <= 2 * column  # columns are never split: off by at most a column or two


def test_iteration_order_membership_and_files(tmp_path):
    cover = tile_cover(load_area("28.0,-15.0,28.02,-14.98"), 17)
    xs, ys = map(np.concatenate, zip(*cover.iter_batches(size=10)))
    assert np.all(np.diff(xs * (1 << 20) + ys) > 0)  # column order, strictly increasing
    assert cover.contains(xs, ys).all()
    assert not cover.contains(xs + 1000, ys).any()
    cover.save(tmp_path / "c.json", shards=cover.shard_ranges(2))
    again = TileCover.load(tmp_path / "c.json")
    assert tiles_of(again) == tiles_of(cover) and again.zoom == 17
    cover.save(tmp_path / "c.txt")
    lines = (tmp_path / "c.txt").read_text().split()
    assert lines[0] == f"{xs[0]}-{ys[0]}-17" and len(lines) == cover.count


@pytest.mark.shared_data
def test_zambia_at_zoom_18_is_34_3_million_tiles():
    path = SHARED / "boundaries" / "zambia.geojson"
    if not path.exists():
        pytest.skip(f"reference data absent: {path}")
    cover = tile_cover(load_area(str(path)), 18)
    assert abs(cover.count - 34.3e6) / 34.3e6 < 0.01
    assert len(cover.x) < 100_000  # runs, not tiles
    assert sum(cover.shard(a, b).count for a, b in cover.shard_ranges(10)) == cover.count
