"""Embedding-table storage: error bounds per format, row subsets, padding, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ternary_hf.quant.rowwise import EMBEDDING_STORAGES, dequantize_rows, quantize_rows, storage_shapes


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 70), st.sampled_from(EMBEDDING_STORAGES), st.integers(0, 1000))
def test_round_trip_error_is_within_half_a_step(rows, dim, storage, seed):
    w = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    original = w.clone()
    stored = quantize_rows(w, storage)
    for name, (shape, dtype) in storage_shapes(rows, dim, storage).items():
        assert stored[name].shape == shape and stored[name].dtype == dtype
    back = dequantize_rows(stored, storage, dim)
    assert back.shape == w.shape
    assert torch.equal(w, original)
    if storage == "fp16":
        assert torch.allclose(back, w, atol=1e-3, rtol=1e-3)
        return
    qmax, group = (127, dim) if storage == "int8" else (7, 32)
    padded = torch.nn.functional.pad(w, (0, -dim % group)).view(rows, -1, group)
    step = (padded.abs().amax(-1, keepdim=True) / qmax).expand_as(padded).reshape(rows, -1)[:, :dim]
    assert bool(((back - w).abs() <= step * 0.5 * 1.01 + 1e-6).all())


@pytest.mark.parametrize("storage", EMBEDDING_STORAGES)
def test_gathered_rows_equal_full_table_rows(storage):
    w = torch.randn(20, 45)
    stored = quantize_rows(w, storage)
    full = dequantize_rows(stored, storage, 45)
    idx = torch.tensor([[3, 3, 19], [0, 7, 2]])
    subset = dequantize_rows({k: v[idx] for k, v in stored.items()}, storage, 45)
    assert torch.equal(subset, full[idx])


def test_zero_rows_and_bad_input():
    w = torch.zeros(3, 40)
    for storage in EMBEDDING_STORAGES:
        assert torch.equal(dequantize_rows(quantize_rows(w, storage), storage, 40), w)
    w = torch.randn(3, 4)
    w[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize_rows(w, "int8")
    with pytest.raises(ValueError, match="int4"):
        quantize_rows(torch.randn(2, 2), "int2")
