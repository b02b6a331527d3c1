"""Outputs that appear whole or not at all: one file (atomic_file) or a folder of files (building, swap_in), and
the small parts others build their own atomic writes from (temp_path, leftover_temps, remove_if_present,
fsync_folder).

    with atomic_file("summary.csv", newline="") as f:    # a temp file beside it; fsync, os.replace on success
        csv.writer(f).writerows(rows)

    with building("out/dataset") as folder:             # a new folder beside the target, filled in...
        write_everything(folder)                        # ...and swapped in whole when the block succeeds

On failure (an exception, or a kill) the target is as it was: a failed block's folder is removed; a killed one is
left beside the target as <target>.new-<random>, never mistaken for it, for the user to delete.

The swap is two renames: the old folder aside to <target>.old-<random>, then the new one to <target>, then the
old one is removed. A crash between the two renames leaves no <target> but the old folder whole under its .old-
name; the next building() or swap_in() of that target renames it back first (restore), and removes .old- folders
left by a crash after the new one was in place.
"""

import glob
import os
import secrets
import shutil
from contextlib import contextmanager


@contextmanager
def atomic_file(path, mode="w", **kwargs):
    """open() for writing into a temp file beside path (.<name>.<random>.tmp); on success it is flushed to disk
    and renamed onto path, on failure removed."""
    if "w" not in mode:
        raise ValueError(f"atomic_file writes a whole file: mode {mode!r} needs 'w'")
    tmp = temp_path(path)
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def temp_path(path):
    """A fresh temp file name beside path, hidden and marked as temporary: .<name>.<random>.tmp."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")


def leftover_temps(path):
    """The temp files atomic_file left beside path when a kill stopped it before the rename."""
    folder, name = os.path.split(os.path.abspath(path))
    return glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp"))


def remove_if_present(path):
    """os.remove, where a file already gone is fine (a temp file's clean-up)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


@contextmanager
def building(target):
    """Yield a new empty folder beside target; when the block succeeds it replaces target whole (swap_in), when
    it fails it is removed and target is untouched."""
    target = _plain(target)
    restore(target)
    tmp = f"{target}.new-{secrets.token_hex(4)}"
    os.makedirs(tmp)
    try:
        yield tmp
        swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when swapped in


def swap_in(new, target):
    """Replace the folder target (if any) by the complete folder new, on the same file system."""
    target = _plain(target)
    restore(target)
    if hasattr(os, "sync"):
        os.sync()  # new's files on disk before the rename makes them the target (a power cut keeps one whole)
    old = None
    if os.path.lexists(target):
        if not os.path.isdir(target):
            raise NotADirectoryError(f"{target} is a file, not a folder")
        old = f"{target}.old-{secrets.token_hex(4)}"
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old:
            os.rename(old, target)
        raise
    fsync_folder(os.path.dirname(target))
    if old:
        shutil.rmtree(old, ignore_errors=True)


def restore(target):
    """Finish a swap of target that a crash interrupted (see the module docstring)."""
    target = _plain(target)
    left = sorted(glob.glob(glob.escape(target) + ".old-" + "[0-9a-f]" * 8), key=os.path.getmtime)
    if left and not os.path.lexists(target):
        os.rename(left.pop(), target)
    for old in left:
        shutil.rmtree(old, ignore_errors=True)


def _plain(path):
    """An absolute path without a trailing separator, so that its siblings are named after it."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def fsync_folder(folder):
    """Make a folder's new entries (a rename, a link) durable, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are durable without
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
