"""The errors every part of the backend raises, and how the CLI answers each (cli.py maps them to exit codes)."""


class UserError(Exception):
    """Bad input: the CLI prints the message as one line and exits 2."""


def one_line(value):
    """An exception or a message as one line: an OSError's reason without its path (the caller names the path),
    runs of whitespace as one space, an exception's class name where it has no message."""
    text = value.strerror if isinstance(value, OSError) and value.strerror else str(value)
    return " ".join(text.split()) or (type(value).__name__ if isinstance(value, BaseException) else "")


class Interrupted(Exception):
    """Stopped on request (SIGTERM) at a safe point: the CLI reports it and exits 143, so a retry resumes."""


class Failure(Exception):
    """A failure whose cause is known (an imagery outage, tiles to retry): the CLI prints the message as one line,
    with no traceback, and exits `exit_code` (1). `retry`: running the same command again may succeed."""

    exit_code = 1

    def __init__(self, message, retry=False):
        super().__init__(message)
        self.retry = retry
