// A matrix cut into fixed tiles, spread over torch's threads. The tiles depend only
// on the sizes, never on the thread count, so results computed per tile do not
// depend on it either.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace rnnfast::cpu {

// Calls f(r0, r1, c0, c1) for every tile [r0, r1) x [c0, c1) of an R x C matrix cut
// into tile_r x tile_c tiles (row-major tile order), `grain` tiles per task at least.
template <typename F>
void parallel_tiles(int64_t R, int64_t C, int64_t tile_r, int64_t tile_c, int64_t grain,
                    const F& f) {
  if (R <= 0 || C <= 0) return;
  const int64_t tiles_c = (C + tile_c - 1) / tile_c;
  const int64_t tiles = ((R + tile_r - 1) / tile_r) * tiles_c;
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t r0 = (tile / tiles_c) * tile_r, c0 = (tile % tiles_c) * tile_c;
      f(r0, std::min(R, r0 + tile_r), c0, std::min(C, c0 + tile_c));
    }
  });
}

}  // namespace rnnfast::cpu
