"""Measuring models: quality on real data (and retention against a teacher), encode speed, baselines.

Owns: :mod:`.tasks` (the task registry and :func:`evaluate`; a new task goes there), :mod:`.metrics`
(retrieval metrics, top-k overlap, sentence pairs), :mod:`.encoders` (opening models from folders,
encoding each text once), :mod:`.results` (``EvaluationResult``: JSON, text table), :mod:`.plots`,
:mod:`.environment` (where a result was measured), :mod:`.speed` (encode throughput side by side) and
:mod:`.onnx_baseline` (ONNX Runtime int8, the CPU user's stock alternative).
Imports: :mod:`ternary_hf.data` (public API only), :mod:`ternary_hf.search` (exact search,
normalisation), :mod:`ternary_hf.utils`, :mod:`ternary_hf.errors` and the optional ``eval`` / ``onnx`` extras.
"""

from .metrics import retrieval_metrics, sentence_pairs, topk_overlap
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
    "resolve_tasks",
    "retrieval_metrics",
    "sentence_pairs",
    "topk_overlap",
]
