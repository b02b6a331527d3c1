"""Known inputs of the tests that train: the tiny recipe they use, and a folder's bytes to compare outputs by."""

from pathlib import Path


def folder_bytes(folder):
    """{relative path: bytes (a file) or None (a folder)} of everything under folder: equal means byte-identical."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


TINY_TRAINING = {"image_size": 72, "batch_size": 16, "epochs_phase1": 1, "epochs_phase2": 1, "dense_size": 32}
