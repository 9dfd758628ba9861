"""Fusing a block's activation into the ternary linear layer that feeds it (inference only).

Transformer encoders compute their feed-forward up-projection as ``intermediate_act_fn(dense(x))``
inside an ``*Intermediate`` module (BERT, MPNet, RoBERTa, ...) or ``activation_fn(fc1(x))`` inside an
``*MLP`` module (ViT, CLIP, ...). With a ternary up-projection the
CPU kernel can apply the exact-erf GELU to each output tile while it is in registers, which saves a
separate pass over the largest activation of the layer (tokens x 4 * hidden; its share of a forward
is in benchmarks/README.md). The fusion is a load-time rewrite that changes no weight and nothing that is saved:
the module's activation attribute becomes a :class:`FusedIntoLinear` placeholder that remembers
the original, and :func:`unfuse_activations` (called by ``dequantize``) puts it back.

Only exact GELU is fused (``transformers.activations.GELUActivation`` with ``nn.functional.gelu``, or
``nn.GELU(approximate="none")``); any other activation is left as it is.
"""

from __future__ import annotations

from torch import nn

from .int8_linear import Int8Linear
from .modules import TernaryLinear

__all__ = ["FUSION_PATTERNS", "FusedIntoLinear", "fuse_activations", "unfuse_activations"]

#: The layers that can apply a fused activation themselves (the kernel's epilogue, else torch's GELU).
_FUSING = (TernaryLinear, Int8Linear)

#: (linear attribute, activation attribute) pairs of a block whose forward is ``act(linear(x))``.
FUSION_PATTERNS: tuple[tuple[str, str], ...] = (("dense", "intermediate_act_fn"), ("fc1", "activation_fn"))


class FusedIntoLinear(nn.Module):
    """Stands in for an activation that the preceding :class:`TernaryLinear` now applies itself."""

    def __init__(self, original: nn.Module, activation: str) -> None:
        super().__init__()
        self.original = original
        self.activation = activation

    def forward(self, hidden_states):
        return hidden_states

    def extra_repr(self) -> str:
        return f"fused into the preceding ternary linear: {self.activation}"


def _exact_gelu(act: object) -> bool:
    import torch.nn.functional as F

    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    try:
        from transformers.activations import GELUActivation
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return type(act) is GELUActivation and getattr(act, "act", None) is F.gelu


def fuse_activations(model: nn.Module) -> int:
    """Fuse exact GELU into the ternary up-projection of every block matching :data:`FUSION_PATTERNS`.

    A block qualifies when its linear attribute is a :class:`TernaryLinear` or an ``Int8Linear`` with
    int8 activations (the kernel's path) and its activation attribute is exact GELU. Returns the
    number fused; idempotent.
    """
    fused = 0
    for module in model.modules():
        for linear_name, act_name in FUSION_PATTERNS:
            linear, act = getattr(module, linear_name, None), getattr(module, act_name, None)
            if isinstance(linear, _FUSING) and linear.quantize_activations and _exact_gelu(act):
                linear.fused_activation = "gelu"
                setattr(module, act_name, FusedIntoLinear(act, "gelu"))
                fused += 1
    return fused


def unfuse_activations(model: nn.Module) -> int:
    """Undo :func:`fuse_activations` (before converting layers back to float); returns the count."""
    restored = 0
    for module in model.modules():
        for linear_name, act_name in FUSION_PATTERNS:
            act = getattr(module, act_name, None)
            if isinstance(act, FusedIntoLinear):
                setattr(module, act_name, act.original)
                linear = getattr(module, linear_name, None)
                if isinstance(linear, _FUSING):
                    linear.fused_activation = None
                restored += 1
    return restored
