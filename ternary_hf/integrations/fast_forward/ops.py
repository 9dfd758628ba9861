"""The fused ops of the fast forward, each with its plain-torch reference.

The kernel versions live in ``ternary_hf/kernels/encoder_ops.cpp`` (compiled into the same module as
the ternary GEMM). The references define what the kernels compute; tests compare the two, and the
engine uses a reference only when a kernel module predates these ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["add_layernorm", "add_layernorm_reference", "varlen_attention", "varlen_attention_reference"]


def varlen_attention_reference(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, heads: int, scale: float,
    rel_bias: torch.Tensor | None = None, center: int = 0,
) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` for each packed sequence, with torch's SDPA per sequence.

    ``qkv`` is ``(tokens, 3 * hidden)`` (query | key | value); sequence ``b`` owns rows
    ``cu_seqlens[b]:cu_seqlens[b + 1]``. ``rel_bias`` is ``(heads, width)``: the bias of query ``i``
    and key ``j`` is ``rel_bias[:, center + j - i]``.
    """
    hidden = qkv.shape[1] // 3
    d = hidden // heads
    out = qkv.new_empty(qkv.shape[0], hidden)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        length = end - start
        if length == 0:
            continue
        q, k, v = (qkv[start:end, i * hidden:(i + 1) * hidden].reshape(length, heads, d).transpose(0, 1)
                   for i in range(3))
        mask = None
        if rel_bias is not None:
            offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None] + center
            mask = rel_bias[:, offsets]
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        out[start:end] = ctx.transpose(0, 1).reshape(length, hidden)
    return out


def add_layernorm_reference(
    y: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float,
    return_sum: bool = False,
) -> list[torch.Tensor]:
    """``[layer_norm(y + residual)]``, plus ``y + residual`` itself when ``return_sum``."""
    s = y if residual is None else y + residual
    out = F.layer_norm(s, (s.shape[-1],), weight, bias, eps)
    return [out, s] if return_sum else [out]


def varlen_attention(module, qkv, cu_seqlens, heads, scale, rel_bias=None, center=0):
    """Kernel attention when ``module`` (the compiled kernel module) has it, else the reference."""
    if module is not None:
        return module.varlen_attention(qkv, cu_seqlens, heads, scale, rel_bias, center)
    return varlen_attention_reference(qkv, cu_seqlens, heads, scale, rel_bias, center)


def add_layernorm(module, y, residual, weight, bias, eps, return_sum=False):
    if module is not None:
        return module.add_layernorm(y, residual, weight, bias, eps, return_sum)
    return add_layernorm_reference(y, residual, weight, bias, eps, return_sum)
