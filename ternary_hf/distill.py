"""Public entry point of the distillation trainer, kept at its historical path.

``from ternary_hf.distill import DistillConfig, distill`` is what the README and user code import; the
trainer itself lives in :mod:`ternary_hf.train`.
"""

from .train import DistillConfig, DistillResult, SettingsChangedError, distill

__all__ = ["DistillConfig", "DistillResult", "SettingsChangedError", "distill"]
