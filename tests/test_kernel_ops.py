"""The kernel's ``torch.library`` operators: schema/fake checks (``opcheck``), meta shapes, and
``torch.compile(fullgraph=True)`` of modules that call them, against eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ternary_hf import kernels
from ternary_hf.quant.packing import pack_ternary
from ternary_hf.train.student import FakeTernaryLinear


@pytest.fixture(scope="module")
def kernel_ready() -> None:
    if not kernels.cpu_kernel_available():
        pytest.skip(f"kernel cannot build here: {kernels.kernel_status()}")


def _prepared(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return kernels.prepare_weight(pack_ternary(torch.randint(-1, 2, (n, k), generator=g)), k)


OPS = ["ternary_linear", "ternary_accumulators", "ternarize_calibrated", "prepare_from_values",
       "prepare_int_from_values", "fake_quantize_int8"]


def test_every_entry_point_is_a_registered_operator() -> None:
    for name in OPS:
        assert hasattr(torch.ops.ternary_hf, name), name


@pytest.mark.parametrize(("m", "k", "n"), [(1, 16, 16), (3, 37, 45), (17, 300, 33)])
def test_opcheck_passes(kernel_ready, m: int, k: int, n: int) -> None:
    g = torch.Generator().manual_seed(m + k + n)
    x, prepared = torch.randn(m, k, generator=g), _prepared(n, k, seed=n)
    scale, bias = torch.rand(n, generator=g) + 0.1, torch.randn(n, generator=g)
    ops = torch.ops.ternary_hf
    cases = [
        (ops.ternary_linear.default, (x, prepared, scale, bias, k, n, False)),
        (ops.ternary_linear.default, (x, prepared, scale[:1], None, k, n, True)),
        (ops.ternary_accumulators.default, (x, prepared, k, n)),
        (ops.ternarize_calibrated.default, (torch.randn(n, k, generator=g),)),
        (ops.prepare_from_values.default, (torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8),)),
        (ops.prepare_from_values.default, (torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8), True)),
        (ops.prepare_int_from_values.default, (torch.randint(-7, 8, (n, k), generator=g, dtype=torch.int8), 4)),
        (ops.prepare_int_from_values.default,
         (torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8), 8, True)),
        (ops.fake_quantize_int8.default, (x,)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_meta_tensors_give_the_output_shapes_without_a_kernel() -> None:
    x = torch.empty(5, 37, device="meta")
    prepared = torch.empty(3, 3, 64, dtype=torch.uint8, device="meta")
    y = torch.ops.ternary_hf.ternary_linear(x, prepared, torch.empty(45, device="meta"), None, 37, 45)
    assert y.shape == (5, 45) and y.dtype == torch.float32 and y.device.type == "meta"
    acc = torch.ops.ternary_hf.ternary_accumulators(x, prepared, 37, 45)
    assert acc.shape == (5, 45) and acc.dtype == torch.int32
    values = torch.empty(45, 37, dtype=torch.int8, device="meta")
    assert torch.ops.ternary_hf.prepare_from_values(values).shape == (3, 3, 64)
    assert torch.ops.ternary_hf.prepare_from_values(values, True).shape == (3, 3, 64)
    int4 = torch.ops.ternary_hf.prepare_int_from_values(torch.empty(45, 20, dtype=torch.int8, device="meta"), 4, True)
    assert int4.shape == (2, 3, 256) and int4.dtype == torch.int8
    v, s = torch.ops.ternary_hf.ternarize_calibrated(torch.empty(45, 37, device="meta"))
    assert v.shape == (45, 37) and v.dtype == torch.int8 and s.shape == (45,)
    with pytest.raises(ValueError, match="prepare_weight"):  # the fake checks shapes like the kernel
        torch.ops.ternary_hf.ternary_linear(x, prepared, torch.empty(45, device="meta"), None, 37, 60)


class _TwoLayers(nn.Module):
    """A small module calling the kernel twice through the public API (fused GELU on the first)."""

    def __init__(self, k: int, hidden: int, n: int) -> None:
        super().__init__()
        self.shape = (k, hidden, n)
        self.register_buffer("w1", _prepared(hidden, k, seed=1))
        self.register_buffer("w2", _prepared(n, hidden, seed=2))
        self.register_buffer("s1", torch.rand(hidden) + 0.1)
        self.register_buffer("s2", torch.rand(1) + 0.1)
        self.b1 = nn.Parameter(torch.randn(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, hidden, n = self.shape
        h = kernels.ternary_linear_cpu(x.reshape(-1, k), self.w1, self.s1, self.b1, k, hidden, "gelu")
        y = kernels.ternary_linear_cpu(h * 2.0, self.w2, self.s2, None, hidden, n)  # * 2: exact in float
        return y.reshape(*x.shape[:-1], n)


def test_torch_compile_fullgraph_matches_eager(kernel_ready) -> None:
    module = _TwoLayers(37, 70, 45).eval()
    compiled = torch.compile(module, fullgraph=True)
    with torch.no_grad():
        for shape in [(3, 5, 37), (2, 11, 37)]:  # a second batch shape: re-traced, same results
            x = torch.randn(*shape)
            assert torch.equal(compiled(x), module(x))


def test_torch_compile_of_the_trainer_layer_matches_eager_forward_and_backward(kernel_ready) -> None:
    torch.manual_seed(0)
    layer = FakeTernaryLinear(nn.Linear(37, 45), "calibrated", "channel", quantize_activations=True)
    x = torch.randn(3, 5, 37, requires_grad=True)
    results = []
    for fn in (layer, torch.compile(layer, fullgraph=True)):
        layer.weight.grad = x.grad = None
        y = fn(x)
        y.square().sum().backward()
        results.append((y.detach(), layer.weight.grad.clone(), x.grad.clone()))
    (y_e, gw_e, gx_e), (y_c, gw_c, gx_c) = results
    assert torch.equal(y_c, y_e)  # the forward is the kernel in both: bit-identical
    torch.testing.assert_close(gw_c, gw_e)  # float matmuls of the backward: compiled code may round differently
    torch.testing.assert_close(gx_c, gx_e)
