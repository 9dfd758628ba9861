"""Which encoders the fast forward runs, and where their parts live (one table row per layout).

An encoder qualifies when its class is one whose forward is exactly "embeddings, then N blocks of
(self-attention, residual, LayerNorm, feed-forward, residual, LayerNorm)" in post-LN (BERT, RoBERTa,
XLM-R, CamemBERT, MPNet) or pre-LN form (ViT), with no decoder, cross-attention or relative-key
position embeddings. Anything else returns ``None`` from :func:`build_plan` and keeps transformers'
own forward: a look-alike class with different semantics must never run through this path, hence a
list of classes rather than duck typing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["LAYOUTS", "EncoderPlan", "LayerPlan", "Layout", "block_names", "build_plan"]


@dataclass(frozen=True)
class Layout:
    """Dotted attribute paths of one encoder family (relative to the model, then to each block)."""

    classes: tuple[str, ...]
    blocks: str
    q: str
    k: str
    v: str
    o: str
    ln_attn: str  # post-LN: after the attention residual; pre-LN: before attention
    up: str
    act: str
    down: str
    ln_ffn: str   # post-LN: after the feed-forward residual; pre-LN: before the feed-forward block
    pre_norm: bool = False
    final_norm: str | None = None
    rel_bias: str | None = None  # MPNet: the relative-position bias embedding (buckets x heads)
    text: bool = True            # inputs are token ids + attention mask (else pixel values)


LAYOUTS: tuple[Layout, ...] = (
    Layout(("BertModel", "RobertaModel", "XLMRobertaModel", "CamembertModel"), "encoder.layer",
           "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "attention.output.LayerNorm", "intermediate.dense", "intermediate.intermediate_act_fn",
           "output.dense", "output.LayerNorm"),
    Layout(("MPNetModel",), "encoder.layer", "attention.attn.q", "attention.attn.k", "attention.attn.v",
           "attention.attn.o", "attention.LayerNorm", "intermediate.dense", "intermediate.intermediate_act_fn",
           "output.dense", "output.LayerNorm", rel_bias="encoder.relative_attention_bias"),
    Layout(("ViTModel",), "layers", "attention.q_proj", "attention.k_proj", "attention.v_proj",
           "attention.o_proj", "layernorm_before", "mlp.fc1", "mlp.activation_fn", "mlp.fc2", "layernorm_after",
           pre_norm=True, final_norm="layernorm", text=False),
)


@dataclass
class LayerPlan:
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    ln_attn: nn.LayerNorm
    up: nn.Module
    act: nn.Module
    down: nn.Module
    ln_ffn: nn.LayerNorm
    act_at: tuple[nn.Module, str] | None = None  # (owner, attribute) of the activation: looked up per call


@dataclass
class EncoderPlan:
    layout: Layout
    heads: int
    scale: float
    embeddings: nn.Module
    layers: list[LayerPlan]
    final_norm: nn.LayerNorm | None
    pooler: nn.Module | None
    rel_bias: nn.Module | None  # an embedding (float or QuantizedEmbedding): bucket -> per-head bias
    rel_buckets: int = 32
    extras: dict = field(default_factory=dict)


def _get(root: nn.Module, path: str) -> nn.Module | None:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _config_problem(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    if config is None:
        return "no config"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder or cross-attention model"
    if getattr(config, "position_embedding_type", "absolute") not in ("absolute", None):
        return f"position_embedding_type={config.position_embedding_type!r}"
    return None


def build_plan(model: nn.Module) -> tuple[EncoderPlan | None, str]:
    """The plan for ``model`` (a transformers base model), or ``(None, why not)``."""
    name = type(model).__name__
    layout = next((lay for lay in LAYOUTS if name in lay.classes), None)
    if layout is None:
        return None, f"{name} is not one of the supported encoders"
    problem = _config_problem(model)
    if problem is not None:
        return None, f"{name}: {problem}"
    blocks = _get(model, layout.blocks)
    embeddings = _get(model, "embeddings")
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0 or embeddings is None:
        return None, f"{name} has no {layout.blocks} / embeddings"
    layers = []
    for block in blocks:
        parts = {f: _get(block, getattr(layout, f)) for f in LayerPlan.__dataclass_fields__ if f != "act_at"}
        missing = [f for f, m in parts.items() if m is None]
        if missing:
            return None, f"{name}: a block lacks {', '.join(missing)}"
        if not (isinstance(parts["ln_attn"], nn.LayerNorm) and isinstance(parts["ln_ffn"], nn.LayerNorm)):
            return None, f"{name}: a block's norms are not nn.LayerNorm"
        owner, _, attr = layout.act.rpartition(".")
        layers.append(LayerPlan(**parts, act_at=(_get(block, owner) if owner else block, attr)))
    config = model.config
    heads = int(config.num_attention_heads)
    hidden = layers[0].ln_attn.normalized_shape[0]
    if hidden % heads:
        return None, f"{name}: hidden size {hidden} is not a multiple of {heads} heads"
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    if head_dim * heads != hidden:
        return None, f"{name}: head_dim {head_dim} x {heads} heads != hidden size {hidden}"
    final_norm = _get(model, layout.final_norm) if layout.final_norm else None
    rel_bias = _get(model, layout.rel_bias) if layout.rel_bias else None
    if layout.rel_bias and not isinstance(rel_bias, nn.Module):  # nn.Embedding or a QuantizedEmbedding
        return None, f"{name}: no relative attention bias at {layout.rel_bias}"
    plan = EncoderPlan(
        layout=layout, heads=heads, scale=1.0 / math.sqrt(head_dim), embeddings=embeddings, layers=layers,
        final_norm=final_norm, pooler=getattr(model, "pooler", None), rel_bias=rel_bias,
        rel_buckets=int(getattr(config, "relative_attention_num_buckets", 32)),
    )
    return plan, "ok"


def block_names(model: nn.Module) -> list[str] | None:
    """Qualified names of the encoder blocks of ``model`` (a transformers base model of a supported
    layout), first to last; None for any other model."""
    layout = next((lay for lay in LAYOUTS if type(model).__name__ in lay.classes), None)
    blocks = _get(model, layout.blocks) if layout is not None else None
    if not isinstance(blocks, nn.ModuleList):
        return None
    return [f"{layout.blocks}.{i}" for i in range(len(blocks))]


def relative_bias_table(plan: EncoderPlan, max_len: int, bucket_fn) -> torch.Tensor:
    """MPNet's relative-position bias as ``(heads, 2 * max_len - 1)``: column ``max_len - 1 + j - i``
    holds the bias of query ``i`` and key ``j`` (it depends on ``j - i`` only, so one table serves
    every sequence up to ``max_len`` tokens)."""
    offsets = torch.arange(-(max_len - 1), max_len)
    buckets = bucket_fn(offsets, num_buckets=plan.rel_buckets)
    return plan.rel_bias(buckets).float().t().contiguous()
