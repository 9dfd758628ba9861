"""How close the ternary GEMM is to what this CPU can do: ``python benchmarks/bench_peak.py``.

Why this script: issue 5 asks for 3x FP32 end to end and <= 0.30x FP32 per layer. Whether that is a
question of tuning or out of reach on a given CPU depends on two peaks: the rate at which the core
retires the ternary kernel's inner step (``vpmaddubsw`` + ``vpaddw`` on int16 accumulators, AVX2, no
VNNI) and the rate at which it retires FP32 FMAs (what MKL's sgemm is built on). Their ratio is the
best time ratio any ``vpmaddubsw`` kernel can reach against an sgemm running at its own peak.

It measures, side by side in one process on one thread:

1. ``int8 peak`` -- a register-only loop of the kernel's 6x16 tile step (12 ``vpmaddubsw`` + 12
   ``vpaddw`` per 384 multiply-accumulates, independent accumulators, operands in registers), and the
   same multiplies without the adds (the bound a fused multiply-add such as AVX-VNNI would approach);
2. ``fp32 peak`` -- a register-only loop of 12 independent ``vfmadd231ps`` chains (96 MACs);
3. ``sgemm`` -- ``torch.mm`` (MKL / oneDNN) on a 4096 x K x N problem of each model shape;
4. ``ours`` -- :func:`ternary_hf.kernels.ternary_linear_cpu` on the same problem.

and prints each as GMAC/s and as a fraction of its peak, plus the bound ``fp32 peak / int8 peak``.
The loops are compiled on the fly with ``torch.utils.cpp_extension.load_inline`` (``-O2 -mavx2
-mfma``); they need an AVX2 CPU and a C++ compiler, like the kernel itself.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _machine import cpu_model, load_avg

_SOURCE = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdint>

// Returns seconds for `iters` iterations; every iteration is 384 int8 MACs.
double int8_tile_loop(int64_t iters) {
  __m256i w0 = _mm256_set1_epi8(1), w1 = _mm256_set1_epi8(2);
  __m256i a0 = _mm256_set1_epi8(3), a1 = _mm256_set1_epi8(-4), a2 = _mm256_set1_epi8(5);
  __m256i a3 = _mm256_set1_epi8(-6), a4 = _mm256_set1_epi8(7), a5 = _mm256_set1_epi8(-8);
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i) {
#define STEP(r)                                                    \
    c##r##0 = _mm256_add_epi16(c##r##0, _mm256_maddubs_epi16(w0, a##r)); \
    c##r##1 = _mm256_add_epi16(c##r##1, _mm256_maddubs_epi16(w1, a##r)); \
    __asm__("" : "+x"(c##r##0), "+x"(c##r##1));
    STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5)
#undef STEP
    __asm__("" : "+x"(w0), "+x"(w1));
  }
  auto t1 = std::chrono::steady_clock::now();
  __m256i s = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(c00, c01), _mm256_add_epi16(c10, c11)),
                               _mm256_add_epi16(_mm256_add_epi16(c20, c21), _mm256_add_epi16(c30, c31)));
  s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_add_epi16(c40, c41), _mm256_add_epi16(c50, c51)));
  volatile int sink = _mm256_extract_epi16(s, 0);
  (void)sink;
  return std::chrono::duration<double>(t1 - t0).count();
}

// The same 12 vpmaddubsw per iteration without the vpaddw accumulation (results kept live): the
// multiply's own issue limit, i.e. what a fused multiply-add (AVX-VNNI vpdpbusd) would approach.
double int8_maddubs_only_loop(int64_t iters) {
  __m256i w0 = _mm256_set1_epi8(1), w1 = _mm256_set1_epi8(2);
  __m256i a0 = _mm256_set1_epi8(3), a1 = _mm256_set1_epi8(-4), a2 = _mm256_set1_epi8(5);
  __m256i a3 = _mm256_set1_epi8(-6), a4 = _mm256_set1_epi8(7), a5 = _mm256_set1_epi8(-8);
  __m256i p00, p01, p10, p11, p20, p21, p30, p31, p40, p41, p50, p51;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i) {
#define STEP(r)                                      \
    p##r##0 = _mm256_maddubs_epi16(w0, a##r);        \
    p##r##1 = _mm256_maddubs_epi16(w1, a##r);        \
    __asm__("" : "+x"(p##r##0), "+x"(p##r##1));
    STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5)
#undef STEP
    __asm__("" : "+x"(w0), "+x"(w1));
  }
  auto t1 = std::chrono::steady_clock::now();
  __m256i s = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(p00, p01), _mm256_add_epi16(p10, p11)),
                               _mm256_add_epi16(_mm256_add_epi16(p20, p21), _mm256_add_epi16(p30, p31)));
  s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_add_epi16(p40, p41), _mm256_add_epi16(p50, p51)));
  volatile int sink = _mm256_extract_epi16(s, 0);
  (void)sink;
  return std::chrono::duration<double>(t1 - t0).count();
}

// Returns seconds for `iters` iterations; every iteration is 96 fp32 MACs (12 FMA chains x 8 lanes).
double fp32_fma_loop(int64_t iters) {
  __m256 a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(0.9999f);
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  __m256 c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i) {
#define F(r) c##r = _mm256_fmadd_ps(a, b, c##r); __asm__("" : "+x"(c##r));
    F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
#undef F
    __asm__("" : "+x"(a), "+x"(b));
  }
  auto t1 = std::chrono::steady_clock::now();
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                           _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
  volatile float sink = _mm256_cvtss_f32(s);
  (void)sink;
  return std::chrono::duration<double>(t1 - t0).count();
}
"""


def _loops():
    from torch.utils.cpp_extension import load_inline

    functions = ["int8_tile_loop", "int8_maddubs_only_loop", "fp32_fma_loop"]
    return load_inline("ternary_hf_bench_peak", cpp_sources=_SOURCE, functions=functions,
                       extra_cflags=["-O2", "-mavx2", "-mfma"], verbose=False)


def _best_rate(fn, macs: float, rounds: int) -> float:
    """GMAC/s of the fastest of ``rounds`` calls (peaks: the fastest round is the uncontended one)."""
    times = []
    for _ in range(rounds):
        times.append(fn())
    return macs / min(times) / 1e9


def _median_time(fn, rounds: int, inner: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--m", type=int, default=4096, help="tokens (rows) of the GEMM problems")
    parser.add_argument("--shapes", nargs="*", default=["384x384", "384x1536", "768x768", "768x3072"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    from ternary_hf.kernels import cpu_kernel_available, kernel_status, prepare_weight, ternary_linear_cpu
    from ternary_hf.quant.packing import pack_ternary

    print(f"# machine: {cpu_model()}, 1 thread, torch {torch.__version__}; load average before: {load_avg()}")
    print(f"# kernel: {kernel_status()}")
    loops = _loops()
    iters = 20_000_000
    int8_peak = _best_rate(lambda: loops.int8_tile_loop(iters), 384.0 * iters, args.rounds)
    mul_only = _best_rate(lambda: loops.int8_maddubs_only_loop(iters), 384.0 * iters, args.rounds)
    fp32_peak = _best_rate(lambda: loops.fp32_fma_loop(iters), 96.0 * iters, args.rounds)
    print(f"int8 peak (vpmaddubsw + vpaddw tile step, registers only): {int8_peak:6.1f} GMAC/s")
    print(f"  the multiplies alone (no vpaddw):                        {mul_only:6.1f} GMAC/s")
    print(f"fp32 peak (vfmadd231ps, registers only):                   {fp32_peak:6.1f} GMAC/s")
    print(f"best possible ternary/fp32 GEMM time ratio at equal efficiency: {fp32_peak / int8_peak:.3f}x\n")

    print("| layer (in x out) | M | sgemm GMAC/s | of fp32 peak | ours GMAC/s | of int8 peak | ours/fp32 time |")
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        k, n = (int(v) for v in shape.split("x"))
        x = torch.randn(args.m, k, generator=g)
        weight = torch.randn(n, k, generator=g)
        ternary = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
        scale = torch.rand(n, generator=g) + 0.5
        prepared = prepare_weight(pack_ternary(ternary), k) if cpu_kernel_available() else None
        macs = float(args.m) * k * n
        inner = max(1, int(2e9 // macs))
        t_fp32 = _median_time(lambda x=x, w=weight: torch.mm(x, w.t()), args.rounds, inner)
        line = f"| {shape} | {args.m} | {macs / t_fp32 / 1e9:.1f} | {macs / t_fp32 / 1e9 / fp32_peak:.0%} |"
        if prepared is None:
            print(line + " - | - | - |")
            continue
        t_ours = _median_time(lambda x=x, p=prepared, s=scale, k=k, n=n: ternary_linear_cpu(x, p, s, None, k, n),
                              args.rounds, inner)
        print(line + f" {macs / t_ours / 1e9:.1f} | {macs / t_ours / 1e9 / int8_peak:.0%} | {t_ours / t_fp32:.2f} |")
    print(f"\n# load average after: {load_avg()}")


if __name__ == "__main__":
    main()
