#!/usr/bin/env python3
"""Assemble the installable QGIS plugin (folder or zip) from the repository; standard library only.

python3 scripts/build_plugin.py resources          # compile tower_detector_plugin/resources.py for a dev checkout
python3 scripts/build_plugin.py zip [--dist DIR]   # build DIR/tower_detector_plugin-<version>.zip (DIR: dist)
                                                  # and check it against plugins.qgis.org's rules
python3 scripts/build_plugin.py folder DIR         # DIR/tower_detector_plugin/, e.g. a QGIS_PLUGINPATH entry
"""

import argparse
import configparser
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "tower_detector_plugin"
QRC = REPO / "resources.qrc"
EXCLUDE = shutil.ignore_patterns("__pycache__", "*.pyc", "tests")


def plugin_version() -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO / "metadata.txt", encoding="utf-8")
    return parser.get("general", "version")


def compile_resources(output: Path) -> Path:
    """Compile resources.qrc into a Python module with PyQt5's pyrcc (the one QGIS 3 uses)."""
    # This interpreter if it has pyrcc, else the system Python that QGIS's PyQt5 belongs to.
    has_pyrcc = importlib.util.find_spec("PyQt5") and importlib.util.find_spec("PyQt5.pyrcc_main")
    python = sys.executable if sys.executable and has_pyrcc else "/usr/bin/python3"
    # The .qrc's file paths are relative to the repository root.
    subprocess.run([python, "-m", "PyQt5.pyrcc_main", "-o", str(output), QRC.name], cwd=REPO, check=True)
    return output


def resource_sources() -> list[Path]:
    """resources.qrc and every file it lists."""
    files = [REPO / node.text.strip() for node in ET.parse(QRC).iter("file")]
    return [QRC, *files]


def ensure_dev_resources() -> Path:
    """Compile the dev checkout's resources.py if it is missing or older than what it is built from."""
    output = REPO / PLUGIN / "resources.py"
    if output.exists() and all(src.stat().st_mtime <= output.stat().st_mtime for src in resource_sources()):
        return output
    return compile_resources(output)


def build_plugin(dest_dir) -> Path:
    """Assemble dest_dir/tower_detector_plugin/, ready to copy into a QGIS profile's python/plugins."""
    target = Path(dest_dir) / PLUGIN
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(REPO / PLUGIN, target, ignore=EXCLUDE)
    shutil.copy2(REPO / "metadata.txt", target / "metadata.txt")
    shutil.copy2(REPO / "LICENSE", target / "LICENSE")
    compile_resources(target / "resources.py")
    return target


def build_zip(dist_dir) -> Path:
    """Build dist_dir/tower_detector_plugin-<version>.zip with the plugin folder at its top level."""
    dist = Path(dist_dir)
    dist.mkdir(parents=True, exist_ok=True)
    zip_path = dist / f"{PLUGIN}-{plugin_version()}.zip"
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_plugin(tmp)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                archive.write(path, path.relative_to(tmp).as_posix())
    return zip_path


def check_zip(zip_path) -> list:
    """plugins.qgis.org's upload rules, from scripts/check_plugin_zip.py: a list of problems."""
    spec = importlib.util.spec_from_file_location("check_plugin_zip", REPO / "scripts" / "check_plugin_zip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check_zip(zip_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("resources", help="compile tower_detector_plugin/resources.py in place if out of date")
    zip_cmd = commands.add_parser("zip", help="build the installable plugin zip and check it")
    zip_cmd.add_argument("--dist", default=str(REPO / "dist"), help="output directory (default: %(default)s)")
    folder_cmd = commands.add_parser("folder", help="assemble the plugin folder into DIR")
    folder_cmd.add_argument("dir")
    args = parser.parse_args(argv)
    if args.command == "resources":
        print(ensure_dev_resources())
    elif args.command == "folder":
        print(build_plugin(args.dir))
    else:
        zip_path = build_zip(args.dist)
        problems = check_zip(zip_path)
        for problem in problems:
            print(f"{zip_path}: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
