"""What an evaluation measured, kept together: per-metric rows, the run's settings, JSON and a text table.

Why: results of runs made days apart (different models, the same tasks and subsets) are compared and
plotted together, so a result carries everything needed to read it later: the models, the tasks, the
``(limit, seed)`` that fixes the data subsets, size, speed and the environment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MissingInputError
from ..utils.io import atomic_write_json
from ..utils.tables import format_table
from .encoders import short_name

__all__ = ["EvaluationResult", "MetricResult", "load_results"]


@dataclass
class MetricResult:
    """One number of one task, for the student and (when evaluated) the teacher.

    ``retention_ci``: for a metric that is a mean over items (queries, test texts), the 95% bootstrap
    interval of the retention over the sampling of those items
    (:func:`~ternary_hf.evaluation.metrics.retention_interval`), else ``None``."""

    task: str
    metric: str
    student: float | None
    teacher: float | None = None
    retention_ci: tuple[float, float] | None = None

    @property
    def retention(self) -> float | None:
        """Student / teacher in percent (None without a teacher value)."""
        if self.student is None or self.teacher is None or self.teacher == 0:
            return None
        return 100.0 * self.student / self.teacher


@dataclass
class EvaluationResult:
    """Everything one :func:`~ternary_hf.evaluation.evaluate` call measured, serialisable with :meth:`to_json`."""

    model: str
    teacher: str | None
    tasks: list[str]
    limit: int | None
    seed: int
    metrics: list[MetricResult]
    model_size_bytes: int | None = None
    teacher_size_bytes: int | None = None
    model_texts_per_second: float | None = None
    teacher_texts_per_second: float | None = None
    seconds: float | None = None
    label: str | None = None
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Short label for tables and plots (``label``, else the model folder's name)."""
        return self.label or short_name(self.model)

    def get(self, task: str, metric: str) -> MetricResult:
        """The row of ``task`` / ``metric``; KeyError listing the rows present otherwise."""
        for row in self.metrics:
            if row.task == task and row.metric == metric:
                return row
        have = ", ".join(f"{r.task}/{r.metric}" for r in self.metrics)
        raise KeyError(f"no metric {task}/{metric} in this result; present: {have}")

    @property
    def mean_retention(self) -> float | None:
        """Mean retention over the rows that have one (teacher-agreement rows have none)."""
        values = [r.retention for r in self.metrics if r.retention is not None]
        return float(np.mean(values)) if values else None

    @property
    def mean_score(self) -> float | None:
        values = [r.student for r in self.metrics if r.student is not None and r.task != "teacher-agreement"]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for row, obj in zip(out["metrics"], self.metrics, strict=True):
            row["retention"] = obj.retention
        out["mean_retention"] = self.mean_retention
        return out

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        """The result as JSON (NaN written as null); also written to ``path`` (atomically) when given."""
        data = json.loads(json.dumps(self.to_dict()), parse_constant=lambda _: None)  # NaN/Infinity -> null
        if path is not None:
            atomic_write_json(path, data, indent=indent)
        return json.dumps(data, indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["metrics"] = [
            MetricResult(m["task"], m["metric"], m.get("student"), m.get("teacher"),
                         tuple(m["retention_ci"]) if m.get("retention_ci") else None)
            for m in data["metrics"]
        ]
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> EvaluationResult:
        """Read a result written by :meth:`to_json` (a JSON string or a file path)."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def to_table(self) -> str:
        """A fixed-width text table: task, metric, teacher, student, retention % (and its 95% interval)."""
        with_teacher = self.teacher is not None
        with_ci = with_teacher and any(r.retention_ci is not None for r in self.metrics)
        header = ["task", "metric"] + (["teacher", "student", "retention"] if with_teacher else ["score"])
        header += ["95% interval"] if with_ci else []
        lines = []
        for r in self.metrics:
            cells = [r.task, r.metric]
            if with_teacher:
                ret = r.retention
                cells += [_fmt(r.teacher), _fmt(r.student), "" if ret is None else f"{ret:.1f}%"]
            else:
                cells.append(_fmt(r.student))
            if with_ci:
                cells.append("" if r.retention_ci is None else "{:.1f}-{:.1f}%".format(*r.retention_ci))
            lines.append(cells)
        return "\n".join([*self._heading(), "", format_table(header, lines, left=2), *self._footer()])

    def _heading(self) -> list[str]:
        who = f"model: {self.model}" + (f"   teacher: {self.teacher}" if self.teacher is not None else "")
        sub = f"limit: {self.limit}   seed: {self.seed}"
        if self.seconds is not None:
            sub += f"   wall time: {self.seconds:.1f} s"
        if self.mean_retention is not None:
            sub += f"   mean retention: {self.mean_retention:.1f}%"
        return [who, sub]

    def _footer(self) -> list[str]:
        speed = []
        if self.model_texts_per_second:
            speed.append(f"model {self.model_texts_per_second:.1f} texts/s")
        if self.teacher_texts_per_second:
            speed.append(f"teacher {self.teacher_texts_per_second:.1f} texts/s")
        tail = ["encoding speed: " + ", ".join(speed)] if speed else []
        tail += [f"note: {n}" for n in self.notes]
        return [""] + tail if tail else []

    def __str__(self) -> str:
        return self.to_table()


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def load_results(paths: Sequence[str | os.PathLike[str]]) -> list[EvaluationResult]:
    """Read several JSON results (e.g. to plot models evaluated in separate runs together).

    Raises:
        MissingInputError: a path is not a file.
        InvalidInputError: a file is not a result written by :meth:`EvaluationResult.to_json`.
    """
    results = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise MissingInputError(f"{path}: no such result file; pass JSON files written by `ternary-hf eval --out`")
        try:
            results.append(EvaluationResult.from_json(path))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(
                f"{path} is not an evaluation result ({type(exc).__name__}: {exc}); pass JSON files written by "
                "`ternary-hf eval --out`"
            ) from None
    return results
