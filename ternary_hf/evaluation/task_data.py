"""The data one :func:`~ternary_hf.evaluation.evaluate` call shares between its tasks and both models.

Why apart: every task module reads its subsets through the same :class:`TaskData`, so the student and
the teacher see the same texts, and a text set is loaded (and sampled) once per call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import TextDataset, load_dataset
from ..data.ood import load_retrieval_pairs, long_texts
from .encoders import Encoder

__all__ = ["SkipTask", "Task", "TaskData"]


class SkipTask(Exception):
    """A task that cannot be scored on this subset (e.g. one class only); becomes a note of the result."""


class TaskData:
    """Data subsets of one evaluate() call (each loaded once, shared by both models)."""

    def __init__(self, limit: int | None, seed: int, cache_dir: str | os.PathLike[str] | None) -> None:
        self.limit, self.seed, self.cache_dir = limit, seed, cache_dir
        self._cache: dict[tuple[str, ...], Any] = {}

    def _load(self, key: tuple[str, ...], load: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def get(self, name: str, split: str) -> TextDataset:
        """A split of a data set of :func:`ternary_hf.data.load_dataset`."""
        return self._load(("dataset", name, split),
                          lambda: load_dataset(name, split, self.limit, self.seed, self.cache_dir))

    def pairs(self, name: str) -> tuple[TextDataset, TextDataset]:
        """(queries, documents) of a held-out retrieval set of :mod:`ternary_hf.data.ood`."""
        return self._load(("pairs", name),
                          lambda: load_retrieval_pairs(name, "test", self.limit, self.seed, self.cache_dir))

    def long_texts(self) -> TextDataset:
        """Held-out out-of-domain passages long enough for every length bucket."""
        return self._load(("long",), lambda: long_texts("test", limit=self.limit, seed=self.seed,
                                                       cache_dir=self.cache_dir))


@dataclass(frozen=True)
class Task:
    """One task: a description, and either ``score`` (one model: run for student and teacher alike) or
    ``compare`` (the student against the teacher; needs a teacher, runs after the other tasks).

    ``score`` gives a metric that is a mean over items (queries, test texts) as its per-item values
    (a 1-D array), so that the result can say how far the retention would move on another sample of
    the items; any other metric as a float."""

    description: str
    score: Callable[[Encoder, TaskData], dict[str, float | np.ndarray]] | None = None
    compare: Callable[[Encoder, Encoder, TaskData, list[str]], dict[str, float]] | None = None

    @property
    def needs_teacher(self) -> bool:
        return self.compare is not None
