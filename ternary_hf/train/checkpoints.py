"""Training checkpoints in the work dir: Accelerate's naming and ``total_limit``, never a torn checkpoint.

Layout: ``<work_dir>/checkpoints/checkpoint_<step>/`` (Accelerate's ``automatic_checkpoint_naming``
with the save iteration set to the step), each holding Accelerate's ``save_state`` (model, optimizer,
scheduler, RNG, dataloader and registered objects such as the teacher bank) plus ``trainer_state.json``
(the step, the training seconds so far and the last loss).

A kill during a save must leave the previous checkpoint as the newest one. Accelerate writes a
checkpoint in place and prunes the oldest ones before writing, so the save runs in a hidden staging
project (``.saving/``) whose ``checkpoints/`` folder holds an empty stand-in for each existing
checkpoint: Accelerate names the new checkpoint and decides by ``total_limit`` which stand-ins to drop.
The complete checkpoint is then renamed into place, and only after that are the checkpoints
Accelerate dropped deleted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..utils.io import atomic_write_json, read_json, replace_folder

__all__ = ["CHECKPOINTS", "TRAINER_STATE", "Checkpoint", "discard_checkpoints", "latest_checkpoint",
           "list_checkpoints", "project_configuration", "save_checkpoint"]

#: the folder Accelerate keeps automatically named checkpoints in, inside its project dir
CHECKPOINTS = "checkpoints"
#: the loop's own state beside Accelerate's in every checkpoint
TRAINER_STATE = "trainer_state.json"
_STAGING = ".saving"
_NAME = re.compile(r"checkpoint_(\d+)")
_LEGACY_NAME = re.compile(r"checkpoint-(\d+)")  # the layout before Accelerate's naming


@dataclass
class Checkpoint:
    """A complete checkpoint: its folder, step and trainer state (``elapsed_s``, ``loss``, ...)."""

    path: Path
    step: int
    state: dict[str, Any]

    @property
    def elapsed_s(self) -> float:
        return float(self.state.get("elapsed_s", 0.0))


def project_configuration(work_dir: Path, keep: int):
    """Accelerate's project settings of a run: checkpoints and logs in ``work_dir``, ``keep`` checkpoints."""
    from accelerate.utils import ProjectConfiguration

    return ProjectConfiguration(project_dir=str(work_dir), logging_dir=str(work_dir),
                                automatic_checkpoint_naming=True, total_limit=keep)


def _migrate_legacy(work_dir: Path) -> None:
    """Move checkpoints of the earlier ``<work_dir>/checkpoint-<step>`` layout to Accelerate's names."""
    legacy = [p for p in work_dir.glob("checkpoint-*") if p.is_dir() and _LEGACY_NAME.fullmatch(p.name)]
    if not legacy:
        return
    (work_dir / CHECKPOINTS).mkdir(exist_ok=True)
    for path in legacy:
        os.replace(path, work_dir / CHECKPOINTS / f"checkpoint_{_LEGACY_NAME.fullmatch(path.name).group(1)}")
    for partial in work_dir.glob(".checkpoint-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)


def list_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the checkpoints in ``work_dir``, oldest first."""
    root = Path(work_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def latest_checkpoint(work_dir: Path) -> Checkpoint | None:
    """The newest checkpoint in ``work_dir`` (moving a legacy layout into place first), or ``None``."""
    work_dir = Path(work_dir)
    if work_dir.is_dir():
        _migrate_legacy(work_dir)
    found = list_checkpoints(work_dir)
    if not found:
        return None
    step, path = found[-1]
    state_file = path / TRAINER_STATE
    state = read_json(state_file, missing={}, error=CheckpointError,
                      hint=f"the checkpoint is damaged; remove {path} to resume from the one before it")
    return Checkpoint(path, step, state)


def discard_checkpoints(work_dir: Path) -> None:
    """Remove every checkpoint (and a killed save's staging) from ``work_dir``: a fresh start."""
    work_dir = Path(work_dir)
    if work_dir.is_dir():
        _migrate_legacy(work_dir)
    for path in (work_dir / CHECKPOINTS, work_dir / _STAGING):
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(accelerator, work_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Save the run at ``step`` (plus ``state`` into ``trainer_state.json``); keep Accelerate's ``total_limit``.

    Call on every process. Returns the checkpoint folder."""
    work_dir = Path(work_dir)
    stage = work_dir / _STAGING
    existing = list_checkpoints(work_dir)
    if accelerator.is_main_process:
        shutil.rmtree(stage, ignore_errors=True)  # a save killed earlier
        (stage / CHECKPOINTS).mkdir(parents=True)
        for old_step, path in existing:
            if old_step != step:  # the same step saved again (the final save of a time budget) is replaced
                (stage / CHECKPOINTS / path.name).mkdir()
    accelerator.wait_for_everyone()
    config = accelerator.project_configuration
    config.project_dir, config.iteration = str(stage), step
    pruning_note = logging.getLogger("accelerate.accelerator")  # "Deleting 1 checkpoints ...": the stand-ins
    level = pruning_note.level
    pruning_note.setLevel(logging.ERROR)
    try:
        accelerator.save_state()
    finally:
        config.project_dir = str(work_dir)
        pruning_note.setLevel(level)
    accelerator.wait_for_everyone()
    final = work_dir / CHECKPOINTS / f"checkpoint_{step}"
    if accelerator.is_main_process:
        written = stage / CHECKPOINTS / final.name
        atomic_write_json(written / TRAINER_STATE, {"step": step, **state})
        final.parent.mkdir(exist_ok=True)
        replace_folder(written, final)
        kept = {p.name for p in (stage / CHECKPOINTS).iterdir()} | {final.name}
        for _, path in existing:
            if path.name not in kept:
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
