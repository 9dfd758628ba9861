// Ternary x int8 GEMM for ternary_hf (CPU inference path of TernaryLinear): AVX2, AVX-512 VNNI and
// AMX-INT8 builds of this one file.
//
// Why this file exists: a ternary layer stores 2 bits per weight; the fast way to use it on an
// AVX2 CPU without VNNI is to keep the weights as unsigned codes c = t + 1 in {0, 1, 2}, quantize
// activations per token to int8, and let `vpmaddubsw` multiply unsigned codes by signed int8
// activations (x . t = x . c - sum(x)).  Nothing here materialises a float weight matrix.
//
// Exactness: the per-token rule is the one of ternary_hf/quant/functional.py, bit for bit (common.h):
//   amax = max|x|;  safe = amax > 0 ? amax : 1;  inv = (1 / safe) * 127   (torch computes
//   `127 / tensor` as `tensor.reciprocal() * 127`);  q = clamp(nearbyint(x * inv), -127, 127);
//   s_x = safe / 127; a row holding NaN / inf gives a NaN row, as on the reference path.
// Accumulation is int32 and exact.  Saturation bounds: a `vpmaddubsw` pair is at most
// 2*127 + 2*127 = 508 in magnitude; each int16 lane receives one pair per 4 k, and is widened to
// int32 (`vpmaddwd` with ones) after at most 64 additions (256 k): 64 * 508 = 32512 < 32767.
//
// Kernel weight layout (built by kernels/layout.py prepare_weight, once at load time):
//   uint8 [N16 = ceil(N/16)][KB = ceil(K/16)][64]; byte (p, kb, 32*v + 4*j + i) holds, at bits 2*s,
//   the code of column n = 16p + 8v + j and input k = 16kb + 4s + i (padding: code 1).
//   So `(load(block + 32v) >> 2s) & 3` is directly the `vpmaddubsw` operand for 8 columns x 4 k.
//
// Structure of one call (run()):
//   1. quantize every row of x to int8 (+ row sum, + s_x; + its reach for int4 weights in the AVX2
//      build, common.h int4_reach_row) into a per-thread, grow-only scratch;
//   2. split the output into units of 48 rows x 64 columns (AMX: all rows x 64 columns), claimed
//      dynamically by the threads of torch's OpenMP pool (default) or by the caller and helpers on
//      torch's inter-op pool (run_units: never waits for a helper that has not started);
//   3. per unit and 16-column panel: a lone row tile decodes the 2-bit codes in registers
//      (micro_kernel); in the AVX2 build several row tiles share a panel chunk decoded once to
//      bytes in L1 (decode_chunk + micro_kernel_decoded; see g_decode_panels); 6x16 register tiles; store_tile (epilogue.h) applies
//      acc - sum(q), s_x, s_w, bias, and optionally GELU (fused activation). The AMX build decodes
//      each panel once per call into tiles instead (amx_gemm.h);
//   4. outputs of 8 MB and more come from a small pool (new_output) to avoid per-call page faults.
// Int8 weights (TernaryConfig.int8_modules; prepared by layout.py prepare_int8_weight as bytes w + 128 in
// the decoded layout, common.h) take the same steps with run_int8_block in place of the 2-bit tiles.
// Speed per build and shape: benchmarks/README.md (bench_linear.py).
//
// Builds (kernels/_build.py): compiled on first use by torch.utils.cpp_extension with -O3 -mavx2
// -mfma -fopenmp.  The caller checks AVX2+FMA at run time before loading this module.  Only AVX2/FMA
// intrinsics are used (no AVX-512 encodings: tests check the object code).  With -DTERNARY_HF_VNNI
// (and the AVX-512 flags) the micro kernels use AVX-512 VNNI `vpdpbusd` on the same weight layout;
// with -DTERNARY_HF_AMX (and -mamx-tile -mamx-int8) AMX tiles replace them (amx_gemm.h, amx_tiles.h).
// Everything else (quantization, epilogue, threading) is shared.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>
#include <unistd.h>

#include "common.h"
#include "epilogue.h"
#include "team_gemm.h"
#if defined(TERNARY_HF_AMX)
#include "amx_gemm.h"
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace ternary_hf_kernel;

constexpr int64_t kMR = 6;         // rows per register tile
constexpr int64_t kWidenBlocks = 16;  // 16 blocks * 16 k = 256 k per int16 accumulation (see top)
static_assert(kInt4MaxReach == kWidenBlocks, "an int4 row's reach spans at most one panel chunk (common.h)");
constexpr int64_t kRowBlock = 48;   // rows sharing one pass over the weights (q block stays in L2)
constexpr int64_t kColBlock = 64;   // columns per parallel work unit


#if !defined(TERNARY_HF_VNNI)
// ---------------------------------------------------------------------------------------------
// Register-tiled micro kernel: R rows (R <= 6) x 16 columns over all k; writes int32 sums of
// q * code (without the row-sum correction) to out[R][16].
//
// Register budget (16 ymm): 12 int16 accumulators + 2 decoded weight vectors + 1 broadcast
// activation + 1 product; the 0x03 mask comes from memory.  The int32 totals live in `out` (L1)
// and are updated once per 256 k.  The empty asm statements pin each accumulator update in place:
// without them GCC reassociates the add chains, computes all products first and spills them
// (measured 73 vs 138 GMAC/s on one Zen 3 core).
#define TERNARY_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
template <int R>
void micro_kernel(const int8_t* q, int64_t ldq, const uint8_t* w, int64_t kblocks, int32_t* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i mask = _mm256_set1_epi8(3);
  if (kblocks == 0) {
    for (int i = 0; i < R * kNR; ++i) out[i] = 0;
  }
  for (int64_t kb0 = 0; kb0 < kblocks; kb0 += kWidenBlocks) {
    const int64_t kb1 = std::min(kblocks, kb0 + kWidenBlocks);
#define TERNARY_ZERO(r) __m256i c##r##0 = _mm256_setzero_si256(), c##r##1 = _mm256_setzero_si256();
    TERNARY_ROWS(TERNARY_ZERO)
#undef TERNARY_ZERO
    const uint8_t* wb = w + kb0 * kBlockBytes;
    const int8_t* qk = q + kb0 * kKB;
    for (int64_t kb = kb0; kb < kb1; ++kb, wb += kBlockBytes, qk += kKB) {
      const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb));
      const __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32));
#define TERNARY_ROWSTEP(r)                                                       \
  if (R > r) {                                                                   \
    int32_t a4;                                                                  \
    std::memcpy(&a4, qk + r * ldq + 4 * S, 4);                                   \
    const __m256i av = _mm256_set1_epi32(a4);                                    \
    c##r##0 = _mm256_add_epi16(c##r##0, _mm256_maddubs_epi16(w0, av));          \
    c##r##1 = _mm256_add_epi16(c##r##1, _mm256_maddubs_epi16(w1, av));          \
    __asm__("" : "+x"(c##r##0), "+x"(c##r##1));                                  \
  }
#define TERNARY_STEP(SS)                                                         \
  {                                                                              \
    constexpr int S = SS;                                                        \
    const __m256i w0 = _mm256_and_si256(_mm256_srli_epi16(p0, 2 * S), mask);    \
    const __m256i w1 = _mm256_and_si256(_mm256_srli_epi16(p1, 2 * S), mask);    \
    TERNARY_ROWS(TERNARY_ROWSTEP)                                                \
  }
      TERNARY_STEP(0)
      TERNARY_STEP(1)
      TERNARY_STEP(2)
      TERNARY_STEP(3)
#undef TERNARY_STEP
#undef TERNARY_ROWSTEP
    }
#define TERNARY_WIDEN(r)                                                                                  \
  if (R > r) {                                                                                            \
    __m256i* o = reinterpret_cast<__m256i*>(out + r * kNR);                                               \
    __m256i s0 = _mm256_madd_epi16(c##r##0, ones), s1 = _mm256_madd_epi16(c##r##1, ones);                 \
    if (kb0 > 0) {                                                                                        \
      s0 = _mm256_add_epi32(s0, _mm256_loadu_si256(o));                                                   \
      s1 = _mm256_add_epi32(s1, _mm256_loadu_si256(o + 1));                                               \
    }                                                                                                     \
    _mm256_storeu_si256(o, s0);                                                                           \
    _mm256_storeu_si256(o + 1, s1);                                                                       \
  }
    TERNARY_ROWS(TERNARY_WIDEN)
#undef TERNARY_WIDEN
  }
}
#undef TERNARY_ROWS



// Same tile on pre-decoded weights: `wd` holds one byte per code for `nkb` blocks (256 bytes per
// block: step s at offset 64*s, columns 0-7 then 8-15), decoded once per panel chunk by
// decode_chunk() and shared by all row tiles of a row block, which takes the shift/mask work out of
// the inner loop (measured +9% on one core).  `first` stores instead of accumulating into out.
// The int16 sums are widened into out every W blocks for ternary codes (kWidenBlocks); for the larger int4
// codes (W = 0, run_int4_block) after as many blocks as every row's reach allows (int4_reach_row, common.h:
// reach[r * ldr + kb] for row r from block kb on).

template <int R, int64_t W>
inline __attribute__((always_inline)) void decoded_tile(const int8_t* q, int64_t ldq, const uint8_t* wd, int64_t nkb,
                                                        int32_t* out, bool first, const uint8_t* reach, int64_t ldr) {
  const __m256i ones = _mm256_set1_epi16(1);
  int64_t kb0 = 0;
  do {  // once even when nkb == 0, so that `first` still stores the (zero) sums
    int64_t run = W;
    if constexpr (W == 0) {
      run = reach[kb0];
#pragma GCC unroll 6
      for (int r = 1; r < R; ++r) run = std::min<int64_t>(run, reach[r * ldr + kb0]);
    }
    const int64_t kb1 = std::min(nkb, kb0 + run);
#define TERNARY_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define TERNARY_ZERO(r) __m256i c##r##0 = _mm256_setzero_si256(), c##r##1 = _mm256_setzero_si256();
  TERNARY_ROWS(TERNARY_ZERO)
#undef TERNARY_ZERO
  for (int64_t kb = kb0; kb < kb1; ++kb, wd += kDecodedBlockBytes, q += kKB) {
#define TERNARY_ROWSTEP(r)                                              \
  if (R > r) {                                                          \
    int32_t a4;                                                         \
    std::memcpy(&a4, q + r * ldq + 4 * S, 4);                           \
    const __m256i av = _mm256_set1_epi32(a4);                           \
    c##r##0 = _mm256_add_epi16(c##r##0, _mm256_maddubs_epi16(w0, av)); \
    c##r##1 = _mm256_add_epi16(c##r##1, _mm256_maddubs_epi16(w1, av)); \
    __asm__("" : "+x"(c##r##0), "+x"(c##r##1));                         \
  }
#define TERNARY_STEP(SS)                                                                            \
  {                                                                                                 \
    constexpr int S = SS;                                                                           \
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wd + 64 * S));          \
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wd + 64 * S + 32));     \
    TERNARY_ROWS(TERNARY_ROWSTEP)                                                                   \
  }
    TERNARY_STEP(0)
    TERNARY_STEP(1)
    TERNARY_STEP(2)
    TERNARY_STEP(3)
#undef TERNARY_STEP
#undef TERNARY_ROWSTEP
  }
#define TERNARY_WIDEN(r)                                                                   \
  if (R > r) {                                                                             \
    __m256i* o = reinterpret_cast<__m256i*>(out + r * kNR);                                \
    __m256i s0 = _mm256_madd_epi16(c##r##0, ones), s1 = _mm256_madd_epi16(c##r##1, ones);  \
    if (!first || kb0 > 0) {                                                               \
      s0 = _mm256_add_epi32(s0, _mm256_load_si256(o));                                     \
      s1 = _mm256_add_epi32(s1, _mm256_load_si256(o + 1));                                 \
    }                                                                                      \
    _mm256_store_si256(o, s0);                                                             \
    _mm256_store_si256(o + 1, s1);                                                         \
  }
  TERNARY_ROWS(TERNARY_WIDEN)
#undef TERNARY_WIDEN
#undef TERNARY_ROWS
    kb0 = kb1;
  } while (kb0 < nkb);
}

template <int R>
void micro_kernel_decoded(const int8_t* q, int64_t ldq, const uint8_t* wd, int64_t nkb, int32_t* out, bool first) {
  decoded_tile<R, kWidenBlocks>(q, ldq, wd, nkb, out, first, nullptr, 0);
}

template <int R>
void micro_kernel_int4(const int8_t* q, int64_t ldq, const uint8_t* wd, int64_t nkb, int32_t* out, bool first,
                       const uint8_t* reach, int64_t ldr) {
  decoded_tile<R, 0>(q, ldq, wd, nkb, out, first, reach, ldr);
}


// Tile for int8 weights (bytes w + kInt8Zero in the decoded layout, common.h). vpmaddubsw would
// saturate its int16 pair sums on them (2 x 255 x 127 > 32767), so weights and activations are widened
// to int16 (once per panel chunk and per row block, shared by the row tiles) and multiplied by
// vpmaddwd, whose pair sums are int32 and exact. Widening also regroups the weights (widen_int8_chunk):
// one ymm holds 8 columns x 2 consecutive k, so each vpmaddwd lane is one column's running sum and a row
// needs two accumulators (columns 0-7, 8-15) with no horizontal reduction; a pair of weight vectors is
// loaded once per 2 k and shared by up to 6 rows (12 accumulators + 2 weights + 1 activation = 15 ymm).
// That halves the loads of the first version (weights reloaded per row, 3-row tiles; benchmarks/README.md).
constexpr int64_t kInt8Rows = 6;
constexpr int64_t kInt8ChunkBlocks = 16;  // widened weight chunk: 16 blocks x 512 bytes, in L1
constexpr int64_t kInt8PairLanes = 32;    // int16 per widened 2-k group: 16 columns x 2 k

// nkb decoded blocks (bytes, common.h) -> int16 groups: block kb, k pair g = 2s + p (k = 16kb + 4s + 2p + i)
// at w16 + 256 kb + 32 g: columns 0-7 then 8-15, each as (k, k + 1).
inline void widen_int8_chunk(const uint8_t* wd, int64_t nkb, int16_t* w16) {
  // within each 128-bit lane (4 columns x 4 k): the (k0, k1) bytes of the 4 columns, then their (k2, k3)
  const __m256i pairs = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                         0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  for (int64_t kb = 0; kb < nkb; ++kb, wd += kDecodedBlockBytes, w16 += 4 * 2 * kInt8PairLanes) {
    for (int s = 0; s < 4; ++s) {
      for (int v = 0; v < 2; ++v) {  // columns 8v .. 8v + 7
        __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wd + 64 * s + 32 * v));
        b = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(b, pairs), 0xD8);  // [pair 0: 8 columns | pair 1]
        int16_t* g0 = w16 + 2 * s * kInt8PairLanes + 16 * v;
        _mm256_store_si256(reinterpret_cast<__m256i*>(g0), _mm256_cvtepu8_epi16(_mm256_castsi256_si128(b)));
        _mm256_store_si256(reinterpret_cast<__m256i*>(g0 + kInt8PairLanes),
                           _mm256_cvtepu8_epi16(_mm256_extracti128_si256(b, 1)));
      }
    }
  }
}

template <int R>
void micro_kernel_int8(const int16_t* q16, int64_t ldq, const int16_t* w16, int64_t nkb, int32_t* out, bool first) {
  __m256i c[R][2];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    c[r][0] = first ? _mm256_setzero_si256() : _mm256_load_si256(reinterpret_cast<const __m256i*>(out + r * kNR));
    c[r][1] = first ? _mm256_setzero_si256()
                    : _mm256_load_si256(reinterpret_cast<const __m256i*>(out + r * kNR + 8));
  }
  for (int64_t g = 0; g < 8 * nkb; ++g, w16 += kInt8PairLanes, q16 += 2) {  // 8 k pairs per block
    const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w16));
    const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w16 + 16));
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      int32_t a2;
      std::memcpy(&a2, q16 + r * ldq, 4);
      const __m256i av = _mm256_set1_epi32(a2);
      c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(w0, av));
      c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(w1, av));
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNR), c[r][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNR + 8), c[r][1]);
  }
}

// One or two rows (batch-1 latency): nothing to share a widened chunk with, so the tile widens the
// panel's bytes in registers as it goes (no regrouping: one ymm holds 4 columns x 4 k, each vpmaddwd lane
// a column's k pair) and adds the pairs up once at the end.
constexpr int64_t kInt8DirectRows = 2;

template <int R>
void micro_kernel_int8_direct(const int16_t* q16, int64_t ldq, const uint8_t* wd, int64_t nkb, int32_t* out) {
  __m256i c[R][4];
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < 4; ++g) c[r][g] = _mm256_setzero_si256();
  for (int64_t st = 0; st < 4 * nkb; ++st, wd += 64, q16 += 4) {  // 4 k x 16 columns per step
    __m256i w[4];
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g)
      w[g] = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wd + 16 * g)));
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) {
      int64_t a4;
      std::memcpy(&a4, q16 + r * ldq, 8);
      const __m256i av = _mm256_set1_epi64x(a4);
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) c[r][g] = _mm256_add_epi32(c[r][g], _mm256_madd_epi16(w[g], av));
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r) {  // lanes (2j, 2j + 1) of c[r][g] are column 4g + j
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(c[r][0], c[r][1]), 0xD8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(c[r][2], c[r][3]), 0xD8);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNR), lo);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNR + 8), hi);
  }
}

using Int8DirectFn = void (*)(const int16_t*, int64_t, const uint8_t*, int64_t, int32_t*);
constexpr Int8DirectFn kMicroInt8Direct[kInt8DirectRows + 1] = {nullptr, micro_kernel_int8_direct<1>,
                                                                micro_kernel_int8_direct<2>};

using Int8Fn = void (*)(const int16_t*, int64_t, const int16_t*, int64_t, int32_t*, bool);
constexpr Int8Fn kMicroInt8[kInt8Rows + 1] = {nullptr,
                                              micro_kernel_int8<1>,
                                              micro_kernel_int8<2>,
                                              micro_kernel_int8<3>,
                                              micro_kernel_int8<4>,
                                              micro_kernel_int8<5>,
                                              micro_kernel_int8<6>};

#else  // TERNARY_HF_VNNI
// ---------------------------------------------------------------------------------------------
// AVX-512 VNNI variant of the two tiles above (built as a separate module, loaded only on CPUs with
// avx512f/bw/vl + avx512_vnni: Intel Cascade Lake and later servers, Ice Lake and later, AMD Zen 4+).
// Why: `vpdpbusd` multiplies unsigned codes by signed int8 activations, adds each group of four
// products AND accumulates into int32 in one instruction, where AVX2 needs vpmaddubsw + vpaddw and a
// vpmaddwd widening every 256 k. One 64-byte weight block at step s (`(block >> 2s) & 3`) is exactly
// one zmm operand for 16 columns x 4 k (lane 8v + j = column 16p + 8v + j, as in the AVX2 layout), so
// the same prepared weights serve both builds and a row tile needs one accumulator per row.
// The sums are int32 from the start: no int16 saturation bound, bit-identical to the AVX2 build.
// Short tiles (the M % 6 remainder, batch-1 latency) would be bound by vpdpbusd's latency with one
// accumulator per row, so rows of a tile with fewer than 4 rows spread the four k steps of a block
// over 2 or 4 accumulators, added at the end (integer sums: the order cannot change the result).
template <int R, bool kDecoded>
inline __attribute__((always_inline)) void vnni_tile(const int8_t* q, int64_t ldq, const uint8_t* w, int64_t nkb,
                                                     int32_t* out, bool first) {
  constexpr int C = R >= 4 ? 1 : (R >= 2 ? 2 : 4);
  __m512i c[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    c[r][0] = first ? _mm512_setzero_si512() : _mm512_loadu_si512(out + r * kNR);
#pragma GCC unroll 4
    for (int j = 1; j < C; ++j) c[r][j] = _mm512_setzero_si512();
  }
  const __m512i mask = _mm512_set1_epi8(3);
  for (int64_t kb = 0; kb < nkb; ++kb, q += kKB, w += kDecoded ? kDecodedBlockBytes : kBlockBytes) {
    __m512i packed = _mm512_setzero_si512();
    if constexpr (!kDecoded) packed = _mm512_loadu_si512(w);
#pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      __m512i wv;
      if constexpr (kDecoded) {
        wv = _mm512_loadu_si512(w + 64 * s);  // unaligned: int8 weights are read from the caller's tensor
      } else {
        wv = _mm512_and_si512(_mm512_srli_epi16(packed, 2 * s), mask);
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t a4;
        std::memcpy(&a4, q + r * ldq + 4 * s, 4);
        c[r][s % C] = _mm512_dpbusd_epi32(c[r][s % C], wv, _mm512_set1_epi32(a4));
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    __m512i sum = c[r][0];
#pragma GCC unroll 4
    for (int j = 1; j < C; ++j) sum = _mm512_add_epi32(sum, c[r][j]);
    _mm512_storeu_si512(out + r * kNR, sum);
  }
}

template <int R>
void micro_kernel(const int8_t* q, int64_t ldq, const uint8_t* w, int64_t kblocks, int32_t* out) {
  vnni_tile<R, false>(q, ldq, w, kblocks, out, true);
}

template <int R>
void micro_kernel_decoded(const int8_t* q, int64_t ldq, const uint8_t* wd, int64_t nkb, int32_t* out, bool first) {
  vnni_tile<R, true>(q, ldq, wd, nkb, out, first);
}
#endif  // TERNARY_HF_VNNI

using MicroFn = void (*)(const int8_t*, int64_t, const uint8_t*, int64_t, int32_t*);
constexpr MicroFn kMicro[kMR + 1] = {nullptr,          micro_kernel<1>, micro_kernel<2>, micro_kernel<3>,
                                     micro_kernel<4>, micro_kernel<5>, micro_kernel<6>};
using DecodedFn = void (*)(const int8_t*, int64_t, const uint8_t*, int64_t, int32_t*, bool);
constexpr DecodedFn kMicroDecoded[kMR + 1] = {nullptr,
                                              micro_kernel_decoded<1>,
                                              micro_kernel_decoded<2>,
                                              micro_kernel_decoded<3>,
                                              micro_kernel_decoded<4>,
                                              micro_kernel_decoded<5>,
                                              micro_kernel_decoded<6>};

// Whether several row tiles share a panel chunk decoded to bytes in L1 (decode_chunk) or each tile
// decodes the 2-bit codes in registers. AVX2: shared decoding (measured +9% on one Zen 3 core at
// large M). VNNI: in registers, where a shift and a mask per step cost less than the decoded copy's
// stores and reloads (measured on Zen 4: batch-1 forwards 8-17% faster, batch 32 as fast or faster;
// benchmarks/README.md). Switchable for benchmarks (_set_decode_panels).
#if defined(TERNARY_HF_VNNI)
bool g_decode_panels = false;
#else
bool g_decode_panels = true;
#endif
bool g_prefetch_out = true;   // switchable for benchmarks (_set_prefetch_output)

// Pull the output lines of rows [m0, m1) x columns nb.. nb + 15 in while a panel's tiles are computed: the
// stores of store_tile otherwise wait on reads-for-ownership from L3/DRAM (15% of the time at K = 384).
inline void prefetch_output(const Problem& P, int64_t m0, int64_t m1, int64_t nb) {
  if (!g_prefetch_out || P.y == nullptr) return;
  for (int64_t m = m0; m < m1; ++m) _mm_prefetch(reinterpret_cast<const char*>(P.y + m * P.n + nb), _MM_HINT_T0);
}

#if defined(TERNARY_HF_VNNI)
// The work unit of int8 weights: the panels are already bytes, so every row tile reads them as a
// decoded chunk, over all k at once (int32 sums, no widening).
void run_int8_block(const Problem& P, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  alignas(64) int32_t tile[kMR * kNR];
  const int64_t panel_bytes = P.kblocks * kDecodedBlockBytes;
  for (int64_t nb = n0; nb < n1; nb += kNR) {
    const uint8_t* wp = P.w + (nb / kNR) * panel_bytes;
    prefetch_output(P, m0, m1, nb);
    for (int64_t mb = m0; mb < m1; mb += kMR) {
      const int64_t rows = std::min(kMR, m1 - mb);
      kMicroDecoded[rows](P.q + mb * P.kp, P.kp, wp, P.kblocks, tile, true);
      store_tile(P, mb, rows, nb, tile);
    }
  }
}
#else
// AVX2, int4 weights: their codes (w + kInt4Zero, bytes in the decoded layout) are small enough for the
// ternary tile on decoded bytes (vpmaddubsw, int16 sums), widened to int32 as often as the rows' reach
// (P.int4_reach, computed with their quantization: int4_reach_row) requires: every 2 blocks at worst, far
// less often on real activations. The row tiles share each panel chunk of kWidenBlocks blocks while it is
// in L1, as the ternary tiles share a decoded chunk.
using Int4Fn = void (*)(const int8_t*, int64_t, const uint8_t*, int64_t, int32_t*, bool, const uint8_t*, int64_t);
constexpr Int4Fn kMicroInt4[kMR + 1] = {nullptr,
                                        micro_kernel_int4<1>,
                                        micro_kernel_int4<2>,
                                        micro_kernel_int4<3>,
                                        micro_kernel_int4<4>,
                                        micro_kernel_int4<5>,
                                        micro_kernel_int4<6>};

void run_int4_block(const Problem& P, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  constexpr int64_t kTiles = kRowBlock / kMR;
  alignas(64) int32_t tiles[kTiles][kMR * kNR];
  const int64_t panel_bytes = P.kblocks * kDecodedBlockBytes;
  const int64_t n_tiles = ceil_div(m1 - m0, kMR);
  for (int64_t nb = n0; nb < n1; nb += kNR) {
    const uint8_t* wp = P.w + (nb / kNR) * panel_bytes;
    prefetch_output(P, m0, m1, nb);
    if (P.kblocks == 0) std::memset(tiles, 0, sizeof(tiles));
    for (int64_t kb0 = 0; kb0 < P.kblocks; kb0 += kWidenBlocks) {
      const int64_t nkb = std::min(kWidenBlocks, P.kblocks - kb0);
      for (int64_t t = 0; t < n_tiles; ++t) {
        const int64_t mb = m0 + t * kMR;
        kMicroInt4[std::min(kMR, m1 - mb)](P.q + mb * P.kp + kb0 * kKB, P.kp, wp + kb0 * kDecodedBlockBytes, nkb,
                                           tiles[t], kb0 == 0, P.int4_reach + mb * P.kblocks + kb0, P.kblocks);
      }
    }
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t mb = m0 + t * kMR;
      store_tile(P, mb, std::min(kMR, m1 - mb), nb, tiles[t]);
    }
  }
}

// AVX2: the unit's activation rows widened to int16 once, then per panel chunks of widened weights
// shared by the row tiles (micro_kernel_int8).
void run_int8_block(const Problem& P, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (P.int4_codes) return run_int4_block(P, m0, m1, n0, n1);
  static thread_local std::vector<int16_t> q16;
  alignas(32) int16_t w16[kInt8ChunkBlocks * kDecodedBlockBytes];
  constexpr int64_t kTiles = (kRowBlock + kInt8Rows - 1) / kInt8Rows;
  alignas(64) int32_t tiles[kTiles][kInt8Rows * kNR];
  const int64_t rows = m1 - m0;
  if (static_cast<int64_t>(q16.size()) < rows * P.kp) q16.resize(rows * P.kp);
  for (int64_t i = 0; i < rows * P.kp; i += 16) {  // kp is a multiple of 16
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(P.q + m0 * P.kp + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q16.data() + i), _mm256_cvtepi8_epi16(b));
  }
  const int64_t panel_bytes = P.kblocks * kDecodedBlockBytes;
  if (rows <= kInt8DirectRows) {
    for (int64_t nb = n0; nb < n1; nb += kNR) {
      kMicroInt8Direct[rows](q16.data(), P.kp, P.w + (nb / kNR) * panel_bytes, P.kblocks, tiles[0]);
      store_tile(P, m0, rows, nb, tiles[0]);
    }
    return;
  }
  const int64_t n_tiles = ceil_div(rows, kInt8Rows);
  for (int64_t nb = n0; nb < n1; nb += kNR) {
    const uint8_t* wp = P.w + (nb / kNR) * panel_bytes;
    prefetch_output(P, m0, m1, nb);
    for (int64_t kb0 = 0; kb0 < P.kblocks; kb0 += kInt8ChunkBlocks) {
      const int64_t nkb = std::min(kInt8ChunkBlocks, P.kblocks - kb0);
      widen_int8_chunk(wp + kb0 * kDecodedBlockBytes, nkb, w16);
      for (int64_t t = 0; t < n_tiles; ++t) {
        const int64_t r0 = t * kInt8Rows;
        kMicroInt8[std::min(kInt8Rows, rows - r0)](q16.data() + r0 * P.kp + kb0 * kKB, P.kp, w16, nkb, tiles[t],
                                                   kb0 == 0);
      }
    }
    if (P.kblocks == 0) std::memset(tiles, 0, sizeof(tiles));
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t r0 = t * kInt8Rows;
      store_tile(P, m0 + r0, std::min(kInt8Rows, rows - r0), nb, tiles[t]);
    }
  }
}
#endif

// One work unit: rows [m0, m1) (at most kRowBlock) x columns [n0, n1) (n0 multiple of 16).
// A single row tile decodes in registers; several row tiles share a decoded panel chunk.
void run_tile_block(const Problem& P, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (P.int8_weights) return run_int8_block(P, m0, m1, n0, n1);
  constexpr int64_t kTiles = kRowBlock / kMR;
  alignas(64) int32_t tiles[kTiles][kMR * kNR];
  alignas(64) uint8_t decoded[kWidenBlocks * kDecodedBlockBytes];  // 64: zmm loads (VNNI build)
  const int64_t panel_bytes = P.kblocks * kBlockBytes;
  const int64_t n_tiles = ceil_div(m1 - m0, kMR);
  for (int64_t nb = n0; nb < n1; nb += kNR) {
    const uint8_t* wp = P.w + (nb / kNR) * panel_bytes;
    prefetch_output(P, m0, m1, nb);
    if (n_tiles == 1 || !g_decode_panels) {
      for (int64_t mb = m0; mb < m1; mb += kMR) {
        kMicro[std::min(kMR, m1 - mb)](P.q + mb * P.kp, P.kp, wp, P.kblocks, tiles[0]);
        store_tile(P, mb, std::min(kMR, m1 - mb), nb, tiles[0]);
      }
      continue;
    }
    if (P.kblocks == 0) std::memset(tiles, 0, sizeof(tiles));
    for (int64_t kb0 = 0; kb0 < P.kblocks; kb0 += kWidenBlocks) {
      const int64_t nkb = std::min(kWidenBlocks, P.kblocks - kb0);
      decode_chunk(wp + kb0 * kBlockBytes, nkb, decoded);
      for (int64_t t = 0; t < n_tiles; ++t) {
        const int64_t mb = m0 + t * kMR;
        kMicroDecoded[std::min(kMR, m1 - mb)](P.q + mb * P.kp + kb0 * kKB, P.kp, decoded, nkb, tiles[t], kb0 == 0);
      }
    }
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t mb = m0 + t * kMR;
      store_tile(P, mb, std::min(kMR, m1 - mb), nb, tiles[t]);
    }
  }
}

// Per-thread scratch for quantized activations: grow-only, so repeated calls do not page-fault.
struct Scratch {
  std::vector<int8_t> q;
  std::vector<int32_t> qsum;
  std::vector<float> sx;
  std::vector<uint8_t> reach;  // int4 weights in the AVX2 build (kInt4Reach)
};
Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

// Minimum multiply-accumulates per thread before a second thread is worth waking (with other
// processes on the box, a 2-thread call with little work can stall for milliseconds).
int64_t g_min_macs_per_thread = int64_t(1) << 22;  // _set_min_macs_per_thread (tests, benchmarks)
// Activation elements before quantization is shared out (below: one thread, no fork and join).
int64_t g_min_quant_elems = int64_t(1) << 18;  // _set_min_quant_elems (tests, benchmarks)

// Work sharing that never waits for a thread which has not started.  An OpenMP region (and so
// at::parallel_for) joins ALL its threads: on a shared machine one of them is often not scheduled
// for a whole time slice (4-30 ms measured here), and the call stalls that long even if the other
// thread could have done all the work.  Here the caller posts helpers to torch's inter-op pool
// (at::launch), works through the units itself, and then waits only for units already claimed; a
// helper that wakes late finds nothing left and returns without touching the caller's data.
struct UnitJob {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t units = 0;
  const std::function<void(int64_t)>* fn = nullptr;  // valid while a claimed unit is unfinished
};

void drain(UnitJob& job) {
  for (int64_t u = job.next.fetch_add(1, std::memory_order_relaxed); u < job.units;
       u = job.next.fetch_add(1, std::memory_order_relaxed)) {
    (*job.fn)(u);
    job.done.fetch_add(1, std::memory_order_release);
  }
}

// Default: OpenMP (at::parallel_for), the pool torch's own ops use. On a quiet machine it is much the
// faster choice: its worker is still spinning from the previous torch op, while an inter-op helper has
// to be woken and then competes with that spinning worker for the second core (MiniLM forward, batch
// 32, 2 threads: 97 ms with OpenMP vs 141 ms with helpers). "helpers" (TERNARY_HF_KERNEL_PARALLEL)
// suits a machine shared with other jobs, where an OpenMP join stalls on a descheduled thread.
bool g_use_openmp = true;  // _set_parallel_backend("openmp" | "helpers")

void run_units(int64_t units, int64_t nthreads, const std::function<void(int64_t)>& fn) {
  if (nthreads <= 1 || units <= 1) {
    for (int64_t u = 0; u < units; ++u) fn(u);
    return;
  }
  // torch's inter-op pool has no threads in a forked child: share out with OpenMP there instead.
  static const pid_t pool_pid = getpid();
  if (g_use_openmp || getpid() != pool_pid) {
    std::atomic<int64_t> next{0};
    at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
      for (int64_t u = next.fetch_add(1); u < units; u = next.fetch_add(1)) fn(u);
    });
    return;
  }
  auto job = std::make_shared<UnitJob>();
  job->units = units;
  job->fn = &fn;
  for (int64_t t = 1; t < std::min(nthreads, units); ++t) at::launch([job]() { drain(*job); });
  drain(*job);
  for (int spins = 0; job->done.load(std::memory_order_acquire) < units; ++spins) {
    if (spins < 2000) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
}

// The geometry of one GEMM call: rows of q padded for the build (AMX: row stride a multiple of 64
// bytes, row count a multiple of 16), and the output units (row block x 64 columns).
struct Geometry {
  int64_t kblocks, kp, m_alloc, row_block, n_rb, n_cb;
};

Geometry geometry(int64_t m, int64_t k, int64_t n) {
  const int64_t kblocks = ceil_div(k, kKB);
#if defined(TERNARY_HF_AMX)
  const int64_t kp = ceil_div(k, kAmxK) * kAmxK;
  const int64_t m_alloc = ceil_div(m, kAmxRows) * kAmxRows;
  const int64_t row_block = std::max<int64_t>(m, 1);  // one unit spans all rows: each panel is decoded once per call
#else
  const int64_t kp = kblocks * kKB;
  const int64_t m_alloc = m;
  const int64_t row_block = std::max<int64_t>(std::min<int64_t>(kRowBlock, m), 1);
#endif
  return {kblocks, kp, m_alloc, row_block, ceil_div(m, row_block), ceil_div(n, kColBlock)};
}

// Whether int4 weights run the AVX2 tile, which needs each row's reach (int4_reach_row); the VNNI and AMX
// builds sum int4 codes in int32 from the start.
#if defined(TERNARY_HF_VNNI) || defined(TERNARY_HF_AMX)
constexpr bool kInt4Reach = false;
#else
constexpr bool kInt4Reach = true;
#endif
int64_t g_int4_reach_cap = kInt4MaxReach;  // benchmarks: 2 restores the fixed widening (_set_int4_reach_cap)

// Rows [r0, r1) of x -> int8 codes, row sums and scales (and, given `reach`, each row's int4 reach); the
// range that ends at m also zeroes the padding rows of the AMX build.
void quantize_rows(const float* x, int64_t m, int64_t k, const Geometry& G, int8_t* q, int32_t* qsum, float* sx,
                   int64_t r0, int64_t r1, uint8_t* reach = nullptr) {
  for (int64_t i = r0; i < r1; ++i) {
    qsum[i] = quantize_row(x + i * k, k, G.kp, q + i * G.kp, sx + i);
    if (reach != nullptr) int4_reach_row(q + i * G.kp, G.kblocks, reach + i * G.kblocks, g_int4_reach_cap);
  }
  if (r1 == m && G.m_alloc > m) std::memset(q + m * G.kp, 0, static_cast<size_t>((G.m_alloc - m) * G.kp));
}

void run_unit(const Problem& P, const Geometry& G, int64_t u) {
  const int64_t rb = u / G.n_cb, cb = u % G.n_cb;
  const int64_t m0 = rb * G.row_block, m1 = std::min(P.m, (rb + 1) * G.row_block);
  const int64_t n0 = cb * kColBlock, n1 = std::min(P.n, (cb + 1) * kColBlock);
#if defined(TERNARY_HF_AMX)
  run_amx_block(P, m0, m1, n0, n1);
#else
  run_tile_block(P, m0, m1, n0, n1);
#endif
}

void require_amx() {
#if defined(TERNARY_HF_AMX)
  const std::string& amx_problem = amx_permission();
  TORCH_CHECK(amx_problem.empty(), "ternary kernel: the AMX tiles are unavailable (", amx_problem,
              "); set TERNARY_HF_KERNEL_ISA=avx512vnni or avx2");
#endif
}

// Int8 and int4 weights are prepared in the decoded layout (kDecodedBlockBytes per block), ternary ones in
// 2-bit blocks (kBlockBytes): the shape says which, and an int8 dtype marks int4 codes (common.h).
bool is_int8_prepared(const torch::Tensor& prepared) { return prepared.size(2) == kDecodedBlockBytes; }
bool is_int4_prepared(const torch::Tensor& prepared) {
  return is_int8_prepared(prepared) && prepared.scalar_type() == torch::kInt8;
}

void run(const torch::Tensor& x, const torch::Tensor& prepared, const torch::Tensor& weight_scale,
         const c10::optional<torch::Tensor>& bias, int64_t in_features, int64_t out_features, float* y,
         int32_t* acc, bool gelu) {
  const int64_t m = x.size(0);
  const int64_t k = in_features;
  const int64_t n = out_features;
  require_amx();
  const Geometry G = geometry(m, k, n);
  Scratch& s = scratch();
  if (static_cast<int64_t>(s.q.size()) < G.m_alloc * G.kp) s.q.resize(G.m_alloc * G.kp);
  if (static_cast<int64_t>(s.qsum.size()) < m) {
    s.qsum.resize(m);
    s.sx.resize(m);
  }
  const bool int4 = is_int4_prepared(prepared);
  uint8_t* reach = nullptr;
  if (kInt4Reach && int4) {
    if (static_cast<int64_t>(s.reach.size()) < m * G.kblocks) s.reach.resize(m * G.kblocks);
    reach = s.reach.data();
  }
  const float* xp = x.data_ptr<float>();
  int8_t* qp = s.q.data();
  int32_t* qs = s.qsum.data();
  float* sxp = s.sx.data();

  const int64_t nthreads_max = at::get_num_threads();
  const int64_t macs = m * n * G.kp;
  const int64_t nthreads = std::max<int64_t>(1, std::min(nthreads_max, macs / g_min_macs_per_thread));

  // 1) quantize activations (row chunks shared out when there is enough work: a few dozen rows take
  //    less time than waking the other thread).
  const int64_t qthreads = m * k >= g_min_quant_elems ? nthreads : 1;
  const int64_t qchunk = std::max<int64_t>(16, ceil_div(m, 4 * qthreads));
  const std::function<void(int64_t)> quant = [&](int64_t c) {
    quantize_rows(xp, m, k, G, qp, qs, sxp, c * qchunk, std::min(m, (c + 1) * qchunk), reach);
  };
  run_units(ceil_div(m, qchunk), qthreads, quant);

  // 2) GEMM over (row block x column block) units, claimed dynamically in row-major order.
  const Problem P{qp, qs, sxp, static_cast<const uint8_t*>(prepared.data_ptr()), weight_scale.data_ptr<float>(),
                  weight_scale.numel() > 1, bias.has_value() ? bias->data_ptr<float>() : nullptr, m, n, G.kp,
                  G.kblocks, y, acc, gelu, is_int8_prepared(prepared), int4, reach};
  const std::function<void(int64_t)> unit = [&](int64_t u) { run_unit(P, G, u); };
  run_units(G.n_rb * G.n_cb, nthreads, unit);
}

void check_weights(const torch::Tensor& prepared, const torch::Tensor& weight_scale,
                   const c10::optional<torch::Tensor>& bias, int64_t in_features, int64_t out_features);

void check_inputs(const torch::Tensor& x, const torch::Tensor& prepared, const torch::Tensor& weight_scale,
                  const c10::optional<torch::Tensor>& bias, int64_t in_features, int64_t out_features) {
  // ValueError in Python (TORCH_CHECK_VALUE), with what to do about it.
  TORCH_CHECK_VALUE(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(),
                    "ternary kernel: x must be a contiguous 2-D float32 CPU tensor of shape (M, in_features)");
  TORCH_CHECK_VALUE(x.size(1) == in_features, "ternary kernel: x has shape (", x.size(0), ", ", x.size(1),
                    "), the layer expects in_features=", in_features);
  check_weights(prepared, weight_scale, bias, in_features, out_features);
}

void check_weights(const torch::Tensor& prepared, const torch::Tensor& weight_scale,
                   const c10::optional<torch::Tensor>& bias, int64_t in_features, int64_t out_features) {
  TORCH_CHECK_VALUE(prepared.device().is_cpu() && prepared.dim() == 3 &&
                        (prepared.scalar_type() == torch::kUInt8 ||
                         (prepared.scalar_type() == torch::kInt8 && prepared.size(2) == kDecodedBlockBytes)) &&
                        prepared.size(0) == ceil_div(out_features, kNR) &&
                        prepared.size(1) == ceil_div(in_features, kKB) &&
                        (prepared.size(2) == kBlockBytes || prepared.size(2) == kDecodedBlockBytes) &&
                        prepared.is_contiguous(),
                    "ternary kernel: prepared weight of shape ", prepared.sizes(), " does not match in_features=",
                    in_features, ", out_features=", out_features,
                    "; build it with ternary_hf.kernels.prepare_weight(packed, in_features) (ternary) or "
                    "prepare_int8_weight(values) (int8) or prepare_int4_weight(values) (int4)");
  TORCH_CHECK_VALUE(weight_scale.device().is_cpu() && weight_scale.scalar_type() == torch::kFloat32 &&
                        weight_scale.is_contiguous() &&
                        (weight_scale.numel() == 1 || weight_scale.numel() == out_features),
                    "ternary kernel: weight_scale must be float32 with out_features (", out_features,
                    ") or 1 elements");
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->device().is_cpu() && bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() &&
                          bias->numel() == out_features,
                      "ternary kernel: bias must be float32 of shape (out_features,) = (", out_features, ",)");
  }
}

// Large outputs: glibc serves allocations above 32 MB (its largest mmap threshold) with a fresh
// mmap every time, so every call page-faults its whole output (measured: a 50 MB output took 60 ms
// to fault in, more than the GEMM on 2 cores).  Outputs from kPoolMinBytes up are therefore taken
// from a small pool of freed output buffers of the same size (at most kPoolMaxFreeBytes kept).
constexpr size_t kPoolMinBytes = size_t(8) << 20;
constexpr size_t kPoolMaxFreeBytes = size_t(128) << 20;

class OutputPool {
 public:
  void* get(size_t bytes) {
    {
      std::lock_guard<std::mutex> g(mu_);
      for (size_t i = free_.size(); i-- > 0;) {
        if (free_[i].first == bytes) {
          void* p = free_[i].second;
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          free_bytes_ -= bytes;
          return p;
        }
      }
    }
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    TORCH_CHECK(p != nullptr, "ternary kernel: out of memory allocating ", bytes, " bytes for the output");
    return p;
  }
  void put(void* p, size_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> g(mu_);
      free_.emplace_back(bytes, p);
      free_bytes_ += bytes;
      while (free_bytes_ > kPoolMaxFreeBytes && !free_.empty()) {
        evicted.push_back(free_.front().second);
        free_bytes_ -= free_.front().first;
        free_.erase(free_.begin());
      }
    }
    for (void* e : evicted) std::free(e);
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;
  size_t free_bytes_ = 0;
};

OutputPool& output_pool() {
  static OutputPool* pool = new OutputPool();  // never destroyed: tensors may outlive static destructors
  return *pool;
}

torch::Tensor new_output(int64_t m, int64_t n, const torch::TensorOptions& options) {
  const size_t bytes = static_cast<size_t>(m) * static_cast<size_t>(n) * options.dtype().itemsize();
  if (bytes < kPoolMinBytes) return torch::empty({m, n}, options);
  void* p = output_pool().get(bytes);
  return torch::from_blob(
      p, {m, n}, [bytes](void* ptr) { output_pool().put(ptr, bytes); }, options);
}

torch::Tensor ternary_linear(const torch::Tensor& x, const torch::Tensor& prepared, const torch::Tensor& weight_scale,
                             const c10::optional<torch::Tensor>& bias, int64_t in_features, int64_t out_features,
                             bool gelu) {
  check_inputs(x, prepared, weight_scale, bias, in_features, out_features);
  auto y = new_output(x.size(0), out_features, x.options());
  if (x.size(0) > 0 && out_features > 0) {
    run(x, prepared, weight_scale, bias, in_features, out_features, y.data_ptr<float>(), nullptr, gelu);
  }
  return y;
}

// Debug/test entry: the exact int32 accumulators q(x) @ T.T of the fused path.
torch::Tensor ternary_accumulators(const torch::Tensor& x, const torch::Tensor& prepared, int64_t in_features,
                                   int64_t out_features) {
  auto ones = torch::ones({1}, x.options());
  check_inputs(x, prepared, ones, c10::nullopt, in_features, out_features);
  auto acc = torch::empty({x.size(0), out_features}, x.options().dtype(torch::kInt32));
  if (x.size(0) > 0 && out_features > 0) {
    run(x, prepared, ones, c10::nullopt, in_features, out_features, nullptr, acc.data_ptr<int32_t>(), false);
  }
  return acc;
}

}  // namespace

// The GEMM for C++ callers in this module: the fused encoder forward of encoder_ops.cpp.
torch::Tensor ternary_linear_op(const torch::Tensor& x, const torch::Tensor& prepared, const torch::Tensor& weight_scale,
                                const c10::optional<torch::Tensor>& bias, int64_t in_features, int64_t out_features,
                                bool gelu) {
  return ternary_linear(x, prepared, weight_scale, bias, in_features, out_features, gelu);
}

// The GEMM in parts for a team of threads the caller runs (team_gemm.h).
void team_gemm_check(const torch::Tensor& prepared, const torch::Tensor& weight_scale,
                     const c10::optional<torch::Tensor>& bias, int64_t in_features, int64_t out_features) {
  check_weights(prepared, weight_scale, bias, in_features, out_features);
}

bool team_gemm_int8(const torch::Tensor& prepared) { return is_int8_prepared(prepared); }
bool team_gemm_int4(const torch::Tensor& prepared) { return is_int4_prepared(prepared); }

int64_t team_gemm_q_elems(int64_t m, int64_t k) {
  const Geometry G = geometry(m, k, 1);
  return G.m_alloc * G.kp;
}

int64_t team_gemm_reach_elems(int64_t m, int64_t k) { return kInt4Reach ? m * geometry(m, k, 1).kblocks : 0; }

void team_gemm_quantize(const TeamGemm& g, int64_t r0, int64_t r1) {
  uint8_t* reach = kInt4Reach && g.int4_codes ? g.reach : nullptr;
  quantize_rows(g.x, g.m, g.k, geometry(g.m, g.k, g.n), g.q, g.qsum, g.sx, r0, r1, reach);
}

int64_t team_gemm_units(const TeamGemm& g) {
  require_amx();
  const Geometry G = geometry(g.m, g.k, g.n);
  return G.n_rb * G.n_cb;
}

void team_gemm_unit(const TeamGemm& g, int64_t u) {
  const Geometry G = geometry(g.m, g.k, g.n);
  const Problem P{g.q, g.qsum, g.sx, g.w, g.sw, g.sw_per_channel, g.bias, g.m, g.n, G.kp, G.kblocks, g.y, nullptr,
                  g.gelu, g.int8_weights, g.int4_codes, kInt4Reach && g.int4_codes ? g.reach : nullptr};
  run_unit(P, G, u);
}

void register_training_ops(pybind11::module_& m);  // ternary_train.cpp
void register_encoder_ops(pybind11::module_& m);   // encoder_ops.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#if defined(TERNARY_HF_AMX_EMULATE)
  m.doc() = "AMX-INT8 ternary-weight x int8-activation linear layer, tile instructions EMULATED (tests only)";
  m.attr("ISA") = "amx_emulated";
#elif defined(TERNARY_HF_AMX)
  m.doc() = "AMX-INT8 ternary-weight x int8-activation linear layer (ternary_hf)";
  m.attr("ISA") = "amx";
#elif defined(TERNARY_HF_VNNI)
  m.doc() = "AVX-512 VNNI ternary-weight x int8-activation linear layer (ternary_hf)";
  m.attr("ISA") = "avx512vnni";
#else
  m.doc() = "AVX2 ternary-weight x int8-activation linear layer (ternary_hf)";
  m.attr("ISA") = "avx2";
#endif
  m.attr("INT8_WEIGHTS") = true;  // multiplies int8 weights (prepare_int8_weight); absent in older builds
  m.def("ternary_linear", &ternary_linear,
        "y = (q(x) @ T.T) * s_x * s_w + b, fused int8 quantization; gelu=True applies GELU to y",
        py::arg("x"), py::arg("prepared"), py::arg("weight_scale"), py::arg("bias"), py::arg("in_features"),
        py::arg("out_features"), py::arg("gelu") = false, py::call_guard<py::gil_scoped_release>());
  m.def(
      "_set_parallel_backend", [](const std::string& name) { g_use_openmp = (name == "openmp"); },
      "'openmp' (default, at::parallel_for) or 'helpers' (at::launch work sharing, for shared machines)");
  m.def(
      "_parallel_backend", []() { return std::string(g_use_openmp ? "openmp" : "helpers"); },
      "the current work-sharing backend");
  m.def(
      "_set_min_macs_per_thread", [](int64_t macs) { g_min_macs_per_thread = std::max<int64_t>(1, macs); },
      "tests and benchmarks: multiply-accumulates per thread before a GEMM call uses another thread");
  m.def(
      "_set_min_quant_elems", [](int64_t n) { g_min_quant_elems = std::max<int64_t>(1, n); },
      "tests and benchmarks: activation elements before quantization is shared between threads");
  m.def(
      "_min_macs_per_thread", []() { return g_min_macs_per_thread; }, "the current threshold");
  m.def(
      "_set_decode_panels", [](bool on) { g_decode_panels = on; },
      "benchmarks only: share a decoded panel chunk across row tiles (default) or decode per tile");
  m.def(
      "_decode_panels", []() { return g_decode_panels; }, "whether row tiles share a decoded panel chunk");
  m.def(
      "_set_int4_reach_cap",
      [](int64_t blocks) {
        TORCH_CHECK_VALUE(blocks >= 2 && blocks <= kInt4MaxReach, "_set_int4_reach_cap: blocks must be 2 to ",
                          kInt4MaxReach, ", got ", blocks);
        g_int4_reach_cap = blocks;
      },
      "benchmarks and tests: at most this many blocks between two widenings of the AVX2 int4 tile (2 to 16, the "
      "default; 2 = the fixed widening of the worst case)");
  m.def(
      "_int4_reach_cap", []() { return g_int4_reach_cap; }, "the current cap (default 16)");
  m.def(
      "_set_prefetch_output", [](bool on) { g_prefetch_out = on; },
      "benchmarks only: prefetch each panel's output lines before computing it (default on)");
#if defined(TERNARY_HF_AMX)
  m.def(
      "_amx_permission", []() { return amx_permission(); },
      "request the AMX tile state from the OS (once per process): '' when granted, else why not");
#endif
  m.def("ternary_accumulators", &ternary_accumulators, "int32 q(x) @ T.T (for tests)", py::arg("x"),
        py::arg("prepared"), py::arg("in_features"), py::arg("out_features"));
  register_training_ops(m);
  register_encoder_ops(m);
}
