"""Retraining with review decisions: what a reviewed candidates GeoPackage brings to the next model.

The candidates remember the model that found them (the job table's `model`); the model remembers its dataset
(params.json `data_dir`), and the dataset how it was built (dataset.json). From these the plugin prefills three
backend steps: `export labels` (the decisions), `dataset --extra-labels` (the model's own area and settings, plus
the decided tiles wherever they lie) and `train --init` (fine-tune that model). Read-only here.
"""

import json
import os
import sqlite3

from qgis.PyQt.QtCore import QT_TR_NOOP

from ..i18n import tr
from .changeset import read_only
from .review_session import STATUSES, UNREVIEWED

# the statuses `export labels` turns into training labels, and what each becomes
LEARNED = {"confirmed": QT_TR_NOOP("tower tiles"), "false_positive": QT_TR_NOOP("hard negatives (background)")}


def decision_counts(candidates: str) -> dict:
    """{status: candidates} of a candidates GeoPackage (statuses with none left out)."""
    try:
        with read_only(candidates) as db:
            rows = db.execute("SELECT COALESCE(status, ?), COUNT(*) FROM candidates GROUP BY 1",
                              (UNREVIEWED,)).fetchall()
    except sqlite3.Error as exc:
        raise ValueError(tr("cannot read the candidates {path}: {error}").format(path=candidates, error=exc)) from None
    return {status: n for status, n in rows if n}


def decisions_text(counts: dict) -> str:
    """What goes into the training set and what stays out, in words."""
    names = {status: tr(text).lower() for status, text, _key in STATUSES}
    going = [f"{names[s]}: {counts[s]:,} → {tr(what)}" for s, what in LEARNED.items() if counts.get(s)]
    staying = [f"{names.get(s, tr(s))}: {n:,}" for s, n in sorted(counts.items()) if s not in LEARNED]
    text = tr("Go in: {going}.").format(going="; ".join(going) if going else
                                         tr("none yet: confirm or reject candidates first"))
    return text + (" " + tr("Stay out: {staying}.").format(staying=", ".join(staying)) if staying else "")


def _job_value(db, key):
    row = db.execute("SELECT value FROM job WHERE key = ?", (key,)).fetchone()
    if not row or row[0] is None:
        return None
    try:
        return json.loads(row[0])
    except ValueError:
        return row[0]


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def provenance(candidates: str) -> dict:
    """{"model", "dataset" (dataset.json, or {}), "counts", "notes"}: the model is "" when the candidates do not
    name one that is still there; notes say, in a line each, what could not be found."""
    notes, model, dataset = [], "", {}
    try:
        with read_only(candidates) as db:
            named = _job_value(db, "model")
    except sqlite3.Error:
        named = None
    if not named:
        notes.append(tr("the candidates do not name the model that found them: choose it"))
    elif not os.path.isfile(os.path.join(str(named), "params.json")):
        notes.append(tr("the model that found them, {model}, is not there any more: choose one").format(model=named))
    else:
        model = str(named)
        data_dir = (_read_json(os.path.join(model, "params.json")) or {}).get("data_dir")
        dataset = _read_json(os.path.join(data_dir, "dataset.json")) if data_dir else None
        if not dataset:
            notes.append(tr("the model's training data ({data}) cannot be read: choose the area, towers and "
                            "imagery").format(data=data_dir or tr("not recorded")))
            dataset = {}
    return {"model": model, "dataset": dataset, "counts": decision_counts(candidates), "notes": notes}


def split_text(dataset: dict) -> str:
    """The dataset's split fractions as `--split` takes them ("" when not recorded)."""
    splits = dataset.get("splits") or {}
    fractions = [splits[name].get("fraction") for name in ("train", "val", "test") if name in splits]
    return ",".join(f"{f:g}" for f in fractions) if fractions and None not in fractions else ""
