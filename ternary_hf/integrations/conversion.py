"""Model surgery: swap ``nn.Linear`` / ``nn.Embedding`` for their ternary counterparts, and back.

Used by the quantizer on the meta-device skeleton before weights load (so no float copy of the
model is ever built) and by :func:`dequantize_model` to give back a plain float model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from .config import TernaryConfig
from .modules import QuantizedEmbedding, TernaryLinear

__all__ = ["is_skipped", "swap_modules", "replace_with_ternary", "dequantize_model", "ternary_modules"]

logger = logging.getLogger(__name__)


def is_skipped(name: str, skip: list[str]) -> bool:
    """True if the qualified module ``name`` matches a ``modules_to_not_convert`` entry.

    An entry matches the module itself, any module under it, or any module whose dotted name contains
    it as whole components (``"pooler"`` matches ``pooler.dense``; ``"attention.output"`` matches
    ``encoder.layer.0.attention.output.dense``).
    """
    padded = f".{name}."
    return any(f".{entry}." in padded for entry in skip)


def swap_modules(
    model: nn.Module,
    config: TernaryConfig,
    skip: list[str],
    make_linear: Callable[[nn.Linear], nn.Module],
    make_embedding: Callable[[nn.Embedding], nn.Module],
) -> tuple[int, int]:
    """Replace, in place, every plain ``nn.Linear`` (and ``nn.Embedding`` when the config stores
    embeddings) outside ``skip`` with what the factories build; returns ``(n_linear, n_embedding)``.

    The one walk shared by the quantizer (inference modules) and the trainer (trainable ones), so both
    convert exactly the same set of modules.
    """
    n_linear = n_embedding = 0
    for name, module in list(model.named_modules()):
        if not name or is_skipped(name, skip):
            continue
        if type(module) is nn.Linear:
            new = make_linear(module)
            n_linear += 1
        elif type(module) is nn.Embedding and config.embedding_storage is not None:
            new = make_embedding(module)
            n_embedding += 1
        else:
            continue
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child_name, new)
    return n_linear, n_embedding


def replace_with_ternary(model: nn.Module, config: TernaryConfig, skip: list[str]) -> tuple[int, int]:
    """Swap in empty inference modules (``TernaryLinear`` / ``QuantizedEmbedding``), e.g. on the meta device.

    New modules are created on the device of the module they replace; returns ``(n_linear, n_embedding)``.
    """

    def linear(module: nn.Linear) -> nn.Module:
        return TernaryLinear(
            module.in_features, module.out_features, bias=module.bias is not None,
            threshold_method=config.threshold_method, granularity=config.granularity,
            quantize_activations=config.quantize_activations, device=module.weight.device, dtype=module.weight.dtype,
        ).requires_grad_(False)

    def embedding(module: nn.Embedding) -> nn.Module:
        return QuantizedEmbedding(
            module.num_embeddings, module.embedding_dim, storage=config.embedding_storage,
            padding_idx=module.padding_idx, compute_dtype=module.weight.dtype, device=module.weight.device,
        )

    return swap_modules(model, config, skip, linear, embedding)


def ternary_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's ternary / quantized modules by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (TernaryLinear, QuantizedEmbedding))}


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every ternary module by the float module it stands for (in place; returns ``model``)."""
    from ..runtime import disable_fast_forward
    from .fusion import unfuse_activations

    disable_fast_forward(model)  # the fast forward runs ternary layers; a float model takes its own forward
    unfuse_activations(model)  # a fused GELU goes back to its own module before the layer turns float
    for name, module in ternary_modules(model).items():
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(module, TernaryLinear):
            setattr(parent, child_name, module.to_linear(dtype))
        else:
            setattr(parent, child_name, module.to_embedding(dtype))
    return model
