"""One picture of one or more evaluation results: retention per task, and quality against size and speed.

Why: the question every ternary model answers is "how much quality for how much size and speed", and
results of several runs (plain conversion, distilled, teacher) read best side by side.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .encoders import short_name
from .results import EvaluationResult

__all__ = ["plot_results"]


def plot_results(results: EvaluationResult | Sequence[EvaluationResult], path: str | os.PathLike[str]) -> Path:
    """Write a PNG: per-task retention (or raw scores, when no result has a teacher) for each result,
    teacher-agreement values x 100 beside them, and, given two or more results with size and speed,
    quality (mean retention) vs model size with speed as colour (the teacher drawn at 100 %).

    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [results] if isinstance(results, EvaluationResult) else list(results)
    if not results:
        raise InvalidInputError("plot_results needs at least one EvaluationResult")
    use_retention = any(r.mean_retention is not None for r in results)
    if use_retention:
        # a result without a teacher has no retention; the teachers are drawn at 100 % in the scatter
        results = [r for r in results if r.mean_retention is not None]
    scatter = [r for r in results if r.model_size_bytes and r.model_texts_per_second]
    teacher = next((r for r in scatter if r.teacher_size_bytes and r.teacher_texts_per_second), None)
    two_panels = len(scatter) + (teacher is not None) >= 2
    fig, axes = plt.subplots(1, 2 if two_panels else 1, figsize=(14 if two_panels else 9, 5.5), squeeze=False)
    _draw_bars(axes[0][0], results, use_retention)
    if two_panels:
        _draw_scatter(fig, axes[0][1], scatter, teacher if use_retention else None, use_retention)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _bar_value(res: EvaluationResult, key: tuple[str, str], use_retention: bool) -> float:
    try:
        row = res.get(*key)
    except KeyError:
        return np.nan
    if not use_retention:
        value = row.student
    elif row.task == "teacher-agreement":  # already a fraction of a perfect match: drawn x 100
        value = None if row.student is None else 100.0 * row.student
    else:
        value = row.retention
    return np.nan if value is None else value


def _draw_bars(ax: Any, results: list[EvaluationResult], use_retention: bool) -> None:
    keys = list(dict.fromkeys(
        (m.task, m.metric) for r in results for m in r.metrics if use_retention or m.task != "teacher-agreement"
    ))
    width = 0.8 / len(results)
    x = np.arange(len(keys))
    for i, res in enumerate(results):
        values = [_bar_value(res, key, use_retention) for key in keys]
        bars = ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=res.name)
        ax.bar_label(bars, fmt="%.0f" if use_retention else "%.2f", fontsize=7, padding=1)
    if use_retention:
        ax.axhline(100, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylabel("retention of the teacher's score (%)" if use_retention else "score")
    ticks = [f"{t}\n{m}" + (" (x100)" if use_retention and t == "teacher-agreement" else "") for t, m in keys]
    ax.set_xticks(x, ticks, rotation=60, ha="right", fontsize=8)
    ax.set_title("quality retention per task" if use_retention else "score per task")
    ax.legend(fontsize=8)


def _draw_scatter(fig: Any, ax: Any, scatter: list[EvaluationResult], teacher: EvaluationResult | None,
                  use_retention: bool) -> None:
    points = [
        (r.name, r.model_size_bytes / 1e6, (r.mean_retention if use_retention else r.mean_score) or np.nan,
         r.model_texts_per_second)
        for r in scatter
    ]
    if teacher is not None:
        points.append(("teacher " + short_name(str(teacher.teacher)), teacher.teacher_size_bytes / 1e6, 100.0,
                       teacher.teacher_texts_per_second))
    names, sizes, quality, speed = zip(*points, strict=True)
    sc = ax.scatter(sizes, quality, c=speed, cmap="viridis", s=80, edgecolors="black")
    for name, sx, qy in zip(names, sizes, quality, strict=True):
        ax.annotate(name, (sx, qy), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.35, y=0.15)
    ax.set_xlabel("model size in memory (MB, log scale)")
    ax.set_ylabel("mean retention (%)" if use_retention else "mean score")
    ax.set_title("quality vs size (colour: encoding speed)")
    fig.colorbar(sc, ax=ax, label="texts / s")
