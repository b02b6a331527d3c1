"""Handing the review over to an OSM editor: JOSM through its remote control, iD and Rapid through links.

JOSM's remote control (https://josm.openstreetmap.de/wiki/Help/RemoteControlCommands) is plain HTTP on
127.0.0.1:8111, GET only (JOSM answers any other method with 501), every argument in the query string. It answers
"OK" or an HTML page whose <p> holds the reason (400 bad request, 403 forbidden by JOSM's preferences).
Requests go through QgsBlockingNetworkRequest so that QGIS's network settings apply. Nothing secret is involved:
no token or credential ever goes into a request or an editor link.
"""

import html
import json
import math
import re
from urllib.parse import quote  # percent-encoding only; the network calls are QGIS's

from qgis.core import QgsBlockingNetworkRequest
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from ..i18n import tr

JOSM_URL = "http://127.0.0.1:8111"
EARTH_RADIUS_M = 6378137.0  # WGS84 semi-major axis, as Web Mercator uses
UPLOAD_POLICIES = ("true", "false", "never")  # JOSM's UploadPolicy: normal, discouraged, blocked
EDITORS = {"id": "https://www.openstreetmap.org/edit?editor=id", "rapid": "https://rapideditor.org/edit"}
_NOT_LISTENING = (QNetworkReply.ConnectionRefusedError, QNetworkReply.HostNotFoundError, QNetworkReply.TimeoutError)


class JosmError(Exception):
    """JOSM answered with an error; the message is JOSM's own reason, one line."""


class JosmNotRunning(JosmError):
    """Nothing answered at the remote control address."""


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _message(body: str) -> str:
    """JOSM's reason from its HTML error page: the <p> text, else the <h1>, as one short line."""
    found = re.search(r"<p>(.*?)</p>", body, re.S) or re.search(r"<h1>(.*?)</h1>", body, re.S)
    return _one_line(html.unescape(re.sub(r"<[^>]+>", " ", found.group(1) if found else body)))


def _one_line(text: str, limit: int = 300) -> str:
    # load_data's URL and JOSM's parse error for it carry all the data: never paste that into a message bar
    line = " ".join(text.split())
    return line[:limit] + "..." if len(line) > limit else line


class JosmRemote:
    """A client for JOSM's remote control at `base`; each call blocks until JOSM answers or timeout_ms passes.

    The timeout is generous because JOSM may be set to ask the user to confirm each action before it answers.
    """

    def __init__(self, base: str = JOSM_URL, timeout_ms: int = 30_000):
        self.base = base.rstrip("/")
        self.timeout_ms = timeout_ms

    def _get(self, command: str, params=None) -> str:
        query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in (params or {}).items())
        url = f"{self.base}/{command}" + (f"?{query}" if query else "")
        request = QNetworkRequest(QUrl.fromEncoded(url.encode("ascii")))
        request.setTransferTimeout(self.timeout_ms)
        blocking = QgsBlockingNetworkRequest()
        # forceRefresh: every command must reach JOSM; QGIS's network cache would answer a repeated one itself (the
        # same layer sent again, /version while JOSM is down)
        blocking.get(request, True)
        reply = blocking.reply()
        body = bytes(reply.content()).decode("utf-8", "replace")
        status = reply.attribute(QNetworkRequest.HttpStatusCodeAttribute)
        if status is None:
            where = self.base.split("//", 1)[-1]
            if reply.error() == QNetworkReply.OperationCanceledError:  # our transfer timeout, or QGIS's own
                message = tr("JOSM did not answer on {where} within {timeout_ms_1000:g} s: is it busy, or "
                             "waiting for you to confirm a remote control request?")
                raise JosmNotRunning(message.format(where=where, timeout_ms_1000=self.timeout_ms / 1000))
            if reply.error() in _NOT_LISTENING:
                message = tr("JOSM is not listening on {where}: start JOSM and enable Preferences > Remote "
                             "Control")
                raise JosmNotRunning(message.format(where=where))
            message = tr("JOSM remote control at {base} failed: {errorMessage}")
            raise JosmError(message.format(base=self.base, errorMessage=_one_line(blocking.errorMessage())))
        if status != 200:
            message = tr("JOSM refused {command} (HTTP {status}): {message_body}")
            raise JosmError(message.format(command=command, status=status, message_body=_message(body)))
        return body

    def version(self) -> dict:
        """JOSM's /version answer: {"protocolversion": {"major", "minor"}, "application", "version"}."""
        body = self._get("version")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "protocolversion" not in answer:
            message = tr("{base} answered /version, but not as JOSM's remote control does")
            raise JosmError(message.format(base=self.base))
        return answer

    def load_and_zoom(self, left, bottom, right, top, *, changeset_comment="", changeset_source="",
                      changeset_hashtags="", select=None, new_layer=False, layer_name=None) -> None:
        """Download the box from the OSM API into JOSM, zoom there, and set the changeset tags (empty ones are
        not sent, so that they do not blank what the user typed). select: OSM ids such as "node123".
        new_layer=False leaves JOSM's own "download to a new layer" preference in charge."""
        params = _box(left, bottom, right, top)
        for key, value in (("changeset_comment", changeset_comment), ("changeset_source", changeset_source),
                           ("changeset_hashtags", changeset_hashtags)):
            if value:
                params[key] = value
        if select:
            params["select"] = ",".join(select)
        if new_layer:
            params["new_layer"] = "true"
        if layer_name:
            params["layer_name"] = layer_name
        self._get("load_and_zoom", params)

    def zoom(self, left, bottom, right, top, *, select=None) -> None:
        """Move JOSM's view to the box without downloading anything."""
        params = _box(left, bottom, right, top)
        if select:
            params["select"] = ",".join(select)
        self._get("zoom", params)

    def load_data(self, osm_xml_text: str, *, layer_name: str, new_layer: bool = True, upload_policy: str = "never",
                  layer_locked: bool = False) -> None:
        """Add OSM XML to JOSM. upload_policy "never" blocks uploading the layer, "false" makes JOSM warn first,
        "true" is a normal layer; layer_locked forbids any edit (for reference data).

        JOSM takes the data in the URL (GET only), so keep it to what the user needs around the candidates."""
        if upload_policy not in UPLOAD_POLICIES:
            message = tr("upload_policy must be one of {join_UPLOAD_POLICIES}, not {upload_policy!r}")
            raise ValueError(message.format(
                join_UPLOAD_POLICIES=', '.join(UPLOAD_POLICIES), upload_policy=upload_policy))
        self._get("load_data", {"new_layer": _flag(new_layer), "layer_name": layer_name,
                                "upload_policy": upload_policy, "layer_locked": _flag(layer_locked),
                                "data": osm_xml_text})


def _box(left, bottom, right, top) -> dict:
    return {"left": f"{left:.7f}", "bottom": f"{bottom:.7f}", "right": f"{right:.7f}", "top": f"{top:.7f}"}


def candidate_bbox(lon: float, lat: float, half_size_m: float) -> tuple:
    """(left, bottom, right, top) in degrees, half_size_m metres on each side of the point (spherical earth;
    plenty for a box of a few hundred metres), clamped to valid coordinates."""
    dlat = math.degrees(half_size_m / EARTH_RADIUS_M)
    dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
    return (max(lon - dlon, -180.0), max(lat - dlat, -90.0), min(lon + dlon, 180.0), min(lat + dlat, 90.0))


def editor_url(editor: str, lon: float, lat: float, zoom=19, *, comment="", hashtags="", source="",
               imagery=None) -> str:
    """A link that opens iD ("id", on openstreetmap.org) or Rapid ("rapid") at the point with the changeset
    comment, hashtags and source filled in. imagery: an editor imagery id or "custom:<tile URL template>";
    never one with a token in it (the link is shown, shared and kept in browser history)."""
    if editor not in EDITORS:
        message = tr("unknown editor {editor!r}; expected one of {join_EDITORS}")
        raise ValueError(message.format(editor=editor, join_EDITORS=', '.join(EDITORS)))
    if imagery and "${" in imagery:
        raise ValueError(tr("the imagery for an editor link must not carry a secret placeholder such as ${...}"))
    # iD and Rapid read these from the URL hash and decodeURIComponent each value: encode everything but "/"
    hash_params = [("map", f"{zoom}/{lat:.6f}/{lon:.6f}"), ("comment", comment), ("hashtags", hashtags),
                   ("source", source), ("background", imagery or "")]
    fragment = "&".join(f"{key}={quote(str(value), safe='/')}" for key, value in hash_params if value)
    return f"{EDITORS[editor]}#{fragment}"
