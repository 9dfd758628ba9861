"""The padding-free encoder forward, and how it is attached to (and detached from) a model.

Why padding-free: an encoder computes every padding token of a batch like a real one, and the
attention mask that keeps padding out of the softmax changes a real token's hidden state by float
rounding (~5e-7), which int8 activation rounding then amplifies layer by layer (issue 27 item 11:
cosine 0.998 between a sentence encoded alone and inside a batch). Here the real tokens of all
sequences are packed into one ``(tokens, hidden)`` matrix: every row-wise step (the ternary GEMMs,
LayerNorm, GELU) sees exactly the rows it would see for the sequence alone, and attention runs per
(sequence, head). A sentence's hidden states are then bit-identical whatever batch it is in, and no
time goes to padding.

What runs where: the ternary linear layers through the CPU kernel (query, key and value as ONE GEMM
over their concatenated weights, so the activations are quantized once), attention and residual +
LayerNorm through the fused ops of ``kernels/encoder_ops.cpp``, the embeddings and the first-token pooler of
the known text encoders on the packed tokens by :mod:`.embeddings` (other embeddings and poolers
through the model's own modules). Whatever the engine does not handle (training mode, gradients,
``inputs_embeds``, attention outputs, hidden states of every layer, a mask that is not one run of
ones per row, non-CPU tensors, non-float32 models, ``TERNARY_HF_FAST_FORWARD=0``) calls the model's
original forward, unchanged.
"""

from __future__ import annotations

import inspect
import logging
import operator
import os
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ...quant.functional import apply_activation
from ...quant.int8 import int8_linear
from ..int8_linear import Int8Linear
from ..modules import TernaryLinear
from . import ops
from .embeddings import first_token_pooler, text_embedder
from .native import NativeEncoder
from .plan import EncoderPlan, build_plan, relative_bias_table

__all__ = ["FastEncoder", "enable_fast_forward", "disable_fast_forward", "fast_forward_enabled", "ENV"]

logger = logging.getLogger(__name__)

#: ``TERNARY_HF_FAST_FORWARD=0`` makes every call take the model's original forward (for comparisons).
ENV = "TERNARY_HF_FAST_FORWARD"
_ATTR = "_ternary_fast_forward"
#: Keyword arguments the engine understands; any other one that is not None/False sends the call to
#: the original forward.
_HANDLED = {"input_ids", "attention_mask", "token_type_ids", "pixel_values", "interpolate_pos_encoding",
            "return_dict", "output_attentions", "output_hidden_states", "use_cache"}


def _kernel_module():
    """The compiled kernel module when it runs here and has the encoder ops, else None (then every
    step takes its torch reference, as ``TernaryLinear`` does). Checked on every call, like the
    ``TERNARY_HF_DISABLE_KERNEL`` switch it honours."""
    from ...kernels import kernel_module

    module = kernel_module()
    return module if module is not None and hasattr(module, "varlen_attention") else None


class _Linear:
    """One GEMM of the plan: ``modules`` side by side (outputs concatenated), then the activation.

    Ternary layers with int8 activations run as one kernel call over their concatenated panels
    (possible when every part but the last has a multiple of 16 outputs, the panel width). Int8 and int4
    layers (``int8_modules``, ``int4_modules``) run as one kernel call over their concatenated int8 weights (without the
    kernel: one ``torch._int_mm`` product). Anything else (a
    float ``nn.Linear`` kept by ``modules_to_not_convert``, no kernel) calls the modules.
    The activation is looked up on every call (``activation_at``: owner module and attribute), as is
    the layer's ``fused_activation``: ``fuse_activations`` / ``unfuse_activations`` may swap them.
    """

    def __init__(self, modules: list[nn.Module], activation_at: tuple[nn.Module, str] | None = None) -> None:
        self.modules = modules
        self.activation_at = activation_at
        ternary = all(isinstance(m, TernaryLinear) and m.quantize_activations for m in modules)
        same_k = len({m.in_features for m in modules}) == 1
        aligned = all(m.out_features % 16 == 0 for m in modules[:-1])
        self.fusable = ternary and same_k and aligned
        self.int8 = same_k and all(isinstance(m, Int8Linear) and m.quantize_activations for m in modules)
        self.sources = [t for m in modules for t in (m.weight, getattr(m, "weight_scale", None), m.bias)
                        if t is not None]
        self.prepared: torch.Tensor | None = None  # built on the first kernel call
        self._int8_values: torch.Tensor | None = None  # the int8 layers' concatenated weights (torch path)

    def on_kernel(self, kernels: Any) -> bool:
        """Whether this GEMM runs as one kernel call (``kernels``: the kernel API module, or None)."""
        return kernels is not None and (self.fusable or self.int8 and kernels.int8_weights_available())

    def _concat_scale_and_bias(self) -> None:
        modules = self.modules
        self.k = modules[0].in_features
        self.n = sum(m.out_features for m in modules)
        with torch.no_grad():
            self.scale = torch.cat([m.weight_scale.float().expand(m.out_features) if m.weight_scale.numel() == 1
                                    else m.weight_scale.float() for m in modules]).contiguous()
            has_bias = any(m.bias is not None for m in modules)
            self.bias = torch.cat([m.bias.float() if m.bias is not None else torch.zeros(m.out_features)
                                   for m in modules]).contiguous() if has_bias else None

    def _prepare(self, kernels: Any) -> None:
        """The kernel's panels of this GEMM, held once: a single layer's are its own (shared with
        ``kernel_weight``), several layers' are concatenated from copies neither the layers nor this
        object keep (the int8 values and the layers' panels would otherwise stay beside the result)."""
        self._concat_scale_and_bias()
        with torch.no_grad():
            if len(self.modules) == 1:
                self.prepared = self.modules[0].kernel_weight(kernels)
            elif self.int8:  # the parts' own layout where they share one (int4 codes), else int8 bytes
                kinds = {m.KERNEL_PREPARE for m in self.modules}
                prepare = kinds.pop() if len(kinds) == 1 else Int8Linear.KERNEL_PREPARE
                self.prepared = getattr(kernels, prepare)(self._concat_int8_values())
            else:
                self.prepared = torch.cat([m.kernel_weight(kernels, keep=False) for m in self.modules]).contiguous()

    def _concat_int8_values(self) -> torch.Tensor:
        """The layers' int8 values side by side, none of them kept by its layer (the caller keeps what it needs)."""
        if len(self.modules) == 1:
            return self.modules[0].int8_values(keep=False)
        return torch.cat([m.int8_values(keep=False) for m in self.modules]).contiguous()

    def int8_values(self) -> torch.Tensor:
        """The int8 layers' concatenated weights for the torch path, kept (it multiplies them on every call)."""
        if self._int8_values is None:
            self._concat_scale_and_bias()
            self._int8_values = self._concat_int8_values()
        return self._int8_values

    def __call__(self, x: torch.Tensor, kernels: Any) -> torch.Tensor:
        # getattr with a default: a layer kept in float (modules_to_not_convert) is a plain nn.Linear
        act = getattr(self.modules[0], "fused_activation", None) if len(self.modules) == 1 else None
        if self.on_kernel(kernels):
            if self.prepared is None:
                self._prepare(kernels)
            y = kernels.ternary_linear_cpu(x, self.prepared, self.scale, self.bias, self.k, self.n, act)
        elif self.int8:
            y = apply_activation(int8_linear(x, self.int8_values(), self.scale, self.bias), act)
        elif len(self.modules) == 1:
            y = self.modules[0](x)
        else:
            y = torch.cat([m(x) for m in self.modules], dim=-1)
        if self.activation_at is None:
            return y
        activation = getattr(*self.activation_at)
        return y if type(activation).__name__ == "FusedIntoLinear" else activation(y)


class _Layer:
    def __init__(self, lp: Any) -> None:
        self.qkv = _Linear([lp.q, lp.k, lp.v])
        self.o = _Linear([lp.o])
        self.up = _Linear([lp.up], lp.act_at)
        self.down = _Linear([lp.down])
        self.ln_attn, self.ln_ffn = lp.ln_attn, lp.ln_ffn


_data_ptr = torch.Tensor.data_ptr
_version = operator.attrgetter("_version")


def _stamps(tensors) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(storage addresses, versions) of ``tensors``: equal again only while none was replaced or written."""
    return tuple(map(_data_ptr, tensors)), tuple(map(_version, tensors))


def _ln_args(ln: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
    return ln.weight, ln.bias, float(ln.eps)


class FastEncoder:
    """A model's plan with kernel-ready weights; rebuilt when a stored tensor changes.

    ``use_native`` (default True): run every layer in one kernel call (:mod:`.native`) where it
    applies; False keeps the op-by-op loop below (same results; tests compare the two).
    """

    use_native = True

    def __init__(self, model: nn.Module, plan: EncoderPlan) -> None:
        self.model = model
        self.plan = plan
        self.signature = inspect.signature(type(model).forward)
        self._build(_kernel_module())

    def _build(self, km: Any) -> None:
        self.layers = [_Layer(lp) for lp in self.plan.layers]
        self._rel_cache: tuple[tuple, int, torch.Tensor] | None = None
        self.native: NativeEncoder | None | bool = True  # True: not built yet (needs the kernel)
        self.embedder = text_embedder(self.plan.embeddings) if self.plan.layout.text else None
        pooler = first_token_pooler(self.plan.pooler)
        self.pooler = _Linear([pooler[0]], pooler[1]) if pooler is not None else None
        steps = [step for layer in self.layers for step in (layer.qkv, layer.o, layer.up, layer.down)]
        self._sources = [t for step in steps + ([self.pooler] if self.pooler else []) for t in step.sources]
        self.key = self._key(km)

    def _key(self, km: Any) -> torch.Tensor | tuple:
        """(storage address, version) of every source tensor: one kernel call when the kernel runs, else
        map() over C-level getters (checked on every call, so it must stay a few microseconds)."""
        if km is not None:
            return km.tensor_stamps(self._sources)
        return _stamps(self._sources)

    def _weights_changed(self, km: Any) -> bool:
        key = self.key
        if isinstance(key, torch.Tensor):  # stamped by the kernel (a different kernel state: rebuild)
            return km is None or not km.stamps_match(self._sources, key)
        return km is not None or self._key(None) != key

    def _activations_changed(self) -> bool:
        """Whether fuse/unfuse_activations ran since the native lists were built (or found not to apply)."""
        return self._fused_state != self._activation_state()

    def _activation_state(self) -> tuple:
        # getattr with a default: a layer kept in float (modules_to_not_convert) is a plain nn.Linear
        return tuple((getattr(layer.up.modules[0], "fused_activation", None),
                      type(getattr(*layer.up.activation_at)).__name__)
                     for layer in self.layers if layer.up.activation_at is not None)

    def supports(self, kwargs: dict[str, Any]) -> bool:
        """Whether this call can take the fast path (see the module docstring for what cannot)."""
        if os.environ.get(ENV, "1") == "0" or self.model.training:
            return False
        for name, value in kwargs.items():
            if name not in _HANDLED and value is not None:
                return False
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states") or kwargs.get("use_cache"):
            return False
        main = kwargs.get("input_ids" if self.plan.layout.text else "pixel_values")
        if not isinstance(main, torch.Tensor) or main.device.type != "cpu":
            return False
        if self.plan.layout.text and (main.dim() != 2 or main.numel() == 0):
            return False
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.model.parameters()):
            return False
        return True

    def __call__(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        if args:
            kwargs = dict(self.signature.bind_partial(self.model, *args, **kwargs).arguments)
            kwargs.pop("self", None)
            kwargs.update(kwargs.pop("kwargs", {}))
        if not self.supports(kwargs):
            return None
        km = _kernel_module()
        if self._weights_changed(km) or self.native is not True and self._activations_changed():
            self._build(km)
        if self.plan.layout.text:
            out = self._text_forward(kwargs, km)
        else:
            out = self._vision_forward(kwargs, km)
        if out is None:
            return None
        hidden, pooled = out
        if kwargs.get("return_dict") is False:
            return (hidden,) if pooled is None else (hidden, pooled)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)

    # ------------------------------------------------------------------------------------------ inputs
    def _text_forward(self, kwargs: dict[str, Any], km: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        input_ids = kwargs["input_ids"]
        batch, length = input_ids.shape
        mask = kwargs.get("attention_mask")
        packed = _packing(mask, batch, length)
        if packed is None:
            return None
        index, cu_seqlens = packed
        token_types = kwargs.get("token_type_ids")
        if self.embedder is not None:
            x = self.embedder(input_ids, token_types, index, km)
        else:
            emb = self.plan.embeddings(input_ids=input_ids, **({} if token_types is None else
                                                               {"token_type_ids": token_types}))
            x = emb.reshape(batch * length, -1)
            x = x.contiguous() if index is None else x.index_select(0, index)
        if x.dtype != torch.float32:
            return None
        max_len = length if index is None else int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        y = self._encode(x, cu_seqlens, max_len, km)
        if index is None:
            hidden = y.view(batch, length, -1)
        else:
            hidden = y.new_zeros(batch * length, y.shape[1]).index_copy_(0, index, y).view(batch, length, -1)
        return hidden, self._pool(hidden, km)

    def _pool(self, hidden: torch.Tensor, km: Any) -> torch.Tensor | None:
        if self.pooler is not None:
            from ... import kernels as kernel_api

            return self.pooler(hidden[:, 0].contiguous(), kernel_api if km is not None else None)
        return self.plan.pooler(hidden) if self.plan.pooler is not None else None

    def _vision_forward(self, kwargs: dict[str, Any], km: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if kwargs.get("attention_mask") is not None:
            return None
        pixels = kwargs["pixel_values"]
        emb = self.plan.embeddings(pixels.to(torch.float32),
                                   interpolate_pos_encoding=bool(kwargs.get("interpolate_pos_encoding")))
        if emb.dtype != torch.float32:
            return None
        batch, length, hidden = emb.shape
        cu_seqlens = torch.arange(0, (batch + 1) * length, length, dtype=torch.int64)
        y = self._encode(emb.reshape(batch * length, hidden).contiguous(), cu_seqlens, length, km)
        out = y.view(batch, length, hidden)
        return out, (self.plan.pooler(out) if self.plan.pooler is not None else None)

    # ------------------------------------------------------------------------------------------ layers
    def _relative_bias(self, max_len: int) -> tuple[torch.Tensor, int]:
        """MPNet's relative-position bias table and its center column, covering ``max_len`` tokens.

        Kept between calls (building it is a handful of small ops, a visible share of a single short
        sentence's time) and rebuilt when the bias weights change or a longer sequence comes. A table
        built for more tokens serves shorter sequences unchanged: column ``center + j - i`` holds the
        same bias whatever the width (lengths are rounded up to a power of two to rebuild rarely).
        """
        module = self.plan.rel_bias  # nn.Embedding, or QuantizedEmbedding (codes and scales)
        key = _stamps((*module.parameters(recurse=False), *module.buffers(recurse=False)))
        cached = self._rel_cache
        if cached is None or cached[0] != key or cached[1] < max_len:
            length = 1 << max(5, (max_len - 1).bit_length())
            table = relative_bias_table(self.plan, length, self.model.encoder.relative_position_bucket)
            self._rel_cache = cached = (key, length, table)
        return cached[2], cached[1] - 1

    def _encode(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int, km: Any) -> torch.Tensor:
        """``km``: the kernel module (:func:`_kernel_module`), or None for the torch reference ops."""
        from ... import kernels as kernel_api

        plan = self.plan
        kernels = kernel_api if km is not None else None
        rel, center = self._relative_bias(max_len) if plan.rel_bias is not None else (None, 0)
        if km is not None and self.use_native:
            if self.native is True:
                self.native = NativeEncoder.build(self.layers, plan, kernels)
                self._fused_state = self._activation_state()
        layers = self.layers
        if km is not None and self.use_native and self.native is not None:
            x = self.native(km, x, cu_seqlens, plan.heads, plan.scale, rel, center)
            layers = layers[self.native.n_layers:]  # a post-LN model's blocks after the plain ones
            if not layers:
                return x
        if not plan.layout.pre_norm:
            for layer in layers:
                ctx = ops.varlen_attention(km, layer.qkv(x, kernels), cu_seqlens, plan.heads, plan.scale, rel, center)
                x = ops.add_layernorm(km, layer.o(ctx, kernels), x, *_ln_args(layer.ln_attn))[0]
                x = ops.add_layernorm(km, layer.down(layer.up(x, kernels), kernels), x, *_ln_args(layer.ln_ffn))[0]
            return x
        # pre-LN (ViT): r is the residual stream, h the normalised input of the next block
        r = x
        h = ops.add_layernorm(km, r, None, *_ln_args(self.layers[0].ln_attn))[0]
        for i, layer in enumerate(self.layers):
            ctx = ops.varlen_attention(km, layer.qkv(h, kernels), cu_seqlens, plan.heads, plan.scale, rel, center)
            h, r = ops.add_layernorm(km, layer.o(ctx, kernels), r, *_ln_args(layer.ln_ffn), return_sum=True)
            f = layer.down(layer.up(h, kernels), kernels)
            nxt = self.layers[i + 1].ln_attn if i + 1 < len(self.layers) else plan.final_norm
            if nxt is None:
                return f + r
            h, r = ops.add_layernorm(km, f, r, *_ln_args(nxt), return_sum=True)
        return h


def _packing(mask: torch.Tensor | None, batch: int, length: int) -> tuple[torch.Tensor | None, torch.Tensor] | None:
    """``(row index of every real token in the flattened batch or None when there is no padding,
    cu_seqlens)``, or None when a row's real tokens are not one run (or a row is empty)."""
    if mask is not None and mask.shape != (batch, length):
        return None
    if mask is None or bool(mask.all()):  # no padding (every batch of one): no run analysis below
        return None, torch.arange(0, (batch + 1) * length, length, dtype=torch.int64)
    m = mask.bool()
    lengths = m.sum(dim=1)
    cu_seqlens = torch.zeros(batch + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    if bool((lengths == length).all()):
        return None, cu_seqlens
    if bool((lengths == 0).any()):
        return None
    first = m.to(torch.int8).argmax(dim=1)
    pos = torch.arange(length)
    if not bool((m == ((pos >= first[:, None]) & (pos < (first + lengths)[:, None]))).all()):
        return None
    return m.reshape(-1).nonzero().squeeze(1), cu_seqlens


class _FastForward:
    """Stands in for ``model.forward``: the engine when it applies, else the class's own forward.

    A callable object rather than a closure so that ``copy.deepcopy(model)`` gives the copy its own
    engine over its own weights, and ``inspect.signature`` still reports the original signature.
    """

    def __init__(self, model: nn.Module, engine: FastEncoder) -> None:
        self.model = model
        self.engine = engine
        self.__signature__ = inspect.signature(type(model).forward.__get__(model))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.engine(args, kwargs)
        if out is None:
            return type(self.model).forward(self.model, *args, **kwargs)
        return out


def _base(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def enable_fast_forward(model: nn.Module) -> bool:
    """Route ``model``'s encoder (``model.base_model``) through the padding-free engine.

    Returns False (and leaves the model as it is) for an architecture the engine does not cover;
    idempotent. Undone by :func:`disable_fast_forward` (``dequantize`` calls it).
    """
    base = _base(model)
    if isinstance(base.__dict__.get("forward"), _FastForward):
        return True
    plan, why = build_plan(base)
    if plan is None:
        logger.info("ternary-hf: fast forward not used: %s", why)
        return False
    engine = FastEncoder(base, plan)
    base.__dict__[_ATTR] = engine
    base.__dict__["forward"] = _FastForward(base, engine)
    return True


def disable_fast_forward(model: nn.Module) -> bool:
    """Give ``model`` back its class's forward; returns whether the engine was attached."""
    base = _base(model)
    attached = isinstance(base.__dict__.get("forward"), _FastForward)
    if attached:
        del base.__dict__["forward"]
    base.__dict__.pop(_ATTR, None)
    return attached


def fast_forward_enabled(model: nn.Module) -> bool:
    return isinstance(_base(model).__dict__.get("forward"), _FastForward)
