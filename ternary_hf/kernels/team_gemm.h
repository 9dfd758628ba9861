// The ternary GEMM in parts, for a caller that already runs a team of threads and shares each GEMM
// among them: the team forward of encoder_ops.cpp. run() in ternary_cpu.cpp is built from the same
// parts (quantize rows, then output units), so both give the same bits.
//
// Why parts: a GEMM call that forks and joins its own threads costs a thread wake-up whenever the
// other thread fell asleep between two calls (tens of microseconds in a virtual machine, more than
// a whole small GEMM at batch 1). A team that stays together for a whole forward only meets at
// barriers between the ops.
#pragma once

#include <torch/extension.h>

#include <cstdint>

struct TeamGemm {
  // Inputs: x (m x k float32, row-major); the kernel's prepared weight, scale and optional bias.
  const float* x = nullptr;
  int64_t m = 0, k = 0, n = 0;
  const uint8_t* w = nullptr;
  const float* sw = nullptr;
  bool sw_per_channel = false;
  const float* bias = nullptr;
  bool gelu = false;
  bool int8_weights = false;  // w holds int8 weights (team_gemm_int8), else 2-bit ternary codes
  bool int4_codes = false;    // ... int4 ones (team_gemm_int4)
  float* y = nullptr;  // m x n float32 output
  // Quantized activations, shared by the team: team_gemm_q_elems(m, k) int8, m int32 and m float.
  int8_t* q = nullptr;
  int32_t* qsum = nullptr;
  float* sx = nullptr;
  uint8_t* reach = nullptr;  // team_gemm_reach_elems(m, k) bytes: int4 weights in the AVX2 build
};

// The checks ternary_linear makes on a layer's weights (ValueError naming what to rebuild): a team
// calls them before its region, where nothing may throw.
void team_gemm_check(const torch::Tensor& prepared, const torch::Tensor& weight_scale,
                     const c10::optional<torch::Tensor>& bias, int64_t in_features, int64_t out_features);
// Whether a prepared weight holds int8 weights (kernels/layout.py prepare_int8_weight).
bool team_gemm_int8(const torch::Tensor& prepared);
// Whether they are int4 weights (kernels/layout.py prepare_int4_weight; team_gemm_int8 is true too).
bool team_gemm_int4(const torch::Tensor& prepared);
// int8 elements the quantized activations of an (m x k) input need (row padding included).
int64_t team_gemm_q_elems(int64_t m, int64_t k);
// Bytes of TeamGemm::reach an (m x k) input needs (0 where the build has no use for it).
int64_t team_gemm_reach_elems(int64_t m, int64_t k);
// Quantize rows [r0, r1) of x into g.q (the thread that ends at g.m also zeroes the padding rows).
void team_gemm_quantize(const TeamGemm& g, int64_t r0, int64_t r1);
// Output units of the GEMM (each a block of rows x 64 columns, written by one thread).
int64_t team_gemm_units(const TeamGemm& g);
// Compute unit u (after every row is quantized).
void team_gemm_unit(const TeamGemm& g, int64_t u);
