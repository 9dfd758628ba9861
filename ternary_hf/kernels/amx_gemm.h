// AMX-INT8 work unit of the ternary GEMM (ternary_cpu.cpp built with -DTERNARY_HF_AMX).
//
// Why AMX: on Sapphire Rapids and later, one tdpbsud multiplies a 16 x 64 int8 tile by a 64 x 16 tile
// into 16 x 16 int32 sums: 16K multiply-adds per instruction, where vpdpbusd does 64 per instruction.
// The 2-bit weights must first become bytes; each 16-column weight panel is decoded ONCE per call
// (decode_chunk: four decoded blocks are exactly one B tile, see amx_tiles.h) and then serves every
// row of x, so the decode cost is N x K bytes per call whatever the batch. A work unit therefore
// spans all rows (run() gives the AMX build column blocks of all M rows).
//
// Blocking: 2 x 2 output tiles (32 rows x 32 columns) per step: tmm0-3 hold C, tmm4-5 two A tiles (16
// rows of activations each), tmm6-7 two B tiles (two decoded panels); per 64 k: 4 loads, 4 tdpbsud.
// Padding instead of partial tiles: the activations of one call are stored with a row stride that is a
// multiple of 64 bytes (zero padded) and with the row count rounded up to 16 (zero rows), and the
// decoded panel is zero-padded to a multiple of 64 k; zeros add nothing to the int32 sums, so every
// tile has the one configured shape (16 rows x 64 bytes) and the epilogue simply skips padded rows.
//
// Exactness: tdpbsud(A = int8 q, B = uint8 codes) gives sum(q * c), the same integers the VNNI
// build's vpdpbusd gives; store_tile subtracts sum(q). Tests check bit equality with the AVX2 and VNNI
// builds through the emulated tile layer (amx_tiles.h) on machines without AMX.
#pragma once

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#if defined(__linux__) && !defined(TERNARY_HF_AMX_EMULATE)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "amx_tiles.h"
#include "common.h"
#include "epilogue.h"

namespace ternary_hf_kernel {
namespace {  // internal linkage: each build (module) keeps its own copy, see common.h

constexpr int64_t kAmxRows = 16;  // rows per tile
constexpr int64_t kAmxK = 64;     // k (bytes of an A row) per tile
constexpr int64_t kAmxTileBytes = kAmxRows * kAmxK;

// Linux hands out the 8 KB tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, once per
// process, before any thread touches a tile); without it the first tile instruction is a SIGILL.
// Returns "" when tiles may be used, else why not.
inline const std::string& amx_permission() {
  static std::once_flag once;
  static std::string problem;
  std::call_once(once, [] {
#if defined(__linux__) && !defined(TERNARY_HF_AMX_EMULATE)
    constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
      problem = std::string("arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) failed: ") + std::strerror(errno);
      return;
    }
    unsigned long features = 0;
    if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &features) != 0 || !(features & (1UL << kXfeatureXtiledata))) {
      problem = "the kernel did not grant the AMX tile state (ARCH_GET_XCOMP_PERM lacks XTILEDATA)";
    }
#endif
  });
  return problem;
}

inline void amx_configure() {
  static thread_local const TileConfig cfg = [] {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
      c.rows[t] = kAmxRows;
      c.colsb[t] = kAmxK;
    }
    return c;
  }();
  TH_TILE_LOADCONFIG(&cfg);  // every unit: another library on this thread may have changed the config
}

// Decoded panel(s), 64-byte aligned and grow-only per thread.
inline uint8_t* amx_panel_buffer(size_t bytes) {
  static thread_local std::vector<__m256i> buf;
  if (buf.size() * sizeof(__m256i) < bytes) buf.resize((bytes + sizeof(__m256i) - 1) / sizeof(__m256i) + 1);
  uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<uint8_t*>((p + 63) & ~uintptr_t(63));
}

// Rows [m0, m1) x columns [n0, n1) (n0 a multiple of 16). P.q has rows up to round_up(m1, 16), zero
// beyond m1, with row stride P.kp (a multiple of 64, zero padded).
inline void run_amx_block(const Problem& P, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t chunks = P.kp / kAmxK;
  const int64_t panel_bytes = chunks * kAmxTileBytes;
  uint8_t* panels = amx_panel_buffer(2 * panel_bytes + 64);
  alignas(64) int32_t tiles[4][kAmxRows * kNR];
  amx_configure();
  for (int64_t nb = n0; nb < n1; nb += 2 * kNR) {
    const bool two = nb + kNR < n1;
    for (int p = 0; p < (two ? 2 : 1); ++p) {
      uint8_t* dst = panels + p * panel_bytes;
      if (P.int8_weights) {  // already bytes in the decoded layout: copied to get the zero padding to 64 k
        std::memcpy(dst, P.w + ((nb / kNR) + p) * P.kblocks * kDecodedBlockBytes, P.kblocks * kDecodedBlockBytes);
      } else {
        decode_chunk(P.w + ((nb / kNR) + p) * P.kblocks * kBlockBytes, P.kblocks, dst);
      }
      std::memset(dst + P.kblocks * kDecodedBlockBytes, 0, panel_bytes - P.kblocks * kDecodedBlockBytes);
    }
    for (int64_t mb = m0; mb < m1; mb += 2 * kAmxRows) {
      const bool tall = mb + kAmxRows < m1;
      const int8_t* a = P.q + mb * P.kp;
      TH_TILE_ZERO(0);
      if (two) TH_TILE_ZERO(1);
      if (tall) TH_TILE_ZERO(2);
      if (tall && two) TH_TILE_ZERO(3);
      for (int64_t c = 0; c < chunks; ++c) {
        TH_TILE_LOADD(4, a + c * kAmxK, P.kp);
        if (tall) TH_TILE_LOADD(5, a + kAmxRows * P.kp + c * kAmxK, P.kp);
        TH_TILE_LOADD(6, panels + c * kAmxTileBytes, kAmxK);
        if (two) TH_TILE_LOADD(7, panels + panel_bytes + c * kAmxTileBytes, kAmxK);
        TH_TILE_DPBSUD(0, 4, 6);
        if (two) TH_TILE_DPBSUD(1, 4, 7);
        if (tall) TH_TILE_DPBSUD(2, 5, 6);
        if (tall && two) TH_TILE_DPBSUD(3, 5, 7);
      }
      TH_TILE_STORED(0, tiles[0], kNR * 4);
      if (two) TH_TILE_STORED(1, tiles[1], kNR * 4);
      if (tall) TH_TILE_STORED(2, tiles[2], kNR * 4);
      if (tall && two) TH_TILE_STORED(3, tiles[3], kNR * 4);
      for (int r = 0; r < (tall ? 2 : 1); ++r) {
        const int64_t row = mb + r * kAmxRows;
        const int64_t rows = std::min(kAmxRows, m1 - row);
        for (int p = 0; p < (two ? 2 : 1); ++p) store_tile(P, row, rows, nb + p * kNR, tiles[2 * r + p]);
      }
    }
  }
  TH_TILE_RELEASE();
}

}  // namespace
}  // namespace ternary_hf_kernel
