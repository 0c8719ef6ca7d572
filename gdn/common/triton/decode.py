"""Portable Triton decode: one kernel for the whole decode family.

`gdn_decode_kernel` advances T (constexpr, 1 for plain decode) tokens of the gated delta rule for one
[BV, K] tile (state_layout "vk", K contiguous) or [K, BV] tile ("kv", V contiguous) of one (sequence,
v-head) state. The state rows along V evolve independently (S[v, :] needs only k, q, v[v] and the
gates), so a program owns its tile from the first step to the last and never talks to another one.
decode (this file), decode_packed and decode_mtp launch this kernel with different constexprs.

Per step, all in fp32:  h *= exp(g);  kv = h k;  hq = h q;  u = beta (v - kv);  h += u k^T;
o = hq + u (k . q)  (= h_new q, with both reductions over the decayed tile issued together).

Memory bound: every active state is read once and written once per call. Slot offsets are int64. (Cache
hints on the state's load and store, evict_first and .cs, measured within +-2% with no consistent sign on an
H200, 2026-11-22: fp32 B=512 538.5 us plain, 542-550 with hints; not used.)
A negative slot index is padding: no state traffic, zero output. On sm_90+ the kernel is launched with
PDL (gdn/common/triton/_pdl.py), so at small batch (launch-bound) its launch overlaps the previous kernel,
and (where the config table says so) it prefetches its state tile into L2 before waiting for that kernel
(`_prefetch_tile`): at B=1 the tile's DRAM latency then overlaps the previous kernel too.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common import probe
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton._pdl import pdl_prologue

MAX_HEAD_DIM = 256     # the whole K row sits in registers


# ---------------------------------------------------------------------------------------------------
# kernel

@triton.jit
def _softplus(x):
    # softplus with threshold 20; log1p(e) = log(1 + e) * e / ((1 + e) - 1) stays accurate for tiny e
    e = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + e
    lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _load_step(q, k, v, a, b, row, t, i_h, i_hv, o_k, m_k, o_v, m_v,
               s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_ab, s_at, s_ah, s_bb, s_bt, s_bh):
    """Raw inputs of step t of sequence `row` (fp32): q, k [BK], the v slice [BV], a, b."""
    r_q = tl.load(q + row * s_qb + t * s_qt + i_h * s_qh + o_k, mask=m_k, other=0).to(tl.float32)
    r_k = tl.load(k + row * s_kb + t * s_kt + i_h * s_kh + o_k, mask=m_k, other=0).to(tl.float32)
    r_v = tl.load(v + row * s_vb + t * s_vt + i_hv * s_vh + o_v, mask=m_v, other=0).to(tl.float32)
    r_a = tl.load(a + row * s_ab + t * s_at + i_hv * s_ah).to(tl.float32)
    r_b = tl.load(b + row * s_bb + t * s_bt + i_hv * s_bh).to(tl.float32)
    return r_q, r_k, r_v, r_a, r_b


@triton.jit
def _prep_step(r_q, r_k, r_a, r_b, neg_A, dtb, scale, L2NORM: tl.constexpr):
    """q (normalised, scaled), k (normalised), decay exp(g), beta = sigmoid(b); all fp32."""
    if L2NORM:
        r_q = r_q * tl.rsqrt(tl.sum(r_q * r_q) + 1e-6)
        r_k = r_k * tl.rsqrt(tl.sum(r_k * r_k) + 1e-6)
    decay = tl.exp(neg_A * _softplus(r_a + dtb))
    return r_q * scale, r_k, decay, tl.sigmoid(r_b)


@triton.jit
def _advance(h, b_k, b_v, decay, beta, AX: tl.constexpr):
    """One delta-rule state update of a tile (no output); AX is the K axis of the tile."""
    h = h * decay
    kb = tl.expand_dims(b_k, 1 - AX)
    u = beta * (b_v - tl.sum(h * kb, axis=AX))
    return h + tl.expand_dims(u, AX) * kb


@triton.jit
def _replay(h0, p, parent_row, s_pt, q, k, v, a, b, row, i_h, i_hv, o_k, m_k, o_v, m_v, neg_A, dtb, scale,
            s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_ab, s_at, s_ah, s_bb, s_bt, s_bh,
            T: tl.constexpr, AX: tl.constexpr, L2NORM: tl.constexpr):
    """State after step p, recomputed from the pool state h0 along p's ancestor chain (tree verify when
    the intermediate state of p was not stored)."""
    one = p * 0 + 1
    chain = p * 0
    s = p
    for _ in range(T):                      # bounded walk: a malformed tree cannot hang the kernel
        if s >= 0:
            chain = chain | (one << s)
            s = tl.load(parent_row + s * s_pt).to(tl.int32)
    h = h0
    for j in range(T):
        if ((chain >> j) & 1) != 0:
            r_q, r_k, b_v, r_a, r_b = _load_step(q, k, v, a, b, row, j, i_h, i_hv, o_k, m_k, o_v, m_v,
                                                 s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh,
                                                 s_ab, s_at, s_ah, s_bb, s_bt, s_bh)
            _q, b_k, decay, beta = _prep_step(r_q, r_k, r_a, r_b, neg_A, dtb, scale, L2NORM)
            h = _advance(h, b_k, b_v, decay, beta, AX)
    return h


@triton.jit
def _prefetch_l2(ptrs, pred):
    """prefetch.global.L2 of the lines at `ptrs` where `pred` (int32, non-zero). A hint: it reads nothing into
    registers or L1, and L2 is the GPU's point of coherence, so a line that another kernel writes later is
    simply fetched again."""
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }",
        "=r,l,r", [ptrs, pred], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _prefetch_tile(state, state_indices, row, n_slots, i_hv, i_v, s_ss, s_sh, s_sr,
                   BK: tl.constexpr, BV: tl.constexpr, VK: tl.constexpr):
    """Before griddepcontrol.wait: guess this program's slot and prefetch its state tile into L2, so the tile's
    DRAM latency overlaps the previous kernel instead of following it. The index is read with .cg (L2 only:
    no L1 line that the real read after the wait could hit stale) and may be stale itself (the previous kernel
    may be writing it); a guess outside [0, n_slots) prefetches nothing. One prefetch per 128-byte line."""
    guess = tl.load(state_indices + row, cache_modifier=".cg").to(tl.int64)
    ok = ((guess >= 0) & (guess < n_slots)).to(tl.int32)
    E: tl.constexpr = state.dtype.element_ty.primitive_bitwidth // 8
    base = state + guess * s_ss + i_hv * s_sh
    if VK:      # BV rows of K contiguous elements
        LN: tl.constexpr = max(1, BK * E // 128)
        o_r = i_v * BV + tl.arange(0, BV)
        o_l = tl.arange(0, LN) * (128 // E)
        ptrs = base + o_r[:, None] * s_sr + o_l[None, :]
    else:       # BK rows of BV contiguous elements from column i_v * BV
        LN: tl.constexpr = max(1, BV * E // 128)
        o_r = tl.arange(0, BK)
        o_l = tl.arange(0, LN) * tl.minimum(128 // E, BV)
        ptrs = base + o_r[:, None] * s_sr + i_v * BV + o_l[None, :]
    _prefetch_l2(ptrs, ok + tl.zeros(ptrs.shape, tl.int32))


@triton.jit
def gdn_decode_kernel(
    q, k, v, a, b, A_log, dt_bias, state, state_indices, o,
    inter, inter_indices, parent,
    scale, n_slots,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh,
    s_ab, s_at, s_ah, s_bb, s_bt, s_bh, s_ob, s_ot, s_oh,
    s_ss, s_sh, s_sr,
    s_is, s_it, s_ih, s_ir,
    s_pb, s_pt,
    T: tl.constexpr, H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    VK: tl.constexpr, L2NORM: tl.constexpr, PACKED: tl.constexpr,
    HAS_INTER: tl.constexpr, HAS_INTER_IDX: tl.constexpr, HAS_PARENT: tl.constexpr,
    UPDATE_STATE: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr,
):
    NV: tl.constexpr = (V + BV - 1) // BV
    pid = tl.program_id(0)
    i_v = pid % NV
    i_bh = pid // NV
    row = (i_bh // HV).to(tl.int64)
    i_hv = i_bh % HV
    i_h = i_hv // (HV // H)
    if PDL and PREFETCH:
        _prefetch_tile(state, state_indices, row, n_slots, i_hv, i_v, s_ss, s_sh, s_sr, BK, BV, VK)
    pdl_prologue(PDL)                       # before any global access that counts, state_indices included
    if PACKED:
        # mixed_qkv row = [q_all | k_all | v_all]: q, k, v are offsets into one buffer
        k = q + H * K
        v = q + 2 * H * K

    slot = tl.load(state_indices + row).to(tl.int64)
    valid = slot >= 0

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    if VK:
        AX: tl.constexpr = 1
        offs = o_v[:, None] * s_sr + o_k[None, :]
        offs_i = o_v[:, None] * s_ir + o_k[None, :]
        m_h = m_v[:, None] & m_k[None, :]
    else:
        AX: tl.constexpr = 0
        offs = o_k[:, None] * s_sr + o_v[None, :]
        offs_i = o_k[:, None] * s_ir + o_v[None, :]
        m_h = m_k[:, None] & m_v[None, :]

    neg_A = -tl.exp(tl.load(A_log + i_hv).to(tl.float32))
    dtb = tl.load(dt_bias + i_hv).to(tl.float32)

    # step 0's inputs are issued before the (index-dependent) state load; later steps are prefetched
    # one iteration ahead
    r_q, r_k, r_v, r_a, r_b = _load_step(q, k, v, a, b, row, 0, i_h, i_hv, o_k, m_k, o_v, m_v,
                                         s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh,
                                         s_ab, s_at, s_ah, s_bb, s_bt, s_bh)
    p_s = state + slot * s_ss + i_hv * s_sh + offs
    h = tl.load(p_s, mask=m_h & valid, other=0).to(tl.float32)
    if HAS_PARENT:
        h0 = h
        parent_row = parent + row * s_pb
    if HAS_INTER:
        if HAS_INTER_IDX:
            dst = tl.load(inter_indices + row).to(tl.int64)
        else:
            dst = row
        p_i = inter + dst * s_is + i_hv * s_ih + offs_i
        m_i = m_h & valid & (dst >= 0)

    for t in range(T):
        b_q, b_k, decay, beta = _prep_step(r_q, r_k, r_a, r_b, neg_A, dtb, scale, L2NORM)
        b_v = r_v
        if T > 1:
            r_q, r_k, r_v, r_a, r_b = _load_step(q, k, v, a, b, row, (t + 1) % T, i_h, i_hv, o_k, m_k, o_v, m_v,
                                                 s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh,
                                                 s_ab, s_at, s_ah, s_bb, s_bt, s_bh)
        if HAS_PARENT:
            # step t starts from the state after step parent[t] (-1: the pool state)
            p = tl.load(parent_row + t * s_pt).to(tl.int32)
            if p != t - 1:
                if p < 0:
                    h = h0
                else:
                    if HAS_INTER:
                        if dst >= 0:
                            tl.debug_barrier()      # this program's own stores of step p
                            h = tl.load(p_i + p * s_it, mask=m_h, other=0).to(tl.float32)
                        else:
                            h = _replay(h0, p, parent_row, s_pt, q, k, v, a, b, row, i_h, i_hv, o_k, m_k,
                                        o_v, m_v, neg_A, dtb, scale, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
                                        s_vb, s_vt, s_vh, s_ab, s_at, s_ah, s_bb, s_bt, s_bh, T, AX, L2NORM)
                    else:
                        h = _replay(h0, p, parent_row, s_pt, q, k, v, a, b, row, i_h, i_hv, o_k, m_k,
                                    o_v, m_v, neg_A, dtb, scale, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
                                    s_vb, s_vt, s_vh, s_ab, s_at, s_ah, s_bb, s_bt, s_bh, T, AX, L2NORM)
        h = h * decay
        kb = tl.expand_dims(b_k, 1 - AX)
        # both reductions over the decayed tile at once; o = (h + u k^T) q = h q + u (k . q)
        kv = tl.sum(h * kb, axis=AX)
        hq = tl.sum(h * tl.expand_dims(b_q, 1 - AX), axis=AX)
        u = beta * (b_v - kv)
        h = h + tl.expand_dims(u, AX) * kb
        b_o = hq + u * tl.sum(b_k * b_q)
        b_o = tl.where(valid, b_o, 0.0)
        tl.store(o + row * s_ob + t * s_ot + i_hv * s_oh + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
        if HAS_INTER:
            tl.store(p_i + t * s_it, h.to(inter.dtype.element_ty), mask=m_i)

    if UPDATE_STATE:
        tl.store(p_s, h.to(state.dtype.element_ty), mask=m_h & valid)


# ---------------------------------------------------------------------------------------------------
# configs: (BV, num_warps, num_stages[, prefetch]) by (arch, (layout, state dtype, B*HV bucket)); never
# autotuned. prefetch (default 1): with PDL, the state tile's L2 prefetch before the wait (`_prefetch_tile`).
# It pays where the whole grid is resident while the previous kernel still runs (H200, 2026-11-23, one
# process, interleaved rounds: fp32 VK B=1 2.79 -> 2.36 us, bf16 B=1 at (16, 1, 1) 2.14 -> 1.89, KV B=1
# 2.86 -> 2.61). With two waves of programs it may cost: at B=8 on the H200 2-8% in every fp32 config (KV
# too), while on the H100 fp32 VK gained (13.52 -> 13.00 us at (4, 1, 1)); so each B <= 8 row is chosen from
# a sweep with and without it, and the rows without it say 0. Tried at large B, where programs start only as
# others retire: program p prefetching the tile of program p + D (D = 2048 .. 16384) was 9-37% slower on the
# H200 (fp32 B=128 138.7 us -> 151.2 at D=2048; 2026-11-23, one process, interleaved rounds); not used.

NH_BUCKETS = (32, 256, 1024, 2048, 4096, 8192, 16384)

# Filled from `python bench/bench_decode.py --sweep` on real hardware. Keys: (arch or family, bucket).
# sm_90: measured on an H100 80GB HBM3, 2026-11-22 (bench/results/decode_sweep_h100_2026-11-22.csv). That sweep
# timed each config once, in turn, and one kernel's time moves by more than the configs differ (fp32 B=256, same
# config, same machine, minutes apart: 376 us in the full table, 426 in `--quick`). Four entries were
# re-chosen the same evening by configs timed in three interleaved rounds (median; H100, us at B=128/256/512):
#   bf16 4096 / 8192 / 16384: (16, 1, 1) 98.2 / 190.1 / 373.8 against the sweep's (64, 4, 1) 100.5,
#   (64, 8, 1) 202.0 and (4, 1, 1) 400.4;  fp32 16384: (32, 2, 1) 730.0 against (16, 8, 1) 752.3.
# (The other fp32 entries at 4096 and 8192 were within 0.5% of the best there.)
# B <= 8 rows re-chosen with the prefetch on an H100, 2026-11-23 00:29 UTC (every config with and without it,
# interleaved rounds): fp32 B=8 (16, 8, 1) 15.01 -> (4, 1, 1) 13.00 us, bf16 B=1 (4, 1, 1) 2.28 -> (16, 1, 1)
# 2.04, KV B=1 (16, 1, 1) 2.93 -> (32, 4, 1) 2.83, KV B=8 without it 15.38 -> 13.96, MTP B=8 T=2 / 4 (16, 2, 1)
# 19.96 / 33.48 -> (4, 1, 1) without it 19.40 / 32.59.
CONFIGS: dict = {
    ('sm_90', ('vk', 'fp32', 32)): (4, 1, 1),
    ('sm_90', ('vk', 'fp32', 256)): (4, 1, 1),
    ('sm_90', ('vk', 'fp32', 1024)): (32, 8, 1),
    ('sm_90', ('vk', 'fp32', 2048)): (32, 8, 1),
    ('sm_90', ('vk', 'fp32', 4096)): (8, 2, 1),
    ('sm_90', ('vk', 'fp32', 8192)): (32, 2, 1),
    ('sm_90', ('vk', 'fp32', 16384)): (32, 2, 1),
    ('sm_90', ('vk', 'bf16', 32)): (16, 1, 1),
    ('sm_90', ('vk', 'bf16', 256)): (16, 1, 1),
    ('sm_90', ('vk', 'bf16', 1024)): (16, 1, 1),
    ('sm_90', ('vk', 'bf16', 2048)): (16, 1, 1),
    ('sm_90', ('vk', 'bf16', 4096)): (16, 1, 1),
    ('sm_90', ('vk', 'bf16', 8192)): (16, 1, 1),
    ('sm_90', ('vk', 'bf16', 16384)): (16, 1, 1),
    ('sm_90', ('kv', 'fp32', 32)): (32, 4, 1),
    ('sm_90', ('kv', 'fp32', 256)): (32, 1, 1, 0),
    ('sm_90', ('kv', 'fp32', 1024)): (64, 4, 1),
    ('sm_90', ('kv', 'fp32', 2048)): (64, 4, 1),
    ('sm_90', ('kv', 'fp32', 4096)): (64, 4, 1),
    ('sm_90', ('kv', 'fp32', 8192)): (64, 4, 1),
    ('sm_90', ('kv', 'fp32', 16384)): (64, 4, 1),
    ('sm_90', ('mtp', 'vk', 'fp32', 256)): (4, 1, 1, 0),
    ('sm_90', ('mtp', 'vk', 'fp32', 1024)): (16, 1, 1),
    ('sm_90', ('mtp', 'vk', 'fp32', 4096)): (32, 2, 1),
    # H200 (same sm_90): bench_decode.py --sweep-only on an NVIDIA H200, 2026-11-22 22:25 UTC, every config timed
    # in three interleaved rounds (bench/results/decode_sweep_h200_2026-11-22_2225.csv; the morning's sweep,
    # decode_sweep_h200_2026-11-22.csv, timed each once). Against the morning's entries where they differ:
    # fp32 B=256 (16, 1, 1) 280.6 -> (8, 1, 1) 273.4 us, B=512 555.7 -> 539.1, B=64 (8, 1, 1) 73.5 ->
    # (16, 1, 1) 72.8; MTP B=128 T=2 (16, 2, 1) 212.0 -> (4, 1, 1) 206.4.
    # With the prefetch (one process, interleaved rounds, 2026-11-23 00:20 UTC; scratch sweep of every config
    # with the prefetch on and off at B = 1, 8, 32): fp32 B=8 (4, 1, 1) 11.20 -> (8, 2, 1) without it 10.53 us,
    # bf16 B=1 (4, 1, 1) 2.19 -> (16, 1, 1) 1.89, KV B=1 (16, 1, 1) 2.70 -> (32, 4, 1) 2.61, KV B=8 (32, 1, 1)
    # 11.97 -> 11.06 without it; MTP B=8 without it: T = 2 / 4 / 8 15.37 / 25.23 / 44.08 -> 15.13 / 24.69 /
    # 43.66 (a table run at 00:16).
    ('sm_90:h200', ('vk', 'fp32', 32)): (4, 1, 1),
    ('sm_90:h200', ('vk', 'fp32', 256)): (8, 2, 1, 0),
    ('sm_90:h200', ('vk', 'fp32', 1024)): (8, 1, 1),
    ('sm_90:h200', ('vk', 'fp32', 2048)): (16, 1, 1),
    ('sm_90:h200', ('vk', 'fp32', 4096)): (8, 1, 1),
    ('sm_90:h200', ('vk', 'fp32', 8192)): (8, 1, 1),
    ('sm_90:h200', ('vk', 'fp32', 16384)): (8, 1, 1),
    ('sm_90:h200', ('vk', 'bf16', 32)): (16, 1, 1),
    ('sm_90:h200', ('vk', 'bf16', 256)): (16, 1, 1),
    ('sm_90:h200', ('vk', 'bf16', 1024)): (16, 1, 1),
    ('sm_90:h200', ('vk', 'bf16', 2048)): (16, 1, 1),
    ('sm_90:h200', ('vk', 'bf16', 4096)): (16, 1, 1),
    ('sm_90:h200', ('vk', 'bf16', 8192)): (16, 1, 1),
    ('sm_90:h200', ('vk', 'bf16', 16384)): (16, 1, 1),
    # kv: the H200 sweeps chose the H100 rows above (they apply through the arch fallback of `config`); with the
    # prefetch its B <= 8 sweep chose the H100's new rows too
    ('sm_90:h200', ('mtp', 'vk', 'fp32', 256)): (4, 1, 1, 0),
    ('sm_90:h200', ('mtp', 'vk', 'fp32', 1024)): (4, 1, 1),
    ('sm_90:h200', ('mtp', 'vk', 'fp32', 4096)): (4, 1, 1),
}


def nh_bucket(nh: int) -> int:
    for cap in NH_BUCKETS:
        if nh <= cap:
            return cap
    return 1 << 30


def _dtype_name(dt: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dt, str(dt))


@functools.lru_cache(maxsize=4096)
def config(arch: str, layout: str, state_dtype: torch.dtype, nh: int, K: int, V: int, T: int = 1):
    """(BV, num_warps, num_stages, prefetch) for B*HV = nh heads. `arch` is a table key (`table_key_of`): an
    arch, or "<arch>:<model>" whose own entries come first, then the arch's."""
    bucket = (layout, _dtype_name(state_dtype), nh_bucket(nh))
    key = ("mtp",) + bucket if T > 1 else bucket
    hit = CONFIGS.get((arch, key))
    arch = arch.split(":")[0]
    if hit is None:
        hit = L.pick(CONFIGS, arch, key, None)
    BK = L.next_pow2(K)
    BVmax = L.next_pow2(V)
    if hit is not None:
        BV, nw, ns, pf = full_config(hit)
        return min(BV, BVmax), nw, ns, pf
    if arch == "cpu":
        # interpreter: few large programs are fastest, but keep >1 v-block to exercise the tiling
        return max(1, min(BVmax // 2, 16)), 1, 1, 1
    # enough programs to fill the machine at small batch, bigger tiles once there are plenty of heads
    if nh <= 64:
        BV = 4
    elif nh <= 512:
        BV = 8
    elif nh <= 4096:
        BV = 16
    else:
        BV = 32
    if layout == "kv":
        BV = max(BV, 64 // state_dtype.itemsize)   # rows of a kv tile are BV contiguous elements: >= 64 B
    BV = min(BV, BVmax)
    lanes = 64 if L.is_amd(arch) else 32
    elems = BV * BK
    nw = max(1, min(8, elems // (lanes * 16)))
    return BV, nw, 1, 1


def full_config(cfg: tuple) -> tuple:
    """A table entry or forced config, (BV, num_warps, num_stages) or with prefetch, as all four."""
    return tuple(cfg) if len(cfg) == 4 else (*cfg, 1)


# ---------------------------------------------------------------------------------------------------
# launcher

def _row_strides(x):
    # inner (head-dim) stride must be 1; anything else is made contiguous (never on the model's hot path)
    return x if x.stride(-1) == 1 else x.contiguous()


_ARCH: dict = {}


def arch_of(device) -> str:
    """launch.current_arch, cached per device outside recording (the decode hot path; GDN_ARCH is read once)."""
    if device.type == "meta":                  # launch.recording(): the arch being compiled for
        return L.current_arch(device)
    arch = _ARCH.get(device)
    if arch is None:
        arch = _ARCH[device] = L.current_arch(device)
    return arch


_TABLE_KEY: dict = {}


def table_key_of(device) -> str:
    """The config-table key of `device` (`launch.model_table_key`): "sm_90:h200" on an H200, whose own sweep
    beats the H100 rows by up to 12%; else the arch. Cached per device (the decode hot path)."""
    if device.type == "meta":
        return L.current_arch(device)
    key = _TABLE_KEY.get(device)
    if key is None:
        key = _TABLE_KEY[device] = L.model_table_key(device, arch_of(device), (k[0] for k in CONFIGS))
    return key


def prefetch_on() -> bool:
    """Whether PDL launches prefetch their state tile into L2 before griddepcontrol.wait (`_prefetch_tile`);
    GDN_DECODE_PREFETCH=0 turns it off (read once, as GDN_PDL)."""
    return probe.env("GDN_DECODE_PREFETCH") != "0"


def launch_decode_kernel(q, k, v, a, b, A_log, dt_bias, state, state_indices, o, *, scale, use_qk_l2norm,
                         state_layout, T, strides, H, K, V, packed=False, inter=None, inter_indices=None,
                         parent=None, update_state=True, cfg=None):
    """Shared launch of gdn_decode_kernel. `strides`: the 18 (batch, t, head) strides of q, k, v, a, b, o."""
    B = state_indices.shape[0]
    S_s = state.stride()
    HV = state.shape[1]
    if B == 0:
        return
    if S_s[3] != 1:
        raise ValueError("gdn decode: the state pool's last dim must be contiguous")
    if inter is not None:
        S_i = inter.stride()
        if S_i[4] != 1:
            raise ValueError("gdn decode: intermediate_states' last dim must be contiguous")
        S_i = S_i[:4]
    else:
        S_i = (0, 0, 0, 0)
    S_p = parent.stride() if parent is not None else (0, 0)
    arch = arch_of(state.device)
    BV, nw, ns, pf = full_config(cfg) if cfg else config(table_key_of(state.device), state_layout, state.dtype,
                                                         B * HV, K, V, T)
    grid = (B * HV * ((V + BV - 1) // BV),)
    pdl = L.use_pdl(arch, grid)
    L.launch(gdn_decode_kernel, grid,
             q, k, v, a, b, A_log, dt_bias, state, state_indices, o, inter, inter_indices, parent,
             float(scale), state.shape[0], *strides, S_s[0], S_s[1], S_s[2], *S_i, *S_p,
             num_warps=nw, num_stages=ns, pdl=pdl,
             T=T, H=H, HV=HV, K=K, V=V, BK=L.next_pow2(K), BV=BV,
             VK=state_layout == "vk", L2NORM=bool(use_qk_l2norm), PACKED=packed,
             HAS_INTER=inter is not None, HAS_INTER_IDX=inter_indices is not None,
             HAS_PARENT=parent is not None, UPDATE_STATE=bool(update_state), PDL=pdl,
             PREFETCH=pdl and bool(pf) and prefetch_on())


def decode(q, k, v, a, b, A_log, dt_bias, state, state_indices, out, *, scale, use_qk_l2norm, state_layout,
           _cfg=None):
    """q,k [B,H,K]; v [B,HV,V]; a,b [B,HV]; state [S,HV,V,K] (vk) / [S,HV,K,V] (kv); out [B,HV,V]."""
    sq, sk, sv = q.stride(), k.stride(), v.stride()
    if sq[2] != 1 or sk[2] != 1 or sv[2] != 1:
        q, k, v = _row_strides(q), _row_strides(k), _row_strides(v)
        sq, sk, sv = q.stride(), k.stride(), v.stride()
    sa, sb, so = a.stride(), b.stride(), out.stride()
    launch_decode_kernel(
        q, k, v, a, b, A_log, dt_bias, state, state_indices, out, scale=scale, use_qk_l2norm=use_qk_l2norm,
        state_layout=state_layout, T=1,
        strides=(sq[0], 0, sq[1], sk[0], 0, sk[1], sv[0], 0, sv[1], sa[0], 0, sa[1], sb[0], 0, sb[1],
                 so[0], 0, so[1]),
        H=q.shape[1], K=q.shape[2], V=v.shape[2], cfg=_cfg)


def head_dim_reasons(props) -> list:
    out = []
    for key in ("K", "V"):
        d = props.get(key)
        if d is not None and d > MAX_HEAD_DIM:
            out.append(f"{key}={d} > {MAX_HEAD_DIM} (the triton decode keeps a whole K row in registers)")
    return out


# ---------------------------------------------------------------------------------------------------
# compile without a GPU

TARGETS = {"sm_80": ("cuda", 80, 32), "sm_90": ("cuda", 90, 32), "sm_100": ("cuda", 100, 32),
           "gfx942": ("hip", "gfx942", 64), "gfx950": ("hip", "gfx950", 64)}


def compile_recorded(launches, arch: str) -> list:
    """triton.compile every recorded launch for `arch`; returns the kernel names built."""
    from triton.backends.compiler import GPUTarget
    target = GPUTarget(*TARGETS[arch])
    built = []
    for l in launches:
        src = triton.compiler.ASTSource(l.kernel, l.signature, l.constexprs, l.attrs)
        triton.compile(src, target=target, options=l.options)
        built.append(f"{l.kernel.__name__}[{', '.join(f'{k}={v}' for k, v in l.constexprs.items() if v is not None)}]")
    return built


def meta_decode_args(B=4, S=8, H=16, HV=32, K=128, V=128, dtype=torch.bfloat16, state_dtype=torch.float32,
                     layout="vk", idx_dtype=torch.int32):
    """Kernel-level decode arguments as meta tensors (for recording / AOT)."""
    m = dict(device="meta")
    shape = (S, HV, V, K) if layout == "vk" else (S, HV, K, V)
    return ((torch.empty(B, H, K, dtype=dtype, **m), torch.empty(B, H, K, dtype=dtype, **m),
             torch.empty(B, HV, V, dtype=dtype, **m), torch.empty(B, HV, dtype=dtype, **m),
             torch.empty(B, HV, dtype=dtype, **m), torch.empty(HV, dtype=torch.float32, **m),
             torch.empty(HV, dtype=torch.float32, **m), torch.empty(shape, dtype=state_dtype, **m),
             torch.empty(B, dtype=idx_dtype, **m), torch.empty(B, HV, V, dtype=dtype, **m)),
            dict(scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout))


def _aot(arch: str) -> list:
    built = []
    for layout in ("vk", "kv"):
        for sd in (torch.float32, torch.bfloat16):
            for B in (1, 256):
                args, kw = meta_decode_args(B=B, layout=layout, state_dtype=sd)
                with L.recording(arch) as launches:
                    decode(*args, **kw)
                built += compile_recorded(launches, arch)
    return built


ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")
IN_DTYPES = dtypes("bfloat16", "float16", "float32")
STATE_DTYPES = dtypes("float32", "bfloat16")

register(Impl(op="decode", backend="triton", fn=decode, archs=ARCHS, priority=10, requires=("triton>=3.6",),
              dtypes=IN_DTYPES, state_dtypes=STATE_DTYPES, layouts=("vk", "kv"), check=head_dim_reasons,
              validated_on=("sm_90",), interpretable=True, aot=_aot,
              notes="portable Triton; one program per [BV, K] tile of one state, configs by (arch, B*HV)"))
