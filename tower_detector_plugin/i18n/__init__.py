"""Translation: tr() for the plugin's user-facing strings, and the loader of a translation for QGIS's locale.

One translation context for the whole plugin ("TowerDetector"), so that a translator sees every string in one
list whatever module shows it. Templates with values use tr("... {n} ...").format(n=...): the template is what
gets translated. A package of its own, beside core/: ui/, processing/ and plugin.py all use it, and the .qm
files live in its folder."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QTranslator

CONTEXT = "TowerDetector"
I18N_DIR = Path(__file__).resolve().parent  # tower_detector_<locale>.qm files, beside this module


def tr(text: str) -> str:
    """text in the installed translation, or text itself when there is none."""
    return QCoreApplication.translate(CONTEXT, text)


def qm_file(locale: str, folder: Path | None = None) -> Path | None:
    """The .qm file for locale ("pt_BR"), else for its language ("pt"), in folder (default: this package's);
    None when neither exists."""
    if not locale:
        return None
    folder = I18N_DIR if folder is None else Path(folder)
    for name in (locale, locale.split("_")[0]):
        path = folder / f"tower_detector_{name}.qm"
        if path.is_file():
            return path
    return None


def install_translator(locale: str | None = None, folder: Path | None = None) -> QTranslator | None:
    """Install the translation for locale (default: QGIS's, locale/userLocale) if the plugin ships one; the
    installed QTranslator (keep it, and remove it on unload), or None."""
    if locale is None:
        locale = str(QgsSettings().value("locale/userLocale", "") or "")
    path = qm_file(locale, folder)
    if path is None:
        return None
    translator = QTranslator()
    if not translator.load(str(path)):
        return None
    QCoreApplication.installTranslator(translator)
    return translator


def remove_translator(translator: QTranslator | None) -> None:
    if translator is not None:
        QCoreApplication.removeTranslator(translator)
