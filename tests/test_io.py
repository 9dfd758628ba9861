"""ternary_hf.utils.io: atomic files, staged output folders, weight-file sizes."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ternary_hf.utils import io as folders
from ternary_hf.utils.io import check_output_folder, replace_folder


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


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    from ternary_hf.utils.io import atomic_write_text

    path = atomic_write_text(tmp_path / "state.json", "old")
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left


def test_atomic_write_json_writes_strict_json_with_null_for_nan(tmp_path):
    from ternary_hf.utils.io import atomic_write_json

    path = atomic_write_json(tmp_path / "r.json", {"loss": float("nan"), "steps": [1, float("inf")], "ok": 0.5})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "loss": None, "steps": [1, None], "ok": 0.5}


def test_staged_folder_swaps_whole_on_success_and_keeps_the_target_on_failure(tmp_path):
    from ternary_hf.utils.io import staged_folder

    target = _folder(tmp_path / "out", **{"marker.json": "{}", "model": "v1"})
    with pytest.raises(RuntimeError, match="boom"), staged_folder(target, marker="marker.json") as staging:
        (staging / "model").write_text("half")
        raise RuntimeError("boom")
    assert (target / "model").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # staging removed
    with staged_folder(target, marker="marker.json") as staging:
        (staging / "marker.json").write_text("{}")
        (staging / "model").write_text("v2")
    assert (target / "model").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_folder_gets_the_usual_mode_not_mkdtemps_0700(tmp_path):
    from ternary_hf.utils.io import staged_folder

    old = os.umask(0o022)
    try:
        with staged_folder(tmp_path / "out"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_staging_left_by_a_killed_run_is_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    from ternary_hf.utils.io import staged_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = _folder(tmp_path / f".out.staging-{dead.stdout.strip()}-abcd1234", model="half")
    mine = _folder(tmp_path / f".out.staging-{os.getpid()}-live0000", model="in use")  # a live process's
    with staged_folder(tmp_path / "out") as staging:
        (staging / "model").write_text("whole")
    assert not leftover.exists() and mine.exists()


def test_weight_files_bytes_counts_safetensors_only_when_present(tmp_path):
    from ternary_hf.utils.io import weight_files_bytes

    files = {"model.safetensors": "x" * 10, "pytorch_model.bin": "y" * 50, "config.json": "{}"}
    folder = _folder(tmp_path / "m", **files)
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "model.safetensors").write_text("z" * 5)
    assert weight_files_bytes(folder) == 15
    bin_only = _folder(tmp_path / "b", **{"pytorch_model.bin": "y" * 50})
    assert weight_files_bytes(bin_only) == 50


def test_read_json_returns_stand_ins_or_raises_errors_that_name_the_file(tmp_path):
    from ternary_hf.errors import CheckpointError, MissingInputError

    good, bad, absent = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "absent.json"
    folders.atomic_write_json(good, {"a": [1, 2]})
    bad.write_bytes(b'{"a": [1, 2')  # cut short, as by a kill mid-write of a tool that writes in place
    assert folders.read_json(good) == {"a": [1, 2]}
    assert folders.read_json(absent, missing={}) == {}
    assert folders.read_json(bad, invalid=None) is None
    with pytest.raises(MissingInputError, match="absent.json does not exist; start again"):
        folders.read_json(absent, hint="start again")
    with pytest.raises(CheckpointError, match=r"bad.json is not valid JSON \(.*\); remove it"):
        folders.read_json(bad, error=CheckpointError, hint="remove it")
    (tmp_path / "latin1.json").write_bytes(b'{"\xe9": 1}')  # not UTF-8: unreadable, not a crash
    assert folders.read_json(tmp_path / "latin1.json", invalid="unreadable") == "unreadable"
