"""Files and folders written whole: atomic files, staged output folders, weight-file sizes.

Every output ternary-hf writes (model folders, indexes, caches, checkpoints, JSON records) goes through
here, so the same three rules hold everywhere:

* a reader never sees half a file or half a folder: files are written to a temporary name in the same
  folder and renamed; folders are built in a staging folder beside the target and renamed into place;
* an existing output is replaced only when this library wrote it (it holds the command's marker file,
  e.g. ``distillation.json``) or when the caller said ``overwrite``; a path that is a file is never
  replaced, and the check runs *before* the work (an hour of training must not end in "folder exists");
* the old folder is moved aside, not deleted, until the new one is in place, and put back if the final
  rename fails. Staging folders left by a killed run are recognised by name and removed by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, MissingInputError, OutputExistsError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_folder",
    "folder_fingerprint",
    "read_json",
    "remove_stale_staging",
    "replace_folder",
    "staged_folder",
    "weight_files_bytes",
]

_STAGING_TAG = ".staging-"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


# ------------------------------------------------------------------------------------------------ files


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


_RAISE: Any = object()


def read_json(path: str | os.PathLike[str], *, missing: Any = _RAISE, invalid: Any = _RAISE,
              error: type[Exception] = InvalidInputError, hint: str = "fix or remove it") -> Any:
    """The JSON value in ``path``, with one rule for the two ways reading it fails.

    Records are read back by code that knows what an absent or damaged file means for it (a fresh
    start, a stage to redo, a folder to re-save), so each failure either returns the caller's stand-in
    or raises an error that names the file and what to do:

    Args:
        missing: returned when ``path`` is not a file; otherwise :class:`MissingInputError` is raised.
        invalid: returned when the file cannot be read or is not JSON (a kill mid-write by another tool, a
            hand edit); otherwise ``error`` is raised.
        error: the exception class for an invalid file (a subclass of the caller's error family).
        hint: what the user should do about an invalid file, appended to the message.
    """
    path = Path(path)
    if not path.is_file():
        if missing is not _RAISE:
            return missing
        raise MissingInputError(f"{path} does not exist; {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        if invalid is not _RAISE:
            return invalid
        raise error(f"{path} is not valid JSON ({exc}); {hint}") from None


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      default: Any = None) -> Path:
    """Write ``obj`` as strict JSON (NaN and infinities become ``null``: ``NaN`` is not JSON), atomically."""
    text = json.dumps(_finite_or_none(obj), indent=indent, sort_keys=sort_keys, allow_nan=False, default=default)
    return atomic_write_text(path, text + "\n")


# ---------------------------------------------------------------------------------------------- folders


def _not_a_file(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a folder; choose another output path")
    return path


def check_output_folder(path: str | os.PathLike[str], *, marker: str | None = None, overwrite: bool = False,
                        hint: str = "pass overwrite=True to replace it") -> Path:
    """Fail early if writing a folder at ``path`` would replace something it should not.

    Args:
        path: the output folder (need not exist).
        marker: a file name that marks a folder written by this command (a re-run may replace it).
        overwrite: replace any existing folder.
        hint: how the caller says ``overwrite`` (e.g. ``"pass --overwrite"``), for the error message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: ``path`` is a file, or a folder that is neither marked nor allowed by ``overwrite``.
    """
    path = _not_a_file(Path(path))
    if path.is_dir() and not overwrite and not (marker is not None and (path / marker).is_file()):
        what = f"has no {marker}, so it was not written by this command" if marker else "already exists"
        raise OutputExistsError(f"{path} {what}; choose a new output folder or {hint}")
    return path


def replace_folder(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move the complete folder ``staging`` to ``target``, replacing what is there only once it is in place.

    ``staging`` must be on the same file system as ``target`` (make it in ``target``'s parent), so each
    move is one rename. Returns ``target``.
    """
    staging, target = Path(staging), _not_a_file(Path(target))
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(target: str | os.PathLike[str]) -> list[Path]:
    """Remove staging folders of ``target`` left by runs that were killed (their process is gone)."""
    target = Path(target)
    removed = []
    prefix = f".{target.name}{_STAGING_TAG}"
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        if not entry.name.startswith(prefix) or not entry.is_dir():
            continue
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike[str], *, marker: str | None = None, overwrite: bool = False,
                  hint: str = "pass overwrite=True to replace it") -> Iterator[Path]:
    """Build a folder aside and put it at ``target`` whole when the block ends without an error.

    Checks ``target`` first (see :func:`check_output_folder`), removes staging folders that killed runs
    left beside it, yields a fresh staging folder in ``target``'s parent (mode as for ``mkdir``, not
    ``mkdtemp``'s 0700), and on success renames it over ``target`` with :func:`replace_folder`. On an
    error the staging folder is removed and ``target`` is untouched.
    """
    target = check_output_folder(target, marker=marker, overwrite=overwrite, hint=hint)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = target.with_name(f".{target.name}{_STAGING_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(mode=0o777 & ~_umask())
    try:
        yield staging
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------ model files


def weight_files_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes of the weight files in a model folder, sub-folders included (e.g. a Dense layer).

    Safetensors files only when there are any: folders often ship the same weights twice, as
    ``model.safetensors`` and ``pytorch_model.bin``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a model folder")
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return sum(p.stat().st_size for p in (safetensors or files))


def folder_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """A short hash of a model folder's location and its weight / config files' sizes and mtimes.

    Cheap (no file is read), for keying caches of work derived from the folder (a quantized copy, an
    ONNX export, a demo stage): re-saving the model changes it, moving the folder does too.
    """
    folder = os.path.realpath(model_dir)
    h = hashlib.sha256(folder.encode())
    for name in ("model.safetensors", "pytorch_model.bin", "config.json"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            st = os.stat(path)
            h.update(f"{name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]
