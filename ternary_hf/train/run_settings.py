"""What defines a run, recorded in its work dir, so a resume never mixes two runs silently.

A run is defined by its teacher, its data, its quantization and every :class:`DistillConfig` field
not marked ``resumable`` (batch size, learning rate, loss weights, ...). The first session writes them
to ``<work_dir>/run.json`` with a run id; a resumed session compares its own settings and refuses to
continue another run's checkpoints, naming each differing setting (old -> new) and the way to start
over. Settings a resumed session may change (step cap, time budget, evaluation, reporting,
checkpoint cadence, threads) are recorded per session, so the record says what each session ran with.
A setting added after a run was recorded counts as the value that reproduces that run
(:data:`~ternary_hf.train.config.ADDED_LATER`), so a run survives an upgrade of the package: it resumes
with that value, and the refusal of any other names it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, InvalidInputError
from ..utils.io import atomic_write_json, read_json
from .config import ADDED_LATER, RESUMABLE, DistillConfig

__all__ = ["RUN_FILE", "RunRecord", "SettingsChangedError", "differences", "run_settings"]

RUN_FILE = "run.json"
#: how a user sets the settings that are not DistillConfig fields
_NON_CONFIG_FLAGS = {"teacher": "TEACHER", "data": "--data / --text-field / --max-texts", "processes": None}
_TERNARY_FLAGS = {"threshold_method": "--threshold", "granularity": "--granularity", "activations": "--activations",
                  "embedding_storage": "--embeddings", "modules_to_not_convert": "--skip",
                  "int8_modules": "--int8", "int4_modules": "--int4", "embedding_group_size": "--embedding-group"}


class SettingsChangedError(InvalidInputError):
    """A resume with other settings than the run its checkpoints belong to."""


def _flag(name: str) -> str | None:
    if name in _NON_CONFIG_FLAGS:
        return _NON_CONFIG_FLAGS[name]
    if name.startswith("ternary_config."):
        return _TERNARY_FLAGS.get(name.split(".", 1)[1])
    config_field = next((f for f in fields(DistillConfig) if f.name == name), None)
    if config_field is not None and config_field.metadata.get("aliases"):
        return config_field.metadata["aliases"][0]
    return "--" + name.replace("_", "-")


def run_settings(cfg: DistillConfig, *, teacher: str, ternary_config: dict[str, Any], data: dict[str, Any],
                 processes: int, **extra: Any) -> dict[str, Any]:
    """The settings that define a run, as a flat JSON-able dict (``ternary_config.*`` flattened)."""
    settings: dict[str, Any] = {"teacher": teacher, "data": data, "processes": processes}
    settings.update({f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in RESUMABLE})
    settings.update({f"ternary_config.{k}": v for k, v in ternary_config.items()})
    settings.update(extra)
    return json.loads(json.dumps(settings))  # what the record will read back (tuples -> lists)


def resumable_settings(cfg: DistillConfig) -> dict[str, Any]:
    """The settings a resumed session may change; recorded per session."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name in RESUMABLE}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``name (flag): old -> new`` for every setting that differs."""
    out = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            flag = _flag(name)
            label = f"{name} ({flag})" if flag else name
            out.append(f"{label}: {_show(old.get(name))} -> {_show(new.get(name))}")
    return out


def _with_later_settings(recorded: dict[str, Any]) -> dict[str, Any]:
    """``recorded`` plus each setting added since, at the value runs without it had."""
    return {**{name: value for name, value in ADDED_LATER.items() if name not in recorded}, **recorded}


def _show(value: Any) -> str:
    if isinstance(value, dict) and "sha256" in value:  # training data
        return f"{value.get('count')} items, sha256 {value['sha256']}"
    return repr(value)


class RunRecord:
    """``<work_dir>/run.json``: the run's id, defining settings and sessions."""

    def __init__(self, work_dir: Path):
        self.path = Path(work_dir) / RUN_FILE
        self.data: dict[str, Any] = read_json(
            self.path, missing={}, error=CheckpointError,
            hint=f"the run record is damaged; remove {work_dir} to start afresh, or restore the file",
        )

    @property
    def run_id(self) -> str | None:
        return self.data.get("run_id")

    def check(self, settings: dict[str, Any], hint: str) -> None:
        """Refuse ``settings`` unless they are the recorded run's (a record from before this check passes)."""
        recorded = self.data.get("settings")
        if recorded is None:
            return
        changed = differences(_with_later_settings(recorded), settings)
        if changed:
            raise SettingsChangedError(
                f"{self.path.parent} holds checkpoints of a run with other settings, and resuming would mix the two "
                f"runs: {'; '.join(changed)}. Resume with the recorded settings, or {hint}")

    def start_session(self, settings: dict[str, Any], session: dict[str, Any], fresh: bool) -> None:
        """Record this session (a new run id and settings when ``fresh``)."""
        if fresh or "run_id" not in self.data:
            self.data = {"run_id": uuid.uuid4().hex, "settings": settings, "sessions": []}
        self.data["sessions"].append(session)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.data = {}
