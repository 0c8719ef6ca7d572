"""Gluon version of prefill's first kernel for Hopper (sm_90a): gates + cumsum, K K^T, the triangular solve and
w, u in one CTA per (chunk slot, v-head), every product a wgmma.

Contract: gdn/common/triton/prefill/prefill.py `_prep_kernel` (the Triton kernel it replaces on sm_90, which
the tests compare it with), minus the [T, H] norm buffers (the Gluon state and output kernels take the norms
from their own tiles, so prefill uses this kernel only when those run):
    launch_prep(q, k, v, g, beta, a, b, A_log, dt_bias, cu_seqlens, g_cum, w, u, out, use_qk_l2norm)
    k [T,H,K], v [T,HV,V] bf16/fp16 (K, V in {64, 128}; 16-byte aligned rows, packed heads; else a copy);
    raw gates a, b [T,HV] with A_log, dt_bias [HV], or g, beta [T,HV]; outputs g_cum [T,HV] fp32 (chunk-local
    cumsum), w [T,HV,K], u [T,HV,V] (k's dtype), and out rows past cu_seqlens[-1] set to zero.
    Or (a_out, for the warp-specialised state pass's A path) A' = A diag(beta) [T,HV,64] instead of w and u:
    row t holds row t % 64 of its chunk's matrix (rows past a sequence's end are not written).
"""
from __future__ import annotations

from gdn.common.triton.prefill import _common as PC
from gdn.nvidia.gluon import _common as C

# One warpgroup (the 64-row wgmma tiles). Capped at 168 registers three CTAs fit an SM (61.4 KB of shared
# memory each) instead of two (H100, 8x4096: 0.568 -> 0.479 ms when the cap came in). ptxas -v today: 168
# registers, no spill (unbounded it takes 222).
# Tried (H100, 2026-11-23 about 01:37 UTC, prefill under CUDA-graph replay, interleaved rounds): each CTA prefetching
# into L2 the k and v rows of the CTA D programs later (D = 198 / 396 / 792, 396 = three CTAs per SM on 132
# SMs), one prefetch.global.L2 per thread per tile: slower everywhere (1x4096 154.5 -> 162-163 us, 8x4096
# 994 -> 1040-1048, 64x512 1090 -> 1151-1173, 1x32768 1223 -> 1245-1272); not kept.
NUM_WARPS = 4
MAXNREG = 168
# With a_out (A' instead of w and u: no [64, 128] accumulators) the kernel fits 128 registers without spill (ptxas
# -v, 2026-11-23; 112: 24 bytes of spill, 96: 136): four CTAs per SM (41.7 KB of shared memory each). And its
# solve's block products as one MMA of operands rounded to 16 bits (SOLVE_SPLIT=False) instead of three of hi + lo
# parts: A' is rounded to 16 bits once anyway. H100, 2026-11-23 about 09:40 UTC (prefill under CUDA-graph replay,
# raw gates, one process, interleaved rounds; this kernel's profiler time in brackets, us):
#                168 / split     128 / split     128 / one product
#   1x4096       127.5           124.6           120.9
#   3x1000       99.8 (27.7)     98.0 (25.3)     94.5 (22.3)
#   64x512       857.7 (262.3)   827.7 (225.4)   802.8 (201.9)
#   8x4096       731.4 (254.5)   710.7 (235.9)   689.0 (188.3)
#   1x32768      927.6 (241.1)   898.2 (221.2)   877.5 (183.8)
# Error against the float64 recurrence, 1x4096: output 3.714e-3 -> 3.720e-3, state 2.793e-3 -> 2.802e-3 (3x1000:
# 3.772 -> 3.781, 2.921 -> 2.938). 96 registers (five CTAs per SM): no faster (8x4096 710.2, 1x32768 955.0 split).
# The w/u path keeps 168 and the hi + lo products (not re-measured: u carries A's factor at ~16 bits there).
# Then (H100, 2026-11-24 ~00:15 UTC, same process, HEAD's kernel module against the new one, outputs bitwise equal
# at 1x32768, 8x4096, 64x512, 1x4096, 3x1000; all 27 prefill GPU tests passed): N's mask strictly lower only (rows
# and columns past the sequence end were masked too, which changes no bit) and `_cols` picking blocks from a split
# instead of a masked sum over the block axis: static SASS 2344 -> 2112 instructions (A_OUT), this kernel's
# profiler time in two runs 1x32768 202.3 / 203.9 -> 189.8 / 188.4 us, 8x4096 208.5 / 205.2 -> 210.8 / 192.8,
# 64x512 230.5 / 225.2 -> 227.0 / 225.5, 1x4096 31.0 -> 29.8; prefill under CUDA-graph replay 1x32768 782.9 / 787.5
# -> 773.6 / 776.6, 8x4096 644.9 / 640.4 -> 634.5 / 631.4, 64x512 787.0 / 787.0 -> 794.1 / 785.9.
# ncu has this kernel's L2 at ~80% of peak (bench/results/prefill_h100_2026-11-24_dram.md), which suggested one CTA per
# (slot, k head) loading k once for both v-heads; a probe (same day, the second v-head skipping its k tile, wrong
# numbers) moved this kernel only 194.0 -> 190.6 us at 8x4096 (1x32768 got slower on the garbage tile), so not built.
# What its parts cost, probed (H100, 2026-11-24 ~01:23 UTC, this kernel's profiler time, wrong numbers;
# scratch probes made by text substitution): 1x32768 / 8x4096 as is 188 / 191 us; without the solve (A' = N) 149 /
# 152; without the query norms (no q tile, no Q Q^T) 167 / 172; with constant gates 182 / 186; all three 123 / 125.
# A solve with a shorter dependent chain, tried (branch wip/solve-rows, same day ~01:28-01:32 UTC): the blocks below
# the diagonal by block rows, each warp its own 16 rows, A_bk = -(sum_{k<m<=b} A_bm N_mk) D_k right to left as six
# dependent mma.sync products (A operand the warp's last accumulator, B from shared stacks of N's block diagonals and
# of D; one barrier instead of four wgmma round trips), A' stored by 16-byte row pieces: error against the float64
# recurrence unchanged (1x4096 3.718e-3), all 27 prefill GPU tests passed, static SASS 2112 -> 1856, but this kernel
# no faster (1x32768 186.5 -> 188.7 us; stored straight from the mma layout's 4-byte pieces, 210). At four CTAs per
# SM the solve's latency is hidden; what it costs is its share of a kernel balanced between L2 (81%), DRAM (63%) and
# issue (56%). The register solve is the piece a fused kernel's aux warpgroup (one tile at a time) would want: its
# latency, clock64 from N ready to the solve's last product per CTA (same day ~02:26 UTC; bench/wip/stamp_ab.py on
# that branch), one CTA per SM: 2563 -> 1691 cycles (median; 1x4096 2425 -> 1735); at the full grid, 8x4096, 4082 ->
# 2848 (without the placement into a [64, 64] tile, which a shared A' tile for wgmma would add back). Of the 1691,
# the forward substitution of the 16x16 blocks (_tri_inv16) is the larger part.
A_OUT_MAXNREG = 128
A_OUT_SOLVE_SPLIT = False
HEAD_DIMS = (64, 128)  # w and u accumulators [64, K] + [64, V] fp32 in registers at once


def prep_ok(k, v) -> bool:
    """Whether this kernel takes these operands (else prefill runs the Triton one; its w and u, or A', are
    prefill's own packed buffers of k's dtype)."""
    return (k.dtype in C.DTYPES and v.dtype == k.dtype and k.shape[2] in HEAD_DIMS and v.shape[2] in HEAD_DIMS)


def launch_prep(k, v, g, beta, a, b, A_log, dt_bias, cu_seqlens, g_cum, w, u, out, use_qk_l2norm, rk=None,
                a_out=None, q=None, rq=None, trigger=False):
    """rk (or None): [T, H] fp32 to receive the key norms (unit column stride), for the narrow state pass;
    rq (or None; with rk, and q [T, H, K] of k's dtype): likewise the query norms.
    a_out (or None): [T, HV, 64] (k's dtype, packed) to receive A' = A diag(beta) per chunk instead of w and u
    (which may then be None), for the state pass's A path (chunk_state.py `A_PATH`).
    trigger: run griddepcontrol.launch_dependents first, for a next kernel launched with PDL (the state pass)."""
    from gdn.nvidia.gluon._chunk_prep_kernels import chunk_prep_sm90
    T, H, _ = k.shape
    HV = v.shape[1]
    N = cu_seqlens.shape[0] - 1
    if T == 0:          # only empty sequences: no chunk, no output row (and TMA descriptors need rows)
        return
    raw = g is None
    gx, bx = (a, b) if raw else (g, beta)
    k, v = C.tma_ready(k), C.tma_ready(v)
    if rq is not None and (rk is None or rq.stride() != rk.stride()):
        raise ValueError("gdn.chunk_prep (gluon): rq needs rk, with the same strides")
    q_desc = None if rq is None else C.head_matrix(C.tma_ready(q), C.BT)
    if a_out is not None:
        w = u = a_out
    C.launch(chunk_prep_sm90, (PC.num_slots(T, N) * HV,), C.head_matrix(k, C.BT), C.head_matrix(v, C.BT),
             C.head_matrix(w, C.BT), C.head_matrix(u, C.BT),
             a, b, A_log, dt_bias, g, beta, cu_seqlens, g_cum, w, u, out, rk, q_desc, rq, N, T, HV, HV // H,
             *gx.stride(), *bx.stride(), *g_cum.stride(), *w.stride()[:2], *u.stride()[:2], *out.stride()[:2],
             0 if rk is None else rk.stride()[0],
             RAW=raw, L2NORM=bool(use_qk_l2norm), BLOCK_N=PC.block_n(N), A_OUT=a_out is not None,
             SOLVE_SPLIT=a_out is None or A_OUT_SOLVE_SPLIT, TRIGGER=bool(trigger), num_warps=NUM_WARPS,
             maxnreg=MAXNREG if a_out is None else A_OUT_MAXNREG)


def example_launches(arch: str) -> list:
    """Recorded launches (meta tensors, Qwen3-Next heads) for the CPU compile check: raw and precomputed gates."""
    import torch

    from gdn.common import launch as L
    T, N, H, HV, K, V = 200, 3, 16, 32, 128, 128
    m = lambda *s, dt=torch.bfloat16: torch.empty(s, dtype=dt, device="meta")
    cu = torch.empty(N + 1, dtype=torch.int32, device="meta")
    out = []
    for raw in (True, False):
        gates = (None, None, m(T, HV), m(T, HV), m(HV, dt=torch.float32), m(HV, dt=torch.float32)) if raw else \
            (m(T, HV, dt=torch.float32), m(T, HV, dt=torch.float32), None, None, None, None)
        with L.recording(arch), C.recording() as rec:
            # (with raw gates also the key norms' store, as for prefill's warp-specialised narrow pass)
            launch_prep(m(T, H, K), m(T, HV, V), *gates, cu, m(T, HV, dt=torch.float32), m(T, HV, K), m(T, HV, V),
                        m(T, HV, V), True, m(T, H, dt=torch.float32) if raw else None)
        out += [(f"chunk_prep_sm90[raw={raw}{',rk' if raw else ''}]", r) for r in rec]
    # A' instead of w and u (the state pass's A path), with the key and query norms as prefill asks for them
    with L.recording(arch), C.recording() as rec:
        launch_prep(m(T, H, K), m(T, HV, V), None, None, m(T, HV), m(T, HV), m(HV, dt=torch.float32),
                    m(HV, dt=torch.float32), cu, m(T, HV, dt=torch.float32), None, None, m(T, HV, V), True,
                    m(T, H, dt=torch.float32), a_out=m(T, HV, 64), q=m(T, H, K), rq=m(T, H, dt=torch.float32))
    out += [("chunk_prep_sm90[raw=True,rk,rq,A_OUT]", r) for r in rec]
    return out
