"""atomic: a file or a folder of files appears whole or not at all, and the old one stays whole until then."""

import os

import pytest

from tests.fakes.training import folder_bytes
from tower_detector.common.atomic import atomic_file, building, restore


def test_a_file_is_replaced_only_when_written_whole(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write("half of the new")
        raise RuntimeError("the disk filled up")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]
    with atomic_file(path, "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["summary.json"]
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()  # the mode open() gives, not a temp file's 0600


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_folder_is_swapped_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "dataset"
    with building(target) as folder:
        assert os.path.dirname(folder) == str(tmp_path) and not target.exists()
        (tmp_path / folder / "a.txt").write_text("first")
    assert folder_bytes(target) == {"a.txt": b"first"}

    with pytest.raises(RuntimeError), building(str(target) + os.sep) as folder:  # a trailing separator: beside
        (tmp_path / folder / "b.txt").write_text("half")
        raise RuntimeError("no imagery")
    assert folder_bytes(target) == {"a.txt": b"first"} and os.listdir(tmp_path) == ["dataset"]

    with building(target) as folder:
        (tmp_path / folder / "b.txt").write_text("second")
    assert folder_bytes(target) == {"b.txt": b"second"} and os.listdir(tmp_path) == ["dataset"]


def test_a_swap_cut_between_its_renames_is_finished_by_the_next(tmp_path):
    """A crash after the old folder went aside and before the new one came in: no target, the old one whole under
    its .old- name. The next build of the target puts it back first; a failed build then leaves it as it was."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "model.keras").write_text("the finished model")
    os.rename(target, tmp_path / "model.old-0123abcd")
    with pytest.raises(RuntimeError), building(target):
        raise RuntimeError("the new training failed")
    assert folder_bytes(target) == {"model.keras": b"the finished model"} and os.listdir(tmp_path) == ["model"]

    # a crash after the new one came in: the old one is only left over
    (tmp_path / "model.old-89abcdef").mkdir()
    restore(target)
    assert os.listdir(tmp_path) == ["model"]
