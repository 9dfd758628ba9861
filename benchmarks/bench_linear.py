"""Per-layer benchmark of the ternary CPU kernel: every build this CPU runs, side by side with FP32.

Why this script: the kernel is only worth its build step if a ternary layer beats the FP32
``nn.Linear`` it replaces, and each instruction-set build (AVX2, AVX-512 VNNI, AMX-INT8) is only worth
its code if it beats the one below it. For the linear shapes of all-MiniLM-L6-v2 (384x384, 384x1536,
1536x384) and all-mpnet-base-v2 (768x768, 768x3072, 3072x768), at M = 1, 16, 256, 4096 tokens and 1
and 2 threads, it times side by side, interleaved within one run (so a noisy, shared machine hits
every method alike):

* ``fp32``    - ``nn.Linear`` (MKL/oneDNN sgemm), the baseline of every ratio;
* one column per kernel build this CPU runs (``amx``, ``avx512vnni``, ``avx2``, best first; the first
  is what :func:`ternary_hf.kernels.ternary_linear_cpu` uses here), each called directly on the same
  prepared weights (int8 activations x 2-bit weights; bit-identical results);
* ``unpack``  - the reference path that unpacks the 2-bit weights to float and calls ``F.linear``
  on every forward (what transformers' BitNet integration does);
* ``qdyn``    - ``torch.ao.quantization.quantize_dynamic`` int8 ``nn.Linear``;
* with ``--int8``, one more column per build, ``<build>-int8``: the same build on int8 weights
  (``prepare_int8_weight``, the layers of ``TernaryConfig.int8_modules``), e.g. a distilled model's last
  block; with ``--int4``, ``<build>-int4`` on int4 weights (``prepare_int4_weight``, ``int4_modules``),
  and for the AVX2 build ``avx2-int4-fixed``: its int4 tile widening every 2 blocks whatever the rows
  (``_set_int4_reach_cap(2)``), which the per-row reach replaced.

``--activations`` picks the rows of x: ``gaussian`` (default), ``outliers`` (Gaussian with a few channels
20x larger, the shape of a transformer layer's input, whose per-token int8 codes are then mostly small) or
``saturated`` (every |x| equal, so every int8 code is +-127: the int4 tile's worst case).

Each cell is the median over ``--reps`` interleaved rounds; ratios are ``time / fp32 time`` (lower
is better; the target for the best build is <= 0.30 at M >= 256). The column ``best/fp32 min``
compares the fastest round of the best build and of FP32, an estimate of the uncontended ratio when
other processes share the machine (medians then include scheduler stalls, which hit OpenMP-based
FP32 at 2 threads hard). The AMX column appears only on a CPU with ``amx_tile`` and ``amx_int8``.

Usage::

    python benchmarks/bench_linear.py            # full grid (a few minutes on 2 cores)
    python benchmarks/bench_linear.py --quick    # 3 shapes, M in {1, 256}, fewer rounds
    python benchmarks/bench_linear.py --threads 1 --m 256 4096 --shapes 768x3072
    python benchmarks/bench_linear.py --builds avx2   # only some builds
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from _machine import cpu_model
from torch import nn

from ternary_hf.kernels import (
    cpu_kernel_available,
    kernel_status,
    prepare_int4_weight,
    prepare_int8_weight,
    prepare_weight,
)
from ternary_hf.kernels._build import load_kernel_variant, supported_isas
from ternary_hf.quant.functional import ternary_linear_reference
from ternary_hf.quant.int4 import quantize_weight_int4
from ternary_hf.quant.int8 import quantize_weight_int8
from ternary_hf.quant.packing import pack_ternary

SHAPES = ["384x384", "384x1536", "1536x384", "768x768", "768x3072", "3072x768"]  # in x out
QUICK_SHAPES = ["384x1536", "768x768", "3072x768"]
MS = [1, 16, 256, 4096]
BASELINES = ["unpack", "qdyn"]


def ternarize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN-style per-row ternary weights (threshold 0.7 mean|W|) and their per-row scale."""
    absw = weight.abs()
    ternary = torch.sign(weight) * (absw > 0.7 * absw.mean(dim=1, keepdim=True))
    mask = ternary != 0
    scale = (absw * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
    return ternary, scale


def time_call(fn: Callable[[], object], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


ACTIVATIONS = ("gaussian", "outliers", "saturated")


def activations(m: int, in_f: int, kind: str) -> torch.Tensor:
    """Rows of x for one cell (see the module docstring); seeded, so every method gets the same."""
    g = torch.Generator().manual_seed(m * 7919 + in_f)
    x = torch.randn(m, in_f, generator=g)
    if kind == "outliers":
        channels = torch.randperm(in_f, generator=g)[: max(1, in_f // 128)]
        x[:, channels] *= 20.0
    elif kind == "saturated":
        x = torch.sign(x) + (x == 0).float()
    elif kind != "gaussian":
        raise ValueError(f"unknown activations {kind!r}; use one of {', '.join(ACTIVATIONS)}")
    return x


def _has_fixed_int4(builds: dict[str, object]) -> bool:
    """Whether the ``avx2-int4-fixed`` column can be timed (an AVX2 build with the reach cap switch)."""
    return hasattr(builds.get("avx2"), "_set_int4_reach_cap")


def _with_reach_cap(module: object, cap: int, fn: Callable[[], object]) -> object:
    default = module._int4_reach_cap()  # type: ignore[attr-defined]
    module._set_int4_reach_cap(cap)  # type: ignore[attr-defined]
    try:
        return fn()
    finally:
        module._set_int4_reach_cap(default)  # type: ignore[attr-defined]


def bench_cell(
    in_f: int, out_f: int, m: int, reps: int, min_time: float, builds: dict[str, object], int8: bool = False,
    int4: bool = False, kind: str = "gaussian",
) -> dict[str, list[float]]:
    torch.manual_seed(0)
    linear = nn.Linear(in_f, out_f)
    ternary, scale = ternarize(linear.weight.detach())
    packed = pack_ternary(ternary)
    prepared = prepare_weight(packed, in_f)
    bias = linear.bias.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notice
        qdyn = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
    x = activations(m, in_f, kind)
    fns: dict[str, Callable[[], object]] = {"fp32": lambda: linear(x)}
    for name, module in builds.items():
        fns[name] = lambda module=module: module.ternary_linear(x, prepared, scale, bias, in_f, out_f, False)
    if int8:
        values, scale8 = quantize_weight_int8(linear.weight)
        prepared8 = prepare_int8_weight(values)
        for name, module in builds.items():
            fns[f"{name}-int8"] = lambda module=module: module.ternary_linear(x, prepared8, scale8, bias, in_f,
                                                                              out_f, False)
    if int4:
        values4, scale4 = quantize_weight_int4(linear.weight)
        prepared4 = prepare_int4_weight(values4)
        for name, module in builds.items():
            fns[f"{name}-int4"] = lambda module=module: module.ternary_linear(x, prepared4, scale4, bias, in_f,
                                                                              out_f, False)
        if _has_fixed_int4(builds):
            avx2 = builds["avx2"]
            fns["avx2-int4-fixed"] = lambda: _with_reach_cap(
                avx2, 2, lambda: avx2.ternary_linear(x, prepared4, scale4, bias, in_f, out_f, False))
    fns["unpack"] = lambda: ternary_linear_reference(x, packed, scale, bias, in_f, quantize_activations=True)
    fns["qdyn"] = lambda: qdyn(x)
    with torch.inference_mode():
        inner = {}
        for name, fn in fns.items():  # warm up, then pick a repeat count giving >= min_time per sample
            fn()
            once = time_call(fn, 1)
            inner[name] = max(1, min(1000, int(min_time / max(once, 1e-7))))
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                samples[name].append(time_call(fn, inner[name]))
    return samples


def load_builds(names: list[str] | None) -> dict[str, object]:
    """The kernel builds to time, best first: every one this CPU runs, or those named."""
    available = supported_isas()
    chosen = [isa for isa in available if names is None or isa in names]
    missing = sorted(set(names or ()) - set(available))
    if missing:
        raise SystemExit(f"this CPU cannot run the build(s) {', '.join(missing)}; it runs {', '.join(available)}")
    return {isa: load_kernel_variant(isa) for isa in chosen}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 shapes, M in {1, 256}, 5 rounds")
    parser.add_argument("--shapes", nargs="+", default=None, help="in x out, e.g. 768x3072")
    parser.add_argument("--m", nargs="+", type=int, default=None, help="token counts (rows of x)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--reps", type=int, default=None, help="interleaved rounds per cell (median)")
    parser.add_argument("--min-time", type=float, default=0.01, help="seconds per timing sample")
    parser.add_argument("--builds", nargs="+", default=None, help="kernel builds to time (default: all this CPU runs)")
    parser.add_argument("--int8", action="store_true", help="also time every build on int8 weights")
    parser.add_argument("--int4", action="store_true", help="also time every build on int4 weights")
    parser.add_argument("--activations", choices=ACTIVATIONS, default="gaussian",
                        help="rows of x: Gaussian, Gaussian with outlier channels, or every code +-127")
    args = parser.parse_args(argv)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    ms = args.m or ([1, 256] if args.quick else MS)
    reps = args.reps or (5 if args.quick else 7)

    if not cpu_kernel_available():
        raise SystemExit(f"the ternary CPU kernel is not available ({kernel_status()}); nothing to benchmark")
    builds = load_builds(args.builds)
    best = next(iter(builds))
    print(
        f"# machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"# kernel: {kernel_status()}; timed builds (best first): {', '.join(builds)}")
    print(
        f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; median of {reps} interleaved rounds"
    )
    print(f"# activations: {args.activations}")
    print("# ratio = time / fp32 time (lower is better)\n")
    columns = (list(builds) + ([f"{b}-int8" for b in builds] if args.int8 else [])
               + ([f"{b}-int4" for b in builds] if args.int4 else [])
               + (["avx2-int4-fixed"] if args.int4 and _has_fixed_int4(builds) else []))
    build_head = "".join(f" {b} ms | {b}/fp32 |" for b in columns)
    print(f"| layer (in x out) | M | threads | fp32 ms |{build_head} best/fp32 min | unpack/fp32 | qdyn/fp32 |")
    print("|---|---|---|---|" + "---|---|" * len(columns) + "---|---|---|")
    summary: dict[tuple[int, str], list[float]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in shapes:
            in_f, out_f = (int(v) for v in shape.lower().split("x"))
            for m in ms:
                samples = bench_cell(in_f, out_f, m, reps, args.min_time, builds, args.int8, args.int4,
                                     args.activations)
                t = {k: statistics.median(v) for k, v in samples.items()}
                cells = "".join(f" {t[b] * 1e3:.3f} | {t[b] / t['fp32']:.2f} |" for b in columns)
                fastest = min(samples[best]) / min(samples["fp32"])
                if m >= 256:
                    for b in columns:
                        summary.setdefault((threads, b), []).append(t[b] / t["fp32"])
                print(
                    f"| {in_f}x{out_f} | {m} | {threads} | {t['fp32'] * 1e3:.3f} |{cells} {fastest:.2f} | "
                    f"{t['unpack'] / t['fp32']:.2f} | {t['qdyn'] / t['fp32']:.2f} |",
                    flush=True,
                )
    print()
    for (threads, build), ratios in summary.items():
        geo = statistics.geometric_mean(ratios)
        print(
            f"# threads={threads} {build}: time/fp32 at M>=256: geometric mean {geo:.2f}, "
            f"range {min(ratios):.2f}-{max(ratios):.2f} (target <= 0.30)"
        )
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
