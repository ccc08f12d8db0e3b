// How a layer's time loops spread over threads (OpenMP teams: the loops meet at a
// barrier every step, which a fork/join per step through at::parallel_for would not
// afford).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include <omp.h>

#include "../rnn_args.h"

namespace rnnfast::cpu {

// A step smaller than this many multiply-adds runs on one thread: a barrier per
// step would cost more than it saves.
inline constexpr int64_t kTeamMinFlops = 48 * 1024;

// How to spread one layer's time loop over threads. Directions of a bidirectional
// layer are independent: one thread each, no synchronisation. A unidirectional
// layer splits the step's columns (rows of W_hh) over threads, with one barrier per
// step, only when a step is large enough to pay for it.
struct TeamPlan {
  int threads = 1;
  bool per_direction = false;
};

// split_columns = false: loops that cannot split a step's columns get a team only for
// the two directions.
inline TeamPlan plan_team(const RnnSizes& s, bool split_columns = true) {
  TeamPlan p;
  const int nt = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (nt < 2) return p;
  if (s.D == 2) {
    p.threads = 2;
    p.per_direction = true;
  } else if (split_columns && s.N * s.G * s.H * s.P >= kTeamMinFlops && s.H >= 32) {
    p.threads = static_cast<int>(std::min<int64_t>(nt, s.H / 16));
  }
  return p;
}

// Column slice [begin, end) of H owned by thread `tid` of `n`; 16-aligned. For a gated
// cell the slice is of hidden units: the thread owns their G gate columns.
inline std::pair<int64_t, int64_t> column_slice(int64_t H, int tid, int n) {
  const int64_t units = (H + 15) / 16;
  const int64_t b = units * tid / n, e = units * (tid + 1) / n;
  return {std::min(H, b * 16), std::min(H, e * 16)};
}

template <typename Body>
void run_team(const TeamPlan& p, Body body) {
  if (p.threads <= 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(p.threads)
  body(omp_get_thread_num(), omp_get_num_threads());
}

inline void team_barrier(int n) {
  if (n > 1) {
#pragma omp barrier
  }
}

// Runs body(d, c0, c1, team) for each direction of a layer on the team plan_team
// picks: one thread per direction (team = 1), or the step's columns [c0, c1) split
// over `team` threads that meet at a barrier every step.
template <typename Body>
void run_directions(const RnnSizes& s, Body body, bool split_columns = true) {
  const TeamPlan plan = plan_team(s, split_columns);
  run_team(plan, [&](int tid, int n) {
    for (int64_t d = 0; d < s.D; ++d) {
      if (plan.per_direction && d != tid) continue;
      const auto [c0, c1] = plan.per_direction ? std::pair<int64_t, int64_t>{0, s.H}
                                               : column_slice(s.H, tid, n);
      body(d, c0, c1, plan.per_direction ? 1 : n);
    }
  });
}

}  // namespace rnnfast::cpu
