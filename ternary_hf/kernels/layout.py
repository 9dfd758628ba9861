"""The kernel's weight layout: 16-column panels of 2-bit codes, converted once from the on-disk format.

Why a separate layout: the on-disk format (:mod:`ternary_hf.quant.packing`) is row-major 2-bit codes, good
for storage and interchange; the kernel wants 16-column panels in which one shift and one mask yield
the ``vpmaddubsw`` (AVX2), ``vpdpbusd`` (AVX-512 VNNI) or AMX tile operand directly. Same 2 bits per
weight, padded to multiples of 16; the on-disk format never changes.
"""

from __future__ import annotations

import torch

from ..quant.packing import unpack_ternary

__all__ = ["PANEL_COLS", "BLOCK_K", "BLOCK_BYTES", "prepared_shape", "prepare_weight", "prepared_to_ternary",
           "check_prepared"]

#: Columns per weight panel and k values per block of the kernel layout (must match common.h).
PANEL_COLS = 16
BLOCK_K = 16
BLOCK_BYTES = PANEL_COLS * BLOCK_K // 4


def prepared_shape(in_features: int, out_features: int) -> tuple[int, int, int]:
    """Shape of the prepared ``uint8`` weight of an ``(out_features, in_features)`` layer."""
    return -(-out_features // PANEL_COLS), -(-in_features // BLOCK_K), BLOCK_BYTES


def prepare_weight(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Convert on-disk packed weights to the kernel's panel layout (done once, at load time).

    Args:
        packed: ``uint8`` ``(out_features, ceil(in_features / 4))`` in the layout of
            :mod:`ternary_hf.quant.packing`.
        in_features: unpadded input width.

    Returns:
        A contiguous CPU ``uint8`` tensor of shape ``(ceil(N/16), ceil(K/16), 64)``: byte
        ``(p, kb, 32*v + 4*j + i)`` holds at bits ``2*s`` the code of output ``16p + 8v + j`` and input
        ``16kb + 4s + i``; padding holds the code of zero. Still 2 bits per weight.

    Raises:
        ValueError: on a wrong dtype/shape or a corrupt code (from :func:`unpack_ternary`).
    """
    ternary = unpack_ternary(packed.detach().cpu(), in_features, torch.int8)
    out_features = ternary.shape[0]
    n_pan, n_kb, _ = prepared_shape(in_features, out_features)
    codes = torch.ones((n_pan * PANEL_COLS, n_kb * BLOCK_K), dtype=torch.uint8)
    codes[:out_features, :in_features] = (ternary + 1).to(torch.uint8)
    # n = 16p + 8v + j ; k = 16kb + 4s + i  ->  order (p, kb, v, j, i) with s packed into bits.
    codes = codes.view(n_pan, 2, 8, n_kb, 4, 4).permute(0, 3, 1, 2, 5, 4)
    out = codes[..., 0].clone()
    for s in range(1, 4):
        out |= codes[..., s] << (2 * s)
    return out.reshape(n_pan, n_kb, BLOCK_BYTES).contiguous()


def prepared_to_ternary(prepared: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    """Inverse of :func:`prepare_weight`: the ``(out_features, in_features)`` float32 ternary matrix."""
    n_pan, n_kb, _ = prepared.shape
    bytes_ = prepared.view(n_pan, n_kb, 2, 8, 4)
    codes = torch.stack([(bytes_ >> (2 * s)) & 3 for s in range(4)], dim=-1)  # (p, kb, v, j, i, s)
    codes = codes.permute(0, 2, 3, 1, 5, 4).reshape(n_pan * PANEL_COLS, n_kb * BLOCK_K)
    return codes[:out_features, :in_features].to(torch.float32) - 1.0


def check_prepared(prepared: torch.Tensor, in_features: int, out_features: int) -> None:
    """Raise ``ValueError`` (saying how to build the right one) unless ``prepared`` fits the layer."""
    expected = prepared_shape(in_features, out_features)
    if prepared.dtype != torch.uint8 or tuple(prepared.shape) != expected:
        raise ValueError(
            f"prepared weight has dtype {prepared.dtype} and shape {tuple(prepared.shape)}, expected uint8 "
            f"{expected} for in_features={in_features}, out_features={out_features}; build it with "
            f"ternary_hf.kernels.prepare_weight(packed, in_features)"
        )
