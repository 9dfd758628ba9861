"""Self-taught distillation: the float model teaches its own ternary copy (arXiv 2411.15438, extended).

Owns: :mod:`.student` (trainable stand-ins of the inference layers: latent float weights, the exact
ternary forward, a straight-through gradient), :mod:`.teacher_cache` and :mod:`.teacher_forcing`, and
:mod:`.distill` (configuration, data, losses and the Accelerate loop).
Imports: :mod:`ternary_hf.integrations`, :mod:`ternary_hf.quant`, :mod:`ternary_hf.kernels`,
:mod:`ternary_hf.data`, :mod:`ternary_hf.evaluation` (periodic evaluation) and :mod:`ternary_hf.utils`.
"""

from .loop import DistillConfig, DistillResult, distill

__all__ = ["DistillConfig", "DistillResult", "distill"]
