"""Gluon chunk_state for Hopper (sm_90a) and Blackwell (sm_100a, compile-only; K <= 128): the sequential
inter-chunk pass with the state in registers (the products: wgmma on sm_90, tcgen05 into tensor memory on sm_100).

Kernel-level signature and semantics as gdn/common/triton/prefill/chunk_state.py (oracle:
gdn/common/reference_chunk.py), the plain pass (h and v_new outputs):
    chunk_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, *,
                use_qk_l2norm, state_layout)
    k [T,H,K]; w [T,HV,K], u [T,HV,V]; g_cum [T,HV] fp32; state pool [S,HV,V,K] ("vk") or [S,HV,K,V]
    ("kv"), fp32 or bf16, any strides; state_indices [N] (negative: pool untouched, the sequence's h slots
    and v_new rows zero); has_initial_state [N] bool or None; outputs h [T//64 + N, HV, K, V] (w's dtype)
    and v_new [T,HV,V] (unit last stride, any float dtype). Per chunk (slot s = cu[n] // 64 + n + c):
        h[s] = state;  v_new = u - w h;  state = exp(g_last) state + (k * rk * exp(g_last - g_cum))^T v_new
bf16/fp16 k, w, u of one dtype (wgmma operands); fp32 is declined (the Triton kernel serves it). K, V in
{64, 128, 256}. The key norms rk are taken in the kernel from the k tile (no [T,H] buffer needed).
k, w, u may have any 16-byte aligned row stride with packed heads; h is written as a dense
[slots * HV * K, V] matrix by TMA (it must be contiguous).

`launch_state_output` (prefill's path) runs the same pass with chunk_output's formula evaluated in it and
writes o instead of h and v_new: chunk_state_output_ws_sm90 (warp-specialised: the state's chain, the output
and a TMA loader in separate partitions; _chunk_state_ws_kernels.py) with 32 or 64 state columns per CTA by
batch width (`fused_config`); past 64 (sequence, v-head) pairs at K = V = 128, chunk_state_output_head_sm90 (the
head pass: one CTA per pair, S^T in two math warpgroups; _chunk_state_head_kernels.py); or chunk_state_output_sm90
(two warpgroups splitting the columns; TWO_WG).
"""
from __future__ import annotations

import torch

from gdn.common import launch as L
from gdn.common import probe
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton.prefill import _common as PC
from gdn.common.triton.prefill import chunk_state as TS
from gdn.nvidia.gluon import _common as C

# BV (state columns per CTA) and STAGES (chunks of w/k/u tiles in flight) by bucket (TS.bucket: N * HV
# below 128 is "narrow"). Narrow (1x32768: 32 pairs): BV=32 makes 4 CTAs per pair (128 CTAs), 4 stages
# (164 KB of tiles) hide TMA latency behind a chain that has no other work to overlap. Wide (8x4096: 256
# pairs; prefill runs the fused pass below there, this entry serves the chunk_state op): BV=32, 2 stages
# (90 KB) for two CTAs per SM.
# bench/bench_gluon_prefill.py on an H100, 2026-11-22 (chunk_state alone, CUDA graph): 8x4096 ("wide")
# BV=32/2 stages 0.655 ms (64/2 0.665, 16/2 0.861; Triton 0.72); 1x32768 ("narrow") 32/3 0.754 ms
# (16/2 0.763, 64/2 0.908; Triton 0.774). With the decays by TMA (bench_prefill.py, H100, 2026-11-22 15:00
# UTC): 1x32768 0.725 -> 0.596-0.601 ms, 1x4096 0.094 -> 0.081. Re-swept with v_new by TMA (H100, 17:15 UTC,
# CUDA-graph replay of this kernel alone, BV x STAGES in {16, 32, 64} x {2, 3, 4}): 1x32768 BV=32/4 stages
# 0.531 ms (32/3 0.576, 64/3 0.645, 16/2 0.770), 1x4096 0.073 (32/3 0.078), 2x8192 0.277 (32/3 0.300).
_CONFIGS = L.ConfigTable({("sm_90", "narrow"): dict(BV=32, STAGES=4),
                          ("sm_90", "wide"): dict(BV=32, STAGES=2)})
NUM_WARPS = 4                  # one warpgroup: the 64-row wgmma tile
SMEM_BUDGET = 200 * 1024       # of sm_90's 227 KB per CTA, leaving room for layout-conversion scratch


def smem_bytes(K: int, BV: int, stages: int, itemsize: int = 2) -> int:
    """Shared tiles of one CTA: STAGES x (w, k [64, K], u [64, BV], g_cum [64, 4] fp32), h [K, BV],
    vs and v_new [64, BV]."""
    return (stages * (2 * C.BT * K + C.BT * BV) + K * BV + 2 * C.BT * BV) * itemsize + stages * C.BT * G_COLS * 4


G_COLS = 4      # g_cum tiles are [64, 4] (PC.gcum_empty's row padding): TMA offsets go by 16 bytes


def gcum_desc(g_cum):
    """TMA view of g_cum [T, HV] fp32 with [64, G_COLS] tiles (a chunk's rows of 4 heads). It needs a unit head
    stride and 16-byte row stride and base: prefill allocates g_cum so (`PC.gcum_empty`); any other is copied
    into such a buffer first (T x HV x 4 bytes)."""
    T, HV = g_cum.shape
    s_t, s_h = g_cum.stride()
    if T == 0 or not (s_h == 1 and s_t * 4 % 16 == 0 and (g_cum.is_meta or g_cum.data_ptr() % 16 == 0)):
        g = PC.gcum_empty(max(T, 1), HV, g_cum.device)
        g[:T].copy_(g_cum)
        g_cum = g
        s_t = g.stride()[0]
    return C.Desc(g_cum, (T if T else 1, HV), s_t, (C.BT, G_COLS))


def config(arch: str, N: int, HV: int, K: int, V: int) -> dict:
    cfg = dict(L.pick(_CONFIGS, arch, TS.bucket(N, HV), dict(BV=32, STAGES=2)))
    cfg["BV"] = min(cfg["BV"], V, 32 if K > 128 else 256)     # K=256: the [K, BV] fp32 state in registers
    while cfg["STAGES"] > 2 and smem_bytes(K, cfg["BV"], cfg["STAGES"]) > SMEM_BUDGET:
        cfg["STAGES"] -= 1
    return cfg


def launch_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, use_qk_l2norm,
                 state_layout, cfg):
    T, H, K = k.shape
    HV, V = u.shape[1], u.shape[2]
    N = cu_seqlens.shape[0] - 1
    BV, stages = cfg["BV"], cfg["STAGES"]
    if V % BV or BV < 16:
        raise ValueError(f"gdn.chunk_state (gluon): BV={BV} must divide V={V} and be >= 16")
    arch = C.kernel_arch(k.device)
    if arch == "sm_100" and K > SM100_MAX_K:
        raise ValueError(f"gdn.chunk_state (gluon): argument 'k' head dim {K} not supported on sm_100 (the state "
                         f"update is one tcgen05 MMA of M = K <= {SM100_MAX_K}); use the triton backend")
    if T == 0:      # only empty sequences (states still set): descriptors need rows, no chunk reads them
        k, w, u = k.new_zeros(1, H, K), w.new_zeros(1, HV, K), u.new_zeros(1, HV, V)
    k, w, u = C.tma_ready(k), C.tma_ready(w), C.tma_ready(u)
    NS = h.shape[0]
    if NS * HV * K >= 2 ** 31:
        raise ValueError(f"gdn.chunk_state (gluon): argument 'h' has {NS}*{HV}*{K} rows, over the int32 TMA "
                         "coordinate range")
    NV = V // BV
    # v_new by TMA store where it allows it (16-bit, TMA-addressable; see chunk_state_sm90)
    vn_desc = (C.head_matrix(v_new, C.BT, BV) if T > 0 and v_new.dtype in C.DTYPES and C.tma_ok(v_new) else None)
    C.launch(_kernel(arch), (N * HV * NV,),
             C.head_matrix(w, C.BT), C.head_matrix(k, C.BT), C.head_matrix(u, C.BT, BV), gcum_desc(g_cum),
             C.Desc(h, (NS * HV * K, V), V, (K, BV)), state, state_indices, cu_seqlens, has_initial_state, v_new,
             vn_desc, HV, HV // H, NV, *TS.pool_strides(state, state_layout), v_new.stride(0), v_new.stride(1), V=V,
             L2NORM=bool(use_qk_l2norm), STAGES=stages, num_warps=NUM_WARPS)


# The pass with the output fused (prefill's choice by bucket; `launch_state_output`): 8 warps = two
# warpgroups splitting BV (see chunk_state_output_sm90). Smem at K=128, bf16: STAGES x (w, k, q [64, K],
# u [64, BV]) + h [K, BV] + vs, vn [64, BV] (196 KB at BV=128, 2 stages).
# Measured on an H100, 2026-11-22 (exp over prefill, GPU time of this kernel vs plain pass + chunk_output):
#   8x4096 ("wide"): BV=128/8 warps 0.633 ms (0.607 once the output offsets stopped spilling, 184 -> 4 B)
#                    | BV=128/16 warps 0.98 | BV=64/8 0.91 |
#                    BV=32/4 1.11 | plain 0.643 + 0.444 = 1.087
#   64x512 ("wide"): BV=128/8 0.739 | BV=64/8 0.99 | plain 0.725 + 0.447 = 1.172
#   1x4096, 1x32768 ("narrow", 32 pairs): the best fused (BV=16 or 32, 4 warps) 0.14-0.18 / 1.37-1.48 ms
#                    against plain 0.157 / 1.174: too few CTAs to cover the longer per-chunk chain.
# TMA_O (whole chunks' output by TMA store through a shared tile, 16-bit out; ncu put 8% of this kernel's stall
# samples on its STG.E output stores at 8x4096), same run, identical output: 8x4096 0.609 -> 0.544 ms,
# 64x512 0.700 -> 0.641 ms (217 KB of shared memory).
# Narrow ("WS"): the warp-specialised pass (chunk_state_output_ws_sm90): chain, output and loader partitions,
# 12 warps with a 168-register cap (setmaxnreg: the output OUT_REGS, the loader 24, the chain the rest);
# smem at K=128, BV=32, 3 stages, a 3-slot hand-over ring: 205 KB. Measured on an H100, 2026-11-22 (prefill
# under CUDA-graph replay, against the plain pass + chunk_output in the same process): 1x32768 1.450 ->
# 1.18 ms (this kernel 0.75 against 0.56 + 0.44), 2x8192 0.753 -> 0.617, 1x4096 0.204 -> 0.166, 3x1000
# 0.130 -> 0.108. A 2-slot ring: 1x32768 0.80 ms. Tried on the way (1x32768, this kernel): two output
# warpgroups on alternate chunks (16 warps, 176 registers each, the chain 136) 1.31 ms against 0.73 for one.
# Then (same method, 19:20 UTC): the output releasing a stage once its q h / q k^T retire, and the key norms
# from prefill's first kernel (`rk`; ncu: the kernel is bound by instruction issue, 0.5 per scheduler-cycle,
# and the norms were a fifth of the chain's instructions): 1x32768 0.75 -> 0.70 ms (prefill 1.15), 1x4096
# 0.103 -> 0.096, 2x8192 0.38 -> 0.36. The norms' tiles read in 16-byte row vectors instead: slower (0.82).
# The query norms from the first kernel too (it then loads q): this kernel unchanged (0.69-0.70 ms), the first
# kernel 0.44 -> 0.48 ms at 1x32768 (its spill 16 -> 36 bytes); not kept then. Tried again 2026-11-23 on the A
# path, with both norms as MMA diagonals in the first kernel (K K^T's, and Q Q^T's for one v-head of each k head)
# and its unused lo tiles dropped so it keeps four CTAs per SM: this kernel 0.478 -> 0.453 ms at 8x4096, 0.680
# -> 0.622 at 1x32768, the first kernel 0.190 -> 0.201 and 0.186 -> 0.198, prefill better in all four bench
# cases (H100, same run; bench/results/prefill_h100_2026-11-23_1900_norms.md); kept. The scores times v_new as
# one bf16 product instead of the hi + lo split (as FLA and FlashInfer round them): this kernel 0.701 -> 0.638
# ms at 1x32768, 0.096 -> 0.089 at 1x4096, but the output's error against the float64 recurrence 3.0e-3 -> 3.4e-3
# (1x4096); the split was kept then (every gdn kernel kept such factors at ~16 bits), and is now a table
# option (P_SPLIT; see _WS).
# Later the same day (H100, this kernel's profiler time in one process; 1x4096 / 1x32768 / 2x8192 in us):
# OUT_REGS 232 -> 248 (the chain then gets 232): 94.6 / 688 / 359 -> 91.5 / 653 / 338 (240 and 256 in between);
# a 4-slot ring with it (217 KB): no better (90.7 / 652 / 343). At 232: 2 stages 99.1 / 714, o by plain stores
# 106 / 779. Where the time goes at 1x4096 (one partition's math switched off at a time, wrong numbers): the
# chain alone 68 us (the output only waiting and releasing), the output alone 86 (the chain's MMAs skipped),
# both 95: the output bounds it, and in it the scores path (q k^T, the decays, the hi + lo split) is 23 us of
# the 95 (72 with the scores zero; 89 without the decays' ex2, 92 without the split). Folding the decays into
# v_new and the row factors (exp(gc_i - gc_j) = exp(gc_i - r) exp(r - gc_j), with a per-chunk range check
# and the exact path past it) moved work onto the chain, which then bounded the kernel: 102 us with the fold
# and without it; not kept.
# Then the warp-specialised pass with 64 state columns per CTA (2 stages: 211 KB) for every batch past 32 pairs,
# against the table of the time (same process, prefill's profiler time in us; this kernel in brackets):
#   2x4096 (64 pairs, WS at 32 columns: 256 CTAs, two waves)  304.5 (180) -> 252.4 (128)
#   4x4096 (128 pairs, two warpgroups at 128 columns)         505.8 -> 473.4 (241)
#   8x4096 (256 pairs, two warpgroups)                         1005.7 (544) -> 929.4 (473)
#   64x512 (2048 pairs, two warpgroups)                        1113.1 (638) -> 1071.6 (596)
#   1x32768 (32 pairs): 32 columns stay (1099 against 1274 at 64: 64 CTAs leave half the SMs idle).
# A chunk step at 64 columns costs ~1.4x one at 32 (2x4096: 2.0 us, 1x4096: 1.4), so 32 columns pay only
# while 4 CTAs per pair fit in one wave (H100/H200: 132 SMs, 33 pairs): FUSED_NARROW_PAIRS.
# The two-warpgroup pass (chunk_state_output_sm90, TWO_WG) is kept, tested and compiled, but no table
# entry takes it on sm_90 since.
# Later (H100, 22:00 UTC, one process; ncu at 1x4096: the output waits on the chain's hand-over for 11% of its
# stall samples, the chain on its tiles or a ring slot for 6%; the query norms are a fifth of the chain's loop):
# - the causal mask as an additive bias and the hand-over vectors loaded a chunk ahead (30 fewer instructions
#   per output chunk): each alone no change at 32 columns (1x4096 92 us, 1x32768 660), both together slower
#   there (96, 705) and 1-2% faster at 64 (8x4096 474 -> 464): latency, not instruction issue, bounds it;
# - the chunks' decayed scores P = causal(q k^T exp(gc_i - gc_j)) from the first kernel (hi + lo bf16, [T, HV,
#   64] each), the output then three MMAs per chunk (q h, P_hi v_new, P_lo v_new) and its own query norms, a
#   second ring (q, P) with its own loader warp: this kernel 93.3 -> 80.0 us at 1x4096, 654 -> 552 at 1x32768,
#   but the first kernel 64 -> 86 and 442 -> 621 (P is as many bytes as w, written and read back), prefill
#   157 -> 166 and 1110 -> 1170 us. Not kept.
# Then (H100, 2026-11-23 about 00:42 UTC, CUDA-graph replay, one process, interleaved rounds): this pass launched with
# PDL after prefill's first kernel (that kernel's CTAs triggering as they start; this one's loader waiting,
# its other partitions' prologue, the pool's initial state included, running beside the first kernel's last
# wave): 1x4096 154.4 us against 154.5 without, 8x4096 999 / 1001, 2x8192 502 / 496, 1x32768 1222 / 1214. A
# CTA of this pass takes a whole SM's registers, so it starts only where the first kernel has drained an SM;
# not kept.
FUSED_NARROW_PAIRS = 32
TWO_WG = dict(BV=128, STAGES=2, num_warps=8, TMA_O=True)
# P_SPLIT=False: the decayed scores times v_new as one MMA of the scores rounded to bf16 (as FLA and FlashInfer
# round them) instead of hi + lo parts. H100, 2026-11-23 about 02:40 UTC (prefill, raw gates, one process,
# interleaved rounds; profiler busy time, this pass's time in brackets, us): 1x4096 156.0 (92.3) -> 150.3
# (86.9), 1x1000 48.0 -> 46.5, 8x1024 273 -> 267, 1x32768 1174 (705) -> 1089 (635), 8x4096 945 (479) -> 934
# (461), 64x512 pass 676 -> 578. The output's error against the float64 recurrence 3.02e-3 -> 3.40e-3 at
# 1x4096 (FLA 4.43e-3, FlashInfer 4.46e-3; the spec bound for bf16 inputs 5e-3); the state is unchanged (the
# scores feed only the output). With it OUT_REGS 248 stays best (240 the same, 232 / 224 slower).
# Where a narrow chunk's time goes (H100, 2026-11-23 04:00 UTC, clock64 per phase in CTA 0, 1x4096 and 1x32768
# alike, ~2630 cycles a chunk): the chain waits 409 for a ring slot, stores h 199, waits for tiles 97, w h with
# the norms in its shadow 958, v_new's stores and hand-over 612, k^T v_new 280; the output waits for the next
# hand-over and issues its MMAs 1041, forms the scores and issues P v_new 942, waits 93, releases 51, stores
# 252, and runs ~2050 cycles behind the chain's hand-over. Moving the query norms from the chain to the
# output (computed on the next chunk's q tile while its MMAs run) made it slower: this kernel 88.0 -> 98.2 us
# at 1x4096, 638 -> 719 at 1x32768 (same process); the output bounds the pass more than its waits suggest.
# A_PATH: prefill's first kernel writes A' = A diag(beta) [T, HV, 64] instead of w and u, and this pass forms
# v_new = A' (v - exp(g_cum) rk (k h)) itself (k h where w h was, then A' times the difference through vs_s, a
# second dependent MMA on the chain). Bytes moved at K = V = 128: the first kernel no longer reads v and writes
# 8 KB a chunk and v-head instead of 32; this pass reads v and A' instead of u and w (8 KB less per CTA and chunk).
# H100, 2026-11-23 about 07:45 UTC (prefill under CUDA-graph replay, raw gates, one process, interleaved
# rounds, us): 1x4096 134.8 -> 126.9, 3x1000 112.1 -> 98.9, 5 sequences (777, 0, 64, 1, 300) 56.8 -> 48.5,
# 64x512 995.6 -> 855.3, 8x4096 822.8 -> 714.6, 1x32768 985.9 -> 922.8. A' is rounded to bf16 once where u had
# A's factor as hi + lo parts: against the float64 recurrence the output's error 3.40e-3 -> 3.71e-3 and the
# state's 2.45e-3 -> 2.79e-3 at 1x4096 (3x1000: 3.44 -> 3.77, 2.49 -> 2.92; FLA 4.43 / 3.38, FlashInfer
# 4.46 / 3.69; the spec's bound for bf16 inputs 5e-3).
# Then (H100, 2026-11-23 about 21:10 UTC; all 27 prefill GPU tests passed first): the chain's tail rows of v and
# A' zeroed in shared memory once per sequence instead of a select on every element each chunk, and the query
# norms handed over in log2 units and folded into the output's decay exponents (no multiply of o). Prefill under
# CUDA-graph replay, this pass's profiler time in brackets, us, main before (1f9c452) and after, back to back:
# 1x32768 810.9 (631.2) -> 788.1 (590.2), 8x4096 648.6 (474.6) -> 639.9 (458.4), 64x512 807.8 (576.4) -> 785.8
# (573.5), 1x4096 115.0 (83.6) -> 115.4 (83.8). Which partition bounds it now (same run, timing probes that skip
# one partition's MMAs, wrong numbers): this pass at 1x32768 / 8x4096 / 1x4096 590 / 458 / 83.8 with both, 498 /
# 403 / 69.8 with the output's MMAs off (the chain's cost), 410 / 387 / 57.3 with the chain's off (the output's),
# 550 / 416 / 74.0 with only the output's scores (q k^T, decays, P v_new) off. The chain is now the longer of
# the two at every width, and the pair costs 15-20% more than the longer alone (shared issue slots and tensor
# pipe). Two ways to shorten the chain's step, tried next (same day, ~21:45-22:10 UTC, all 27 prefill GPU tests
# passed with each; branches kept):
# - v_new = u - W h with W = A' diag(-exp(g_cum) rk) k (A' scaled in registers, wgmma's A) and u = A' v issued a
#   chunk ahead in the shadow of W h (branch wip/w-chain, `_chain_w`, narrow only: it holds two stages, so it
#   needs three): one dependent MMA, a fence and two barriers fewer per step, but 20% more instructions in the
#   chain's loop (947 against 789 static, the A' scaling and W's conversion) and 0.6 MFLOP more per chunk on
#   the tensor pipe: this pass 615 -> 724 us at 1x32768, 84.4 -> 99.9 at 1x4096, 162 -> 188 at 1x8192. Slower
#   by about the instructions added, though ncu has the chain's warps issuing on only ~20% of their cycles
#   (bench/results/prefill_h100_2026-11-23_2157.md): where the added work costs (issue slots shared with the
#   output, the state update queued behind W and u on the tensor pipe) was not measured apart.
# - the chunk's decays, norms and tail rows taken between h's store and the barrier that publishes it (the first
#   MMA then follows that barrier directly), x in its own tile (no barrier between A' x and the hand-over stores;
#   branch wip/chain-order): this pass 597.6 -> 590.4 at 1x32768, 83.5 -> 81.1 at 1x4096, 442.8 -> 448.7 at
#   8x4096, 578.6 -> 577.7 at 64x512 (back to back, separate processes). Then in one process (the branch's kernel
#   module beside main's, ~22:25 UTC; identical outputs): this pass 608.5 -> 584.7 at 1x32768, 83.3 -> 79.8 at
#   1x4096, 449.0 -> 452.7 at 8x4096, 562.6 -> 570.5 at 64x512 (prefill under CUDA-graph replay, min of 8 rounds:
#   792.1 -> 773.5, 114.1 -> 111.0, 644.2 -> 651.8, 792.7 -> 803.2). So it pays at 32 columns and not at 64: kept
#   as the table's EARLY, narrow entry only (all 27 prefill GPU tests passed with it, ~22:40 UTC; that run's
#   in-process A/B: this pass 592.6 -> 568.7 at 1x32768 and 82.2 -> 81.4 at 1x4096, though the graph replay of
#   the whole prefill read 781.3 -> 785.8 and 113.2 -> 112.6 there: at 1x32768 the replays' spread, ~3%, is as
#   large as the gain).
# - the chain in transposed form, S^T as its accumulator and every MMA's A operand from registers (branch
#   wip/t-chain, `_chain_t`, 64 columns): non-finite outputs on the H100 (a bug not yet found), and slower as
#   compiled (this pass 446 -> 461 us at 8x4096, 560 -> 603 at 64x512; per-token factors along the columns cost
#   8x those along the rows); docs/backends.md has the reasoning.
# Probes (H100, 2026-11-24 ~00:20-00:35 UTC, ws_ab.py, wrong numbers; this pass in us at 1x32768 / 1x4096 / 8x4096):
#   as is                                               579.3 / 80.9 / 444.7
#   the chain without its state-update MMA (k^T v_new)  591.4 / 78.9 / 437.1  (first run: 588.8 -> 589.1 at 1x32768)
#   the output without its scores (decays, P v_new)     504.2 / 68.5 / 411.1
#   both                                                497.3 / 67.3 / 402.2
# So at 32 columns the output partition binds the pair now (the chain's cycles come back as waits on the output's
# ring slots; the clock64 stamps above had it waiting 409 cycles a chunk for one), and a step taken off the
# chain's path (e.g. k h from the previous chunk's, k_c h_c = g k_c h_(c-1) + (k_c k_(c-1)^T) v~_(c-1)) buys
# nothing without a lighter output. The scores are the output's lever: ~13% of this pass at 1x32768. Their decays
# exp2(lg_i - lg_j) could factor into a row factor on o and a column factor on v_new where a chunk's g_cum spans
# less than fp32's exponent range (a per-chunk guard, the exact form otherwise); but a probe that dropped the decays
# and kept the causal mask and P v_new (DBG, same day) made this pass slower at 32 columns (581.5 -> 604.0 us at
# 1x32768, 81.8 -> 85.2 at 1x4096; 2-3% faster at 64 columns), so the ex2s are not the scores' cost there. Nor is
# the store: o of chunk c stored during chunk c + 1's MMAs (chunk 0 peeled, branch-free whole-chunk stores;
# bitwise-equal outputs, no C7517) left it at 604.8 -> 605.2 us at 1x32768 (1x4096 81.4 -> 82.8, 8x4096 455.0 ->
# 452.0, 64x512 564.4 -> 570.5). What the scores probe removed that matters is the P v_new MMA, yet ncu puts the
# tensor pipe at 36% of this pass's cycles at 1x32768, shared memory (both wgmma operands come from shared tiles) at
# 70%, issue at 40% (bench/results/prefill_h100_2026-11-24_dram.md): no unit is full, so the time is the coupling
# of the two partitions' dependent steps; q k^T, formed by each of the 8 CTAs that share a k head, is the largest
# single MMA and the obvious work to share (two v-heads of a k head per CTA at 16 columns each, or a cluster). Its
# whole cost, probed (q k^T not issued, scores from zeros; ~00:33 UTC): this pass 572.2 -> 528.1 us at 1x32768,
# 81.3 -> 74.5 at 1x4096, 450.5 -> 432.1 at 8x4096, 560.7 -> 551.7 at 64x512. Sharing it between two v-heads would
# save at most about half of that. Nor is the order on the tensor pipe: P v_new issued before the next chunk's
# q k^T, its ring slot released while q k^T still runs (bitwise-equal outputs; ~00:45 UTC) measured 597.9 -> 592.5
# at 1x32768, 82.0 -> 82.2 at 1x4096, 440.7 -> 446.9 at 8x4096, 572.2 -> 569.3 at 64x512: noise.
# Nor is it where q k^T sits: a fourth warpgroup forming the decayed scores from the landed tiles, ahead of the
# chain's hand-over, into a shared P ring the output's P v_new reads (branch wip/scores; 128-register launch, the
# output and scores at 152 each, the chain 184, no spill; outputs bitwise equal) made this pass slower (H100,
# 2026-11-24 ~01:36 UTC, graph replay of the prefill: 1x32768 777.6 -> 842.6 us, the pass 571.6 -> 670.4; 1x4096
# 110.7 -> 119.3; 3x1000 91.9 -> 94.9; 128/128 and 176/120 splits the same). Like the first kernel run beside this
# pass (bench/results/prefill_h100_2026-11-24_0000_overlap.md), any more warps on the SM lengthen the chain's steps.
# PDL: launched with programmatic stream serialization after prefill's first kernel, which triggers it at its start
# (pdl_pass): the pass's CTAs settle on the SMs, set up their barriers and load their initial states while that
# kernel's last CTAs run, and its loader waits for it before the first TMA. H100, 2026-11-24 ~01:47 UTC, prefill
# under CUDA-graph replay, two interleaved pairs, us (off -> on): 1x4096 109.8 / 109.9 -> 107.6 / 107.2, 3x1000
# 90.9 / 90.7 -> 88.3 / 88.1, 64x512 793.1 / 793.1 -> 790.7 / 788.7, 8x4096 635.6 / 636.2 -> 633.3 / 636.1, 1x32768
# 765.2 / 763.7 -> 760.9 / 774.3 (noise there); outputs and states bitwise equal.
# The first kernel launched with PDL too (waiting at its start, the pass triggering at its own: the next call's first
# kernel scheduled early) did not pay (same day ~01:55 UTC, two pairs: 1x4096 107.9 / 107.9 -> 109.0 / 108.5, 3x1000
# 89.2 / 88.7 -> 87.8 / 88.6, 1x32768 774.4 / 789.5 -> 793.0 / 803.4, wide cases even); not kept.
# PERSIST (wide entry): the pass as at most one CTA per SM taking (sequence, v-head, 64 columns) work items from a
# queue (an atomic counter; _chunk_state_ws_kernels.py `_next_item`), so an item's tiles, initial state and first
# chain step overlap the previous item's last chunks and output drain. A CTA of this pass has a fixed cost of ~4.5 us
# (H100, bench/wip/pass_fixed_cost.py: the pass per CTA-wave is ~4.5 us + 1.68 us a chunk from 4 to 128 chunks), a
# quarter of the pass at 64x512. H100, 2026-11-24 ~08:37 UTC (bench/wip/persist_ab.py, prefill's profiler busy time,
# two rounds, us, off -> on; outputs and states bitwise equal on varlen, padding, empty and has_initial_state
# cases): 8x4096 639 / 636 -> 632 / 631, 64x512 791 / 800 -> 773 / 780, 128x256 939 / 940 -> 921 / 924, 1x4096 +
# 63x448 787 / 787 -> 766 / 767, 64 sequences of 64-1024 tokens 856 / 854 -> 804 / 808, 16 of 256-4096 767 / 768 ->
# 755 / 754, 2x8192 + 32x512 725 / 737 -> 726 / 721. A static schedule instead (CTA pid walks items pid, pid + grid,
# ...) gained more on uniform short sequences (128x256 -7%) but lost 7% at 16 sequences of 256-4096 tokens (a CTA
# holding a long item and its share of the rest), as did taking the next item before the current one's tiles (+3%).
# The narrow bucket keeps one CTA per item (at most 128 items: one wave).
_WS = dict(num_warps=4, TMA_O=True, WS=True, RING=3, OUT_REGS=248, maxnreg=168, P_SPLIT=False, A_PATH=True,
           PDL=True)
# HEAD ("head" bucket, more than HEAD_MIN_PAIRS pairs at V = 128): the head pass (_chunk_state_head_kernels.py), one
# CTA per (sequence, v-head) with S^T in two math warpgroups and the scores formed once per head by a third. H100,
# 2026-11-24 ~12:10-12:20 UTC (bench/wip/head_ab.py, prefill's profiler time in one process, ms: first kernel + this
# pass = busy; the warp-specialised wide entry -> the head pass at STAGES=2, RING=2):
#   8x4096   0.193 + 0.443 = 0.633 -> 0.193 + 0.355 = 0.543      4x8192   0.673 -> 0.539
#   64x512   0.231 + 0.552 = 0.780 -> 0.233 + 0.472 = 0.701      16x2048  0.654 -> 0.563
#   4x4096   0.323 -> 0.273     128x256  0.920 -> 0.793     3x1000 (96 pairs)  0.090 -> 0.075
#   2x4096 (64 pairs)  0.172 -> 0.209      2x8192 (64 pairs)  0.313 -> 0.405     1x4096 (narrow)  0.107 -> 0.183
# One CTA per pair leaves SMs idle at 64 pairs (132 SMs; the warp-specialised pass runs 128 CTAs of 64 columns
# there), hence HEAD_MIN_PAIRS. Errors against the float64 recurrence equal the warp-specialised pass's (1x4096:
# o 3.816e-3 / 3.817e-3, state 2.949e-3 / 2.948e-3; varlen with a padding slot, has_initial_state, kv layout and bf16
# pool the same). STAGES=3 (211 KB of shared memory): 64x512 0.480 -> 0.445 ms, 8x4096 0.355 -> 0.358; a 3-slot
# scores ring with it: 64x512 0.458. Then the query norms from the q tiles in the scores warpgroup (prefill's first
# kernel skips q; ~13:00 UTC): first kernel 0.196 -> 0.175 ms at 8x4096, 0.232 -> 0.190 at 64x512, this pass the
# same (8x4096 0.345, 64x512 0.461). bench/results/prefill_h100_2026-11-24_1310_head.md has the side-by-side run.
HEAD_MIN_PAIRS = 64
HEAD_V = 128            # two math warpgroups of 64 columns
_FUSED = L.ConfigTable({("sm_90", "wide"): dict(_WS, BV=64, STAGES=2, PERSIST=True),
                        ("sm_90", "narrow"): dict(_WS, BV=32, STAGES=3, EARLY=True),
                        ("sm_90", "head"): dict(_WS, HEAD=True, BV=HEAD_V, STAGES=3, RING=2)})  # (plans follow)


def pdl_pass(cfg: dict, device) -> bool:
    """Whether the warp-specialised pass of this config is launched with PDL after prefill's first kernel (which
    must then be launched with trigger=True, chunk_prep.launch_prep). The pass reads the pool's initial states
    before its wait: safe because the kernel before it is that first kernel, an ordinary launch, which starts only
    once every earlier kernel (a decode step writing the pool, say) is done. So no PDL where the first kernel does
    not run (T == 0: launch_state_output)."""
    return bool(cfg.get("PDL") and (cfg.get("WS") or cfg.get("HEAD"))) and L.pdl_ok(L.current_arch(device))


def fused_bucket(N: int, HV: int, K: int, V: int, head: bool = True) -> str:
    """"narrow" while four CTAs of 32 state columns per (sequence, v-head) pair fill at most one wave; "head" past
    HEAD_MIN_PAIRS pairs where the head pass serves (head: the A path; K = V = HEAD_V, the sizes run on a GPU);
    else "wide"."""
    pairs = N * HV
    if pairs <= FUSED_NARROW_PAIRS:
        return "narrow"
    return "head" if head and pairs > HEAD_MIN_PAIRS and K == V == HEAD_V else "wide"


def fused_config(arch: str, N: int, HV: int, K: int, V: int, head: bool = True) -> dict | None:
    """Config of the fused pass for these sizes, or None where the plain pass + chunk_output is faster. head=False:
    not the head pass (it needs the A path: prefill's Gluon first kernel). An arch without a "head" entry takes its
    "wide" one there."""
    bucket = fused_bucket(N, HV, K, V, head)
    cfg = L.pick(_FUSED, arch, bucket, None)
    if cfg is None and bucket == "head":
        cfg = L.pick(_FUSED, arch, "wide", None)
    if cfg is None or K > 128:
        return None
    return fit_config(cfg, V)


def fit_config(cfg: dict, V: int) -> dict:
    """A fused-pass config (a table entry or TWO_WG) for V state columns: BV at most V, and one warpgroup when
    two would get fewer than 16 columns each."""
    cfg = dict(cfg, BV=min(cfg["BV"], V))
    if cfg["BV"] // (cfg["num_warps"] // 4) < 16:
        cfg["num_warps"] = 4
    return cfg


def launch_state_output(k, w, u, q, g_cum, state, state_indices, cu_seqlens, has_initial_state, out, scale,
                        use_qk_l2norm, state_layout, cfg, rk=None, rq=None, work=None):
    """The state pass with the output fused: as `launch_state`, but writes out [T,HV,V] (unit last stride)
    instead of h and v_new. q [T,H,K] of k's dtype. rk, rq (or None): the key and query norms [T, H] fp32 as
    prefill's first kernel writes them (`PC.gcum_empty` rows), for the warp-specialised pass (else it takes
    them from the k and q tiles). With cfg A_PATH (warp-specialised pass only) w is A' = A diag(beta)
    [T, HV, 64] and u is v [T, HV, V] (prefill's first kernel with a_out): v_new is formed as
    A' (v - exp(g_cum) rk (k h)). work (or None): with cfg PERSIST, an int32 [1] zero for the work queue of the
    persistent warp-specialised pass (prefill allocates it with its buffers; None: made here).
    cfg TRANSITION (warp-specialised A path; the segmented prefill's first pass, segments.py): the state has
    V + K columns starting from [0 | I] (not read from the pool), of which the last K read v as zero; only final
    states are written (out must be None): [U | T] per (segment, v-head), as the pool's [V + K, K] "vk" blocks."""
    from gdn.nvidia.gluon._chunk_state_kernels import chunk_state_output_sm90
    T, H, K = k.shape
    HV, V = u.shape[1], u.shape[2]
    transition = bool(cfg.get("TRANSITION"))
    if transition and (out is not None or not (cfg.get("WS") and cfg.get("A_PATH"))):
        raise ValueError("gdn.chunk_state (gluon): a TRANSITION pass takes no out and needs the warp-specialised "
                         "A path")
    VU, V = (V, V + K) if transition else (0, V)
    N = cu_seqlens.shape[0] - 1
    BV, stages, warps = cfg["BV"], cfg["STAGES"], cfg["num_warps"]
    if V % BV or BV // (warps // 4) < 16:
        raise ValueError(f"gdn.chunk_state (gluon, fused output): BV={BV} must divide V={V} and give each of "
                         f"{warps // 4} warpgroups >= 16 columns")
    pdl = pdl_pass(cfg, k.device) and T > 0       # (T == 0: prefill's first kernel did not run; see pdl_pass)
    if T == 0:
        k, q = k.new_zeros(1, H, K), q.new_zeros(1, H, K)
        w, u = w.new_zeros(1, HV, w.shape[2]), u.new_zeros(1, HV, V)
    k, w, u, q = C.tma_ready(k), C.tma_ready(w), C.tma_ready(u), C.tma_ready(q)
    if cfg.get("HEAD"):     # (its own o view: [64, V / 2] tiles, one per math warpgroup)
        _launch_head(k, w, u, q, g_cum, state, state_indices, cu_seqlens, has_initial_state, out, scale,
                     use_qk_l2norm, state_layout, cfg, rk, rq, pdl)
        return
    NV = V // BV
    # o by TMA store where the table asks for it and out allows it (16-bit: an fp32 tile would not fit; T == 0:
    # no rows to store, and a TMA view needs one)
    o_desc = (C.head_matrix(out, C.BT, BV) if out is not None and cfg.get("TMA_O") and out.dtype in C.DTYPES
              and C.tma_ok(out) and T > 0 else None)
    if cfg.get("WS"):
        from gdn.nvidia.gluon._chunk_state_ws_kernels import chunk_state_output_ws_sm90
        # the output partition holds two chunks' stages and ring slots (its next chunk's MMAs are issued early):
        # with fewer, the chain or the loader would wait on a slot it is still holding (deadlock)
        if min(stages, cfg["RING"]) < 2:
            raise ValueError(f"gdn.chunk_state (gluon, warp-specialised): STAGES={stages} and RING={cfg['RING']} "
                             "must both be >= 2")
        items = N * HV * NV
        persist = bool(cfg.get("PERSIST"))
        grid = items
        if persist:
            work = torch.zeros(1, dtype=torch.int32, device=k.device) if work is None else work
            if not L.is_recording():
                grid = min(items, probe.device_info(k.device).multiprocessors)
        C.launch(chunk_state_output_ws_sm90, (grid,),
                 C.head_matrix(w, C.BT), C.head_matrix(k, C.BT), C.head_matrix(u, C.BT, BV), gcum_desc(g_cum),
                 C.head_matrix(q, C.BT), None if rk is None else gcum_desc(rk), None if rq is None else gcum_desc(rq),
                 state, state_indices, cu_seqlens, has_initial_state, out, o_desc, HV, HV // H,
                 NV, float(scale), *TS.pool_strides(state, state_layout), *(out.stride()[:2] if out is not None else
                                                                             (0, 0)), items,
                 work if persist else state_indices, V=V,         # (without PERSIST the queue is never read)
                 L2NORM=bool(use_qk_l2norm), STAGES=stages, RING=cfg["RING"], OUT_REGS=cfg["OUT_REGS"],
                 P_SPLIT=bool(cfg.get("P_SPLIT", True)), A_PATH=bool(cfg.get("A_PATH", False)),
                 EARLY=bool(cfg.get("EARLY", False)), PDL=pdl, PERSIST=persist, VU=VU, NO_OUT=transition,
                 num_warps=4, maxnreg=cfg["maxnreg"], pdl=pdl)
        return
    C.launch(chunk_state_output_sm90, (N * HV * NV,),
             C.head_matrix(w, C.BT), C.head_matrix(k, C.BT), C.head_matrix(u, C.BT, BV), C.head_matrix(q, C.BT),
             g_cum, state, state_indices, cu_seqlens, has_initial_state, out, o_desc, HV, HV // H, NV, float(scale),
             g_cum.stride(0), g_cum.stride(1), *TS.pool_strides(state, state_layout), out.stride(0), out.stride(1),
             V=V, L2NORM=bool(use_qk_l2norm), STAGES=stages, num_warps=warps)


def _launch_head(k, w, u, q, g_cum, state, state_indices, cu_seqlens, has_initial_state, out, scale, use_qk_l2norm,
                 state_layout, cfg, rk, rq, pdl):
    """The head pass (cfg HEAD; _chunk_state_head_kernels.py): one CTA per (sequence, v-head) on the A path, w = A'
    [T, HV, 64], u = v [T, HV, V] with V = 128 (two math warpgroups of 64 columns); o by TMA store when it has k's
    16-bit dtype, else by plain stores."""
    from gdn.nvidia.gluon._chunk_state_head_kernels import chunk_state_output_head_sm90
    H, K = k.shape[1:]
    HV, V = u.shape[1], u.shape[2]
    if not cfg.get("A_PATH") or V != HEAD_V or K > 128 or out is None or cfg.get("TRANSITION"):
        raise ValueError(f"gdn.chunk_state (gluon, head pass): needs the A path, V={HEAD_V}, K<=128 and an out; got "
                         f"A_PATH={cfg.get('A_PATH')}, V={V}, K={K}, TRANSITION={cfg.get('TRANSITION')}")
    # o by TMA store where it can (k's 16-bit dtype; T == 0: no rows, and a TMA view needs one), else plain stores
    o_desc = (C.head_matrix(out, C.BT, V // 2) if out.dtype == k.dtype and C.tma_ok(out) and out.shape[0] > 0
              else None)
    C.launch(chunk_state_output_head_sm90, (max(cu_seqlens.shape[0] - 1, 0) * HV,),
             C.head_matrix(k, C.BT), C.head_matrix(q, C.BT), C.head_matrix(u, C.BT, V // 2), C.head_matrix(w, C.BT),
             gcum_desc(g_cum), None if rk is None else gcum_desc(rk), None if rq is None else gcum_desc(rq),
             state, state_indices, cu_seqlens, has_initial_state, out, o_desc, HV, HV // H, float(scale),
             *TS.pool_strides(state, state_layout), *out.stride()[:2], V=V, L2NORM=bool(use_qk_l2norm),
             STAGES=cfg["STAGES"], RING=cfg["RING"], PDL=pdl, num_warps=4, maxnreg=128, pdl=pdl)


def chunk_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, *, use_qk_l2norm,
                state_layout):
    N = cu_seqlens.shape[0] - 1
    if N <= 0:
        return
    C.check_inputs("chunk_state", k=k, w=w, u=u)
    for name, t in (("u", u), ("k", k)):
        if t.dtype != w.dtype:
            raise TypeError(f"gdn.chunk_state (gluon): argument '{name}' must have w's dtype {w.dtype} (one wgmma "
                            f"operand type), got {t.dtype}")
    if h.dtype != w.dtype or not h.is_contiguous():
        raise ValueError(f"gdn.chunk_state (gluon): argument 'h' must be contiguous with w's dtype {w.dtype} "
                         f"(TMA-stored from the MMA's shared tile), got {h.dtype}, strides {h.stride()}")
    if v_new.stride(-1) != 1:
        raise ValueError("gdn.chunk_state (gluon): argument 'v_new' needs a unit last stride")
    if state_layout not in ("vk", "kv"):
        raise ValueError(f"gdn.chunk_state (gluon): argument 'state_layout' must be 'vk' or 'kv', got "
                         f"{state_layout!r}")
    cfg = config(L.current_arch(k.device), N, u.shape[1], k.shape[2], u.shape[2])
    launch_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, use_qk_l2norm,
                 state_layout, cfg)


def _fused_example_launches(arch: str) -> list:
    """The fused passes' launches (recorded) for the chunk_state examples, with q and out beside them: the
    table's wide config (output by TMA store) for each, and for the first also the output by plain stores (the
    kernel's other branch: a fp32 out, or a table without TMA_O), the narrow entry and the two-warpgroup pass."""
    from gdn.common import examples
    ex, variants = examples.KERNEL_EXAMPLES["chunk_state"]
    launches = []
    for i, opts in enumerate(variants):
        if opts.get("dtype", torch.bfloat16) not in C.DTYPES:
            continue
        (k, w, u, g_cum, pool, idx, cu, has_init, _, _), kw = ex("meta", **opts)
        q, out = torch.empty_like(k), torch.empty_like(u)
        wide = fused_config(arch, FUSED_NARROW_PAIRS + 1, 1, k.shape[2], u.shape[2])
        narrow = fused_config(arch, 1, 1, k.shape[2], u.shape[2])
        head = L.pick(_FUSED, arch, "head", None)
        cfgs = [("", wide)] + ([(",TMA_O=0", dict(wide, TMA_O=False)), (",narrow", narrow),
                                (",narrow,P_SPLIT", dict(narrow, P_SPLIT=True)),
                                (",two_wg", fit_config(TWO_WG, u.shape[2]))] if i == 0 else [])
        if i == 0 and wide is not None:     # the other of the two v_new paths (A' and v, or w and u) too
            for name, c in (("", wide), (",narrow", narrow)):
                other = not c.get("A_PATH")
                cfgs.append((f"{name},A_PATH={int(other)}", dict(c, A_PATH=other)))
            # as prefill launches it: the key and query norms from the first kernel
            cfgs += [(",norms", dict(wide, NORMS=True)), (",narrow,norms", dict(narrow, NORMS=True))]
            # the segmented prefill's transition pass (no output; v's columns past V read as zeros)
            cfgs += [(",transition", dict(wide, NORMS=True, A_PATH=True, TRANSITION=True))]
            if head is not None and u.shape[2] == HEAD_V:     # the head pass, with and without the norms
                # (as prefill runs it: the key norms from the first kernel, the query norms from the q tiles; and
                # both from the first kernel)
                cfgs += [(",head", dict(head, NORMS="k")), (",head,norms", dict(head, NORMS=True))]
        for suffix, cfg in cfgs:
            if cfg is None:
                continue
            # the A path's w is A' [T, HV, 64] and its u is v (here u's stand-in)
            w_in = w.new_empty(w.shape[0], w.shape[1], C.BT) if cfg.get("A_PATH") else w
            n_norms = {True: 2, "k": 1}.get(cfg.get("NORMS"), 0)     # (rk, rq; "k": rk only)
            norms = [PC.gcum_empty(k.shape[0], k.shape[1], k.device) for _ in range(n_norms)]
            # (the transition pass's pool has V + K columns a head)
            pool_in = (pool.new_empty(pool.shape[0], pool.shape[1], u.shape[2] + k.shape[2], k.shape[2])
                       if cfg.get("TRANSITION") else pool)
            with L.recording(arch), C.recording() as rec:
                launch_state_output(k, w_in, u, q, g_cum, pool_in, idx, cu, has_init,
                                    None if cfg.get("TRANSITION") else out, 0.1, kw["use_qk_l2norm"],
                                    "vk" if cfg.get("TRANSITION") else kw["state_layout"], cfg, *norms)
            tag = ",".join(f"{a}={b}" for a, b in opts.items()).replace("torch.", "") + suffix
            launches += [(f"{r.kernel.fn.__name__}[{tag}]", r) for r in rec]
    return launches


def _kernel(arch: str):
    """The plain pass's kernel body for the arch: wgmma on sm_90, tcgen05 with tensor-memory products on
    sm_100 (the fused passes are sm_90 only: `fused_config` has no other arch)."""
    if arch == "sm_100":
        from gdn.nvidia.gluon._chunk_state_sm100 import chunk_state_sm100
        return chunk_state_sm100
    from gdn.nvidia.gluon._chunk_state_kernels import chunk_state_sm90
    return chunk_state_sm90


SM100_MAX_K = 128      # tcgen05's M for one CTA; k^T vs has M = K


def _arch_reasons(props: dict) -> list[str]:
    """What this Impl declines beyond its head dims: K above SM100_MAX_K on sm_100 (the Triton kernel serves it)."""
    if props.get("K", 0) > SM100_MAX_K and probe.device_info(props.get("device")).arch == "sm_100":
        return [f"head dim K={props['K']} not supported on sm_100 (tcgen05 M <= {SM100_MAX_K})"]
    return []


def _aot(arch: str) -> list[str]:
    names = [name for name, _ in C.aot_compile("chunk_state", chunk_state, arch)]
    if arch not in C.HOPPER:
        return names
    for name, launch in _fused_example_launches(arch):
        C.compile_launch(launch, arch)
        names.append(name)
    return names


register(Impl(op="chunk_state", backend="gluon", fn=chunk_state, archs=C.NVIDIA_ARCHS, priority=30,
              requires=C.REQUIRES, dtypes=frozenset(C.DTYPES), state_dtypes=dtypes("float32", "bfloat16"),
              layouts=("vk", "kv"), head_dims=C.HEAD_DIMS, validated_on=("sm_90",), check=_arch_reasons, aot=_aot,
              notes="Gluon: fp32 state in registers, TMA-pipelined w/k/u tiles; sm_90a wgmma, sm_100a tcgen05 "
                    "products in tensor memory (K <= 128); one warpgroup per (sequence, v-head, BV state columns)"))
