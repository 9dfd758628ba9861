"""The fast CPU encoder forward: padding-free packed batches, fused ops, op dispatch.

What this package owns: running a whole ternary encoder (BERT, RoBERTa, XLM-R, CamemBERT, MPNet,
ViT) faster than layer-by-layer PyTorch eager, and batch-invariantly (a sentence's embedding does not
depend on the batch it is encoded in). :func:`enable_fast_forward` replaces the encoder's ``forward``
with :class:`~ternary_hf.integrations.fast_forward.engine.FastEncoder`, which packs the real tokens of a batch into one
matrix (no padding work), runs query/key/value as one ternary GEMM, attention per (sequence, head) and
residual + LayerNorm as single fused ops, and falls back to the model's own forward for anything it
does not cover. The quantizer enables it when a ternary model loads; ``dequantize`` disables it.

Modules: :mod:`.plan` (which architectures, where their parts live), :mod:`.engine` (the forward and
its attachment), :mod:`.ops` (the fused ops, kernel or torch reference).

What it imports: the ternary modules (``TernaryLinear``) and the compiled kernel module of
:mod:`ternary_hf.kernels` (the GEMM, plus the fused ops of ``kernels/encoder_ops.cpp``), and
transformers' output classes. Nothing here is saved with a model.
"""

from __future__ import annotations

from .engine import ENV, FastEncoder, disable_fast_forward, enable_fast_forward, fast_forward_enabled
from .plan import LAYOUTS, build_plan

__all__ = [
    "ENV",
    "FastEncoder",
    "LAYOUTS",
    "build_plan",
    "disable_fast_forward",
    "enable_fast_forward",
    "fast_forward_enabled",
]
