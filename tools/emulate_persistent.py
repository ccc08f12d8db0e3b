"""Float64 emulation of csrc/cuda/rnn_persistent.cu (persistent_forward_kernel /
persistent_backward_kernel): a development aid for machines without a GPU, not part of
the test suite. It mirrors the kernels line by line, so a change to the kernels must be
mirrored here before its result means anything. It models
  * the block/thread ownership (256 threads, 8 columns per block, k = tid + 256 j),
  * the per-step schedule and formulas (t, rows, split, hn_start, rows_prev, tp),
  * the operation order (per-thread partial dots over j, the xor-shuffle reduce-scatter
    over lanes, the warp sum in warp order),
  * bounds checks on every global / shared access (nullptr dereference = error),
  * shared memory refilled with NaN before every block_matvec,
  * blocks as coroutines under several adversarial schedules, with the step counter
    hand-off (release add after a block barrier, acquire poll then barrier) and a
    happens-before race checker over every global access,
and compares outputs and gradients with rnnfast.reference (float64 autograd).

    python tools/emulate_persistent.py --quick      (about 15 s; without --quick: the full sweep)
"""
from __future__ import annotations

import itertools
import math
import random
import sys

import numpy as np
import torch

import rnnfast.reference as ref

K_COLS, K_THREADS, K_WARPS, CHUNK, MAXROWS = 8, 256, 8, 4, 128
OUT_PER_THREAD = MAXROWS * K_COLS // K_THREADS  # 4
TID = np.arange(K_THREADS)
LANE = TID & 31


class Bug(Exception):
    pass


def padded_rows(N):
    return (N + 7) // 8 * 8


def persistent_shared_bytes(N):
    return K_WARPS * padded_rows(N) * K_COLS * 4


def kk_for(H):
    if H <= K_THREADS:
        return 1
    if H <= 2 * K_THREADS:
        return 2
    if H <= 4 * K_THREADS:
        return 4
    return 8


class Ptr:
    """A device pointer: (array name, element offset); None is nullptr."""

    def __init__(self, name, off=0):
        self.name, self.off = name, off

    def __add__(self, k):
        return Ptr(self.name, self.off + int(k))


class Mem:
    def __init__(self, arrays, readonly):
        self.a = arrays
        self.readonly = set(readonly)
        self.log = {}  # name -> list of record arrays

    def _check(self, ptr, idx, what):
        if ptr is None:
            raise Bug(f"nullptr {what}")
        arr = self.a[ptr.name]
        full = ptr.off + idx
        if full.size and (full.min() < 0 or full.max() >= arr.size):
            raise Bug(f"OOB {what} {ptr.name}: [{full.min()}, {full.max()}] size {arr.size}")
        return full

    def _record(self, name, full, kind, ctx, tids):
        if name in self.readonly:
            if kind == 1:
                raise Bug(f"write to read-only {name}")
            return
        n = full.size
        rec = np.empty((n, 9), dtype=np.int64)
        rec[:, 0] = full
        rec[:, 1] = kind
        rec[:, 2] = ctx.d
        rec[:, 3] = ctx.blk
        rec[:, 4] = tids
        rec[:, 5] = ctx.epoch
        rec[:, 6] = ctx.g
        rec[:, 7] = 0
        rec[:, 8] = ctx.seq
        ctx.seq += 1
        self.log.setdefault(name, []).append(rec)

    def read(self, ptr, idx, ctx, tids, what="read"):
        idx = np.asarray(idx, dtype=np.int64)
        full = self._check(ptr, idx, what)
        self._record(ptr.name, full, 0, ctx, tids)
        return self.a[ptr.name][full]

    def write(self, ptr, idx, vals, ctx, tids, what="write"):
        idx = np.asarray(idx, dtype=np.int64)
        full = self._check(ptr, idx, what)
        self._record(ptr.name, full, 1, ctx, tids)
        self.a[ptr.name][full] = vals


class Ctx:
    """Per-block synchronization state. Threads of a block are emulated together
    (vectorised); the block's barrier epoch orders its threads. Cross-block ordering is
    tracked with a vector clock over the direction's G blocks: vc[h] = e means every
    access of block h in an epoch < e happens-before this block's current epoch."""

    def __init__(self, d, blk, g, G):
        self.d, self.blk, self.g, self.G = d, blk, g, G
        self.epoch = 0  # __syncthreads passed
        self.vc = np.zeros(G, dtype=np.int64)
        self.hist = [self.vc]  # hist[epoch] = vc during that epoch
        self.seq = 0
        self.steps_done = 0  # epilogues completed (ground truth, for the claim check)
        self.incs = 0  # increments this block added to its counter

    def syncthreads(self, join=None):
        self.epoch += 1
        if join is not None:
            self.vc = np.maximum(self.vc, join)
        self.hist.append(self.vc)


class Counter:
    """One 64-bit step counter of a direction. Every increment is a release RMW; an
    acquire load reading value v synchronizes with increments 1..v (RMW chain =
    observation order in the PTX model), so it joins their clocks."""

    def __init__(self, d, G):
        self.d, self.G = d, G
        self.value = 0
        self.prefix = [np.zeros(G, dtype=np.int64)]  # prefix[v]: join of increments 1..v
        self.ctxs = []  # the direction's blocks (for the claim check)


SYNC = dict(wait_slack=0, release_before_barrier=False, barrier_after_poll=True,
            final_slack=0, shared_counter=False, fence=True)


def wait_for_count(ctx, counter, target):
    """thread 0: while (ld.acquire.gpu(counter) < target) {}; then __syncthreads()."""
    need = target // counter.G  # the step count the code means to wait for
    target -= SYNC["wait_slack"]
    while counter.value < target:
        yield ("wait", counter, target)
    v = counter.value  # the value the successful acquire load read
    # claim: counter >= G*i  =>  every block of the direction finished step i-1
    lag = [c.blk for c in counter.ctxs if c.steps_done < need]
    if lag:
        raise Bug(f"claim violated: block {ctx.blk} saw counter {v} >= {target} but blocks "
                  f"{lag[:8]} have not finished step {need - 1}")
    yield None  # other blocks may run between the poll and the barrier
    ctx.syncthreads(join=counter.prefix[v] if SYNC["barrier_after_poll"] else None)


def signal_step(ctx, counter):
    """__syncthreads(); thread 0: __threadfence(); red.release.gpu.add(counter, 1)."""
    if not SYNC["release_before_barrier"]:
        ctx.syncthreads()
    yield None  # other blocks may run between the barrier and the red
    # no block may add for step j before every block of the direction finished step j-1
    j = ctx.incs
    lag = [c.blk for c in counter.ctxs if c.steps_done < j]
    if lag:
        raise Bug(f"block {ctx.blk} adds for step {j} before blocks {lag[:8]} finished "
                  f"step {j - 1}")
    rel = ctx.vc.copy()
    rel[ctx.g] = ctx.epoch  # the release covers this block's epochs < current
    counter.value += 1
    counter.prefix.append(np.maximum(counter.prefix[-1], rel))
    ctx.incs += 1
    if SYNC["release_before_barrier"]:
        ctx.syncthreads()
    yield None  # others may run before this block's next accesses


def act_fn(act, z):
    if act == "tanh":
        return np.tanh(z)
    return np.where((z > 0) | np.isnan(z), z, 0.0)


def act_grad(act, g, h):
    if act == "tanh":
        return g * (1.0 - h * h)
    return np.where(h <= 0, 0.0, g)


# --------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------


def load_rows(mem, ctx, KK, A, ldA, split, B, ldB, b0, rows, H):
    v = np.zeros((K_THREADS, CHUNK, KK))
    for r in range(CHUNK):
        b = b0 + r
        if not b < rows:
            continue
        src, ld = (A, ldA) if b < split else (B, ldB)
        for j in range(KK):
            k = TID + K_THREADS * j
            m = k < H
            if m.any():
                if src is None:
                    raise Bug("load_rows: nullptr source")
                v[m, r, j] = mem.read(src, b * ld + k[m], ctx, TID[m], "load_rows")
    return v


def reduce_scatter32(vals):
    """vals: (256, 32) per-thread values; returns (256,) lane l -> warp sum of value l."""
    v = vals.copy()
    for S in (16, 8, 4, 2, 1):
        upper = (LANE & S) != 0
        partner = TID ^ S
        new = v.copy()
        for i in range(S):
            send = np.where(upper, v[:, i], v[:, i + S])
            keep = np.where(upper, v[:, i + S], v[:, i])
            new[:, i] = keep + send[partner]
        v = new
    return v[:, 0]


def reduce_chunk(v, w, red, red_stride, b0, KK):
    acc = np.zeros((K_THREADS, CHUNK * K_COLS))
    for r in range(CHUNK):
        for c in range(K_COLS):
            s = np.zeros(K_THREADS)
            for j in range(KK):
                s = v[:, r, j] * w[:, c, j] + s
            acc[:, r * K_COLS + c] = s
    out = reduce_scatter32(acc)
    # self-check of the lane mapping: lane l holds the warp sum of acc[:, l]
    wsum = acc.reshape(K_WARPS, 32, 32).sum(axis=1)  # (warp, l)
    if not np.allclose(out.reshape(K_WARPS, 32), wsum, rtol=1e-12, atol=1e-12, equal_nan=True):
        raise Bug("reduce_scatter32 lane mapping")
    idx = (TID >> 5) * red_stride + b0 * K_COLS + LANE
    if idx.min() < 0 or idx.max() >= red.size:
        raise Bug(f"shared OOB write {idx.max()} >= {red.size}")
    # also: a warp must not write into the next warp's slice
    if (b0 * K_COLS + LANE).max() >= red_stride:
        raise Bug(f"red_warp write past red_stride: {(b0 * K_COLS + LANE).max()} >= {red_stride}")
    red[idx] = out


def block_matvec(mem, ctx, KK, w, A, ldA, split, B, ldB, rows, H, red, red_stride):
    red[:] = np.nan  # anything read later must be written in this call
    v0 = load_rows(mem, ctx, KK, A, ldA, split, B, ldB, 0, rows, H)
    yield None
    b0 = 0
    while b0 < rows:
        v1 = load_rows(mem, ctx, KK, A, ldA, split, B, ldB, b0 + CHUNK, rows, H)
        yield None
        reduce_chunk(v0, w, red, red_stride, b0, KK)
        if b0 + CHUNK < rows:
            v0 = load_rows(mem, ctx, KK, A, ldA, split, B, ldB, b0 + 2 * CHUNK, rows, H)
            yield None
            reduce_chunk(v1, w, red, red_stride, b0 + CHUNK, KK)
        b0 += 2 * CHUNK


def warp_sum(red, red_stride, o):
    o = np.asarray(o)
    if o.size and (o.min() < 0 or o.max() >= red_stride):
        raise Bug("warp_sum index past red_stride")
    r = red[o].copy()
    for wp in range(1, K_WARPS):
        r = r + red[wp * red_stride + o]
    if np.isnan(r).any():
        raise Bug("warp_sum read a shared entry not written this step")
    return r


class Seq:
    def __init__(self, act, T, N, H, D, bs=None, off=None):
        self.act, self.T, self.N, self.H, self.D = act, T, N, H, D
        self.bs, self.off = bs, off


def step_rows(s, t):
    if not 0 <= t < s.T:
        raise Bug(f"step table index {t} out of range")
    return s.bs[t] if s.bs is not None else s.N


def step_offset(s, t):
    if not 0 <= t < s.T:
        raise Bug(f"step table index {t} out of range")
    return s.off[t] if s.off is not None else t * s.N


def prev_state(s, Y, ld, d, t, rows):
    """(from, split) of the kernels' prev_state: rows b < split start from row b of
    `from`, the others from hx[b]."""
    if d == 0:
        if t > 0:
            return Y + step_offset(s, t - 1) * ld, rows
    elif t + 1 < s.T:
        return Y + step_offset(s, t + 1) * ld, step_rows(s, t + 1)
    return None, 0


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------


def make_counters(D, G):
    if SYNC["shared_counter"]:  # planted bug: both directions on one counter
        c = Counter(0, G)
        return [c, c]
    return [Counter(d, G) for d in range(D)]


def schedule(gens, ctxs, policy, rng):
    """Runs the blocks' coroutines interleaved. A block blocked in wait_for_count is
    runnable only once its counter reaches the target. Policies:
      uniform  - uniformly random runnable block at every yield point
      weighted - per-block speeds drawn once (heavy-tailed), random by weight
      greedy   - always the runnable block that has made the most progress (max run-ahead)
      laggard  - always the least-progressed block (near lockstep)
      slowone  - one random block 100x slower than the others"""
    n = len(gens)
    live = set(range(n))
    blocked = {}
    progress = [0] * n
    if policy == "weighted":
        wts = [rng.expovariate(1.0) ** 3 + 1e-3 for _ in range(n)]
    elif policy == "slowone":
        wts = [1.0] * n
        wts[rng.randrange(n)] = 0.01
    else:
        wts = [1.0] * n
    maxlead = 0
    while live:
        runnable = [b for b in live
                    if b not in blocked or blocked[b][0].value >= blocked[b][1]]
        if not runnable:
            raise Bug("deadlock: every live block waits: " + str(
                {b: (blocked[b][0].value, blocked[b][1]) for b in sorted(blocked)[:6]}))
        if policy == "greedy":
            m = max(progress[b] for b in runnable)
            b = rng.choice([q for q in runnable if progress[q] == m])
        elif policy == "laggard":
            m = min(progress[b] for b in runnable)
            b = rng.choice([q for q in runnable if progress[q] == m])
        else:
            b = rng.choices(runnable, weights=[wts[q] for q in runnable])[0]
        blocked.pop(b, None)
        try:
            tok = next(gens[b])
        except StopIteration:
            live.discard(b)
            continue
        progress[b] += 1
        if isinstance(tok, tuple) and tok[0] == "wait":
            blocked[b] = (tok[1], tok[2])
        # largest skew in completed steps between blocks of one direction
        dsteps = {}
        for c in ctxs:
            lo, hi = dsteps.get(c.d, (1 << 60, -1))
            dsteps[c.d] = (min(lo, c.incs), max(hi, c.incs))
        maxlead = max(maxlead, max(hi - lo for lo, hi in dsteps.values()))
    return maxlead


def forward_kernel(mem, s, p, policy="uniform", order_seed=0):
    H, D, steps = s.H, s.D, s.T
    G = (H + K_COLS - 1) // K_COLS
    grid = D * G
    KK = kk_for(H)
    ldy = D * H
    red_stride = padded_rows(s.N) * K_COLS
    counters = make_counters(D, G)
    ctxs = []

    def block(blk):
        d, g = blk // G, blk % G
        ctx = ctxs[blk]
        counter = counters[d]
        per_step = G
        c = g * K_COLS + TID % K_COLS
        col_ok = c < H
        w = np.zeros((K_THREADS, K_COLS, KK))
        for cc in range(K_COLS):
            col = g * K_COLS + cc
            for j in range(KK):
                k = TID + K_THREADS * j
                m = (col < H) & (k < H)
                if m.any():
                    w[m, cc, j] = mem.read(p["w_hh"][d], col * H + k[m], ctx, TID[m], "W")
        bias = np.zeros(K_THREADS)
        if p["b_ih"][d] is not None and col_ok.any():
            bias[col_ok] = (mem.read(p["b_ih"][d], c[col_ok], ctx, TID[col_ok])
                            + mem.read(p["b_hh"][d], c[col_ok], ctx, TID[col_ok]))
        red = np.full(persistent_shared_bytes(s.N) // 4, np.nan)
        Y, hx, h_n = p["y"] + d * H, p["hx"][d], p["h_n"][d]
        yield None
        for i in range(steps):
            t = i if d == 0 else steps - 1 - i
            rows, off = step_rows(s, t), step_offset(s, t)
            proj = np.zeros((OUT_PER_THREAD, K_THREADS))
            for e in range(OUT_PER_THREAD):
                b = TID // K_COLS + (K_THREADS // K_COLS) * e
                m = col_ok & (b < rows)
                if m.any():
                    proj[e, m] = mem.read(Y, (off + b[m]) * ldy + c[m], ctx, TID[m], "proj")
            A, split = prev_state(s, Y, ldy, d, t, rows)
            if d == 0:
                hn_start = step_rows(s, t + 1) if t + 1 < steps else 0
            else:
                hn_start = 0 if t == 0 else rows
            yield None
            if i > 0:
                yield from wait_for_count(ctx, counter, per_step * i)
            yield from block_matvec(mem, ctx, KK, w, A, ldy, split, hx, H, rows, H, red,
                                    red_stride)
            ctx.syncthreads()
            for e in range(OUT_PER_THREAD):
                b = TID // K_COLS + (K_THREADS // K_COLS) * e
                m = col_ok & (b < rows)
                if not m.any():
                    continue
                z = (warp_sum(red, red_stride, b[m] * K_COLS + TID[m] % K_COLS) + proj[e, m]) \
                    + bias[m]
                h = act_fn(s.act, z)
                mem.write(Y, (off + b[m]) * ldy + c[m], h, ctx, TID[m], "Y")
                mh = b[m] >= hn_start
                if mh.any():
                    mem.write(h_n, b[m][mh] * H + c[m][mh], h[mh], ctx, TID[m][mh], "h_n")
                yield None
            ctx.steps_done += 1
            yield from signal_step(ctx, counter)

    for blk in range(grid):
        ctx = Ctx(blk // G, blk, blk % G, G)
        ctxs.append(ctx)
        counters[blk // G].ctxs.append(ctx)
    gens = [block(blk) for blk in range(grid)]
    lead = schedule(gens, ctxs, policy, random.Random(order_seed))
    return ctxs, lead


def backward_kernel(mem, s, p, policy="uniform", order_seed=0):
    H, D, steps = s.H, s.D, s.T
    G = (H + K_COLS - 1) // K_COLS
    grid = D * G
    KK = kk_for(H)
    ld = D * H
    red_stride = padded_rows(s.N) * K_COLS
    counters = make_counters(D, G)
    ctxs = []

    def block(blk):
        d, g = blk // G, blk % G
        ctx = ctxs[blk]
        counter = counters[d]
        per_step = G
        c = g * K_COLS + TID % K_COLS
        col_ok = c < H
        w = np.zeros((K_THREADS, K_COLS, KK))
        for cc in range(K_COLS):
            col = g * K_COLS + cc
            for j in range(KK):
                k = TID + K_THREADS * j
                m = (col < H) & (k < H)
                if m.any():
                    w[m, cc, j] = mem.read(p["w_hh"][d], k[m] * H + col, ctx, TID[m], "W^T")
        red = np.full(persistent_shared_bytes(s.N) // 4, np.nan)
        Y, DZ, hx = p["y"] + d * H, p["dz"] + d * H, p["hx"][d]
        grad_h_n, grad_hx, h_prev = p["grad_h_n"][d], p["grad_hx"][d], p["h_prev"][d]
        yield None
        for i in range(steps):
            t = steps - 1 - i if d == 0 else i
            rows, off = step_rows(s, t), step_offset(s, t)
            tp = t + 1 if d == 0 else t - 1
            rows_prev = step_rows(s, tp) if i > 0 else 0
            prev_from, prev_split = prev_state(s, Y, ld, d, t, rows)
            dy = np.zeros((OUT_PER_THREAD, K_THREADS))
            hh = np.zeros((OUT_PER_THREAD, K_THREADS))
            ghn = np.zeros((OUT_PER_THREAD, K_THREADS))
            for e in range(OUT_PER_THREAD):
                b = TID // K_COLS + (K_THREADS // K_COLS) * e
                m = col_ok & (b < rows)
                if not m.any():
                    continue
                bm, cm, tm = b[m], c[m], TID[m]
                dy[e, m] = mem.read(DZ, (off + bm) * ld + cm, ctx, tm, "dy")
                hh[e, m] = mem.read(Y, (off + bm) * ld + cm, ctx, tm, "h")
                if grad_h_n is not None:
                    ghn[e, m] = mem.read(grad_h_n, bm * H + cm, ctx, tm, "ghn")
                vals = np.empty(bm.size)
                for q in range(bm.size):
                    bb = int(bm[q])
                    src = (prev_from + bb * ld) if bb < prev_split else (hx + bb * H)
                    vals[q] = mem.read(src, np.array([cm[q]]), ctx, np.array([tm[q]]), "src")[0]
                mem.write(h_prev, (off + bm) * H + cm, vals, ctx, tm, "h_prev")
                yield None
            A = (DZ + step_offset(s, tp) * ld) if i > 0 else None
            if i > 0:
                yield from wait_for_count(ctx, counter, per_step * i)
            yield from block_matvec(mem, ctx, KK, w, A, ld, rows_prev, A, ld, rows_prev, H, red,
                                    red_stride)
            ctx.syncthreads()
            for e in range(OUT_PER_THREAD):
                b = TID // K_COLS + (K_THREADS // K_COLS) * e
                m1 = col_ok & (b < rows)
                m2 = col_ok & ~(b < rows) & (b < rows_prev)
                if m1.any():
                    bm, cm, tm = b[m1], c[m1], TID[m1]
                    carried = np.where(bm < rows_prev, 0.0, ghn[e, m1])
                    mc = bm < rows_prev
                    if mc.any():
                        carried[mc] = warp_sum(red, red_stride, bm[mc] * K_COLS + tm[mc] % K_COLS)
                    val = act_grad(s.act, dy[e, m1] + carried, hh[e, m1])
                    mem.write(DZ, (off + bm) * ld + cm, val, ctx, tm, "DZ")
                if m2.any():
                    bm, cm, tm = b[m2], c[m2], TID[m2]
                    mem.write(grad_hx, bm * H + cm,
                              warp_sum(red, red_stride, bm * K_COLS + tm % K_COLS), ctx, tm,
                              "grad_hx(loop)")
                yield None
            ctx.steps_done += 1
            yield from signal_step(ctx, counter)
        # final phase
        t_last = 0 if d == 0 else steps - 1
        rows_last = step_rows(s, t_last)
        A = DZ + step_offset(s, t_last) * ld
        yield from wait_for_count(ctx, counter, per_step * steps - SYNC["final_slack"])
        yield from block_matvec(mem, ctx, KK, w, A, ld, rows_last, A, ld, rows_last, H, red,
                                red_stride)
        ctx.syncthreads()
        for e in range(OUT_PER_THREAD):
            b = TID // K_COLS + (K_THREADS // K_COLS) * e
            m = col_ok & (b < rows_last)
            if m.any():
                mem.write(grad_hx, b[m] * H + c[m],
                          warp_sum(red, red_stride, b[m] * K_COLS + TID[m] % K_COLS), ctx, TID[m],
                          "grad_hx(final)")

    for blk in range(grid):
        ctx = Ctx(blk // G, blk, blk % G, G)
        ctxs.append(ctx)
        counters[blk // G].ctxs.append(ctx)
    gens = [block(blk) for blk in range(grid)]
    lead = schedule(gens, ctxs, policy, random.Random(order_seed))
    return ctxs, lead


# --------------------------------------------------------------------------------------
# Race checker (happens-before by barrier epochs + counter vector clocks)
# --------------------------------------------------------------------------------------


def check_races(mem, expect_written, ctxs):
    """expect_written: name -> number of elements that must each be written exactly once."""
    problems = []
    G = ctxs[0].G
    maxE = max(len(c.hist) for c in ctxs)
    VC = np.zeros((len(ctxs), maxE, G), dtype=np.int64)
    for c in ctxs:
        VC[c.blk, :len(c.hist)] = np.stack(c.hist)
    for name, recs in mem.log.items():
        R = np.concatenate(recs)
        elem, kind, d, blk, tid, epoch, g, _, seq = R.T
        W = R[kind == 1]
        size = mem.a[name].size
        nw = np.bincount(W[:, 0], minlength=size)
        if (nw > 1).any():
            problems.append(f"{name}: {int((nw > 1).sum())} elements written more than once")
        if name in expect_written:
            if (nw[:expect_written[name]] == 0).any():
                problems.append(f"{name}: {int((nw[:expect_written[name]] == 0).sum())} "
                                "elements never written")
        widx = np.full(size, -1, dtype=np.int64)
        widx[W[::-1, 0]] = np.arange(len(W))[::-1]
        has = widx[elem] >= 0
        A = R[has]
        Wm = W[widx[A[:, 0]]]
        same_access = (A[:, 1] == 1) & (A[:, 3] == Wm[:, 3]) & (A[:, 4] == Wm[:, 4]) & \
            (A[:, 8] == Wm[:, 8])
        A, Wm = A[~same_access], Wm[~same_access]
        same_blk = A[:, 3] == Wm[:, 3]
        same_thr = same_blk & (A[:, 4] == Wm[:, 4])
        ok_blk = same_blk & ~same_thr & (A[:, 5] != Wm[:, 5])
        same_dir = A[:, 2] == Wm[:, 2]
        # a -> w: w's block knew a's epoch when it made w (and vice versa)
        a_before_w = VC[Wm[:, 3], Wm[:, 5], A[:, 6]] > A[:, 5]
        w_before_a = VC[A[:, 3], A[:, 5], Wm[:, 6]] > Wm[:, 5]
        ok_cross = ~same_blk & same_dir & (w_before_a | a_before_w)
        bad = ~(same_thr | ok_blk | ok_cross)
        if bad.any():
            k = np.nonzero(bad)[0][0]
            problems.append(
                f"{name}: {int(bad.sum())} unordered conflicting accesses, e.g. elem {A[k, 0]} "
                f"access kind={A[k, 1]} blk={A[k, 3]} tid={A[k, 4]} epoch={A[k, 5]} "
                f"vs write blk={Wm[k, 3]} tid={Wm[k, 4]} epoch={Wm[k, 5]}")
    return problems


# --------------------------------------------------------------------------------------
# Driver: one configuration
# --------------------------------------------------------------------------------------


LEAD = []


def run_case(act, D, bias, lengths, N, T_dense, H, seed=0, order_seed=0,
             policy="uniform"):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    if lengths is not None:
        lens = sorted(lengths, reverse=True)
        N = len(lens)
        T = lens[0]
        bs = [sum(1 for L in lens if L > t) for t in range(T)]
        off = [0]
        for b in bs[:-1]:
            off.append(off[-1] + b)
        rows = sum(bs)
    else:
        T = T_dense
        bs = off = None
        rows = T * N
    I = rows  # x = identity => grad_w_ih = dz^T exactly
    sc = 1.0 / math.sqrt(H)
    weights = []
    for d in range(D):
        weights.append(torch.randn(H, I, generator=g, dtype=dt) * 0.7)
        weights.append(torch.randn(H, H, generator=g, dtype=dt) * sc * 1.2)
        if bias:
            weights.append(torch.randn(H, generator=g, dtype=dt) * 0.3)
            weights.append(torch.randn(H, generator=g, dtype=dt) * 0.3)
    hx = torch.randn(D, N, H, generator=g, dtype=dt) * 0.8
    gout = torch.randn(rows, D * H, generator=g, dtype=dt)
    ghn = torch.randn(D, N, H, generator=g, dtype=dt)

    # ---- reference (autograd)
    wl = [w.clone().requires_grad_(True) for w in weights]
    hxl = hx.clone().requires_grad_(True)
    x2 = torch.eye(rows, dtype=dt)
    if lengths is not None:
        inp = x2
        bst = torch.tensor(bs, dtype=torch.int64)
    else:
        inp = x2.reshape(T, N, I)
        bst = None
    out, hn = ref.rnn_forward(inp, hxl, wl, bst, None, bias, 1, act, D == 2)
    out2 = out.reshape(rows, D * H)
    loss = (out2 * gout).sum() + (hn * ghn).sum()
    loss.backward()
    per = 4 if bias else 2

    # ---- emulated forward
    seq = Seq(act, T, N, H, D, bs, off)
    proj = torch.cat([weights[d * per].t() for d in range(D)], 1)  # x @ W_ih^T = W_ih^T
    arrays = {
        "y": proj.numpy().copy().ravel(),
        "hx": hx.numpy().copy().ravel(),
        "w_hh": torch.stack([weights[d * per + 1] for d in range(D)]).numpy().ravel().copy(),
        "h_n": np.full(D * N * H, np.nan),
    }
    if bias:
        arrays["b_ih"] = torch.stack([weights[d * per + 2] for d in range(D)]).numpy().ravel().copy()
        arrays["b_hh"] = torch.stack([weights[d * per + 3] for d in range(D)]).numpy().ravel().copy()
    mem = Mem(arrays, readonly=["hx", "w_hh", "b_ih", "b_hh"])
    p = dict(
        y=Ptr("y"),
        w_hh=[Ptr("w_hh", d * H * H) for d in range(D)],
        b_ih=[Ptr("b_ih", d * H) if bias else None for d in range(D)],
        b_hh=[Ptr("b_hh", d * H) if bias else None for d in range(D)],
        hx=[Ptr("hx", d * N * H) for d in range(D)],
        h_n=[Ptr("h_n", d * N * H) for d in range(D)],
    )
    res = {}
    problems = []
    ctxs, lead_f = forward_kernel(mem, seq, p, policy, order_seed)
    problems += ["fwd " + q for q in check_races(mem, {"y": rows * D * H, "h_n": D * N * H},
                                                 ctxs)]
    y_emu = mem.a["y"].reshape(rows, D * H)
    hn_emu = mem.a["h_n"].reshape(D, N, H)
    res["output"] = np.abs(y_emu - out2.detach().numpy()).max()
    res["h_n"] = np.abs(hn_emu - hn.detach().numpy()).max()

    # ---- emulated backward (y = the emulated forward output)
    arrays_b = {
        "y": y_emu.ravel().copy(),
        "dz": gout.numpy().copy().ravel(),
        "hx": hx.numpy().copy().ravel(),
        "w_hh": arrays["w_hh"],
        "ghn": ghn.numpy().copy().ravel(),
        "ghx": np.full(D * N * H, np.nan),
        "hprev": np.full(D * rows * H, np.nan),
    }
    memb = Mem(arrays_b, readonly=["y", "hx", "w_hh", "ghn"])
    pb = dict(
        y=Ptr("y"), dz=Ptr("dz"),
        w_hh=[Ptr("w_hh", d * H * H) for d in range(D)],
        hx=[Ptr("hx", d * N * H) for d in range(D)],
        grad_h_n=[Ptr("ghn", d * N * H) for d in range(D)],
        grad_hx=[Ptr("ghx", d * N * H) for d in range(D)],
        h_prev=[Ptr("hprev", d * rows * H) for d in range(D)],
    )
    ctxs, lead_b = backward_kernel(memb, seq, pb, policy, order_seed)
    problems += ["bwd " + q for q in check_races(
        memb, {"dz": rows * D * H, "ghx": D * N * H, "hprev": D * rows * H}, ctxs)]
    LEAD.append(max(lead_f, lead_b))
    dz = memb.a["dz"].reshape(rows, D * H)
    hprev = memb.a["hprev"].reshape(D, rows, H)
    ghx = memb.a["ghx"].reshape(D, N, H)
    e_dz = e_dwhh = e_db = 0.0
    for d in range(D):
        dzd = dz[:, d * H:(d + 1) * H]
        e_dz = max(e_dz, np.abs(dzd.T - wl[d * per].grad.numpy()).max())  # dW_ih = dz^T x
        e_dwhh = max(e_dwhh, np.abs(dzd.T @ hprev[d] - wl[d * per + 1].grad.numpy()).max())
        if bias:
            e_db = max(e_db, np.abs(dzd.sum(0) - wl[d * per + 2].grad.numpy()).max(),
                       np.abs(dzd.sum(0) - wl[d * per + 3].grad.numpy()).max())
    res["dz"] = e_dz
    res["dW_hh(h_prev)"] = e_dwhh
    res["db"] = e_db
    res["grad_hx"] = np.abs(ghx - hxl.grad.numpy()).max()
    return res, problems


POLICIES = ["uniform", "weighted", "greedy", "laggard", "slowone"]


def parse_args():
    policies, seeds = POLICIES, 1
    for a in sys.argv[1:]:
        if a.startswith("--policies="):
            policies = a.split("=", 1)[1].split(",")
        elif a.startswith("--seeds="):
            seeds = int(a.split("=", 1)[1])
        elif a.startswith("--sync="):  # planted bugs, e.g. --sync=wait_slack=1
            k, v = a.split("=", 2)[1:]
            SYNC[k] = type(SYNC[k])(int(v)) if not isinstance(SYNC[k], bool) else v == "1"
    return policies, seeds


def main():
    acts = ["tanh", "relu"]
    Ds = [1, 2]
    biases = [True, False]
    Hs = [1, 5, 8, 9, 33, 300]
    Ns = [1, 3, 6, 9]
    quick = "--quick" in sys.argv
    if quick:
        Hs = [5, 9]
    policies, seeds = parse_args()
    packed_for_N = {
        1: [4],
        3: [5, 2, 2],
        6: [7, 3, 5, 5, 1, 2],
        9: [6, 6, 1, 4, 3, 3, 2, 6, 5],
    }
    worst = {}
    nfail = 0
    ncase = 0
    nrun = 0
    for act, D, bias, H, N, packed in itertools.product(acts, Ds, biases, Hs, Ns, [False, True]):
        lengths = packed_for_N[N] if packed else None
        T_dense = 4 if N != 1 else 3
        ncase += 1
        for policy in policies:
            for sd in range(seeds):
                nrun += 1
                try:
                    res, problems = run_case(act, D, bias, lengths, N, T_dense, H, seed=ncase,
                                             order_seed=1000 * ncase + sd, policy=policy)
                except Bug as e:
                    nfail += 1
                    print(f"BUG act={act} D={D} bias={bias} H={H} N={N} packed={packed} "
                          f"{policy}/{sd}: {e}")
                    continue
                bad = any(not (v < 1e-9) for v in res.values()) or problems
                for k, v in res.items():
                    worst[k] = max(worst.get(k, 0.0), v)
                if bad:
                    nfail += 1
                    print(f"FAIL act={act} D={D} bias={bias} H={H} N={N} packed={packed} "
                          f"{policy}/{sd}: "
                          f"{ {k: float(f'{v:.3g}') for k, v in res.items()} } {problems}")
    print(f"{ncase} configurations x {len(policies)} policies x {seeds} seeds = {nrun} runs, "
          f"{nfail} failing")
    print("max abs errors over all:", {k: float(f"{v:.3g}") for k, v in worst.items()})
    print("max step skew between blocks of a direction (increments):",
          {k: LEAD.count(k) for k in sorted(set(LEAD))})
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
