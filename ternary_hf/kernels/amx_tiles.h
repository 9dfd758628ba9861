// The AMX tile operations the AMX-INT8 build uses, behind one thin layer (ternary_cpu.cpp, TERNARY_HF_AMX).
//
// Why a layer: the tiling logic (tile shapes, strides, the panel decode feeding the B tiles, the row
// and k padding) must be tested on machines without AMX. With TERNARY_HF_AMX_EMULATE the same calls
// run a scalar emulation of the instructions instead (per the Intel SDM: tileloadd, tilestored,
// tilezero, tdpbsud, ldtilecfg, tilerelease), which also checks what the hardware requires (rows <= 16,
// bytes per row <= 64, A's bytes per row = 4 x B's rows, B and C of equal width, A and C of equal
// height) and fails loudly where real hardware would fault or compute garbage. The emulated variant
// is built only by the tests (_build.load_kernel_variant("amx_emulated")); it never runs in production.
//
// Instruction choice: tdpbsud (signed int8 A x unsigned uint8 B, four products summed into each int32
// of C) with A = the int8 activations and B = the 2-bit codes c = t + 1 in {0, 1, 2}: the very operand
// mapping of the VNNI build's vpdpbusd, so the int32 sums sum(q * c) are the same integers, and the
// shared epilogue subtracts sum(q) as for every build.
#pragma once

#include <cstdint>

namespace ternary_hf_kernel {
namespace {  // internal linkage: each build (module) keeps its own copy, see common.h

// ldtilecfg's 64-byte operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of tile i
  uint8_t rows[16] = {};    // rows of tile i
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads exactly 64 bytes");

}  // namespace
}  // namespace ternary_hf_kernel

#if defined(TERNARY_HF_AMX_EMULATE)
#include <c10/util/Exception.h>

#include <cstring>

namespace ternary_hf_kernel::amx_emulation {
namespace {  // internal linkage: each build (module) keeps its own copy, see common.h

struct Tiles {
  alignas(64) uint8_t data[8][16][64];
  TileConfig cfg;
  bool configured = false;
};

inline Tiles& tiles() {
  static thread_local Tiles t;  // tile registers are per thread, like the real ones
  return t;
}

inline void check_tile(int t) {
  const Tiles& s = tiles();
  TORCH_CHECK(s.configured, "AMX emulation: tile ", t, " used before ldtilecfg");
  TORCH_CHECK(s.cfg.rows[t] >= 1 && s.cfg.rows[t] <= 16 && s.cfg.colsb[t] >= 4 && s.cfg.colsb[t] <= 64 &&
                  s.cfg.colsb[t] % 4 == 0,
              "AMX emulation: tile ", t, " is configured as ", int(s.cfg.rows[t]), " rows x ", s.cfg.colsb[t],
              " bytes (needs 1-16 rows of 4-64 bytes, a multiple of 4)");
}

inline void load_config(const TileConfig* cfg) {
  TORCH_CHECK(cfg->palette_id == 1, "AMX emulation: only palette 1 exists");
  tiles().cfg = *cfg;
  tiles().configured = true;
  std::memset(tiles().data, 0, sizeof(tiles().data));
}

inline void release() { tiles().configured = false; }

inline void zero(int t) {
  check_tile(t);
  std::memset(tiles().data[t], 0, sizeof(tiles().data[t]));
}

inline void load(int t, const void* base, int64_t stride) {
  check_tile(t);
  Tiles& s = tiles();
  std::memset(s.data[t], 0, sizeof(s.data[t]));  // bytes beyond the configured shape read as zero
  for (int r = 0; r < s.cfg.rows[t]; ++r) {
    std::memcpy(s.data[t][r], static_cast<const uint8_t*>(base) + r * stride, s.cfg.colsb[t]);
  }
}

inline void store(int t, void* base, int64_t stride) {
  check_tile(t);
  const Tiles& s = tiles();
  for (int r = 0; r < s.cfg.rows[t]; ++r) {
    std::memcpy(static_cast<uint8_t*>(base) + r * stride, s.data[t][r], s.cfg.colsb[t]);
  }
}

// C[m][n] += sum_k sum_i int8(A[m][4k + i]) * uint8(B[k][4n + i]), int32 with wrap-around.
inline void dpbsud(int c, int a, int b) {
  check_tile(c);
  check_tile(a);
  check_tile(b);
  Tiles& s = tiles();
  const TileConfig& g = s.cfg;
  TORCH_CHECK(g.rows[a] == g.rows[c] && g.colsb[b] == g.colsb[c] && g.colsb[a] == 4 * g.rows[b],
              "AMX emulation: tdpbsud shapes do not fit (C ", int(g.rows[c]), "x", g.colsb[c], " bytes, A ",
              int(g.rows[a]), "x", g.colsb[a], ", B ", int(g.rows[b]), "x", g.colsb[b], ")");
  TORCH_CHECK(a != b && a != c && b != c, "AMX emulation: tdpbsud needs three different tiles");
  for (int m = 0; m < g.rows[c]; ++m) {
    for (int n = 0; n < g.colsb[c] / 4; ++n) {
      int32_t acc;
      std::memcpy(&acc, &s.data[c][m][4 * n], 4);
      uint32_t sum = static_cast<uint32_t>(acc);
      for (int k = 0; k < g.rows[b]; ++k) {
        for (int i = 0; i < 4; ++i) {
          const int32_t av = static_cast<int8_t>(s.data[a][m][4 * k + i]);
          const int32_t bv = s.data[b][k][4 * n + i];
          sum += static_cast<uint32_t>(av * bv);
        }
      }
      acc = static_cast<int32_t>(sum);
      std::memcpy(&s.data[c][m][4 * n], &acc, 4);
    }
  }
}

}  // namespace
}  // namespace ternary_hf_kernel::amx_emulation

#define TH_TILE_LOADCONFIG(cfg) ::ternary_hf_kernel::amx_emulation::load_config(cfg)
#define TH_TILE_RELEASE() ::ternary_hf_kernel::amx_emulation::release()
#define TH_TILE_ZERO(t) ::ternary_hf_kernel::amx_emulation::zero(t)
#define TH_TILE_LOADD(t, base, stride) ::ternary_hf_kernel::amx_emulation::load(t, base, stride)
#define TH_TILE_STORED(t, base, stride) ::ternary_hf_kernel::amx_emulation::store(t, base, stride)
#define TH_TILE_DPBSUD(c, a, b) ::ternary_hf_kernel::amx_emulation::dpbsud(c, a, b)

#else  // the real instructions (-mamx-tile -mamx-int8)
#include <immintrin.h>

// GCC's _tile_loadconfig names only 8 bytes of its operand and _tile_loadd has no memory operand at all,
// so the compiler may drop or delay stores those instructions read; the asm below names the whole
// config, and a compiler barrier precedes every tile load.
#define TH_TILE_LOADCONFIG(cfg) __asm__ volatile("ldtilecfg %0" ::"m"(*(cfg)) : "memory")
#define TH_TILE_RELEASE() _tile_release()
#define TH_TILE_ZERO(t) _tile_zero(t)
#define TH_TILE_LOADD(t, base, stride)      \
  do {                                      \
    __asm__ volatile("" ::: "memory");      \
    _tile_loadd(t, base, stride);           \
  } while (0)
#define TH_TILE_STORED(t, base, stride) _tile_stored(t, base, stride)
#define TH_TILE_DPBSUD(c, a, b) _tile_dpbsud(c, a, b)
#endif
