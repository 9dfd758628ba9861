"""Registers the ``"ternary"`` method with transformers' public quantizer registry, idempotently.

transformers' ``register_quantization_config`` / ``register_quantizer`` raise if a name is taken,
which would break a second import (e.g. after ``importlib.reload``) or two libraries both importing
us. We register only when the name is free, and raise only if someone else's class holds it.
"""

from __future__ import annotations

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)

from ..errors import RegistrationError
from .config import QUANT_METHOD, TernaryConfig
from .quantizer import TernaryHfQuantizer

__all__ = ["register", "is_registered"]


def _same_class(registered: type, ours: type) -> bool:
    # After a reload the class object differs but is the same class by qualified name.
    same_name = (registered.__module__, registered.__qualname__) == (ours.__module__, ours.__qualname__)
    return registered is ours or same_name


def register() -> None:
    """Make ``quant_method: "ternary"`` known to transformers (safe to call any number of times)."""
    for mapping, ours, registrar in (
        (AUTO_QUANTIZATION_CONFIG_MAPPING, TernaryConfig, register_quantization_config),
        (AUTO_QUANTIZER_MAPPING, TernaryHfQuantizer, register_quantizer),
    ):
        existing = mapping.get(QUANT_METHOD)
        if existing is None:
            registrar(QUANT_METHOD)(ours)
        elif not _same_class(existing, ours):
            raise RegistrationError(
                f"transformers already has a quantization method {QUANT_METHOD!r} registered by "
                f"{existing.__module__}.{existing.__qualname__}; ternary-hf cannot register its own."
            )
        else:
            mapping[QUANT_METHOD] = ours  # a reloaded module: point at the live class


def is_registered() -> bool:
    return QUANT_METHOD in AUTO_QUANTIZATION_CONFIG_MAPPING and QUANT_METHOD in AUTO_QUANTIZER_MAPPING
