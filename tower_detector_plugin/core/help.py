"""Where each dialog's Help button leads: its section of the user guide, on the project's home page (metadata.txt).

The anchors are explicit ids in docs/user-guide.md (a test checks that each exists), so that renaming a heading
does not break a link.
"""

import configparser
from pathlib import Path

GUIDE = "docs/user-guide.md"
TOPICS = ("settings", "area", "dataset", "train", "predict", "jobs", "results", "metrics", "review", "retrain")


def homepage() -> str:
    """The plugin's home page, from its metadata.txt (the repository root in a checkout)."""
    parser = configparser.ConfigParser(interpolation=None)
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "metadata.txt", here.parent / "metadata.txt"):
        if candidate.is_file():
            parser.read(candidate, encoding="utf-8")
            return parser.get("general", "homepage", fallback="").rstrip("/")
    return ""


def help_url(topic: str) -> str:
    """The user guide's section on `topic` (one of TOPICS)."""
    if topic not in TOPICS:
        raise KeyError(topic)
    return f"{homepage()}/blob/main/{GUIDE}#{topic}"
