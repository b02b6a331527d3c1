"""The plugin's entry point in QGIS: its menu, toolbar and actions."""

import configparser
from pathlib import Path

from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMessageBox

from . import resources  # noqa: F401 - registers :/plugins/tower_detector/* with Qt

MENU = "&Tower Detector"
ICON = ":/plugins/tower_detector/icon.svg"


def plugin_version() -> str:
    """The version in metadata.txt: inside the installed plugin, or at the top of a dev checkout."""
    here = Path(__file__).resolve().parent
    for path in (here / "metadata.txt", here.parent / "metadata.txt"):
        if path.is_file():
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(path, encoding="utf-8")
            return parser.get("general", "version", fallback="unknown")
    return "unknown"


class TowerDetectorPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.actions: list[QAction] = []
        self.toolbar = None

    def initGui(self):  # noqa: N802 - QGIS plugin API
        self.toolbar = self.iface.addToolBar("Tower Detector")
        self.toolbar.setObjectName("TowerDetectorToolbar")
        self._add_action("About Tower Detector", ICON, self.show_about)

    def _add_action(self, text: str, icon: str, callback) -> QAction:
        """Add an action to the plugin menu and toolbar; unload() removes it again."""
        action = QAction(QIcon(icon), text, self.iface.mainWindow())
        action.triggered.connect(callback)
        self.iface.addPluginToMenu(MENU, action)
        self.toolbar.addAction(action)
        self.actions.append(action)
        return action

    def unload(self):
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
            action.deleteLater()
        self.actions.clear()
        if self.toolbar is not None:
            # QGIS's main window owns the toolbar; delete it or it stays there after unloading.
            self.toolbar.deleteLater()
            self.toolbar = None

    def show_about(self):
        QMessageBox.about(
            self.iface.mainWindow(),
            "About Tower Detector",
            f"<b>Tower Detector</b> {plugin_version()}<br><br>"
            "Finds high-voltage power towers in aerial imagery with deep learning and helps you review them "
            "for OpenStreetMap. Training and prediction run in the tower-detector backend, outside QGIS.",
        )
