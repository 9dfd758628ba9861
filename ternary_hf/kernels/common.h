// Shared by the inference kernel (ternary_cpu.cpp) and the training ops (ternary_train.cpp): the
// kernel's weight layout constants and the per-token int8 activation rule, defined once so the
// trainer's fake quantization and the inference kernel cannot drift apart.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

// Everything in these headers has internal linkage (an anonymous namespace): several builds of the
// kernel (AVX2, VNNI, AMX, ...) are loaded side by side into one process, and an inline function with
// external linkage would share its static variables across them (GCC merges such statics process-wide).
namespace ternary_hf_kernel {
namespace {

constexpr int64_t kNR = 16;        // columns per register tile (= per weight panel)
constexpr int64_t kKB = 16;        // k values per weight block
constexpr int64_t kBlockBytes = 64;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Activation quantization: one row of x (K floats) -> int8 codes padded with zeros to kp, returns
// sum(q) and writes s_x.
//
// A row holding NaN or +-inf has no meaningful int8 codes: on the reference path (functional.py)
// the NaN (or inf * 0) reaches the matmul and every output of the row is NaN. Here such a row gets
// zero codes and s_x = NaN, so the epilogue's `acc * s_x` makes every output of the row NaN too
// (also a row whose max|x| is so small that 1 / max|x| overflows, when it holds a zero: see below).
// The max runs on the integer bit patterns of |x|: for non-negative floats their int32 order is the
// float order, and NaN / inf (exponent all ones) are the largest, where a float max would drop a
// NaN operand. Callers can test the row with row_is_finite(*sx).
inline bool row_is_finite(float sx) { return !std::isnan(sx); }

inline int32_t quantize_row(const float* x, int64_t k, int64_t kp, int8_t* q, float* sx) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  __m256i vmax = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    vmax = _mm256_max_epi32(vmax, _mm256_and_si256(bits, abs_mask));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), vmax);
  int32_t amax_bits = 0;
  for (int l = 0; l < 8; ++l) amax_bits = std::max(amax_bits, lanes[l]);
  for (; i < k; ++i) {
    int32_t bits;
    std::memcpy(&bits, x + i, 4);
    amax_bits = std::max(amax_bits, bits & 0x7FFFFFFF);
  }
  if (amax_bits >= 0x7F800000) {  // NaN or inf in the row
    std::memset(q, 0, static_cast<size_t>(kp));
    *sx = std::numeric_limits<float>::quiet_NaN();
    return 0;
  }
  float amax;
  std::memcpy(&amax, &amax_bits, 4);
  const float safe = amax > 0.0f ? amax : 1.0f;
  const float inv = (1.0f / safe) * 127.0f;
  if (inv == std::numeric_limits<float>::infinity()) {
    // max|x| below ~2.9e-39 (subnormal): 1 / amax overflows, and on the reference path a zero in the
    // row becomes 0 * inf = NaN, so the row is NaN there too; without a zero, x * inf saturates to
    // +-127 exactly as the code below does.
    for (int64_t j = 0; j < k; ++j) {
      if (x[j] == 0.0f) {
        std::memset(q, 0, static_cast<size_t>(kp));
        *sx = std::numeric_limits<float>::quiet_NaN();
        return 0;
      }
    }
  }
  *sx = safe / 127.0f;

  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i vsum = _mm256_setzero_si256();
  const __m256i ones16 = _mm256_set1_epi16(1);
  i = 0;
  for (; i + 32 <= k; i += 32) {
    __m256i v[4];
    for (int u = 0; u < 4; ++u) {
      __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * u), vinv);
      y = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      y = _mm256_min_ps(_mm256_max_ps(y, lo), hi);
      v[u] = _mm256_cvtps_epi32(y);
    }
    __m256i p01 = _mm256_packs_epi32(v[0], v[1]);   // int16, lane-interleaved
    __m256i p23 = _mm256_packs_epi32(v[2], v[3]);
    vsum = _mm256_add_epi32(vsum, _mm256_madd_epi16(p01, ones16));
    vsum = _mm256_add_epi32(vsum, _mm256_madd_epi16(p23, ones16));
    __m256i b = _mm256_packs_epi16(p01, p23);
    b = _mm256_permutevar8x32_epi32(b, perm);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), b);
  }
  alignas(32) int32_t sl[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(sl), vsum);
  int32_t sum = 0;
  for (int l = 0; l < 8; ++l) sum += sl[l];
  for (; i < k; ++i) {
    float y = std::nearbyint(x[i] * inv);
    y = std::min(std::max(y, -127.0f), 127.0f);
    const int32_t qi = static_cast<int32_t>(y);
    q[i] = static_cast<int8_t>(qi);
    sum += qi;
  }
  for (; i < kp; ++i) q[i] = 0;
  return sum;
}

// Bytes per decoded block (one byte per code: 4 steps x 64).
constexpr int64_t kDecodedBlockBytes = 256;

// Int8 weights (the layers of TernaryConfig.int8_modules) come prepared in the decoded layout, as
// unsigned bytes w + kInt8Zero (kernels/layout.py prepare_int8_weight): the same u8 x s8 products as the
// ternary codes c = t + 1, so the VNNI and AMX builds multiply them unchanged (the AVX2 build with its
// own tile, ternary_cpu.cpp) and the epilogue subtracts kInt8Zero * sum(q) instead of sum(q).
constexpr int32_t kInt8Zero = 128;
// Int4 weights (values in [-7, 7]; layout.py prepare_int4_weight) use the same byte layout with w + kInt4Zero
// in [1, 15], marked by an int8 dtype: small enough codes for the AVX2 build's vpmaddubsw (a pair is at most
// 2 x 15 x 127 = 3810 in magnitude, so an int16 lane holds 8 pairs of the worst case; int4_reach_row below
// says how many more real rows allow).
constexpr int32_t kInt4Zero = 8;

// How long the AVX2 build's int4 tile may add int16 sums before widening them, per activation row.
// Why: a fixed widening every 2 blocks (the worst case, every |q| = 127) costs two vpmaddwd per row per
// 16 vpmaddubsw on the multiply ports, while real rows (per-token absmax scaling, a few outlier channels)
// have a far smaller sum(|q|) and so far smaller int16 sums. An int16 lane of the tile adds the products
// of one k pair per step (k % 4 in {0, 1}, or in {2, 3}), each at most 15 |q| (codes <= 15), so it cannot
// saturate while the lane's sum(|q|) stays <= kInt4LaneBudget: that is the exact bound the tile widens at.
// reach[kb] = how many blocks from block kb on fit within the budget on both lane kinds (at least 2 where
// that many remain: 2 x 8 x 127 <= kInt4LaneBudget), capped at `cap` (2 to kInt4MaxReach, which
// _set_int4_reach_cap checks; 2 = the fixed widening every 2 blocks, for benchmarks). kInt4MaxReach is the tile's panel chunk (ternary_cpu.cpp's
// kWidenBlocks): the tile widens at the end of every chunk anyway, so a longer reach would never be used.
constexpr int32_t kInt4LaneBudget = 32767 / (2 * kInt4Zero - 1);
constexpr int64_t kInt4MaxReach = 16;

// Per block, both lane kinds' sum(|q|) in one uint32: the {0, 1} kind in the low half, the {2, 3} kind in the
// high half (each <= 8 x 127). Two blocks per ymm: vpsadbw adds 8 bytes per 64-bit lane, after masking each
// lane kind's bytes.
inline void int4_block_sums(const int8_t* q, int64_t kblocks, uint32_t* sums) {
  const __m256i even = _mm256_set1_epi32(0x0000FFFF);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i lanes_0_4 = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
  int64_t kb = 0;
  for (; kb + 2 <= kblocks; kb += 2) {
    const __m256i a = _mm256_abs_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + kb * 16)));
    const __m256i se = _mm256_sad_epu8(_mm256_and_si256(a, even), zero);
    const __m256i so = _mm256_sad_epu8(_mm256_andnot_si256(even, a), zero);
    __m256i t = _mm256_or_si256(se, _mm256_slli_epi64(so, 16));       // per 8 bytes: e | o << 16
    t = _mm256_add_epi32(t, _mm256_shuffle_epi32(t, 0x4E));           // per block, in its first 32 bits
    t = _mm256_permutevar8x32_epi32(t, lanes_0_4);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(sums + kb), _mm256_castsi256_si128(t));
  }
  if (kb < kblocks) {
    const __m128i a = _mm_abs_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + kb * 16)));
    const __m128i se = _mm_sad_epu8(_mm_and_si128(a, _mm256_castsi256_si128(even)), _mm_setzero_si128());
    const __m128i so = _mm_sad_epu8(_mm_andnot_si128(_mm256_castsi256_si128(even), a), _mm_setzero_si128());
    const __m128i t = _mm_or_si128(se, _mm_slli_epi64(so, 16));
    sums[kb] = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E))));
  }
}

inline void int4_reach_row(const int8_t* q, int64_t kblocks, uint8_t* reach, int64_t cap = kInt4MaxReach) {
  // The window stays within the budget, so a half never exceeds budget + one block + the offset below.
  static_assert(0x7FFF + 8 * 127 < 0x10000 && kInt4LaneBudget <= 0x7FFF, "the packed halves must not carry");
  thread_local std::vector<uint32_t> sums;  // grow-only: one row at a time per thread
  if (static_cast<int64_t>(sums.size()) < kblocks) sums.resize(kblocks);
  int4_block_sums(q, kblocks, sums.data());
  // A half exceeds the budget iff adding (0x7FFF - budget) to it sets its bit 15 (neither half carries).
  constexpr uint32_t kOver = (0x7FFFu - kInt4LaneBudget) * 0x10001u;
  uint32_t window = 0;  // packed sums of blocks [kb, end)
  int64_t end = 0;
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    const int64_t limit = std::min(kblocks, kb + cap);
    while (end < limit && ((window + sums[end] + kOver) & 0x80008000u) == 0) window += sums[end++];
    reach[kb] = static_cast<uint8_t>(end - kb);
    window -= sums[kb];
  }
}

// 2-bit panel blocks -> one byte per code c in {0, 1, 2}: block kb's step s (k = 16kb + 4s + i) lands at
// wd + 256 kb + 64 s, byte 4 * col + i. That is the operand of the AVX2 / VNNI micro kernels and, four
// blocks at a time, exactly one AMX B tile (16 rows of 4 k x 16 columns). wd must be 32-byte aligned.
inline void decode_chunk(const uint8_t* w, int64_t nkb, uint8_t* wd) {
  const __m256i mask = _mm256_set1_epi8(3);
  for (int64_t kb = 0; kb < nkb; ++kb, w += kBlockBytes, wd += kDecodedBlockBytes) {
    const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32));
    for (int s = 0; s < 4; ++s) {
      const __m128i sh = _mm_cvtsi32_si128(2 * s);
      _mm256_store_si256(reinterpret_cast<__m256i*>(wd + 64 * s), _mm256_and_si256(_mm256_srl_epi16(p0, sh), mask));
      _mm256_store_si256(reinterpret_cast<__m256i*>(wd + 64 * s + 32),
                         _mm256_and_si256(_mm256_srl_epi16(p1, sh), mask));
    }
  }
}

}  // namespace
}  // namespace ternary_hf_kernel
