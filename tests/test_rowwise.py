"""Embedding-table storage: error bounds per format, row subsets, padding, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ternary_hf.quant.rowwise import (
    EMBEDDING_STORAGES,
    INT4_GROUP_SIZES,
    dequantize_rows,
    int4_group_size,
    quantize_rows,
    storage_shapes,
)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.integers(1, 150), st.sampled_from(EMBEDDING_STORAGES), st.sampled_from(INT4_GROUP_SIZES),
       st.integers(0, 1000))
def test_round_trip_error_is_within_half_a_step(rows, dim, storage, group_size, seed):
    w = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    original = w.clone()
    stored = quantize_rows(w, storage, group_size)
    for name, (shape, dtype) in storage_shapes(rows, dim, storage, group_size).items():
        assert stored[name].shape == shape and stored[name].dtype == dtype
    back = dequantize_rows(stored, storage, dim)
    assert back.shape == w.shape
    assert torch.equal(w, original)
    if storage == "fp16":
        assert torch.allclose(back, w, atol=1e-3, rtol=1e-3)
        return
    # a row narrower than the group is one group of its own (even) width, never padded to the full group
    qmax, group = (127, dim) if storage == "int8" else (7, min(group_size, dim + dim % 2))
    if storage == "int4":
        assert int4_group_size(stored["weight"], stored["weight_scale"]) == group
        assert stored["weight"].shape[1] == -(-dim // group) * group // 2
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
    with pytest.raises(ValueError, match="group size 48 is not one of"):
        quantize_rows(torch.randn(2, 2), "int4", 48)
    stored = quantize_rows(torch.randn(2, 64), "int4", 32)  # 32 bytes and 2 scales per row
    with pytest.raises(ValueError, match="32 bytes per row does not fit 3 scales per row"):
        dequantize_rows({"weight": stored["weight"], "weight_scale": torch.ones(2, 3, dtype=torch.float16)},
                        "int4", 64)


def test_coarser_groups_store_fewer_scales_and_round_no_closer():
    w = torch.randn(200, 384, generator=torch.Generator().manual_seed(0))
    errors = []
    for group_size in INT4_GROUP_SIZES:
        stored = quantize_rows(w, "int4", group_size)
        assert stored["weight_scale"].shape == (200, 384 // group_size)
        errors.append(float((dequantize_rows(stored, "int4", 384) - w).norm()))
    assert errors == sorted(errors)  # every group of 2g columns is two groups of g with one shared scale


@pytest.mark.parametrize("dim", [384, 50, 33])
@pytest.mark.parametrize("group_size", [32, 64])
def test_byte_table_gather_equals_nibble_unpacking(dim, group_size):
    from ternary_hf.quant.rowwise import gather_int4_rows

    gen = torch.Generator().manual_seed(dim)
    stored = quantize_rows(torch.randn(97, dim, generator=gen), "int4", group_size)
    index = torch.randint(0, 97, (3, 11), generator=gen)
    expected = dequantize_rows({k: v[index] for k, v in stored.items()}, "int4", dim)
    got = gather_int4_rows(stored["weight"], stored["weight_scale"], index, dim)
    assert got.shape == (3, 11, dim)
    assert torch.equal(got, expected)
    assert torch.equal(gather_int4_rows(stored["weight"], stored["weight_scale"], index, dim, torch.bfloat16),
                       expected.to(torch.bfloat16))


def test_quantized_embedding_gives_the_same_rows_for_few_and_many_ids():
    from ternary_hf.integrations import modules

    table = torch.nn.Embedding(5000, 130)  # 2.6 MB in float32: above the kept-float-copy size
    emb = modules.QuantizedEmbedding.from_embedding(table, "int4")
    ids = torch.randint(0, 5000, (4, 2 * modules._FEW_IDS))
    many = emb(ids)  # the op-by-op path
    few = torch.cat([emb(row[: modules._FEW_IDS // 2].unsqueeze(0)) for row in ids])  # the byte-table path
    assert torch.equal(few, many[:, : modules._FEW_IDS // 2])
