"""The Settings dialog, in groups: local (where jobs run, the CLI to run, the work folder), imagery (the default
and its token), AWS, the estimates' rates and the area limits, and results and review."""

from qgis.gui import QgsAuthConfigSelect, QgsFileWidget
from qgis.PyQt.QtCore import QT_TR_NOOP, Qt
from qgis.PyQt.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

from ..core import imagery_sources, runner, settings
from ..i18n import tr
from .widgets import ERROR_STYLE, add_help, file_widget


class SettingsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle(tr("Tower Detector: settings"))
        self.setObjectName("TowerDetectorSettingsDialog")
        self.run_on = QComboBox()
        self.run_on.addItem(tr("local (this computer)"), "local")
        self.run_on.addItem(tr("AWS (tower-detector remote)"), "aws")
        self.run_on.setCurrentIndex(self.run_on.findData(settings.value("jobs/run_on")))
        self.cli_path = file_widget(QgsFileWidget.GetFile, path=settings.value("cli/path"))
        self.cli_path.lineEdit().setPlaceholderText(tr("auto: the dev checkout's .venv, then PATH"))
        self.check_button = QPushButton(tr("Check"))
        self.check_button.clicked.connect(self.check)
        self.check_label = QLabel("")
        self.check_label.setWordWrap(True)
        self.check_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.check_label.hide()  # until there is an answer to show
        cli_row = QHBoxLayout()
        cli_row.addWidget(self.cli_path, 1)
        cli_row.addWidget(self.check_button)
        self.work_dir = file_widget(QgsFileWidget.GetDirectory, path=settings.value("work_dir"))
        self.work_dir.lineEdit().setPlaceholderText(settings.work_dir())
        self.edits = {key: QLineEdit(settings.value(key)) for key in (
            "aws/profile", "aws/region", "aws/bucket", "aws/queue", "imagery/spec", "review/josm_url",
            "review/overpass_url")}
        self.edits["imagery/spec"].setPlaceholderText("https://…/{z}/{x}/{y}.jpg?access_token=${TOWER_DETECTOR_TOKEN}")
        self.auth = QgsAuthConfigSelect(self)
        self.auth.setConfigId(settings.value("imagery/authcfg"))
        self.numbers = {}
        for key, decimals, maximum in (("estimate/local_tiles_per_s", 2, 1e6), ("estimate/remote_tiles_per_s", 2, 1e6),
                                       ("estimate/remote_usd_per_hour", 3, 1e4), ("estimate/remote_workers", 0, 1e4),
                                       ("area/warn_tiles", 0, 1e10), ("area/max_tiles", 0, 1e10),
                                       ("results/heatmap_floor", 2, 0.99), ("results/threshold", 3, 1.0)):
            box = QDoubleSpinBox()
            box.setDecimals(decimals)
            box.setRange(0, maximum)
            box.setValue(settings.value(key))
            if decimals == 0:
                box.setGroupSeparatorShown(True)
            self.numbers[key] = box
        number_rows = {key: (label, self.numbers[key]) for key, label in (
            ("estimate/local_tiles_per_s", tr("Local CPU tiles/s")),
            ("estimate/remote_tiles_per_s", tr("AWS GPU tiles/s")),
            ("estimate/remote_usd_per_hour", tr("AWS GPU $/hour")), ("estimate/remote_workers", tr("AWS GPU workers")),
            ("area/warn_tiles", tr("Warn above (tiles)")), ("area/max_tiles", tr("Refuse above (tiles)")),
            ("results/heatmap_floor", tr("Heatmap floor (transparent below)")),
            ("results/threshold", tr("Default candidate threshold")))}
        groups = {  # titles in English, shown through tr()
            QT_TR_NOOP("Local"): [
                (tr("Run jobs on"), self.run_on), (tr("tower-detector (or its Python)"), cli_row),
                ("", self.check_label), (tr("Work folder"), self.work_dir)],
            QT_TR_NOOP("Imagery"): [
                (tr("Default imagery"), self.edits["imagery/spec"]),
                (tr("Imagery token (QGIS authentication)"), self.auth)],
            QT_TR_NOOP("AWS"): [
                (tr("AWS profile"), self.edits["aws/profile"]), (tr("AWS region"), self.edits["aws/region"]),
                (tr("AWS bucket"), self.edits["aws/bucket"]), (tr("AWS job queue"), self.edits["aws/queue"])],
            QT_TR_NOOP("Estimates and limits"): [number_rows[key] for key in (
                "estimate/local_tiles_per_s", "estimate/remote_tiles_per_s", "estimate/remote_usd_per_hour",
                "estimate/remote_workers", "area/warn_tiles", "area/max_tiles")],
            QT_TR_NOOP("Results and review"): [
                number_rows["results/heatmap_floor"], number_rows["results/threshold"],
                (tr("JOSM remote control"), self.edits["review/josm_url"]),
                (tr("Overpass API"), self.edits["review/overpass_url"])],
        }
        inputs = {"jobs/run_on": self.run_on, "cli/path": self.cli_path, "work_dir": self.work_dir,
                  "imagery/authcfg": self.auth, **self.edits, **self.numbers}
        for key, widget in inputs.items():
            widget.setToolTip(tr(settings.HELP[key]))
        columns = QHBoxLayout()  # two columns: the whole dialog fits a laptop's 768 px
        left, right = QVBoxLayout(), QVBoxLayout()
        for title, rows in groups.items():
            box = QGroupBox(tr(title))
            form = QFormLayout(box)
            for label, widget in rows:
                if widget is self.check_label:
                    form.addRow(widget)  # the whole width for the check's answer
                else:
                    form.addRow(label, widget)
            (left if title in ("Local", "Imagery", "AWS") else right).addWidget(box)
        for column in (left, right):
            column.addStretch(1)
            columns.addLayout(column, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        self.save_button = buttons.button(QDialogButtonBox.Save)
        add_help(buttons, "settings")
        self.insisted = None  # a backend path that failed its check, which the user chose to keep
        self.cli_path.fileChanged.connect(lambda _path: self.save_button.setText(tr("Save")))
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(columns)
        layout.addWidget(buttons)

    def check(self) -> bool:
        """Locate the backend as these (unsaved) settings say and run `tower-detector --version`."""
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            cli = runner.locate(self.cli_path.filePath().strip())
            remote = tr("yes") if runner.has_command(cli, "remote") else tr("no (this tower-detector has no `remote`)")
            text = tr("{version} ({source}: {command}); AWS jobs: {remote}").format(
                version=runner.version(cli), source=cli.source, command=" ".join(cli.command), remote=remote)
            ok = True
        except (runner.CliNotFound, RuntimeError) as exc:
            text, ok = str(exc), False
        finally:
            QApplication.restoreOverrideCursor()
        self._show_check(text, ok)
        return ok

    def _show_check(self, text: str, ok: bool):
        """The whole answer, wrapped: the dialog grows to show every line of it."""
        self.check_label.setStyleSheet("" if ok else ERROR_STYLE)
        self.check_label.setText(text)
        self.check_label.setToolTip(text)
        self.check_label.setVisible(bool(text))
        # group boxes pass no height-for-width up: ask for the height the wrapped text needs at the label's width
        self.check_label.setMinimumHeight(0)
        self.layout().activate()
        self.check_label.setMinimumHeight(self.check_label.heightForWidth(self.check_label.width()))

    def _backend_accepted(self) -> bool:
        """Check the backend before saving it: one that fails is kept only on a second Save ("Save anyway")."""
        path = self.cli_path.filePath().strip()
        if path == self.insisted or self.check():
            return True
        self.insisted = path
        self.save_button.setText(tr("Save anyway"))
        self._show_check(tr("{answer}. Fix the path (or leave it empty to look for the backend), or press Save "
                            "anyway to keep it.").format(answer=self.check_label.text()), False)
        return False

    def save(self) -> bool:
        secrets = imagery_sources.literal_secrets(self.edits["imagery/spec"].text())
        if secrets:
            self._show_check(tr("the default imagery holds a secret ({secrets}): keep it in a QGIS authentication "
                                "config and write {ref} in its place").format(secrets=", ".join(secrets),
                                                                              ref=imagery_sources.TOKEN_REF), False)
            return False
        if not self._backend_accepted():
            return False
        settings.set_value("jobs/run_on", self.run_on.currentData())
        settings.set_value("cli/path", self.cli_path.filePath().strip())
        settings.set_value("work_dir", self.work_dir.filePath().strip())
        for key, edit in self.edits.items():
            settings.set_value(key, edit.text().strip())
        settings.set_value("imagery/authcfg", self.auth.configId())
        for key, box in self.numbers.items():
            settings.set_value(key, int(box.value()) if box.decimals() == 0 else box.value())
        self.accept()
        return True
