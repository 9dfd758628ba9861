// CPU ops of the distillation trainer's fast path (ternary_hf/train/student.py, FakeTernaryLinear).
//
// Why this file exists: the student re-ternarizes every linear layer on every step and fake-quantizes
// every activation. Done with torch ops, that bookkeeping cost more than the student's own matrix
// products (benchmarks/README.md, bench_train_step.py). Here each is one pass in C++, and the
// ternary codes go straight into the inference kernel's layout, so the student's forward runs the
// very kernel the finalized model runs.
//
// Exactness (tests check each against the Python definition):
//   * ternarize_calibrated == ternary_hf.quant.ternarize.ternarize(w, "calibrated", "channel"): the same
//     sorted magnitudes (a radix sort of the float bit patterns gives exactly the values any sort
//     gives), the same sequential float64 prefix sums and `csum * csum / k` (no FMA: built with
//     -ffp-contract=off), the first maximum, the same threshold and mask; the scale is the float64
//     sum of the kept magnitudes over their count, rounded once to float32, as ternarize.py computes it.
//   * fake_quantize_int8 == ternary_hf.quant.functional.quantize_activations_int8 (q * s_x): it calls the
//     kernel's own quantize_row (common.h).
//   * prepare_from_values == kernels.prepare_weight(pack_ternary(values), K), without the 2-bit
//     round trip.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "common.h"

namespace {

using namespace ternary_hf_kernel;

// Ascending LSD radix sort of non-negative float bit patterns (their uint32 order is their float
// order), 8 bits per pass, skipping a digit that is the same for every key (the top byte often is).
// Keys of one digit value form a chain of dependent counter updates; the two halves of the array keep
// separate counters (the second half's offsets start where the first half's end), so two chains run
// side by side and the sort stays stable.
void radix_sort_u32(uint32_t* keys, uint32_t* tmp, int64_t n) {
  const int64_t half = n / 2;
  uint32_t* src = keys;
  uint32_t* dst = tmp;
  for (int shift = 0; shift < 32; shift += 8) {
    uint32_t c0[256] = {}, c1[256] = {};
    for (int64_t i = 0; i < half; ++i) {
      ++c0[(src[i] >> shift) & 0xFF];
      ++c1[(src[half + i] >> shift) & 0xFF];
    }
    if (n & 1) ++c1[(src[n - 1] >> shift) & 0xFF];
    const uint32_t d0 = (src[0] >> shift) & 0xFF;
    if (c0[d0] + c1[d0] == static_cast<uint32_t>(n)) continue;  // one digit value: order unchanged
    uint32_t offset = 0;
    for (int d = 0; d < 256; ++d) {
      const uint32_t a = c0[d], b = c1[d];
      c0[d] = offset;
      c1[d] = offset + a;
      offset += a + b;
    }
    for (int64_t i = 0; i < half; ++i) {
      const uint32_t ka = src[i], kb = src[half + i];
      dst[c0[(ka >> shift) & 0xFF]++] = ka;
      dst[c1[(kb >> shift) & 0xFF]++] = kb;
    }
    if (n & 1) dst[c1[(src[n - 1] >> shift) & 0xFF]++] = src[n - 1];
    std::swap(src, dst);
  }
  if (src != keys) std::memcpy(keys, src, static_cast<size_t>(n) * sizeof(uint32_t));
}

struct RowScratch {
  std::vector<uint32_t> keys, tmp;
};

// One row: int8 values in {-1, 0, 1} and the float32 scale of the exact least-squares rule; false
// (nothing meaningful written) if the row holds NaN or inf.
bool ternarize_row(const float* w, int64_t n, int8_t* values, float* scale, RowScratch& s) {
  s.keys.resize(n);
  s.tmp.resize(n);
  uint32_t* keys = s.keys.data();
  uint32_t special = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, w + i, 4);
    keys[i] = bits & 0x7FFFFFFFu;                                             // |w|
    special |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);  // exponent all ones: inf / NaN
  }
  if (special) return false;
  radix_sort_u32(keys, s.tmp.data(), n);
  auto mag_at_desc = [&](int64_t j) {  // j-th largest magnitude
    float v;
    std::memcpy(&v, &keys[n - 1 - j], 4);
    return v;
  };
  double csum = 0.0, best_f = -std::numeric_limits<double>::infinity();
  int64_t best = 0;
  for (int64_t j = 0; j < n; ++j) {
    csum += static_cast<double>(mag_at_desc(j));
    const double f = csum * csum / static_cast<double>(j + 1);
    const bool better = f > best_f;  // strict: the first maximum, like numpy.argmax
    best = better ? j : best;
    best_f = better ? f : best_f;
  }
  const float threshold = best + 1 < n ? mag_at_desc(best + 1) : 0.0f;
  // The kept magnitudes are summed in float64 (4 partial sums) and rounded once to float32: the
  // float64 result of any summation order rounds to the same float32 as ternarize.py's torch sum.
  double kept[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float m = std::fabs(w[i]);
    const bool keep = m > threshold;
    kept[i & 3] += keep ? static_cast<double>(m) : 0.0;
    count += keep;
    values[i] = static_cast<int8_t>(keep ? (w[i] > 0.0f ? 1 : -1) : 0);
  }
  const double total = (kept[0] + kept[1]) + (kept[2] + kept[3]);
  *scale = static_cast<float>(total / static_cast<double>(std::max<int64_t>(count, 1)));
  return true;
}

std::vector<torch::Tensor> ternarize_calibrated(const torch::Tensor& weight) {
  TORCH_CHECK_VALUE(weight.device().is_cpu() && weight.scalar_type() == torch::kFloat32 && weight.dim() == 2 &&
                        weight.is_contiguous() && weight.size(1) > 0,
                    "ternarize_calibrated: weight must be a contiguous 2-D float32 CPU tensor with in_features > 0");
  const int64_t rows = weight.size(0), n = weight.size(1);
  auto values = torch::empty({rows, n}, weight.options().dtype(torch::kInt8));
  auto scale = torch::empty({rows}, weight.options());
  const float* w = weight.data_ptr<float>();
  int8_t* v = values.data_ptr<int8_t>();
  float* sc = scale.data_ptr<float>();
  std::atomic<bool> finite{true};
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t r0, int64_t r1) {
    RowScratch s;
    for (int64_t r = r0; r < r1; ++r) {
      if (!ternarize_row(w + r * n, n, v + r * n, sc + r, s)) finite.store(false, std::memory_order_relaxed);
    }
  });
  TORCH_CHECK_VALUE(finite.load(), "weight contains NaN or inf; refusing to ternarize (check the checkpoint)");
  return {values, scale};
}

// The (out_features, in_features) matrix the panel builders below lay out: `values` itself, or its transpose
// (the weight of the trainer's input gradient, grad_x = grad_y @ W, which reads W's columns as output
// features) read in place, so the transposed panels cost no transposed copy.
struct MatrixView {
  const int8_t* v;
  int64_t n_out, k, ld;
  bool transpose;
};

MatrixView matrix_view(const torch::Tensor& values, bool transpose, const char* what) {
  TORCH_CHECK_VALUE(values.device().is_cpu() && values.scalar_type() == torch::kInt8 && values.dim() == 2 &&
                        values.is_contiguous(),
                    what, ": values must be a contiguous 2-D int8 CPU tensor");
  const int64_t rows = values.size(0), cols = values.size(1);
  return {values.data_ptr<int8_t>(), transpose ? cols : rows, transpose ? rows : cols, cols, transpose};
}

// Block (p, kb) of the matrix as 16 x 16 int values into tile[c][kk] (row 16p + c, input 16kb + kk), 0 past
// its edges; returns the block's smallest and largest value (the callers' range check).
template <bool Transpose>
inline void load_block(const MatrixView& m, int64_t p, int64_t kb, int8_t (&tile)[kNR][kKB], int& lo, int& hi) {
  const int64_t r0 = p * kNR, c0 = kb * kKB;
  if (r0 + kNR <= m.n_out && c0 + kKB <= m.k) {  // a whole block: 16 runs of 16 contiguous bytes
    for (int64_t a = 0; a < 16; ++a) {
      const int8_t* src = Transpose ? m.v + (c0 + a) * m.ld + r0 : m.v + (r0 + a) * m.ld + c0;
      for (int64_t b = 0; b < 16; ++b) {
        (Transpose ? tile[b][a] : tile[a][b]) = src[b];
        lo = std::min<int>(lo, src[b]);
        hi = std::max<int>(hi, src[b]);
      }
    }
    return;
  }
  for (int64_t c = 0; c < kNR; ++c) {  // an edge block: zeros (the code of 0) past the matrix
    for (int64_t kk = 0; kk < kKB; ++kk) {
      const int64_t row = r0 + c, col = c0 + kk;
      int8_t value = 0;
      if (row < m.n_out && col < m.k) value = Transpose ? m.v[col * m.ld + row] : m.v[row * m.ld + col];
      tile[c][kk] = value;
      lo = std::min<int>(lo, value);
      hi = std::max<int>(hi, value);
    }
  }
}

// Calls fill(block index, tile) for every block of the matrix, in parallel over panels; returns the range of
// the values met.
template <typename Fill>
std::pair<int, int> for_each_block(const MatrixView& m, int64_t n_pan, int64_t n_kb, const Fill& fill) {
  std::atomic<int> lo_all{0}, hi_all{0};
  at::parallel_for(0, n_pan, 1, [&](int64_t p0, int64_t p1) {
    int lo = 0, hi = 0;
    alignas(64) int8_t tile[kNR][kKB];
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t kb = 0; kb < n_kb; ++kb) {
        if (m.transpose) {
          load_block<true>(m, p, kb, tile, lo, hi);
        } else {
          load_block<false>(m, p, kb, tile, lo, hi);
        }
        fill(p * n_kb + kb, tile);
      }
    }
    int seen = lo_all.load();
    while (lo < seen && !lo_all.compare_exchange_weak(seen, lo)) {
    }
    seen = hi_all.load();
    while (hi > seen && !hi_all.compare_exchange_weak(seen, hi)) {
    }
  });
  return {lo_all.load(), hi_all.load()};
}

// int8 ternary values (out_features, in_features), or their transpose -> the kernel's 2-bit panel layout
// (see ternary_cpu.cpp).
torch::Tensor prepare_from_values(const torch::Tensor& values, bool transpose) {
  const MatrixView m = matrix_view(values, transpose, "prepare_from_values");
  const int64_t n_pan = ceil_div(m.n_out, kNR), n_kb = ceil_div(m.k, kKB);
  auto out = torch::empty({n_pan, n_kb, kBlockBytes}, values.options().dtype(torch::kUInt8));
  uint8_t* o = out.data_ptr<uint8_t>();
  const auto range = for_each_block(m, n_pan, n_kb, [&](int64_t b, const int8_t (&tile)[kNR][kKB]) {
    uint8_t* block = o + b * kBlockBytes;
    for (int64_t c = 0; c < kNR; ++c) {  // c = 8v + j: byte 32 v + 4 j + i = 4 c + i holds k = 4 s + i at bits 2 s
      for (int64_t i = 0; i < 4; ++i) {
        uint8_t byte = 0;
        for (int64_t s = 0; s < 4; ++s) byte |= static_cast<uint8_t>(((tile[c][4 * s + i] + 1) & 3) << (2 * s));
        block[4 * c + i] = byte;
      }
    }
  });
  TORCH_CHECK_VALUE(range.first >= -1 && range.second <= 1, "prepare_from_values: values must all be -1, 0 or +1");
  return out;
}

// int4 values in [-7, 7] (bits 4) or int8 values in [-127, 127] (bits 8), (out_features, in_features) or their
// transpose -> the byte panels of layout.py prepare_int4_weight / prepare_int8_weight (w + kInt4Zero as int8,
// w + kInt8Zero as uint8; byte 64 s + 32 v + 4 j + i of a block holds output 8 v + j, input 4 s + i), in one
// pass. The trainer rebuilds them every step for the int4 / int8 blocks, forward and (transposed) input gradient.
torch::Tensor prepare_int_from_values(const torch::Tensor& values, int64_t bits, bool transpose) {
  TORCH_CHECK_VALUE(bits == 4 || bits == 8, "prepare_int_from_values: bits must be 4 or 8, got ", bits);
  const MatrixView m = matrix_view(values, transpose, "prepare_int_from_values");
  const int limit = bits == 4 ? 7 : 127;
  const int zero = bits == 4 ? kInt4Zero : kInt8Zero;
  const int64_t n_pan = ceil_div(m.n_out, kNR), n_kb = ceil_div(m.k, kKB);
  auto out = torch::empty({n_pan, n_kb, kDecodedBlockBytes},
                          values.options().dtype(bits == 4 ? torch::kInt8 : torch::kUInt8));
  uint8_t* o = static_cast<uint8_t*>(out.data_ptr());
  const auto range = for_each_block(m, n_pan, n_kb, [&](int64_t b, const int8_t (&tile)[kNR][kKB]) {
    uint8_t* block = o + b * kDecodedBlockBytes;
    for (int64_t s = 0; s < 4; ++s) {
      for (int64_t c = 0; c < kNR; ++c) {  // c = 8 v + j
        for (int64_t i = 0; i < 4; ++i) block[64 * s + 4 * c + i] = static_cast<uint8_t>(tile[c][4 * s + i] + zero);
      }
    }
  });
  TORCH_CHECK_VALUE(range.first >= -limit && range.second <= limit, "prepare_int_from_values: int", bits,
                    " values must lie in [", -limit, ", ", limit, "]");
  return out;
}

// A row quantize_row flags (NaN or inf in it, or a zero where 1 / max|x| overflows), exactly as
// quantize_activations_int8 treats it: torch's amax is NaN if the row holds a NaN (then
// `where(amax > 0, amax, 1)` takes 1), the clamp keeps NaN, and x * inv may be inf * 0. So a NaN row
// gives NaN where x is NaN and clamped codes / 127 elsewhere, an inf row NaN everywhere. Only a broken
// input takes this scalar path; it keeps the trainer's fake quantization bit-equal to the reference.
void fake_quantize_special_row(const float* x, int64_t k, float* out) {
  float amax = 0.0f;
  for (int64_t i = 0; i < k; ++i) amax = std::isnan(x[i]) || std::isnan(amax) ? NAN : std::max(amax, std::fabs(x[i]));
  const float safe = amax > 0.0f ? amax : 1.0f;
  const float inv = (1.0f / safe) * 127.0f;
  const float sx = safe / 127.0f;
  for (int64_t i = 0; i < k; ++i) {
    float y = std::nearbyint(x[i] * inv);
    if (!std::isnan(y)) y = std::min(std::max(y, -127.0f), 127.0f);
    out[i] = y * sx;
  }
}

// x (M, K) float32 -> q(x) * s_x as float32, with the kernel's per-token int8 rule.
torch::Tensor fake_quantize_int8(const torch::Tensor& x) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(),
                    "fake_quantize_int8: x must be a contiguous 2-D float32 CPU tensor");
  const int64_t m = x.size(0), k = x.size(1);
  auto out = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, m, std::max<int64_t>(1, 65536 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<int8_t> q(static_cast<size_t>(k));
    for (int64_t r = r0; r < r1; ++r) {
      float sx;
      quantize_row(xp + r * k, k, k, q.data(), &sx);
      float* orow = op + r * k;
      if (!row_is_finite(sx)) {
        fake_quantize_special_row(xp + r * k, k, orow);
        continue;
      }
      for (int64_t i = 0; i < k; ++i) orow[i] = static_cast<float>(q[i]) * sx;
    }
  });
  return out;
}

}  // namespace

void register_training_ops(pybind11::module_& m) {
  m.def("ternarize_calibrated", &ternarize_calibrated,
        "(values int8, scale float32) of ternarize(w, 'calibrated', 'channel'), bit for bit", py::arg("weight"),
        py::call_guard<py::gil_scoped_release>());
  m.def("prepare_from_values", &prepare_from_values,
        "int8 ternary values (or their transpose) -> the kernel's panel layout", py::arg("values"),
        py::arg("transpose") = false, py::call_guard<py::gil_scoped_release>());
  m.def("prepare_int_from_values", &prepare_int_from_values,
        "int4 / int8 values (or their transpose) -> the kernel's byte panels", py::arg("values"), py::arg("bits"),
        py::arg("transpose") = false, py::call_guard<py::gil_scoped_release>());
  m.def("fake_quantize_int8", &fake_quantize_int8, "q(x) * s_x with the kernel's per-token int8 rule",
        py::arg("x"), py::call_guard<py::gil_scoped_release>());
}
