"""The review dock's OSM editing and export buttons.

File exports and conflation run the backend (`tower-detector export ...`, `conflate`) as jobs; JOSM, iD and Rapid
are driven from here (core/editors.py), through QGIS's networking. Nothing ever uploads to OSM: every path ends in an
editor or a file that a person checks and uploads. The confirmed towers sent to JOSM leave out those OSM already
has: checked against the candidates' last conflation, else against OSM around them, asked of Overpass there and
then. The changeset source is the imagery's name (the setting, else the one the job kept), never a host.
"""

import os
import tempfile

from qgis.core import Qgis, QgsProject, QgsRectangle
from qgis.PyQt.QtCore import QT_TR_NOOP, QObject, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QFileDialog, QInputDialog

from ..core import commands, editors, runner, settings
from ..core.changeset import candidates_facts, changeset_tags
from ..core.overpass import fetch_overpass
from ..core.point_export import export_layer_points
from ..core.review_session import ReviewError
from ..i18n import tr

# kind -> (what the file dialog asks for, file filter or None for a folder)
FILE_EXPORTS = {
    "osm": (QT_TR_NOOP("Confirmed towers as an .osm file for JOSM"), "OSM XML (*.osm)"),
    "overlay": (QT_TR_NOOP("GeoJSON overlay of the candidates"), "GeoJSON (*.geojson)"),
    "maproulette": (QT_TR_NOOP("MapRoulette tasks (line-by-line GeoJSON)"), "GeoJSON lines (*.geojson)"),
    "maproulette-cooperative": (QT_TR_NOOP("MapRoulette cooperative tasks"), "GeoJSON lines (*.geojson)"),
    "tasking-manager": (QT_TR_NOOP("Folder for the Tasking Manager files"), None),
    "labels": (QT_TR_NOOP("Review labels for the next training set"), "GeoPackage (*.gpkg);;GeoJSON (*.geojson)"),
}
ADDS_NODES = ("osm", "maproulette-cooperative")  # exports that refuse candidates never compared with OSM
JOSM_AREA_M = 2000  # half the side of the box around the current candidate whose candidates go to JOSM's layers


class ReviewExports(QObject):
    """Runs the dock's requests for the session it is given; iface for the message bar, manager for jobs."""

    def __init__(self, iface, manager, dock, parent=None):
        super().__init__(parent)
        self.iface, self.manager, self.dock = iface, manager, dock
        self.conflate_jobs = set()
        self.retrain_dialog = None
        manager.finished.connect(self._job_finished)

    def candidates_path(self) -> str:
        session = self.dock.session
        if session is None:
            raise ReviewError(tr("no candidates under review: open Review candidates on a candidates layer first"))
        return session.layer.source().split("|")[0]

    def current(self) -> dict:
        current = self.dock.session.current() if self.dock.session is not None else {}
        if not current:
            raise ReviewError(tr("no current candidate: press Next first"))
        return current

    # -- the dock's buttons
    def handle(self, kind: str):
        """A button's request; problems go to the message bar as one line."""
        try:
            if kind in FILE_EXPORTS:
                compare = self._ask_compare() if kind in ADDS_NODES and not self._conflated() else "conflated"
                if compare is None:
                    return
                out = self._ask_output(kind)
                if out:
                    self.export(kind, out, compare=compare)
            elif kind == "josm-zoom":
                self.josm_zoom()
            elif kind == "josm-layers":
                self.josm_layers()
            elif kind in ("id", "rapid"):
                self.open_editor(kind)
            elif kind == "retrain":
                self.retrain()
            elif kind == "conflate":
                source = self._ask_osm_source()
                if source is not False:
                    self.conflate(source)
            else:
                raise ReviewError(tr("unknown review action {kind}").format(kind=kind))
        except (ReviewError, editors.JosmError, ValueError) as exc:
            self.iface.messageBar().pushMessage(tr("Tower Detector"), str(exc), level=Qgis.Critical, duration=0)

    def _ask_output(self, kind):
        title, filters = FILE_EXPORTS[kind]
        title = tr(title)
        start = os.path.dirname(self.candidates_path())
        if filters is None:
            return QFileDialog.getExistingDirectory(self.dock, title, start)
        path, _chosen = QFileDialog.getSaveFileName(self.dock, title, start, filters)
        return path

    def _ask_osm_source(self):
        """None for Overpass, a file's path, or False when the user cancels."""
        choices = [tr("Overpass, for the candidates' extent (QGIS's network settings apply)"),
                   tr("A file: .osm.pbf, .osm, GeoJSON or a saved Overpass answer")]
        choice, ok = QInputDialog.getItem(self.dock, tr("Conflate with OSM"), tr("OSM data"), choices, 0, False)
        if not ok:
            return False
        if choice == choices[0]:
            return None
        path, _chosen = QFileDialog.getOpenFileName(self.dock, tr("OSM data"), os.path.dirname(self.candidates_path()),
                                                    tr("OSM data") + " (*.pbf *.osm *.geojson *.json *.gpkg)")
        return path or False

    def _conflated(self) -> bool:
        return candidates_facts(self.candidates_path())["conflated"]

    def _ask_compare(self):
        """Candidates never compared with OSM, before an export that adds nodes (it would refuse them): compare
        them first with Overpass or a point layer of the project, or export anyway. "overpass", a layer id,
        "anyway", or None when the user cancels. One question, one click."""
        from qgis.PyQt.QtWidgets import QMessageBox

        from .job_dialogs import tower_point_layers

        box = QMessageBox(QMessageBox.Question, tr("Tower Detector"),
                          tr("These candidates were never compared with what OSM already maps, so the export could "
                             "add towers OSM has. Compare them first?"), QMessageBox.Cancel, self.dock)
        box.setObjectName("TowerDetectorCompareFirst")
        answers = {box.addButton(tr("Compare with OSM (Overpass)"), QMessageBox.AcceptRole): "overpass"}
        for layer in tower_point_layers()[:2]:
            button = box.addButton(tr("Compare with the layer {name}").format(name=layer.name()),
                                   QMessageBox.AcceptRole)
            answers[button] = layer.id()
        answers[box.addButton(tr("Export anyway"), QMessageBox.DestructiveRole)] = "anyway"
        box.exec_()
        return answers.get(box.clickedButton())

    def export(self, kind: str, out: str, compare: str = "conflated") -> str:
        """Start `tower-detector export KIND` as a job; its id. compare (before an export that adds nodes, on
        candidates never conflated): "overpass" or a point layer's id to run `conflate` first in the same job,
        "anyway" to export with --include-near-duplicates; "conflated" (the default) exports as they are."""
        path = self.candidates_path()
        tags = changeset_tags(path)
        args = commands.export_args(kind, path, out, comment=tags["comment"], source=tags["source"],
                                    hashtags=tags["hashtags"], include_near_duplicates=compare == "anyway")
        steps = [args]
        if compare not in ("conflated", "anyway"):
            if compare == "overpass":
                source = fetch_overpass(self.dock.session.layer.extent())
            else:
                layer = QgsProject.instance().mapLayer(compare)
                if layer is None:
                    raise ReviewError(tr("the layer to compare with is gone"))
                source = export_layer_points(layer, os.path.join(tempfile.mkdtemp(prefix="td-osm-"),
                                                                 "osm.geojson"))
            steps.insert(0, commands.conflate_args(path, source, duplicate_m=settings.value("review/duplicate_m")))
        job_id = self.manager.start("export", f"export {kind}", steps, out=out, outputs={"export": out})
        if len(steps) > 1:
            self.conflate_jobs.add(job_id)  # the review reloads: conflation marked what OSM has
        return job_id

    def retrain(self):
        """The Retrain dialog on the candidates under review (ui/job_dialogs.py RetrainDialog)."""
        from .job_dialogs import RetrainDialog

        if self.retrain_dialog is not None:
            self.retrain_dialog.deleteLater()
        self.retrain_dialog = RetrainDialog(self.iface, self.manager, self.candidates_path(), self.dock)
        self.retrain_dialog.show()
        return self.retrain_dialog

    # -- editors
    def josm(self) -> editors.JosmRemote:
        remote = editors.JosmRemote(settings.value("review/josm_url"))
        remote.version()  # JosmNotRunning, with what to do, when nothing listens
        return remote

    def current_point(self):
        current = self.current()
        lon, lat = current["point"]
        if lon is None or lat is None:
            w, s, e, n = current["box"]
            lon, lat = (w + e) / 2, (s + n) / 2
        return lon, lat

    def josm_zoom(self):
        """JOSM downloads the OSM data around the current candidate, with the changeset tags pre-filled."""
        half_m = 150
        left, bottom, right, top = editors.candidate_bbox(*self.current_point(), half_m)
        tags = changeset_tags(self.candidates_path())
        self.josm().load_and_zoom(left, bottom, right, top, changeset_comment=tags["comment"],
                                  changeset_source=tags["source"], changeset_hashtags=tags["hashtags"])
        # JOSM answers at once and loads in the background: say what was asked of it, or nothing seems to happen
        self.iface.messageBar().pushMessage(
            tr("Tower Detector"), tr("JOSM is loading OSM's data {size} m around candidate {tile} and zooming there, "
                                     "with the changeset comment, source and hashtags filled in")
            .format(size=2 * half_m, tile=self.current()["tile_id"]), level=Qgis.Success, duration=6)

    def josm_layers(self):
        """Around the current candidate (JOSM_AREA_M): the candidate squares as a locked reference layer that can
        never be uploaded, and the confirmed towers OSM does not have yet as a layer to check and merge (upload
        discouraged)."""
        remote = self.josm()
        path = self.candidates_path()
        lon, lat = self.current_point()
        bbox = editors.candidate_bbox(lon, lat, JOSM_AREA_M)
        # never conflated: OSM around here, from Overpass now (a little wider: a support just outside still counts)
        osm = None if candidates_facts(path)["conflated"] else fetch_overpass(
            QgsRectangle(*editors.candidate_bbox(lon, lat, JOSM_AREA_M + 100)))
        with tempfile.TemporaryDirectory() as tmp:
            reference, confirmed = os.path.join(tmp, "candidates.osm"), os.path.join(tmp, "confirmed.osm")
            self._run_now(commands.export_args("osm-reference", path, reference, bbox=bbox))
            remote.load_data(_read(reference), layer_name="Tower Detector candidates (reference)", new_layer=True,
                             upload_policy="never", layer_locked=True)
            outcome = self._run_now(commands.export_args("osm", path, confirmed, bbox=bbox, osm=osm,
                                                         **changeset_tags(path)), allow_bad_input=True)
            if outcome.ok:
                remote.load_data(_read(confirmed), layer_name="Tower Detector confirmed towers", new_layer=True,
                                 upload_policy="false")
                result = outcome.result or {}
                if result.get("near_duplicates"):
                    self.iface.messageBar().pushMessage(
                        tr("Tower Detector"), tr("{n} confirmed towers within {m:g} m of a tower OSM already has "
                                                 "were left out of the JOSM layer")
                        .format(n=result["near_duplicates"], m=result["duplicate_m"]),
                        level=Qgis.Info, duration=8)
            else:  # no confirmed tower OSM lacks: the reference layer alone is still useful
                self.iface.messageBar().pushMessage(tr("Tower Detector"), outcome.reason(), level=Qgis.Info,
                                                    duration=8)

    def open_editor(self, editor: str):
        lon, lat = self.current_point()
        tags = changeset_tags(self.candidates_path())
        url = editors.editor_url(editor, lon, lat, 19, comment=tags["comment"], hashtags=tags["hashtags"],
                                 source=tags["source"])
        QDesktopServices.openUrl(QUrl(url))
        return url

    def _run_now(self, args, allow_bad_input=False):
        """A short backend command, waited for (exports of one layer take well under a second)."""
        outcome = runner.run(settings.configured_cli(), args)
        if not outcome.ok and not (allow_bad_input and outcome.returncode == 2):
            raise ReviewError(tr("tower-detector {command}: {reason}").format(command=f"{args[0]} {args[1]}",
                                                                           reason=outcome.reason()))
        return outcome

    # -- conflation
    def conflate(self, source: str = None) -> str:
        """Compare the candidates with what OSM already maps: source is a file (.osm.pbf, .osm, GeoJSON, an
        Overpass JSON answer) or None to ask Overpass, through QGIS's networking, for the candidates' extent."""
        candidates = self.candidates_path()
        if source is None:
            source = fetch_overpass(self.dock.session.layer.extent())
        args = commands.conflate_args(candidates, source, duplicate_m=settings.value("review/duplicate_m"))
        job_id = self.manager.start("conflate", "conflate with OSM", [args], out=os.path.dirname(candidates))
        self.conflate_jobs.add(job_id)
        return job_id

    def _job_finished(self, job_id):
        if job_id in self.conflate_jobs:
            self.conflate_jobs.discard(job_id)
            self.dock.reload()  # the backend changed statuses in the file


def _read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()
