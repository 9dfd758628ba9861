"""ternary_hf.ptq.quantize and ``ternary-hf quantize``: what it refuses before any work, and what it writes.

On the tiny random BERT of conftest (a sentence-transformers-loadable folder); no data is downloaded
(``--sentences 0`` / explicit sentences).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import tiny_sentences

from ternary_hf.cli import main
from ternary_hf.errors import InvalidInputError, TernaryHfError
from ternary_hf.ptq.quantize import quantize_folder


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def source(tiny_st_dir, tmp_path) -> Path:
    """A private copy of the tiny float model (tests may try to destroy it)."""
    return Path(shutil.copytree(tiny_st_dir, tmp_path / "fp32"))


@pytest.mark.parametrize("where", ["same", "inside", "parent", "symlink"])
def test_an_output_that_would_destroy_the_source_is_refused_before_any_work(source, tmp_path, capsys, where):
    before = _digest(source)
    output = {"same": source, "inside": source / "ternary", "parent": tmp_path,
              "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        output.symlink_to(source, target_is_directory=True)
    assert main(["quantize", str(source), str(output), "--overwrite", "--sentences", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "source" in err and "choose an output outside the source" in err
    assert err.count("\n") == 1  # one line, no traceback
    assert _digest(source) == before
    assert not (source / "ternary").exists()


def test_an_already_ternary_source_is_refused_with_a_clear_message(source, tmp_path, capsys):
    first = tmp_path / "ternary"
    assert main(["quantize", str(source), str(first), "--sentences", "0"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(first), str(tmp_path / "again"), "--sentences", "0"]) == 1
    err = capsys.readouterr().err
    assert "already a ternary model" in err and "ternarized" not in err
    assert not (tmp_path / "again").exists()


def test_output_folders_get_normal_permissions(source, tmp_path):
    old = os.umask(0o022)
    try:
        report = quantize_folder(str(source), tmp_path / "out", sentences=tiny_sentences(6), show_progress_bar=False)
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out").stat().st_mode)
    assert mode == 0o755, oct(mode)
    assert report.n_linear > 0 and report.mean_cosine is not None
    assert (tmp_path / "out" / "ternary_quantize.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32", "out"]  # no staging folder left


@pytest.mark.parametrize("flag, value", [("--sentences", "-5"), ("--calibrate", "-1"), ("--calibrate", "0"),
                                         ("--batch-size", "0"), ("--sentences", "many")])
def test_negative_or_zero_counts_are_rejected_by_the_parser(source, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(source), str(tmp_path / "out"), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and ("must be >=" in err or "not an integer" in err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [{"num_sentences": -5}, {"batch_size": 0}, {"calibration_texts": 0}])
def test_bad_counts_are_refused_in_python_too(source, tmp_path, kwargs):
    with pytest.raises(InvalidInputError, match=r">= 1|>= 0"):
        quantize_folder(str(source), tmp_path / "out", show_progress_bar=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_model_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["quantize", str(tmp_path / "empty"), str(tmp_path / "out"), "--sentences", "0"]) == 1
    err = capsys.readouterr().err
    assert "neither a transformers folder" in err and err.count("\n") == 1
    with pytest.raises(TernaryHfError):
        quantize_folder(str(tmp_path / "empty"), tmp_path / "out")
