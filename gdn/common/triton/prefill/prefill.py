"""Triton chunked prefill: the gated delta rule over packed varlen tokens in two or three launches.

Kernel-level signature: gdn/common/reference.py `prefill` (the token-by-token oracle).

    1. `_prep_kernel`, one program per (64-token chunk, v-head): gates (raw a, b, A_log, dt_bias or
       precomputed g, beta) + chunk-local cumsum (chunk_cumsum), k l2norm, beta K K^T and its triangular
       inverse (chunk_kkt_solve), w and u (chunk_wy), all in registers; writes g_cum, w, u. It also zeroes
       the output rows past cu_seqlens[-1] (the unused tail of a fixed token budget).
    2. chunk_state's kernel, one program per (sequence, v-head, BV columns of the state): the sequential
       pass over the chunks, reading the pool slot and writing the final state back in place.
       When N*HV (sequence, head) pairs fill the GPU ("wide") and only Triton sub-op kernels are at hand,
       it also computes the output (chunk_output's formula) in the same loop; h and v_new never reach memory.
    3. (otherwise) chunk_output's kernel over all chunks in parallel, from the per-chunk states h and v_new
       that step 2 stored.
    Steps 2 and 3 use the chunk_state / chunk_output implementations the registry picks (`sub_op_impl`):
    on sm_90 the Gluon ones (TMA + wgmma, gdn/nvidia/gluon/), else the Triton kernels of this package.
    With both on Gluon, step 1 is Gluon's too (gdn/nvidia/gluon/chunk_prep.py: the same work with every
    product a wgmma; `_GLUON_PREP`), step 2 is Gluon's pass with the output fused and step 3 goes
    (gdn/nvidia/gluon/chunk_state.py `_FUSED`): a warp-specialised CTA per (sequence, v-head, 64 state
    columns), or 32 for a "narrow" batch (at most 32 (sequence, v-head) pairs: a long prompt), the output's
    work in its own warpgroup beside the state's chain. There step 1 writes A' = A diag(beta) [T, HV, 64]
    instead of w and u, and the pass forms v_new = A' (v - exp(g_cum) rk (k h)) from v (`A_PATH`).

Few (sequence, v-head) pairs with long sequences (a tensor-parallel rank's heads): the sequences are cut into
segments walked at once (segments.py: the segment table, the first kernel, a transition pass, the combine, the pass
with the output; `_segmented`), on sm_90 with the Gluon kernels, elsewhere with the Triton ones.

q and k are l2-normalised where they are loaded (no separate pass). Nothing is read back to the host:
the grid of steps 1 and 3 is the static bound T // 64 + N chunk slots (see _common), so prefill can be
captured in a CUDA graph for a fixed token budget and traced on meta tensors. Configs come from tables
(never autotuned: step 2 writes the pools in place).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common import registry
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton.prefill import _common as C
from gdn.common.triton.prefill import chunk_output, chunk_state, segments
from gdn.common.triton.prefill.chunk_cumsum import raw_gate_g, sigmoid
from gdn.common.triton.prefill.chunk_kkt_solve import kkt_solve_tile
from gdn.common.triton.prefill.chunk_wy import u_tile, w_tile


@triton.jit
def _prep_kernel(q, k, v, g, beta, a, b, A_log, dt_bias, cu, gcum, w, u, o, rq_buf, rk_buf, N, T, HV, G, scale,
                 s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, s_gt, s_gh, s_bt, s_bh, s_ct, s_ch, s_wt, s_wh, s_ut, s_uh, s_ot, s_oh,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 BLOCK_N: tl.constexpr, L2NORM: tl.constexpr, RAW: tl.constexpr, PREC: tl.constexpr,
                 PREC_EXACT: tl.constexpr):
    s = tl.program_id(0)
    hv = tl.program_id(1)
    hk = hv // G
    o_t = tl.arange(0, 64)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)

    # rows past the last sequence (unused token budget) get zero output
    end = tl.load(cu + N).to(tl.int64)
    tail = s.to(tl.int64) * 64 + o_t
    m_tail = (tail >= end) & (tail < T)
    tl.store(o + tail[:, None] * s_ot + hv * s_oh + o_v[None, :], tl.zeros((64, BV), o.dtype.element_ty),
             mask=m_tail[:, None] & (o_v < V)[None, :])

    n, t0, eos = C.seq_of_slot(cu, N, s, 64, BLOCK_N)
    if t0 < eos:
        rows = t0 + o_t
        valid = rows < eos
        if RAW:
            x = tl.load(a + rows * s_gt + hv * s_gh, mask=valid, other=0).to(tl.float32)
            gg = raw_gate_g(x, tl.load(A_log + hv).to(tl.float32), tl.load(dt_bias + hv).to(tl.float32))
            bb = sigmoid(tl.load(b + rows * s_bt + hv * s_bh, mask=valid, other=0).to(tl.float32))
        else:
            gg = tl.load(g + rows * s_gt + hv * s_gh, mask=valid, other=0).to(tl.float32)
            bb = tl.load(beta + rows * s_bt + hv * s_bh, mask=valid, other=0).to(tl.float32)
        gg = tl.where(valid, gg, 0.0)
        bb = tl.where(valid, bb, 0.0)
        gc = tl.cumsum(gg, axis=0)
        tl.store(gcum + rows * s_ct + hv * s_ch, gc, mask=valid)

        mk = valid[:, None] & (o_k < K)[None, :]
        kt = tl.load(k + rows[:, None] * s_kt + hk * s_kh + o_k[None, :], mask=mk, other=0)
        # v now, so that its load overlaps the solve
        mv = valid[:, None] & (o_v < V)[None, :]
        vt = tl.load(v + rows[:, None] * s_vt + hv * s_vh + o_v[None, :], mask=mv, other=0)
        rk = C.inv_norm(kt.to(tl.float32), L2NORM)
        if rk_buf is not None:
            if hv % G == 0:
                # the inverse norms of q (times scale) and k, once per q/k head, for the later kernels
                tl.store(rk_buf + rows * H + hk, rk, mask=valid)
                qt = tl.load(q + rows[:, None] * s_qt + hk * s_qh + o_k[None, :], mask=mk, other=0).to(tl.float32)
                tl.store(rq_buf + rows * H + hk, C.inv_norm(qt, True) * scale, mask=valid)
        kd = kt.to(w.dtype.element_ty)
        Ai = kkt_solve_tile(tl.dot(kd, tl.trans(kd), input_precision=PREC), rk, bb, gc, valid, PREC, PREC_EXACT)
        wt = w_tile(Ai, kd, rk, bb, gc, PREC)
        tl.store(w + rows[:, None] * s_wt + hv * s_wh + o_k[None, :], wt.to(w.dtype.element_ty), mask=mk)
        ut = u_tile(Ai, vt.to(w.dtype.element_ty), bb, PREC)
        tl.store(u + rows[:, None] * s_ut + hv * s_uh + o_v[None, :], ut.to(u.dtype.element_ty), mask=mv)


_PREP_CONFIGS = L.ConfigTable({
    # one warpgroup: the 64-row products map onto it (8 warps replicate them); sm_90 K = V = 128:
    # 208 registers, no spill
    "big": dict(num_warps=4, num_stages=1),       # max(K, V) >= 128
    "small": dict(num_warps=4, num_stages=1),
})
# sm_90: the first kernel in Gluon (gdn/nvidia/gluon/chunk_prep.py) when the later ones are Gluon's too
# (they take the q/k norms from their own tiles; the Triton ones need the [T, H] buffers only the Triton
# first kernel writes). H100, 8x4096: 0.85 vs 0.96 ms (raw gates), 0.85 vs 0.91 (g, beta).
_GLUON_PREP = L.ConfigTable({("sm_90", "any"): True})
# Fuse the output into the state pass when the (sequence, v-head) pairs fill the GPU ("wide").
# Narrow batches, tried and not kept (H100, 2026-11-22, CUDA-graph replay): the tokens cut into P pieces, each
# piece's state pass on a high-priority side stream overlapping the next piece's first kernel and the previous
# piece's output. 1x32768 1.579 ms -> 1.547 (P=4), 1.616 (P=8); 1x4096 0.225 -> 0.232 (P=2); 2x8192 0.813 ->
# 0.850 (P=2): a first-kernel CTA on the SM slows the latency-bound state pass about as much as it overlaps.
# Also tried for narrow batches (H100, 2026-11-23 about 02:20 UTC, CUDA-graph replay, interleaved rounds): the first
# kernel beside the warp-specialised pass. The pass at 64 state columns (64 CTAs, each a whole SM) launched with PDL
# right after a persistent first kernel (three CTAs per SM; those on the pass's 64 SMs exit, the others take items
# in order from a ticket and count the v-heads finished per chunk slot; the pass's loader waits on the counts):
# 1x4096 155 -> 143 us, 1x1000 50 -> 53. The persistent item costs 1.3x a one-item CTA (LLVM hoists its index
# math out of the loop: 448 bytes of spill, 132 with the indices made opaque), the pass at 64 columns is slower
# per chunk (1x32768 alone: 1.19 ms against 0.67), and the profiler showed the two kernels one after the other
# (kernel time 250 us at 1x4096). Not kept.
_FUSE = L.ConfigTable({"wide": True, "narrow": False})


def plan(arch: str, N: int, HV: int, K: int, V: int) -> dict:
    """The launch plan for these sizes (the benchmark's sweep edits the tables above)."""
    big = max(C.block_dim(K), C.block_dim(V)) >= 128
    bucket = chunk_state.bucket(N, HV)
    return dict(prep=dict(L.pick(_PREP_CONFIGS, arch, "big" if big else "small", _PREP_CONFIGS["small"])),
                fuse=L.pick(_FUSE, arch, bucket, False), state=chunk_state.config(arch, N, HV),
                output=chunk_output.config(arch, K, V))


# Call plans (launch.py): an eager call whose tensors' shapes, strides, dtypes and alignment and whose scalars match
# an earlier call's replays that call's launches (on sm_90: its four buffers, then the Gluon first kernel and the
# warp-specialised pass; the other paths likewise where every launch takes a launch plan), skipping the decisions,
# descriptors and launch-plan lookups that took ~130 of an eager call's ~180 us host time on an H100 host
# (bench/wip/host_split.py, 1x4096). The config tables the decisions read are L.ConfigTables (a change makes the
# plans stale).
_CALL_PLANS: dict = {}
_MAX_CALL_PLANS = 256


def _launch_prep(q, k, v, g, beta, a, b, A_log, dt_bias, cu_seqlens, g_cum, w, u, out, rq, rk, scale, l2, arch):
    """The Triton first kernel (gates, cumsum, norms, K K^T, solve, w and u) over every chunk slot."""
    T, H, K = q.shape
    HV, V = v.shape[1], v.shape[2]
    N = cu_seqlens.shape[0] - 1
    gx, bx = (a, b) if g is None else (g, beta)
    big = max(C.block_dim(K), C.block_dim(V)) >= 128
    L.launch(_prep_kernel, (C.num_slots(T, N), HV), q, k, v, g, beta, a, b, A_log, dt_bias, cu_seqlens, g_cum,
             w, u, out, rq, rk, N, T, HV, HV // H, float(scale), q.stride(0), q.stride(1), k.stride(0),
             k.stride(1), v.stride(0), v.stride(1), gx.stride(0), gx.stride(1), bx.stride(0), bx.stride(1),
             g_cum.stride(0), g_cum.stride(1), w.stride(0), w.stride(1), u.stride(0), u.stride(1),
             out.stride(0), out.stride(1), H=H, K=K, V=V, BK=C.block_dim(K), BV=C.block_dim(V),
             BLOCK_N=C.block_n(N), L2NORM=l2, RAW=g is None, PREC=C.f32_precision(arch, q.dtype),
             PREC_EXACT=C.f32_exact_precision(arch),
             **L.pick(_PREP_CONFIGS, arch, "big" if big else "small", _PREP_CONFIGS["small"]))


def _gluon_buffers(T, H, HV, K, V, wdt, dev, a_path: bool, ws_norms: bool, persist: bool = False,
                   q_norms: bool = True) -> tuple:
    """The sm_90 path's buffers (g_cum, w, u, rk, rq, work): w is A' [T, HV, 64] on the A path, whose u is v (None
    here); the key norms for the warp-specialised pass (ws_norms), and on the A path the query norms too unless the
    pass takes them from its q tiles (not q_norms: the head pass); the persistent pass's work-queue counter (an int32
    zero; persist)."""
    g_cum = C.gcum_empty(T, HV, dev)
    if a_path:
        w, u = torch.empty((T, HV, C.BT), dtype=wdt, device=dev), None
    else:
        w = torch.empty((T, HV, K), dtype=wdt, device=dev)
        u = torch.empty((T, HV, V), dtype=wdt, device=dev)
    rk = C.gcum_empty(T, H, dev) if ws_norms else None
    rq = C.gcum_empty(T, H, dev) if ws_norms and a_path and q_norms else None
    work = torch.zeros(1, dtype=torch.int32, device=dev) if persist else None
    return g_cum, w, u, rk, rq, work


def _general_buffers(T, N, H, HV, K, V, wdt, dev, norms: bool, plain: bool) -> tuple:
    """The other paths' buffers (g_cum, rq, rk, w, u, h, v_new): the q/k norms [T, H] for the Triton sub-op
    kernels (norms), h and v_new for a plain state pass and a separate output (plain)."""
    g_cum = C.gcum_empty(T, HV, dev)
    rq = torch.empty((T, H), dtype=torch.float32, device=dev) if norms else None
    rk = torch.empty((T, H), dtype=torch.float32, device=dev) if norms else None
    w = torch.empty((T, HV, K), dtype=wdt, device=dev)
    u = torch.empty((T, HV, V), dtype=wdt, device=dev)
    h = torch.empty((C.num_slots(T, N), HV, K, V), dtype=wdt, device=dev) if plain else None
    v_new = torch.empty((T, HV, V), dtype=wdt, device=dev) if plain else None
    return g_cum, rq, rk, w, u, h, v_new


def prefill(q, k, v, state, state_indices, cu_seqlens, out, g, beta, a, b, A_log, dt_bias, has_initial_state, *,
            scale, use_qk_l2norm, state_layout):
    T, H, K = q.shape
    HV, V = v.shape[1], v.shape[2]
    N = cu_seqlens.shape[0] - 1
    if N <= 0:
        out.zero_()
        return
    inputs = (q, k, v, state, state_indices, cu_seqlens, out, g, beta, a, b, A_log, dt_bias, has_initial_state)
    key = None if L.is_recording() else L.call_key(inputs, float(scale), bool(use_qk_l2norm), state_layout)
    if key is not None:
        cp = _CALL_PLANS.get(key)
        if cp is not None:
            cp.replay(inputs + cp.buffers())
            return
    q, k, v = C.last_dim_contiguous(q), C.last_dim_contiguous(k), C.last_dim_contiguous(v)
    arch = L.current_arch(q.device)
    dev = q.device
    wdt = C.dot_dtype(q.dtype)
    l2 = bool(use_qk_l2norm)
    out_impl = sub_op_impl("chunk_output", q, v)
    state_impl = sub_op_impl("chunk_state", q, v, state, state_layout)
    fused_gluon = None
    if state_impl.backend == "gluon" and out_impl.backend == "gluon" and out.stride(-1) == 1:
        from gdn.nvidia.gluon import chunk_state as gluon_state
        fused_gluon = gluon_state.fused_config(arch, N, HV, K, V)
    # the inverse q/k norms as [T, H] buffers, for the Triton sub-op kernels (the Gluon ones take them from
    # their shared tiles); the first kernel skips reading q without them
    norms = l2 and (state_impl.backend == "triton" or (out_impl.backend == "triton" and fused_gluon is None))
    gluon_prep = False
    if not norms and state_impl.backend == "gluon" and L.pick(_GLUON_PREP, arch, "any", False):
        from gdn.nvidia.gluon import chunk_prep
        gluon_prep = chunk_prep.prep_ok(k, v)
    if gluon_prep and fused_gluon is not None:
        ws = bool(fused_gluon.get("WS"))
        # A' instead of w and u: the pass reads A' and v in w's and u's places and forms v_new itself
        # (chunk_state.py `_WS`)
        a_path = bool(ws and fused_gluon.get("A_PATH"))
        seg = segments.segment_tokens(arch, T, N, HV, K, V) if a_path else 0
        if seg:
            _segmented(inputs, (q, k, v), key, arch, seg, scale, l2, state_layout, True, False)
            return
        # the warp-specialised state pass takes the key norms from the first kernel (instruction issue bounds
        # it; there they are K K^T's diagonal), and on the A path the query norms too (one MMA more for one
        # v-head of each k head, where each of the pass's G x V / BV CTAs per k head read a q tile every chunk;
        # the A' kernel has the shared memory for q's tile at four CTAs per SM, the w and u one would not).
        # Re-measured when DRAM bytes said the first kernel reads q (134 MB of its 404 at 8x4096) only for them
        # (H100, 2026-11-24, one process, prefill under CUDA-graph replay, us): query norms in the pass's chain
        # instead cost 1x32768 787.6 -> 859.5, 1x4096 109.9 -> 118.8, 8x4096 647.7 -> 655.6, 64x512 786.9 ->
        # 784.9 (first kernel 21-28 us faster, the pass 23-100 us slower)
        # (the head pass forms the query norms itself, in its scores warpgroup: the first kernel then skips q)
        alloc = functools.partial(_gluon_buffers, T, H, HV, K, V, wdt, dev, a_path, ws and l2,
                                  bool(ws and fused_gluon.get("PERSIST")), not fused_gluon.get("HEAD"))
        bufs = alloc()
        g_cum, w, u, rk_ws, rq_ws, work = bufs
        u = v if u is None else u
        with L.call_recording() as rec:
            chunk_prep.launch_prep(k, v, g, beta, a, b, A_log, dt_bias, cu_seqlens, g_cum, None if a_path else w,
                                   None if a_path else u, out, l2, rk_ws, a_out=w if a_path else None, q=q, rq=rq_ws,
                                   trigger=gluon_state.pdl_pass(fused_gluon, dev))
            # sm_90, enough (sequence, head) pairs: the Gluon pass with the output fused (no h, v_new round trip)
            gluon_state.launch_state_output(k, w, u, q, g_cum, state, state_indices, cu_seqlens, has_initial_state,
                                            out, scale, l2, state_layout, dict(fused_gluon, A_PATH=a_path), rk_ws,
                                            rq_ws, work)
        _keep_plan(key, rec, inputs + bufs, alloc)
        return
    p = plan(arch, N, HV, K, V)
    # Fusing the output into the state pass pays against the Triton kernels only: with faster sub-op kernels
    # (sm_90: Gluon; chunk_output 0.45 vs 0.92 ms at 8x4096 on an H100) the plain pass + them wins.
    fuse_triton = p["fuse"] and out_impl.backend == "triton" and state_impl.backend == "triton"
    seg = 0
    if out_impl.backend == "triton" and state_impl.backend == "triton":
        seg = segments.segment_tokens(arch, T, N, HV, K, V)
    if seg:
        _segmented(inputs, (q, k, v), key, arch, seg, scale, l2, state_layout, False, norms)
        return
    alloc = functools.partial(_general_buffers, T, N, H, HV, K, V, wdt, dev, norms,
                              fused_gluon is None and not fuse_triton)
    bufs = alloc()
    g_cum, rq, rk, w, u, h, v_new = bufs
    with L.call_recording() as rec:
        if gluon_prep:
            chunk_prep.launch_prep(k, v, g, beta, a, b, A_log, dt_bias, cu_seqlens, g_cum, w, u, out, l2)
        else:
            _launch_prep(q, k, v, g, beta, a, b, A_log, dt_bias, cu_seqlens, g_cum, w, u, out, rq, rk, scale, l2,
                         arch)
        if fused_gluon is not None:
            # the Gluon fused pass after the Triton first kernel (k, v the Gluon one declines): w and u, no norms
            # (not the head pass: it needs A')
            cfg_wu = gluon_state.fused_config(arch, N, HV, K, V, head=False)
            gluon_state.launch_state_output(k, w, u, q, g_cum, state, state_indices, cu_seqlens, has_initial_state,
                                            out, scale, l2, state_layout, dict(cfg_wu, A_PATH=False))
        elif fuse_triton:
            chunk_state.launch_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, None, None,
                                     q, out, scale, l2, state_layout, p["state"], arch, rq, rk)
        else:
            if state_impl.backend == "triton":
                chunk_state.launch_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h,
                                         v_new, None, None, 1.0, l2, state_layout, p["state"], arch, None, rk)
            else:
                state_impl.fn(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new,
                              use_qk_l2norm=l2, state_layout=state_layout)
            if out_impl.backend == "triton":
                chunk_output.launch_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, scale, l2,
                                           p["output"], arch, rq, rk)
            else:
                out_impl.fn(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, scale=scale, use_qk_l2norm=l2)
    _keep_plan(key, rec, inputs + bufs, alloc)


def _segmented(inputs, qkv, key, arch, seg, scale, l2, state_layout, gluon: bool, norms: bool) -> None:
    """Prefill with the sequences cut into segments of `seg` tokens (segments.py): the segment table, the first
    kernel, the transition pass (no output), the combine, the pass with the output over the segments, the end
    states into the pool. gluon (sm_90): the Gluon first kernel (A' out) and the warp-specialised pass for both
    passes; else the Triton kernels (w, u; norms: the [T, H] q/k norm buffers, as `prefill` decided)."""
    _, _, _, state, state_indices, cu_seqlens, out, g, beta, a, b, A_log, dt_bias, has_initial_state = inputs
    q, k, v = qkv
    T, H, K = q.shape
    HV, V = v.shape[1], v.shape[2]
    N = cu_seqlens.shape[0] - 1
    P = segments.num_segments(T, N, seg)
    wdt = C.dot_dtype(q.dtype)
    if gluon:
        from gdn.nvidia.gluon import chunk_prep
        from gdn.nvidia.gluon import chunk_state as gluon_state
        cfg1 = dict(gluon_state.fused_config(arch, P, HV, K, V + K), A_PATH=True, TRANSITION=True)
        cfg3 = dict(gluon_state.fused_config(arch, P, HV, K, V), A_PATH=True, PDL=False)
    else:
        cfg = chunk_state.config(arch, P, HV)

    def alloc():            # (g_cum, w or A', u or None, rq, rk, then segments.buffers)
        if gluon:
            g_cum, w, u, rk, rq, _ = _gluon_buffers(T, H, HV, K, V, wdt, q.device, True, l2)
        else:
            g_cum, rq, rk, w, u = _general_buffers(T, N, H, HV, K, V, wdt, q.device, norms, False)[:5]
        return (g_cum, w, u, rq, rk) + segments.buffers(T, N, HV, K, V, seg, q.device, queues=gluon)
    bufs = alloc()
    g_cum, w, u, rq, rk, cu_seg, seg_idx, seg_idx1, ext, xs, work1, work2 = bufs
    with L.call_recording() as rec:
        # the table first: the Gluon transition pass reads it before its PDL wait on the first kernel
        segments.launch_table(cu_seqlens, state_indices, cu_seg, seg_idx, seg_idx1, seg)
        if gluon:
            chunk_prep.launch_prep(k, v, g, beta, a, b, A_log, dt_bias, cu_seqlens, g_cum, None, None, out, l2, rk,
                                   a_out=w, q=q, rq=rq, trigger=gluon_state.pdl_pass(cfg1, q.device))
            gluon_state.launch_state_output(k, w, v, q, g_cum, ext, seg_idx1, cu_seg, None, None, scale, l2, "vk",
                                            cfg1, rk, rq, work1)
        else:
            _launch_prep(q, k, v, g, beta, a, b, A_log, dt_bias, cu_seqlens, g_cum, w, u, out, rq, rk, scale, l2,
                         arch)
            chunk_state.launch_state(k, w, u, g_cum, ext, seg_idx1, cu_seg, None, None, None, None, None, 1.0, l2,
                                     "vk", cfg, arch, None, rk, transition=True)
        segments.launch_combine(ext, xs, state, state_indices, has_initial_state, cu_seqlens, seg, state_layout,
                                arch, exact=q.dtype == torch.float32)
        if gluon:
            gluon_state.launch_state_output(k, w, v, q, g_cum, xs, seg_idx, cu_seg, None, out, scale, l2, "vk",
                                            cfg3, rk, rq, work2)
        else:
            chunk_state.launch_state(k, w, u, g_cum, xs, seg_idx, cu_seg, None, None, None, q, out, scale, l2, "vk",
                                     cfg, arch, rq, rk)
        segments.launch_combine(ext, xs, state, state_indices, has_initial_state, cu_seqlens, seg, state_layout,
                                arch, final=True)
    _keep_plan(key, rec, inputs + bufs, alloc)


def _keep_plan(key, rec, tensors, alloc) -> None:
    """The call plan of the launches in `rec` (L.CallPlan.make), kept under `key` when there is one."""
    if key is not None:
        cp = L.CallPlan.make(rec, tensors, alloc)
        if cp is not None:
            if len(_CALL_PLANS) >= _MAX_CALL_PLANS:
                _CALL_PLANS.clear()
            _CALL_PLANS[key] = cp


def sub_op_impl(op, q, v, state=None, state_layout=None):
    """The implementation of sub-op `op` (chunk_state, chunk_output) the registry picks for these operands:
    on sm_90 the Gluon kernels (TMA + wgmma) where their dtypes and head dims fit, else Triton's.
    GDN_DISABLE / GDN_BACKEND_<OP> steer them like any op; recording on meta tensors (AOT) keeps Triton, and
    so does a choice of the reference (the CPU default), which is the oracle, not a kernel of this pipeline."""
    if L.is_recording():
        return registry.get(op, "triton")
    props = dict(device=q.device, dtype=q.dtype, H=q.shape[1], HV=v.shape[1], K=q.shape[2], V=v.shape[2])
    if state is not None:
        props.update(state_dtype=state.dtype, layout=state_layout)
    impl = registry.select(op, props)
    return impl if impl.backend != "reference" else registry.get(op, "triton")


register(Impl(op="prefill", backend="triton", fn=prefill, archs=C.ARCHS, priority=10, requires=C.REQUIRES,
              dtypes=dtypes("bfloat16", "float16", "float32"), state_dtypes=dtypes("float32", "bfloat16"),
              layouts=("vk", "kv"), check=C.head_dim_reasons, interpretable=True, validated_on=("sm_90",),
              notes="chunked (64): fused gates+cumsum+kkt+solve+wy, state pass split over V (output fused "
                    "when wide), no host sync; state pass and output through the registry's chunk_state / "
                    "chunk_output choice (sm_90: Gluon, then also the first kernel and a warp-specialised state "
                    "pass with the output fused)"))
