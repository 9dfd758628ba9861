"""Output folders: replaced whole, the old one back if the final rename fails, user folders never clobbered."""

from __future__ import annotations

import os

import pytest

from ternary_hf import folders
from ternary_hf.folders import check_output_folder, replace_folder


def _folder(path, **files):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_replace_folder_puts_the_new_folder_in_place_and_leaves_nothing_behind(tmp_path):
    target = _folder(tmp_path / "out", old="1")
    replace_folder(_folder(tmp_path / ".staging", new="2"), target)
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no moved-aside copy
    replace_folder(_folder(tmp_path / ".again", fresh="3"), tmp_path / "new-out")  # nothing there yet
    assert (tmp_path / "new-out" / "fresh").read_text() == "3"


def test_a_failed_final_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = _folder(tmp_path / "out", model="keep me")
    staging = _folder(tmp_path / ".staging", model="new")
    real_replace, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # 1: old folder moved aside, 2: staging into place -> fails
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(folders.os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        replace_folder(staging, target)
    assert (target / "model").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging", "out"]


def test_a_file_is_never_replaced(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(FileExistsError, match="is a file"):
        replace_folder(_folder(tmp_path / ".staging"), target)
    with pytest.raises(FileExistsError, match="is a file"):
        check_output_folder(target, overwrite=True)
    assert target.read_text() == "mine"


def test_check_output_folder_allows_new_marked_or_overwritten_folders_only(tmp_path):
    assert check_output_folder(tmp_path / "missing") == tmp_path / "missing"
    mine = _folder(tmp_path / "mine", **{"distillation.json": "{}"})
    assert check_output_folder(mine, marker="distillation.json") == mine
    user = _folder(tmp_path / "user", thesis="draft")
    with pytest.raises(FileExistsError, match="has no distillation.json.*pass --overwrite"):
        check_output_folder(user, marker="distillation.json", hint="pass --overwrite")
    with pytest.raises(FileExistsError, match="already exists"):
        check_output_folder(mine)  # no marker given: any existing folder needs overwrite
    assert check_output_folder(user, marker="distillation.json", overwrite=True) == user
