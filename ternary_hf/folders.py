"""Output folders: check them before long work, put them in place whole after it.

Every command that writes a model folder (quantize, distill, the demo) builds it in a temporary
folder beside the target and renames it into place at the end, so a reader never sees half a model.
Two rules keep a user's files safe on top of that:

* the check runs *before* the work (an hour of distillation must not end in "folder exists"), and an
  existing folder is only ever replaced when it is one this library wrote (it holds the command's
  marker file, e.g. ``distillation.json``) or when the caller said ``overwrite``; a path that is a
  file is never replaced;
* the old folder is moved aside, not deleted, until the new one is in place: if the final rename
  fails, the old folder is put back.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["check_output_folder", "replace_folder"]


def _not_a_file(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder; choose another output path")
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
        FileExistsError: ``path`` is a file, or a folder that is neither marked nor allowed by ``overwrite``.
    """
    path = _not_a_file(Path(path))
    if path.is_dir() and not overwrite and not (marker is not None and (path / marker).is_file()):
        what = f"has no {marker}, so it was not written by this command" if marker else "already exists"
        raise FileExistsError(f"{path} {what}; choose a new output folder or {hint}")
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
