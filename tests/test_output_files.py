"""Atomic, non-overwriting output files."""

import os

import pytest

from sgm.output_files import numbered_names, write_new_file


def _writer(text):
    def write(tmp):
        with open(tmp, "w") as handle:
            handle.write(text)

    return write


def test_first_free_name_is_used_and_nothing_is_overwritten(tmp_path):
    first = write_new_file(_writer("a"), numbered_names(tmp_path / "out" / "x.txt"))
    second = write_new_file(_writer("b"), numbered_names(tmp_path / "out" / "x.txt"))
    assert (first.name, second.name) == ("x.txt", "x-1.txt")
    assert first.read_text() == "a" and second.read_text() == "b"
    assert sorted(os.listdir(tmp_path / "out")) == ["x-1.txt", "x.txt"]


def test_all_names_taken_or_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "y.txt"
    target.write_text("keep")
    with pytest.raises(FileExistsError):
        write_new_file(_writer("new"), [target])

    def broken(tmp):
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError):
        write_new_file(broken, [tmp_path / "z.txt"])
    assert target.read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["y.txt"]


def test_overwrite_replaces_and_files_get_normal_permissions(tmp_path):
    target = tmp_path / "w.txt"
    target.write_text("old")
    path = write_new_file(_writer("new"), [target], overwrite=True)
    assert path == target and target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
