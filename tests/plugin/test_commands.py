"""The backend argument lists the plugin builds: exact lists, and accepted by the real CLI's own parser."""

import pytest

from tower_detector_plugin.core import commands


def parse(args):
    """The real `tower-detector` parser's reading of args."""
    from tower_detector.cli import build_parser

    return build_parser().parse_args(args)


def _knows(command, option):
    from tower_detector.cli import build_parser

    commands_ = next(a for a in build_parser()._actions if a.dest == "command")
    return any(option in a.option_strings for a in commands_.choices[command]._actions)


def test_tiles():
    args = commands.tiles_args("a.geojson", 18, out="cover.json", shards=4, max_tiles=1000)
    assert args == ["tiles", "--area", "a.geojson", "--zoom", "18", "--shards", "4", "--out", "cover.json",
                    "--max-tiles", "1000", "--events"]
    ns = parse(args)
    assert (ns.area, ns.zoom, ns.shards, ns.max_tiles, ns.events) == ("a.geojson", 18, 4, 1000, True)
    assert commands.tiles_args("1,2,3,4") == ["tiles", "--area", "1,2,3,4", "--zoom", "18", "--events"]


def test_dataset():
    args = commands.dataset_args("a.geojson", "overpass", "https://t/{z}/{x}/{y}.png?key=${K}", "ds", zoom=18,
                                 background_ratio=2.5, split="0.7,0.15,0.15", seed=3, block_size=4,
                                 tower_filter="power=tower", cache="cache", max_tiles=99, span_negatives=1.5)
    ns = parse(args)
    assert (ns.area, ns.towers, ns.imagery, ns.out) == ("a.geojson", "overpass", "https://t/{z}/{x}/{y}.png?key=${K}",
                                                        "ds")
    assert (ns.background_ratio, ns.split, ns.seed, ns.block_size, ns.tower_filter, ns.cache, ns.max_tiles,
            ns.span_negatives) == (2.5, "0.7,0.15,0.15", 3, 4, "power=tower", "cache", 99, 1.5)
    minimal = commands.dataset_args("a", "t.geojson", "i.tif", "out")
    assert minimal == ["dataset", "--area", "a", "--towers", "t.geojson", "--imagery", "i.tif", "--out", "out",
                       "--zoom", "18", "--events"]
    with pytest.raises(ValueError, match="missing: imagery"):
        commands.dataset_args("a", "overpass", "", "out")


def test_train_and_search():
    args = commands.train_args("ds", "m", weights="none", params="p.json", image_size=72, epochs_top=1,
                               epochs_fine=2, batch_size=16, seed=5)
    ns = parse(args)
    assert (ns.data, ns.out, ns.weights, ns.params, ns.image_size, ns.epochs_top, ns.epochs_fine, ns.batch_size,
            ns.seed) == ("ds", "m", "none", "p.json", 72, 1, 2, 16, 5)
    assert commands.train_args("ds", "m") == ["train", "--data", "ds", "--out", "m", "--events"]

    args = commands.search_args("ds", "s", 20, space="space.json", metric="roc_auc", weights="imagenet",
                                image_size=128, epochs_fine=5, batch_size=8)
    ns = parse(args)
    assert (ns.trials, ns.space, ns.metric, ns.weights, ns.image_size) == (20, "space.json", "roc_auc", "imagenet",
                                                                           128)
    with pytest.raises(ValueError, match="metric"):
        commands.search_args("ds", "s", 3, metric="f1")
    with pytest.raises(ValueError, match="at least 1"):
        commands.search_args("ds", "s", 0)


def test_predict_and_results():
    args = commands.predict_args("m", "scene.tif", "store", area="a.geojson", shards=8, shard="3/8", workers=4,
                                 checkpoint_every=64, batch_size=32, max_tiles=10**8)
    ns = parse(args)
    assert (ns.model, ns.imagery, ns.area, ns.tiles, ns.out, ns.shards, ns.shard, ns.workers, ns.checkpoint_every,
            ns.batch_size, ns.max_tiles) == ("m", "scene.tif", "a.geojson", None, "store", 8, "3/8", 4, 64, 32, 10**8)
    ns = parse(commands.predict_args("m", "scene.tif", "store", tiles="cover.json"))
    assert (ns.tiles, ns.area, ns.views) == ("cover.json", None, 1)
    assert parse(commands.predict_args("m", "scene.tif", "store", tiles="cover.json", views=8)).views == 8
    assert "--views" not in commands.predict_args("m", "scene.tif", "store", tiles="cover.json", views=1)
    with pytest.raises(ValueError, match="views must be one of 1, 2, 4, 8, not 3"):
        commands.predict_args("m", "i", "s", tiles="t", views=3)
    with pytest.raises(ValueError, match="exactly one"):
        commands.predict_args("m", "i", "s", area="a", tiles="t")
    with pytest.raises(ValueError, match="exactly one"):
        commands.predict_args("m", "i", "s")

    named = commands.predict_args("m", "https://t/{z}/{x}/{y}.jpg", "store", area="a.geojson",
                                  imagery_name="Esri World Imagery")
    assert named[named.index("--imagery-name") + 1] == "Esri World Imagery"
    assert "--imagery-name" not in commands.predict_args("m", "scene.tif", "store", area="a.geojson")
    if _knows("predict", "--imagery-name"):  # the backend keeps the name from issue 29 on
        assert parse(named).imagery_name == "Esri World Imagery"

    args = commands.results_args("store", heatmap="h.tif", candidates="c.gpkg", threshold=0.62,
                                 json_path="s.json", geojson="o.geojson")
    assert args == ["results", "store", "--heatmap", "h.tif", "--candidates", "c.gpkg", "--threshold", "0.62",
                    "--json", "s.json", "--geojson", "o.geojson", "--events"]
    ns = parse(args)
    assert (ns.store, ns.heatmap, ns.candidates, ns.threshold, ns.json, ns.geojson) == (
        "store", "h.tif", "c.gpkg", 0.62, "s.json", "o.geojson")
    with pytest.raises(ValueError, match="at least one output"):
        commands.results_args("store")


def test_remote_submit_mirrors_the_local_command():
    local = commands.predict_args("m", "https://t/{z}/{x}/{y}.jpg?access_token=${TOWER_DETECTOR_TOKEN}",
                                  "s3://bucket/jobs/p1/store", area="a.geojson", workers=8)
    args = commands.remote_submit_args(local, name="p1", profile="work", region="eu-west-1")
    assert args[:3] == ["remote", "submit", "predict"]
    assert args[-2:] == ["--yes", "--events"] and args.count("--events") == 1
    ns = parse(args)
    assert (ns.kind, ns.model, ns.area, ns.out, ns.workers, ns.name, ns.profile, ns.region, ns.yes) == (
        "predict", "m", "a.geojson", "s3://bucket/jobs/p1/store", 8, "p1", "work", "eu-west-1", True)
    with pytest.raises(ValueError, match="not tiles"):
        commands.remote_submit_args(commands.tiles_args("a"))


def test_remote_status_and_fetch():
    ns = parse(commands.remote_args("status", "p1", profile="work"))
    assert (ns.remote_action, ns.job, ns.profile, ns.events) == ("status", "p1", "work", True)
    args = commands.remote_args("fetch", "p1", out="fetched", threshold=0.7)
    assert args == ["remote", "fetch", "p1", "--out", "fetched", "--threshold", "0.7", "--events"]
    ns = parse(args)
    assert (ns.out, ns.threshold) == ("fetched", 0.7)
    with pytest.raises(ValueError, match="missing: out"):
        commands.remote_args("fetch", "p1")
    with pytest.raises(ValueError, match="unknown remote action"):
        commands.remote_args("submit", "p1")


def test_export_and_conflate():
    args = commands.export_args("osm", "c.gpkg", "t.osm", comment="HV towers", source="Esri World Imagery",
                                osm="zambia.osm.pbf")
    assert args == ["export", "osm", "--candidates", "c.gpkg", "--out", "t.osm", "--comment", "HV towers",
                    "--source", "Esri World Imagery", "--osm", "zambia.osm.pbf", "--events"]
    ns = parse(args)
    assert (ns.kind, ns.osm, ns.source, ns.include_near_duplicates) == ("osm", "zambia.osm.pbf", "Esri World Imagery",
                                                                        False)
    ns = parse(commands.export_args("maproulette-cooperative", "c.gpkg", "c.geojson", include_near_duplicates=True))
    assert ns.include_near_duplicates and ns.osm is None
    overlay = commands.export_args("overlay", "c.gpkg", "o.geojson", source="x", osm="y", include_near_duplicates=True)
    assert overlay == ["export", "overlay", "--candidates", "c.gpkg", "--out", "o.geojson", "--events"]
    args = commands.conflate_args("c.gpkg", "overpass", duplicate_m=25.0)
    assert args == ["conflate", "--candidates", "c.gpkg", "--osm", "overpass", "--duplicate-distance", "25.0",
                    "--events"]
    assert parse(args).duplicate_distance == 25.0
