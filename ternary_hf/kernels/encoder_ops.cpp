// Fused CPU ops of the fast encoder forward (ternary_hf/integrations/fast_forward): padding-free attention over packed
// sequences, and residual add + LayerNorm in one pass.
//
// Why this file exists: once the ternary GEMM is fast, an encoder forward in PyTorch eager spends its
// time around it: attention goes through a padded (B, heads, L, L) score tensor with an additive mask
// and a dozen small ops, LayerNorm and its residual add are two passes and two dispatches, and every
// padding token is computed like a real one. Here tokens of all sequences are packed into one
// (tokens, features) matrix (no padding anywhere) and each op below is one call.
//
// Batch invariance (issue 27 item 11): every output row depends only on its own sequence, through a
// code path fixed by the sequence length and the head size, never by the batch or the thread count:
// attention runs one task per (sequence, head) with a fixed reduction order, LayerNorm one row at a
// time. A sentence encoded alone or inside any batch therefore gets bit-identical hidden states.
//
// Numerics: float32 throughout; exp() is a polynomial (relative error ~2e-7, below float32's own
// rounding of the scores), the softmax is normalised after the value product (one multiply by
// 1 / sum per output). Tests compare with torch's scaled_dot_product_attention and layer_norm.
// AVX2 + FMA intrinsics in every build; the VNNI build adds AVX-512 variants (#if defined(__AVX512F__)).
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "epilogue.h"  // exp_neg_avx2, shared with the GEMM's GELU epilogue
#include "team_gemm.h"

// ternary_cpu.cpp: the ternary GEMM (int8 activations quantized inside, optional GELU epilogue).
torch::Tensor ternary_linear_op(const torch::Tensor& x, const torch::Tensor& prepared, const torch::Tensor& weight_scale,
                                const c10::optional<torch::Tensor>& bias, int64_t in_features, int64_t out_features,
                                bool gelu);

namespace {

// Horizontal sum / max of 8 lanes in a fixed order (the order never depends on the data layout).
inline float hsum8(__m256 v) {
  alignas(32) float l[8];
  _mm256_store_ps(l, v);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}
inline float hmax8(__m256 v) {
  alignas(32) float l[8];
  _mm256_store_ps(l, v);
  float m = l[0];
  for (int i = 1; i < 8; ++i) m = std::max(m, l[i]);
  return m;
}

struct AttentionScratch {
  std::vector<float> kt;  // K^T of one (sequence, head): d x lp (zero-padded columns)
  std::vector<float> v;   // V of one (sequence, head): l x d, contiguous
  std::vector<float> q;   // Q of one (sequence, head): l x d, contiguous
  std::vector<float> p;   // scores / probabilities of a block of kQ query rows: kQ x lp
};
AttentionScratch& attention_scratch() {
  static thread_local AttentionScratch s;
  return s;
}

constexpr int kQ = 4;  // query rows computed together (their accumulators hide the FMA latency)

// o[r][cb, cb + 8) of weighted_rows (below) with 8-wide FMAs: shared by both builds, so a head size
// that is a multiple of 8 but not of 16 gets the same bits from each.
inline void weighted_cols8(const float* p, int64_t lp, const float* v, int64_t l, int64_t d, int64_t cb,
                           const float* inv, float* const* o) {
  __m256 a[kQ];
  for (int r = 0; r < kQ; ++r) a[r] = _mm256_setzero_ps();
  for (int64_t j = 0; j < l; ++j) {
    const __m256 v0 = _mm256_loadu_ps(v + j * d + cb);
    for (int r = 0; r < kQ; ++r) a[r] = _mm256_fmadd_ps(_mm256_set1_ps(p[r * lp + j]), v0, a[r]);
  }
  for (int r = 0; r < kQ; ++r) {
    if (o[r] != nullptr) _mm256_storeu_ps(o[r] + cb, _mm256_mul_ps(a[r], _mm256_set1_ps(inv[r])));
  }
}

#if defined(__AVX512F__)
// AVX-512 versions (the VNNI build): the same sums in the same order per output element as the AVX2
// code below (the softmax denominator included), so both builds give the same bits; half the
// instructions. Zen 4 and Intel cores alike run them at least as fast.
inline __m512 exp_nonpositive16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

inline void score_rows(const float* const* q, const float* kt, int64_t d, int64_t lp, float scale, float* s) {
  const __m512 vs = _mm512_set1_ps(scale);
  int64_t jb = 0;
  for (; jb + 32 <= lp; jb += 32) {
    __m512 a[kQ][2];
    for (int r = 0; r < kQ; ++r) a[r][0] = a[r][1] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const __m512 k0 = _mm512_loadu_ps(kt + c * lp + jb), k1 = _mm512_loadu_ps(kt + c * lp + jb + 16);
#pragma GCC unroll 4
      for (int r = 0; r < kQ; ++r) {
        const __m512 qc = _mm512_set1_ps(q[r][c]);
        a[r][0] = _mm512_fmadd_ps(qc, k0, a[r][0]);
        a[r][1] = _mm512_fmadd_ps(qc, k1, a[r][1]);
      }
    }
    for (int r = 0; r < kQ; ++r) {
      _mm512_storeu_ps(s + r * lp + jb, _mm512_mul_ps(a[r][0], vs));
      _mm512_storeu_ps(s + r * lp + jb + 16, _mm512_mul_ps(a[r][1], vs));
    }
  }
  if (jb < lp) {  // one block of 16 left
    __m512 a[kQ];
    for (int r = 0; r < kQ; ++r) a[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const __m512 k0 = _mm512_loadu_ps(kt + c * lp + jb);
#pragma GCC unroll 4
      for (int r = 0; r < kQ; ++r) a[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][c]), k0, a[r]);
    }
    for (int r = 0; r < kQ; ++r) _mm512_storeu_ps(s + r * lp + jb, _mm512_mul_ps(a[r], vs));
  }
}

template <int U>  // U zmm (16 floats each) per row
inline void weighted_block(const float* p, int64_t lp, const float* v, int64_t l, int64_t d, int64_t cb,
                           const float* inv, float* const* o) {
  __m512 a[kQ][U];
  for (int r = 0; r < kQ; ++r) {
    for (int u = 0; u < U; ++u) a[r][u] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < l; ++j) {
    __m512 vv[U];
    for (int u = 0; u < U; ++u) vv[u] = _mm512_loadu_ps(v + j * d + cb + 16 * u);
#pragma GCC unroll 4
    for (int r = 0; r < kQ; ++r) {
      const __m512 pj = _mm512_set1_ps(p[r * lp + j]);
      for (int u = 0; u < U; ++u) a[r][u] = _mm512_fmadd_ps(pj, vv[u], a[r][u]);
    }
  }
  for (int r = 0; r < kQ; ++r) {
    if (o[r] == nullptr) continue;
    const __m512 vi = _mm512_set1_ps(inv[r]);
    for (int u = 0; u < U; ++u) _mm512_storeu_ps(o[r] + cb + 16 * u, _mm512_mul_ps(a[r][u], vi));
  }
}

inline void weighted_rows(const float* p, int64_t lp, const float* v, int64_t l, int64_t d, const float* inv,
                          float* const* o) {
  int64_t cb = 0;
  for (; cb + 64 <= d; cb += 64) weighted_block<4>(p, lp, v, l, d, cb, inv, o);
  for (; cb + 32 <= d; cb += 32) weighted_block<2>(p, lp, v, l, d, cb, inv, o);
  for (; cb + 16 <= d; cb += 16) weighted_block<1>(p, lp, v, l, d, cb, inv, o);
  for (; cb + 8 <= d; cb += 8) weighted_cols8(p, lp, v, l, d, cb, inv, o);  // as the AVX2 code
  for (; cb < d; ++cb) {
    for (int r = 0; r < kQ; ++r) {
      float a = 0.0f;
      for (int64_t j = 0; j < l; ++j) a += p[r * lp + j] * v[j * d + cb];
      if (o[r] != nullptr) o[r][cb] = a * inv[r];
    }
  }
}

inline float softmax_row(float* pr, int64_t l, int64_t lp) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t j = l; j < lp; ++j) pr[j] = neg_inf;
  __m512 vmax = _mm512_set1_ps(neg_inf);
  for (int64_t j = 0; j < lp; j += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(pr + j));
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  // The sum runs over 8 lanes, low half then high half of each 16, in the AVX2 code's order: the
  // two builds then give the same bits.
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < lp; j += 16) {
    __m512 e = exp_nonpositive16(_mm512_sub_ps(_mm512_loadu_ps(pr + j), mx));
    if (j + 16 > l) e = _mm512_maskz_mov_ps(static_cast<__mmask16>((1u << std::max<int64_t>(0, l - j)) - 1u), e);
    _mm512_storeu_ps(pr + j, e);
    vsum = _mm256_add_ps(vsum, _mm512_castps512_ps256(e));
    vsum = _mm256_add_ps(vsum, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
  }
  return 1.0f / hsum8(vsum);
}
#else
// s[r][0, lp) = (q_r . K^T) * scale for kQ query rows q[r] (kt: d x lp, lp a multiple of 16).
inline void score_rows(const float* const* q, const float* kt, int64_t d, int64_t lp, float scale, float* s) {
  const __m256 vs = _mm256_set1_ps(scale);
  for (int64_t jb = 0; jb < lp; jb += 16) {
    __m256 a[kQ][2];
    for (int r = 0; r < kQ; ++r) a[r][0] = a[r][1] = _mm256_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const __m256 k0 = _mm256_loadu_ps(kt + c * lp + jb), k1 = _mm256_loadu_ps(kt + c * lp + jb + 8);
#pragma GCC unroll 4
      for (int r = 0; r < kQ; ++r) {
        const __m256 qc = _mm256_set1_ps(q[r][c]);
        a[r][0] = _mm256_fmadd_ps(qc, k0, a[r][0]);
        a[r][1] = _mm256_fmadd_ps(qc, k1, a[r][1]);
      }
    }
    for (int r = 0; r < kQ; ++r) {
      _mm256_storeu_ps(s + r * lp + jb, _mm256_mul_ps(a[r][0], vs));
      _mm256_storeu_ps(s + r * lp + jb + 8, _mm256_mul_ps(a[r][1], vs));
    }
  }
}

// o[r][0, d) = (sum_j p[r][j] * v_j) * inv[r] for kQ rows (v: l x d contiguous).
inline void weighted_rows(const float* p, int64_t lp, const float* v, int64_t l, int64_t d, const float* inv,
                          float* const* o) {
  int64_t cb = 0;
  for (; cb + 32 <= d; cb += 32) {
    __m256 a[kQ][4];
    for (int r = 0; r < kQ; ++r) a[r][0] = a[r][1] = a[r][2] = a[r][3] = _mm256_setzero_ps();
    for (int64_t j = 0; j < l; ++j) {
      const float* vr = v + j * d + cb;
      const __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + 8), v2 = _mm256_loadu_ps(vr + 16),
                   v3 = _mm256_loadu_ps(vr + 24);
#pragma GCC unroll 4
      for (int r = 0; r < kQ; ++r) {
        const __m256 pj = _mm256_set1_ps(p[r * lp + j]);
        a[r][0] = _mm256_fmadd_ps(pj, v0, a[r][0]);
        a[r][1] = _mm256_fmadd_ps(pj, v1, a[r][1]);
        a[r][2] = _mm256_fmadd_ps(pj, v2, a[r][2]);
        a[r][3] = _mm256_fmadd_ps(pj, v3, a[r][3]);
      }
    }
    for (int r = 0; r < kQ; ++r) {
      if (o[r] == nullptr) continue;
      const __m256 vi = _mm256_set1_ps(inv[r]);
      for (int u = 0; u < 4; ++u) _mm256_storeu_ps(o[r] + cb + 8 * u, _mm256_mul_ps(a[r][u], vi));
    }
  }
  for (; cb + 8 <= d; cb += 8) weighted_cols8(p, lp, v, l, d, cb, inv, o);
  for (; cb < d; ++cb) {
    for (int r = 0; r < kQ; ++r) {
      float a = 0.0f;
      for (int64_t j = 0; j < l; ++j) a += p[r * lp + j] * v[j * d + cb];
      if (o[r] != nullptr) o[r][cb] = a * inv[r];
    }
  }
}

// Softmax of one score row in place: p[j] = exp(p[j] - max) for j < l, exactly 0 for l <= j < lp;
// returns 1 / sum.
inline float softmax_row(float* pr, int64_t l, int64_t lp) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j = l; j < lp; ++j) pr[j] = neg_inf;
  __m256 vmax = _mm256_set1_ps(neg_inf);
  for (int64_t j = 0; j < lp; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(pr + j));
  const __m256 mx = _mm256_set1_ps(hmax8(vmax));
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < lp; j += 8) {
    __m256 e = ternary_hf_kernel::exp_neg_avx2(_mm256_sub_ps(_mm256_loadu_ps(pr + j), mx));
    if (j + 8 > l) {  // padded tail lanes: exactly zero (the clamped exp would give ~1e-38)
      const __m256i n_keep = _mm256_set1_epi32(static_cast<int>(std::max<int64_t>(0, l - j)));
      e = _mm256_and_ps(e, _mm256_castsi256_ps(_mm256_cmpgt_epi32(n_keep, lane)));
    }
    _mm256_storeu_ps(pr + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  return 1.0f / hsum8(vsum);
}

#endif  // __AVX512F__

struct AttentionProblem {
  const float* qkv;   // [T][3 * hidden]: q | k | v, head h at columns h*d .. h*d + d of each part
  int64_t ld;         // 3 * hidden
  int64_t hidden, heads, d;
  float scale;
  const float* bias;  // [heads][bias_width] relative-position bias indexed by (j - i + center), or nullptr
  int64_t bias_width, center;
  float* out;         // [T][hidden]
};

// softmax((q K^T) * scale + bias) V for one sequence [base, base + l) and heads [h0, h1). Queries,
// keys and values of those heads are first copied out of the packed rows (each row read once, front
// to back: reading one head's 32-128 floats per row instead left the copy waiting on cache misses),
// K transposed to d x lp per head, Q and V to l x d per head. Query rows go in blocks of kQ; a block past the
// end repeats the last row (computed, not stored), so every row runs the same instructions wherever
// it falls, and the result depends on the sequence alone (not on the head range either).
void attend_head(const AttentionProblem& P, int64_t base, int64_t l, int64_t h, const float* qp, const float* kt,
                 const float* vp, float* p);

void attend(const AttentionProblem& P, int64_t base, int64_t l, int64_t h0, int64_t h1) {
  if (l <= 0) return;
  const int64_t d = P.d, nh = h1 - h0;
  const int64_t lp = (l + 15) / 16 * 16;
  AttentionScratch& s = attention_scratch();
  if (static_cast<int64_t>(s.kt.size()) < nh * d * lp) s.kt.resize(nh * d * lp);
  if (static_cast<int64_t>(s.v.size()) < nh * l * d) s.v.resize(nh * l * d);
  if (static_cast<int64_t>(s.q.size()) < nh * l * d) s.q.resize(nh * l * d);
  if (static_cast<int64_t>(s.p.size()) < kQ * lp) s.p.resize(kQ * lp);
  float* kt = s.kt.data();
  float* vp = s.v.data();
  float* qp = s.q.data();
  for (int64_t j = 0; j < l; ++j) {
    const float* qr = P.qkv + (base + j) * P.ld + h0 * d;
    const float* kr = qr + P.hidden;
    const float* vr = kr + P.hidden;
    for (int64_t h = 0; h < nh; ++h) {  // plain loops: a memcpy call per 32-128 floats cost more than the copy
      float* qd = qp + (h * l + j) * d;
      float* vd = vp + (h * l + j) * d;
      float* kth = kt + h * d * lp;
      for (int64_t c = 0; c < d; ++c) qd[c] = qr[h * d + c];
      for (int64_t c = 0; c < d; ++c) vd[c] = vr[h * d + c];
      for (int64_t c = 0; c < d; ++c) kth[c * lp + j] = kr[h * d + c];
    }
  }
  for (int64_t hc = 0; hc < nh * d; ++hc) {
    for (int64_t j = l; j < lp; ++j) kt[hc * lp + j] = 0.0f;
  }
  for (int64_t h = 0; h < nh; ++h) {
    attend_head(P, base, l, h0 + h, qp + h * l * d, kt + h * d * lp, vp + h * l * d, s.p.data());
  }
}

void attend_head(const AttentionProblem& P, int64_t base, int64_t l, int64_t h, const float* qp, const float* kt,
                 const float* vp, float* p) {
  const int64_t d = P.d;
  const int64_t lp = (l + 15) / 16 * 16;
  const float* brow = P.bias != nullptr ? P.bias + h * P.bias_width + P.center : nullptr;
  for (int64_t i0 = 0; i0 < l; i0 += kQ) {
    const float* q[kQ];
    float* o[kQ];
    float inv[kQ];
    for (int r = 0; r < kQ; ++r) {
      const int64_t i = std::min(i0 + r, l - 1);
      q[r] = qp + i * d;
      o[r] = i0 + r < l ? P.out + (base + i) * P.hidden + h * d : nullptr;
    }
    score_rows(q, kt, d, lp, P.scale, p);
    for (int r = 0; r < kQ; ++r) {
      float* pr = p + r * lp;
      const int64_t i = std::min(i0 + r, l - 1);
      if (brow != nullptr) {
        for (int64_t j = 0; j < l; ++j) pr[j] += brow[j - i];
      }
      inv[r] = softmax_row(pr, l, lp);
    }
    weighted_rows(p, lp, vp, l, d, inv, o);
  }
}

// Tasks: (sequence, group of heads), all heads of a sequence together unless there are too few
// sequences to keep the threads busy.
struct AttentionTasks {
  int64_t groups, per_group, heads, count;
};

AttentionTasks attention_tasks(int64_t n_seq, int64_t heads, int64_t threads) {
  const int64_t groups = std::min(heads, std::max<int64_t>(1, (4 * threads + n_seq - 1) / std::max<int64_t>(n_seq, 1)));
  return {groups, (heads + groups - 1) / groups, heads, n_seq * groups};
}

void attend_task(const AttentionProblem& P, const int64_t* cu, const AttentionTasks& T, int64_t t) {
  const int64_t b = t / T.groups, g = t % T.groups;
  const int64_t h0 = g * T.per_group, h1 = std::min(T.heads, h0 + T.per_group);
  if (h0 < h1) attend(P, cu[b], cu[b + 1] - cu[b], h0, h1);
}

// tokens x longest sequence x hidden below which attention stays on one thread (the fork and join
// would cost more than the split saves); _set_min_attention_work changes it (tests, benchmarks).
int64_t g_min_attention_work = int64_t(1) << 18;

torch::Tensor varlen_attention(const torch::Tensor& qkv, const torch::Tensor& cu_seqlens, int64_t heads, double scale,
                               const c10::optional<torch::Tensor>& rel_bias, int64_t center) {
  TORCH_CHECK_VALUE(qkv.device().is_cpu() && qkv.scalar_type() == torch::kFloat32 && qkv.dim() == 2 &&
                        qkv.is_contiguous() && qkv.size(1) % 3 == 0,
                    "varlen_attention: qkv must be a contiguous float32 CPU tensor (tokens, 3 * hidden)");
  const int64_t hidden = qkv.size(1) / 3;
  TORCH_CHECK_VALUE(heads > 0 && hidden % heads == 0, "varlen_attention: hidden size ", hidden,
                    " is not a multiple of heads=", heads);
  TORCH_CHECK_VALUE(cu_seqlens.device().is_cpu() && cu_seqlens.scalar_type() == torch::kInt64 &&
                        cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 1 && cu_seqlens.is_contiguous(),
                    "varlen_attention: cu_seqlens must be a 1-D int64 CPU tensor (sequences + 1)");
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  const int64_t n_seq = cu_seqlens.numel() - 1;
  TORCH_CHECK_VALUE(cu[0] == 0 && cu[n_seq] == qkv.size(0), "varlen_attention: cu_seqlens must run from 0 to ",
                    qkv.size(0), " tokens");
  int64_t max_len = 0;
  for (int64_t b = 0; b < n_seq; ++b) {
    TORCH_CHECK_VALUE(cu[b + 1] >= cu[b], "varlen_attention: cu_seqlens must be non-decreasing");
    max_len = std::max(max_len, cu[b + 1] - cu[b]);
  }
  AttentionProblem P{qkv.data_ptr<float>(), 3 * hidden, hidden, heads, hidden / heads, static_cast<float>(scale),
                     nullptr, 0, center, nullptr};
  if (rel_bias.has_value()) {
    const auto& rb = *rel_bias;
    TORCH_CHECK_VALUE(rb.device().is_cpu() && rb.scalar_type() == torch::kFloat32 && rb.dim() == 2 &&
                          rb.size(0) == heads && rb.is_contiguous(),
                      "varlen_attention: rel_bias must be a contiguous float32 (heads, width) tensor");
    TORCH_CHECK_VALUE(center >= max_len - 1 && center + max_len <= rb.size(1),
                      "varlen_attention: rel_bias of width ", rb.size(1), " with center ", center,
                      " does not cover sequences of ", max_len, " tokens");
    P.bias = rb.data_ptr<float>();
    P.bias_width = rb.size(1);
  }
  auto out = torch::empty({qkv.size(0), hidden}, qkv.options());
  P.out = out.data_ptr<float>();
  const AttentionTasks T = attention_tasks(n_seq, heads, at::get_num_threads());
  const int64_t work = std::max<int64_t>(1, qkv.size(0) * max_len * hidden);
  const int64_t grain = work < g_min_attention_work ? T.count : 1;
  at::parallel_for(0, T.count, std::max<int64_t>(1, grain), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) attend_task(P, cu, T, t);
  });
  return out;
}

// Rows [r0, r1) of add_layernorm (below): out = LayerNorm(y + residual), and the sum itself into
// sp when sp is not null (else into `row`, n floats of scratch). One pass per row, reductions in a
// fixed order, so every caller gets the same bits for a row.
void layernorm_rows(const float* yp, const float* rp, const float* g, const float* bt, double eps, int64_t n,
                    float* op, float* sp, float* row, int64_t r0, int64_t r1) {
  const float inv_n = 1.0f / static_cast<float>(n);
  const int64_t n8 = n / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const float* yr = yp + r * n;
    float* x = sp != nullptr ? sp + r * n : row;
    __m256 vs = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) {
      __m256 v = _mm256_loadu_ps(yr + i);
      if (rp != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(rp + r * n + i));
      _mm256_storeu_ps(x + i, v);
      vs = _mm256_add_ps(vs, v);
    }
    float tail = 0.0f;
    for (int64_t i = n8; i < n; ++i) {
      x[i] = rp != nullptr ? yr[i] + rp[r * n + i] : yr[i];
      tail += x[i];
    }
    const float mean = (hsum8(vs) + tail) * inv_n;
    const __m256 vm = _mm256_set1_ps(mean);
    __m256 vv = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) {
      const __m256 c = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
      vv = _mm256_fmadd_ps(c, c, vv);
    }
    float vtail = 0.0f;
    for (int64_t i = n8; i < n; ++i) vtail += (x[i] - mean) * (x[i] - mean);
    const float rstd = 1.0f / std::sqrt((hsum8(vv) + vtail) * inv_n + static_cast<float>(eps));
    const __m256 vr = _mm256_set1_ps(rstd);
    float* o = op + r * n;
    for (int64_t i = 0; i < n8; i += 8) {
      const __m256 c = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vr);
      _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_mul_ps(c, _mm256_loadu_ps(g + i)), _mm256_loadu_ps(bt + i)));
    }
    for (int64_t i = n8; i < n; ++i) o[i] = (x[i] - mean) * rstd * g[i] + bt[i];
  }
}

// out = LayerNorm(y + residual) (residual optional); with return_sum also the sum y + residual itself
// (the residual stream of a pre-LN block). One pass per row, reductions in a fixed order.
std::vector<torch::Tensor> add_layernorm(const torch::Tensor& y, const c10::optional<torch::Tensor>& residual,
                                         const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                                         bool return_sum) {
  TORCH_CHECK_VALUE(y.device().is_cpu() && y.scalar_type() == torch::kFloat32 && y.dim() == 2 && y.is_contiguous(),
                    "add_layernorm: y must be a contiguous 2-D float32 CPU tensor");
  const int64_t rows = y.size(0), n = y.size(1);
  if (residual.has_value()) {
    TORCH_CHECK_VALUE(residual->scalar_type() == torch::kFloat32 && residual->is_contiguous() &&
                          residual->sizes() == y.sizes(),
                      "add_layernorm: residual must be a contiguous float32 tensor shaped like y");
  }
  TORCH_CHECK_VALUE(gamma.scalar_type() == torch::kFloat32 && gamma.is_contiguous() && gamma.numel() == n &&
                        beta.scalar_type() == torch::kFloat32 && beta.is_contiguous() && beta.numel() == n,
                    "add_layernorm: weight and bias must be contiguous float32 of ", n, " elements");
  auto out = torch::empty_like(y);
  torch::Tensor sum = return_sum ? torch::empty_like(y) : torch::Tensor();
  const float* yp = y.data_ptr<float>();
  const float* rp = residual.has_value() ? residual->data_ptr<float>() : nullptr;
  const float* g = gamma.data_ptr<float>();
  const float* bt = beta.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* sp = return_sum ? sum.data_ptr<float>() : nullptr;
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(n, 1)),
                   [&](int64_t r0, int64_t r1) {
    std::vector<float> row(sp == nullptr ? n : 0);
    layernorm_rows(yp, rp, g, bt, eps, n, op, sp, row.data(), r0, r1);
  });
  if (return_sum) return {out, sum};
  return {out};
}


// ---------------------------------------------------------------------------------------------
// The whole encoder in one call (the runtime's default when every layer fits): the layers below run
// on packed tokens exactly as the Python loop of ternary_hf/runtime/engine.py runs them, with the same
// ops, so the two give identical results. Why in C++: with two threads, every op of the Python loop
// is an OpenMP fork and join (~60 per MiniLM forward), and on a machine shared with other jobs each
// join waits whenever the other thread is descheduled (measured: the op-by-op forward at 2 threads
// ran at a fifth of its 1-thread speed on a loaded box). Here, when a batch has enough sequences, the
// sequences are split into chunks; the calling thread and helpers on torch's inter-op pool claim
// them one at a time and encode each through all layers single-threaded. The caller never waits for
// a helper that has not started (a late helper finds nothing left): on a busy machine the forward
// degrades to one thread's speed instead of stalling. Chunking cannot change a result: every row
// depends on its own sequence only. A batch with too few sequences runs as one chunk whose ops share
// the threads as usual.
struct Gemm {
  torch::Tensor w, s;
  c10::optional<torch::Tensor> b;
  int64_t k, n;
  bool gelu;
  torch::Tensor operator()(const torch::Tensor& x) const { return ternary_linear_op(x, w, s, b, k, n, gelu); }
};
struct Norm {
  torch::Tensor w, b;
  double eps;
};
struct Layer {
  Gemm qkv, o, up, down;
  Norm attn, ffn;  // post-LN: after each residual; pre-LN: before attention / before the feed-forward block
};
struct Encoder {
  std::vector<Layer> layers;
  bool pre_norm;
  c10::optional<Norm> final_norm;
  int64_t heads;
  double scale;
  c10::optional<torch::Tensor> rel_bias;
  int64_t center;
};

torch::Tensor encode_chunk(const Encoder& E, torch::Tensor x, const torch::Tensor& cu) {
  const auto attend_all = [&](const torch::Tensor& qkv) {
    return varlen_attention(qkv, cu, E.heads, E.scale, E.rel_bias, E.center);
  };
  if (!E.pre_norm) {
    for (const Layer& L : E.layers) {
      x = add_layernorm(L.o(attend_all(L.qkv(x))), x, L.attn.w, L.attn.b, L.attn.eps, false)[0];
      x = add_layernorm(L.down(L.up(x)), x, L.ffn.w, L.ffn.b, L.ffn.eps, false)[0];
    }
    return x;
  }
  torch::Tensor r = x;
  torch::Tensor h = add_layernorm(r, c10::nullopt, E.layers[0].attn.w, E.layers[0].attn.b, E.layers[0].attn.eps,
                                  false)[0];
  for (size_t i = 0; i < E.layers.size(); ++i) {
    const Layer& L = E.layers[i];
    auto hr = add_layernorm(L.o(attend_all(L.qkv(h))), r, L.ffn.w, L.ffn.b, L.ffn.eps, true);
    const torch::Tensor f = L.down(L.up(hr[0]));
    r = hr[1];
    const Norm* next = i + 1 < E.layers.size() ? &E.layers[i + 1].attn : (E.final_norm ? &*E.final_norm : nullptr);
    if (next == nullptr) return f + r;
    hr = add_layernorm(f, r, next->w, next->b, next->eps, true);
    h = hr[0];
    r = hr[1];
  }
  return h;
}

// ---------------------------------------------------------------------------------------------
// The team forward: a batch too small to split into chunks (one sentence: the latency case) runs
// every op on all threads. Calling each op's own parallel code forks and joins once per op (~30 per
// MiniLM forward), and whenever the other thread fell asleep between two ops the fork pays a
// wake-up, which in a virtual machine costs more than a small GEMM at batch 1. Here the threads
// enter one OpenMP region for the whole forward, claim the work of each op (activation rows, GEMM
// output units, attention heads, LayerNorm rows) from a shared counter, and meet at a spinning
// barrier between ops. Every row, unit and head is computed by the same code as in encode_chunk, so
// the result is bit-identical to it (tests compare the two).

bool g_team_forward = true;          // _set_team_forward (tests, benchmarks)
std::atomic<int64_t> g_team_runs{0};  // team forwards run so far (_team_forward_count, tests)

// A barrier that spins (then yields) instead of sleeping: the waits between ops are microseconds.
class SpinBarrier {
 public:
  void reset(int n) { n_ = n; }
  void wait() {
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 100000) {
        _mm_pause();
      } else {
        std::this_thread::yield();  // the other thread is descheduled: give the core back
      }
    }
  }

 private:
  int n_ = 1;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

// Shared state of one team forward. Every thread walks the same op sequence, so op number i names
// the same work everywhere; counters[i] hands out that op's work.
class Team {
 public:
  explicit Team(size_t ops) : counters_(new std::atomic<int64_t>[ops]) {
    for (size_t i = 0; i < ops; ++i) counters_[i].store(0, std::memory_order_relaxed);
  }
  SpinBarrier barrier;

  // fn(i0, i1) over [0, n) in pieces of `chunk`, shared by whoever claims them; then the barrier.
  template <typename F>
  void share(size_t& op, int64_t n, int64_t chunk, const F& fn) {
    std::atomic<int64_t>& next = counters_[op++];
    for (int64_t i = next.fetch_add(chunk, std::memory_order_relaxed); i < n;
         i = next.fetch_add(chunk, std::memory_order_relaxed)) {
      fn(i, std::min(n, i + chunk));
    }
    barrier.wait();
  }

 private:
  std::unique_ptr<std::atomic<int64_t>[]> counters_;
};

constexpr int64_t kTeamRows = 8;  // rows per claim for quantization and LayerNorm

struct TeamLayer {
  TeamGemm qkv, o, up, down;
  int64_t units[4];
};

// A layer of the chain hidden -> ... -> hidden: its own dims as expected, its weights as the kernel needs.
void check_gemm_chain(const Gemm& g, int64_t k, int64_t n, const char* name) {
  TORCH_CHECK_VALUE(g.k == k && g.n == n, "encoder_forward: the ", name, " layer is ", g.k, " -> ", g.n,
                    ", the encoder needs ", k, " -> ", n);
  team_gemm_check(g.w, g.s, g.b, k, n);
}

TeamGemm team_gemm(const Gemm& g, const float* x, int64_t m, float* y, int8_t* q, int32_t* qsum, float* sx,
                   uint8_t* reach) {
  TeamGemm t;
  t.x = x;
  t.m = m;
  t.k = g.k;
  t.n = g.n;
  t.w = static_cast<const uint8_t*>(g.w.data_ptr());  // uint8, or int8 for int4 codes
  t.sw = g.s.data_ptr<float>();
  t.sw_per_channel = g.s.numel() > 1;
  t.bias = g.b.has_value() ? g.b->data_ptr<float>() : nullptr;
  t.gelu = g.gelu;
  t.int8_weights = team_gemm_int8(g.w);
  t.int4_codes = team_gemm_int4(g.w);
  t.y = y;
  t.q = q;
  t.qsum = qsum;
  t.sx = sx;
  t.reach = reach;
  return t;
}

void team_run_gemm(Team& T, size_t& op, const TeamGemm& g, int64_t units) {
  T.share(op, g.m, kTeamRows, [&](int64_t r0, int64_t r1) { team_gemm_quantize(g, r0, r1); });
  T.share(op, units, 1, [&](int64_t u, int64_t) { team_gemm_unit(g, u); });
}

// The checks encode_team makes before its region, where nothing may throw; returns the widest
// feed-forward layer.
int64_t check_team_encoder(const Encoder& E, int64_t hidden, int64_t max_len) {
  TORCH_CHECK_VALUE(hidden % E.heads == 0, "encoder_forward: hidden size ", hidden, " is not a multiple of heads=",
                    E.heads);
  int64_t inter = 0;
  for (const Layer& L : E.layers) {
    inter = std::max(inter, L.up.n);
    check_gemm_chain(L.qkv, hidden, 3 * hidden, "query/key/value");
    check_gemm_chain(L.o, hidden, hidden, "attention output");
    check_gemm_chain(L.up, hidden, L.up.n, "feed-forward up");
    check_gemm_chain(L.down, L.up.n, hidden, "feed-forward down");
  }
  if (E.rel_bias.has_value()) {
    TORCH_CHECK_VALUE(E.rel_bias->scalar_type() == torch::kFloat32 && E.rel_bias->dim() == 2 &&
                          E.rel_bias->size(0) == E.heads && E.rel_bias->is_contiguous() &&
                          E.center >= max_len - 1 && E.center + max_len <= E.rel_bias->size(1),
                      "encoder_forward: rel_bias must be a contiguous float32 (heads, width) table covering ",
                      max_len, " tokens");
  }
  return inter;
}

// Everything one team forward reads and writes, set up before the region. Post-LN: layer i reads x
// (then s2), LayerNorm(a + input) goes to s1 and LayerNorm(f + s1) to s2, the next layer's input.
// Pre-LN: h holds the normalised input of each block; the residual stream goes x -> s1 -> s2 -> s1
// ... (a LayerNorm never writes what it reads). `out` is s2, h, or (pre-LN without a final norm)
// its own buffer for f + r.
struct TeamPlan {
  torch::Tensor qkv, ctx, a, f, u, s1, s2, h, out;
  std::vector<int8_t> q;  // quantized activations, shared by every GEMM in turn
  std::vector<int32_t> qsum;
  std::vector<float> sx;
  std::vector<uint8_t> reach;  // int4 widening reach of the quantized rows (team_gemm_reach_elems)
  std::vector<TeamLayer> layers;
  AttentionProblem attention;
  AttentionTasks tasks;
};

void plan_team(const Encoder& E, const torch::Tensor& x, const int64_t* cu, int64_t n_seq, int threads,
               TeamPlan& T) {
  const int64_t m = x.size(0), hidden = x.size(1);
  int64_t max_len = 0;
  for (int64_t b = 0; b < n_seq; ++b) max_len = std::max(max_len, cu[b + 1] - cu[b]);
  const int64_t inter = check_team_encoder(E, hidden, max_len);
  const auto opts = x.options();
  for (torch::Tensor* t : {&T.ctx, &T.a, &T.f, &T.s1, &T.s2}) *t = torch::empty({m, hidden}, opts);
  T.qkv = torch::empty({m, 3 * hidden}, opts);
  T.u = torch::empty({m, inter}, opts);
  if (E.pre_norm) T.h = torch::empty({m, hidden}, opts);
  T.out = E.pre_norm ? (E.final_norm.has_value() ? T.h : torch::empty({m, hidden}, opts)) : T.s2;
  T.q.resize(static_cast<size_t>(std::max(team_gemm_q_elems(m, hidden), team_gemm_q_elems(m, inter))));
  T.qsum.resize(m);
  T.sx.resize(m);
  T.reach.resize(static_cast<size_t>(std::max(team_gemm_reach_elems(m, hidden), team_gemm_reach_elems(m, inter))));
  const float* xp = x.data_ptr<float>();
  float* hp = E.pre_norm ? T.h.data_ptr<float>() : nullptr;
  for (size_t i = 0; i < E.layers.size(); ++i) {
    const Layer& L = E.layers[i];
    const float* in = E.pre_norm ? hp : (i == 0 ? xp : T.s2.data_ptr<float>());
    const float* mid = E.pre_norm ? hp : T.s1.data_ptr<float>();
    const auto gemm = [&](const Gemm& g, const float* src, const torch::Tensor& dst) {
      return team_gemm(g, src, m, dst.data_ptr<float>(), T.q.data(), T.qsum.data(), T.sx.data(), T.reach.data());
    };
    TeamLayer t{gemm(L.qkv, in, T.qkv), gemm(L.o, T.ctx.data_ptr<float>(), T.a), gemm(L.up, mid, T.u),
                gemm(L.down, T.u.data_ptr<float>(), T.f), {}};
    const TeamGemm* gemms[4] = {&t.qkv, &t.o, &t.up, &t.down};
    for (int j = 0; j < 4; ++j) t.units[j] = team_gemm_units(*gemms[j]);  // may throw (AMX unavailable)
    T.layers.push_back(t);
  }
  T.attention = AttentionProblem{T.qkv.data_ptr<float>(), 3 * hidden, hidden, E.heads, hidden / E.heads,
                                 static_cast<float>(E.scale), nullptr, 0, E.center, T.ctx.data_ptr<float>()};
  if (E.rel_bias.has_value()) {
    T.attention.bias = E.rel_bias->data_ptr<float>();
    T.attention.bias_width = E.rel_bias->size(1);
  }
  T.tasks = attention_tasks(n_seq, E.heads, threads);
}

// One thread's walk through the ops of a team forward (every thread of the team runs this).
void team_walk(Team& team, const Encoder& E, const TeamPlan& T, const float* xp, const int64_t* cu) {
  const int64_t m = T.s1.size(0), hidden = T.s1.size(1);
  float* s[2] = {T.s1.data_ptr<float>(), T.s2.data_ptr<float>()};
  float* hp = E.pre_norm ? T.h.data_ptr<float>() : nullptr;
  size_t op = 0;
  const auto ln = [&](const float* y, const float* res, const Norm& nm, float* o, float* sum) {
    const float* g = nm.w.data_ptr<float>();
    const float* b = nm.b.data_ptr<float>();
    team.share(op, m, kTeamRows, [&](int64_t r0, int64_t r1) {
      static thread_local std::vector<float> row;
      if (static_cast<int64_t>(row.size()) < hidden) row.resize(hidden);
      layernorm_rows(y, res, g, b, nm.eps, hidden, o, sum, row.data(), r0, r1);
    });
  };
  const float* r = xp;  // pre-LN residual stream
  int rflip = 0;
  if (E.pre_norm) ln(xp, nullptr, E.layers[0].attn, hp, nullptr);
  for (size_t i = 0; i < T.layers.size(); ++i) {
    const TeamLayer& t = T.layers[i];
    const Layer& L = E.layers[i];
    team_run_gemm(team, op, t.qkv, t.units[0]);
    team.share(op, T.tasks.count, 1, [&](int64_t k, int64_t) { attend_task(T.attention, cu, T.tasks, k); });
    team_run_gemm(team, op, t.o, t.units[1]);
    if (!E.pre_norm) {
      ln(t.o.y, t.qkv.x, L.attn, s[0], nullptr);
      team_run_gemm(team, op, t.up, t.units[2]);
      team_run_gemm(team, op, t.down, t.units[3]);
      ln(t.down.y, s[0], L.ffn, s[1], nullptr);
      continue;
    }
    ln(t.o.y, r, L.ffn, hp, s[rflip]);
    r = s[rflip];
    rflip = 1 - rflip;
    team_run_gemm(team, op, t.up, t.units[2]);
    team_run_gemm(team, op, t.down, t.units[3]);
    const Norm* next = i + 1 < E.layers.size() ? &E.layers[i + 1].attn : (E.final_norm ? &*E.final_norm : nullptr);
    if (next == nullptr) {  // pre-LN without a final norm: the output is f + r
      const float* fr = t.down.y;
      float* outp = T.out.data_ptr<float>();
      team.share(op, m, kTeamRows, [&](int64_t r0, int64_t r1) {
        for (int64_t e = r0 * hidden; e < r1 * hidden; ++e) outp[e] = fr[e] + r[e];
      });
      return;
    }
    ln(t.down.y, r, *next, hp, s[rflip]);
    r = s[rflip];
    rflip = 1 - rflip;
  }
}

torch::Tensor encode_team(const Encoder& E, const torch::Tensor& x, const torch::Tensor& cu_seqlens, int threads) {
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  TeamPlan plan;
  plan_team(E, x, cu, cu_seqlens.numel() - 1, threads, plan);
  Team team(16 * E.layers.size() + 8);  // counters: 11 ops per layer, 2 more for a pre-LN stack
  g_team_runs.fetch_add(1, std::memory_order_relaxed);
#pragma omp parallel num_threads(threads)
  {
#pragma omp single
    team.barrier.reset(omp_get_num_threads());  // the threads the runtime gave (the single's barrier publishes it)
    team_walk(team, E, plan, x.data_ptr<float>(), cu);
  }
  return plan.out;
}

// Chunks of sequences claimed one at a time by the caller and its helpers (see above).
struct ChunkJob {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t n = 0;
  std::function<void(int64_t)> fn;
  std::mutex mu;
  std::exception_ptr error;
};

// OpenMP's thread count for this thread only, restored on exit: the ops of a chunk (GEMMs,
// attention, LayerNorm) then run inline on the thread that claimed it.
struct SingleThreadedOps {
  const int previous = omp_get_max_threads();
  SingleThreadedOps() { omp_set_num_threads(1); }
  ~SingleThreadedOps() { omp_set_num_threads(previous); }
};

void drain(ChunkJob& job) {
  SingleThreadedOps single;
  for (int64_t c = job.next.fetch_add(1); c < job.n; c = job.next.fetch_add(1)) {
    try {
      job.fn(c);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.mu);
      if (!job.error) job.error = std::current_exception();
    }
    job.done.fetch_add(1, std::memory_order_release);
  }
}

c10::optional<torch::Tensor> optional_bias(const torch::Tensor& t) {
  return t.numel() > 0 ? c10::optional<torch::Tensor>(t) : c10::nullopt;
}

// gemms: per layer 12 tensors (qkv, o, up, down: prepared, scale, bias or an empty tensor), dims: per
// layer 8 (k, n of each), norms: per layer 4 (attention norm weight, bias, feed-forward norm weight,
// bias), eps: per layer 2; final_norm: weight, bias (pre-LN models) or empty; chunks: the threads'
// work units when the batch is split (0 or 1: not split).
torch::Tensor encoder_forward(const torch::Tensor& x, const torch::Tensor& cu_seqlens,
                              const std::vector<torch::Tensor>& gemms, const std::vector<int64_t>& dims,
                              const std::vector<torch::Tensor>& norms, const std::vector<double>& eps,
                              bool pre_norm, const std::vector<torch::Tensor>& final_norm, double final_eps,
                              int64_t heads, double scale, const c10::optional<torch::Tensor>& rel_bias,
                              int64_t center, int64_t chunks) {
  const size_t n_layers = eps.size() / 2;
  TORCH_CHECK_VALUE(n_layers > 0 && gemms.size() == 12 * n_layers && dims.size() == 8 * n_layers &&
                        norms.size() == 4 * n_layers && eps.size() == 2 * n_layers,
                    "encoder_forward: per layer 12 GEMM tensors, 8 dims, 4 norm tensors and 2 eps are expected");
  TORCH_CHECK_VALUE(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
                    "encoder_forward: x must be a contiguous float32 (tokens, hidden) tensor");
  Encoder E{{}, pre_norm, c10::nullopt, heads, scale, rel_bias, center};
  for (size_t l = 0; l < n_layers; ++l) {
    Gemm g[4];
    for (int i = 0; i < 4; ++i) {
      g[i] = Gemm{gemms[12 * l + 3 * i], gemms[12 * l + 3 * i + 1], optional_bias(gemms[12 * l + 3 * i + 2]),
                  dims[8 * l + 2 * i], dims[8 * l + 2 * i + 1], i == 2};
    }
    E.layers.push_back(Layer{g[0], g[1], g[2], g[3], Norm{norms[4 * l], norms[4 * l + 1], eps[2 * l]},
                             Norm{norms[4 * l + 2], norms[4 * l + 3], eps[2 * l + 1]}});
  }
  if (final_norm.size() == 2) E.final_norm = Norm{final_norm[0], final_norm[1], final_eps};
  const int64_t n_seq = cu_seqlens.numel() - 1;
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  if (chunks <= 1 || n_seq < 2) {
    const int threads = at::get_num_threads();
    if (g_team_forward && threads > 1 && !omp_in_parallel() && x.size(0) > 0) return encode_team(E, x, cu_seqlens, threads);
    return encode_chunk(E, x, cu_seqlens);
  }
  // Split the sequences into `chunks` runs of about equal token counts.
  std::vector<int64_t> bounds{0};
  const int64_t tokens = cu[n_seq];
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = tokens * c / chunks;
    const int64_t b = std::upper_bound(cu, cu + n_seq + 1, target) - cu - 1;
    if (b > bounds.back() && b < n_seq) bounds.push_back(b);
  }
  bounds.push_back(n_seq);
  const int64_t n_chunks = static_cast<int64_t>(bounds.size()) - 1;
  torch::Tensor out = torch::empty_like(x);
  auto job = std::make_shared<ChunkJob>();
  job->n = n_chunks;
  // Everything the chunks touch is captured by value: a helper that starts late holds it alive.
  job->fn = [E, x, cu_seqlens, bounds, out](int64_t c) {
    const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
    const int64_t s0 = bounds[c], s1 = bounds[c + 1];
    const torch::Tensor local = (cu_seqlens.slice(0, s0, s1 + 1) - cu[s0]).contiguous();
    out.slice(0, cu[s0], cu[s1]).copy_(encode_chunk(E, x.slice(0, cu[s0], cu[s1]), local));
  };
  for (int64_t t = 1; t < std::min<int64_t>(at::get_num_threads(), n_chunks); ++t) {
    at::launch([job]() { drain(*job); });  // launch carries the caller's grad / inference mode
  }
  drain(*job);
  for (int spins = 0; job->done.load(std::memory_order_acquire) < job->n; ++spins) {
    if (spins < 2000) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
  if (job->error) std::rethrow_exception(job->error);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Text embeddings of packed tokens: word row (int4, dequantized) [+ token-type row] + position row, the
// sum LayerNorm then normalises (in torch, so that the rows equal the embedding module's bit for bit).
// Why in C++: at batch 1 the same sum as torch ops is a dozen dispatches (gather, nibble lookup, scale,
// three adds), each costing more than its arithmetic. The arithmetic is the modules' own, element by
// element and in their order: code * group scale in float32, then (word + type) + position.
// word: (vocab, groups * group / 2) uint8, two 4-bit codes per byte (low nibble first, stored as code + 8),
// the group size implied by the shapes as in ternary_hf.quant.rowwise; word_scale: (vocab, groups) float16;
// tables: float32 (rows, dim); types: empty = type 0 everywhere.
torch::Tensor int4_text_embeddings(const torch::Tensor& ids, const torch::Tensor& word, const torch::Tensor& word_scale,
                                   int64_t dim, const torch::Tensor& positions, const torch::Tensor& position_table,
                                   const c10::optional<torch::Tensor>& types,
                                   const c10::optional<torch::Tensor>& type_table) {
  TORCH_CHECK_VALUE(ids.dim() == 1 && ids.scalar_type() == torch::kInt64 && positions.sizes() == ids.sizes() &&
                        positions.scalar_type() == torch::kInt64,
                    "int4_text_embeddings: ids and positions must be int64 vectors of one length");
  TORCH_CHECK_VALUE(word.dim() == 2 && word.scalar_type() == torch::kUInt8 && word_scale.dim() == 2 &&
                        word_scale.scalar_type() == torch::kHalf && word_scale.size(0) == word.size(0) &&
                        word_scale.size(1) > 0 && word.size(1) * 2 % word_scale.size(1) == 0 &&
                        dim <= word.size(1) * 2,
                    "int4_text_embeddings: word must be (vocab, groups * group / 2) uint8 with (vocab, groups) "
                    "float16 scales");
  const int64_t group = word.size(1) * 2 / word_scale.size(1);
  TORCH_CHECK_VALUE(position_table.dim() == 2 && position_table.size(1) == dim &&
                        position_table.scalar_type() == torch::kFloat32,
                    "int4_text_embeddings: the position table must be float32 (positions, dim)");
  const bool typed = type_table.has_value();
  if (typed) {
    TORCH_CHECK_VALUE(type_table->dim() == 2 && type_table->size(1) == dim && type_table->size(0) > 0 &&
                          type_table->scalar_type() == torch::kFloat32,
                      "int4_text_embeddings: the token-type table must be float32 (types, dim)");
    TORCH_CHECK_VALUE(!types.has_value() || (types->sizes() == ids.sizes() && types->scalar_type() == torch::kInt64),
                      "int4_text_embeddings: token types must be an int64 vector like ids");
  }
  const torch::Tensor w = word.contiguous(), ws = word_scale.contiguous(), pt = position_table.contiguous();
  const torch::Tensor id = ids.contiguous(), pos = positions.contiguous();
  const torch::Tensor tt = typed ? type_table->contiguous() : torch::Tensor();
  const torch::Tensor ty = typed && types.has_value() ? types->contiguous() : torch::Tensor();
  const int64_t n = id.numel(), vocab = w.size(0), n_pos = pt.size(0), n_types = typed ? tt.size(0) : 0;
  const int64_t row_bytes = w.size(1), groups = ws.size(1);
  const int64_t* idp = id.data_ptr<int64_t>();
  const int64_t* posp = pos.data_ptr<int64_t>();
  const int64_t* typ = ty.defined() ? ty.data_ptr<int64_t>() : nullptr;
  for (int64_t t = 0; t < n; ++t) {  // checked first: a bad index must not leave a half-written result
    TORCH_CHECK_INDEX(idp[t] >= 0 && idp[t] < vocab, "token id ", idp[t], " is out of range for a vocabulary of ",
                      vocab, " (the tokenizer and the model do not match)");
    TORCH_CHECK_INDEX(posp[t] >= 0 && posp[t] < n_pos, "position ", posp[t], " is out of range for ", n_pos,
                      " position embeddings (the text is longer than the model accepts: truncate it)");
    TORCH_CHECK_INDEX(typ == nullptr || (typ[t] >= 0 && typ[t] < n_types), "token type ", typ ? typ[t] : 0,
                      " is out of range for ", n_types, " token types");
  }
  torch::Tensor out = torch::empty({n, dim}, torch::kFloat32);
  float* op = out.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const at::Half* sp = ws.data_ptr<at::Half>();
  const float* ptp = pt.data_ptr<float>();
  const float* ttp = typed ? tt.data_ptr<float>() : nullptr;
  for (int64_t t = 0; t < n; ++t) {
    const uint8_t* codes = wp + idp[t] * row_bytes;
    const at::Half* scales = sp + idp[t] * groups;
    const float* prow = ptp + posp[t] * dim;
    const float* trow = typed ? ttp + (typ != nullptr ? typ[t] : 0) * dim : nullptr;
    float* o = op + t * dim;
    for (int64_t g = 0, i = 0; i < dim; ++g) {
      const float scale = static_cast<float>(scales[g]);
      for (const int64_t end = std::min(dim, i + group); i < end; ++i) {
        const int code = i % 2 == 0 ? (codes[i / 2] & 0x0F) - 8 : (codes[i / 2] >> 4) - 8;
        float v = static_cast<float>(code) * scale;
        if (trow != nullptr) v = v + trow[i];
        o[i] = v + prow[i];
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Change detection for the fast forward's cached weights: (storage address, version counter) of each
// tensor. The engine checks ~100 tensors on every call; in Python that is two attribute reads per
// tensor and two tuples (tens of microseconds at batch 1), here one pass.
torch::Tensor tensor_stamps(const std::vector<torch::Tensor>& tensors) {
  torch::Tensor out = torch::empty({static_cast<int64_t>(2 * tensors.size())}, torch::kInt64);
  int64_t* o = out.data_ptr<int64_t>();
  for (size_t i = 0; i < tensors.size(); ++i) {
    o[2 * i] = reinterpret_cast<int64_t>(tensors[i].data_ptr());
    o[2 * i + 1] = static_cast<int64_t>(tensors[i]._version());
  }
  return out;
}

bool stamps_match(const std::vector<torch::Tensor>& tensors, const torch::Tensor& stamps) {
  if (stamps.scalar_type() != torch::kInt64 || stamps.dim() != 1 || !stamps.is_contiguous() ||
      stamps.numel() != static_cast<int64_t>(2 * tensors.size())) {
    return false;
  }
  const int64_t* s = stamps.data_ptr<int64_t>();
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (s[2 * i] != reinterpret_cast<int64_t>(tensors[i].data_ptr()) ||
        s[2 * i + 1] != static_cast<int64_t>(tensors[i]._version())) {
      return false;
    }
  }
  return true;
}
}  // namespace

void register_encoder_ops(pybind11::module_& m) {
  m.def("varlen_attention", &varlen_attention,
        "softmax(q k^T * scale + rel_bias) v per (sequence, head) over packed tokens; qkv is (tokens, 3 * hidden)",
        py::arg("qkv"), py::arg("cu_seqlens"), py::arg("heads"), py::arg("scale"), py::arg("rel_bias"),
        py::arg("center"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "_set_min_attention_work", [](int64_t w) { g_min_attention_work = std::max<int64_t>(1, w); },
      "tests and benchmarks: tokens x longest sequence x hidden before attention is shared between threads");
  m.def("add_layernorm", &add_layernorm, "[LayerNorm(y + residual)] or [LayerNorm(y + residual), y + residual]",
        py::arg("y"), py::arg("residual"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("return_sum"), py::call_guard<py::gil_scoped_release>());
  m.def("int4_text_embeddings", &int4_text_embeddings,
        "(word [+ token type]) + position rows of packed tokens, the word table int4 (see encoder_ops.cpp)",
        py::arg("ids"), py::arg("word"), py::arg("word_scale"), py::arg("dim"), py::arg("positions"),
        py::arg("position_table"), py::arg("types"), py::arg("type_table"), py::call_guard<py::gil_scoped_release>());
  m.def("tensor_stamps", &tensor_stamps, "(data address, version) of each tensor, as one int64 vector",
        py::arg("tensors"));
  m.def("stamps_match", &stamps_match, "whether tensor_stamps(tensors) would equal stamps", py::arg("tensors"),
        py::arg("stamps"));
  m.def(
      "_set_team_forward", [](bool on) { g_team_forward = on; },
      "tests and benchmarks: run a batch too small to split as one thread team (default) or op by op");
  m.def(
      "_team_forward_count", []() { return g_team_runs.load(); }, "tests: team forwards run so far");
  m.def("encoder_forward", &encoder_forward,
        "every layer of a post-LN or pre-LN encoder over packed tokens (see ternary_hf/runtime/engine.py)",
        py::arg("x"), py::arg("cu_seqlens"), py::arg("gemms"), py::arg("dims"), py::arg("norms"), py::arg("eps"),
        py::arg("pre_norm"), py::arg("final_norm"), py::arg("final_eps"), py::arg("heads"), py::arg("scale"),
        py::arg("rel_bias"), py::arg("center"), py::arg("chunks"), py::call_guard<py::gil_scoped_release>());
}
