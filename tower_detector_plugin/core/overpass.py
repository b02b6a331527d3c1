"""OSM's mapped power supports and lines around candidates, asked of Overpass through QGIS's networking."""

import hashlib
import json
import os

from qgis.core import Qgis, QgsBlockingNetworkRequest, QgsMessageLog
from qgis.PyQt.QtCore import QByteArray, QUrl
from qgis.PyQt.QtNetwork import QNetworkRequest

from ..i18n import tr
from . import settings
from .review_session import ReviewError
from .tasks import LOG_TAG

OSM_FEATURES = 'node["power"~"^(tower|pole|portal)$"]({bbox});way["power"~"^(line|minor_line)$"]({bbox});'


def fetch_overpass(extent, url: str = None) -> str:
    """The OSM power features in extent (a WGS84 QgsRectangle), asked of Overpass through QGIS's networking (its
    proxy and SSL settings apply), saved as the Overpass JSON answer in the work folder; the file's path."""
    bbox = f"{extent.yMinimum():.7f},{extent.xMinimum():.7f},{extent.yMaximum():.7f},{extent.xMaximum():.7f}"
    query = f"[out:json][timeout:180];({OSM_FEATURES.format(bbox=bbox)});out geom;"
    url = url or settings.value("review/overpass_url")
    request = QNetworkRequest(QUrl(url))
    request.setHeader(QNetworkRequest.ContentTypeHeader, "application/x-www-form-urlencoded")
    body = QByteArray(b"data=" + QUrl.toPercentEncoding(query).data())
    blocking = QgsBlockingNetworkRequest()
    if blocking.post(request, body) != QgsBlockingNetworkRequest.NoError:
        message = tr("Overpass ({url}) failed: {errorMessage}")
        raise ReviewError(message.format(url=url, errorMessage=blocking.errorMessage()))
    content = bytes(blocking.reply().content())
    try:
        answer = json.loads(content)
    except ValueError:
        message = tr("Overpass ({url}) did not answer JSON: {content!r}")
        raise ReviewError(message.format(url=url, content=content[:120])) from None
    if not isinstance(answer, dict) or not isinstance(answer.get("elements"), list):
        raise ReviewError(tr("Overpass ({url}) answered without elements").format(url=url))
    path = os.path.join(settings.work_dir(), f"overpass-{hashlib.sha1(query.encode()).hexdigest()[:12]}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(answer, f)
    QgsMessageLog.logMessage(f"Overpass: {len(answer['elements'])} OSM power features in {bbox}", LOG_TAG, Qgis.Info)
    return path
