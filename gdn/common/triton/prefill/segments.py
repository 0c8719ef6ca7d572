"""Segmented prefill (context parallel): the chunks of one long sequence walked by many CTAs at once.

Why. The state pass walks a sequence's chunks in order, one CTA per (sequence, v-head, state columns). With few
(sequence, v-head) pairs that leaves most SMs idle: a tensor-parallel rank of Qwen3-Next holds HV = 32 / TP
v-heads, so at TP=8 one 32768-token prompt is 4 pairs, 8-16 CTAs each walking 512 chunks (~1.1 us a chunk on an
H100) on a 132-SM GPU.

How. The state after a segment of chunks is an affine map of the state before it, S_end = T S_start + U (T [K, K],
U [K, V]; T and U depend only on the segment's k, g, beta and v). So:
  1. transition pass: every segment at once, from the state [0 | I] with v extended by K zero columns (the pass
     kernels' VU / transition option; neither is in memory): its final state is [U | T], stored "vk" as
     [V + K, K] blocks [U^T ; T^T];
  2. combine (`_combine_kernel`): per sequence and v-head, its segments in order, X' = X T^T + U^T (X = S^T, the
     "vk" block), starting from the pool's state (zeros without has_initial_state); it stores each segment's
     entering state in a scratch pool;
  3. the ordinary pass with the output (state + output) over the segments as sequences of their own, from those
     entering states, leaving their end states in the scratch pool; a last small launch (the combine kernel's
     FINAL) copies each sequence's end state into its slot (pool dtype and layout).
The last segment's map is never needed (its end comes from step 3, in fp32): the transition pass skips it.
Steps 1 and 3 reuse prefill's state pass (the Gluon warp-specialised one on sm_90, else Triton's). Their work is
about three state passes (the transition has K more columns), so segments pay only where the ordinary pass
leaves most SMs idle: `segment_tokens` decides from T, N and HV (host values), by the table `_SEGMENTS`.

Segments are SEG tokens long (a multiple of 64: their chunks are the first kernel's, whose A' / w, u, g_cum and
norms the passes read by token row), each sequence cut into max(1, ceil(len / SEG)) of them. Their count is at
most N + T // SEG, a bound known on the host: the segment table (`_segment_table_kernel`) is built on the device
and padded with empty, skipped segments, so nothing is read back and the whole is CUDA-graph capturable.
A padding sequence (slot -1) gets skipped segments (zero output, no pool access); an empty one a single empty
segment (its state goes through unchanged, or zeros without has_initial_state, as the unsegmented pass does).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.triton.prefill import _common as C

# When to cut sequences into segments, by arch: at most `max_pairs` (sequence, v-head) pairs and at least `min_len`
# tokens a sequence on average; the segment length then makes about `pairs` (segment, v-head) pairs, at least
# `min_seg` tokens. H100, 2026-11-24 ~10:40 UTC (bench/wip/segments_ab.py: prefill's GPU busy time in ms, raw gates,
# unsegmented -> segments of 512 / 1024 / 2048 / 4096 tokens; Qwen3-Next heads of one tensor-parallel rank):
#   TP=8 (HV=4)  1x32768 0.598 -> 0.329 / 0.249 / 0.208 / 0.235    1x16384 0.302 -> 0.166 / 0.127 / 0.133 / 0.170
#                1x8192  0.153 -> 0.086 / 0.081 / 0.097 / 0.159    1x4096  0.080 -> 0.057 / 0.060 / 0.089 / 0.154
#                2x8192  0.162 -> 0.141 / 0.117 / 0.128 / 0.168
#   TP=4 (HV=8)  1x32768 0.621 -> 0.512 / 0.422 / 0.374 / 0.348    1x16384 0.321 -> 0.272 / 0.222 / 0.197 / 0.232
#                1x8192  0.165 -> 0.143 / 0.118 / 0.132 / 0.172    1x4096  0.086 -> 0.076 / 0.077 / 0.095 / 0.159
#                2x8192  0.176 -> 0.246 / 0.212 / 0.194 / 0.230 (16 pairs: never pays)
#   TP=2 (HV=16) 1x32768 0.667 -> 0.971 (1024) / 0.807 / 0.719 (16 pairs; earlier run, slower combine)
# The best length makes 32-64 (segment, v-head) pairs wherever segments pay; 64 is taken.
_SEGMENTS = L.ConfigTable({("sm_90", "any"): dict(max_pairs=8, min_len=4096, pairs=64, min_seg=512)})


def segment_tokens(arch: str, T: int, N: int, HV: int, K: int, V: int) -> int:
    """Segment length in tokens (a multiple of 64) for this batch, or 0: no segments (also for head dims that
    are not powers of two >= 16: the combine's tiles)."""
    rule = L.pick(_SEGMENTS, arch, "any", None)
    if (rule is None or N <= 0 or N * HV > rule["max_pairs"] or T < N * rule["min_len"]
            or K != C.block_dim(K) or V != C.block_dim(V)):
        return 0
    seg = L.cdiv(L.cdiv(T * HV, rule["pairs"]), C.BT) * C.BT
    return max(seg, rule["min_seg"])


def num_segments(T: int, N: int, seg: int) -> int:
    """The static bound on the segment count (the table's length)."""
    return N + T // seg


def buffers(T: int, N: int, HV: int, K: int, V: int, seg: int, dev, queues: bool = True) -> tuple:
    """(cu_seg [P + 1] int32, seg_idx, seg_idx1 [P] int32, ext [P, HV, V + K, K] fp32, xs [P, HV, V, K] fp32,
    work1, work2 [1] int32 zeros) for P = num_segments: the segment table (the passes' slots, the transition pass's
    slots), the transition pass's final states (it starts from [0 | I] in registers), the entering and end states,
    and the two persistent passes' queue counters (None without queues)."""
    P = num_segments(T, N, seg)
    cu_seg = torch.empty(P + 1, dtype=torch.int32, device=dev)
    seg_idx = torch.empty(P, dtype=torch.int32, device=dev)
    seg_idx1 = torch.empty(P, dtype=torch.int32, device=dev)
    ext = torch.empty((P, HV, V + K, K), dtype=torch.float32, device=dev)
    xs = torch.empty((P, HV, V, K), dtype=torch.float32, device=dev)
    work1 = torch.zeros(1, dtype=torch.int32, device=dev) if queues else None
    work2 = torch.zeros(1, dtype=torch.int32, device=dev) if queues else None
    return cu_seg, seg_idx, seg_idx1, ext, xs, work1, work2


@triton.jit
def _segments_before(cu, n, SEG, BLOCK_N: tl.constexpr):
    """The segments of sequences 0 .. n-1 (max(1, ceil(len / SEG)) each): sequence n's first segment."""
    first = tl.full((), 0, tl.int64)
    for i in range(0, n, BLOCK_N):
        o = i + tl.arange(0, BLOCK_N)
        m = o < n
        ln = tl.load(cu + o + 1, mask=m, other=0).to(tl.int64) - tl.load(cu + o, mask=m, other=0).to(tl.int64)
        first += tl.sum(tl.where(m, tl.maximum((ln + SEG - 1) // SEG, 1), 0), axis=0)
    return first


@triton.jit
def _segments_of(cu, n, SEG, BLOCK_N: tl.constexpr):
    """Sequence n's first segment and segment count."""
    ln = tl.load(cu + n + 1).to(tl.int64) - tl.load(cu + n).to(tl.int64)
    return _segments_before(cu, n, SEG, BLOCK_N), tl.maximum((ln + SEG - 1) // SEG, 1)


@triton.jit
def _segment_table_kernel(cu, state_indices, cu_seg, seg_idx, seg_idx1, N, P, SEG, BLOCK_N: tl.constexpr,
                          BLOCK_S: tl.constexpr):
    """Program n < N: sequence n's segments (starts cu[n] + j SEG; slot: the segment's own index, -1 for a
    padding sequence; seg_idx1, the transition pass's: also -1 for the last segment, whose map no one needs).
    Program N: the unused tail of the table (empty segments at cu[N], slot -1) and its end."""
    n = tl.program_id(0)
    o = tl.arange(0, BLOCK_S)
    if n < N:
        first, count = _segments_of(cu, n, SEG, BLOCK_N)
        bos = tl.load(cu + n).to(tl.int64)
        live = tl.load(state_indices + n) >= 0
        for j in range(0, count, BLOCK_S):
            m = j + o < count
            p = first + j + o
            tl.store(cu_seg + p, (bos + (j + o).to(tl.int64) * SEG).to(tl.int32), mask=m)
            tl.store(seg_idx + p, tl.where(live, p, -1).to(tl.int32), mask=m)
            tl.store(seg_idx1 + p, tl.where(live & (j + o < count - 1), p, -1).to(tl.int32), mask=m)
    else:
        total = _segments_before(cu, N, SEG, BLOCK_N)
        end = tl.load(cu + N)
        for j in range(total, P + 1, BLOCK_S):
            p = j + o
            tl.store(cu_seg + p, end.to(tl.int32), mask=p <= P)
            tl.store(seg_idx + p, tl.full((BLOCK_S,), -1, tl.int32), mask=p < P)
            tl.store(seg_idx1 + p, tl.full((BLOCK_S,), -1, tl.int32), mask=p < P)


@triton.jit
def _combine_kernel(ext, xs, state, state_indices, has_init, cu, SEG, s_es, s_eh, s_xs, s_xh, s_ps, s_ph, s_pk, s_pv,
                    V: tl.constexpr, K: tl.constexpr, BV: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                    FINAL: tl.constexpr):
    """Program (sequence n, v-head hv, BV state columns). X = S^T [BV, K] from the pool (zeros without
    has_initial_state) through n's segments in order, X <- X T_p^T + U_p^T with ext[p, hv] = [U_p^T ; T_p^T]
    ([V + K, K]); xs[p, hv] gets the X entering segment p (the last segment's map is not needed: the pass with the
    output leaves its end in xs). FINAL (after that pass): the pool slot gets xs of n's last segment. A padding
    sequence is skipped: nothing of it is read or written."""
    n = tl.program_id(0)
    hv = tl.program_id(1)
    o_v = tl.program_id(2) * BV + tl.arange(0, BV)
    o_k = tl.arange(0, K)
    slot = tl.load(state_indices + n).to(tl.int64)
    if slot >= 0:
        first, count = _segments_of(cu, n, SEG, BLOCK_N)
        # the pool block as X [BV, K] in either layout (strides by (slot, head, k, v))
        p_s = state + slot * s_ps + hv * s_ph + o_k[None, :] * s_pk + o_v[:, None] * s_pv
        off_x = o_v[:, None] * K + o_k[None, :]
        last = (first + count - 1).to(tl.int64)
        if FINAL:
            tl.store(p_s, tl.load(xs + last * s_xs + hv * s_xh + off_x).to(state.dtype.element_ty))
        else:
            start = True
            if has_init is not None:
                start = tl.load(has_init + n) != 0
            x = tl.load(p_s, mask=start, other=0).to(tl.float32)
            off_u = o_v[:, None] * K + o_k[None, :]
            off_t = (V + o_k)[:, None] * K + o_k[None, :]
            for j in range(0, count - 1):
                p = (first + j).to(tl.int64)
                tl.store(xs + p * s_xs + hv * s_xh + off_x, x)
                e = ext + p * s_es + hv * s_eh
                x = tl.dot(x, tl.load(e + off_t), acc=tl.load(e + off_u), input_precision=PREC)
            tl.store(xs + last * s_xs + hv * s_xh + off_x, x)


def launch_table(cu_seqlens, state_indices, cu_seg, seg_idx, seg_idx1, seg: int) -> None:
    N = cu_seqlens.shape[0] - 1
    P = seg_idx.shape[0]
    L.launch(_segment_table_kernel, (N + 1,), cu_seqlens, state_indices, cu_seg, seg_idx, seg_idx1, N, P, seg,
             BLOCK_N=C.block_n(N), BLOCK_S=64, num_warps=1, num_stages=1)


# The combine's launch: X's columns per program (each program reads the whole [K, K] T_p^T tile of each step), warps,
# pipeline stages. Its product: for 16-bit inputs the arch's fast fp32 path (C.f32_precision: tf32 on NVIDIA), for
# fp32 inputs fp32-exact (C.f32_exact_precision). tf32 rounds X and T_p^T to 11 bits once a segment, 4x finer than
# the bf16 rounding the pass applies to the same state every chunk. H100, 2026-11-24 (bench/wip/combine_ab.py, 8
# segments, HV = 4, us a step; relative error against float64): BV=32 tf32x3 7.14 (2.6e-7), tf32 2.48 (5.5e-4),
# ieee 300; BV=16 tf32x3 4.40, BV=16 tf32 3 stages 1.84 (5.5e-4; 4 stages, 8 or 2 warps no better); BV=64 tf32x3
# 8 warps: out of shared memory.
COMBINE = L.ConfigTable({"any": dict(BV=16, num_warps=4, num_stages=3)})


def launch_combine(ext, xs, state, state_indices, has_initial_state, cu_seqlens, seg: int, state_layout: str,
                   arch: str, exact: bool = False, final: bool = False) -> None:
    """exact: the product fp32-exact (fp32 inputs), else the arch's fast fp32 path (see COMBINE). final: the
    kernel's FINAL step (each sequence's end state from xs into its pool slot)."""
    from gdn.common.triton.prefill.chunk_state import pool_strides
    N = cu_seqlens.shape[0] - 1
    HV, V, K = xs.shape[1], xs.shape[2], xs.shape[3]
    cfg = L.pick(COMBINE, arch, "any", COMBINE["any"])
    BV = min(cfg["BV"], V)
    L.launch(_combine_kernel, (N, HV, L.cdiv(V, BV)), ext, xs, state, state_indices, has_initial_state, cu_seqlens,
             seg, ext.stride(0), ext.stride(1), xs.stride(0), xs.stride(1), *pool_strides(state, state_layout),
             V=V, K=K, BV=BV, BLOCK_N=C.block_n(N),
             PREC=C.f32_exact_precision(arch) if exact else C.f32_precision(arch, torch.bfloat16),
             FINAL=bool(final), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
