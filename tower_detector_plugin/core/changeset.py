"""What a candidates GeoPackage says of itself, and the changeset tags the OSM editors and exports pre-fill."""

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from . import settings

GENERIC_SOURCE = "aerial imagery"  # the changeset source when the job names no imagery (as the backend's exports)


def read_only(path: str):
    """A read-only SQLite connection to a GeoPackage (never locking or changing it), closed at the with-block's end."""
    return closing(sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True))


def candidates_facts(path: str) -> dict:
    """What a candidates GeoPackage says of itself: imagery_name (the job's, "" when none) and conflated (whether
    `tower-detector conflate` kept OSM's supports in it, which the exports check against). Read-only."""
    facts = {"imagery_name": "", "conflated": False}
    try:
        with read_only(path) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            facts["conflated"] = "osm_supports" in tables
            row = db.execute("SELECT value FROM job WHERE key = 'imagery_name'").fetchone() if "job" in tables else None
    except sqlite3.Error:
        return facts
    if row and row[0]:
        try:
            name = json.loads(row[0])  # job values are JSON text
        except ValueError:
            name = row[0]
        facts["imagery_name"] = str(name).strip()
    return facts


def changeset_tags(candidates: str = None) -> dict:
    """The changeset tags from the settings; the source falls back on the imagery's name the candidates' job kept,
    then on GENERIC_SOURCE."""
    name = candidates_facts(candidates)["imagery_name"] if candidates else ""
    return {"comment": settings.value("review/comment"),
            "source": settings.value("review/source") or name or GENERIC_SOURCE,
            "hashtags": settings.value("review/hashtags")}
