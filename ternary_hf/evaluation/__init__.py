"""Measuring models: quality on real data (and retention against a teacher), encode speed, baselines.

Owns: :mod:`.tasks` (the task registry and :func:`evaluate`; a new task goes there), :mod:`.metrics`
(retrieval metrics per query and on average, retention intervals, top-k overlap, sentence pairs),
:mod:`.out_of_domain` (tasks on domains no distillation mix contains, and per-length agreement),
:mod:`.task_data` (the data a call shares), :mod:`.encoders` (opening models from folders, encoding each
text once, keeping a teacher's embeddings),
:mod:`.results` (``EvaluationResult``: JSON, text table), :mod:`.plots`,
:mod:`.environment` (where a result was measured), :mod:`.speed` (encode throughput side by side) and
:mod:`.onnx_baseline` (ONNX Runtime int8, the CPU user's stock alternative).
Imports: :mod:`ternary_hf.data` (public API only), :mod:`ternary_hf.search` (exact search,
normalisation), :mod:`ternary_hf.utils`, :mod:`ternary_hf.errors` and the optional ``eval`` / ``onnx`` extras.
"""

from .metrics import (
    recall_at_k,
    recall_scores,
    retention_interval,
    retrieval_metrics,
    retrieval_scores,
    sentence_pairs,
    topk_overlap,
)
from .plots import plot_results
from .results import EvaluationResult, MetricResult, load_results
from .speed import SpeedResult, measure_encode_speed
from .tasks import TASKS, evaluate, resolve_tasks

__all__ = [
    "TASKS",
    "EvaluationResult",
    "MetricResult",
    "SpeedResult",
    "evaluate",
    "load_results",
    "measure_encode_speed",
    "plot_results",
    "recall_at_k",
    "recall_scores",
    "resolve_tasks",
    "retention_interval",
    "retrieval_metrics",
    "retrieval_scores",
    "sentence_pairs",
    "topk_overlap",
]
