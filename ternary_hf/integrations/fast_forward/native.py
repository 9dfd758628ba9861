"""The whole encoder as one kernel call (``encoder_forward`` in ``kernels/encoder_ops.cpp``).

Why: the Python loop of :mod:`.engine` calls one op at a time, and with two threads every op is an
OpenMP fork and join; on a shared machine each join waits whenever the other thread is descheduled.
The native call runs the same ops in the same order (identical results) and, for a batch of several
sequences, lets each thread encode whole chunks of sequences through every layer on its own, never
waiting for a thread that has not started (see ``encoder_forward`` for why). A batch too small to
split (one sentence) runs every op on all threads, which stay together for the whole forward
(``encode_team``) instead of forking and joining once per op.

It applies to the blocks that are plain: four GEMMs the kernel runs (ternary or int8 weights) with
int8 activations (GELU fused into the up-projection, no other
activation) and affine LayerNorms. In a post-LN encoder the plain blocks
before the first other one (e.g. a last block kept in int8 or float) run here and the rest in the
Python loop; a pre-LN encoder runs here only when every block is plain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["NativeEncoder"]

#: Chunks per thread when a batch is split across threads (more: better balance, smaller GEMMs).
CHUNKS_PER_THREAD = 4


def _norm_ok(ln: nn.Module | None) -> bool:
    return (isinstance(ln, nn.LayerNorm) and ln.weight is not None and ln.bias is not None
            and ln.weight.dtype == torch.float32 and ln.bias.dtype == torch.float32)


def _step_ok(step: Any, gelu: bool, kernels: Any) -> bool:
    if not step.on_kernel(kernels):
        return False
    if gelu:
        act = getattr(*step.activation_at) if step.activation_at else None
        return step.modules[0].fused_activation == "gelu" and type(act).__name__ == "FusedIntoLinear"
    return step.activation_at is None and all(m.fused_activation is None for m in step.modules)


def _layer_ok(layer: Any, kernels: Any) -> bool:
    steps = (layer.qkv, layer.o, layer.up, layer.down)
    return (all(_step_ok(s, s is layer.up, kernels) for s in steps)
            and _norm_ok(layer.ln_attn) and _norm_ok(layer.ln_ffn))


class NativeEncoder:
    """``encoder_forward``'s argument lists for one model (rebuilt with the engine's layers)."""

    def __init__(self, gemms: list[torch.Tensor], dims: list[int], norms: list[torch.Tensor], eps: list[float],
                 pre_norm: bool, final_norm: list[torch.Tensor], final_eps: float) -> None:
        self.gemms, self.dims, self.norms, self.eps = gemms, dims, norms, eps
        self.pre_norm, self.final_norm, self.final_eps = pre_norm, final_norm, final_eps
        #: how many of the model's blocks (the first ones) this runs; the engine's loop runs the rest
        self.n_layers = len(eps) // 2

    @classmethod
    def build(cls, layers: list[Any], plan: Any, kernels: Any) -> NativeEncoder | None:
        """The lists for the plain blocks at the start of ``layers`` (the engine's), or None when none
        qualifies (see the module docstring)."""
        pre_norm = plan.layout.pre_norm
        if pre_norm and plan.final_norm is not None and not _norm_ok(plan.final_norm):
            return None
        plain = 0
        while plain < len(layers) and _layer_ok(layers[plain], kernels):
            plain += 1
        if plain == 0 or pre_norm and plain < len(layers):
            return None
        gemms: list[torch.Tensor] = []
        dims: list[int] = []
        norms: list[torch.Tensor] = []
        eps: list[float] = []
        empty = torch.empty(0)
        for layer in layers[:plain]:
            steps = (layer.qkv, layer.o, layer.up, layer.down)
            for step in steps:
                if step.prepared is None:
                    step._prepare(kernels)  # noqa: SLF001
                gemms += [step.prepared, step.scale, step.bias if step.bias is not None else empty]
                dims += [step.k, step.n]
            for ln in (layer.ln_attn, layer.ln_ffn):
                norms += [ln.weight.detach(), ln.bias.detach()]
                eps.append(float(ln.eps))
        final = plan.final_norm if pre_norm else None
        final_norm = [final.weight.detach(), final.bias.detach()] if final is not None else []
        return cls(gemms, dims, norms, eps, pre_norm, final_norm, float(final.eps) if final is not None else 0.0)

    def __call__(self, module: Any, x: torch.Tensor, cu_seqlens: torch.Tensor, heads: int, scale: float,
                 rel: torch.Tensor | None, center: int) -> torch.Tensor:
        threads = torch.get_num_threads()
        n_seq = cu_seqlens.numel() - 1
        split = threads > 1 and n_seq >= 2 * threads
        chunks = min(n_seq, CHUNKS_PER_THREAD * threads) if split else 1
        return module.encoder_forward(x, cu_seqlens, self.gemms, self.dims, self.norms, self.eps, self.pre_norm,
                                      self.final_norm, self.final_eps, heads, scale, rel, center, chunks)
