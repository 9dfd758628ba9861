"""Fast CPU inference for ternary linear layers: the public kernel API used by ``TernaryLinear``.

What the package owns: the C++ kernels (``ternary_cpu.cpp`` and its headers for inference,
``ternary_train.cpp`` for the trainer's ops), their build-on-first-use loader (:mod:`._build`), the
kernel weight layout (:mod:`.layout`), the ``torch.library`` operators (:mod:`.ops`) and the reading
of every ``TERNARY_HF_*`` kernel variable (:mod:`.env`). It imports only :mod:`ternary_hf.quant` and
:mod:`ternary_hf.errors`.

Why a separate kernel layout: the on-disk format (:mod:`ternary_hf.quant.packing`) is row-major 2-bit
codes, good for storage and interchange; the kernel wants 16-column panels in which one shift and one
mask yield the ``vpmaddubsw`` (AVX2), ``vpdpbusd`` (AVX-512 VNNI) or AMX tile operand directly.
:func:`prepare_weight` converts once at load time (same 2 bits per weight, padded to multiples of 16);
the on-disk format never changes. Int8 weights (``TernaryConfig.int8_modules``) go through the same entry
points once :func:`prepare_int8_weight` has laid them out as bytes.

Call sequence (what ``TernaryLinear`` does)::

    if cpu_kernel_available():                       # builds/loads once, never raises on a bad toolchain
        prepared = prepare_weight(packed, in_features)   # once, at load
        y = ternary_linear_cpu(x2d, prepared, weight_scale, bias, in_features, out_features)

Every entry point is also a ``torch.library`` operator (``torch.ops.ternary_hf.*``) with a fake
implementation, so ``torch.compile(fullgraph=True)`` traces through the functions below; in eager mode
they skip the dispatcher, whose per-call cost is comparable to a whole batch-1 layer.

Numerics: activations are quantized per token to int8 with exactly the rule of
:func:`ternary_hf.quant.functional.quantize_activations_int8`; the int32 accumulators ``q(x) @ T.T``
are bit-identical to the reference path and across builds (tests check this through
:func:`kernel_accumulators`). The float epilogue ``acc * s_x * s_w + b`` is computed in the same order
in float32 (no FMA contraction), so in every test here the float output is bit-identical too; the
documented guarantee is the looser ``|y - y_ref| <= 1e-6 * (|y_ref| + max_row |y_ref|)`` (room for a
different libm/compiler rounding ``s_x`` differently). Broken numbers are never hidden: a row of ``x``
holding NaN or +-inf gives a row of NaN (as on the reference path, where the NaN reaches the matmul),
a NaN or inf weight scale gives what the reference's ``* s_w`` gives, and so does a row so small that
``127 / max|x|`` overflows (NaN if it holds a zero). Tests check every build against the reference.

Builds (see :mod:`._build`): ``pip install "ternary-hf[kernel]"`` adds ``ninja``; with a C++ compiler
present, the sources are compiled on the first call of :func:`cpu_kernel_available` into
``~/.cache/ternary_hf/kernels/<hash of sources, flags, torch and Python version>/`` under a file lock
(a minute or two, once; later processes load the cached ``.so``). One source, one build per
instruction set, the best the CPU runs chosen: ``amx`` (AMX-INT8 tiles, Sapphire Rapids and later),
``avx512vnni``, ``avx2``; :func:`kernel_isa` says which runs, ``TERNARY_HF_KERNEL_ISA`` forces one (or
``reference``). A build that fails or that the OS refuses (AMX tile permission) gives one warning and
the next build is tried; no compiler, no ninja or no AVX2/FMA: one ``RuntimeWarning`` naming the fix,
then the reference path. ``TERNARY_HF_DISABLE_KERNEL=1`` forces the reference path;
``TERNARY_HF_KERNEL_CACHE`` moves the cache; ``TERNARY_HF_KERNEL_VERBOSE=1`` shows the compiler output.
The AMX build's tile code is tested bit for bit against the other builds through a test-only build
that emulates the tile instructions; the real instructions have only run where a CPU has AMX (the
development machine of the tests so far has none; see benchmarks/README.md for where it was measured).

Threads: up to ``torch.get_num_threads()`` threads, but only as many as the problem pays for (a few
million multiply-adds each), shared out on torch's OpenMP pool like torch's own ops. On a machine
shared with other jobs, ``TERNARY_HF_KERNEL_PARALLEL=helpers`` instead shares work through helpers on
torch's inter-op pool and never waits for a helper that has not started (an OpenMP join can stall for
a scheduler time slice on a descheduled thread; helpers degrade to single-thread speed instead), but
on a quiet machine it is much slower (figures in benchmarks/README.md).
"""

from __future__ import annotations

import torch

from ..quant.functional import validate_activation
from . import ops
from ._build import kernel_isa, kernel_module, kernel_status
from .layout import (
    BLOCK_K,
    PANEL_COLS,
    prepare_int4_weight,
    prepare_int8_weight,
    prepare_weight,
    prepared_to_int8,
    prepared_to_ternary,
)

__all__ = [
    "cpu_kernel_available",
    "prepare_weight",
    "ternary_linear_cpu",
    "kernel_accumulators",
    "prepared_to_ternary",
    "prepare_int8_weight",
    "prepare_int4_weight",
    "prepared_to_int8",
    "int8_weights_available",
    "kernel_status",
    "kernel_isa",
    "kernel_module",
    "training_ops_available",
    "ternarize_calibrated_cpu",
    "prepare_from_values",
    "prepare_int_from_values",
    "fake_quantize_int8_cpu",
    "PANEL_COLS",
    "BLOCK_K",
]


def cpu_kernel_available() -> bool:
    """Whether a compiled CPU kernel build can run here; builds or loads it once.

    Returns False without raising when ``TERNARY_HF_DISABLE_KERNEL`` is set, or (after ONE
    ``RuntimeWarning`` that says how to fix it) when the CPU lacks AVX2/FMA, no compiler or ``ninja``
    is installed, or the build fails.
    """
    return kernel_module() is not None


def int8_weights_available() -> bool:
    """Whether a kernel build runs here that multiplies int8 weights (:func:`prepare_int8_weight`): every
    build of this version does; a module compiled by an older version (no ``INT8_WEIGHTS``) does not."""
    module = kernel_module()
    return module is not None and bool(getattr(module, "INT8_WEIGHTS", False))


def ternary_linear_cpu(
    x: torch.Tensor,
    prepared: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    out_features: int,
    activation: str | None = None,
) -> torch.Tensor:
    """``y = (q(x) @ T.T) * s_x * s_w + b`` with per-token int8 ``q`` fused in, int32 accumulation.

    The operator ``torch.ops.ternary_hf.ternary_linear`` (what a compiled graph calls).

    Args:
        x: float32 ``(M, in_features)`` (made contiguous if needed).
        prepared: output of :func:`prepare_weight`, or of :func:`prepare_int8_weight` /
            :func:`prepare_int4_weight` for int8 / int4 weights (``y = (q(x) @ W_q.T) * s_x * s_w + b``).
        weight_scale: float32 ``(out_features,)`` or ``(1,)``.
        bias: optional float32 ``(out_features,)``.
        in_features, out_features: the layer's unpadded shape.
        activation: ``None``, or ``"gelu"`` to return ``gelu(y)`` (exact-erf GELU) computed in the
            kernel's epilogue while the tile is in registers, within ``1e-6 * (|y| + 1)`` of
            ``torch.nn.functional.gelu(y)``.

    Returns:
        float32 ``(M, out_features)``. On a non-CPU device, or where the kernel is unavailable, the
        result comes from the reference torch path (same integers, same rule); that fallback decodes
        the weights on every call, so callers should prefer their own reference path there.
    """
    gelu = _fused_gelu(activation)
    if torch.compiler.is_compiling():
        return torch.ops.ternary_hf.ternary_linear(x, prepared, weight_scale, bias, in_features, out_features, gelu)
    return ops.ternary_linear_impl(x, prepared, weight_scale, bias, in_features, out_features, gelu)


def _fused_gelu(activation: str | None) -> bool:
    validate_activation(activation)
    return activation == "gelu"


def kernel_accumulators(x: torch.Tensor, prepared: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    """Debug entry: the kernel's exact int32 ``q(x) @ T.T`` (before any float scaling).

    Raises:
        RuntimeError: if the kernel is not available (tests use this to check exactness).
    """
    if torch.compiler.is_compiling():
        return torch.ops.ternary_hf.ternary_accumulators(x, prepared, in_features, out_features)
    return ops.accumulators_impl(x, prepared, in_features, out_features)


# --------------------------------------------------------------------------------------------- training
# The distillation trainer's fast path (ternary_hf.train.student): one C++ pass each for what the student
# does to every layer on every step. Same results as the Python definitions (tests check bit equality).


def training_ops_available() -> bool:
    """Whether the trainer's CPU ops below can run (they live in the same compiled module as the kernel)."""
    return cpu_kernel_available()


def ternarize_calibrated_cpu(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ternarize(weight, "calibrated", "channel")`` as ``(int8 values, float32 scale)``, in one pass.

    Bit for bit the same values and scales as :func:`ternary_hf.quant.ternarize.ternarize` (a radix sort of the
    magnitudes instead of NumPy's sort; same float64 sums). Operator ``ternary_hf::ternarize_calibrated``.

    Raises:
        ValueError: on a non-2-D / non-float32 / empty weight, or NaN / inf in it.
        RuntimeError: if the kernel is not available.
    """
    values, scale = torch.ops.ternary_hf.ternarize_calibrated(weight.detach())
    return values, scale


def prepare_from_values(values: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """int8 ternary values ``(out, in)`` -> the kernel layout, as ``prepare_weight(pack_ternary(values), in)``;
    ``transpose``: the layout of ``values.T`` (read in place, no transposed copy).

    Operator ``ternary_hf::prepare_from_values``."""
    return torch.ops.ternary_hf.prepare_from_values(values, transpose)


def prepare_int_from_values(values: torch.Tensor, bits: int, transpose: bool = False) -> torch.Tensor:
    """int4 (``bits=4``, values in [-7, 7]) or int8 (``bits=8``, [-127, 127]) values ``(out, in)`` -> the
    panels of :func:`~ternary_hf.kernels.layout.prepare_int4_weight` / ``prepare_int8_weight`` in one
    compiled pass (the trainer rebuilds them every step); ``transpose``: the panels of ``values.T``.

    Raises:
        ValueError: on another dtype or shape, or a value outside the range.

    Operator ``ternary_hf::prepare_int_from_values``."""
    return torch.ops.ternary_hf.prepare_int_from_values(values, bits, transpose)


def fake_quantize_int8_cpu(x: torch.Tensor) -> torch.Tensor:
    """``q(x) * s_x`` for a 2-D float32 ``x``: :func:`ternary_hf.quant.functional.quantize_activations_int8`,
    computed by the kernel's own quantization routine (bit for bit the same). Operator
    ``ternary_hf::fake_quantize_int8``."""
    return torch.ops.ternary_hf.fake_quantize_int8(x)
