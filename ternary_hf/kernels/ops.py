"""The kernel's entry points as ``torch.library`` operators (namespace ``ternary_hf``).

Why operators: ``torch.compile`` (and ``torch.export``) cannot look inside a pybind11 function; an
operator with a fake (meta) implementation lets the tracer know the output's shape and dtype without
running it, so a whole encoder compiles into one graph with the kernel calls in it. The operators are
defined here in Python at import time (cheap: no compiler involved), and their implementation loads
the compiled module on first use, exactly like the plain Python API; so build-on-first-use and the
fallback to the reference torch path stay as they were.

Operators (``torch.ops.ternary_hf.<name>``), each with the contract of its Python wrapper in
:mod:`ternary_hf.kernels`:

* ``ternary_linear(x, prepared, weight_scale, bias, in_features, out_features, gelu=False)``
* ``ternary_accumulators(x, prepared, in_features, out_features)`` (int32, for tests)
* ``ternarize_calibrated(weight) -> (values, scale)``, ``prepare_from_values(values, transpose)``,
  ``prepare_int_from_values(values, bits, transpose)``, ``fake_quantize_int8(x)`` (the trainer's ops)

Outside a compiled region the Python wrappers call the implementations below directly rather than
through the dispatcher: a dispatcher round trip costs about as much as a whole batch-1 layer.
None of the operators has an autograd formula: the trainer wraps them in its own
``torch.autograd.Function`` (straight-through estimator), which is a modelling choice, not a property
of the operator. To add an operator, write its implementation and fake here and call :func:`_define`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..quant.functional import apply_activation, ternary_linear_reference
from ..quant.int8 import int8_linear
from ._build import kernel_module, kernel_status
from .layout import check_prepared, is_int8_prepared, prepared_shape, prepared_to_int8, prepared_to_ternary

__all__ = ["NAMESPACE", "LIBRARY", "ternary_linear_impl", "accumulators_impl", "require_module"]

NAMESPACE = "ternary_hf"
#: Fragment of the ``ternary_hf`` operator library (other parts of the package may add to it).
LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")


def _define(schema: str, impl: Callable, fake: Callable) -> None:
    """Define ``ternary_hf::<schema>`` with one device-agnostic implementation and its fake."""
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=LIBRARY)


def require_module():
    """The compiled module, or ``RuntimeError`` saying why there is none."""
    module = kernel_module()
    if module is None:
        raise RuntimeError(f"the ternary CPU kernel is not available: {kernel_status()}")
    return module


def _float32_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.to(torch.float32).contiguous()


# ------------------------------------------------------------------------------------- ternary_linear
def ternary_linear_impl(x: torch.Tensor, prepared: torch.Tensor, weight_scale: torch.Tensor,
                        bias: torch.Tensor | None, in_features: int, out_features: int,
                        gelu: bool = False) -> torch.Tensor:
    """Kernel where it runs (CPU, compiled module present), else the reference torch path."""
    module = kernel_module() if x.device.type == "cpu" else None
    if module is None:
        # Device-agnostic path (CUDA and friends, or no kernel): plain torch ops. A GPU kernel would go here.
        check_prepared(prepared, in_features, out_features)
        if x.dim() != 2 or x.shape[1] != in_features:
            raise ValueError(f"x must have shape (M, {in_features}), got {tuple(x.shape)}")
        if is_int8_prepared(prepared):
            values = prepared_to_int8(prepared, in_features, out_features).to(x.device)
            y = int8_linear(x.to(torch.float32), values, weight_scale.expand(out_features), bias)
        else:
            ternary = prepared_to_ternary(prepared, in_features, out_features).to(x.device)
            y = ternary_linear_reference(
                x.to(torch.float32), prepared, weight_scale, bias, in_features, True, ternary_weight=ternary
            )
        return apply_activation(y, "gelu" if gelu else None)
    # Hot path (runs per layer per forward): the C++ side validates shapes and dtypes (ValueError).
    return module.ternary_linear(_float32_contiguous(x), prepared, _float32_contiguous(weight_scale),
                                 None if bias is None else _float32_contiguous(bias), in_features, out_features,
                                 gelu)


def _ternary_linear_fake(x, prepared, weight_scale, bias, in_features, out_features, gelu=False):
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"x must have shape (M, {in_features}), got {tuple(x.shape)}")
    check_prepared(prepared, in_features, out_features)
    return x.new_empty((x.shape[0], out_features), dtype=torch.float32)


_define("ternary_linear(Tensor x, Tensor prepared, Tensor weight_scale, Tensor? bias, int in_features, "
        "int out_features, bool gelu=False) -> Tensor", ternary_linear_impl, _ternary_linear_fake)


# -------------------------------------------------------------------------------- ternary_accumulators
def accumulators_impl(x: torch.Tensor, prepared: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    check_prepared(prepared, in_features, out_features)
    return require_module().ternary_accumulators(_float32_contiguous(x), prepared.contiguous(), in_features,
                                                 out_features)


def _accumulators_fake(x, prepared, in_features, out_features):
    check_prepared(prepared, in_features, out_features)
    return x.new_empty((x.shape[0], out_features), dtype=torch.int32)


_define("ternary_accumulators(Tensor x, Tensor prepared, int in_features, int out_features) -> Tensor",
        accumulators_impl, _accumulators_fake)


# ------------------------------------------------------------------------------------ the trainer's ops
def _ternarize_calibrated_impl(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, scale = require_module().ternarize_calibrated(weight.detach().contiguous())
    return values, scale


def _ternarize_calibrated_fake(weight):
    return weight.new_empty(weight.shape, dtype=torch.int8), weight.new_empty(weight.shape[:1], dtype=torch.float32)


_define("ternarize_calibrated(Tensor weight) -> (Tensor, Tensor)", _ternarize_calibrated_impl,
        _ternarize_calibrated_fake)


def _prepare_from_values_impl(values: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    return require_module().prepare_from_values(values.contiguous(), transpose)


def _panel_shape(values: torch.Tensor, transpose: bool, int8: bool) -> tuple[int, int, int]:
    out_features, in_features = values.shape[::-1] if transpose else values.shape
    return prepared_shape(in_features, out_features, int8=int8)


def _prepare_from_values_fake(values, transpose=False):
    return values.new_empty(_panel_shape(values, transpose, False), dtype=torch.uint8)


_define("prepare_from_values(Tensor values, bool transpose=False) -> Tensor", _prepare_from_values_impl,
        _prepare_from_values_fake)


def _prepare_int_from_values_impl(values: torch.Tensor, bits: int, transpose: bool = False) -> torch.Tensor:
    return require_module().prepare_int_from_values(values.contiguous(), bits, transpose)


def _prepare_int_from_values_fake(values, bits, transpose=False):
    return values.new_empty(_panel_shape(values, transpose, True), dtype=torch.int8 if bits == 4 else torch.uint8)


_define("prepare_int_from_values(Tensor values, int bits, bool transpose=False) -> Tensor",
        _prepare_int_from_values_impl, _prepare_int_from_values_fake)


def _fake_quantize_int8_impl(x: torch.Tensor) -> torch.Tensor:
    return require_module().fake_quantize_int8(x.contiguous())


def _fake_quantize_int8_fake(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


_define("fake_quantize_int8(Tensor x) -> Tensor", _fake_quantize_int8_impl, _fake_quantize_int8_fake)
