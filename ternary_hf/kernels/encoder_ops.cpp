// Fused CPU ops of the fast encoder forward (ternary_hf/runtime): padding-free attention over packed
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
// Only AVX2 + FMA intrinsics: both kernel builds (AVX2, AVX-512 VNNI) compile this file as it is.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// exp(x) for x <= 0 (x below -87.3 is clamped: the result is ~1e-38 instead of smaller). Range
// reduction by ln 2 (split in two constants) and a degree-6 polynomial.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
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
  std::vector<float> p;   // scores / probabilities of a block of kQ query rows: kQ x lp
};
AttentionScratch& attention_scratch() {
  static thread_local AttentionScratch s;
  return s;
}

constexpr int kQ = 4;  // query rows computed together (their accumulators hide the FMA latency)

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
  for (; cb + 8 <= d; cb += 8) {
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
  for (; cb < d; ++cb) {
    for (int r = 0; r < kQ; ++r) {
      float a = 0.0f;
      for (int64_t j = 0; j < l; ++j) a += p[r * lp + j] * v[j * d + cb];
      if (o[r] != nullptr) o[r][cb] = a * inv[r];
    }
  }
}

struct AttentionProblem {
  const float* qkv;   // [T][3 * hidden]: q | k | v, head h at columns h*d .. h*d + d of each part
  int64_t ld;         // 3 * hidden
  int64_t hidden, heads, d;
  float scale;
  const float* bias;  // [heads][bias_width] relative-position bias indexed by (j - i + center), or nullptr
  int64_t bias_width, center;
  float* out;         // [T][hidden]
};

// softmax((q K^T) * scale + bias) V for one sequence [base, base + l) and one head. Query rows go in
// blocks of kQ; a block past the end repeats the last row (computed, not stored), so every row runs
// the same instructions wherever it falls, and the result depends on the sequence alone.
void attend(const AttentionProblem& P, int64_t base, int64_t l, int64_t h) {
  if (l <= 0) return;
  const int64_t d = P.d;
  const int64_t lp = (l + 15) / 16 * 16;
  AttentionScratch& s = attention_scratch();
  if (static_cast<int64_t>(s.kt.size()) < d * lp) s.kt.resize(d * lp);
  if (static_cast<int64_t>(s.v.size()) < l * d) s.v.resize(l * d);
  if (static_cast<int64_t>(s.p.size()) < kQ * lp) s.p.resize(kQ * lp);
  float* kt = s.kt.data();
  float* vp = s.v.data();
  float* p = s.p.data();
  const float* kbase = P.qkv + base * P.ld + P.hidden + h * d;
  const float* vbase = P.qkv + base * P.ld + 2 * P.hidden + h * d;
  for (int64_t j = 0; j < l; ++j) {
    const float* kr = kbase + j * P.ld;
    for (int64_t c = 0; c < d; ++c) kt[c * lp + j] = kr[c];
    std::memcpy(vp + j * d, vbase + j * P.ld, d * sizeof(float));
  }
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t j = l; j < lp; ++j) kt[c * lp + j] = 0.0f;
  }
  const float* brow = P.bias != nullptr ? P.bias + h * P.bias_width + P.center : nullptr;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t i0 = 0; i0 < l; i0 += kQ) {
    const float* q[kQ];
    float* o[kQ];
    float inv[kQ];
    for (int r = 0; r < kQ; ++r) {
      const int64_t i = std::min(i0 + r, l - 1);
      q[r] = P.qkv + (base + i) * P.ld + h * d;
      o[r] = i0 + r < l ? P.out + (base + i) * P.hidden + h * d : nullptr;
    }
    score_rows(q, kt, d, lp, P.scale, p);
    for (int r = 0; r < kQ; ++r) {
      float* pr = p + r * lp;
      const int64_t i = std::min(i0 + r, l - 1);
      if (brow != nullptr) {
        for (int64_t j = 0; j < l; ++j) pr[j] += brow[j - i];
      }
      for (int64_t j = l; j < lp; ++j) pr[j] = neg_inf;
      __m256 vmax = _mm256_set1_ps(neg_inf);
      for (int64_t j = 0; j < lp; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(pr + j));
      const __m256 mx = _mm256_set1_ps(hmax8(vmax));
      __m256 vsum = _mm256_setzero_ps();
      for (int64_t j = 0; j < lp; j += 8) {
        __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(pr + j), mx));
        if (j + 8 > l) {  // padded tail lanes: exactly zero (the clamped exp would give ~1e-38)
          const __m256i n_keep = _mm256_set1_epi32(static_cast<int>(std::max<int64_t>(0, l - j)));
          e = _mm256_and_ps(e, _mm256_castsi256_ps(_mm256_cmpgt_epi32(n_keep, lane)));
        }
        _mm256_storeu_ps(pr + j, e);
        vsum = _mm256_add_ps(vsum, e);
      }
      inv[r] = 1.0f / hsum8(vsum);
    }
    weighted_rows(p, lp, vp, l, d, inv, o);
  }
}

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
  const int64_t tasks = n_seq * heads;
  // One task per (sequence, head); the grain keeps tiny batches on one thread.
  const int64_t work = std::max<int64_t>(1, qkv.size(0) * max_len * hidden);
  const int64_t grain = work < (int64_t(1) << 18) ? tasks : 1;
  at::parallel_for(0, tasks, std::max<int64_t>(1, grain), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / heads, h = t % heads;
      attend(P, cu[b], cu[b + 1] - cu[b], h);
    }
  });
  return out;
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
  const float inv_n = 1.0f / static_cast<float>(n);
  const int64_t n8 = n / 8 * 8;
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(n, 1)),
                   [&](int64_t r0, int64_t r1) {
    std::vector<float> row(n);
    for (int64_t r = r0; r < r1; ++r) {
      const float* yr = yp + r * n;
      float* x = sp != nullptr ? sp + r * n : row.data();
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
  });
  if (return_sum) return {out, sum};
  return {out};
}

}  // namespace

void register_encoder_ops(pybind11::module_& m) {
  m.def("varlen_attention", &varlen_attention,
        "softmax(q k^T * scale + rel_bias) v per (sequence, head) over packed tokens; qkv is (tokens, 3 * hidden)",
        py::arg("qkv"), py::arg("cu_seqlens"), py::arg("heads"), py::arg("scale"), py::arg("rel_bias"),
        py::arg("center"), py::call_guard<py::gil_scoped_release>());
  m.def("add_layernorm", &add_layernorm, "[LayerNorm(y + residual)] or [LayerNorm(y + residual), y + residual]",
        py::arg("y"), py::arg("residual"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("return_sum"), py::call_guard<py::gil_scoped_release>());
}
