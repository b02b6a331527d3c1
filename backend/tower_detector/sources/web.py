"""What the sources that speak HTTP share (imagery's XYZ templates, Overpass): how they name themselves to
servers, and how they read a server's Retry-After."""

import time
from email.utils import parsedate_to_datetime

from .. import __version__

USER_AGENT = f"tower-detector/{__version__}"


def retry_after(value):
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), at least 0; None when the header
    is absent or unreadable. Callers cap it: a server asking for an hour still gets its retry, just sooner."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
