"""Inference modules: ``TernaryLinear`` (replaces ``nn.Linear``) and ``QuantizedEmbedding``.

Both keep their stored tensor under the name ``weight`` (uint8 packed ternary codes, or int8/int4/fp16
rows), as buffers of a different shape than the float original: a ternary checkpoint loaded without
the plugin then fails with a loud size mismatch instead of silently random-initialising.
Neither ever materialises the whole float matrix in its forward on CPU when the kernel is present;
the reference path unpacks the codes (exact, slower) where no kernel applies.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError
from ..quant import rowwise
from ..quant.functional import apply_activation, ternary_linear_reference
from ..quant.packing import ZERO_BYTE, pack_ternary, packed_shape, unpack_ternary
from ..quant.ternarize import dequantize_ternary, ternarize

__all__ = ["QuantizedEmbedding", "TernaryLinear", "float_linear", "kernel_forward"]

_ROW_CHUNK = 4096
#: QuantizedEmbedding tables whose float copy is at most this size keep that copy (see float_table).
_SMALL_TABLE_BYTES = 2 << 20
#: Up to this many looked-up ids an int4 table is read through a byte table (fewer ops; beyond it the
#: table lookups cost more than the ops they save: benchmarks/README.md).
_FEW_IDS = 256


def _kernel():
    """The CPU kernel module if it is usable here, else ``None`` (reference path).

    Asked on every CPU forward: :func:`ternary_hf.kernels.cpu_kernel_available` reads
    ``TERNARY_HF_DISABLE_KERNEL`` each time (the one reading of it), so the path can be switched at
    run time.
    """
    try:
        from .. import kernels
    except ImportError:
        return None
    return kernels if kernels.cpu_kernel_available() else None


def kernel_forward(layer: nn.Module, x: torch.Tensor, int8_weights: bool = False) -> torch.Tensor | None:
    """``layer``'s output computed by the CPU kernel (its ``kernel_weight``, scale, bias and fused
    activation), or None where the kernel does not apply: another device, float activations,
    autograd, no kernel (or, for ``int8_weights``, a build without them). Shared by ``TernaryLinear``
    and ``Int8Linear``, whose torch paths differ."""
    if x.device.type != "cpu" or not layer.quantize_activations or x.requires_grad:
        return None
    kernels = _kernel()
    if kernels is None or int8_weights and not kernels.int8_weights_available():
        return None
    lead = x.shape[:-1]
    x2d = x.reshape(-1, layer.in_features).to(torch.float32).contiguous()
    y = kernels.ternary_linear_cpu(x2d, layer.kernel_weight(kernels), layer.weight_scale, layer.bias,
                                   layer.in_features, layer.out_features, layer.fused_activation)
    return y.reshape(*lead, layer.out_features).to(x.dtype)


def float_linear(layer: nn.Module, dtype: torch.dtype | None = None) -> nn.Linear:
    """The float ``nn.Linear`` a quantized linear layer stands for: its ``dequantized_weight`` and bias
    (in ``dtype``, default the bias's), activation quantization dropped."""
    dtype = dtype or (layer.bias.dtype if layer.bias is not None else torch.float32)
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device=layer.weight.device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(layer.dequantized_weight(dtype))
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear


class TernaryLinear(nn.Module):
    """A linear layer with ternary weights: ``y = (x @ T.T) * scale + bias``.

    Buffers (saved in the checkpoint):
        weight: ``uint8`` ``(out_features, ceil(in_features / 4))``, see :mod:`ternary_hf.quant.packing`.
        weight_scale: ``float32`` ``(out_features,)`` (per channel) or ``(1,)`` (per tensor).
    Parameter: ``bias`` as in ``nn.Linear``.

    ``fused_activation`` (not saved; set by :func:`ternary_hf.integrations.fusion.fuse_activations` at load time):
    ``"gelu"`` makes the layer return ``gelu(y)``, computed by the CPU kernel while the output tile is
    still in registers instead of in a separate pass over the output.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold_method: str = "calibrated",
        granularity: str = "channel",
        quantize_activations: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.threshold_method = threshold_method
        self.granularity = granularity
        self.quantize_activations = quantize_activations
        n_scales = out_features if granularity == "channel" else 1
        packed = torch.zeros(packed_shape(out_features, in_features), dtype=torch.uint8, device=device)
        self.register_buffer("weight", packed)
        self.register_buffer("weight_scale", torch.zeros(n_scales, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype or torch.float32))
        else:
            self.register_parameter("bias", None)
        self._prepared: tuple[tuple, torch.Tensor] | None = None
        self.fused_activation: str | None = None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        threshold_method: str = "calibrated",
        granularity: str = "channel",
        quantize_activations: bool = True,
    ) -> TernaryLinear:
        """Ternarize an existing ``nn.Linear`` (which is left untouched)."""
        module = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            threshold_method=threshold_method,
            granularity=granularity,
            quantize_activations=quantize_activations,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        for name, tensor in module.quantize_weight(linear.weight).items():
            getattr(module, name).copy_(tensor)
        if linear.bias is not None:
            with torch.no_grad():
                module.bias.copy_(linear.bias)
        return module

    @torch.no_grad()
    def reset_stored_weights(self) -> None:
        """All-zero ternary weights (the packed code of 0), scale 0 and bias 0: a defined layer for
        one whose weights were missing from a checkpoint."""
        self.weight.fill_(ZERO_BYTE)
        self.weight_scale.zero_()
        if self.bias is not None:
            self.bias.zero_()
        self._prepared = None

    def quantize_weight(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float weight -> the stored tensors (``weight``, ``weight_scale``) under this layer's rule."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise InvalidInputError(
                f"weight of shape {tuple(weight.shape)} does not fit a TernaryLinear "
                f"({self.out_features}, {self.in_features})"
            )
        t = ternarize(weight, self.threshold_method, self.granularity)
        return {"weight": pack_ternary(t.values), "weight_scale": t.scale}

    def ternary_values(self) -> torch.Tensor:
        """The ``{-1, 0, +1}`` matrix as int8 (unpacked on demand; not cached)."""
        return unpack_ternary(self.weight, self.in_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_ternary(self.ternary_values(), self.weight_scale, dtype)

    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A float ``nn.Linear`` computing ``scale * T`` (activation quantization is dropped)."""
        return float_linear(self, dtype)

    def kernel_weight(self, kernels, keep: bool = True) -> torch.Tensor:
        """The weight in the CPU kernel's layout (the 2-bit panels of ``kernels.prepare_weight``),
        prepared once and kept until the weight changes (data pointer, version or device); with
        ``keep=False`` not kept (the fast forward concatenates several layers' panels into its own)."""
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device)
        if self._prepared is not None and self._prepared[0] == key:
            return self._prepared[1]
        prepared = kernels.prepare_weight(self.weight, self.in_features)
        if keep:
            self._prepared = (key, prepared)
        return prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kernel_forward(self, x)
        if y is not None:
            return y
        # Device-agnostic path (CUDA, MPS, autograd, or no kernel): plain torch ops.
        y = ternary_linear_reference(
            x, self.weight, self.weight_scale, self.bias, self.in_features, self.quantize_activations
        )
        return apply_activation(y, self.fused_activation)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"threshold={self.threshold_method}, granularity={self.granularity}, "
            f"activations={'int8' if self.quantize_activations else 'float'}"
            + (f", fused_activation={self.fused_activation}" if self.fused_activation else "")
        )


class QuantizedEmbedding(nn.Module):
    """An embedding table stored as fp16, int8 (per row) or int4 (per group of ``group_size`` columns), see
    :mod:`ternary_hf.quant.rowwise`.

    Only the looked-up rows are dequantized, into ``compute_dtype``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        storage: str = "int4",
        padding_idx: int | None = None,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        group_size: int = rowwise.INT4_GROUP_SIZE,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.storage = storage
        self.group_size = group_size
        self.padding_idx = padding_idx
        self.compute_dtype = compute_dtype
        for name, (shape, dtype) in rowwise.storage_shapes(num_embeddings, embedding_dim, storage, group_size).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, storage: str = "int4",
                       group_size: int = rowwise.INT4_GROUP_SIZE) -> QuantizedEmbedding:
        module = cls(embedding.num_embeddings, embedding.embedding_dim, storage, embedding.padding_idx,
                     embedding.weight.dtype, embedding.weight.device, group_size)
        for name, tensor in module.quantize_weight(embedding.weight).items():
            getattr(module, name).copy_(tensor)
        return module

    @torch.no_grad()
    def reset_stored_weights(self) -> None:
        """All-zero table (zero codes and scales), for a table missing from a checkpoint."""
        for buffer in self.buffers(recurse=False):
            buffer.zero_()

    def quantize_weight(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(weight.shape) != (self.num_embeddings, self.embedding_dim):
            raise InvalidInputError(
                f"embedding of shape {tuple(weight.shape)} does not fit a QuantizedEmbedding "
                f"({self.num_embeddings}, {self.embedding_dim})"
            )
        # In row chunks: the float temporaries of a whole table would cost several times its size at once.
        parts = [rowwise.quantize_rows(weight[i : i + _ROW_CHUNK], self.storage, self.group_size)
                 for i in range(0, max(self.num_embeddings, 1), _ROW_CHUNK)]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def _stored(self, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        stored = {"weight": self.weight}
        if self.storage != "fp16":
            stored["weight_scale"] = self.weight_scale
        if index is None:
            return stored
        return {k: v[index] for k, v in stored.items()}

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return rowwise.dequantize_rows(self._stored(), self.storage, self.embedding_dim, dtype or self.compute_dtype)

    def to_embedding(self, dtype: torch.dtype | None = None) -> nn.Embedding:
        weight = self.dequantized_weight(dtype)
        embedding = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                                 device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            embedding.weight.copy_(weight)
        return embedding

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = self.float_table()
        if table is not None:
            return nn.functional.embedding(input_ids, table)
        if self.storage == "int4" and input_ids.numel() <= _FEW_IDS:
            return rowwise.gather_int4_rows(self.weight, self.weight_scale, input_ids, self.embedding_dim,
                                            self.compute_dtype)
        return rowwise.dequantize_rows(self._stored(input_ids), self.storage, self.embedding_dim, self.compute_dtype)

    def float_table(self) -> torch.Tensor | None:
        """The whole table dequantized once and kept, which lookups read, or None for a large table
        (over ``_SMALL_TABLE_BYTES`` as float: its looked-up rows are dequantized per call instead).

        Small tables (positions, token types, MPNet's relative buckets): the same values as dequantizing
        the looked-up rows (element by element), in one lookup instead of a dozen small ops per call.
        Rebuilt when a stored tensor changes; never saved."""
        if self.num_embeddings * self.embedding_dim * 4 > _SMALL_TABLE_BYTES:
            return None
        stored = self._stored()
        key = tuple((t.data_ptr(), t._version) for t in stored.values())
        cached = self.__dict__.get("_table")
        if cached is None or cached[0] != key:
            cached = (key, rowwise.dequantize_rows(stored, self.storage, self.embedding_dim, self.compute_dtype))
            self.__dict__["_table"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.storage == "int4" else ""
        return (f"{self.num_embeddings}, {self.embedding_dim}, storage={self.storage}{group}, "
                f"padding_idx={self.padding_idx}")
