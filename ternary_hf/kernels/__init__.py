"""Fast CPU inference for ternary linear layers: the public kernel API used by ``TernaryLinear``.

Why a separate kernel layout: the on-disk format (:mod:`ternary_hf.packing`) is row-major 2-bit
codes, good for storage and interchange; the kernel wants 16-column panels in which one shift and one
mask yield the ``vpmaddubsw`` (AVX2) or ``vpdpbusd`` (AVX-512 VNNI) operand directly.
:func:`prepare_weight` converts once at load time (same 2 bits per weight, padded to multiples of
16), the on-disk format never changes.

Call sequence (what ``TernaryLinear`` does)::

    if cpu_kernel_available():                       # builds/loads once, never raises
        prepared = prepare_weight(packed, in_features)   # once, at load
        y = ternary_linear_cpu(x2d, prepared, weight_scale, bias, in_features, out_features)

Numerics: activations are quantized per token to int8 with exactly the rule of
:func:`ternary_hf.functional.quantize_activations_int8`; the int32 accumulators ``q(x) @ T.T`` are
bit-identical to the reference path (tests check this through :func:`kernel_accumulators`). The float
epilogue ``acc * s_x * s_w + b`` is computed in the same order in float32 (no FMA contraction), so in
every test here the float output is bit-identical too; the documented guarantee is the looser
``|y - y_ref| <= 1e-6 * (|y_ref| + max_row |y_ref|)`` (room for a different libm/compiler rounding
``s_x`` differently). Known divergence: rows whose ``max|x|`` is subnormal (< 1.2e-38) make the
reference's ``127 / amax`` overflow to inf and yield NaN; the kernel then clamps to +-127 instead.

Build (see :mod:`ternary_hf.kernels._build`): ``pip install "ternary-hf[kernel]"`` adds ``ninja``;
with a C++ compiler present, the single source ``ternary_cpu.cpp`` (package data) is compiled on the
first call of :func:`cpu_kernel_available` with ``-O3 -mavx2 -mfma -fopenmp`` (about 40 s on 2
cores; on a CPU with AVX-512 VNNI a second build with ``-mavx512vnni`` is used instead, same results,
``TERNARY_HF_KERNEL_ISA=avx2`` opts out, :func:`kernel_isa` says which runs) into
``~/.cache/ternary_hf/kernels/<hash of source, flags, torch and Python version>/`` under a file lock,
and later processes just load the cached ``.so``. No compiler, no ninja or no AVX2/FMA: one
``RuntimeWarning`` naming the fix, then the reference path. ``TERNARY_HF_DISABLE_KERNEL=1`` forces
the reference path; ``TERNARY_HF_KERNEL_CACHE`` moves the cache; ``TERNARY_HF_KERNEL_VERBOSE=1`` shows
the compiler output.

Threads: up to ``torch.get_num_threads()`` threads, but only as many as the problem pays for (at least
~4M multiply-adds each), shared out on torch's OpenMP pool like torch's own ops. On a machine shared
with other jobs, ``TERNARY_HF_KERNEL_PARALLEL=helpers`` instead shares work through helpers on torch's
inter-op pool and never waits for a helper that has not started (an OpenMP join can stall 8-40 ms on
a descheduled thread; helpers degrade to single-thread speed instead), but on a quiet machine it is
much slower (MiniLM forward, 2 threads: 141 vs 97 ms; benchmarks/README.md).
"""

from __future__ import annotations

import torch

from ..quant.functional import apply_activation, ternary_linear_reference, validate_activation
from ..quant.packing import unpack_ternary
from ._build import kernel_isa, kernel_module, kernel_status

__all__ = [
    "cpu_kernel_available",
    "prepare_weight",
    "ternary_linear_cpu",
    "kernel_accumulators",
    "prepared_to_ternary",
    "kernel_status",
    "kernel_isa",
    "training_ops_available",
    "ternarize_calibrated_cpu",
    "prepare_from_values",
    "fake_quantize_int8_cpu",
]

#: Columns per weight panel and k values per block of the kernel layout (must match the .cpp).
PANEL_COLS = 16
BLOCK_K = 16


def cpu_kernel_available() -> bool:
    """Whether the CPU kernel (AVX2 or AVX-512 VNNI build) can run here; builds or loads it once.

    Returns False without raising when ``TERNARY_HF_DISABLE_KERNEL=1`` is set, or (after ONE
    ``RuntimeWarning`` that says how to fix it) when the CPU lacks AVX2/FMA, no compiler or ``ninja``
    is installed, or the build fails.
    """
    return kernel_module() is not None


def prepare_weight(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Convert on-disk packed weights to the kernel's panel layout (done once, at load time).

    Args:
        packed: ``uint8`` ``(out_features, ceil(in_features / 4))`` in the layout of
            :mod:`ternary_hf.packing`.
        in_features: unpadded input width.

    Returns:
        A contiguous CPU ``uint8`` tensor of shape ``(ceil(N/16), ceil(K/16), 64)``: byte
        ``(p, kb, 32*v + 4*j + i)`` holds at bits ``2*s`` the code of output ``16p + 8v + j`` and input
        ``16kb + 4s + i``; padding holds the code of zero. Still 2 bits per weight.

    Raises:
        ValueError: on a wrong dtype/shape or a corrupt code (from :func:`unpack_ternary`).
    """
    ternary = unpack_ternary(packed.detach().cpu(), in_features, torch.int8)
    out_features = ternary.shape[0]
    n_pan = -(-out_features // PANEL_COLS)
    n_kb = -(-in_features // BLOCK_K)
    codes = torch.ones((n_pan * PANEL_COLS, n_kb * BLOCK_K), dtype=torch.uint8)
    codes[:out_features, :in_features] = (ternary + 1).to(torch.uint8)
    # n = 16p + 8v + j ; k = 16kb + 4s + i  ->  order (p, kb, v, j, i) with s packed into bits.
    codes = codes.view(n_pan, 2, 8, n_kb, 4, 4).permute(0, 3, 1, 2, 5, 4)
    out = codes[..., 0].clone()
    for s in range(1, 4):
        out |= codes[..., s] << (2 * s)
    return out.reshape(n_pan, n_kb, 2 * 8 * 4).contiguous()


def prepared_to_ternary(prepared: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    """Inverse of :func:`prepare_weight`: the ``(out_features, in_features)`` float32 ternary matrix."""
    n_pan, n_kb, _ = prepared.shape
    bytes_ = prepared.view(n_pan, n_kb, 2, 8, 4)
    codes = torch.stack([(bytes_ >> (2 * s)) & 3 for s in range(4)], dim=-1)  # (p, kb, v, j, i, s)
    codes = codes.permute(0, 2, 3, 1, 5, 4).reshape(n_pan * PANEL_COLS, n_kb * BLOCK_K)
    return codes[:out_features, :in_features].to(torch.float32) - 1.0


def _check_prepared(prepared: torch.Tensor, in_features: int, out_features: int) -> None:
    expected = (-(-out_features // PANEL_COLS), -(-in_features // BLOCK_K), 64)
    if prepared.dtype != torch.uint8 or tuple(prepared.shape) != expected:
        raise ValueError(
            f"prepared weight has dtype {prepared.dtype} and shape {tuple(prepared.shape)}, expected uint8 "
            f"{expected} for in_features={in_features}, out_features={out_features}; build it with "
            f"ternary_hf.kernels.prepare_weight(packed, in_features)"
        )


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

    Args:
        x: float32 ``(M, in_features)`` (made contiguous if needed).
        prepared: output of :func:`prepare_weight`.
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
    module = kernel_module() if x.device.type == "cpu" else None
    if module is None:
        # Device-agnostic path (CUDA and friends, or no kernel): plain torch ops. A GPU kernel would go here.
        _check_prepared(prepared, in_features, out_features)
        if x.dim() != 2 or x.shape[1] != in_features:
            raise ValueError(f"x must have shape (M, {in_features}), got {tuple(x.shape)}")
        ternary = prepared_to_ternary(prepared, in_features, out_features).to(x.device)
        y = ternary_linear_reference(
            x.to(torch.float32), prepared, weight_scale, bias, in_features, True, ternary_weight=ternary
        )
        return apply_activation(y, activation)
    # Hot path (runs per layer per forward): the C++ side validates shapes and dtypes (ValueError).
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.to(torch.float32).contiguous()
    if weight_scale.dtype != torch.float32 or not weight_scale.is_contiguous():
        weight_scale = weight_scale.to(torch.float32).contiguous()
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        bias = bias.to(torch.float32).contiguous()
    return module.ternary_linear(x, prepared, weight_scale, bias, in_features, out_features,
                                 _fused_gelu(activation))


def _fused_gelu(activation: str | None) -> bool:
    validate_activation(activation)
    return activation == "gelu"


def kernel_accumulators(x: torch.Tensor, prepared: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    """Debug entry: the kernel's exact int32 ``q(x) @ T.T`` (before any float scaling).

    Raises:
        RuntimeError: if the kernel is not available (tests use this to check exactness).
    """
    _check_prepared(prepared, in_features, out_features)
    module = kernel_module()
    if module is None:
        raise RuntimeError(f"the ternary CPU kernel is not available: {kernel_status()}")
    return module.ternary_accumulators(
        x.to(torch.float32).contiguous(), prepared.contiguous(), in_features, out_features
    )


# --------------------------------------------------------------------------------------------- training
# The distillation trainer's fast path (ternary_hf.training): one C++ pass each for what the student
# does to every layer on every step. Same results as the Python definitions (tests check bit equality).


def training_ops_available() -> bool:
    """Whether the trainer's CPU ops below can run (they live in the same compiled module as the kernel)."""
    return cpu_kernel_available()


def _require_module():
    module = kernel_module()
    if module is None:
        raise RuntimeError(f"the ternary CPU kernel is not available: {kernel_status()}")
    return module


def ternarize_calibrated_cpu(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ternarize(weight, "calibrated", "channel")`` as ``(int8 values, float32 scale)``, in one pass.

    Bit for bit the same values and scales as :func:`ternary_hf.ternarize.ternarize` (a radix sort of the
    magnitudes instead of NumPy's sort; same float64 sums), ~10x faster on a MiniLM-size model.

    Raises:
        ValueError: on a non-2-D / non-float32 / empty weight, or NaN / inf in it.
        RuntimeError: if the kernel is not available.
    """
    values, scale = _require_module().ternarize_calibrated(weight.detach().contiguous())
    return values, scale


def prepare_from_values(values: torch.Tensor) -> torch.Tensor:
    """int8 ternary values ``(out, in)`` -> the kernel layout, as ``prepare_weight(pack_ternary(values), in)``."""
    return _require_module().prepare_from_values(values.contiguous())


def fake_quantize_int8_cpu(x: torch.Tensor) -> torch.Tensor:
    """``q(x) * s_x`` for a 2-D float32 ``x``: :func:`ternary_hf.functional.quantize_activations_int8`,
    computed by the kernel's own quantization routine (bit for bit the same)."""
    return _require_module().fake_quantize_int8(x.contiguous())
