"""Tests of the ternary CPU kernel (AVX2 and AVX-512 VNNI builds) against the reference path (quant.functional).

The integer part must be bit-exact (checked through ``kernel_accumulators``); the float output may
differ only by float32 rounding of the epilogue (tolerance documented in ternary_hf.kernels).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import pytest
import torch

from ternary_hf import kernels
from ternary_hf.errors import InvalidInputError
from ternary_hf.kernels import _build
from ternary_hf.quant.functional import quantize_activations_int8, ternary_linear_reference
from ternary_hf.quant.packing import pack_ternary

RTOL = 1e-6


def _toolchain_present() -> bool:
    from torch.utils import cpp_extension

    cap = torch.backends.cpu.get_cpu_capability()
    return (
        shutil.which("c++") is not None
        and cpp_extension.is_ninja_available()
        and (cap.startswith("AVX2") or cap.startswith("AVX512"))
    )


@pytest.fixture(scope="module")
def kernel_ready() -> None:
    if not kernels.cpu_kernel_available():
        if _toolchain_present() and not _build.kernel_disabled():
            pytest.fail(
                f"a compiler, ninja and AVX2 are present but the kernel did not build: {kernels.kernel_status()}"
            )
        pytest.skip(f"kernel cannot build here: {kernels.kernel_status()}")


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request: pytest.FixtureRequest):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def _layer(out_features: int, in_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ternary = torch.randint(-1, 2, (out_features, in_features), generator=g).to(torch.float32)
    return ternary, pack_ternary(ternary)


def _inputs(m: int, k: int, seed: int) -> torch.Tensor:
    """Random rows plus the hard cases: an all-zero row, huge and tiny magnitudes, exact .5 ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 3.0
    if m >= 2:
        x[1] = 0.0
    if m >= 3:
        x[2] = x[2] * 1e30
    if m >= 4:
        x[3] = x[3] * 1e-30
    if m >= 5 and k >= 2:
        # amax 127 makes the scale exactly 1, so k + 0.5 values are true round-half-to-even ties.
        x[4] = torch.arange(k, dtype=torch.float32).remainder(120) + 0.5
        x[4, 0] = 127.0
    if m >= 6:
        x[5] = torch.randint(-2, 3, (k,), generator=g).to(torch.float32) * 1e-3  # many repeats of amax
    return x


def _reference_accumulators(x: torch.Tensor, ternary: torch.Tensor) -> torch.Tensor:
    q, _ = quantize_activations_int8(x)
    return (q.double() @ ternary.double().t()).to(torch.int64)


SHAPES = [  # (M, K, N): odd K (K % 4 != 0, K % 16 != 0), N not a multiple of 16, K > 256 (int16 widening)
    (1, 384, 384),
    (2, 5, 3),
    (3, 37, 45),
    (7, 1030, 100),
    (64, 768, 97),
    (257, 1536, 33),
    (6, 3, 17),
    (13, 257, 16),
]


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_accumulators_match_reference_exactly(kernel_ready, threads, m: int, k: int, n: int) -> None:
    ternary, packed = _layer(n, k, seed=m * 1000 + k)
    x = _inputs(m, k, seed=n)
    acc = kernels.kernel_accumulators(x, kernels.prepare_weight(packed, k), k, n)
    assert acc.dtype == torch.int32
    assert torch.equal(acc.to(torch.int64), _reference_accumulators(x, ternary))


def test_accumulators_exact_at_extreme_codes(kernel_ready) -> None:
    """All weights +1 and activations at +-127 hit the int16 saturation bound (508 per pair)."""
    k, n = 1024 + 12, 20
    ternary = torch.ones(n, k)
    ternary[1::2] = -1.0
    x = torch.full((7, k), 127.0)
    x[1::2] = -127.0
    acc = kernels.kernel_accumulators(x, kernels.prepare_weight(pack_ternary(ternary), k), k, n)
    assert torch.equal(acc.to(torch.int64), _reference_accumulators(x, ternary))


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_output_matches_reference_within_tolerance(
    kernel_ready, threads, m: int, k: int, n: int, per_channel: bool, with_bias: bool
) -> None:
    ternary, packed = _layer(n, k, seed=k + n)
    x = _inputs(m, k, seed=m + 7)
    g = torch.Generator().manual_seed(n)
    scale = torch.rand(n if per_channel else 1, generator=g) + 0.01
    bias = torch.randn(n, generator=g) if with_bias else None
    y = kernels.ternary_linear_cpu(x, kernels.prepare_weight(packed, k), scale, bias, k, n)
    ref = ternary_linear_reference(x, packed, scale, bias, k, quantize_activations=True)
    assert y.shape == (m, n) and y.dtype == torch.float32
    atol = RTOL * ref.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    assert bool(((y - ref).abs() <= atol + RTOL * ref.abs()).all())


def test_large_batch_4096_rows(kernel_ready, threads) -> None:
    m, k, n = 4096, 384, 520  # float output of 8.5 MB: served by the kernel's output pool
    ternary, packed = _layer(n, k, seed=3)
    x = _inputs(m, k, seed=4)
    prepared = kernels.prepare_weight(packed, k)
    acc = kernels.kernel_accumulators(x, prepared, k, n)
    assert torch.equal(acc.to(torch.int64), _reference_accumulators(x, ternary))
    scale = torch.rand(n) + 0.1
    inputs = [x, -0.5 * x]
    # pooled buffers are reused only after release: live outputs never alias
    outputs = [kernels.ternary_linear_cpu(xi, prepared, scale, None, k, n) for xi in inputs]
    assert outputs[0].data_ptr() != outputs[1].data_ptr()
    for xi, y in zip(inputs, outputs, strict=True):
        ref = ternary_linear_reference(xi, packed, scale, None, k, quantize_activations=True)
        torch.testing.assert_close(y, ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()))
    del outputs
    again = kernels.ternary_linear_cpu(x, prepared, scale, None, k, n)  # may reuse a released buffer
    ref = ternary_linear_reference(x, packed, scale, None, k, quantize_activations=True)
    torch.testing.assert_close(again, ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()))


def test_prepare_weight_round_trips_and_keeps_two_bits_per_weight() -> None:
    for n, k in [(1, 1), (17, 5), (45, 37), (384, 1030)]:
        ternary, packed = _layer(n, k, seed=n * k)
        prepared = kernels.prepare_weight(packed, k)
        assert prepared.dtype == torch.uint8
        assert prepared.shape == (-(-n // 16), -(-k // 16), 64)
        assert torch.equal(kernels.prepared_to_ternary(prepared, k, n), ternary)
        assert torch.equal(packed, pack_ternary(ternary))  # input untouched


def test_wrong_prepared_weight_is_rejected_with_a_hint(kernel_ready) -> None:
    _, packed = _layer(20, 40, seed=1)
    prepared = kernels.prepare_weight(packed, 40)
    with pytest.raises(ValueError, match="prepare_weight"):
        kernels.ternary_linear_cpu(torch.randn(2, 40), prepared, torch.ones(20), None, 40, 33)
    with pytest.raises(ValueError, match="shape"):
        kernels.ternary_linear_cpu(torch.randn(2, 41), prepared, torch.ones(20), None, 40, 20)


def test_non_contiguous_input_is_accepted(kernel_ready) -> None:
    ternary, packed = _layer(24, 40, seed=2)
    x = torch.randn(40, 6).t()
    y = kernels.ternary_linear_cpu(x, kernels.prepare_weight(packed, 40), torch.ones(24), None, 40, 24)
    ref = ternary_linear_reference(x.contiguous(), packed, torch.ones(24), None, 40, quantize_activations=True)
    torch.testing.assert_close(y, ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()))


def test_env_var_forces_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERNARY_HF_DISABLE_KERNEL", "1")
    assert kernels.cpu_kernel_available() is False
    assert "disabled" in kernels.kernel_status()
    ternary, packed = _layer(19, 23, seed=5)
    x = _inputs(5, 23, seed=6)
    scale = torch.rand(19) + 0.1
    bias = torch.randn(19)
    y = kernels.ternary_linear_cpu(x, kernels.prepare_weight(packed, 23), scale, bias, 23, 19)
    ref = ternary_linear_reference(x, packed, scale, bias, 23, quantize_activations=True)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)


def test_unavailable_kernel_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setattr(_build, "_cpu_problem", lambda: "the CPU lacks AVX2/FMA (simulated)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernels.cpu_kernel_available() is False
        assert kernels.cpu_kernel_available() is False
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "AVX2" in messages[0] and "reference" in messages[0]
    ternary, packed = _layer(8, 12, seed=7)
    x = torch.randn(3, 12)
    y = kernels.ternary_linear_cpu(x, kernels.prepare_weight(packed, 12), torch.ones(1), None, 12, 8)
    torch.testing.assert_close(y, ternary_linear_reference(x, packed, torch.ones(1), None, 12, True))


def test_object_code_has_no_avx512_instructions(kernel_ready) -> None:
    """The target CPUs have AVX2 only: any EVEX-encoded (AVX-512) instruction would be a SIGILL."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not installed")
    module = _build.load_kernel_variant("avx2")  # the VNNI build is only ever loaded on AVX-512 CPUs
    assert module.__file__
    listing = subprocess.run([objdump, "-d", module.__file__], capture_output=True, text=True, check=True).stdout
    offenders = []
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        code, asm = parts[1].split(), parts[2]
        while code and code[0] in ("66", "67", "f2", "f3", "2e", "3e", "26", "36", "64", "65"):
            code = code[1:]
        if (code and code[0] == "62") or "zmm" in asm or "{%k" in asm:
            offenders.append(line.strip())
    assert not offenders, "AVX-512 encodings in the kernel:\n" + "\n".join(offenders[:10])


@pytest.mark.parametrize("backend", ["helpers", "openmp"])
@pytest.mark.parametrize("decode_panels", [True, False], ids=["shared_decode", "register_decode"])
def test_every_kernel_variant_gives_identical_results(kernel_ready, backend: str, decode_panels: bool) -> None:
    module = _build.kernel_module()
    assert module is not None
    m, k, n = 300, 520, 200  # enough work for 2 threads, several row tiles per block, a row tail
    ternary, packed = _layer(n, k, seed=11)
    x = _inputs(m, k, seed=12)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    module._set_parallel_backend(backend)
    default_decode = module._decode_panels()
    module._set_decode_panels(decode_panels)
    try:
        acc = kernels.kernel_accumulators(x, kernels.prepare_weight(packed, k), k, n)
    finally:
        module._set_parallel_backend("openmp")
        module._set_decode_panels(default_decode)
        torch.set_num_threads(old)
    assert torch.equal(acc.to(torch.int64), _reference_accumulators(x, ternary))


@pytest.mark.parametrize("m", [1, 12, 22])
def test_small_batches_give_identical_results_however_the_threads_split_them(kernel_ready, m: int) -> None:
    """Batch-1 shapes: one thread vs. every call split over two (columns, quantization), bit for bit."""
    from ternary_hf.kernels._build import load_kernel_variant, supported_isas

    k, n = 390, 200  # a k tail, a 16-column panel tail and a 64-column unit tail
    ternary, packed = _layer(n, k, seed=31)
    prepared = kernels.prepare_weight(packed, k)
    x = _inputs(m, k, seed=32)
    scale, bias = torch.rand(n) + 0.5, torch.randn(n)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for module in [load_kernel_variant(isa) for isa in supported_isas()]:
            results = []
            for split in (False, True):
                module._set_min_macs_per_thread(1 if split else 1 << 62)
                module._set_min_quant_elems(1 if split else 1 << 62)
                results.append((module.ternary_accumulators(x, prepared, k, n),
                                module.ternary_linear(x, prepared, scale, bias, k, n, True)))
            (acc_one, y_one), (acc_split, y_split) = results
            assert torch.equal(acc_one.to(torch.int64), _reference_accumulators(x, ternary))
            assert torch.equal(acc_split, acc_one), module.ISA
            assert torch.equal(y_split, y_one), module.ISA
    finally:
        for module in [load_kernel_variant(isa) for isa in supported_isas()]:
            module._set_min_macs_per_thread(1 << 22)
            module._set_min_quant_elems(1 << 18)
        torch.set_num_threads(old)


def test_missing_toolchain_warns_once_but_a_cached_build_still_loads(
    kernel_ready, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setattr(_build, "_toolchain_problem", lambda: "no C++ compiler found (simulated)")
    monkeypatch.setattr(_build, "_state", {})
    assert _build.load_kernel_module() is not None  # the default cache holds this build already
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setenv("TERNARY_HF_KERNEL_CACHE", str(tmp_path))  # fresh machine: empty cache
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert kernels.cpu_kernel_available() is False


def test_concurrent_calls_from_python_threads(kernel_ready) -> None:
    """The kernel releases the GIL; per-thread scratch and the output pool must keep calls apart."""
    from concurrent.futures import ThreadPoolExecutor

    k, n = 300, 1000
    ternary, packed = _layer(n, k, seed=21)
    prepared = kernels.prepare_weight(packed, k)
    inputs = [_inputs(2100 + 7 * i, k, seed=i) for i in range(6)]  # outputs of ~8.5 MB: pooled

    def run(x: torch.Tensor) -> torch.Tensor:
        return (
            kernels.kernel_accumulators(x, prepared, k, n)
            if x.shape[0] % 2
            else kernels.ternary_linear_cpu(x, prepared, torch.ones(1), None, k, n)
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, inputs * 2))
    for x, y in zip(inputs * 2, results, strict=True):
        acc = _reference_accumulators(x, ternary)
        if y.dtype == torch.int32:
            assert torch.equal(y.to(torch.int64), acc)
        else:
            ref = ternary_linear_reference(x, packed, torch.ones(1), None, k, quantize_activations=True)
            torch.testing.assert_close(y, ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()))


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_fused_gelu_matches_torch_gelu_of_the_output(kernel_ready, threads, m: int, k: int, n: int) -> None:
    """The epilogue GELU (odd N exercises the scalar tail) against torch's exact-erf GELU of the plain output."""
    ternary, packed = _layer(n, k, seed=k * 3 + n)
    x = _inputs(m, k, seed=m + 11)
    g = torch.Generator().manual_seed(n + 1)
    scale, bias = torch.rand(n, generator=g) + 0.01, torch.randn(n, generator=g)
    prepared = kernels.prepare_weight(packed, k)
    plain = kernels.ternary_linear_cpu(x, prepared, scale, bias, k, n)
    fused = kernels.ternary_linear_cpu(x, prepared, scale, bias, k, n, activation="gelu")
    ref = torch.nn.functional.gelu(plain)
    assert bool(((fused - ref).abs() <= 1e-6 * (ref.abs() + 1)).all()), (fused - ref).abs().max()


def test_fused_gelu_over_the_whole_real_line(kernel_ready) -> None:
    """Inputs from -1e4 to 1e4 (through the identity layer): tails, zero, and the erf polynomial's range."""
    n = 64
    values = torch.cat([torch.linspace(-10, 10, 4001), torch.tensor([-1e4, -50.0, -9.5, 0.0, 9.5, 50.0, 1e4])])
    bias = torch.zeros(n)
    y = torch.empty(len(values), n)
    prepared = kernels.prepare_weight(pack_ternary(torch.zeros(n, 4)), 4)
    for start in range(0, len(values), n):  # zero weights: the output is the bias, one value per column
        chunk = values[start:start + n]
        bias[: len(chunk)] = chunk
        out = kernels.ternary_linear_cpu(torch.ones(1, 4), prepared, torch.ones(n), bias, 4, n, activation="gelu")
        y[start:start + len(chunk), 0] = out[0, : len(chunk)]
    got, ref = y[:, 0], torch.nn.functional.gelu(values)
    assert bool(((got - ref).abs() <= 1e-6 * (ref.abs() + 1)).all()), (got - ref).abs().max()
    assert torch.isfinite(got).all()


def test_unknown_fused_activation_is_rejected(kernel_ready) -> None:
    _, packed = _layer(8, 8, seed=0)
    with pytest.raises(ValueError, match="cannot be fused"):
        kernels.ternary_linear_cpu(torch.ones(1, 8), kernels.prepare_weight(packed, 8), torch.ones(8), None, 8, 8,
                                   activation="relu")


@pytest.mark.parametrize(("env", "expected"), [(None, "openmp"), ("helpers", "helpers"), ("OpenMP", "openmp")])
def test_parallel_backend_env_var(kernel_ready, env, expected) -> None:
    import sys

    script = ("import warnings, sys\nwarnings.simplefilter('always')\n"
              "from ternary_hf.kernels import _build\nm = _build.kernel_module()\nprint(m._parallel_backend())\n")
    environ = {k: v for k, v in os.environ.items() if k != _build.PARALLEL_ENV}
    if env is not None:
        environ[_build.PARALLEL_ENV] = env
    proc = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == expected
    assert _build.PARALLEL_ENV not in proc.stderr


def test_unknown_parallel_backend_is_refused(kernel_ready, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setenv(_build.PARALLEL_ENV, "threads")
    with pytest.raises(InvalidInputError, match="TERNARY_HF_KERNEL_PARALLEL='threads' is not one of openmp, helpers"):
        _build.load_kernel_module()


# ------------------------------------------------------------------------------------ instruction sets
@pytest.fixture(scope="module")
def vnni_module(kernel_ready):
    if "avx512vnni" not in _build.supported_isas():
        pytest.skip("this CPU has no AVX-512 VNNI (avx512f/bw/vl + avx512_vnni)")
    return _build.load_kernel_variant("avx512vnni")


@pytest.mark.parametrize(("m", "k", "n"), SHAPES + [(300, 520, 200), (4096, 384, 40)])
def test_vnni_build_is_bit_identical_to_the_avx2_build(vnni_module, threads, m: int, k: int, n: int) -> None:
    avx2 = _build.load_kernel_variant("avx2")
    ternary, packed = _layer(n, k, seed=m + 3 * k + n)
    x = _inputs(m, k, seed=k)
    prepared = kernels.prepare_weight(packed, k)
    acc = vnni_module.ternary_accumulators(x, prepared, k, n)
    assert torch.equal(acc.to(torch.int64), _reference_accumulators(x, ternary))
    assert torch.equal(acc, avx2.ternary_accumulators(x, prepared, k, n))
    scale, bias = torch.rand(n) + 0.01, torch.randn(n)
    for gelu in (False, True):
        assert torch.equal(vnni_module.ternary_linear(x, prepared, scale, bias, k, n, gelu),
                           avx2.ternary_linear(x, prepared, scale, bias, k, n, gelu))


def test_vnni_build_exact_at_extreme_codes(vnni_module) -> None:
    k, n = 4096 + 12, 20  # int32 sums far beyond any int16 bound
    ternary = torch.ones(n, k)
    ternary[1::2] = -1.0
    x = torch.full((7, k), 127.0)
    x[1::2] = -127.0
    acc = vnni_module.ternary_accumulators(x, kernels.prepare_weight(pack_ternary(ternary), k), k, n)
    assert torch.equal(acc.to(torch.int64), _reference_accumulators(x, ternary))


def test_vnni_build_is_preferred_when_the_cpu_has_it(vnni_module) -> None:
    assert _build.supported_isas()[0] == "avx512vnni"
    if not os.environ.get(_build.ISA_ENV):
        assert kernels.kernel_isa() == "avx512vnni" and "VNNI" in kernels.kernel_status()


def test_cpu_without_vnni_gets_the_avx2_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_cpu_problem", lambda: None)
    monkeypatch.setattr(_build, "_cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    assert _build.supported_isas() == ["avx2"]
    monkeypatch.setattr(_build, "_variants", {})
    with pytest.raises(RuntimeError, match="lacks avx512f, avx512bw, avx512vl, avx512_vnni"):
        _build.load_kernel_variant("avx512vnni")
    with pytest.raises(ValueError, match="unknown kernel instruction set"):
        _build.load_kernel_variant("neon")


def test_failed_vnni_build_falls_back_to_avx2_with_one_warning(kernel_ready, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _build._try_build
    monkeypatch.setattr(_build, "_cpu_problem", lambda: None)
    monkeypatch.setattr(_build, "supported_isas", lambda: ["avx512vnni", "avx2"])
    monkeypatch.setattr(_build, "_try_build",
                        lambda isa: (None, "simulated compiler error") if isa == "avx512vnni" else real(isa))
    monkeypatch.delenv(_build.ISA_ENV, raising=False)
    monkeypatch.setattr(_build, "_state", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = _build.load_kernel_module()
    assert module is not None and module.ISA == "avx2"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "simulated compiler error" in messages[0] and "AVX2" in messages[0]


@pytest.mark.parametrize("env", ["avx2", "AVX2"])
def test_isa_env_var(kernel_ready, env: str) -> None:
    import sys

    script = ("import warnings\nwarnings.simplefilter('always')\n"
              "from ternary_hf.kernels import _build\nprint(_build.kernel_module().ISA)\n")
    environ = dict(os.environ, **{_build.ISA_ENV: env})
    proc = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "avx2"
    assert _build.ISA_ENV not in proc.stderr


def test_isa_env_var_reference_forces_the_torch_path_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setenv(_build.ISA_ENV, "Reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.cpu_kernel_available() is False
    assert "reference" in kernels.kernel_status() and kernels.kernel_isa() is None


def test_unknown_isa_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setenv(_build.ISA_ENV, "sse4")
    with pytest.raises(InvalidInputError, match="TERNARY_HF_KERNEL_ISA='sse4' is not one of auto, avx2"):
        kernels.cpu_kernel_available()
