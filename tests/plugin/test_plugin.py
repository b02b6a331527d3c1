"""The QGIS plugin skeleton: metadata, packaging, and loading it in real QGIS (pytest-qgis, offscreen)."""

import ast
import configparser
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import qgis.utils
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent, QFile
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QMessageBox, QToolBar

import tower_detector

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "tower_detector_plugin"
ICON = ":/plugins/tower_detector/icon.svg"
BACKEND_ONLY = ("tensorflow", "keras", "hyperopt", "boto3", "rasterio", "numpy", "label_maker")
REQUIRED_METADATA = (
    "name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "tracker", "repository",
    "homepage", "tags", "category", "hasProcessingProvider", "icon",
)  # fmt: skip


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_plugin", REPO / "scripts" / "build_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_script = _load_build_script()


@pytest.fixture(scope="module")
def built_plugin(tmp_path_factory) -> Path:
    """The installable plugin folder, assembled once for this module."""
    return build_script.build_plugin(tmp_path_factory.mktemp("plugins"))


@pytest.fixture
def plugin_from_build(monkeypatch, built_plugin):
    """Make `import tower_detector_plugin` find the built folder, not the dev checkout, and forget it afterwards."""
    for name in [name for name in sys.modules if name.split(".")[0] == PLUGIN]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(built_plugin.parent))
    yield built_plugin
    # Runs before monkeypatch puts back any dev-checkout modules it removed above.
    for name in [name for name in sys.modules if name.split(".")[0] == PLUGIN]:
        del sys.modules[name]


class PluginMenu:
    """Records the iface's plugin menu entries, which pytest-qgis's QgisInterface stub does not keep."""

    def __init__(self, monkeypatch, iface):
        self.entries = []
        monkeypatch.setattr(iface, "addPluginToMenu", lambda menu, action: self.entries.append((menu, action)))
        monkeypatch.setattr(iface, "removePluginMenu", lambda menu, action: self.entries.remove((menu, action)))


def _our_toolbars(iface) -> list[QToolBar]:
    return iface.mainWindow().findChildren(QToolBar, "TowerDetectorToolbar")


def _flush_deletes():
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def _metadata(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    with open(path, encoding="utf-8") as f:
        parser.read_file(f)
    return parser["general"]


def test_metadata_is_complete_and_matches_backend_version(built_plugin):
    meta = _metadata(REPO / "metadata.txt")
    assert [key for key in REQUIRED_METADATA if not meta.get(key, "").strip()] == []
    assert meta["name"] == "Tower Detector"
    assert meta["version"] == tower_detector.__version__
    assert meta["qgisMinimumVersion"] == "3.22"
    assert "\n" not in meta["description"]
    assert (REPO / PLUGIN / meta["icon"]).is_file()
    assert (built_plugin / meta["icon"]).is_file()


def test_plugin_starts_and_unloads_through_qgis_plugin_machinery(qgis_iface, plugin_from_build, monkeypatch):
    menu = PluginMenu(monkeypatch, qgis_iface)
    # QGIS's plugin registry is module state in qgis.utils: give this test its own and restore it afterwards.
    monkeypatch.setattr(qgis.utils, "iface", qgis_iface)
    monkeypatch.setattr(qgis.utils, "plugin_paths", [str(plugin_from_build.parent)])
    for name, empty in (("available_plugins", []), ("active_plugins", []), ("plugins", {}), ("_plugin_modules", {})):
        monkeypatch.setattr(qgis.utils, name, empty)
    monkeypatch.setattr(qgis.utils, "plugins_metadata_parser", {})

    qgis.utils.updateAvailablePlugins()
    assert PLUGIN in qgis.utils.available_plugins
    assert qgis.utils.pluginMetadata(PLUGIN, "name") == "Tower Detector"
    assert qgis.utils.pluginMetadata(PLUGIN, "version") == tower_detector.__version__

    assert qgis.utils.loadPlugin(PLUGIN)
    assert Path(sys.modules[PLUGIN].__file__).parent == plugin_from_build
    assert qgis.utils.startPlugin(PLUGIN)
    assert PLUGIN in qgis.utils.active_plugins

    assert QFile.exists(ICON)
    assert not QIcon(ICON).pixmap(24, 24).isNull()
    [toolbar] = _our_toolbars(qgis_iface)
    actions = toolbar.actions()
    assert "About Tower Detector" in [action.text() for action in actions]
    assert all(not action.icon().isNull() for action in actions)
    assert menu.entries == [("&Tower Detector", action) for action in actions]

    assert qgis.utils.unloadPlugin(PLUGIN)
    _flush_deletes()
    assert PLUGIN not in qgis.utils.active_plugins
    assert PLUGIN not in sys.modules
    assert menu.entries == []
    assert _our_toolbars(qgis_iface) == []
    assert sip.isdeleted(toolbar)
    assert all(sip.isdeleted(action) for action in actions)


def test_about_shows_version_and_purpose(qgis_iface, plugin_from_build, monkeypatch):
    PluginMenu(monkeypatch, qgis_iface)
    shown = []
    monkeypatch.setattr(QMessageBox, "about", lambda parent, title, text: shown.append((parent, title, text)))
    from tower_detector_plugin import classFactory

    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        [about] = [action for action in plugin.actions if action.text() == "About Tower Detector"]
        about.trigger()
    finally:
        plugin.unload()
        _flush_deletes()

    [(parent, title, text)] = shown
    assert parent is qgis_iface.mainWindow()
    assert title == "About Tower Detector"
    assert tower_detector.__version__ in text
    assert "power towers" in text
    # Loading again after unloading leaves exactly one toolbar, as QGIS's plugin reload does.
    plugin.initGui()
    assert len(_our_toolbars(qgis_iface)) == 1
    plugin.unload()
    _flush_deletes()
    assert _our_toolbars(qgis_iface) == []


def test_plugin_imports_with_system_python_outside_venv(built_plugin, tmp_path):
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["PYTHONPATH"] = str(built_plugin.parent)
    env["QT_QPA_PLATFORM"] = "offscreen"
    code = (
        "import sys, tower_detector_plugin\n"
        "from tower_detector_plugin.plugin import TowerDetectorPlugin\n"
        "print(tower_detector_plugin.__file__)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {BACKEND_ONLY!r}))\n"
    )
    # cwd=tmp_path keeps the dev checkout off sys.path.
    result = subprocess.run(
        ["/usr/bin/python3", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    module_file, heavy_modules = result.stdout.splitlines()
    assert Path(module_file).parent == built_plugin
    assert heavy_modules == "[]"


def test_zip_holds_the_plugin_folder_and_no_bytecode(tmp_path):
    zip_path = build_script.build_zip(tmp_path)
    assert zip_path == tmp_path / f"tower_detector_plugin-{tower_detector.__version__}.zip"
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
    for required in ("metadata.txt", "resources.py", "LICENSE", "__init__.py", "plugin.py", "icons/icon.svg"):
        assert f"{PLUGIN}/{required}" in names
    assert all(name.startswith(f"{PLUGIN}/") for name in names)
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc") or "/tests/" in name]
    # Idempotent: building again replaces the zip with the same contents.
    assert build_script.build_zip(tmp_path) == zip_path
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == names


def test_plugin_never_imports_backend_only_packages():
    packages = "|".join(BACKEND_ONLY)
    pattern = re.compile(
        rf"^\s*(?:import|from)\s+(?:{packages})\b|import_module\(\s*['\"](?:{packages})\b|__import__\(\s*['\"](?:{packages})\b",
        re.MULTILINE,
    )
    sources = sorted((REPO / PLUGIN).rglob("*.py"))
    assert sources
    offenders = [f"{path}: {m.group(0).strip()}" for path in sources for m in pattern.finditer(path.read_text())]
    assert offenders == []


def _plugin_imports(path: Path):
    """(imported module as a dotted name inside the plugin or outside it, the names taken from it) for each import
    in a plugin module; relative imports resolved against the module's package."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [alias.name for alias in node.names]
            if node.module is None:  # from . import a, b: each name is a module
                for name in names:
                    yield f"{module}.{name}", []
            else:
                yield module, names


def test_plugin_packages_import_downwards_only():
    """core/ is the plugin's logic without widgets: it imports neither ui/ nor processing/, nor QtWidgets or
    qgis.gui. ui/ and processing/ build on core/ and not on each other; plugin.py wires them. No module takes a
    private name from another package."""
    layer_of = {"core": 0, "ui": 1, "processing": 1}
    offenders = []
    for path in sorted((REPO / PLUGIN).rglob("*.py")):
        if path.name == "resources.py":
            continue
        own = path.relative_to(REPO / PLUGIN).parts[0] if len(path.relative_to(REPO / PLUGIN).parts) > 1 else ""
        for module, names in _plugin_imports(path):
            parts = module.split(".")
            if own == "core" and (module.startswith(("qgis.gui", "qgis.PyQt.QtWidgets", "PyQt5.QtWidgets"))):
                offenders.append(f"{path.name}: {module} (core has no widgets)")
            if parts[0] != PLUGIN or len(parts) < 2:
                continue
            target = parts[1]
            if own in layer_of and target in layer_of and target != own and layer_of[target] >= layer_of[own]:
                offenders.append(f"{own}/{path.name} imports {module}")
            private = [name for name in names if name.startswith("_") and target != own]
            if private:
                offenders.append(f"{own}/{path.name} takes private {private} from {module}")
    assert offenders == []
