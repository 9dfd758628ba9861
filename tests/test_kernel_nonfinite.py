"""NaN and inf reach the output on the kernel path exactly as on the reference torch path (issue 27 item 2).

A corrupt model (a NaN weight scale) or a broken input (a NaN or inf activation) must never turn into
plausible finite embeddings. The per-token int8 quantization is where a NaN used to disappear (a
vector max drops NaN operands, the clamp to +-127 maps NaN to a finite code); every build is checked.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ternary_hf import kernels
from ternary_hf.integrations.modules import TernaryLinear
from ternary_hf.kernels import _build
from ternary_hf.quant.functional import quantize_activations_int8, ternary_linear_reference
from ternary_hf.quant.packing import pack_ternary
from ternary_hf.train.student import FakeTernaryLinear

BAD = [float("nan"), float("inf"), float("-inf")]
M, K, N = 6, 37, 45  # K = 32 (vector body) + 5 (scalar tail); N % 16 != 0 (scalar epilogue tail)


@pytest.fixture(scope="module", params=["avx2", "avx512vnni", "amx", "amx_emulated"])
def build(request: pytest.FixtureRequest):
    """Each compiled build this CPU runs (the pybind module), loaded side by side; the AMX code also
    through its emulated tiles (the test-only build) where the CPU has no AMX."""
    runnable = _build.supported_isas() + (["amx_emulated"] if "avx2" in _build.supported_isas() else [])
    if request.param not in runnable:
        pytest.skip(f"this CPU cannot run the {request.param} build")
    try:
        return _build.load_kernel_variant(request.param)
    except RuntimeError as exc:
        pytest.skip(str(exc))


def _layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    packed = pack_ternary(torch.randint(-1, 2, (N, K), generator=g))
    return packed, kernels.prepare_weight(packed, K), torch.rand(N, generator=g) + 0.1


def _gelu_formula(x: torch.Tensor) -> torch.Tensor:
    """0.5 x (1 + erf(x / sqrt 2)) in float64: +inf -> +inf, -inf -> NaN, NaN -> NaN."""
    x64 = x.double()
    return (0.5 * x64 * (1.0 + torch.erf(x64 / 2**0.5))).float()


def _assert_same_including_nan(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.equal(torch.isnan(y), torch.isnan(ref)), (torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    finite = torch.isfinite(ref)
    if finite.any():
        atol = 1e-6 * float(ref[finite].abs().max())
        torch.testing.assert_close(y[finite], ref[finite], rtol=1e-6, atol=atol)


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("col", [0, 9, 31, 32, 36], ids=lambda c: f"col{c}")
@pytest.mark.parametrize("gelu", [False, True], ids=["plain", "gelu"])
def test_non_finite_input_gives_the_reference_nan_rows(build, bad: float, col: int, gelu: bool) -> None:
    packed, prepared, scale = _layer()
    bias = torch.randn(N)
    x = torch.randn(M, K)
    x[2, col] = bad
    x[4] = bad  # a row that is entirely non-finite
    y = build.ternary_linear(x, prepared, scale, bias, K, N, gelu)
    ref = ternary_linear_reference(x, packed, scale, bias, K, quantize_activations=True)
    if gelu:
        ref = torch.nn.functional.gelu(ref)
    assert torch.isnan(y[2]).all() and torch.isnan(y[4]).all()  # what the reference gives, row for row
    _assert_same_including_nan(y, ref)


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("gelu", [False, True], ids=["plain", "gelu"])
def test_non_finite_weight_scale_propagates_like_the_reference(build, bad: float, per_channel: bool,
                                                                gelu: bool) -> None:
    packed, prepared, scale = _layer(seed=1)
    if not per_channel:
        scale = scale[:1].clone()
    scale[-1] = bad  # per channel: the last column (scalar tail of the epilogue)
    x = torch.randn(M, K)
    x[1] = 0.0  # an all-zero row: 0 * inf is NaN on both paths
    y = build.ternary_linear(x, prepared, scale, None, K, N, gelu)
    ref = ternary_linear_reference(x, packed, scale, None, K, quantize_activations=True)
    assert not torch.isfinite(ref[1, -1]) and not torch.isfinite(y[1, -1])
    if gelu:
        # torch's own GELU of +inf depends on the CPU (+inf on its AVX2 and scalar paths, NaN on AVX-512):
        # the kernel follows the formula in IEEE arithmetic, and is non-finite wherever torch's is
        assert torch.equal(torch.isfinite(y), torch.isfinite(torch.nn.functional.gelu(ref)))
        ref = _gelu_formula(ref)
    _assert_same_including_nan(y, ref)


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_fake_quantization_of_non_finite_rows_equals_the_reference(build, bad: float) -> None:
    x = torch.randn(5, K)
    x[1, 3] = bad
    x[3, 35] = bad
    x[4] = bad
    q, s = quantize_activations_int8(x)
    ref = q * s
    y = build.fake_quantize_int8(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    finite = ~torch.isnan(ref)
    assert torch.equal(y[finite], ref[finite])


def test_ternary_linear_layer_gives_nan_on_the_kernel_path_as_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    if not kernels.cpu_kernel_available():
        pytest.skip(f"kernel cannot build here: {kernels.kernel_status()}")
    layer = TernaryLinear.from_linear(nn.Linear(K, N)).eval()
    x = torch.randn(2, 3, K)
    x[1, 2, 7] = float("nan")
    with torch.no_grad():
        fast = layer(x)
        monkeypatch.setenv("TERNARY_HF_DISABLE_KERNEL", "1")
        slow = layer(x)
    assert torch.isnan(fast[1, 2]).all()
    _assert_same_including_nan(fast, slow)


def test_trainer_layer_gives_nan_on_the_kernel_path_as_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    if not kernels.cpu_kernel_available():
        pytest.skip(f"kernel cannot build here: {kernels.kernel_status()}")
    torch.manual_seed(0)
    layer = FakeTernaryLinear(nn.Linear(K, N), "calibrated", "channel", quantize_activations=True)
    x = torch.randn(4, K)
    x[3, 30] = float("inf")
    with torch.no_grad():
        fast = layer(x)
        monkeypatch.setenv("TERNARY_HF_DISABLE_KERNEL", "1")
        slow = layer(x)
    assert torch.isnan(fast[3]).all()
    _assert_same_including_nan(fast, slow)


@pytest.mark.parametrize("with_zero", [True, False], ids=["with_zero", "no_zero"])
def test_rows_whose_scale_reciprocal_overflows_match_the_reference(build, with_zero: bool) -> None:
    """max|x| < ~2.9e-39: 1 / max|x| is inf, so a zero becomes 0 * inf = NaN on the reference path."""
    packed, prepared, scale = _layer(seed=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(M, K, generator=g)
    x[2] = torch.randn(K, generator=g).sign() * 1e-39 * (torch.rand(K, generator=g) + 0.5)
    x[3] = x[2]
    if with_zero:
        x[2, 5] = 0.0
        x[3, 34] = -0.0  # the scalar tail
    y = build.ternary_linear(x, prepared, scale, None, K, N, False)
    ref = ternary_linear_reference(x, packed, scale, None, K, quantize_activations=True)
    assert bool(torch.isnan(ref[2:4]).all()) is with_zero
    _assert_same_including_nan(y, ref)
    q, s = quantize_activations_int8(x)
    fq, fq_ref = build.fake_quantize_int8(x), q * s
    assert torch.equal(torch.isnan(fq), torch.isnan(fq_ref))
    assert torch.equal(fq[~torch.isnan(fq_ref)], fq_ref[~torch.isnan(fq_ref)])
