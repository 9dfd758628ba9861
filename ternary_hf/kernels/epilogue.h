// The float epilogue every build shares (ternary_cpu.cpp): the int32 tile of sum(q * c) becomes
// y = (tile - zero * sum(q)) * s_x * s_w + b, optionally through the fused GELU, while the tile is in L1.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "common.h"

namespace ternary_hf_kernel {
namespace {  // internal linkage: each build (module) keeps its own copy, see common.h

// Fused GELU epilogue (exact-erf GELU, what BERT / MPNet / ViT use: 0.5 x (1 + erf(x / sqrt 2))).
// Applied to the tile while it is in registers, it saves the separate pass torch's GELU makes over the
// whole (tokens x 4*hidden) intermediate output (~10% of a MiniLM forward, benchmarks/README.md).
// erf: Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7 over all x), with exp(-u^2) from a degree-6
// polynomial after range reduction by ln 2 (relative error ~2e-7); the GELU output is then within
// ~2e-7 * (|x| + 1) of torch's erf-based GELU (tests check 1e-6 * (|y| + 1)).
inline __m256 exp_neg_avx2(__m256 y) {  // exp(y) for y <= 0 (y >= -87.3 clamped: result ~1e-38)
  y = _mm256_max_ps(y, _mm256_set1_ps(-87.3f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), y);  // ln 2 split in two parts
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 gelu_avx2(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));  // x / sqrt(2)
  const __m256 az = _mm256_andnot_ps(sign, z);
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(az, _mm256_set1_ps(0.3275911f),
                                                                      _mm256_set1_ps(1.0f)));
  __m256 poly = _mm256_set1_ps(1.061405429f);
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
  poly = _mm256_mul_ps(poly, t);
  const __m256 erf_abs = _mm256_fnmadd_ps(poly, exp_neg_avx2(_mm256_mul_ps(_mm256_xor_ps(az, sign), az)),
                                          _mm256_set1_ps(1.0f));
  const __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign, z));  // erf is odd
  const __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
  // Non-finite inputs follow the formula in IEEE arithmetic, as torch's AVX2 and scalar GELU do: +inf ->
  // +inf, -inf -> -inf * 0 = NaN, NaN -> NaN (torch's AVX-512 GELU gives NaN for +inf too; either way the
  // output is non-finite, which is what a broken input must give).
  return y;
}

inline float gelu_scalar(float x) {  // same values as gelu_avx2, non-finite inputs included
  return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
}

struct Problem {
  const int8_t* q;        // [M][kp]
  const int32_t* qsum;    // [M]
  const float* sx;        // [M]
  const uint8_t* w;       // prepared
  const float* sw;        // [N] or [1]
  bool sw_per_channel;
  const float* bias;      // [N] or nullptr
  int64_t m, n, kp, kblocks;
  float* y;               // [M][N] float output, or nullptr
  int32_t* acc;           // [M][N] int32 output (debug), or nullptr
  bool gelu;              // apply GELU to the float output (fused activation)
  bool int8_weights = false;  // w holds int8 weights + kInt8Zero in the decoded layout (common.h)
  bool int4_codes = false;    // ... or int4 weights + kInt4Zero (int8_weights is true too)
  const uint8_t* int4_reach = nullptr;  // [M][kblocks] (int4_reach_row): int4 codes in the AVX2 build
};

// Float (or debug int32) epilogue of one R x 16 tile: acc = tile - zero * sum(q) (zero: 1 for ternary
// codes, kInt8Zero for int8 weights, kInt4Zero for int4 ones); y = acc * s_x * s_w + b.
inline void store_tile(const Problem& P, int64_t mb, int64_t rows, int64_t nb, const int32_t* tile) {
  const int64_t ncols = std::min(kNR, P.n - nb);
  const int32_t zero = P.int4_codes ? kInt4Zero : (P.int8_weights ? kInt8Zero : 1);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t m = mb + r;
    const int32_t rs = P.qsum[m] * zero;
    const int32_t* t = tile + r * kNR;
    if (P.acc != nullptr) {
      for (int64_t j = 0; j < ncols; ++j) P.acc[m * P.n + nb + j] = t[j] - rs;
      continue;
    }
    float* yr = P.y + m * P.n + nb;
    const float sxm = P.sx[m];
    if (ncols == kNR) {
      const __m256i vrs = _mm256_set1_epi32(rs);
      const __m256 vsx = _mm256_set1_ps(sxm);
      for (int h = 0; h < 2; ++h) {
        const __m256i a = _mm256_sub_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(t + 8 * h)), vrs);
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(a), vsx);
        v = _mm256_mul_ps(v, P.sw_per_channel ? _mm256_loadu_ps(P.sw + nb + 8 * h) : _mm256_set1_ps(P.sw[0]));
        if (P.bias != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(P.bias + nb + 8 * h));
        if (P.gelu) v = gelu_avx2(v);
        _mm256_storeu_ps(yr + 8 * h, v);
      }
    } else {
      for (int64_t j = 0; j < ncols; ++j) {
        float v = static_cast<float>(t[j] - rs) * sxm;
        v = v * (P.sw_per_channel ? P.sw[nb + j] : P.sw[0]);
        if (P.bias != nullptr) v = v + P.bias[nb + j];
        yr[j] = P.gelu ? gelu_scalar(v) : v;
      }
    }
  }
}

}  // namespace
}  // namespace ternary_hf_kernel
