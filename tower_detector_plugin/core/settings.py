"""The plugin's settings (QgsSettings under "tower_detector/") and its secrets (QgsAuthManager only).

Nothing secret is ever stored here: an imagery token lives in QGIS's authentication database and the settings
keep only its auth config id. Tokens reach the backend through the subprocess environment (see imagery_sources.py).
"""

import json
import os

from qgis.core import Qgis, QgsApplication, QgsAuthMethodConfig, QgsMessageLog, QgsSettings
from qgis.PyQt.QtCore import QT_TR_NOOP

from ..i18n import tr
from . import parameters, runner
from .tasks import LOG_TAG

PREFIX = "tower_detector/"

# Documented defaults. The throughput and price figures are assumptions for estimates, editable in Settings:
# - local CPU: Xception at 256 px on a 4-core laptop CPU scores about 10 tiles/s (README: 121 tiles/s at 72 px
#   on 2 cores; 256 px is 12.6x the pixels);
# - remote GPU: 150 tiles/s per GPU and $0.20/h (g4dn.xlarge spot, us-east-1), the backend's `remote submit`
#   estimate defaults; 8 GPU workers.
DEFAULTS = {
    "jobs/run_on": "local",  # where Train and Predict run by default: "local" or "aws"
    "cli/path": "",  # a tower-detector executable or a Python with tower_detector; "" = auto-detect
    "work_dir": "",  # "" = <QGIS profile>/tower_detector
    "aws/profile": "",
    "aws/region": "",
    "aws/bucket": "",
    "aws/queue": "",
    "imagery/spec": "",  # URL template, file or folder; a token appears only as ${TOWER_DETECTOR_TOKEN}
    "imagery/authcfg": "",  # QgsAuthManager config id holding that token
    "estimate/local_tiles_per_s": 10.0,
    "estimate/remote_tiles_per_s": 150.0,
    "estimate/remote_usd_per_hour": 0.20,
    "estimate/remote_workers": 8,
    "area/warn_tiles": 1_000_000,  # the picker warns above this many zoom-18 tiles
    "area/max_tiles": parameters.MAX_TILES.default,  # and refuses above this (predict's own limit)
    "results/heatmap_floor": 0.5,  # heatmap pixels below this score are transparent
    "results/threshold": parameters.THRESHOLD.default,  # default candidate score filter
    "review/scale": 2000,  # the map scale each candidate is shown at (0: keep the scale)
    "review/reviewer": "",  # "" = the login name
    # the changeset tags JOSM, iD and the .osm export pre-fill (a human reviews them before any upload)
    "review/comment": "Add power towers confirmed on imagery (Tower Detector candidates, human-reviewed)",
    "review/source": "",  # "" = the imagery's name the job kept, else "aerial imagery"; e.g. "Esri World Imagery"
    "review/hashtags": "#towerdetector",
    "review/overpass_url": "https://overpass-api.de/api/interpreter",
    "review/josm_url": "http://127.0.0.1:8111",  # JOSM's remote control (Preferences > Remote Control)
    "review/duplicate_m": parameters.DUPLICATE_DISTANCE.default,  # OSM has a tower this close to the point
}

# What each setting the Settings dialog shows is for, in plain words (its tooltip).
HELP = {
    "jobs/run_on": QT_TR_NOOP(
        "Where Train and Predict run unless their dialog says otherwise: this computer, or AWS Batch."),
    "cli/path": QT_TR_NOOP(
        "The tower-detector program (or a Python that has it). Empty: the dev checkout's, then the one on PATH. "
        "Check runs it."),
    "work_dir": QT_TR_NOOP(
        "Where areas, job records and default outputs go (the first job dialog asks for it)."),
    "aws/profile": QT_TR_NOOP("The AWS profile (from ~/.aws) that runs remote jobs; empty: the default one."),
    "aws/region": QT_TR_NOOP("The AWS region of the bucket and the job queue; empty: the profile's."),
    "aws/bucket": QT_TR_NOOP("The S3 bucket that holds remote jobs' inputs and results."),
    "aws/queue": QT_TR_NOOP("The AWS Batch job queue remote jobs go to; empty: the backend's default."),
    "imagery/spec": QT_TR_NOOP(
        "The imagery the job dialogs start from: a URL template, a file or a folder. A token is written as "
        "${TOWER_DETECTOR_TOKEN}, never in the URL itself."),
    "imagery/authcfg": QT_TR_NOOP(
        "The QGIS authentication config that holds the imagery's token; it reaches the backend only in its "
        "environment."),
    "estimate/local_tiles_per_s": QT_TR_NOOP(
        "How many tiles a second this computer scores, for the time estimates (an assumption: measure yours and put "
        "it here)."),
    "estimate/remote_tiles_per_s": QT_TR_NOOP("How many tiles a second one AWS GPU scores, for the estimates."),
    "estimate/remote_usd_per_hour": QT_TR_NOOP("What one AWS GPU costs an hour, for the cost estimates."),
    "estimate/remote_workers": QT_TR_NOOP("How many AWS GPUs a remote prediction uses at once, for the estimates."),
    "area/warn_tiles": QT_TR_NOOP("Areas with more tiles than this get a warning: a large job."),
    "area/max_tiles": QT_TR_NOOP("Areas with more tiles than this are refused."),
    "results/heatmap_floor": QT_TR_NOOP(
        "Heatmap pixels scoring below this are transparent, so the imagery shows through."),
    "results/threshold": QT_TR_NOOP("The candidate score filter results start with, when the model recommends none."),
    "review/josm_url": QT_TR_NOOP("JOSM's remote control address (JOSM: Preferences > Remote Control)."),
    "review/overpass_url": QT_TR_NOOP("The Overpass API that conflation and the JOSM layers ask for OSM's towers."),
}


# Keys that were renamed: old -> new. A value stored under an old key moves to the new one when first read.
RENAMED = {"backend/path": "cli/path", "backend/mode": "jobs/run_on"}


def _current(key: str) -> str:
    """key, or the new name of a renamed key (with a deprecation message in the log)."""
    if key in RENAMED:
        QgsMessageLog.logMessage(f"the setting {key} is now called {RENAMED[key]}", LOG_TAG, Qgis.Warning)
        return RENAMED[key]
    return key


def _migrate(store: QgsSettings) -> None:
    """Move values stored under old keys to their new names (a newer value already there wins)."""
    for old, new in RENAMED.items():
        if store.contains(PREFIX + old):
            if not store.contains(PREFIX + new):
                store.setValue(PREFIX + new, store.value(PREFIX + old))
            store.remove(PREFIX + old)
            QgsMessageLog.logMessage(f"setting {PREFIX}{old} moved to {PREFIX}{new}", LOG_TAG, Qgis.Info)


def value(key: str):
    """A setting with the type of its default."""
    key = _current(key)
    default = DEFAULTS[key]
    store = QgsSettings()
    _migrate(store)
    raw = store.value(PREFIX + key, default)
    if raw is None or raw == "":
        return default
    try:
        return type(default)(raw) if not isinstance(default, bool) else str(raw).lower() in ("1", "true", "yes")
    except (TypeError, ValueError):
        return default


def set_value(key: str, new_value) -> None:
    key = _current(key)
    if key not in DEFAULTS:
        raise KeyError(key)
    store = QgsSettings()
    _migrate(store)
    store.setValue(PREFIX + key, new_value)


def dialog_state(name: str) -> dict:
    """What dialog `name` last ran with ({} if never): its inputs' values, no secrets (ui/widgets.py)."""
    try:
        state = json.loads(QgsSettings().value(f"{PREFIX}dialogs/{name}", "") or "{}")
    except (TypeError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_dialog_state(name: str, state: dict) -> None:
    QgsSettings().setValue(f"{PREFIX}dialogs/{name}", json.dumps(state))


def reset() -> None:
    """Forget every setting of this plugin (tests use it; so can a user from the Python console)."""
    QgsSettings().remove(PREFIX.rstrip("/"))


def configured_cli() -> runner.Cli:
    """The tower-detector CLI these settings name (else the one auto-detected); runner.CliNotFound if none."""
    return runner.locate(value("cli/path"))


def profile_work_dir() -> str:
    """Where the work folder was before the plugin asked for one: inside the QGIS profile."""
    return os.path.join(QgsApplication.qgisSettingsDirPath(), "tower_detector")


def suggested_work_dir() -> str:
    """The work folder offered on first use: "Tower Detector" in the user's documents."""
    from qgis.PyQt.QtCore import QStandardPaths

    documents = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation) or os.path.expanduser("~")
    return os.path.join(documents, "Tower Detector")


def adopt_old_work_dir() -> bool:
    """No work folder set, but the profile's old one holds work (jobs, areas): keep using it, without asking."""
    old = profile_work_dir()
    if value("work_dir") or not os.path.isdir(old) or not os.listdir(old):
        return False
    set_value("work_dir", old)
    return True


def work_dir() -> str:
    """The folder for areas, jobs.json and default outputs; created on first use. The plugin asks the user for it
    before a first job (plugin.py); until then, the profile's."""
    path = value("work_dir") or profile_work_dir()
    os.makedirs(path, exist_ok=True)
    return path


# --- secrets: QgsAuthManager only ------------------------------------------------------------------------------
TOKEN_KEYS = {"Basic": "password", "EsriToken": "token"}  # where each auth method keeps the secret


def auth_token(authcfg: str) -> str:
    """The secret of an auth config (Basic: its password; EsriToken: its token). ValueError with one line if
    there is none; the value itself is never logged."""
    ok, config = QgsApplication.authManager().loadAuthenticationConfig(authcfg or "", QgsAuthMethodConfig(), True)
    if not authcfg or not ok or not config.isValid():
        message = tr("authentication config {authcfg!r} not found in the QGIS authentication database")
        raise ValueError(message.format(authcfg=authcfg))
    key = TOKEN_KEYS.get(config.method())
    token = config.config(key) if key else ""
    if not token:
        message = tr("authentication config {name!r} ({method}) holds no token; use a Basic config with the "
                     "token as its password, or an EsriToken config")
        raise ValueError(message.format(name=config.name(), method=config.method()))
    return token
