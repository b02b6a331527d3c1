"""Imagery sources against real servers and files made from the sample scene: a loopback tile server
(tests/fakes/tileserver.py), moto's S3 server on loopback, and GeoTIFF/MBTiles files written here."""

import base64
import io
import logging
import sqlite3

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import Resampling, calculate_default_transform, reproject

from tests.fakes.tileserver import TileServer
from tower_detector.common.errors import UserError
from tower_detector.geo.tilemath import quadkey
from tower_detector.sources.imagery import decode_tile, open_imagery, redact

SECRET = "sk.SECRET-TOKEN-5f3a9c"


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tile_server(sample_scene):
    with TileServer(sample_scene["imagery"], files={"scene.tif": sample_scene["imagery"]}) as server:
        yield server


@pytest.fixture
def server(tile_server):
    tile_server.reset()
    yield tile_server
    tile_server.reset()


@pytest.fixture(scope="module")
def s3(s3):
    """conftest's moto S3 on loopback, with the bucket these tests use."""
    s3.create_bucket(Bucket="imagery")
    return s3


def _ids(server, n=None):
    return [(x, y, server.zoom) for x, y in server.tiles[:n]]


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _mad(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- XYZ over HTTP ---------------------------------------------------------------------------------
def test_png_tiles_are_the_scene_and_jpeg_webp_are_close(server):
    for ext, tolerance in (("png", 0.0), ("jpg", 4.0), ("webp", 6.0)):
        with open_imagery(server.template(ext), concurrency=4) as source:
            results = list(source.fetch(_ids(server, 8)))
        assert [(r.x, r.y) for r in results] == server.tiles[:8]
        for r in results:
            assert r.error is None and r.image.shape == (256, 256, 3) and r.image.dtype == np.uint8
            assert _mad(r.image, server.expected(r.x, r.y)) <= tolerance, ext
        if ext == "png":
            assert all(np.array_equal(r.image, server.expected(r.x, r.y)) for r in results)


def test_results_keep_input_order_and_accept_ids_covers_and_batches(server, sample_scene):
    from tower_detector.geo.areas import load_area
    from tower_detector.geo.cover import tile_cover

    rng = np.random.default_rng(1)
    shuffled = [server.tiles[i] for i in rng.permutation(len(server.tiles))[:24]]
    with open_imagery(server.template(), concurrency=8) as source:
        by_id = list(source.fetch(f"{x}-{y}-{server.zoom}" for x, y in shuffled))
        assert [(r.x, r.y) for r in by_id] == shuffled
        assert all(np.array_equal(r.image, server.expected(r.x, r.y)) for r in by_id)

        cover = tile_cover(load_area(str(sample_scene["area"])), server.zoom)
        assert sorted((r.x, r.y) for r in source.fetch(cover)) == sorted(server.tiles)

        xs = np.array([x for x, _ in shuffled[:5]] + [server.x0 - 3])
        ys = np.array([y for _, y in shuffled[:5]] + [server.y0])
        images, errors = source.fetch_batch(xs, ys, server.zoom)
    assert images.shape == (6, 256, 256, 3) and images.dtype == np.uint8
    assert errors == [None] * 5 + ["HTTP 404"]
    assert np.array_equal(images[2], server.expected(xs[2], ys[2])) and not images[5].any()


def test_tms_quadkey_and_subdomain_urls_request_the_right_paths(server):
    z = server.zoom
    (x, y), (x2, y2) = server.tiles[:2]
    flipped = (1 << z) - 1 - y
    with open_imagery(f"{server.url}/{{z}}/{{x}}/{{-y}}.png", concurrency=1) as source:
        assert [r.error for r in source.fetch([(x, y, z)], fail_fast=0)] == ["HTTP 404"]
    with open_imagery(server.template(), tms=True, concurrency=1) as source:
        list(source.fetch([(x, y, z)], fail_fast=0))
    with open_imagery(f"{server.url}/q/{{q}}.png", concurrency=1) as source:
        list(source.fetch([(x, y, z)], fail_fast=0))
    with open_imagery(f"{server.url}/{{s}}/{{z}}/{{x}}/{{y}}.png", subdomains="ab", concurrency=1) as source:
        list(source.fetch([(x, y, z), (x2, y2, z)], fail_fast=0))
    assert server.paths == [f"/{z}/{x}/{flipped}.png", f"/{z}/{x}/{flipped}.png", f"/q/{quadkey(x, y, z)}.png",
                            f"/{'ab'[(x + y) % 2]}/{z}/{x}/{y}.png", f"/{'ab'[(x2 + y2) % 2]}/{z}/{x2}/{y2}.png"]
    assert len({p.split("/")[1] for p in server.paths[-2:]}) == 2


def test_concurrency_is_bounded_and_used(server):
    server.latency = 0.05
    with open_imagery(server.template(), concurrency=4) as source:
        results = list(source.fetch(_ids(server, 32)))
    assert all(r.error is None for r in results)
    assert 1 < server.max_in_flight <= 4  # requests overlap, never more than 4 (the speed-up: benchmarks/)


def test_rate_limit_spaces_requests(server):
    with open_imagery(server.template(), concurrency=8, rate_limit=20) as source:
        assert all(r.error is None for r in source.fetch(_ids(server, 11)))
    gaps = np.diff(server.arrivals)  # as the server saw them: at most 20 a second
    assert len(gaps) == 10 and gaps.min() >= 1 / 20 * 0.9


def test_retries_recover_from_5xx_and_honour_retry_after(server):
    a, b, c = server.tiles[:3]
    server.flaky = {a: (500, 2), b: (429, 1)}
    server.status = {c: 503}
    with open_imagery(server.template(), concurrency=4, retries=2, backoff=0.01) as source:
        results = list(source.fetch(_ids(server, 8)))
    z = server.zoom
    assert results[0].error is None and np.array_equal(results[0].image, server.expected(*a))
    assert results[1].error is None and np.array_equal(results[1].image, server.expected(*b))
    assert results[2].error == "HTTP 503 after 2 retries"
    assert all(r.error is None for r in results[3:])
    assert server.count(f"/{z}/{a[0]}/{a[1]}.png") == 3
    assert server.count(f"/{z}/{b[0]}/{b[1]}.png") == 2
    assert server.count(f"/{z}/{c[0]}/{c[1]}.png") == 3
    first, retry = server.arrivals_of(f"/{z}/{b[0]}/{b[1]}.png")
    assert retry - first >= 0.95  # the 429 said Retry-After: 1


def test_a_request_log_times_each_request_and_counts_its_outcome(server):
    from tower_detector.sources.imagery import RequestLog

    a, b, c, d, e = server.tiles[:5]
    server.flaky = {a: (502, 2)}  # two transient failures, then served
    server.status = {b: 404, c: 410, d: 400}  # no imagery twice, one refused for good
    server.truncated = {e}  # a short body: transient, retried, short again
    server.latency = 0.01
    log = RequestLog()
    with open_imagery(server.template(), concurrency=4, retries=1, backoff=0.01, request_log=log) as source:
        results = list(source.fetch(_ids(server, 8), fail_fast=0))
    assert [r.error is None for r in results] == [False, False, False, False, False, True, True, True]
    summary = log.summary()
    assert summary["requests"] == len(server.paths) == 2 + 1 + 1 + 1 + 2 + 3  # a: 1 retry only, e: 1 retry
    assert log.outcomes == {"ok": 3, "transient": 4, "missing": 2, "permanent": 1}
    assert (summary["failed_transient"], summary["failed_permanent"], summary["no_imagery"]) == (4, 3, 2)
    assert summary["error_rate_transient"] == pytest.approx(4 / 10) and summary["error_rate_permanent"] == 0.3
    assert 0.01 <= summary["latency_median_s"] <= summary["latency_p95_s"]  # the server waits 10 ms each time
    with open_imagery(server.template(), concurrency=2) as source:  # off unless asked for
        list(source.fetch(_ids(server, 2), fail_fast=0))
        assert source.request_log is None
    assert RequestLog().summary()["latency_median_s"] is None


def test_missing_truncated_corrupt_and_slow_tiles_are_error_values(server):
    a, b, c = server.tiles[:3]
    server.status = {a: 404}
    server.truncated = {b}
    server.corrupt = {c}
    with open_imagery(server.template("jpg"), concurrency=4, retries=1, backoff=0.01) as source:
        results = list(source.fetch(_ids(server, 10)))
    assert results[0].error == "HTTP 404" and results[0].image is None
    assert results[1].error.startswith("truncated/corrupt image: ") and "after 1 retry" in results[1].error
    assert results[2].error.startswith("truncated/corrupt image: ")
    assert all(r.error is None and _mad(r.image, server.expected(r.x, r.y)) < 4 for r in results[3:])

    server.reset()
    server.latency = 0.3
    with open_imagery(server.template(), concurrency=2, retries=1, backoff=0.01, timeout=0.1) as source:
        assert [r.error for r in source.fetch(_ids(server, 1))] == ["timeout after 1 retry"]


def test_bad_token_fails_fast_and_the_token_is_never_shown(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.token = "the-right-one"
    server.latency = 0.01
    with open_imagery(server.template(token="the-right-one"), concurrency=4) as source:
        assert all(r.error is None for r in source.fetch(_ids(server, 4)))
    server.reset()
    server.token = "the-right-one"
    server.latency = 0.01
    source = open_imagery(server.template(token=SECRET), concurrency=4)
    with source, pytest.raises(UserError) as caught:
        list(source.fetch(_ids(server)))
    message = str(caught.value)
    assert len(server.paths) < 40  # failed fast: not all 64 tiles were asked for
    assert "HTTP 403" in message and "token" in message and "\n" not in message
    assert "access_token=***" in message and "access_token=***" in source.description
    for text in (message, source.description, repr(source), caplog.text):
        assert SECRET not in text
    assert any("access_token=***" in record.getMessage() for record in caplog.records)  # urllib3's, redacted


def test_http_proxy_from_the_environment_with_credentials_and_no_proxy(server, monkeypatch):
    # tiles.example.invalid resolves nowhere: a tile arrives only through the proxy (the loopback server, which
    # answers a proxied request by its path)
    template = "http://tiles.example.invalid/{z}/{x}/{y}.png"
    proxy = server.url.replace("http://", "http://analyst:s%40cret@")
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy)
    with open_imagery(template, concurrency=2) as source:
        results = list(source.fetch(_ids(server, 3)))
    assert all(r.error is None for r in results)
    np.testing.assert_array_equal(results[0].image, server.expected(*server.tiles[0]))
    sent = {k.lower(): v for k, v in server.headers[-1].items()}
    assert sent["proxy-authorization"] == "Basic " + base64.b64encode(b"analyst:s@cret").decode()
    monkeypatch.setenv("no_proxy", ".example.invalid")  # bypassed: a direct request, which finds no host
    with open_imagery(template, concurrency=2, retries=0, timeout=2) as source:
        [result] = source.fetch(_ids(server, 1), fail_fast=0)
    assert result.image is None and result.error.endswith("after 0 retries") and len(server.paths) == 3


def test_all_404_fails_fast_naming_template_and_zoom(server):
    with open_imagery(f"{server.url}/tiles/{{z}}/{{x}}/{{y}}.png", concurrency=4) as source:
        with pytest.raises(UserError, match=r"HTTP 404 for all of the first 20 tiles.*URL template.*zoom 18"):
            list(source.fetch(_ids(server)))
        with pytest.raises(UserError, match=r"HTTP 404 for all of the first 3 tiles"):
            list(source.fetch(_ids(server, 3)))
    with open_imagery(server.template(), concurrency=4) as source:
        # one good tile among them: no failure, each tile gets its own result
        results = list(source.fetch([(server.x0, server.y0, 17)] * 3 + _ids(server, 1)))
        assert [r.error for r in results] == ["HTTP 404"] * 3 + [None]


def test_cache_serves_the_second_fetch_without_requests(server, tmp_path):
    tiles = _ids(server, 6)
    with open_imagery(server.template(), cache_dir=tmp_path, concurrency=4) as source:
        first = list(source.fetch(tiles))
    assert len(server.paths) == 6
    x, y, z = tiles[0]
    assert (tmp_path / str(z) / str(x) / f"{y}.png").read_bytes() == server.encoded(x, y, "png")
    server.reset()
    with open_imagery(server.template(), cache_dir=tmp_path, concurrency=4) as source:
        second = list(source.fetch(tiles))
    assert server.paths == []
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, second))
    assert not list(tmp_path.rglob("*.tmp"))


def test_redact():
    url = ("https://user:pa55@tiles.example.com/{z}/{x}/{y}.jpg?format=jpg&access_token=abc&key=k1&apikey=k2"
           "&api_key=k3&sig=s1&X-Amz-Signature=s2&X-Amz-Credential=AKIA%2F1&token=t&style=x")
    clean = redact(url)
    assert clean == ("https://***@tiles.example.com/{z}/{x}/{y}.jpg?format=jpg&access_token=***&key=***&apikey=***"
                     "&api_key=***&sig=***&X-Amz-Signature=***&X-Amz-Credential=***&token=***&style=x")
    assert redact("GET /18/1/2.png?access_token=abc HTTP/1.1") == "GET /18/1/2.png?access_token=*** HTTP/1.1"
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"


# -- decoding --------------------------------------------------------------------------------------
def test_decode_palette_gray_alpha_16bit_and_512px(server):
    rgb = server.expected(*server.tiles[9])
    palette = Image.fromarray(rgb).quantize(64)
    assert np.array_equal(decode_tile(_png(np.asarray(palette.convert("RGB")))), np.asarray(palette.convert("RGB")))
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    assert np.array_equal(decode_tile(buf.getvalue()), np.asarray(palette.convert("RGB")))

    gray = rgb[:, :, 1]
    assert np.array_equal(decode_tile(_png(gray)), np.stack([gray] * 3, axis=-1))
    buf = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 257).save(buf, format="PNG")
    assert np.array_equal(decode_tile(buf.getvalue()), np.stack([gray] * 3, axis=-1))

    rgba = np.dstack([rgb, np.where(np.arange(256) < 128, 0, 255).astype(np.uint8)[None, :].repeat(256, 0)])
    assert np.array_equal(decode_tile(_png(rgba)), rgb)  # alpha dropped, colour kept

    big = np.asarray(Image.fromarray(rgb).resize((512, 512), Image.NEAREST))
    assert _mad(decode_tile(_png(big)), rgb) < 1.0
    assert decode_tile(_png(big), size=512).shape == (512, 512, 3)

    with pytest.raises(ValueError, match="unexpected tile size 256x128"):
        decode_tile(_png(rgb[:128]))
    with pytest.raises(ValueError, match="truncated/corrupt image"):
        decode_tile(b"<html>Service unavailable</html>")
    with pytest.raises(ValueError, match="truncated/corrupt image"):
        decode_tile(_png(rgb)[:2000])


# -- tile directories and MBTiles ------------------------------------------------------------------
def _write_tiles(server, tiles, ext, put):
    for x, y in tiles:
        put(f"{x}-{y}-{server.zoom}.{ext}", server.encoded(x, y, ext))


def _check_tiles(server, results, missing):
    for r in results:
        if (r.x, r.y) in missing:
            assert r.error == "missing tile"
        else:
            assert r.error is None and _mad(r.image, server.expected(r.x, r.y)) < 6


def test_tile_directory(server, tmp_path):
    tiles, missing = server.tiles[:8], {server.tiles[2]}
    _write_tiles(server, [t for t in tiles if t not in missing], "jpg",
                 lambda name, data: (tmp_path / name).write_bytes(data))
    (tmp_path / "notes.txt").write_text("not a tile")
    with open_imagery(str(tmp_path), concurrency=4) as source:
        assert source.kind == "tiledir"
        _check_tiles(server, list(source.fetch(_ids(server, 8))), missing)
        with pytest.raises(UserError, match="no zoom-17 tiles.*it has zooms 18"):
            list(source.fetch([(1, 1, 17)]))


def test_tile_directory_on_s3(server, s3):
    tiles, missing = server.tiles[:8], {server.tiles[5]}
    _write_tiles(server, [t for t in tiles if t not in missing], "webp",
                 lambda name, data: s3.put_object(Bucket="imagery", Key=f"tiles/z18/{name}", Body=data))
    with open_imagery("s3://imagery/tiles/z18", concurrency=4) as source:
        assert source.kind == "tiledir"
        _check_tiles(server, list(source.fetch(_ids(server, 8))), missing)
    with open_imagery("s3://imagery/nothing-here/", concurrency=4) as source:
        with pytest.raises(UserError, match="s3://imagery/nothing-here/ has no zoom-18 tiles"):
            list(source.fetch(_ids(server, 1)))


def _mbtiles(path, server, tiles, metadata):
    z = server.zoom
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE metadata (name TEXT, value TEXT)")
        db.execute("CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB)")
        db.executemany("INSERT INTO metadata VALUES (?, ?)", metadata.items())
        db.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)",
                       [(z, x, (1 << z) - 1 - y, server.encoded(x, y, "png")) for x, y in tiles])
    db.close()


def test_mbtiles(server, tmp_path):
    path = tmp_path / "scene.mbtiles"
    missing = {server.tiles[3]}
    _mbtiles(path, server, [t for t in server.tiles[:8] if t not in missing],
             {"name": "scene", "format": "png", "minzoom": "18", "maxzoom": "18"})
    with open_imagery(path, concurrency=4) as source:
        assert source.kind == "mbtiles"
        results = list(source.fetch(_ids(server, 8)))
        assert results[3].error == "missing tile"
        assert all(np.array_equal(r.image, server.expected(r.x, r.y)) for r in results if r.error is None)
        assert sum(r.error is None for r in results) == 7
        with pytest.raises(UserError, match="has zooms 18-18, not 19"):
            list(source.fetch([(0, 0, 19)]))
        with pytest.raises(UserError, match="missing tile for all of the first 2 tiles"):
            list(source.fetch([(server.x0 - 5, server.y0, 18), (server.x0 - 6, server.y0, 18)]))

    no_zooms = tmp_path / "nozooms.mbtiles"
    _mbtiles(no_zooms, server, server.tiles[:1], {"name": "scene", "format": "png"})
    with open_imagery(no_zooms) as source, pytest.raises(UserError, match="has zooms 18-18, not 17"):
        list(source.fetch([(0, 0, 17)]))


# -- GeoTIFF ---------------------------------------------------------------------------------------
def _warp(src_path, out, crs, coarser=1):
    with rasterio.open(src_path) as src:
        resolution = src.res[0] * coarser if coarser != 1 else None
        transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds,
                                                               resolution=resolution)
        profile = dict(src.profile, crs=crs, transform=transform, width=width, height=height, nodata=0)
        with rasterio.open(out, "w", **profile) as dst:
            for band in (1, 2, 3):
                reproject(rasterio.band(src, band), rasterio.band(dst, band), resampling=Resampling.bilinear)
    return out


def _write(path, like, data, **extra):
    with rasterio.open(like) as src:
        profile = dict(src.profile, count=data.shape[0], dtype=data.dtype, **extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _inner(server):
    """The scene's tiles away from its edge (a reprojected raster's edge pixels are partly nodata)."""
    return [(x, y, server.zoom) for x, y in server.tiles
            if 0 < x - server.x0 < 7 and 0 < y - server.y0 < 7][::3]


def test_geotiff_in_any_crs_matches_the_scene(server, sample_scene, tmp_path):
    scene = sample_scene["imagery"]
    with open_imagery(scene, concurrency=2) as source:
        assert source.kind == "geotiff"
        results = list(source.fetch(_ids(server)))
    assert all(np.array_equal(r.image, server.expected(r.x, r.y)) for r in results)

    wrong = _mad(server.expected(*server.tiles[9]), server.expected(*server.tiles[10]))
    for crs in ("EPSG:4326", "EPSG:32735"):
        path = _warp(scene, tmp_path / f"scene-{crs[5:]}.tif", crs)
        with open_imagery(path, concurrency=2) as source:
            results = list(source.fetch(_inner(server)))
        diffs = [_mad(r.image, server.expected(r.x, r.y)) for r in results]
        assert max(diffs) < 4 and max(diffs) < wrong / 5, (crs, diffs)


def test_geotiff_band_layouts_and_16_bit(server, sample_scene, tmp_path):
    scene = sample_scene["imagery"]
    with rasterio.open(scene) as src:
        rgb = src.read()
    tiles = _ids(server, 4)
    x0, y0, _ = tiles[0]

    def read(path, **options):
        with open_imagery(path, concurrency=2, **options) as source:
            return list(source.fetch(tiles, fail_fast=0))

    gray = read(_write(tmp_path / "gray.tif", scene, rgb[1:2], photometric="MINISBLACK"))
    assert all(np.array_equal(r.image, np.repeat(server.expected(r.x, r.y)[:, :, 1:2], 3, axis=2)) for r in gray)

    alpha = np.full((1, *rgb.shape[1:]), 255, np.uint8)
    alpha[:, :256, :256] = 0  # the first tile is transparent
    rgba = read(_write(tmp_path / "rgba.tif", scene, np.concatenate([rgb, alpha]), photometric="RGB", alpha="YES"))
    assert rgba[0].error == "outside imagery"
    assert all(np.array_equal(r.image, server.expected(r.x, r.y)) for r in rgba[1:])

    five = np.concatenate([rgb, rgb[:2] // 2])
    picked = read(_write(tmp_path / "five.tif", scene, five, photometric="MINISBLACK"), bands=(3, 2, 1))
    assert all(np.array_equal(r.image, server.expected(r.x, r.y)[:, :, ::-1]) for r in picked)
    first3 = read(tmp_path / "five.tif")
    assert all(np.array_equal(r.image, server.expected(r.x, r.y)) for r in first3)

    deep = read(_write(tmp_path / "uint16.tif", scene, rgb.astype(np.uint16) * 257))
    assert all(np.array_equal(r.image, server.expected(r.x, r.y)) for r in deep)
    twelve = read(_write(tmp_path / "nbits12.tif", scene, rgb.astype(np.uint16) * 16 + 8, nbits=12))
    assert all(_mad(r.image, server.expected(r.x, r.y)) < 0.6 for r in twelve)


def test_geotiff_outside_coarse_and_bad_files(server, sample_scene, tmp_path):
    scene = sample_scene["imagery"]
    z = server.zoom
    far = [(server.x0 - 20 - i, server.y0, z) for i in range(3)]
    with open_imagery(scene) as source:
        assert [r.error for r in source.fetch(far + _ids(server, 1), fail_fast=0)][:3] == ["outside imagery"] * 3
        with pytest.raises(UserError, match="outside imagery for all of the first 3 tiles"):
            list(source.fetch(far))
    coarse = _warp(scene, tmp_path / "coarse.tif", "EPSG:3857", coarser=8)
    with open_imagery(coarse) as source, pytest.raises(UserError, match="8x coarser than zoom 18"):
        list(source.fetch(_ids(server, 1)))
    with pytest.raises(UserError, match="imagery file not found"):
        open_imagery(tmp_path / "nope.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(UserError, match="cannot open imagery"):
        open_imagery(tmp_path / "bad.tif")


def test_geotiff_over_http_and_s3(server, s3, sample_scene):
    tiles = _inner(server)[:3]
    with open_imagery(f"{server.url}/files/scene.tif", concurrency=2) as source:
        results = list(source.fetch(tiles))
    assert all(np.array_equal(r.image, server.expected(r.x, r.y)) for r in results)
    assert any(p == "/files/scene.tif" for p in server.paths)

    s3.put_object(Bucket="imagery", Key="cog/scene.tif", Body=sample_scene["imagery"].read_bytes())
    with open_imagery("s3://imagery/cog/scene.tif", concurrency=2) as source:
        results = list(source.fetch(tiles))
    assert all(np.array_equal(r.image, server.expected(r.x, r.y)) for r in results)


# -- spec forms ------------------------------------------------------------------------------------
def test_spec_forms(server, sample_scene, tmp_path):
    for spec, kind in ((server.template(), "xyz"), (f"{server.url}/{{q}}.jpg", "xyz"),
                       (sample_scene["imagery"], "geotiff"), (tmp_path, "tiledir")):
        with open_imagery(spec) as source:
            assert source.kind == kind
    for spec, match in ((tmp_path / "missing.mbtiles", "imagery file not found"),
                        (tmp_path / "nothing", "imagery not found"),
                        ("https://example.com/tiles/a.png?key=" + SECRET, "unrecognised imagery"),
                        ("https://example.com/{z}/{x}.png?key=" + SECRET, r"needs \{z\}, \{x\} and \{y\}"),
                        ("https://example.com/t.mbtiles", "MBTiles must be a local file")):
        with pytest.raises(UserError, match=match) as caught:
            open_imagery(spec)
        assert SECRET not in str(caught.value) and "\n" not in str(caught.value)


def test_environment_references_carry_secrets_without_showing_them(server, monkeypatch):
    server.token = "the-right-one"
    monkeypatch.setenv("TD_TEST_TOKEN", "the-right-one")
    spec = server.template().split("?")[0] + "?access_token=${TD_TEST_TOKEN}"
    with open_imagery(spec, concurrency=2) as source:
        assert all(r.error is None for r in source.fetch(_ids(server, 2)))
        assert "the-right-one" not in source.description + repr(source)
    monkeypatch.delenv("TD_TEST_TOKEN")
    with pytest.raises(UserError, match=r"\$\{TD_TEST_TOKEN\}, which is not set"):
        open_imagery(spec)
