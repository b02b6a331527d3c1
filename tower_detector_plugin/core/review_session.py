"""Reviewing candidates one by one: the review's state and its decisions (the dock is ui/review_dock.py).

ReviewSession holds the candidates of a layer (in the layer's filter, best score first), the reviewer's filters and
position, and the decisions. Each decision goes straight to the GeoPackage through the layer's data provider (no
edit buffer), so a crash of QGIS loses nothing already decided. Moving between candidates touches only in-memory
arrays (a bisect over the filtered ranks), so it stays instant with 100,000 candidates.
"""

import bisect
import getpass
import os
import time

from qgis.core import QgsFeatureRequest, QgsVectorLayer
from qgis.PyQt.QtCore import QT_TR_NOOP

from ..i18n import tr

# (status, button text, shortcut): the vocabulary the backend's exports and dataset --extra-labels read; the texts
# are shown through tr()
STATUSES = (
    ("confirmed", QT_TR_NOOP("Confirmed tower"), "1"),
    ("false_positive", QT_TR_NOOP("False positive"), "2"),
    ("already_mapped", QT_TR_NOOP("Already mapped"), "3"),
    ("misplaced", QT_TR_NOOP("Misplaced existing"), "4"),
    ("unsure", QT_TR_NOOP("Unsure / skip"), "5"),
    ("bad_imagery", QT_TR_NOOP("Bad imagery"), "6"),
)
UNREVIEWED = "unreviewed"
REQUIRED_FIELDS = ("score", "status", "note", "reviewer", "reviewed_at", "point_lon", "point_lat", "point_source")


class ReviewError(Exception):
    """A layer that cannot be reviewed, or a decision that could not be written: one line for the message bar."""


def is_candidates_layer(layer) -> bool:
    try:
        return (isinstance(layer, QgsVectorLayer) and layer.isValid()
                and all(layer.fields().indexOf(name) >= 0 for name in REQUIRED_FIELDS))
    except RuntimeError:  # a removed layer
        return False


class ReviewSession:
    """The candidates of `layer` and the review's state. Coordinates of points are lon/lat (the GeoPackage's)."""

    def __init__(self, layer: QgsVectorLayer, reviewer: str = ""):
        if layer is None or not layer.isValid():
            raise ReviewError(tr("no candidates layer to review"))
        missing = [name for name in REQUIRED_FIELDS if layer.fields().indexOf(name) < 0]
        if missing:
            message = tr("{name} is not a tower-detector candidates layer (no {join_missing})")
            raise ReviewError(message.format(name=layer.name(), join_missing=', '.join(missing)))
        self.layer = layer
        self.reviewer = reviewer or login_name()
        self.min_score, self.max_score, self.statuses, self.extent = 0.0, 1.0, {UNREVIEWED}, None
        self.position = None  # the rank (index in score order) of the current candidate
        self.fids = []
        self.reload()

    # -- loading and filtering
    def reload(self):
        """Read the candidates passing the layer's filter (best first); keeps the current one if still there."""
        current = self.current_fid()
        self.index = {name: self.layer.fields().indexOf(name) for name in (*REQUIRED_FIELDS, "tile_id")}
        names = ["score", "status", "point_lon", "point_lat", "tile_id", "note"]
        request = QgsFeatureRequest().setSubsetOfAttributes([self.index[n] for n in names if self.index[n] >= 0])
        rows = []
        for f in self.layer.getFeatures(request):
            box = f.geometry().boundingBox()
            rows.append((-(f["score"] or 0.0), f.id(), f["score"] or 0.0, f["status"] or UNREVIEWED,
                         f["point_lon"], f["point_lat"], _text(f, "tile_id"), _text(f, "note"),
                         (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum())))
        rows.sort()
        self.fids = [r[1] for r in rows]
        self.scores = [r[2] for r in rows]
        self.status = [r[3] for r in rows]
        self.points = [(r[4], r[5]) for r in rows]
        self.tile_ids = [r[6] for r in rows]
        self.notes = [r[7] for r in rows]
        self.boxes = [r[8] for r in rows]
        self.rank_of = {fid: i for i, fid in enumerate(self.fids)}
        self.position = self.rank_of.get(current)
        self._refilter()

    def set_filter(self, min_score=None, max_score=None, statuses=..., extent=...):
        """statuses: a set of status values, or None for all; extent: a QgsRectangle in the layer's CRS or None."""
        if min_score is not None:
            self.min_score = float(min_score)
        if max_score is not None:
            self.max_score = float(max_score)
        if statuses is not ...:
            self.statuses = set(statuses) if statuses is not None else None
        if extent is not ...:
            self.extent = extent
        self._refilter()

    def _passes(self, i) -> bool:
        if not self.min_score <= self.scores[i] <= self.max_score:
            return False
        if self.statuses is not None and self.status[i] not in self.statuses:
            return False
        if self.extent is not None:
            x0, y0, x1, y1 = self.boxes[i]
            e = self.extent
            return x1 >= e.xMinimum() and x0 <= e.xMaximum() and y1 >= e.yMinimum() and y0 <= e.yMaximum()
        return True

    def _refilter(self):
        self.visible = [i for i in range(len(self.fids)) if self._passes(i)]  # ranks, ascending

    # -- position
    def current_fid(self):
        return None if self.position is None else self.fids[self.position]

    def next(self):
        """Move to the next candidate in the filter after the current one (the first when there is none);
        returns its fid, or None at the end (the position stays)."""
        at = bisect.bisect_right(self.visible, -1 if self.position is None else self.position)
        if at < len(self.visible):
            self.position = self.visible[at]
            return self.fids[self.position]
        return None

    def previous(self):
        if self.position is None:
            return None
        at = bisect.bisect_left(self.visible, self.position) - 1
        if at >= 0:
            self.position = self.visible[at]
            return self.fids[self.position]
        return None

    def go_to(self, fid):
        if fid not in self.rank_of:
            raise ReviewError(tr("feature {fid} is not among the candidates under review").format(fid=fid))
        self.position = self.rank_of[fid]
        return fid

    def current(self) -> dict:
        if self.position is None:
            return {}
        i = self.position
        visible_at = bisect.bisect_left(self.visible, i)
        in_filter = visible_at < len(self.visible) and self.visible[visible_at] == i
        return {"fid": self.fids[i], "score": self.scores[i], "status": self.status[i], "point": self.points[i],
                "tile_id": self.tile_ids[i], "note": self.notes[i], "box": self.boxes[i], "rank": i + 1,
                "filter_position": visible_at + 1 if in_filter else None}

    # -- decisions, written at once
    def decide(self, status: str, note: str = None) -> None:
        if status not in {s for s, _t, _k in STATUSES} | {UNREVIEWED}:
            raise ReviewError(tr("unknown review status {status!r}").format(status=status))
        if self.position is None:
            raise ReviewError(tr("no current candidate: press Next first"))
        i = self.position
        values = {self.index["status"]: status, self.index["reviewer"]: self.reviewer,
                  self.index["reviewed_at"]: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if note is not None:
            values[self.index["note"]] = note
        self._write(self.fids[i], values)
        self.status[i] = status
        if note is not None:
            self.notes[i] = note

    def move_point(self, lon: float, lat: float) -> None:
        """The reviewer's tower position for the current candidate (WGS84)."""
        if self.position is None:
            raise ReviewError(tr("no current candidate: press Next first"))
        i = self.position
        self._write(self.fids[i], {self.index["point_lon"]: float(lon), self.index["point_lat"]: float(lat),
                                   self.index["point_source"]: "reviewer"})
        self.points[i] = (float(lon), float(lat))

    def _write(self, fid, values):
        if not self.layer.dataProvider().changeAttributeValues({fid: values}):
            errors = "; ".join(self.layer.dataProvider().errors()[-1:]) or "the data provider refused the change"
            message = tr("could not write the decision to {source}: {errors}")
            raise ReviewError(message.format(source=self.layer.source(), errors=errors))
        self.layer.triggerRepaint()

    def progress(self) -> dict:
        reviewed = sum(1 for s in self.status if s != UNREVIEWED)
        return {"reviewed": reviewed, "total": len(self.status),
                "confirmed": sum(1 for s in self.status if s == "confirmed"), "in_filter": len(self.visible)}


def _text(feature, name) -> str:
    try:
        value = feature[name]
    except KeyError:
        return ""
    return "" if value is None or (hasattr(value, "isNull") and value.isNull()) else str(value)


def login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "")
