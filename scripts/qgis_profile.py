#!/usr/bin/env python3
"""A QGIS profile with the Tower Detector plugin installed and enabled, for `make qgis` and the GUI smoke test.

python3 scripts/qgis_profile.py [--root build/qgis] [--profile tower-detector] [--run]

Builds the plugin into ROOT/profiles/PROFILE/python/plugins/, enables it and points its CLI setting at this
checkout's .venv/bin/tower-detector (in the profile's QGIS3.ini), then prints the command that starts QGIS with
it (or runs it with --run). The user's own QGIS profile is never touched.
"""

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "tower_detector_plugin"


def _build_script():
    spec = importlib.util.spec_from_file_location("build_plugin", REPO / "scripts" / "build_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ini_escape(key: str) -> str:
    # QSettings' INI format writes a key's "/" below its section as "\"
    return key.replace("/", "\\")


def prepare(root, profile: str = "tower-detector", work_dir=None, cli=None, first_use=False) -> Path:
    """Create or refresh ROOT/profiles/PROFILE with the plugin built from this checkout; returns its folder.
    first_use: no work folder set, so that the plugin asks for one as it does a new user."""
    root = Path(root).resolve()
    folder = root / "profiles" / profile
    plugins = folder / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    _build_script().build_plugin(plugins)
    cli = cli or REPO / ".venv" / "bin" / "tower-detector"
    work_dir = Path(work_dir or root / "work").resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    ini = folder / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    # Plain INI text (no Qt needed here); QGIS keeps the rest of the file as it writes it.
    sections = _read_ini(ini)
    sections.setdefault("PythonPlugins", {})[PLUGIN] = "true"
    td = sections.setdefault("tower_detector", {})
    td.setdefault(_ini_escape("cli/path"), str(cli) if Path(cli).exists() else "")
    if not first_use:
        td.setdefault("work_dir", str(work_dir))
    qgis = sections.setdefault("qgis", {})
    qgis.setdefault("checkVersion", "false")  # no network calls at start-up
    qgis.setdefault("showTips", "false")
    _write_ini(ini, sections)
    return folder


def _read_ini(path: Path) -> dict:
    sections, current = {}, None
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("[") and line.rstrip().endswith("]"):
                current = sections.setdefault(line.strip()[1:-1], {})
            elif "=" in line and current is not None:
                key, value = line.split("=", 1)
                current[key] = value
    return sections


def _write_ini(path: Path, sections: dict) -> None:
    text = "".join(f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in keys.items()) + "\n"
                   for name, keys in sections.items())
    path.write_text(text, encoding="utf-8")


def qgis_command(root, profile: str = "tower-detector", extra=()) -> list:
    exe = shutil.which("qgis") or "qgis"
    return [exe, "--profiles-path", str(Path(root).resolve()), "--profile", profile, "--nologo", *extra]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(REPO / "build" / "qgis"), help="profiles folder (default: %(default)s)")
    parser.add_argument("--profile", default="tower-detector")
    parser.add_argument("--run", action="store_true", help="start QGIS with the profile")
    args = parser.parse_args(argv)
    folder = prepare(args.root, args.profile)
    command = qgis_command(args.root, args.profile)
    print(f"profile: {folder}")
    if not args.run:
        print(" ".join(command))
        return 0
    if not shutil.which("qgis"):
        print("qgis is not installed (Debian: apt-get install qgis)", file=sys.stderr)
        return 2
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
