"""The distillation trainer's CPU fast path: C++ ternarization, layout and fake quantization against their
Python definitions (bit for bit), and the student layer on the kernel against the torch path and the
inference layer."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ternary_hf import Int4Linear, Int8Linear, TernaryLinear, kernels
from ternary_hf.quant.functional import quantize_activations_int8
from ternary_hf.quant.packing import pack_ternary
from ternary_hf.quant.ternarize import ternarize
from ternary_hf.train.student import FakeIntLinear, FakeTernaryLinear, _training_kernels, set_int8_grad_input


@pytest.fixture(scope="module")
def kernel_ready() -> None:
    if not kernels.cpu_kernel_available():
        pytest.skip(f"kernel cannot build here: {kernels.kernel_status()}")


def _weights(rows: int, cols: int, seed: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(rows, cols, generator=g) * 0.05
    if kind == "ties":  # few distinct magnitudes: ties at the threshold, equal sorted values
        return torch.randint(-3, 4, (rows, cols), generator=g).to(torch.float32) * 0.25
    if kind == "heavy":  # outliers and tiny values in one row
        return torch.randn(rows, cols, generator=g) ** 3
    w = torch.randn(rows, cols, generator=g)
    w[0] = 0.0  # an all-zero row
    if rows > 1:
        w[1, :] = -0.0
    return w


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 300), seed=st.integers(0, 10_000),
       kind=st.sampled_from(["gaussian", "ties", "heavy", "zeros"]))
def test_cpp_calibrated_ternarization_equals_the_python_rule_bit_for_bit(kernel_ready, rows, cols, seed, kind):
    w = _weights(rows, cols, seed, kind)
    values, scale = kernels.ternarize_calibrated_cpu(w)
    expected = ternarize(w, "calibrated", "channel")
    assert values.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(values, expected.values)
    assert torch.equal(scale, expected.scale)


def test_cpp_ternarization_on_real_layer_shapes_and_bad_input(kernel_ready):
    for shape in [(384, 384), (1536, 384), (384, 1536), (768, 3072)]:
        w = _weights(*shape, seed=shape[0] + shape[1], kind="gaussian")
        values, scale = kernels.ternarize_calibrated_cpu(w)
        expected = ternarize(w, "calibrated", "channel")
        assert torch.equal(values, expected.values) and torch.equal(scale, expected.scale)
    for bad in (float("nan"), float("inf"), float("-inf")):
        w = torch.randn(20, 30)
        w[7, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            kernels.ternarize_calibrated_cpu(w)
    with pytest.raises(ValueError, match="float32"):
        kernels.ternarize_calibrated_cpu(torch.randn(4, 4, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(1, 1), (16, 16), (17, 33), (384, 1536), (50, 7)])
def test_layout_from_values_equals_the_load_time_layout(kernel_ready, shape):
    values = torch.randint(-1, 2, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(sum(shape)))
    assert torch.equal(kernels.prepare_from_values(values), kernels.prepare_weight(pack_ternary(values), shape[1]))
    transposed = kernels.prepare_weight(pack_ternary(values.t().contiguous()), shape[0])
    assert torch.equal(kernels.prepare_from_values(values, transpose=True), transposed)
    values[0, 0] = 2
    for transpose in (False, True):
        with pytest.raises(ValueError, match="-1, 0 or \\+1"):
            kernels.prepare_from_values(values, transpose)


@pytest.mark.parametrize("shape", [(1, 1), (16, 16), (17, 33), (384, 1536), (50, 7)])
@pytest.mark.parametrize("bits", [4, 8])
def test_int_layout_from_values_equals_the_load_time_layout(kernel_ready, shape, bits):
    # The trainer's one-pass panels of its int4 / int8 layers (and of their transpose, for the input
    # gradient) are exactly the panels the finalized layer is loaded with.
    limit = 7 if bits == 4 else 127
    g = torch.Generator().manual_seed(sum(shape) + bits)
    values = torch.randint(-limit, limit + 1, shape, dtype=torch.int8, generator=g)
    reference = kernels.prepare_int4_weight if bits == 4 else kernels.prepare_int8_weight
    for transpose in (False, True):
        expected = reference(values.t().contiguous() if transpose else values)
        got = kernels.prepare_int_from_values(values, bits, transpose)
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    values[-1, -1] = limit + 1 if bits == 4 else -128
    for transpose in (False, True):
        with pytest.raises(ValueError, match=f"int{bits} values must lie in"):
            kernels.prepare_int_from_values(values, bits, transpose)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        kernels.prepare_int_from_values(values, 2)
    with pytest.raises(ValueError, match="int8 CPU tensor"):
        kernels.prepare_int_from_values(values.to(torch.int16), bits)


def test_fake_quantization_equals_the_reference_rule_bit_for_bit(kernel_ready):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 389, generator=g) * torch.logspace(-6, 3, 64).unsqueeze(1)
    x[5] = 0.0
    x[9, :] = 0.5 * torch.arange(389) / 388 * 127  # exact .5 ties after scaling
    q, s = quantize_activations_int8(x)
    assert torch.equal(kernels.fake_quantize_int8_cpu(x), q * s)


def _layer_pair(in_features: int, out_features: int, bias: bool, seed: int) -> FakeTernaryLinear:
    torch.manual_seed(seed)
    return FakeTernaryLinear(nn.Linear(in_features, out_features, bias=bias), "calibrated", "channel", True)


def test_the_fast_path_is_taken_only_where_the_kernel_computes_the_same_thing(kernel_ready):
    layer = _layer_pair(24, 40, True, 0)
    x = torch.randn(3, 24)
    assert _training_kernels(x, layer) is not None
    assert _training_kernels(x.double(), layer) is None
    float_acts = FakeTernaryLinear(nn.Linear(24, 40), "calibrated", "channel", quantize_activations=False)
    assert _training_kernels(x, float_acts) is None


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method,granularity", [("calibrated", "channel"), ("twn", "tensor"), ("absmean", "channel")])
def test_student_layer_on_the_kernel_equals_the_inference_layer_and_the_torch_gradients(
        kernel_ready, monkeypatch, bias, method, granularity):
    layer = FakeTernaryLinear(nn.Linear(70, 45, bias=bias), method, granularity, True)
    x = (torch.randn(2, 9, 70) * 3).requires_grad_(True)
    grad_out = torch.randn(2, 9, 45)

    out = layer(x)
    out.backward(grad_out)
    fast = (out.detach(), x.grad.clone(), layer.weight.grad.clone(), None if not bias else layer.bias.grad.clone())

    # The forward is the inference layer's, exactly (same kernel, same ternary values and scales).
    inference = TernaryLinear.from_linear(layer.to_linear(), method, granularity, quantize_activations=True)
    assert torch.equal(fast[0], inference(x.detach()))

    # The torch path (what runs without the kernel) gives the same values and gradients up to float rounding.
    x.grad = None
    layer.weight.grad = None
    if bias:
        layer.bias.grad = None
    monkeypatch.setenv("TERNARY_HF_DISABLE_KERNEL", "1")
    assert _training_kernels(x, layer) is None
    ref = layer(x)
    ref.backward(grad_out)
    _assert_close_to_torch_path(fast, ref, x, layer)



def _assert_close_to_torch_path(fast: tuple, ref: torch.Tensor, x: torch.Tensor, layer: nn.Module) -> None:
    """The kernel path's (output, input grad, weight grad[, bias grad]) equal the torch path's up to float
    rounding: ``ref`` and the gradients in ``x`` and ``layer`` after its backward."""
    torch.testing.assert_close(fast[0], ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[2], layer.weight.grad, rtol=1e-5, atol=1e-5)
    if layer.bias is not None:
        torch.testing.assert_close(fast[3], layer.bias.grad, rtol=1e-5, atol=1e-5)

def test_int8_input_gradient_is_the_int8_product_and_leaves_the_weight_gradient_float(kernel_ready):
    layer = _layer_pair(70, 45, True, 1)
    x = (torch.randn(4, 9, 70) * 3).requires_grad_(True)
    grad_out = torch.randn(4, 9, 45)
    grad_out[1, 2] = 0.0  # a padding token: no gradient in, none out
    grads = {}
    for enabled in (False, True):
        assert set_int8_grad_input(layer, enabled) == 1
        x.grad, layer.weight.grad, layer.bias.grad = None, None, None
        layer(x).backward(grad_out)
        grads[enabled] = (x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
    assert torch.equal(grads[True][1], grads[False][1]) and torch.equal(grads[True][2], grads[False][2])
    # by definition: rows of grad_y * s_w quantized to int8 per token, times the ternary matrix
    ternary = ternarize(layer.weight.detach(), "calibrated", "channel")
    q, s = quantize_activations_int8(grad_out.reshape(-1, 45) * ternary.scale.reshape(-1))
    expected = ((q @ ternary.values.float()) * s).reshape(4, 9, 70)
    torch.testing.assert_close(grads[True][0], expected, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(grads[True][0][1, 2]) == 0
    error = (grads[True][0] - grads[False][0]).norm() / grads[False][0].norm()
    assert 0 < error < 0.02


@pytest.mark.parametrize("bits", [4, 8])
def test_int_student_layer_on_the_kernel_equals_the_inference_layer_and_the_torch_gradients(
        kernel_ready, monkeypatch, bits):
    # The int4 / int8 blocks' student layers (FakeIntLinear) run the finalized layer's own product on the
    # kernel, as the ternary ones do: same forward bit for bit, same gradients as the torch path up to float
    # rounding, and with the int8 input gradient the int8 product by definition.
    if not kernels.int8_weights_available():
        pytest.skip("the kernel build here does not multiply int8 weights")
    torch.manual_seed(bits)
    layer = FakeIntLinear(nn.Linear(70, 45), bits, quantize_activations=True)
    x = (torch.randn(2, 9, 70) * 3).requires_grad_(True)
    grad_out = torch.randn(2, 9, 45)
    assert _training_kernels(x, layer) is kernels
    reference = copy.deepcopy(layer)  # the same latent weights and search state, for the torch path

    out = layer(x)
    out.backward(grad_out)
    fast = (out.detach(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
    inference = (Int4Linear if bits == 4 else Int8Linear).from_linear(layer.to_linear(), quantize_activations=True)
    assert torch.equal(fast[0], inference(x.detach()))  # the first forward searched: the finalized rule
    layer.eval()
    assert torch.equal(layer(x.detach()), inference(x.detach()))

    x.grad = None
    monkeypatch.setenv("TERNARY_HF_DISABLE_KERNEL", "1")
    assert _training_kernels(x, reference) is None
    ref = reference(x)
    ref.backward(grad_out)
    _assert_close_to_torch_path(fast, ref, x, reference)
    if bits == 4:
        assert int(layer.forwards) == int(reference.forwards) == 1  # eval forwards are not counted

    monkeypatch.delenv("TERNARY_HF_DISABLE_KERNEL")
    layer.train()
    assert set_int8_grad_input(layer, True) == 1
    x.grad = None
    layer(x).backward(grad_out)
    values = inference.int8_values()
    q, s = quantize_activations_int8(grad_out.reshape(-1, 45) * inference.weight_scale)
    expected = ((q @ values.float()) * s).reshape(2, 9, 70)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)
    error = (x.grad - fast[1]).norm() / fast[1].norm()
    assert 0 < error < 0.02
