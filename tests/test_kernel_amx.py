"""The AMX-INT8 build (issue 29 item 1): its tiling logic against the AVX2 / VNNI builds, its detection,
selection and fallback.

Where the CPU has no AMX (the development machine: AMD Zen 4), the real tile instructions are never
executed: the test-only ``amx_emulated`` build runs the very same C++ with tileloadd / tdpbsud /
tilestored replaced by a scalar emulation (kernels/amx_tiles.h), which also rejects tile shapes real
hardware would reject. The real AMX build is compiled and inspected here, and run only on a CPU with
``amx_tile`` and ``amx_int8``.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest
import torch

from ternary_hf import kernels
from ternary_hf.kernels import _build
from ternary_hf.quant.functional import quantize_activations_int8
from ternary_hf.quant.packing import pack_ternary

# M = 1, 3, 17, 64 rows (one tile, a partial tile, two row tiles with a tail, full pairs); K not a
# multiple of 64 (nor of 16 for some: padded tiles); N not a multiple of 16 (single panels, pairs).
SHAPES = [(m, k, n) for m in (1, 3, 17, 64) for k, n in ((37, 45), (100, 3), (1030, 100), (384, 200))]


def _runnable(isa: str):
    if isa not in _build.supported_isas() and not (isa in _build.TEST_CFLAGS and "avx2" in _build.supported_isas()):
        pytest.skip(f"this CPU cannot run the {isa} build")
    try:
        return _build.load_kernel_variant(isa)
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def amx_builds():
    """The AMX builds that can run here: the emulated one everywhere, the real one on AMX CPUs."""
    builds = [_runnable("amx_emulated")]
    if "amx" in _build.supported_isas():
        builds.append(_build.load_kernel_variant("amx"))
    return builds


@pytest.fixture(scope="module")
def other_builds():
    return [_build.load_kernel_variant(isa) for isa in ("avx2", "avx512vnni") if isa in _build.supported_isas()]


def _case(m: int, k: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ternary = torch.randint(-1, 2, (n, k), generator=g)
    x = torch.randn(m, k, generator=g) * 3.0
    if m > 2:
        x[1] = 0.0
        x[2] *= 1e-30
    return ternary, kernels.prepare_weight(pack_ternary(ternary), k), x


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_amx_int32_sums_are_bit_identical_to_the_other_builds(amx_builds, other_builds, m, k, n) -> None:
    ternary, prepared, x = _case(m, k, n, seed=m * 7 + k + n)
    q, _ = quantize_activations_int8(x)
    reference = (q.double() @ ternary.double().t()).to(torch.int32)
    scale, bias = torch.rand(n) + 0.01, torch.randn(n)
    for amx in amx_builds:
        acc = amx.ternary_accumulators(x, prepared, k, n)
        assert torch.equal(acc, reference), amx.ISA
        for other in other_builds:
            assert torch.equal(acc, other.ternary_accumulators(x, prepared, k, n)), (amx.ISA, other.ISA)
            for gelu in (False, True):  # the shared epilogue: float outputs bit-identical too
                assert torch.equal(amx.ternary_linear(x, prepared, scale, bias, k, n, gelu),
                                   other.ternary_linear(x, prepared, scale, bias, k, n, gelu))


@pytest.mark.parametrize("threads", [1, 2])
def test_amx_work_split_over_threads_is_exact(amx_builds, threads: int) -> None:
    m, k, n = 70, 520, 300  # several column units, two row pairs and a tail per unit
    ternary, prepared, x = _case(m, k, n, seed=5)
    q, _ = quantize_activations_int8(x)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for amx in amx_builds:
            acc = amx.ternary_accumulators(x, prepared, k, n)
            assert torch.equal(acc.long(), (q.double() @ ternary.double().t()).long())
    finally:
        torch.set_num_threads(old)


def test_amx_exact_at_extreme_codes(amx_builds) -> None:
    k, n = 4096 + 12, 20  # int32 sums far beyond any int16 bound, 65 k chunks with a padded one
    ternary = torch.ones(n, k)
    ternary[1::2] = -1.0
    x = torch.full((7, k), 127.0)
    x[1::2] = -127.0
    prepared = kernels.prepare_weight(pack_ternary(ternary), k)
    q, _ = quantize_activations_int8(x)
    for amx in amx_builds:
        acc = amx.ternary_accumulators(x, prepared, k, n)
        assert torch.equal(acc.long(), (q.double() @ ternary.double().t()).long())


def test_the_real_amx_build_compiles_with_tile_instructions() -> None:
    """Compiled (and imported, which runs none of its code) on any x86-64 machine with a new enough compiler."""
    if "avx2" not in _build.supported_isas() or _build._toolchain_problem() is not None:
        pytest.skip("no AVX2 CPU or no C++ toolchain")
    module = _build.build_variant("amx")
    assert module.ISA == "amx"
    objdump = shutil.which("objdump")
    if objdump is not None:
        listing = subprocess.run([objdump, "-d", module.__file__], capture_output=True, text=True, check=True).stdout
        for instruction in ("ldtilecfg", "tileloadd", "tdpbsud", "tilestored", "tilerelease"):
            assert instruction in listing, instruction
    # The OS permission request is safe to make anywhere; it is granted exactly where AMX runs.
    refused = module._amx_permission()
    assert (refused == "") is ("amx" in _build.supported_isas()), refused


def test_amx_is_preferred_and_a_refused_amx_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_cpu_problem", lambda: None)
    flags = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"}
    monkeypatch.setattr(_build, "_cpu_flags", lambda: flags)
    assert _build.supported_isas() == ["amx", "avx512vnni", "avx2"]
    monkeypatch.setattr(_build, "_cpu_flags", lambda: flags - {"amx_int8"})
    assert _build.supported_isas() == ["avx512vnni", "avx2"]

    tried: list[str] = []

    def fake_try_build(isa: str):
        tried.append(isa)
        return (None, "the OS refused the AMX tile state: simulated") if isa == "amx" else (object(), None)

    monkeypatch.setattr(_build, "_try_build", fake_try_build)
    monkeypatch.setattr(_build, "_apply_parallel_setting", lambda module: None)
    monkeypatch.setattr(_build, "_cpu_flags", lambda: flags)
    monkeypatch.delenv(_build.ISA_ENV, raising=False)
    monkeypatch.setattr(_build, "_state", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _build.load_kernel_module() is not None
    assert tried == ["amx", "avx512vnni"]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "simulated" in messages[0] and "AVX-512 VNNI" in messages[0]


@pytest.mark.parametrize("isa", ["amx", "avx512vnni", "avx2"])
def test_isa_variable_forces_each_build(monkeypatch: pytest.MonkeyPatch, isa: str) -> None:
    monkeypatch.setattr(_build, "_cpu_problem", lambda: None)
    monkeypatch.setattr(_build, "_cpu_flags", lambda: {"avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                                                       "amx_tile", "amx_int8"})
    monkeypatch.setenv(_build.ISA_ENV, isa.upper())
    assert _build._requested_isas() == [isa]


def test_forcing_amx_on_a_cpu_without_it_warns_and_uses_the_best_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_cpu_problem", lambda: None)
    monkeypatch.setattr(_build, "_cpu_flags", lambda: {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"})
    monkeypatch.setenv(_build.ISA_ENV, "amx")
    with pytest.warns(RuntimeWarning, match="TERNARY_HF_KERNEL_ISA='amx' but this CPU lacks it"):
        assert _build._requested_isas() == ["avx512vnni", "avx2"]
    monkeypatch.setattr(_build, "_variants", {})
    with pytest.raises(RuntimeError, match="lacks amx_tile, amx_int8"):
        _build.load_kernel_variant("amx")


def test_the_emulated_build_is_never_selected_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "amx_emulated" not in _build.supported_isas() and "amx_emulated" not in _build.ISA_CHOICES
    monkeypatch.setenv(_build.ISA_ENV, "amx_emulated")
    with pytest.raises(ValueError, match="is not one of"):
        _build._requested_isas()


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_the_team_forward_of_the_amx_build_equals_the_avx2_build(amx_builds, tiny_model_dirs, kind):
    # The whole encoder in one kernel call at batch 1 and 2 threads (the team forward): AMX GEMM units
    # (one unit spans all rows) shared by the threads of the team give the same bits as the AVX2 build,
    # whose attention / LayerNorm code the AMX build shares (both are compiled without AVX-512), and as
    # the AMX build's own op-by-op forward.
    from conftest import native_encoder_forward, tiny_inputs
    from transformers import AutoModel

    from ternary_hf import TernaryConfig

    if "avx2" not in _build.supported_isas():
        pytest.skip("the AVX2 build does not run here")
    avx2 = _build.load_kernel_variant("avx2")
    model = AutoModel.from_pretrained(tiny_model_dirs[kind], quantization_config=TernaryConfig()).eval()
    engine = model._ternary_fast_forward
    with torch.inference_mode():
        model(**tiny_inputs(kind, batch=1))
    x = torch.randn(21, model.config.hidden_size, generator=torch.Generator().manual_seed(3))

    def forward(module, team: bool) -> torch.Tensor:
        module._set_team_forward(team)
        try:
            return native_encoder_forward(module, engine, x)
        finally:
            module._set_team_forward(True)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        reference = forward(avx2, False)
        for module in amx_builds:
            runs = module._team_forward_count()
            assert torch.equal(forward(module, True), reference)
            assert module._team_forward_count() == runs + 1
            assert torch.equal(forward(module, False), reference)
    finally:
        torch.set_num_threads(threads)
