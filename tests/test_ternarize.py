"""Ternarization rules: their definitions, optimality of the calibrated rule, and edge values."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ternary_hf.quant.ternarize import (
    SCALE_GRANULARITIES,
    THRESHOLD_METHODS,
    dequantize_ternary,
    reconstruction_error,
    ternarize,
)


def _weights(seed: int, rows: int = 7, cols: int = 29, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.logspace(-2, 1, rows).unsqueeze(1)
    return w.to(dtype)


@pytest.mark.parametrize("method", THRESHOLD_METHODS)
@pytest.mark.parametrize("granularity", SCALE_GRANULARITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_values_are_ternary_and_scales_shaped(method, granularity, dtype):
    w = _weights(0, dtype=dtype)
    original = w.clone()
    t = ternarize(w, method, granularity)
    assert t.values.dtype == torch.int8 and t.values.shape == w.shape
    assert set(t.values.unique().tolist()) <= {-1, 0, 1}
    assert t.scale.dtype == torch.float32
    assert t.scale.shape == ((w.shape[0],) if granularity == "channel" else (1,))
    assert torch.equal(w, original), "ternarize must not modify its input"
    # signs are kept where a value survives
    nz = t.values != 0
    assert torch.equal(torch.sign(w.float())[nz], t.values[nz].float())


def test_twn_rule_matches_definition():
    w = _weights(1)
    t = ternarize(w, "twn", "channel")
    for r in range(w.shape[0]):
        mag = w[r].abs()
        delta = 0.7 * mag.mean()
        mask = mag > delta
        assert torch.equal(t.values[r] != 0, mask)
        assert torch.isclose(t.scale[r], mag[mask].mean())


def test_paper_rule_is_per_tensor_mean_threshold_and_double_mean_scale():
    w = _weights(2)
    t = ternarize(w, "paper", "tensor")
    mean = w.abs().mean()
    assert torch.equal(t.values != 0, w.abs() > mean)
    assert torch.isclose(t.scale[0], 2 * mean)


def test_absmean_rule_matches_bitnet():
    w = _weights(3)
    t = ternarize(w, "absmean", "tensor")
    gamma = w.abs().mean()
    assert torch.equal(t.values, torch.round(w / gamma).clamp(-1, 1).to(torch.int8))
    assert torch.isclose(t.scale[0], gamma)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 40))
def test_calibrated_rule_is_least_squares_optimal(seed, rows, cols):
    w = _weights(seed, rows, cols)
    best = ternarize(w, "calibrated", "channel")
    best_err = ((w - best.dequantize()) ** 2).sum(dim=1)
    # no other rule does better on any row ...
    for method in ("twn", "absmean", "paper"):
        other = ternarize(w, method, "channel")
        assert bool((best_err <= ((w - other.dequantize()) ** 2).sum(dim=1) + 1e-5).all())
    # ... nor does any other "keep the k largest" mask with its optimal scale
    mag, _ = w.abs().sort(dim=1, descending=True)
    for k in range(1, cols + 1):
        s = mag[:, :k].sum(dim=1)
        err_k = (w**2).sum(dim=1) - s * s / k
        assert bool((best_err <= err_k + 1e-4 * (w**2).sum(dim=1) + 1e-6).all())


@pytest.mark.parametrize("method", THRESHOLD_METHODS)
def test_all_zero_rows_give_zero_values_and_scale(method):
    w = _weights(4)
    w[2] = 0
    t = ternarize(w, method, "channel")
    assert bool((t.values[2] == 0).all()) and float(t.scale[2]) == 0.0
    assert torch.isfinite(t.scale).all()
    z = ternarize(torch.zeros(3, 5), method, "tensor")
    assert bool((z.values == 0).all()) and float(z.scale[0]) == 0.0
    assert reconstruction_error(torch.zeros(3, 5), z) == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_rejected(bad):
    w = _weights(5)
    w[0, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        ternarize(w)


def test_bad_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="twn"):
        ternarize(_weights(0), "median")
    with pytest.raises(ValueError, match="channel"):
        ternarize(_weights(0), "twn", "row")
    with pytest.raises(ValueError, match="2-D"):
        ternarize(torch.zeros(3))
    with pytest.raises(ValueError, match="floating"):
        ternarize(torch.zeros(3, 3, dtype=torch.int32))


def test_dequantize_broadcasts_per_channel_scale():
    values = torch.tensor([[1, 0, -1], [1, 1, 0]], dtype=torch.int8)
    scale = torch.tensor([2.0, 0.5])
    assert torch.equal(dequantize_ternary(values, scale), torch.tensor([[2.0, 0, -2], [0.5, 0.5, 0]]))
    assert torch.equal(dequantize_ternary(values, torch.tensor([3.0]))[1], torch.tensor([3.0, 3.0, 0]))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8), st.integers(1, 300), st.booleans())
def test_calibrated_threshold_numpy_route_equals_torch_route(seed, rows, cols, with_ties):
    # The CPU route sorts with NumPy (speed); it must give the very thresholds of the torch route,
    # including ties, repeated values and all-zero rows.
    from ternary_hf.quant.ternarize import _calibrated_threshold_numpy, _calibrated_threshold_torch

    mag = _weights(seed, rows, cols).abs()
    if with_ties:
        mag = torch.round(mag * 4) / 4  # few distinct values: ties everywhere, zeros included
        mag[0] = 0.0
    expected = _calibrated_threshold_torch(mag)
    got = _calibrated_threshold_numpy(mag)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert torch.equal(got, expected)
