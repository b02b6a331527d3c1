"""Imagery sources the user already has in QGIS, and keeping their secrets off command lines and disks.

Sources: the XYZ connections of QGIS's browser (settings `qgis/connections-xyz/NAME/...`), the project's raster
layers (a local file, or an XYZ layer), or a URL template / path typed in. The backend expands ${NAME} references
in a spec from its environment; so a spec here carries ${TOWER_DETECTOR_TOKEN} (the token of the chosen auth
config, from QgsAuthManager) or ${TOWER_DETECTOR_SECRET_<PARAM>} (any query value the backend would hide: every
one but a harmless parameter's, by redaction.py's allowlist, the backend's own), and the values go into the job's
environment only.
"""

import os
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from qgis.core import QgsProject, QgsProviderRegistry, QgsRasterLayer, QgsSettings

from ..i18n import tr
from .redaction import USERINFO, redact, secrets
from .result_layers import ROLE_PROPERTY
from .settings import auth_token

TOKEN_VAR = "TOWER_DETECTOR_TOKEN"
TOKEN_REF = "${" + TOKEN_VAR + "}"


@dataclass
class ImagerySpec:
    spec: str  # what goes on the command line and into jobs.json: no secret values
    env: dict = field(default_factory=dict)  # ${NAME} values, for the subprocess environment only


def resolve(spec: str, authcfg: str = "") -> ImagerySpec:
    """A spec safe to show and store, and the environment it needs. ValueError (one line) when it cannot work."""
    spec = (spec or "").strip()
    if not spec:
        raise ValueError(tr("no imagery given"))
    if USERINFO in secrets(spec):
        raise ValueError("the imagery URL has user:password@ in it; store the password in a QGIS authentication "
                         "config and put " + TOKEN_REF + " where it goes")
    env = {}

    def lift(name, secret):
        var = "TOWER_DETECTOR_SECRET_" + (re.sub(r"\W", "_", name).upper() or "QUERY")
        env[var] = secret  # as written: the backend puts it back into the URL verbatim
        return f"${{{var}}}"

    spec = redact(spec, lift)  # every value the backend would hide becomes a reference
    if authcfg:
        if TOKEN_REF not in spec:
            raise ValueError(f"an authentication config is chosen but the imagery spec has no {TOKEN_REF}; put it "
                             "where the token goes, e.g. ...?access_token=" + TOKEN_REF)
        env[TOKEN_VAR] = auth_token(authcfg)
    elif TOKEN_REF in spec and TOKEN_VAR not in os.environ:
        message = tr("the imagery spec uses {TOKEN_REF}: choose the authentication config that holds the token")
        raise ValueError(message.format(TOKEN_REF=TOKEN_REF))
    return ImagerySpec(spec, env)


def literal_secrets(spec: str) -> list:
    """Names of the query parameters (or "user:password@") whose values the backend would hide in spec: what must
    never be stored in QgsSettings or a project."""
    return [name or "a value with no name" for name in secrets(spec or "")]


@dataclass
class Source:
    label: str  # shown in the combo box
    spec: str
    authcfg: str = ""
    name: str = ""  # the connection's or layer's name: what the imagery is called (the OSM changeset's source)
    kind: str = ""  # "layer" (a layer of the project), "xyz" (a connection), "" (the Settings' default)


# openstreetmap.org's tile servers forbid bulk downloads (operations.osmfoundation.org/policies/tiles): a
# prediction fetches every tile of an area, so they are never offered as a source.
_NO_BULK = re.compile(r"(?i)^https?://([a-z0-9-]+\.)*tile\.openstreetmap\.org/")


def xyz_connections() -> list:
    """The XYZ tile connections of QGIS's browser panel (aerial imagery, one hopes; not OSM's own tiles)."""
    settings = QgsSettings()
    settings.beginGroup("qgis/connections-xyz")
    names = settings.childGroups()
    settings.endGroup()
    out = []
    for name in sorted(names, key=str.lower):
        base = f"qgis/connections-xyz/{name}/"
        url = unquote(settings.value(base + "url", "") or "")
        hidden = str(settings.value(base + "hidden", "false")).lower() in ("true", "1")
        if url and not hidden and not _NO_BULK.match(url):
            out.append(Source(tr("XYZ connection: {name}").format(name=name), url,
                              settings.value(base + "authcfg", "") or "", name, "xyz"))
    return out


def raster_layer_sources(project: QgsProject = None) -> list:
    """The project's raster layers the backend can read: local files (GDAL) and XYZ layers; not the heatmaps."""
    project = project or QgsProject.instance()
    out = []
    for layer in project.mapLayers().values():
        if not isinstance(layer, QgsRasterLayer) or layer.customProperty(ROLE_PROPERTY):
            continue  # the plugin's own heatmaps are no imagery
        provider = layer.providerType()
        parts = QgsProviderRegistry.instance().decodeUri(provider, layer.source())
        if provider == "gdal" and parts.get("path") and os.path.isfile(parts["path"]):
            out.append(Source(tr("Layer: {name}").format(name=layer.name()), parts["path"], "", layer.name(), "layer"))
        elif provider == "wms" and parts.get("type") == "xyz" and parts.get("url") and not _NO_BULK.match(
                unquote(parts["url"])):
            out.append(Source(tr("Layer: {name}").format(name=layer.name()), unquote(parts["url"]),
                              parts.get("authcfg", "") or "", layer.name(), "layer"))
    return sorted(out, key=lambda s: s.label.lower())
