"""TernaryLinear / QuantizedEmbedding on their own: the math they compute and what they leave alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ternary_hf.integrations.modules import QuantizedEmbedding, TernaryLinear
from ternary_hf.quant.functional import quantize_activations_int8
from ternary_hf.quant.ternarize import ternarize


@pytest.fixture(autouse=True)
def _reference_path(monkeypatch):
    monkeypatch.setenv("TERNARY_HF_DISABLE_KERNEL", "1")


@pytest.mark.parametrize("in_features, out_features", [(16, 8), (37, 5), (1, 3)])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_float_activation_forward_is_scale_times_ternary(in_features, out_features, granularity):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    before = linear.weight.detach().clone()
    layer = TernaryLinear.from_linear(linear, "twn", granularity, quantize_activations=False)
    assert torch.equal(linear.weight, before), "from_linear must not modify the source layer"
    t = ternarize(linear.weight, "twn", granularity)
    x = torch.randn(4, 3, in_features)
    x_copy = x.clone()
    expected = x @ t.dequantize().t() + linear.bias
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.equal(x, x_copy), "forward must not modify its input"
    assert torch.allclose(layer.to_linear()(x), expected, atol=1e-5)


def test_int8_activation_forward_matches_integer_formula():
    torch.manual_seed(1)
    linear = nn.Linear(50, 7)
    layer = TernaryLinear.from_linear(linear, "calibrated", "channel", quantize_activations=True)
    x = torch.randn(9, 50) * 3
    x[2] = 0  # an all-zero token
    q, s = quantize_activations_int8(x)
    assert bool((q.abs() <= 127).all()) and bool((q == q.round()).all())
    t = layer.ternary_values().to(torch.int64)
    acc = q.to(torch.int64) @ t.t()  # exact integer accumulators
    expected = acc.to(torch.float32) * s * layer.weight_scale + linear.bias
    assert torch.allclose(layer(x), expected, atol=1e-5, rtol=1e-6)
    assert torch.equal(layer(x)[2], linear.bias.detach())


def test_weight_is_packed_uint8_buffer_and_shape_checked():
    layer = TernaryLinear(10, 4)
    assert layer.weight.dtype == torch.uint8 and tuple(layer.weight.shape) == (4, 3)
    assert "weight" in dict(layer.named_buffers())
    with pytest.raises(ValueError, match="does not fit"):
        layer.quantize_weight(torch.randn(4, 11))


@pytest.mark.parametrize("storage", ["fp16", "int8", "int4"])
def test_quantized_embedding_looks_up_dequantized_rows(storage):
    torch.manual_seed(2)
    emb = nn.Embedding(30, 40, padding_idx=0)
    q = QuantizedEmbedding.from_embedding(emb, storage)
    ids = torch.tensor([[1, 0, 29], [5, 5, 2]])
    full = q.dequantized_weight()
    assert torch.equal(q(ids), full[ids])
    tol = {"fp16": 1e-3, "int8": 0.02, "int4": 0.3}[storage]
    assert (q(ids) - emb(ids)).abs().max() < tol * emb.weight.abs().max()
    back = q.to_embedding()
    assert torch.equal(back(ids), q(ids)) and back.padding_idx == 0


@pytest.mark.parametrize("value, kernel_used", [("1", False), ("true", False), ("yes", False), ("0", True),
                                                ("", True), ("false", True)])
def test_the_disable_variable_is_read_as_the_kernels_read_it(monkeypatch, value, kernel_used):
    from ternary_hf import kernels

    monkeypatch.delenv("TERNARY_HF_DISABLE_KERNEL", raising=False)
    if not kernels.cpu_kernel_available():
        pytest.skip("no CPU kernel on this machine")
    calls = []
    original = kernels.ternary_linear_cpu
    monkeypatch.setattr(kernels, "ternary_linear_cpu", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setenv("TERNARY_HF_DISABLE_KERNEL", value)
    torch.manual_seed(0)
    layer = TernaryLinear.from_linear(torch.nn.Linear(16, 8))
    with torch.no_grad():
        layer(torch.randn(3, 16))
    assert bool(calls) is kernel_used
    assert kernels.cpu_kernel_available() is kernel_used
