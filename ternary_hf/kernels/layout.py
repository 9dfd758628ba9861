"""The kernel's weight layout: 16-column panels of 2-bit codes (or of int8 bytes), converted once at load.

Why a separate layout: the on-disk format (:mod:`ternary_hf.quant.packing`) is row-major 2-bit codes, good
for storage and interchange; the kernel wants 16-column panels in which one shift and one mask yield
the ``vpmaddubsw`` (AVX2), ``vpdpbusd`` (AVX-512 VNNI) or AMX tile operand directly. Same 2 bits per
weight, padded to multiples of 16; the on-disk format never changes.
"""

from __future__ import annotations

import torch

from ..quant.packing import unpack_ternary

__all__ = ["PANEL_COLS", "BLOCK_K", "BLOCK_BYTES", "INT8_BLOCK_BYTES", "INT8_ZERO", "INT4_ZERO", "prepared_shape",
           "prepare_weight", "prepared_to_ternary", "prepare_int8_weight", "prepare_int4_weight", "prepared_to_int8",
           "is_int8_prepared", "check_prepared"]

#: Columns per weight panel and k values per block of the kernel layout (must match common.h).
PANEL_COLS = 16
BLOCK_K = 16
BLOCK_BYTES = PANEL_COLS * BLOCK_K // 4
#: Int8 weights (``TernaryConfig.int8_modules``): one byte per weight, ``w + INT8_ZERO`` (common.h).
INT8_BLOCK_BYTES = PANEL_COLS * BLOCK_K
INT8_ZERO = 128
#: Int4 weights (``TernaryConfig.int4_modules``): the same layout holding ``w + INT4_ZERO`` in an ``int8``
#: tensor (the dtype tells the kernel the codes are small; common.h)
INT4_ZERO = 8


def prepared_shape(in_features: int, out_features: int, int8: bool = False) -> tuple[int, int, int]:
    """Shape of the prepared ``uint8`` weight of an ``(out_features, in_features)`` layer (ternary, or
    ``int8`` weights)."""
    return -(-out_features // PANEL_COLS), -(-in_features // BLOCK_K), INT8_BLOCK_BYTES if int8 else BLOCK_BYTES


def is_int8_prepared(prepared: torch.Tensor) -> bool:
    """Whether a prepared weight holds int8 or int4 weights (:func:`prepare_int8_weight`,
    :func:`prepare_int4_weight`) rather than ternary codes."""
    return prepared.dim() == 3 and prepared.shape[2] == INT8_BLOCK_BYTES


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


def prepare_int4_weight(values: torch.Tensor) -> torch.Tensor:
    """Int4 weights ``(out_features, in_features)`` (int8 values in ``[-7, 7]``) -> the layout of
    :func:`prepare_int8_weight` holding ``w + 8`` in an ``int8`` tensor (the kernel's AVX2 build multiplies
    such small codes with its ternary tile; the others as int8 weights).

    Raises:
        ValueError: unless ``values`` is a 2-D int8 tensor within ``[-7, 7]``.
    """
    if values.dtype != torch.int8 or values.dim() != 2:
        raise ValueError(f"int4 weights must be a 2-D int8 tensor, got {values.dtype} {tuple(values.shape)}")
    if values.numel() and int(values.detach().abs().max()) > 7:
        raise ValueError("int4 weights must lie in [-7, 7]")
    return _byte_panels(values, INT4_ZERO).view(torch.int8)


def prepare_int8_weight(values: torch.Tensor) -> torch.Tensor:
    """Int8 weights ``(out_features, in_features)`` -> the kernel's int8 panel layout (once, at load).

    Returns:
        A contiguous CPU ``uint8`` tensor of shape ``(ceil(N/16), ceil(K/16), 256)``: byte
        ``(p, kb, 64*s + 32*v + 4*j + i)`` holds ``w + 128`` for output ``16p + 8v + j`` and input
        ``16kb + 4s + i`` (the ternary codes' layout once decoded to bytes, which the VNNI and AMX
        builds multiply as they are); padding holds the code of 0.

    Raises:
        ValueError: unless ``values`` is a 2-D int8 tensor with no -128 (the int8 rule's range is
            [-127, 127]).
    """
    if values.dtype != torch.int8 or values.dim() != 2:
        raise ValueError(f"int8 weights must be a 2-D int8 tensor, got {values.dtype} {tuple(values.shape)}")
    if values.numel() and int(values.min()) == -128:
        raise ValueError("int8 weights hold -128, outside the int8 rule's range [-127, 127]")
    return _byte_panels(values, INT8_ZERO)


def _byte_panels(values: torch.Tensor, zero: int) -> torch.Tensor:
    values = values.detach().cpu()
    out_features, in_features = values.shape
    n_pan, n_kb, _ = prepared_shape(in_features, out_features, int8=True)
    codes = torch.full((n_pan * PANEL_COLS, n_kb * BLOCK_K), zero, dtype=torch.uint8)
    codes[:out_features, :in_features] = (values.to(torch.int16) + zero).to(torch.uint8)
    # n = 16p + 8v + j ; k = 16kb + 4s + i  ->  order (p, kb, s, v, j, i)
    codes = codes.view(n_pan, 2, 8, n_kb, 4, 4).permute(0, 3, 4, 1, 2, 5)
    return codes.reshape(n_pan, n_kb, INT8_BLOCK_BYTES).contiguous()


def prepared_to_int8(prepared: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    """Inverse of :func:`prepare_int8_weight` and :func:`prepare_int4_weight`: the ``(out_features,
    in_features)`` int8 matrix."""
    n_pan, n_kb, _ = prepared.shape
    zero = INT4_ZERO if prepared.dtype == torch.int8 else INT8_ZERO
    codes = prepared.view(torch.uint8).view(n_pan, n_kb, 4, 2, 8, 4).permute(0, 3, 4, 1, 2, 5)
    codes = codes.reshape(n_pan * PANEL_COLS, n_kb * BLOCK_K)[:out_features, :in_features]
    return (codes.to(torch.int16) - zero).to(torch.int8)


def check_prepared(prepared: torch.Tensor, in_features: int, out_features: int) -> None:
    """Raise ``ValueError`` (saying how to build the right one) unless ``prepared`` fits the layer."""
    expected = prepared_shape(in_features, out_features, int8=is_int8_prepared(prepared))
    dtypes = (torch.uint8, torch.int8) if is_int8_prepared(prepared) else (torch.uint8,)
    if prepared.dtype not in dtypes or tuple(prepared.shape) != expected:
        raise ValueError(
            f"prepared weight has dtype {prepared.dtype} and shape {tuple(prepared.shape)}, expected uint8 "
            f"{expected} for in_features={in_features}, out_features={out_features}; build it with "
            f"ternary_hf.kernels.prepare_weight(packed, in_features) (or prepare_int8_weight(values), "
            f"prepare_int4_weight(values))"
        )
