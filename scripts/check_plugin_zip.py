#!/usr/bin/env python3
"""Check a plugin zip against the rules plugins.qgis.org applies on upload (its plugin validator), offline.

python3 scripts/check_plugin_zip.py dist/tower_detector_plugin-0.1.0.zip     # exit 1 and one line per problem

Rules: at most 25 MB; a valid zip with safe names (no "..", absolute paths, backslashes or drive letters); no
.pyc, __pycache__, .git or __MACOSX; one top-level folder that is a Python identifier, holding __init__.py,
metadata.txt and LICENSE; metadata.txt's [general] section with the required fields (name, description,
version, qgisMinimumVersion, author, email, about, tracker, repository), http(s) URLs for tracker, repository
and homepage, an author without slashes, true/false flags, and an icon that is in the zip. Ours on top: no
binaries (by extension or by an ELF / PE / Mach-O header), a dotted numeric version, the compiled resources.py
and the copied core/redaction.py.
(The site also checks that the URLs answer; that needs the network and is left to the upload.)
"""

import configparser
import io
import re
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlparse

MAX_BYTES = 25_000_000
REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker",
            "repository")
BOOLEANS = ("experimental", "deprecated", "server", "hasProcessingProvider")
FORBIDDEN_DIRS = ("__MACOSX", ".git", "__pycache__")
BINARY_EXTS = (".so", ".dll", ".dylib", ".exe", ".pyd", ".pyc", ".pyo", ".o", ".a", ".lib", ".bin", ".class",
               ".jar", ".msi", ".whl")
BINARY_MAGIC = (b"\x7fELF", b"MZ", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe")


def check_zip(path, max_bytes: int = MAX_BYTES) -> list:
    """Problems found in the plugin zip at path, one line each; [] when it passes."""
    path = Path(path)
    problems = []
    size = path.stat().st_size
    if size > max_bytes:
        problems.append(f"zip is {size:,} bytes, over the {max_bytes:,}-byte upload limit")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        return problems + [f"not a zip file: {exc}"]
    with archive:
        names = archive.namelist()
        bad = archive.testzip()
        if bad:
            problems.append(f"corrupt member (CRC error): {bad}")
        for name in names:
            if ".." in name or name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
                problems.append(f"unsafe path in zip: {name}")
            parts = name.split("/")
            for forbidden in FORBIDDEN_DIRS:
                if forbidden in parts:
                    problems.append(f"forbidden {forbidden} in zip: {name}")
            if not name.endswith("/"):
                lower = name.lower()
                if lower.endswith(BINARY_EXTS):
                    problems.append(f"binary or compiled file: {name}")
                elif archive.read(name)[:4].startswith(BINARY_MAGIC):
                    problems.append(f"binary file (executable header): {name}")
        tops = sorted({name.split("/")[0] for name in names})
        if len(tops) != 1 or not names or "/" not in names[0]:
            return problems + [f"the zip must hold exactly one top-level folder, not {tops}"]
        top = tops[0]
        if not top.isidentifier() or not re.match(r"^[A-Za-z][A-Za-z0-9_]+$", top):
            problems.append(f"top-level folder {top!r} is not a Python identifier (letters, digits, _)")
        for required in ("__init__.py", "metadata.txt", "LICENSE", "resources.py", "core/redaction.py"):
            if f"{top}/{required}" not in names:
                problems.append(f"missing {top}/{required}")
        if f"{top}/metadata.txt" in names:
            problems += check_metadata(archive.read(f"{top}/metadata.txt"), top, names)
    return problems


def check_metadata(raw: bytes, top: str, names) -> list:
    problems = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ["metadata.txt is not UTF-8"]
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive (qgisMinimumVersion)
    try:
        parser.read_file(io.StringIO(text))
    except configparser.Error as exc:
        return [f"metadata.txt does not parse: {exc}".splitlines()[0]]
    if not parser.has_section("general"):
        return ["metadata.txt has no [general] section"]
    meta = parser["general"]
    problems += [f"metadata.txt: required field {key} is missing or empty" for key in REQUIRED
                 if not meta.get(key, "").strip()]
    for key in ("tracker", "repository", "homepage"):
        url = urlparse(meta.get(key, "").strip())
        if meta.get(key, "").strip() and not (url.scheme in ("http", "https") and url.netloc):
            problems.append(f"metadata.txt: {key} is not an http(s) URL")
    if "/" in meta.get("author", ""):
        problems.append("metadata.txt: author must not contain slashes")
    if meta.get("version") and not re.match(r"^\d+(\.\d+)+$", meta["version"].strip()):
        problems.append(f"metadata.txt: version {meta['version']!r} is not dotted numbers")
    if meta.get("qgisMinimumVersion") and not re.match(r"^\d+\.\d+(\.\d+)?$", meta["qgisMinimumVersion"].strip()):
        problems.append("metadata.txt: qgisMinimumVersion is not like 3.22")
    for key in BOOLEANS:
        if key in meta and meta[key].strip().lower() not in ("true", "false", "yes", "no", "1", "0"):
            problems.append(f"metadata.txt: {key} must be true or false, not {meta[key]!r}")
    if "\n" in meta.get("description", "").strip():
        problems.append("metadata.txt: description must be one line (the about field is for more)")
    icon = meta.get("icon", "").strip()
    if icon and f"{top}/{icon.removeprefix('./')}" not in names:
        problems.append(f"metadata.txt: icon {icon} is not in the zip")
    return problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    status = 0
    for path in argv:
        problems = check_zip(path)
        for problem in problems:
            print(f"{path}: {problem}")
        if problems:
            status = 1
        else:
            print(f"{path}: ok (plugins.qgis.org rules)")
    return status


if __name__ == "__main__":
    sys.exit(main())
