"""The on-disk 2-bit layout of ternary weights: the one place that defines it.

Layout (version 1, written into ``quantization_config.packing_format``):

* A ternary matrix ``T`` of shape ``(out_features, in_features)`` with values in ``{-1, 0, +1}`` is
  stored as a ``uint8`` tensor of shape ``(out_features, ceil(in_features / 4))``, row-major, one
  output row after another (the same orientation as ``nn.Linear.weight``).
* Each value becomes a 2-bit code ``c = t + 1``: ``-1 -> 0b00``, ``0 -> 0b01``, ``+1 -> 0b10``. The code
  ``0b11`` is never written; reading it means the file is corrupt.
* Four consecutive values of one row share a byte, the first in the lowest bits: value ``k`` of a row
  lives in byte ``k // 4`` at bit offset ``2 * (k % 4)``. Byte order is therefore irrelevant (one
  value group per byte) and the layout is the same on every machine.
* When ``in_features % 4 != 0`` the last byte of each row is padded with the code of ``0`` (``0b01``),
  so a padded value decodes to zero and contributes nothing to a dot product.

Why ``t + 1`` and not sign/magnitude bits: the unsigned codes ``{0, 1, 2}`` are exactly the operand
an integer kernel feeds to an unsigned-by-signed multiply (``x . (c - 1) = x . c - sum(x)``), so the
CPU kernel decodes them with one shift and one mask.

All functions are pure: they never modify their arguments and return new tensors.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError

__all__ = [
    "PACKING_FORMAT",
    "VALUES_PER_BYTE",
    "ZERO_BYTE",
    "has_invalid_codes",
    "packed_shape",
    "pack_ternary",
    "unpack_ternary",
]

#: Identifier of the layout above, stored in the config so a future layout can be told apart.
PACKING_FORMAT = "ternary-2bit-rowmajor-v1"
VALUES_PER_BYTE = 4
_ZERO_CODE = 1
_SHIFTS = (0, 2, 4, 6)
#: A byte of four zeros (``0b01010101``): what an all-zero row packs to.
ZERO_BYTE = sum(_ZERO_CODE << s for s in _SHIFTS)


def packed_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """Shape of the ``uint8`` tensor that stores an ``(out_features, in_features)`` ternary matrix."""
    if out_features < 0 or in_features < 0:
        raise InvalidInputError(f"shape must be non-negative, got ({out_features}, {in_features})")
    return out_features, (in_features + VALUES_PER_BYTE - 1) // VALUES_PER_BYTE


def pack_ternary(ternary: torch.Tensor) -> torch.Tensor:
    """Pack a 2-D tensor of ``{-1, 0, +1}`` values into the 2-bit layout described in this module.

    Args:
        ternary: integer or floating tensor of shape ``(out_features, in_features)`` whose values are
            exactly -1, 0 or +1.

    Returns:
        ``uint8`` tensor of shape ``packed_shape(out_features, in_features)`` on the input's device.

    Raises:
        ValueError: if the tensor is not 2-D or holds a value other than -1, 0, +1.
    """
    if ternary.dim() != 2:
        raise InvalidInputError(
            f"pack_ternary expects a 2-D (out_features, in_features) tensor, got {tuple(ternary.shape)}"
        )
    if ternary.is_floating_point() and not bool(torch.isfinite(ternary).all()):
        raise InvalidInputError("pack_ternary got NaN or inf; only -1, 0 and +1 can be packed")
    if ternary.numel() and not bool(((ternary == -1) | (ternary == 0) | (ternary == 1)).all()):
        bad = ternary[(ternary != -1) & (ternary != 0) & (ternary != 1)][:5].tolist()
        raise InvalidInputError(f"pack_ternary got values other than -1, 0, +1 (e.g. {bad})")
    out_features, in_features = ternary.shape
    _, n_bytes = packed_shape(out_features, in_features)
    codes = torch.full(
        (out_features, n_bytes * VALUES_PER_BYTE), _ZERO_CODE, dtype=torch.uint8, device=ternary.device
    )
    codes[:, :in_features] = (ternary.to(torch.int16) + 1).to(torch.uint8)
    codes = codes.view(out_features, n_bytes, VALUES_PER_BYTE)
    packed = codes[..., 0].clone()
    for k in range(1, VALUES_PER_BYTE):
        packed |= codes[..., k] << _SHIFTS[k]
    return packed


def has_invalid_codes(packed: torch.Tensor) -> bool:
    """True if any 2-bit field of ``packed`` (padding included) holds ``0b11``, the code never written.

    A cheap whole-tensor test for checking a checkpoint at load (no unpacking): a field is ``0b11``
    exactly when its high bit and its low bit are both set.
    """
    if packed.dtype != torch.uint8:
        raise InvalidInputError(f"packed ternary weights must be uint8, got {packed.dtype}")
    return bool(((packed & (packed >> 1)) & 0b01010101).any())


def unpack_ternary(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: decode to a ``(out_features, in_features)`` tensor of -1/0/+1.

    Args:
        packed: ``uint8`` tensor in the layout of this module.
        in_features: the unpadded number of columns (the packed tensor alone cannot tell it).
        dtype: dtype of the result (``int8`` by default; a float dtype gives a matrix ready for matmul).

    Raises:
        ValueError: on a wrong dtype or shape, or if a byte holds the never-written code ``0b11``
            (a corrupt or foreign checkpoint).
    """
    if packed.dtype != torch.uint8:
        raise InvalidInputError(f"packed ternary weights must be uint8, got {packed.dtype}")
    if packed.dim() != 2:
        raise InvalidInputError(f"packed ternary weights must be 2-D, got shape {tuple(packed.shape)}")
    out_features, n_bytes = packed.shape
    if packed_shape(out_features, in_features)[1] != n_bytes:
        raise InvalidInputError(
            f"packed weight has {n_bytes} bytes per row, but in_features={in_features} needs "
            f"{packed_shape(out_features, in_features)[1]}"
        )
    codes = torch.stack([(packed >> s) & 0b11 for s in _SHIFTS], dim=-1)
    codes = codes.reshape(out_features, n_bytes * VALUES_PER_BYTE)
    codes = codes[:, :in_features]
    if codes.numel() and bool((codes == 0b11).any()):
        raise InvalidInputError("packed ternary weights contain the invalid code 0b11: the checkpoint is corrupt")
    return (codes.to(torch.int8) - 1).to(dtype)
