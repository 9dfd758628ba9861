"""Self-taught distillation: the float model teaches its own ternary copy (arXiv 2411.15438, extended).

Owns, by concern: :mod:`.config` (``DistillConfig``: every setting, its docs and allowed values; the
CLI flags are generated from it), :mod:`.data` (texts, the seeded batch order, text batches),
:mod:`.losses` (every loss: a new one goes here), :mod:`.student` (trainable stand-ins of the
inference layers), :mod:`.teacher_cache` and :mod:`.teacher_forcing`, :mod:`.schedule` (clock,
learning rate, optimizer), :mod:`.checkpoints`, :mod:`.tracking` (metrics), :mod:`.run_settings`
(what defines a run, checked on resume), :mod:`.finalize` (packing and the ``distillation.json``
record), :mod:`.loop` (the one training loop, for text and images) and :mod:`.text_distill` (text
distillation = the loop + text data + text losses).
Imports: :mod:`ternary_hf.integrations`, :mod:`ternary_hf.quant`, :mod:`ternary_hf.kernels`,
:mod:`ternary_hf.data`, :mod:`ternary_hf.evaluation` (periodic evaluation), :mod:`ternary_hf.errors`
and :mod:`ternary_hf.utils`.
"""

from .config import DistillConfig, DistillResult
from .run_settings import SettingsChangedError
from .text_distill import distill

__all__ = ["DistillConfig", "DistillResult", "SettingsChangedError", "distill"]
