"""Progress and results for people (a progress bar on stderr) or for the plugin (JSON lines on stdout).

The contract with the plugin: with --events every line on stdout is one JSON object with an "event" key:
progress {done, total, ...}, log {message}, result {message, ...}, error {message}. The exit codes are cli.py's.

Everything a Reporter writes passes through redaction.redact, the last line of defence against a secret in a URL
that some message quotes.
"""

import json
import sys
import time

from .redaction import redact


class Reporter:
    def __init__(self, events=False, stream=None, err=None):
        self.events = events
        self.out = stream or sys.stdout
        self.err = err or sys.stderr
        self._last_bar = 0.0
        self._bar_shown = False

    def _emit(self, event, **fields):
        self.out.write(redact(json.dumps({"event": event, **fields}, default=_jsonable)) + "\n")
        self.out.flush()

    def progress(self, done, total, **fields):
        if self.events:
            self._emit("progress", done=done, total=total, **fields)
            return
        now = time.monotonic()
        if done < total and now - self._last_bar < 0.2:
            return  # repaint at most 5 times a second
        self._last_bar = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        stage = fields.get("stage", "")
        self.err.write(f"\r{stage} [{bar:<30}] {done}/{total} ({frac:.0%})")
        self._bar_shown = done < total
        if done >= total:
            self.err.write("\n")
        self.err.flush()

    def log(self, message, **fields):
        if self.events:
            self._emit("log", message=message, **fields)
        else:
            self._end_bar()
            self.err.write(redact(message) + "\n")

    def result(self, text=None, **fields):
        """The command's outcome: a JSON event (with `text` as its message, for the plugin to show), or `text`."""
        if self.events:
            self._emit("result", **({"message": text} if text is not None else {}), **fields)
        else:
            self._end_bar()
            self.out.write(redact(text if text is not None else json.dumps(fields, indent=2, default=_jsonable)) + "\n")

    def error(self, message, **fields):
        if self.events:
            self._emit("error", message=message, **fields)
        else:
            self._end_bar()
            self.err.write(redact(f"error: {message}") + "\n")

    def _end_bar(self):
        if self._bar_shown:
            self.err.write("\n")
            self._bar_shown = False


def _jsonable(value):
    # numpy scalars and paths end up in results; keep json.dumps from choking on them
    if hasattr(value, "item"):
        return value.item()
    return str(value)
