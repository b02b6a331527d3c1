"""Handing candidates to OSM editors: JOSM's remote control (against a loopback imitation of it) and iD/Rapid links."""

import math
import xml.etree.ElementTree as ET
from urllib.parse import unquote, urlsplit

import pytest

from tests.fakes.josm_server import VERSION, JosmServer
from tests.plugin import support  # noqa: F401  (puts the dev checkout on sys.path)
from tower_detector_plugin.core.editors import JosmError, JosmNotRunning, JosmRemote, candidate_bbox, editor_url

COMMENT = "Add HV towers: 3 + 1 checked & confirmed = 100% ✓"
HASHTAGS = "#tower-detector;#hv-grid"
SOURCE = "Esri World Imagery; Tower Detector candidates"
REFERENCE_XML = """<?xml version='1.0' encoding='UTF-8'?>
<osm version='0.6' generator='Tower Detector'>
  <node id='-1' lat='-15.4012345' lon='28.2876543'>
    <tag k='power' v='tower' />
    <tag k='note' v='score 0.97 &amp; "maybe" &lt;check&gt; + ünïcode' />
  </node>
  <node id='-2' lat='-15.4023456' lon='28.2887654'><tag k='power' v='tower' /></node>
</osm>
"""


@pytest.fixture
def josm(qgis_app):
    with JosmServer() as server:
        yield server


def nodes(xml_text):
    return [(n.get("id"), n.get("lat"), n.get("lon"), {t.get("k"): t.get("v") for t in n.findall("tag")})
            for n in ET.fromstring(xml_text.encode()).iter("node")]


def test_version(josm):
    assert JosmRemote(josm.url).version() == VERSION
    assert josm.last("version")["method"] == "GET"


def test_not_listening_is_a_clear_error(qgis_app):
    server = JosmServer().start()
    url = server.url
    server.stop()  # the port is closed now: nothing listens there
    with pytest.raises(JosmNotRunning, match="not listening on 127.0.0.1:.*enable Preferences > Remote Control"):
        JosmRemote(url).version()


def test_no_answer_in_time_is_a_clear_error(josm):
    josm.delay = 2.0
    with pytest.raises(JosmNotRunning, match="did not answer .* within 0.3 s"):
        JosmRemote(josm.url, timeout_ms=300).version()


def test_load_and_zoom_sends_the_documented_parameters(josm):
    left, bottom, right, top = candidate_bbox(28.2876543, -15.4012345, 150)
    JosmRemote(josm.url).load_and_zoom(left, bottom, right, top, changeset_comment=COMMENT,
                                       changeset_source=SOURCE, changeset_hashtags=HASHTAGS)
    query = josm.last("load_and_zoom")["query"]
    assert set(query) == {"left", "bottom", "right", "top", "changeset_comment", "changeset_source",
                          "changeset_hashtags"}
    for key, value in (("left", left), ("bottom", bottom), ("right", right), ("top", top)):
        assert float(query[key]) == pytest.approx(value, abs=1e-7)
    assert (query["changeset_comment"], query["changeset_source"], query["changeset_hashtags"]) == \
        (COMMENT, SOURCE, HASHTAGS)


def test_load_and_zoom_options_and_zoom(josm):
    remote = JosmRemote(josm.url)
    remote.load_and_zoom(28.28, -15.41, 28.29, -15.40, changeset_comment="towers", select=["node12", "way34"],
                         new_layer=True, layer_name="OSM around candidate 151000-142000-18")
    query = josm.last("load_and_zoom")["query"]
    assert query["select"] == "node12,way34" and query["new_layer"] == "true"
    assert query["layer_name"] == "OSM around candidate 151000-142000-18"
    assert "changeset_source" not in query and "changeset_hashtags" not in query  # empty ones are not sent
    remote.zoom(28.28, -15.41, 28.29, -15.40)
    assert josm.last("zoom")["query"] == {"left": "28.2800000", "bottom": "-15.4100000", "right": "28.2900000",
                                          "top": "-15.4000000"}


def test_load_data_reference_layer_is_locked_and_never_uploaded(josm):
    JosmRemote(josm.url).load_data(REFERENCE_XML, layer_name="Tower Detector: OSM reference", upload_policy="never",
                                   layer_locked=True)
    request = josm.last("load_data")
    assert request["method"] == "GET" and request["body"] == b""
    query = request["query"]
    assert set(query) == {"data", "new_layer", "layer_name", "upload_policy", "layer_locked"}
    assert (query["new_layer"], query["upload_policy"], query["layer_locked"]) == ("true", "never", "true")
    assert query["layer_name"] == "Tower Detector: OSM reference"
    assert query["data"] == REFERENCE_XML
    assert nodes(query["data"]) == nodes(REFERENCE_XML)
    assert nodes(query["data"])[0][3]["note"] == 'score 0.97 & "maybe" <check> + ünïcode'


def test_load_data_confirmed_layer_discourages_upload(josm):
    many = "".join(f"<node id='-{i}' lat='{-15.4 - i * 1e-4:.7f}' lon='{28.28 + i * 1e-4:.7f}'>"
                   f"<tag k='power' v='tower'/></node>" for i in range(1, 201))
    confirmed = f"<osm version='0.6' generator='Tower Detector'>{many}</osm>"
    JosmRemote(josm.url).load_data(confirmed, layer_name="Tower Detector: confirmed", upload_policy="false")
    query = josm.last("load_data")["query"]
    assert (query["new_layer"], query["upload_policy"], query["layer_locked"]) == ("true", "false", "false")
    assert len(nodes(query["data"])) == 200 and query["data"] == confirmed


def test_every_command_reaches_josm_even_when_repeated(josm):
    """QGIS's network cache answered a repeated GET itself: a layer sent twice, or /version once JOSM was gone."""
    remote = JosmRemote(josm.url)
    for _ in range(2):
        remote.version()
        remote.load_data(REFERENCE_XML, layer_name="x")
    assert [r["path"] for r in josm.requests] == ["/version", "/load_data"] * 2
    url = josm.url
    josm.stop()
    with pytest.raises(JosmNotRunning):
        JosmRemote(url).version()


def test_load_data_refuses_an_unknown_upload_policy(josm):
    with pytest.raises(ValueError, match="upload_policy"):
        JosmRemote(josm.url).load_data(REFERENCE_XML, layer_name="x", upload_policy="no")
    assert josm.requests == []


@pytest.mark.parametrize("status", [400, 403])
def test_josm_errors_carry_josms_message(josm, status):
    josm.error = (status, "RemoteControl: 'load_data' forbidden by preferences <see Remote Control>")
    with pytest.raises(JosmError) as raised:
        JosmRemote(josm.url).load_data(REFERENCE_XML, layer_name="x")
    message = str(raised.value)
    assert f"HTTP {status}" in message and "\n" not in message
    assert message.endswith("RemoteControl: 'load_data' forbidden by preferences <see Remote Control>")
    assert not isinstance(raised.value, JosmNotRunning)


def test_an_unknown_command_is_josms_bad_request(josm):
    with pytest.raises(JosmError, match="HTTP 400.*No command specified"):
        JosmRemote(josm.url)._get("no_such_command")


def hash_params(url):
    parts = urlsplit(url)
    assert "+" not in parts.fragment  # iD decodes with decodeURIComponent, which leaves "+" as it is
    return parts, {key: unquote(value) for key, value in (pair.split("=", 1) for pair in parts.fragment.split("&"))}


def test_id_link():
    url = editor_url("id", 28.2876543, -15.4012345, comment=COMMENT, hashtags=HASHTAGS, source=SOURCE,
                     imagery="EsriWorldImagery")
    parts, params = hash_params(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.query) == ("https", "www.openstreetmap.org", "/edit",
                                                                     "editor=id")
    zoom, lat, lon = params["map"].split("/")
    assert (float(zoom), float(lat), float(lon)) == (19, pytest.approx(-15.4012345, abs=1e-6),
                                                     pytest.approx(28.2876543, abs=1e-6))
    assert params == {"map": params["map"], "comment": COMMENT, "hashtags": HASHTAGS, "source": SOURCE,
                      "background": "EsriWorldImagery"}


def test_rapid_link():
    imagery = "custom:https://tiles.example.org/{zoom}/{x}/{y}.jpg?style=a&b=c"
    parts, params = hash_params(editor_url("rapid", -77.02271, 38.90085, zoom=18, comment="HV towers",
                                           imagery=imagery))
    assert (parts.scheme, parts.netloc, parts.path, parts.query) == ("https", "rapideditor.org", "/edit", "")
    assert params == {"map": "18/38.900850/-77.022710", "comment": "HV towers", "background": imagery}


def test_links_refuse_unknown_editors_and_secret_placeholders():
    with pytest.raises(ValueError, match="unknown editor"):
        editor_url("potlatch", 0, 0)
    with pytest.raises(ValueError, match="secret"):
        editor_url("id", 0, 0, imagery="custom:https://t.example/{z}/{x}/{y}?token=${TOWER_DETECTOR_TOKEN}")


@pytest.mark.parametrize("lat", [0.0, -15.4, 60.0])
def test_candidate_bbox_is_the_asked_size(lat):
    left, bottom, right, top = candidate_bbox(28.3, lat, 100)
    metres_per_degree = 6378137.0 * math.pi / 180
    assert (top - bottom) * metres_per_degree == pytest.approx(200, rel=1e-9)
    assert (right - left) * metres_per_degree * math.cos(math.radians(lat)) == pytest.approx(200, rel=1e-9)
    assert (left + right) / 2 == pytest.approx(28.3) and (bottom + top) / 2 == pytest.approx(lat)


def test_a_long_josm_message_is_cut_to_one_short_line(josm):
    josm.error = (400, "Failed to parse " + REFERENCE_XML * 20 + ": unexpected end")
    with pytest.raises(JosmError) as raised:
        JosmRemote(josm.url).load_data(REFERENCE_XML, layer_name="x")
    assert "Failed to parse <?xml" in str(raised.value) and str(raised.value).endswith("...")
    assert len(str(raised.value)) < 400 and "\n" not in str(raised.value)
