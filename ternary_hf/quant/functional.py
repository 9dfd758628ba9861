"""The ternary linear map, as plain torch ops (the reference path, and the device-agnostic one).

``y = (q(x) @ T.T) * s_x * s_w + b`` where ``T`` is the ternary matrix, ``s_w`` its per-output-channel
(or per-tensor) scale and ``q``/``s_x`` the optional per-token int8 quantization of activations.

The activation rule is fixed here so every backend (this reference, the CPU kernel, the trainer's
fake quantization) computes the same integers:

* per token (last dimension): ``amax = max|x|``; ``s_x = amax / 127`` (``1`` where ``amax == 0``);
* ``q(x) = clamp(round_half_to_even(x * (127 / amax)), -127, 127)`` computed in float32.

Integer products summed in float32 are exact while ``127 * in_features < 2**24`` (any layer narrower
than 132k inputs), so this path reproduces an int32-accumulating kernel exactly on the integer part.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from .packing import unpack_ternary

__all__ = [
    "FUSABLE_ACTIVATIONS",
    "apply_activation",
    "quantize_activations_int8",
    "ternary_linear_reference",
    "validate_activation",
]

INT8_MAX = 127.0


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric int8 quantization of ``x`` (float32 math whatever the input dtype).

    Returns ``(q, scale)``: ``q`` holds integers in ``[-127, 127]`` as float32 (so they can go through a
    float matmul exactly) and ``scale`` has shape ``x.shape[:-1] + (1,)`` with ``x ~= q * scale``.
    """
    x32 = x.to(torch.float32)
    amax = x32.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    q = torch.round(x32 * (INT8_MAX / safe)).clamp_(-INT8_MAX, INT8_MAX)
    return q, safe / INT8_MAX


def ternary_linear_reference(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    quantize_activations: bool,
    ternary_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference ternary linear layer: unpack, matmul in float32, rescale.

    Args:
        x: input of shape ``(..., in_features)``.
        packed_weight: ``uint8`` weights in the layout of :mod:`ternary_hf.quant.packing`.
        weight_scale: float scale, shape ``(out_features,)`` (per channel) or ``(1,)`` (per tensor).
        bias: optional float bias of shape ``(out_features,)``.
        in_features: unpadded input width.
        quantize_activations: apply the per-token int8 rule of this module to ``x`` first.
        ternary_weight: an already unpacked float32 ``(out, in)`` matrix, to skip unpacking.

    Returns:
        Output in ``x``'s dtype, shape ``(..., out_features)``.
    """
    t = ternary_weight if ternary_weight is not None else unpack_ternary(packed_weight, in_features, torch.float32)
    if quantize_activations:
        q, s_x = quantize_activations_int8(x)
        y = torch.matmul(q, t.t()) * s_x
    else:
        y = torch.matmul(x.to(torch.float32), t.t())
    y = y * weight_scale.to(torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


#: Activations a ternary layer can apply to its own output (``TernaryLinear.fused_activation``); the
#: CPU kernel computes them in its epilogue, every other path with :func:`apply_activation`.
FUSABLE_ACTIVATIONS = ("gelu",)


def validate_activation(activation: str | None) -> None:
    """Raise ``ValueError`` unless ``activation`` is ``None`` or one of :data:`FUSABLE_ACTIVATIONS`."""
    if activation is not None and activation not in FUSABLE_ACTIVATIONS:
        raise InvalidInputError(
            f"activation={activation!r} cannot be fused; choose None or one of {FUSABLE_ACTIVATIONS}"
        )


def apply_activation(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The reference of a fused activation: ``y`` itself, or exact-erf ``F.gelu(y)`` for ``"gelu"``."""
    validate_activation(activation)
    return y if activation is None else torch.nn.functional.gelu(y)
