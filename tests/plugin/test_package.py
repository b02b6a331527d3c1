"""`make package`: the installable zip, checked against plugins.qgis.org's upload rules
(scripts/check_plugin_zip.py)."""

import importlib.util
import subprocess
import sys
import zipfile

import pytest

from tests.plugin.support import REPO


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_plugin = _load("build_plugin")
checker = _load("check_plugin_zip")


@pytest.fixture(scope="module")
def good_zip(tmp_path_factory):
    """What `make package` runs: build_plugin.py zip, which fails on any problem the checker finds."""
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "build_plugin.py"), "zip", "--dist", str(dist)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dist / done.stdout.strip().split("/")[-1]


def _members(zip_path):
    with zipfile.ZipFile(zip_path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _variant(tmp_path, good_zip, change):
    """A copy of the good zip with change(members) applied."""
    members = _members(good_zip)
    change(members)
    path = tmp_path / "variant.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_the_built_zip_passes_and_holds_the_plugin(good_zip):
    assert checker.check_zip(good_zip) == []
    names = _members(good_zip)
    for required in ("metadata.txt", "resources.py", "LICENSE", "__init__.py", "processing/provider.py",
                     "icons/settings.svg"):
        assert f"tower_detector_plugin/{required}" in names
    assert b"qt_resource_data" in names["tower_detector_plugin/resources.py"]  # compiled, not the .qrc
    # the backend's redaction module, copied whole: the plugin redacts with the same code
    backend = (REPO / "backend" / "tower_detector" / "common" / "redaction.py").read_bytes()
    assert names["tower_detector_plugin/core/redaction.py"].split(b"\n", 1)[1] == backend
    assert subprocess.run([sys.executable, str(REPO / "scripts" / "check_plugin_zip.py"), str(good_zip)],
                          capture_output=True).returncode == 0


def _set_meta(key, value):
    def change(members):
        name = "tower_detector_plugin/metadata.txt"
        lines = members[name].decode().splitlines()
        lines = [f"{key}={value}" if line.startswith(f"{key}=") else line for line in lines]
        if value is None:
            lines = [line for line in lines if not line.startswith(f"{key}=")]
        members[name] = "\n".join(lines).encode()
    return change


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.update({"tower_detector_plugin/__pycache__/plugin.cpython-311.pyc": b"x"}), "__pycache__"),
    (lambda m: m.update({"tower_detector_plugin/lib/fast.so": b"\x7fELF...."}), "binary or compiled file"),
    (lambda m: m.update({"tower_detector_plugin/tool": b"\x7fELF\x02\x01"}), "executable header"),
    (lambda m: m.update({"other/readme.txt": b"x"}), "exactly one top-level folder"),
    (lambda m: m.pop("tower_detector_plugin/LICENSE"), "missing tower_detector_plugin/LICENSE"),
    (lambda m: m.pop("tower_detector_plugin/resources.py"), "missing tower_detector_plugin/resources.py"),
    (lambda m: m.pop("tower_detector_plugin/core/redaction.py"), "missing tower_detector_plugin/core/redaction.py"),
    (_set_meta("email", None), "required field email"),
    (_set_meta("tracker", "bugs"), "tracker is not an http(s) URL"),
    (_set_meta("author", "a/b"), "author must not contain slashes"),
    (_set_meta("version", "0.1-beta"), "not dotted numbers"),
    (_set_meta("experimental", "maybe"), "must be true or false"),
    (_set_meta("icon", "icons/missing.svg"), "icon icons/missing.svg is not in the zip"),
])
def test_each_rule_is_enforced(tmp_path, good_zip, change, problem):
    problems = checker.check_zip(_variant(tmp_path, good_zip, change))
    assert any(problem in p for p in problems), problems


def test_folder_name_and_size_limit(tmp_path, good_zip):
    renamed = _variant(tmp_path, good_zip, lambda m: [m.__setitem__(k.replace("tower_detector_plugin/",
                                                                               "tower-detector/"), m.pop(k))
                                                       for k in list(m)])
    assert any("not a Python identifier" in p for p in checker.check_zip(renamed))
    assert any("upload limit" in p for p in checker.check_zip(good_zip, max_bytes=1000))
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert checker.check_zip(tmp_path / "junk.zip")[0].startswith("not a zip file")
