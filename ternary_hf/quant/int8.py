"""Int8 weights for the few layers where ternary costs the most quality (``TernaryConfig.int8_modules``).

A ternary matrix keeps 2 bits per weight; measured on the distilled MiniLM, most of what the student
loses out of domain is lost in the last encoder blocks (docs/quality.md). Storing those blocks'
matrices with 8 bits per weight costs 4x their ternary bytes and keeps them as near-float as int8
activations allow. The rule:

* weights: symmetric per output channel, ``s_w = max|row| / 127`` (float32; ``1`` for an all-zero
  row), ``W_q = clamp(round(W / s_w), -127, 127)``;
* activations: the per-token int8 rule of :mod:`.functional`, shared with the ternary layers;
* ``y = (q(x) @ W_q.T) * s_x * s_w + b``, the integer part summed exactly in int32 on CPU
  (``torch._int_mm``), in float32 elsewhere (exact while ``127 * 127 * in_features < 2**24``).
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from .functional import INT8_MAX, quantize_activations_int8

__all__ = ["dequantize_int8", "int8_linear", "quantize_weight_int8"]


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, in)`` float weight -> ``(int8 values (out, in), float32 scale (out,))``; refuses NaN / inf."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise InvalidInputError(f"expected a 2-D float weight, got {tuple(weight.shape)} {weight.dtype}")
    w = weight.detach().to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise InvalidInputError("weight contains NaN or inf; refusing to quantize")
    amax = w.abs().amax(dim=1) if w.shape[1] else torch.zeros(w.shape[0], device=w.device)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    values = torch.round(w / scale[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return values, scale


def dequantize_int8(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``s_w * W_q`` as a float matrix."""
    return (values.to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)


def _integer_path(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and hasattr(torch, "_int_mm") and not (torch.is_grad_enabled() and x.requires_grad)


def int8_linear(x: torch.Tensor, values: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                quantize_activations: bool = True) -> torch.Tensor:
    """The int8 linear map of the module docstring; output in ``x``'s dtype, shape ``(..., out_features)``.

    With ``quantize_activations=False`` the float input multiplies the dequantized weight instead.
    """
    lead, k = x.shape[:-1], x.shape[-1]
    x2d = x.reshape(-1, k)
    if not quantize_activations:
        y = x2d.to(torch.float32) @ dequantize_int8(values, scale).t()
    else:
        q, s_x = quantize_activations_int8(x2d)
        if _integer_path(x):
            y = torch._int_mm(q.to(torch.int8), values.t()).to(torch.float32)
        else:
            y = q @ values.to(device=q.device, dtype=torch.float32).t()
        y = y * s_x * scale.to(torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.reshape(*lead, values.shape[0]).to(x.dtype)
