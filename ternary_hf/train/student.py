"""Trainable stand-ins for the inference modules: latent float weights, ternary forward, straight-through gradient.

The distillation student is the teacher with every converted ``nn.Linear`` swapped for
:class:`FakeTernaryLinear` (:class:`FakeIntLinear` for the layers ``int8_modules`` / ``int4_modules``
name) and every stored embedding table for :class:`FakeQuantEmbedding`. Each
keeps a float tensor named ``weight`` of the original shape, so the student's ``state_dict`` is a
plain float checkpoint of the teacher's architecture: finalizing it means loading that checkpoint
through the quantizer, which applies the very same :func:`~ternary_hf.ternarize.ternarize` rule (and,
for activations, the same int8 rule from :mod:`ternary_hf.functional`) as the forward used in training.

On CPU with the compiled kernel (:mod:`ternary_hf.kernels`) and int8 activations, a student layer's
forward *is* the inference layer's: its latent weight is ternarized by one C++ pass (bit for bit the
same values and scales as :func:`~ternary_hf.ternarize.ternarize` for the default calibrated
per-channel rule), put in the kernel's layout and multiplied by the same CPU kernel the finalized
model uses (an int8 / int4 layer likewise: its rounded values as the kernel's int8 or int4 panels, where
the kernel build multiplies int8 weights); the backward is the straight-through estimator in float32
(``grad_x = grad_y @ (s_w T)``, ``grad_W = grad_y.T @ (q(x) s_x)``). Elsewhere (GPU, float activations,
no compiler) the plain torch forward below computes the same thing up to float rounding.

``int8_grad_input`` (:func:`set_int8_grad_input`) also runs the input gradient on the kernel:
``grad_x = grad_y @ (s_w T)`` is ``(grad_y * s_w) @ T``, an int8 x ternary (int4, int8) product like the
forward,
with the rows of ``grad_y * s_w`` quantized per token to int8 (SwitchBack's split, arXiv 2304.13013:
int8 for the input gradient, float for the weight gradient, whose sums over every token are where
precision matters). Faster than the float32 product at a small relative error on the input gradient
(benchmarks/README.md, ``bench_train_step.py``); the weight gradient stays float32.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..integrations.config import TernaryConfig
from ..integrations.conversion import swap_modules
from ..integrations.fast_forward.plan import block_names
from ..quant import rowwise
from ..quant.functional import quantize_activations_int8
from ..quant.int4 import INT4_MAX, quantize_weight_int4
from ..quant.int8 import dequantize_int8, quantize_weight_int8
from ..quant.ternarize import dequantize_ternary, ternarize

__all__ = ["FakeIntLinear", "FakeQuantEmbedding", "FakeTernaryLinear", "build_student", "disable_dropout",
           "fake_quantize_int8", "set_int8_grad_input", "to_float_model", "with_int4_blocks", "with_int8_blocks"]


def fake_quantize_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-token int8 quantize-dequantize with a straight-through gradient (identity backward)."""
    q, scale = quantize_activations_int8(x.detach())
    # ``x - x.detach()`` is exactly 0 in the forward (so the value is exactly the quantized one, as at
    # inference) and the identity in the backward; ``x + (q - x).detach()`` would be off by a rounding.
    return (q * scale).to(x.dtype) + (x - x.detach())


class FakeTernaryLinear(nn.Module):
    """``nn.Linear`` whose forward uses ``ternarize(weight)`` and whose backward updates the latent ``weight``."""

    def __init__(self, linear: nn.Linear, threshold_method: str, granularity: str, quantize_activations: bool):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.threshold_method, self.granularity = threshold_method, granularity
        self.quantize_activations = quantize_activations
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None
        #: input gradient on the int8 kernel (kernel path only; see the module docstring)
        self.int8_grad_input = False

    def quantized_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return ternarize(self.weight, self.threshold_method, self.granularity).dequantize(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = _training_kernels(x, self)
        if kernels is not None:
            values, scale = self._ternary_values(kernels)
            prepared = _kernel_panels(kernels, values, "ternary")
            return _KernelQuantLinear.apply(x, self.weight, self.bias, values, scale, prepared,
                                            self.int8_grad_input, "ternary")
        w = self.quantized_weight() + (self.weight - self.weight.detach())  # exact value, identity gradient
        if self.quantize_activations:
            x = fake_quantize_int8(x)
        return F.linear(x, w, self.bias)

    def _ternary_values(self, kernels) -> tuple[torch.Tensor, torch.Tensor]:
        """``ternarize(weight)`` as (int8 values, float32 scale); the default rule in one C++ pass."""
        with torch.no_grad():
            if self.threshold_method == "calibrated" and self.granularity == "channel" and self.in_features > 0:
                return kernels.ternarize_calibrated_cpu(self.weight)
            ternary = ternarize(self.weight, self.threshold_method, self.granularity)
            return ternary.values.contiguous(), ternary.scale.contiguous()

    def to_linear(self) -> nn.Linear:
        """The latent weights as a plain ``nn.Linear`` (what the quantizer then ternarizes)."""
        return _plain_linear(self.weight, self.bias)


def _training_kernels(x: torch.Tensor, layer: nn.Module):
    """The kernel module when this layer's forward can run on it (CPU, float32, int8 activations)."""
    if not (layer.quantize_activations and x.device.type == "cpu" and x.dtype == torch.float32
            and layer.weight.dtype == torch.float32 and layer.in_features > 0 and layer.out_features > 0
            and not torch.is_autocast_enabled("cpu")):
        return None
    from .. import kernels

    return kernels if kernels.cpu_kernel_available() else None


class _KernelQuantLinear(torch.autograd.Function):
    """Forward: the inference kernel on the freshly rounded weight (``kind``: "ternary", "int4" or "int8",
    its panels ``prepared`` from ``values``). Backward: straight-through."""

    @staticmethod
    def forward(ctx, x, weight, bias, values, scale, prepared, int8_grad_input=False, kind="ternary"):
        from ..kernels import fake_quantize_int8_cpu, ternary_linear_cpu

        out_features, in_features = values.shape
        x2d = x.reshape(-1, in_features).contiguous()
        y = ternary_linear_cpu(x2d, prepared, scale, None if bias is None else bias.detach(), in_features,
                               out_features)
        # grad_W needs the activations the kernel multiplied: q(x) * s_x, by the kernel's own rule.
        xq = fake_quantize_int8_cpu(x2d) if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(xq, values, scale)
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        ctx.int8_grad_input = int8_grad_input
        ctx.kind = kind
        return y.reshape(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, grad_y):
        xq, values, scale = ctx.saved_tensors
        g = grad_y.reshape(-1, values.shape[0])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.int8_grad_input:
                grad_x = _int8_input_grad(g, values, scale, ctx.kind)
            elif ctx.kind == "ternary":
                grad_x = g @ dequantize_ternary(values, scale)
            else:
                grad_x = g @ dequantize_int8(values, scale, g.dtype)
            grad_x = grad_x.reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = g.t() @ xq
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None, None


_UNIT_SCALE = torch.ones(1)


def _kernel_panels(kernels, values: torch.Tensor, kind: str, transpose: bool = False) -> torch.Tensor:
    """``values`` (rounded weights, int8 ``(out, in)``), or ``values.T``, in the kernel's layout for ``kind``:
    one compiled pass each, since every step rebuilds them (forward, and transposed for the input gradient)."""
    if kind == "ternary":
        return kernels.prepare_from_values(values, transpose)
    return kernels.prepare_int_from_values(values, 4 if kind == "int4" else 8, transpose)


def _int8_input_grad(g: torch.Tensor, values: torch.Tensor, scale: torch.Tensor, kind: str = "ternary") -> torch.Tensor:
    """``g @ (s_w W)`` on the int8 kernel: ``(g * s_w)`` quantized per row, times ``W`` (given to the
    kernel as the weight ``W.T``: the product's inputs are the layer's outputs)."""
    from .. import kernels

    out_features, in_features = values.shape
    transposed = _kernel_panels(kernels, values, kind, transpose=True)
    return kernels.ternary_linear_cpu((g * scale).contiguous(), transposed, _UNIT_SCALE, None, out_features,
                                      in_features)


def set_int8_grad_input(model: nn.Module, enabled: bool) -> int:
    """Switch the int8 input gradient (module docstring) on or off for every student layer of
    ``model``; returns how many layers were set. Only the CPU kernel path uses it."""
    layers = [m for m in model.modules() if isinstance(m, (FakeTernaryLinear, FakeIntLinear))]
    for layer in layers:
        layer.int8_grad_input = bool(enabled)
    return len(layers)


class FakeIntLinear(nn.Module):
    """``nn.Linear`` trained through the int8 / int4 rounding of its finalized layer (quantization-aware).

    The forward multiplies the per-token int8 activations by the rounded weight, as
    :class:`~ternary_hf.Int8Linear` / :class:`~ternary_hf.Int4Linear` will; the backward goes straight
    through both roundings to the latent float ``weight``. A layer trained in float and rounded only when
    finalized never sees that error, and the blocks given more bits are the ones whose error the rest of
    the network is most sensitive to (docs/quality.md).

    The int4 rule searches a clipping factor per row (:func:`~ternary_hf.quant.int4.quantize_weight_int4`),
    which costs several passes over the matrix: in training the factors are searched every ``search_every``
    forwards and applied to the current ``max|row|`` in between; in eval mode every forward searches, so an
    evaluated student is exactly its finalized model.
    """

    #: run on the CPU kernel where it applies; False keeps the torch path (``bench_train_step.py`` times both)
    use_kernel = True

    def __init__(self, linear: nn.Linear, bits: int, quantize_activations: bool, search_every: int = 32):
        super().__init__()
        if bits not in (4, 8):
            raise InvalidInputError(f"bits={bits!r}; FakeIntLinear rounds to int8 or int4 weights")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.quantize_activations, self.search_every = bits, quantize_activations, search_every
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None
        if bits == 4:  # buffers, so that a resumed run searches at the same steps as an uninterrupted one
            self.register_buffer("clip", torch.ones(self.out_features, device=self.weight.device))
            self.register_buffer("forwards", torch.zeros((), dtype=torch.int64, device=self.weight.device))
        #: input gradient on the int8 kernel (kernel path only; see the module docstring)
        self.int8_grad_input = False

    def quantized_weight(self) -> torch.Tensor:
        """The rounded weight the forward multiplies, dequantized (no gradient)."""
        with torch.no_grad():
            return dequantize_int8(*self._rounded(), self.weight.dtype)

    def _rounded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 values, float32 scale) of the finalized layer's rule."""
        with torch.no_grad():
            return quantize_weight_int8(self.weight) if self.bits == 8 else self._int4()

    def _int4(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight.detach().to(torch.float32)
        amax = w.abs().amax(dim=1)
        if not self.training or int(self.forwards) % self.search_every == 0:
            values, scale = quantize_weight_int4(w)
            if self.training:  # kept for the forwards until the next search (an evaluation leaves it alone)
                self.clip.copy_(torch.where(amax > 0, scale * INT4_MAX / amax.clamp_min(torch.finfo(w.dtype).tiny),
                                            torch.ones_like(amax)))
            return values, scale
        scale = torch.where(amax > 0, self.clip * amax / INT4_MAX, torch.ones_like(amax))
        return torch.round(w / scale[:, None]).clamp_(-INT4_MAX, INT4_MAX).to(torch.int8), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = _training_kernels(x, self) if self.use_kernel else None
        if kernels is not None and not kernels.int8_weights_available():
            kernels = None  # a build without int8 weights (compiled by an older ternary-hf)
        if kernels is not None:  # the finalized layer's own product: int8 x int4 / int8 on the kernel
            values, scale = self._rounded()
            kind = f"int{self.bits}"
            prepared = _kernel_panels(kernels, values, kind)
            y = _KernelQuantLinear.apply(x, self.weight, self.bias, values, scale, prepared, self.int8_grad_input, kind)
        else:
            w = self.quantized_weight() + (self.weight - self.weight.detach())  # rounded value, identity gradient
            y = F.linear(fake_quantize_int8(x) if self.quantize_activations else x, w, self.bias)
        if self.training and self.bits == 4:
            self.forwards += 1
        return y

    def to_linear(self) -> nn.Linear:
        """The latent weights as a plain ``nn.Linear`` (what the quantizer then rounds)."""
        return _plain_linear(self.weight, self.bias)


def _plain_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                       dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


class FakeQuantEmbedding(nn.Module):
    """Frozen embedding table whose looked-up rows go through the configured row-wise storage.

    Row-wise quantization treats each row on its own, so quantizing the gathered rows gives exactly
    what gathering from the stored table gives at inference.
    """

    def __init__(self, embedding: nn.Embedding, storage: str, group_size: int = rowwise.INT4_GROUP_SIZE):
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx, self.storage, self.group_size = embedding.padding_idx, storage, group_size
        self.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input_ids, self.weight).reshape(-1, self.embedding_dim)
        stored = rowwise.quantize_rows(rows, self.storage, self.group_size)
        out = rowwise.dequantize_rows(stored, self.storage, self.embedding_dim, self.weight.dtype)
        return out.reshape(*input_ids.shape, self.embedding_dim)

    def to_embedding(self) -> nn.Embedding:
        embedding = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                                 device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            embedding.weight.copy_(self.weight)
        return embedding


def with_int8_blocks(config: TernaryConfig, model: nn.Module, n: int) -> TernaryConfig:
    """``config`` with the last ``n`` encoder blocks of ``model`` added to its ``int8_modules``
    (``DistillConfig.int8_blocks``); see :func:`_with_blocks`."""
    return _with_blocks(config, model, "int8_blocks", n, "int8", last=True)


def with_int4_blocks(config: TernaryConfig, model: nn.Module, first: int | None, last: int = 0) -> TernaryConfig:
    """``config`` with the first ``first`` encoder blocks of ``model`` (``None``: the lower half) and its
    last ``last`` ones added to its ``int4_modules`` (``DistillConfig.int4_blocks``, ``int4_last_blocks``),
    leaving out blocks its ``int8_modules`` already names. One block always stays ternary (the defaults
    fit any encoder, however few its blocks): the last ones give way first. See :func:`_with_blocks`."""
    config = _with_blocks(config, model, "int4_blocks", first, "int4", last=False, keep_one=True)
    return _with_blocks(config, model, "int4_last_blocks", last, "int4", last=True, keep_one=True)


def _with_blocks(config: TernaryConfig, model: nn.Module, field: str, n: int | None, kind: str,
                 last: bool, keep_one: bool = False) -> TernaryConfig:
    """``config`` with ``n`` blocks (``None``: half of them) from one end of ``model``'s encoder added to
    its ``<kind>_modules`` (with ``keep_one``, at most all but one of the blocks no list names yet);
    ``config`` itself when ``n`` is 0, or (with a warning) when the blocks of ``model``'s architecture
    are not known (every layer then stays ternary).

    Raises:
        InvalidInputError: ``n`` exceeds the blocks of ``model``.
    """
    if n == 0:
        return config
    names = block_names(model)
    if names is None:
        warnings.warn(
            f"{field}={n} ignored: the encoder blocks of {type(model).__name__} are not known to ternary-hf, "
            f"so every layer stays ternary; name layers to keep in {kind} with --{kind} "
            f"(TernaryConfig.{kind}_modules)",
            stacklevel=3,
        )
        return config
    if n is None:
        n = len(names) // 2
    if n > len(names):
        raise InvalidInputError(f"{field}={n}, but {type(model).__name__} has {len(names)} encoder blocks")
    taken = config.int8_module_names() + config.int4_module_names()
    extra = [name for name in (names[-n:] if last else names[:n]) if name not in taken]
    if keep_one:
        extra = extra[:max(0, sum(name not in taken for name in names) - 1)]
    if not extra:
        return config
    current = config.int8_module_names() if kind == "int8" else config.int4_module_names()
    return TernaryConfig.from_dict({**config.to_dict(), f"{kind}_modules": current + extra})


def build_student(teacher: nn.Module, config: TernaryConfig, quantized_int_layers: bool = False) -> nn.Module:
    """A trainable ternary copy of ``teacher`` (the teacher itself is not modified).

    Layers named in ``config.int8_modules`` / ``int4_modules`` become :class:`FakeIntLinear` (trained
    through their rounding) with ``quantized_int_layers``; otherwise they stay plain ``nn.Linear`` and
    train in float, and only finalizing rounds them.
    """
    student = copy.deepcopy(teacher)
    skip = config.skipped_modules() + list(getattr(teacher, "_keep_in_fp32_modules", None) or [])
    if not quantized_int_layers:
        skip += config.int8_module_names() + config.int4_module_names()
    n_linear, _ = swap_modules(
        student, config, skip,
        lambda m: FakeTernaryLinear(m, config.threshold_method, config.granularity, config.quantize_activations),
        lambda m: FakeQuantEmbedding(m, config.embedding_storage, config.embedding_group_size),
        make_int8=lambda m: FakeIntLinear(m, 8, config.quantize_activations),
        make_int4=lambda m: FakeIntLinear(m, 4, config.quantize_activations),
    )
    if n_linear == 0:
        raise ValueError(f"{type(teacher).__name__} has no nn.Linear layer to ternarize (skipped: {skip})")
    return student


def to_float_model(student: nn.Module) -> nn.Module:
    """A copy of the student with plain float modules holding the latent weights."""
    model = copy.deepcopy(student)
    for name, module in list(model.named_modules()):
        if isinstance(module, (FakeTernaryLinear, FakeIntLinear, FakeQuantEmbedding)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            new = module.to_embedding() if isinstance(module, FakeQuantEmbedding) else module.to_linear()
            setattr(parent, child, new)
    return model


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout of ``model`` to 0: the student matches a deterministic (eval-mode) teacher."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model
