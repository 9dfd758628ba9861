"""Measuring models: quality on real data (and retention against a teacher), encode speed, baselines.

Owns: :mod:`.evaluate` (the tasks, ``EvaluationResult``, plots), :mod:`.speed` (encode throughput side by
side) and :mod:`.onnx_baseline` (ONNX Runtime int8, the CPU user's stock alternative).
Imports: :mod:`ternary_hf.data`, :mod:`ternary_hf.utils` and the optional ``eval`` / ``onnx`` extras.
"""

from .speed import SpeedResult, measure_encode_speed
from .tasks import TASKS, EvaluationResult, MetricResult, evaluate, load_results, plot_results

__all__ = [
    "TASKS",
    "EvaluationResult",
    "MetricResult",
    "SpeedResult",
    "evaluate",
    "load_results",
    "measure_encode_speed",
    "plot_results",
]
