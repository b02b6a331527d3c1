"""What of a URL, or of any text that holds URLs, may be shown or stored: an allowlist.

    redact("https://me:pw@t.example.com/{z}/{x}/{y}.jpg?format=jpg&connectId=abc")
        -> "https://***@t.example.com/{z}/{x}/{y}.jpg?format=jpg&connectId=***"
    secrets(url) -> ["connectId"]        the names whose values redact hides ("user:password@" for userinfo)
    redact(url, replace)                 replace(name, value) -> what stands in each hidden value's place

Standard library only, and the one definition for the whole project: the backend imports it, and the QGIS plugin
(which cannot import the backend) ships a copy of this very file, written by scripts/build_plugin.py as
tower_detector_plugin/core/redaction.py.
"""

import re

# Query parameters whose values are never secret: tile addressing and the plain WMS/WMTS request vocabulary. Any
# other parameter's value is hidden, whatever the parameter is called (connectId, auth, code, session, ...).
HARMLESS = frozenset({
    "x", "y", "z", "zoom", "level", "quadkey", "tilematrix", "tilematrixset", "tilerow", "tilecol",
    "service", "request", "version", "layer", "layers", "style", "styles", "format", "transparent",
    "srs", "crs", "bbox", "width", "height", "time", "scale", "language", "lang",
})
MASK = "***"
USERINFO = "user:password@"  # the name secrets() gives userinfo

# A value made only of the backend's template placeholders and ${NAME} references holds nothing to hide.
_KEPT = re.compile(r"(?:\{(?:x|y|-y|z|q|s)\}|\$\{[A-Za-z_][A-Za-z0-9_]*\})*")
# A query runs from "?" to the first blank, quote, backslash (JSON escapes), angle bracket or "#".
_QUERY = re.compile(r"\?[^\s'\"\\<>#]*")
# Inside it, parameters are split at "?", "&", ";" and XML's "&amp;" (so a second "?" starts a new one).
_SEPARATOR = re.compile(r"(&amp;|[?&;])")
_USERINFO = re.compile(r"(?<=://)[^/?#@\s'\"\\<>]+@")


def redact(text, replace=None) -> str:
    """`text` (a URL, or any message, log line or JSON holding URLs or queries) with every query value hidden
    unless its parameter is in HARMLESS, and user:password@ hidden, each as ***.

    Kept as they are: empty values, values made only of the placeholders {x} {y} {-y} {z} {q} {s} and ${NAME}
    references (the way secrets reach the backend without being written), and userinfo made only of references.
    A value with no name (`?abc`) is hidden, unless it has no letter or digit (prose: "swapped?)"). Queries are
    found after any "?", in a URL or not ("GET /1/2/3.png?a=b HTTP/1.1" too). Not recognised: a secret in a
    URL's path, and percent-encoded URLs (`%3Fkey%3D...`) other than as the value of a parameter that is itself
    hidden.
    replace(name, value) -> what to write in place of a hidden value (name is "" when the value has none).
    """
    replace = replace or (lambda name, value: MASK)

    def query(match):
        parts = _SEPARATOR.split(match.group(0))
        for i in range(2, len(parts), 2):  # parts: "", "?", param, sep, param, ...
            name, eq, value = parts[i].partition("=") if "=" in parts[i] else ("", "", parts[i])
            if _hidden(name, eq, value):
                parts[i] = f"{name}{eq}{replace(name, value)}"
        return "".join(parts)

    def userinfo(match):
        if _KEPT.fullmatch(match.group(0)[:-1].replace(":", "")):
            return match.group(0)
        return replace(USERINFO, match.group(0)[:-1]) + "@"

    return _USERINFO.sub(userinfo, _QUERY.sub(query, str(text)))


def secrets(text) -> list:
    """The names of the query parameters whose values redact hides, in order ("" for a value with no name), and
    USERINFO when there is userinfo to hide: what must be lifted out of a spec before it is stored."""
    found = []
    redact(text, lambda name, value: found.append(name) or MASK)
    return found


def _hidden(name, eq, value):
    if not eq and not re.search(r"\w", value):
        return False  # prose, not a query: "(lat/lon swapped?)"
    return not (name.lower() in HARMLESS or _KEPT.fullmatch(value))
