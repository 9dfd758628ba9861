"""Pure row-wise quantization of embedding tables (the other half of a small checkpoint).

In a small encoder the token-embedding table is about as large as all the linear layers together, so
ternary linear layers alone leave most of the checkpoint's bytes in float (sizes per storage are in
docs/format.md). Embedding rows are only gathered, never multiplied as a matrix, so they are stored apart:

* ``"fp16"`` -- half precision, no scale.
* ``"int8"`` -- symmetric per row: ``q = round(w / s)`` in ``[-127, 127]``, ``s = max|row| / 127``.
* ``"int4"`` -- symmetric per group of ``group_size`` columns (:data:`INT4_GROUP_SIZES`), ``q`` in
  ``[-7, 7]``, stored two per byte (value ``2j`` in the low nibble, ``2j+1`` in the high nibble, as
  ``q + 8``); a row whose width is not a multiple of the group size is zero-padded. Finer groups than
  int8 because 15 levels over a whole row would let one outlier flatten the rest. A row narrower than
  the group is one group of its own width (rounded up to even), not padded to the full group. The stored
  shapes imply the group size (twice the bytes per row over the scales per row), so reading needs no
  setting.

Scales are stored in float16 (the quantization uses the rounded scale, so dequantization is exact to
what was quantized). Functions are pure and reject NaN / inf.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError

__all__ = [
    "EMBEDDING_STORAGES",
    "INT4_GROUP_SIZE",
    "INT4_GROUP_SIZES",
    "int4_group_size",
    "dequantize_rows",
    "gather_int4_rows",
    "quantize_rows",
    "storage_shapes",
]

EMBEDDING_STORAGES = ("fp16", "int8", "int4")
#: The int4 group size of ``TernaryConfig`` (fp16 scales cost 16 / group_size bits per value on top of
#: the 4-bit codes); checkpoints written before ``embedding_group_size`` existed use 32.
INT4_GROUP_SIZE = 64
INT4_GROUP_SIZES = (16, 32, 64, 128)
_SCALE_DTYPE = torch.float16


def _group(dim: int, group_size: int) -> int:
    """The columns per scale of a ``dim``-wide int4 table: ``group_size``, or the row itself (rounded up to
    an even width) when it is narrower."""
    if group_size not in INT4_GROUP_SIZES:
        raise InvalidInputError(f"int4 group size {group_size!r} is not one of {INT4_GROUP_SIZES}")
    return min(group_size, max(2, dim + dim % 2))


def int4_group_size(weight: torch.Tensor, scale: torch.Tensor) -> int:
    """The group size stored int4 ``weight`` / ``weight_scale`` were written with (from their shapes)."""
    groups, row_bytes = scale.shape[-1], weight.shape[-1]
    if groups < 1 or (2 * row_bytes) % groups:
        raise InvalidInputError(
            f"int4 embedding of {row_bytes} bytes per row does not fit {groups} scales per row "
            "(each group of columns has one scale and two codes per byte)"
        )
    return 2 * row_bytes // groups


def storage_shapes(rows: int, dim: int, storage: str,
                   group_size: int = INT4_GROUP_SIZE) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of the stored tensors (``weight`` and, except fp16, ``weight_scale``)."""
    if storage == "fp16":
        return {"weight": ((rows, dim), torch.float16)}
    if storage == "int8":
        return {"weight": ((rows, dim), torch.int8), "weight_scale": ((rows, 1), _SCALE_DTYPE)}
    if storage == "int4":
        group = _group(dim, group_size)
        groups = -(-dim // group)
        return {
            "weight": ((rows, groups * group // 2), torch.uint8),
            "weight_scale": ((rows, groups), _SCALE_DTYPE),
        }
    raise InvalidInputError(f"embedding storage {storage!r} is not one of {EMBEDDING_STORAGES}")


def _symmetric(groups: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    amax = groups.abs().amax(dim=-1, keepdim=True)
    scale = (amax / qmax).to(_SCALE_DTYPE)
    safe = torch.where(scale > 0, scale.to(torch.float32), torch.ones_like(amax))
    q = torch.round(groups / safe).clamp(-qmax, qmax)
    return q, scale


def quantize_rows(weight: torch.Tensor, storage: str, group_size: int = INT4_GROUP_SIZE) -> dict[str, torch.Tensor]:
    """Quantize a ``(rows, dim)`` table; returns ``{"weight": ..., "weight_scale": ...}`` per :func:`storage_shapes`
    (``group_size``: columns per int4 scale)."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise InvalidInputError(f"expected a 2-D float embedding table, got {tuple(weight.shape)} {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        raise InvalidInputError("embedding table contains NaN or inf; refusing to quantize")
    w = weight.detach().to(torch.float32)
    rows, dim = w.shape
    if storage == "fp16":
        if w.numel() and float(w.abs().max()) > torch.finfo(torch.float16).max:
            raise InvalidInputError("embedding values exceed the float16 range; use embedding_storage='int8'")
        return {"weight": w.to(torch.float16)}
    if storage == "int8":
        q, scale = _symmetric(w, 127)
        return {"weight": q.to(torch.int8), "weight_scale": scale}
    if storage == "int4":
        group = _group(dim, group_size)
        groups = -(-dim // group)
        padded = torch.zeros(rows, groups * group, dtype=torch.float32, device=w.device)
        padded[:, :dim] = w
        q, scale = _symmetric(padded.view(rows, groups, group), 7)
        codes = (q.view(rows, -1) + 8).to(torch.uint8)
        packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
        return {"weight": packed, "weight_scale": scale.view(rows, groups)}
    raise InvalidInputError(f"embedding storage {storage!r} is not one of {EMBEDDING_STORAGES}")


def dequantize_rows(
    stored: dict[str, torch.Tensor], storage: str, dim: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`quantize_rows` for any subset of rows (e.g. the rows gathered for a batch)."""
    weight = stored["weight"]
    if storage == "fp16":
        return weight.to(dtype)
    scale = stored["weight_scale"].to(torch.float32)
    if storage == "int8":
        return (weight.to(torch.float32) * scale).to(dtype)
    if storage == "int4":
        lead = weight.shape[:-1]
        low = (weight & 0x0F).to(torch.int16) - 8
        high = (weight >> 4).to(torch.int16) - 8
        group = int4_group_size(weight, scale)
        q = torch.stack([low, high], dim=-1).reshape(*lead, -1, group).to(torch.float32)
        return (q * scale.unsqueeze(-1)).reshape(*lead, -1)[..., :dim].to(dtype)
    raise InvalidInputError(f"embedding storage {storage!r} is not one of {EMBEDDING_STORAGES}")


_NIBBLE_TABLES: dict[torch.device, torch.Tensor] = {}


def _nibble_table(device: torch.device) -> torch.Tensor:
    """``(256, 2)`` float32: byte ``b`` -> ``(low nibble - 8, high nibble - 8)``."""
    table = _NIBBLE_TABLES.get(device)
    if table is None:
        codes = torch.arange(256, dtype=torch.int32, device=device)
        table = torch.stack([(codes & 0x0F) - 8, (codes >> 4) - 8], dim=-1).to(torch.float32)
        _NIBBLE_TABLES[device] = table
    return table


def gather_int4_rows(weight: torch.Tensor, scale: torch.Tensor, index: torch.Tensor, dim: int,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``dequantize_rows`` of the int4 rows at ``index`` (any shape), by a byte -> two-values table.

    The same values as unpacking the nibbles one op at a time (the codes are exact in float32 and
    each is multiplied by its group's scale once either way), in half the ops: at the few dozen rows of
    a single sentence, per-op overhead is the cost, so this is the path for small lookups.
    """
    flat = index.reshape(-1)
    codes = torch.nn.functional.embedding(weight.index_select(0, flat).to(torch.int32), _nibble_table(weight.device))
    groups = scale.index_select(0, flat).to(torch.float32)
    group = int4_group_size(weight, scale)
    rows = (codes.view(flat.numel(), groups.shape[1], group) * groups.unsqueeze(-1)).view(flat.numel(), -1)
    return rows[:, :dim].to(dtype).reshape(*index.shape, dim)
