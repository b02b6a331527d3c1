"""Translation: the plugin's texts go through tr(), a translation installed in QGIS shows in its menu and dialogs,
the loader finds a .qm for QGIS's locale, and no user-facing string literal slips past tr()."""

import ast
import shutil
import subprocess

import pytest
from qgis.core import QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QTranslator

from tests.plugin import support as support
from tower_detector_plugin import i18n
from tower_detector_plugin.i18n import install_translator, qm_file, remove_translator, tr
from tower_detector_plugin.plugin import TowerDetectorPlugin

plugin_settings = support.plugin_settings  # a fixture

PLUGIN = support.REPO / "tower_detector_plugin"
# the modules whose user-facing strings go through tr() (ui/job_dialogs.py, ui/widgets.py and core/ not yet)
TRANSLATED = [PLUGIN / "plugin.py", *(PLUGIN / "ui" / f"{name}.py" for name in (
    "area_picker", "load_results_dialog", "metrics_dialog", "settings_dialog", "review_dock", "results_dock",
    "jobs_dock", "review_exports", "job_dialogs", "widgets")), *sorted((PLUGIN / "processing").glob("*.py")),
    # core: what it raises and says to the user (runner.py is standard library only: its few messages stay English)
    *sorted(p for p in (PLUGIN / "core").glob("*.py") if p.name != "runner.py")]
WORDS = {"Use this area": "Diesen Bereich nehmen", "Review candidates": "Kandidaten prüfen",
         "Pick area": "Bereich wählen", "&Tower Detector": "&Mastfinder"}


class WordsTranslator(QTranslator):
    """A translation made in the test: WORDS in the plugin's context, nothing else."""

    def translate(self, context, source, disambiguation=None, n=-1):
        return WORDS.get(source) if context == i18n.CONTEXT else None  # None: a null string, "not translated"

    def isEmpty(self):
        return False


def test_an_installed_translation_shows_in_the_menu_and_the_area_picker(qgis_iface, plugin_settings,
                                                                         qgis_new_project, monkeypatch):
    menu = []  # pytest-qgis's iface keeps no plugin menu: record it (removing an entry it lacks fails)
    monkeypatch.setattr(qgis_iface, "addPluginToMenu", lambda name, action: menu.append((name, action)))
    monkeypatch.setattr(qgis_iface, "removePluginMenu", lambda name, action: menu.remove((name, action)))
    translator = WordsTranslator()
    QCoreApplication.installTranslator(translator)
    plugin = TowerDetectorPlugin(qgis_iface)
    try:
        plugin.initGui()
        by_name = {a.objectName(): a for a in plugin.actions}
        # the names stay English (shortcuts and tests find actions by them); the texts are the translation
        assert by_name["TowerDetectorReviewCandidates"].text() == "Kandidaten prüfen"
        assert by_name["TowerDetectorPickArea"].text() == "Bereich wählen"
        assert by_name["TowerDetectorTrain"].text() == "Train"  # no translation: the English text
        assert menu == [("&Mastfinder", action) for action in plugin.actions]
        by_name["TowerDetectorPickArea"].trigger()
        picker = plugin.dialogs["area"]
        assert picker.use_button.text() == "Diesen Bereich nehmen"
        assert picker.rect_button.text() == "Draw rectangle"
    finally:
        plugin.unload()
        QCoreApplication.removeTranslator(translator)
    assert menu == []  # unload removed the entries under the same (translated) menu
    assert tr("Use this area") == "Use this area"


def test_the_loader_installs_the_qm_of_qgis_locale_and_unload_removes_it(tmp_path, qgis_iface, plugin_settings,
                                                                         monkeypatch):
    lrelease = shutil.which("lrelease") or shutil.which("lrelease-qt5")
    if lrelease is None:
        pytest.skip("lrelease (Qt's linguist tools) is not installed: it makes the .qm file from the .ts")
    messages = "".join(f"<message><source>{source.replace('&', '&amp;')}</source>"
                       f"<translation>{text.replace('&', '&amp;')}</translation></message>"
                       for source, text in WORDS.items())
    ts = tmp_path / "tower_detector_xx.ts"
    ts.write_text('<?xml version="1.0" encoding="utf-8"?><!DOCTYPE TS><TS version="2.1" language="xx">'
                  f"<context><name>{i18n.CONTEXT}</name>{messages}</context></TS>", encoding="utf-8")
    subprocess.run([lrelease, "-silent", str(ts)], check=True, capture_output=True)
    assert qm_file("xx_YY", tmp_path) == tmp_path / "tower_detector_xx.qm"  # the language's, for a country's
    assert qm_file("de_DE", tmp_path) is None and qm_file("", tmp_path) is None

    translator = install_translator("xx_YY", tmp_path)
    try:
        assert translator is not None and tr("Review candidates") == "Kandidaten prüfen"
        assert tr("Train") == "Train"
    finally:
        remove_translator(translator)
    assert tr("Review candidates") == "Review candidates"

    # the plugin: QGIS's locale setting picks the file; unload takes the translation away again
    monkeypatch.setattr(i18n, "I18N_DIR", tmp_path)
    settings = QgsSettings()
    previous = settings.value("locale/userLocale")
    settings.setValue("locale/userLocale", "xx")
    try:
        plugin = TowerDetectorPlugin(qgis_iface)
        plugin.initGui()
        texts = {a.objectName(): a.text() for a in plugin.actions}
        plugin.unload()
    finally:
        settings.setValue("locale/userLocale", previous) if previous is not None else \
            settings.remove("locale/userLocale")
    assert texts["TowerDetectorReviewCandidates"] == "Kandidaten prüfen"
    assert plugin.translator is None and tr("Review candidates") == "Review candidates"
    assert install_translator("xx", support.REPO / "missing") is None  # no file, no translator, no error


# --- the static check: no user-facing literal past tr() ----------------------------------------------------------
# call name -> the positions of its text arguments (None: all of them)
TEXT_ARGS = {
    "QLabel": (0,), "QPushButton": (0,), "QCheckBox": (0,), "QRadioButton": (0,), "QGroupBox": (0,),
    "QgsCollapsibleGroupBox": (0,), "QAction": None, "QDockWidget": (0,), "QMenu": (0,), "QToolButton": (0,),
    "setText": (0,), "setToolTip": (0,), "setWindowTitle": (0,), "setPlaceholderText": (0,),
    "setSpecialValueText": (0,), "setStatusTip": (0,), "setTitle": (0,), "addRow": (0,), "addTab": (1,),
    "insertTab": (2,), "addButton": (0,), "addItem": (0,), "addAction": (0,), "addToolBar": (0,),
    "pushMessage": (0, 1), "pushCritical": (0, 1), "pushWarning": (0, 1), "pushInfo": (0, 1), "pushSuccess": (0, 1),
    "createMessage": (0, 1), "setHorizontalHeaderLabels": (0,), "about": (1, 2), "information": (1, 2),
    "warning": (1, 2), "critical": (1, 2), "question": (1, 2), "getItem": (1, 2), "getText": (1, 2),
    "getOpenFileName": (1,), "getSaveFileName": (1,), "getExistingDirectory": (1,),
    "QgsProcessingException": (0,), "ReviewError": (0,), "ValueError": (0,), "ResultsError": (0,),
    "JosmError": (0,), "JosmNotRunning": (0,), "CliNotFound": (0,),
}
PROCESSING_TEXT = ("displayName", "shortHelpString", "group")  # methods whose returned string is shown


def _is_text(node) -> bool:
    """A literal a person reads: a string with a letter in it (not a URL), an f-string, or a tuple/list holding
    one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return any(c.isalpha() for c in node.value) and "://" not in node.value
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, (ast.Tuple, ast.List)):
        return any(_is_text(element) for element in node.elts)
    return False


def untranslated(source: str, filename: str = "<source>") -> list:
    """'file:line: call' for each text argument of a Qt/QGIS call that is a bare literal, not tr(...)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.startswith("QgsProcessingParameter") or name.startswith("QgsProcessingOutput"):
                positions = (1,)  # (name, description, ...)
            elif name == "__init__" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
                positions = (0,)  # super().__init__("title", parent) of a dock
            else:
                positions = TEXT_ARGS.get(name, ())
            args = node.args if positions is None else [node.args[i] for i in positions if i < len(node.args)]
            found += [f"{filename}:{node.lineno}: {name}" for arg in args if _is_text(arg)]
        elif isinstance(node, ast.FunctionDef) and node.name in PROCESSING_TEXT:
            found += [f"{filename}:{ret.lineno}: {node.name}" for ret in ast.walk(node)
                      if isinstance(ret, ast.Return) and ret.value is not None and _is_text(ret.value)]
    return found


def test_the_static_check_finds_bare_literals_and_passes_tr():
    bad = ('QLabel("Heatmap floor")\nbutton.setToolTip(f"{n} tiles")\nbar.pushMessage("Tower Detector", text)\n'
           'QgsProcessingParameterFile("MODEL", "Model folder")\nsuper().__init__("Tower Detector jobs", parent)\n'
           'class A:\n    def displayName(self):\n        return "Predict"\n')
    assert [line.split(": ")[1] for line in untranslated(bad)] == [
        "QLabel", "setToolTip", "pushMessage", "QgsProcessingParameterFile", "__init__", "displayName"]
    good = ('QLabel(tr("Heatmap floor"))\nbutton.setToolTip(tr("{n} tiles").format(n=n))\nQLabel("")\n'
            'bar.pushMessage(tr("Tower Detector"), str(exc))\ncombo.addItem(tr("local"), "local")\n'
            'QgsProcessingParameterFile("MODEL", tr("Model folder"))\nspin.setPrefix("1:")\nQLabel("-")\n'
            'class A:\n    def name(self):\n        return "predict"\n')
    assert untranslated(good) == []


@pytest.mark.parametrize("path", TRANSLATED, ids=lambda p: p.name)
def test_user_facing_strings_go_through_tr(path):
    """A new label, button, tooltip, message or Processing description written as a bare literal fails here:
    wrap it in tr() (tr("... {n} ...").format(n=...) for values)."""
    assert untranslated(path.read_text(encoding="utf-8"), path.name) == []
