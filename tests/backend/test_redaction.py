"""No credential in any file, event or log, whatever its parameter is called: redaction.redact's allowlist, and a
marker sent through every output of the pipeline against a real tile server on loopback."""

import json
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

from tower_detector.common.redaction import HARMLESS, redact, secrets

REPO = Path(__file__).resolve().parents[2]
MARK = "Qz7MARKER"  # every secret below contains it; no output may
SECRET_NAMES = ("access_token", "connectId", "auth", "code", "session", "zzq")


def test_every_value_but_a_harmless_parameters_is_hidden():
    url = ("https://me:pw@t.example.com/{z}/{x}/{y}.jpg?format=jpg&connectId=c1&auth=a1&code=k&session=s"
           "&access_token=t&zzq=r&STYLE=&Layer=Topo&TILEMATRIX=EPSG:3857:{z}&tilerow={y}")
    assert redact(url) == ("https://***@t.example.com/{z}/{x}/{y}.jpg?format=jpg&connectId=***&auth=***&code=***"
                           "&session=***&access_token=***&zzq=***&STYLE=&Layer=Topo&TILEMATRIX=EPSG:3857:{z}"
                           "&tilerow={y}")
    assert secrets(url) == ["connectId", "auth", "code", "session", "access_token", "zzq", "user:password@"]
    # placeholders and ${NAME} references are kept, under any name and in userinfo; a value with no name is not
    kept = "https://${USER}:${PASS}@t.example.com/{z}/{x}/{-y}.png?key=${TOKEN}&q={q}&s={s}&empty="
    assert redact(kept) == kept and secrets(kept) == []
    assert redact("https://t.example.com/a.png?abc123") == "https://t.example.com/a.png?***"
    assert redact("https://t.example.com/a.png?key=${TOKEN}x") == "https://t.example.com/a.png?key=***"
    # a second "?" starts another parameter, not part of a harmless one's value
    assert redact("https://t/a?layer=x?key=s&bbox=1,2,3,4") == "https://t/a?layer=x?key=***&bbox=1,2,3,4"
    assert {"x", "y", "z", "layer", "format", "tilematrix", "bbox"} <= HARMLESS


def test_urls_in_free_text_json_and_xml_are_redacted():
    assert redact("GET /18/1/2.png?connectId=abc HTTP/1.1") == "GET /18/1/2.png?connectId=*** HTTP/1.1"
    assert redact("imagery http://u:p@h/t?auth=x (HTTP 403)") == "imagery http://***@h/t?auth=*** (HTTP 403)"
    text = json.dumps({"imagery": "https://h/{z}/{x}/{y}.png?session=abc", "n": 1, "quote": 'a "b"?c=d'})
    assert json.loads(redact(text)) == {"imagery": "https://h/{z}/{x}/{y}.png?session=***", "n": 1,
                                        "quote": 'a "b"?c=***'}
    assert redact('<tag v="https://h/?layer=a&amp;code=s"/>') == '<tag v="https://h/?layer=a&amp;code=***"/>'
    for plain in ("s3://bucket/prefix", "is it ok? yes", "/data/scene.tif", "#one;#two", "a=b&c=d",
                  "bbox latitude 91 is outside -90..90 (lat/lon swapped?)", "no chunks yet (has `predict` run?)"):
        assert redact(plain) == plain
    assert redact("x", lambda name, value: "never") == "x"
    assert redact("h?a=1&b=2", lambda name, value: f"<{name}>") == "h?a=<a>&b=<b>"


def test_one_definition_no_private_copies():
    """The backend's modules import redaction's functions; no other module defines its own secret patterns."""
    sources = [p for p in (REPO / "backend").rglob("*.py")] + list((REPO / "tower_detector_plugin").rglob("*.py"))
    for path in sources:
        if path.name in ("redaction.py", "resources.py"):
            continue
        text = path.read_text()
        assert "def redact" not in text and "_SECRET_QUERY" not in text and "_USERINFO" not in text, path


# -- a marker through every output -----------------------------------------------------------------
def _run(*args, events=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "tower_detector", *map(str, args), *(["--events"] if events else [])],
                          capture_output=True, text=True, timeout=timeout)
    return proc


def _texts(folder):
    """(path, bytes) of every file under folder, and of every member of the zip files (npz, keras) among them."""
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield path, data
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    yield f"{path}:{name}", archive.read(name)


def test_a_secret_under_any_name_reaches_no_file_event_or_log(sample_scene, tiny_model, tmp_path):
    from tests.fakes.tileserver import TileServer

    work = tmp_path / "work"
    work.mkdir()
    printed = []

    def run(*args, events=True, ok=True):
        proc = _run(*args, events=events)
        printed.append((" ".join(map(str, args)), proc.stdout + proc.stderr))
        if ok:
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc

    with TileServer(sample_scene["imagery"], token=f"{MARK}-access_token") as server:
        query = "&".join(f"{name}={MARK}-{name}" for name in SECRET_NAMES)
        url = server.template("png").replace("://", f"://analyst:{MARK}-pw@") + f"?format=png&{query}"
        server.status = {server.tiles[5]: 404}  # an error reason in the dataset, a chunk and the results
        area = sample_scene["area"]

        run("dataset", "--area", area, "--towers", sample_scene["towers"], "--imagery", url, "--out", work / "ds",
            "--block-size", 2, "--cache", work / "cache", events=False)
        run("dataset", "--area", area, "--towers", sample_scene["towers"], "--imagery", url, "--out",
            work / "ds-zoom17", "--zoom", 17, ok=False)  # a refusal that names the imagery
        run("predict", "--model", tiny_model[0], "--imagery", url, "--area", area, "--out", work / "store",
            "--checkpoint-every", 16)
        assert len(server.paths) > 64  # the tiles were fetched, with the token, by both commands
    results = work / "results"
    results.mkdir()
    run("results", work / "store", "--heatmap", results / "heatmap.tif", "--candidates", results / "candidates.gpkg",
        "--json", results / "original.json", "--geojson", results / "overlay.geojson", "--threshold", 0)
    conflated = results / "conflated.gpkg"
    shutil.copy(results / "candidates.gpkg", conflated)
    run("conflate", "--candidates", conflated, "--osm", sample_scene["towers"])
    with sqlite3.connect(conflated) as db:
        db.execute("UPDATE candidates SET status = 'confirmed' WHERE status = 'unreviewed' AND fid % 2 = 0")
    (work / "exports").mkdir()
    for kind, out in (("osm", "towers.osm"), ("osm-reference", "reference.osm"), ("overlay", "overlay.geojson"),
                      ("maproulette", "tasks.geojson"), ("maproulette-cooperative", "cooperative.geojson"),
                      ("tasking-manager", "tm"), ("labels", "labels.geojson")):
        run("export", kind, "--candidates", conflated, "--out", work / "exports" / out)

    # the records are there, with the secrets masked: this test looks where they would be
    config = json.loads((work / "ds" / "config.json").read_text())
    assert "connectId=***" in config["imagery"] and "format=png" in config["imagery"] and "{z}" in config["imagery"]
    with sqlite3.connect(conflated) as db:
        job = dict(db.execute("SELECT key, value FROM job"))
    assert "zzq=***" in json.dumps(job) and "analyst" not in json.dumps(job)
    skipped = json.loads((work / "ds" / "dataset.json").read_text())["skipped_tiles"]
    assert [s["reason"] for s in skipped] == ["HTTP 404"]

    leaks = [str(path) for path, data in _texts(work) if MARK.encode() in data]
    leaks += [command for command, text in printed if MARK in text]
    assert not leaks
