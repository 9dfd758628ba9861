"""Int4 weights for the lower encoder blocks (``TernaryConfig.int4_modules``).

Why: a student whose lower blocks keep their precision generalizes far better out of domain than one
whose lower blocks are ternary, whatever precision its upper blocks get (docs/quality.md). 4 bits per
weight is twice a ternary matrix's bytes, so the lower half of a small encoder fits in the size one int8
block costs. The rule:

* weights: symmetric per output channel, values in ``[-7, 7]``; the scale ``s_w = c * max|row| / 7``
  takes the clipping factor ``c`` in ``CLIP_GRID`` with the least squared rounding error of that row
  (int4 is coarse enough that clipping a few outliers pays; ``1`` for an all-zero row);
* activations and the linear map: exactly those of :mod:`.int8` (the values are int8 values), so the
  CPU kernel multiplies them with its int8-weight path and sums them exactly in int32;
* storage: two values per byte (``int8`` dtype, so no checkpoint reader can take it for a packed ternary
  matrix): value ``2j`` in the low nibble and ``2j + 1`` in the high nibble, each as 4-bit two's
  complement; an odd ``in_features`` pads the last high nibble with 0.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError

__all__ = ["CLIP_GRID", "INT4_MAX", "pack_int4", "quantize_weight_int4", "unpack_int4"]

INT4_MAX = 7
#: clipping factors tried per output channel (fractions of max|row|)
CLIP_GRID = tuple(round(1.0 - 0.02 * i, 2) for i in range(26))  # 1.00, 0.98, ..., 0.50


def quantize_weight_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, in)`` float weight -> ``(int8 values in [-7, 7] (out, in), float32 scale (out,))``;
    refuses NaN / inf."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise InvalidInputError(f"expected a 2-D float weight, got {tuple(weight.shape)} {weight.dtype}")
    w = weight.detach().to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise InvalidInputError("weight contains NaN or inf; refusing to quantize")
    amax = w.abs().amax(dim=1, keepdim=True) if w.shape[1] else torch.zeros(w.shape[0], 1, device=w.device)
    best_scale = torch.where(amax > 0, amax / INT4_MAX, torch.ones_like(amax))
    best_err = torch.full_like(amax, float("inf"))
    for clip in CLIP_GRID:
        scale = torch.where(amax > 0, amax * clip / INT4_MAX, torch.ones_like(amax))
        err = (torch.round(w / scale).clamp_(-INT4_MAX, INT4_MAX) * scale - w).square_().sum(dim=1, keepdim=True)
        better = err < best_err
        best_scale = torch.where(better, scale, best_scale)
        best_err = torch.where(better, err, best_err)
    values = torch.round(w / best_scale).clamp_(-INT4_MAX, INT4_MAX).to(torch.int8)
    return values, best_scale.squeeze(1)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """int8 ``(out, in)`` values in ``[-8, 7]`` -> int8 ``(out, ceil(in / 2))``, two per byte (module docstring)."""
    if values.dim() != 2 or values.dtype != torch.int8:
        raise InvalidInputError(f"expected 2-D int8 values, got {tuple(values.shape)} {values.dtype}")
    if values.numel() and (int(values.min()) < -8 or int(values.max()) > 7):
        raise InvalidInputError("int4 values must lie in [-8, 7]")
    v = values.to(torch.int16)
    if v.shape[1] % 2:
        v = torch.nn.functional.pad(v, (0, 1))
    nibbles = v & 0xF
    byte = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return torch.where(byte > 127, byte - 256, byte).to(torch.int8)


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: int8 ``(out, in_features)`` values in ``[-8, 7]``."""
    if packed.dim() != 2 or packed.dtype != torch.int8 or packed.shape[1] != (in_features + 1) // 2:
        raise InvalidInputError(f"expected int8 (out, {(in_features + 1) // 2}) packed int4 values, got "
                                f"{tuple(packed.shape)} {packed.dtype}")
    b = packed.to(torch.int16) & 0xFF
    nibbles = torch.stack([b & 0xF, b >> 4], dim=2).reshape(packed.shape[0], -1)[:, :in_features]
    return torch.where(nibbles > 7, nibbles - 16, nibbles).to(torch.int8)
