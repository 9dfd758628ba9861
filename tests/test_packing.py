"""The 2-bit on-disk layout: exact round trips, the documented bit positions, and corrupt input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ternary_hf.quant.packing import pack_ternary, packed_shape, unpack_ternary

shapes = st.tuples(st.integers(0, 9), st.integers(0, 37))


@st.composite
def ternary_matrices(draw):
    rows, cols = draw(shapes)
    values = draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=rows * cols, max_size=rows * cols))
    dtype = draw(st.sampled_from([torch.int8, torch.int32, torch.float32, torch.float16, torch.bfloat16]))
    return torch.tensor(values, dtype=torch.int8).reshape(rows, cols).to(dtype)


@settings(max_examples=200, deadline=None)
@given(ternary_matrices())
def test_pack_unpack_round_trip_is_exact(t):
    original = t.clone()
    packed = pack_ternary(t)
    assert packed.dtype == torch.uint8
    assert tuple(packed.shape) == packed_shape(*t.shape)
    assert torch.equal(unpack_ternary(packed, t.shape[1]), t.to(torch.int8))
    assert torch.equal(t, original), "pack_ternary must not modify its input"


@settings(max_examples=100, deadline=None)
@given(ternary_matrices())
def test_padding_decodes_to_zero_code(t):
    rows, cols = t.shape
    packed = pack_ternary(t)
    if cols % 4 and rows:
        codes = torch.stack([(packed[:, -1] >> s) & 3 for s in (0, 2, 4, 6)], dim=-1)
        assert bool((codes[:, cols % 4 :] == 1).all())


def test_documented_bit_positions():
    # values -1, 0, +1, +1 -> codes 0, 1, 2, 2 at bit offsets 0, 2, 4, 6
    packed = pack_ternary(torch.tensor([[-1, 0, 1, 1, 1]]))
    assert packed.tolist() == [[0b10_10_01_00, 0b01_01_01_10]]


def test_all_zero_rows():
    packed = pack_ternary(torch.zeros(3, 10))
    assert bool((packed == 0b01010101).all())
    assert bool((unpack_ternary(packed, 10) == 0).all())


@pytest.mark.parametrize("bad", [2.0, 0.5, -3.0, float("nan"), float("inf")])
def test_pack_rejects_non_ternary_values(bad):
    t = torch.zeros(2, 5)
    t[1, 3] = bad
    with pytest.raises(ValueError):
        pack_ternary(t)


def test_pack_rejects_wrong_rank():
    with pytest.raises(ValueError, match="2-D"):
        pack_ternary(torch.zeros(4))


def test_unpack_rejects_invalid_code_and_bad_shapes():
    packed = pack_ternary(torch.zeros(2, 8))
    corrupt = packed.clone()
    corrupt[1, 0] = 0b11
    with pytest.raises(ValueError, match="corrupt"):
        unpack_ternary(corrupt, 8)
    with pytest.raises(ValueError, match="bytes per row"):
        unpack_ternary(packed, 13)
    with pytest.raises(ValueError, match="uint8"):
        unpack_ternary(packed.to(torch.int8), 8)
