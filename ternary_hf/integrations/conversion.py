"""Model surgery: swap ``nn.Linear`` / ``nn.Embedding`` for their ternary counterparts, and back.

Used by the quantizer on the meta-device skeleton before weights load (so no float copy of the
model is ever built) and by :func:`dequantize_model` to give back a plain float model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable

import torch
from torch import nn
from transformers.quantizers.quantizers_utils import should_convert_module

from ..errors import InvalidInputError
from .config import TernaryConfig
from .fast_forward import disable_fast_forward
from .int4_linear import Int4Linear
from .int8_linear import Int8Linear
from .modules import QuantizedEmbedding, TernaryLinear

__all__ = ["QUANTIZED_MODULES", "is_skipped", "swap_modules", "replace_with_ternary", "dequantize_model",
           "ternary_modules"]

#: The inference modules the quantizer creates, loads and checks (each has ``quantize_weight``,
#: ``reset_stored_weights`` and ``to_linear`` / ``to_embedding``; ``Int4Linear`` is an ``Int8Linear``).
QUANTIZED_MODULES = (TernaryLinear, Int8Linear, QuantizedEmbedding)

logger = logging.getLogger(__name__)


def is_skipped(name: str, skip: Iterable[str]) -> bool:
    """True if the qualified module ``name`` matches a ``modules_to_not_convert`` entry.

    An entry keeps a module in full precision when any of these holds:

    1. transformers' rule (``transformers.quantizers.quantizers_utils.should_convert_module``, the one
       every HF quantizer applies, called here so the two never drift apart):

       a. the entry, read as a regular expression, matches the start of ``name`` up to a dot or the
          end (``"encoder.layer.1"`` matches ``encoder.layer.1.output.dense`` but not
          ``encoder.layer.11.output.dense``; ``"encoder.layer.*.attention"`` matches every layer's
          attention);
       b. ``name`` ends with the entry as a plain string (``"fc1"`` matches ``encoder.layers.0.fc1``;
          note ``"classifier"`` also matches ``pre_classifier``).
    2. ternary-hf's rule, kept so the lists saved in existing ``config.json`` files keep their
       meaning: the entry occurs in ``name`` as whole dotted components (``"pooler"`` matches
       ``bert.pooler.dense``; ``"attention.self"`` matches ``encoder.layer.0.attention.self.query``).
    """
    skip = list(skip)
    if not skip:
        return False
    padded = f".{name}."
    return not should_convert_module(name, skip) or any(f".{entry}." in padded for entry in skip)


def swap_modules(
    model: nn.Module,
    config: TernaryConfig,
    skip: list[str],
    make_linear: Callable[[nn.Linear], nn.Module],
    make_embedding: Callable[[nn.Embedding], nn.Module],
    convert_anyway: Collection[str] = (),
    make_int8: Callable[[nn.Linear], nn.Module] | None = None,
    make_int4: Callable[[nn.Linear], nn.Module] | None = None,
) -> tuple[int, int]:
    """Replace, in place, every plain ``nn.Linear`` (and ``nn.Embedding`` when the config stores
    embeddings) outside ``skip`` with what the factories build; returns ``(n_linear, n_embedding)``.

    The one walk shared by the quantizer (inference modules) and the trainer (trainable ones), so both
    convert exactly the same set of modules. Modules named in ``convert_anyway`` are converted to
    ternary even if ``skip`` or ``int8_modules`` matches them (a pre-quantized checkpoint that stores
    them ternary). ``make_int8`` / ``make_int4`` build the layers ``config.int8_modules`` /
    ``config.int4_modules`` name (the trainer leaves them out through ``skip`` instead: they train in
    float).

    Raises:
        InvalidInputError: a layer is named by both ``int8_modules`` and ``int4_modules``.
    """
    int8 = config.int8_module_names() if make_int8 is not None else []
    int4 = config.int4_module_names() if make_int4 is not None else []
    n_linear = n_embedding = 0
    for name, module in list(model.named_modules()):
        if not name or (is_skipped(name, skip) and name not in convert_anyway):
            continue
        if type(module) is nn.Linear:
            as_int8 = bool(int8) and is_skipped(name, int8) and name not in convert_anyway
            as_int4 = bool(int4) and is_skipped(name, int4) and name not in convert_anyway
            if as_int8 and as_int4:
                raise InvalidInputError(f"{name} is named by both int8_modules {int8} and int4_modules {int4}; "
                                        "name each layer in one of them")
            new = make_int8(module) if as_int8 else make_int4(module) if as_int4 else make_linear(module)
            n_linear += 1
        elif type(module) is nn.Embedding and config.embedding_storage is not None:
            new = make_embedding(module)
            n_embedding += 1
        else:
            continue
        model.set_submodule(name, new, strict=True)
    return n_linear, n_embedding


def replace_with_ternary(
    model: nn.Module, config: TernaryConfig, skip: list[str], convert_anyway: Collection[str] = ()
) -> tuple[int, int]:
    """Swap in empty inference modules (``TernaryLinear``, ``Int8Linear`` / ``Int4Linear`` for
    ``config.int8_modules`` / ``int4_modules``, ``QuantizedEmbedding``), e.g. on the meta device.

    New modules are created on the device of the module they replace; returns ``(n_linear, n_embedding)``.
    ``convert_anyway`` as in :func:`swap_modules`.
    """

    def linear(module: nn.Linear) -> nn.Module:
        return TernaryLinear(
            module.in_features, module.out_features, bias=module.bias is not None,
            threshold_method=config.threshold_method, granularity=config.granularity,
            quantize_activations=config.quantize_activations, device=module.weight.device, dtype=module.weight.dtype,
        ).requires_grad_(False)

    def int8_linear(module: nn.Linear, cls: type[Int8Linear] = Int8Linear) -> nn.Module:
        return cls(
            module.in_features, module.out_features, bias=module.bias is not None,
            quantize_activations=config.quantize_activations, device=module.weight.device, dtype=module.weight.dtype,
        ).requires_grad_(False)

    def int4_linear(module: nn.Linear) -> nn.Module:
        return int8_linear(module, Int4Linear)

    def embedding(module: nn.Embedding) -> nn.Module:
        return QuantizedEmbedding(
            module.num_embeddings, module.embedding_dim, storage=config.embedding_storage,
            padding_idx=module.padding_idx, compute_dtype=module.weight.dtype, device=module.weight.device,
            group_size=config.embedding_group_size,
        )

    return swap_modules(model, config, skip, linear, embedding, convert_anyway, make_int8=int8_linear,
                        make_int4=int4_linear)


def ternary_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's ternary / quantized modules (:data:`QUANTIZED_MODULES`) by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZED_MODULES)}


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every ternary module by the float module it stands for (in place; returns ``model``)."""
    from .fusion import unfuse_activations

    disable_fast_forward(model)  # the fast forward runs ternary layers; a float model takes its own forward
    unfuse_activations(model)  # a fused GELU goes back to its own module before the layer turns float
    for name, module in ternary_modules(model).items():
        float_module = module.to_embedding(dtype) if isinstance(module, QuantizedEmbedding) else module.to_linear(dtype)
        model.set_submodule(name, float_module, strict=True)
    return model
