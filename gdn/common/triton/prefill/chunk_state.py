"""Triton chunk_state: the sequential inter-chunk pass of the chunked gated delta rule.

Kernel-level signature (reference: gdn/common/reference_chunk.py):
    chunk_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, *,
                use_qk_l2norm, state_layout)
    k [T,H,K]; w [T,HV,K], u [T,HV,V] (chunk_wy's outputs); g_cum [T,HV] fp32; state pool [S,HV,V,K]
    ("vk") or [S,HV,K,V] ("kv"), fp32 or bf16, any slot stride; state_indices [N]; has_initial_state [N]
    bool or None (all True); outputs h [T//64 + N, HV, K, V] and v_new [T,HV,V].
    For each sequence n and v-head, starting from the pool state (zeros where has_initial_state is
    False), chunk by chunk (slot s = cu[n] // 64 + n + c):
        h[s] = state entering the chunk (KV form, fp32 math, stored in h's dtype)
        v_new = u - w h
        state = exp(g_last) state + (k * exp(g_last - g_cum))^T v_new     (g_last: g_cum of the chunk's last token)
    and the final state is written into the slot, in the pool's dtype and layout. A negative slot: the
    pool is not touched and h, v_new of that sequence are zero. h slots holding no chunk stay untouched.

One program per (sequence, v-head, BV columns of the state): the state columns evolve independently, so
splitting V across programs multiplies the parallelism of this latency-bound pass (the long-sequence
cases have only N*HV (sequence, head) pairs). With FUSE_OUT (prefill's choice when there are enough
(sequence, head) pairs to fill the GPU) the program also evaluates chunk_output's formula in place and
writes o, so neither h nor v_new goes to memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn.common import examples
from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton.prefill import _common as C
from gdn.common.triton.prefill.chunk_output import intra_scores, out_tile


@triton.jit
def _chunk_state_kernel(k, w, u, gcum, state, state_indices, cu, has_init, h, v_new, q, o, rq_buf, rk_buf,
                        HV, G, scale, s_rt,
                        s_kt, s_kh, s_wt, s_wh, s_ut, s_uh, s_gt, s_gh,
                        s_ps, s_ph, s_pk, s_pv,
                        s_hs, s_hh, s_hk, s_nt, s_nh, s_qt, s_qh, s_ot, s_oh,
                        K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        L2NORM: tl.constexpr, FUSE_OUT: tl.constexpr, PREC: tl.constexpr, VU: tl.constexpr = 0):
    """VU > 0 (the segmented prefill's transition pass, segments.py): u's heads are VU columns wide, the state's
    columns past VU read u as zero, the state starts from [0 | I] (not the pool); h and v_new may then be None
    (only final states are written)."""
    pid = tl.program_id(0)
    i_v = tl.program_id(1)
    n = pid // HV
    hv = pid % HV
    hk = hv // G
    bos = tl.load(cu + n).to(tl.int64)
    eos = tl.load(cu + n + 1).to(tl.int64)
    slot = tl.load(state_indices + n).to(tl.int64)
    live = slot >= 0
    start = live
    if has_init is not None:
        start = start & (tl.load(has_init + n) != 0)

    o_t = tl.arange(0, 64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    m_u = m_v
    if VU > 0:
        m_u = m_v & (o_v < VU)
    p_s = state + slot * s_ps + hv * s_ph + o_k[:, None] * s_pk + o_v[None, :] * s_pv
    if VU > 0:      # the transition pass starts from [0 | I] (state column VU + i is e_i)
        hs = (o_k[:, None] == (o_v - VU)[None, :]).to(tl.float32)
    else:
        hs = tl.load(p_s, mask=m_h & start, other=0).to(tl.float32)
    DT = w.dtype.element_ty

    # loop-invariant int32 tile offsets; each chunk only moves scalar (int64) base pointers
    off_w = o_t[:, None] * s_wt + o_k[None, :]
    off_u = o_t[:, None] * s_ut + o_v[None, :]
    off_k = o_t[:, None] * s_kt + o_k[None, :]
    off_q = o_t[:, None] * s_qt + o_k[None, :]
    off_o = o_t[:, None] * s_ot + o_v[None, :]
    off_n = o_t[:, None] * s_nt + o_v[None, :]
    off_h = o_k[:, None] * s_hk + o_v[None, :]
    s0 = bos // 64 + n
    for c in range(0, (eos - bos + 63) // 64):
        t0 = bos + c * 64
        in_seq = t0 + o_t < eos
        valid = in_seq & live
        m_tk = valid[:, None] & m_k[None, :]
        m_tv = valid[:, None] & m_u[None, :]
        wt = tl.load(w + (t0 * s_wt + hv * s_wh) + off_w, mask=m_tk, other=0)
        ut = tl.load(u + (t0 * s_ut + hv * s_uh) + off_u, mask=m_tv, other=0)
        p_g = gcum + t0 * s_gt + hv * s_gh
        gc = tl.load(p_g + o_t * s_gt, mask=valid, other=0).to(tl.float32)
        g_last = tl.load(p_g + (tl.minimum(eos - t0, 64) - 1) * s_gt, mask=live, other=0).to(tl.float32)
        kd = tl.load(k + (t0 * s_kt + hk * s_kh) + off_k, mask=m_tk, other=0)
        if rk_buf is not None:
            rk = tl.load(rk_buf + (t0 * s_rt + hk) + o_t * s_rt, mask=valid, other=0)
        else:
            rk = C.inv_norm(kd.to(tl.float32), L2NORM)
        kd = kd.to(DT)
        if FUSE_OUT:
            qd = tl.load(q + (t0 * s_qt + hk * s_qh) + off_q, mask=m_tk, other=0)
            if rq_buf is not None:
                rq = tl.load(rq_buf + (t0 * s_rt + hk) + o_t * s_rt, mask=valid, other=0)
            else:
                rq = C.inv_norm(qd.to(tl.float32), L2NORM) * scale
            qd = qd.to(DT)
            s_qk = intra_scores(qd, kd, rq, rk, gc, PREC)       # off the state's dependency chain
        elif h is not None:
            tl.store(h + ((s0 + c) * s_hs + hv * s_hh) + off_h, hs.to(h.dtype.element_ty), mask=m_h)
        hd = hs.to(DT)
        vn = ut.to(tl.float32) - tl.dot(wt.to(DT), hd, input_precision=PREC)
        vd = vn.to(DT)
        if FUSE_OUT:
            ot = out_tile(qd, hd, s_qk, vd, rq, gc, PREC)
            tl.store(o + (t0 * s_ot + hv * s_oh) + off_o, ot.to(o.dtype.element_ty),
                     mask=in_seq[:, None] & m_v[None, :])
        elif v_new is not None:
            tl.store(v_new + (t0 * s_nt + hv * s_nh) + off_n, vn.to(v_new.dtype.element_ty),
                     mask=in_seq[:, None] & m_v[None, :])
        # state += k^T (v_new * rk * exp(g_last - g_cum)): the key's norm and decay ride on v_new's rows
        vs = (vn * (rk * tl.exp(g_last - gc))[:, None]).to(DT)
        hs = hs * tl.exp(g_last) + tl.dot(tl.trans(kd), vs, input_precision=PREC)
    tl.store(p_s, hs.to(state.dtype.element_ty), mask=m_h & live)


@triton.jit
def _chunk_state_tma_kernel(k, w, u, gcum, state, state_indices, cu, has_init, h, v_new, q, o, rq_buf, rk_buf,
                            HV, G, h_rows, scale, s_rt, s_kt, s_wt, s_ut, s_gt, s_gh, s_ps, s_ph, s_pk, s_pv, s_nt,
                            s_qt, s_ot,
                            K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                            FUSE_OUT: tl.constexpr, PREC: tl.constexpr):
    """The same pass with every [64, *] tile moved by TMA (sm_90+): tensor descriptors cut at the sequence's
    end (shape [eos, *]) zero-fill the tail chunk and never read or write the next sequence's rows, and the
    tiles land in shared memory in the wgmma layout. The pointer-tile version keeps [64, K] address tensors
    in registers and spills (ptxas, sm_90: 255 registers + 0.6-2 KB of spill per thread).
    Needs (checked by `tma_ok`): K and V equal to their tiles, q/k/w/u/o/v_new with contiguous [head, dim]
    rows, 16-byte aligned bases and row strides, contiguous h [slots, HV, K, V] (h_rows = slots * HV * K),
    and rq_buf / rk_buf (the precomputed inverse norms; None without l2norm)."""
    pid = tl.program_id(0)
    i_v = tl.program_id(1)
    n = pid // HV
    hv = pid % HV
    hk = hv // G
    bos = tl.load(cu + n).to(tl.int32)           # TMA coordinates are 32-bit
    eos = tl.load(cu + n + 1).to(tl.int32)
    NC = (eos - bos + 63) // 64
    slot = tl.load(state_indices + n).to(tl.int64)
    v0 = i_v * BV
    DT = w.dtype.element_ty
    o_t = tl.arange(0, 64)
    if FUSE_OUT:
        d_o = tl.make_tensor_descriptor(o + hv * V, [eos, V], [s_ot, 1], [64, BV])
    else:
        d_n = tl.make_tensor_descriptor(v_new + hv * V, [eos, V], [s_nt, 1], [64, BV])
        d_h = tl.make_tensor_descriptor(h, [h_rows, V], [V, 1], [BK, BV])
    s0 = bos // 64 + n
    if slot < 0:
        # skipped sequence: pool untouched; its rows of o (fused) or v_new, and its h slots, are zero
        for c in range(0, NC):
            if FUSE_OUT:
                d_o.store([bos + c * 64, v0], tl.zeros((64, BV), o.dtype.element_ty))
            else:
                d_n.store([bos + c * 64, v0], tl.zeros((64, BV), v_new.dtype.element_ty))
                d_h.store([((s0 + c) * HV + hv) * K, v0], tl.zeros((BK, BV), h.dtype.element_ty))
        return

    o_k = tl.arange(0, BK)
    o_v = v0 + tl.arange(0, BV)
    m_h = (o_k < K)[:, None] & (o_v < V)[None, :]
    p_s = state + slot * s_ps + hv * s_ph + o_k[:, None] * s_pk + o_v[None, :] * s_pv
    start = True
    if has_init is not None:
        start = tl.load(has_init + n) != 0
    hs = tl.load(p_s, mask=m_h & start, other=0).to(tl.float32)

    d_w = tl.make_tensor_descriptor(w + hv * K, [eos, K], [s_wt, 1], [64, BK])
    d_u = tl.make_tensor_descriptor(u + hv * V, [eos, V], [s_ut, 1], [64, BV])
    d_k = tl.make_tensor_descriptor(k + hk * K, [eos, K], [s_kt, 1], [64, BK])
    if FUSE_OUT:
        d_q = tl.make_tensor_descriptor(q + hk * K, [eos, K], [s_qt, 1], [64, BK])
    for c in range(0, NC):
        t0 = bos + c * 64
        valid = t0 + o_t < eos
        wt = d_w.load([t0, 0])
        ut = d_u.load([t0, v0])
        kd = d_k.load([t0, 0])
        p_g = gcum + t0.to(tl.int64) * s_gt + hv * s_gh
        gc = tl.load(p_g + o_t * s_gt, mask=valid, other=0).to(tl.float32)
        g_last = tl.load(p_g + (tl.minimum(eos - t0, 64) - 1) * s_gt).to(tl.float32)
        off_r = t0.to(tl.int64) * s_rt + hk + o_t * s_rt
        if rk_buf is not None:
            rk = tl.load(rk_buf + off_r, mask=valid, other=0)
        else:
            rk = tl.where(valid, 1.0, 0.0)
        if FUSE_OUT:
            qd = d_q.load([t0, 0])
            if rq_buf is not None:
                rq = tl.load(rq_buf + off_r, mask=valid, other=0)
            else:
                rq = tl.where(valid, scale, 0.0)
            s_qk = intra_scores(qd, kd, rq, rk, gc, PREC)       # off the state's dependency chain
        else:
            d_h.store([((s0 + c) * HV + hv) * K, v0], hs.to(h.dtype.element_ty))
        hd = hs.to(DT)
        vn = ut.to(tl.float32) - tl.dot(wt, hd, input_precision=PREC)
        if FUSE_OUT:
            d_o.store([t0, v0], out_tile(qd, hd, s_qk, vn.to(DT), rq, gc, PREC).to(o.dtype.element_ty))
        else:
            d_n.store([t0, v0], vn.to(v_new.dtype.element_ty))
        vs = (vn * (rk * tl.exp(g_last - gc))[:, None]).to(DT)
        hs = hs * tl.exp(g_last) + tl.dot(tl.trans(kd), vs, input_precision=PREC)
    tl.store(p_s, hs.to(state.dtype.element_ty), mask=m_h)


_CONFIGS = L.ConfigTable({
    # "narrow": few (sequence, v-head) pairs (long sequences): split V finely, the plain pass (prefill then
    # runs chunk_output over all chunks in parallel). "wide": enough pairs to fill the GPU: prefill fuses
    # the output into this pass. num_stages=1 is miscompiled on sm_90 (see MIN_STAGES).
    # sm_90 (the TMA kernel), from `bench/bench_prefill.py --sweep` on an H100, 2026-11-22 (whole prefill,
    # GPU time): 8x4096 fused BV=64/4 warps/2 stages 2.97 ms (BV=32: 3.34-3.68; 8 warps 3.26-4.78);
    # 1x32768 plain BV=32/4 warps/3 stages 3.12 ms (BV=16 3.21, BV=64 3.47).
    ("sm_90", "narrow"): dict(BV=32, num_warps=4, num_stages=3),
    ("sm_90", "wide"): dict(BV=64, num_warps=4, num_stages=2),
    ("nvidia", "narrow"): dict(BV=32, num_warps=4, num_stages=2),
    ("nvidia", "wide"): dict(BV=32, num_warps=4, num_stages=2),
    ("amd", "narrow"): dict(BV=32, num_warps=4, num_stages=2),
    ("amd", "wide"): dict(BV=32, num_warps=4, num_stages=1),
    "narrow": dict(BV=32, num_warps=4, num_stages=1),
    "wide": dict(BV=32, num_warps=4, num_stages=1),
})
NARROW_PAIRS = 128          # N * HV below this: "narrow"

# Triton 3.6 on sm_90 miscompiles this kernel's chunk loop when it is not software-pipelined
# (num_stages=1): the wgmma operands are read from shared memory out of range. Measured on an H100
# (K = V = 128, bf16, BV=32, 4 warps): compute-sanitizer reports "Invalid __shared__ read of size 1024
# bytes" in the fused pass (its hi/lo dot_split product) -> "illegal memory access"; the plain pass
# returns garbage (o rel err 1e4..1e28). num_stages=2, same everything else: both passes match the
# float64 recurrence. The interpreter ignores num_stages, so only a GPU run shows it. Upstream reports of
# the same class: triton-lang/triton#10486, #10573, #11366 (Hopper wgmma IMA since 3.6, 4 warps, 32-wide
# tiles). Every launch on these archs is clamped, whatever a table or a sweep asks for.
MIN_STAGES = {"sm_90": 2, "sm_90a": 2}


def bucket(N: int, HV: int) -> str:
    return "narrow" if N * HV < NARROW_PAIRS else "wide"


def config(arch: str, N: int, HV: int) -> dict:
    return dict(L.pick(_CONFIGS, arch, bucket(N, HV), _CONFIGS["narrow"]))


def pool_strides(state, state_layout):
    """(slot, head, k, v) strides of a pool in either layout."""
    s_slot, s_head, s2, s3 = state.stride()
    return (s_slot, s_head, s3, s2) if state_layout == "vk" else (s_slot, s_head, s2, s3)


TMA_ARCHS = ("sm_90", "sm_90a", "sm_100", "sm_100a")


def tma_ok(arch, k, w, u, h, v_new, q, out, rk, use_qk_l2norm) -> bool:
    """Whether the TMA kernel can take these tensors (see its docstring)."""
    if arch not in TMA_ARCHS or (rk is None and use_qk_l2norm):
        return False
    K, V = k.shape[2], u.shape[2]
    if K != C.block_dim(K) or V != C.block_dim(V):
        return False
    rows = [t for t in (k, w, u, v_new, q, out) if t is not None]
    if any(t.stride(2) != 1 or t.stride(1) != t.shape[2] or (t.stride(0) * t.element_size()) % 16
           or t.data_ptr() % 16 for t in rows):
        return False
    return h is None or (h.is_contiguous() and h.data_ptr() % 16 == 0)


def _tma_scratch(size: int, alignment: int, stream):
    """Global scratch for the kernels' on-device TMA descriptors (Triton asks through its allocator)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_tma_allocator() -> None:
    """Triton needs an allocator for device-side tensor descriptors; install ours unless the caller set one
    (the setting is per thread: Triton keeps it in a ContextVar)."""
    from triton.runtime import _allocation
    if _allocation._allocator.get() is _allocation._NULL_ALLOCATOR:
        triton.set_allocator(_tma_scratch)


def launch_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, q, out, scale,
                 use_qk_l2norm, state_layout, cfg, arch, rq=None, rk=None, transition=False):
    """h, v_new given: the plain pass; q, out given (h, v_new None): the pass with the output fused.
    rq, rk [T,H] fp32: precomputed inverse q norms (times scale) and k norms, else computed in the loop.
    transition (h, v_new, q, out None): the segmented prefill's first pass (segments.py): the state has V + K
    columns, of which the last K read u as zero; only final states are written."""
    T, H, K = k.shape
    HV, V = u.shape[1], u.shape[2]
    VU, V = (V, V + K) if transition else (0, V)
    N = cu_seqlens.shape[0] - 1
    cfg = dict(cfg)
    BV = min(cfg.pop("BV"), C.block_dim(V))
    cfg["num_stages"] = max(cfg.get("num_stages", 2), MIN_STAGES.get(arch, 1))
    fuse = out is not None
    st = lambda t, n: t.stride(n) if t is not None else 0
    if cfg.pop("TMA", True) and not transition and tma_ok(arch, k, w, u, h, v_new, q, out, rk, use_qk_l2norm):
        if not L.is_recording():
            ensure_tma_allocator()
        L.launch(_chunk_state_tma_kernel, (N * HV, L.cdiv(V, BV)), k, w, u, g_cum, state, state_indices, cu_seqlens,
                 has_initial_state, h, v_new, q, out, rq, rk, HV, HV // H, h.shape[0] * HV * K if h is not None else 0,
                 float(scale), H, k.stride(0), w.stride(0), u.stride(0), g_cum.stride(0), g_cum.stride(1),
                 *pool_strides(state, state_layout), st(v_new, 0), st(q, 0), st(out, 0),
                 K=K, V=V, BK=K, BV=BV, FUSE_OUT=fuse, PREC=C.f32_precision(arch, w.dtype), **cfg)
        return
    L.launch(_chunk_state_kernel, (N * HV, L.cdiv(V, BV)), k, w, u, g_cum, state, state_indices, cu_seqlens,
             has_initial_state, h, v_new, q, out, rq, rk, HV, HV // H, float(scale), H,
             k.stride(0), k.stride(1), w.stride(0), w.stride(1), u.stride(0), u.stride(1),
             g_cum.stride(0), g_cum.stride(1), *pool_strides(state, state_layout),
             st(h, 0), st(h, 1), st(h, 2), st(v_new, 0), st(v_new, 1), st(q, 0), st(q, 1), st(out, 0), st(out, 1),
             K=K, V=V, BK=C.block_dim(K), BV=BV, L2NORM=bool(use_qk_l2norm), FUSE_OUT=fuse,
             PREC=C.f32_precision(arch, w.dtype), VU=VU, **cfg)


def chunk_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, *, use_qk_l2norm,
                state_layout):
    N = cu_seqlens.shape[0] - 1
    if N <= 0:
        return
    k = C.last_dim_contiguous(k)
    arch = L.current_arch(k.device)
    launch_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, None, None, 1.0,
                 use_qk_l2norm, state_layout, config(arch, N, u.shape[1]), arch)


def _example(device, dtype=torch.bfloat16, state_dtype=torch.float32, layout="vk", lengths=(70, 5, 0, 67),
             H=16, HV=32, K=128, V=128):
    T, N = sum(lengths), len(lengths)
    e = lambda *shape, dt=torch.float32: C.example_tensor(device, *shape, dtype=dt)
    meta = torch.device(device).type == "meta"
    idx = torch.empty(N, dtype=torch.int32, device=device) if meta else torch.arange(N, dtype=torch.int32, device=device)
    pool = e(N + 1, HV, V, K, dt=state_dtype) if layout == "vk" else e(N + 1, HV, K, V, dt=state_dtype)
    return (e(T, H, K, dt=dtype), e(T, HV, K, dt=dtype), e(T, HV, V, dt=dtype), e(T, HV), pool, idx,
            C.example_cu(lengths, device), None, e(C.num_slots(T, N), HV, K, V, dt=dtype), e(T, HV, V, dt=dtype)), \
        dict(use_qk_l2norm=True, state_layout=layout)


register(Impl(op="chunk_state", backend="triton", fn=chunk_state, archs=C.ARCHS, priority=10, requires=C.REQUIRES,
              dtypes=dtypes("bfloat16", "float16", "float32"), state_dtypes=dtypes("float32", "bfloat16"),
              layouts=("vk", "kv"), check=C.head_dim_reasons, interpretable=True, validated_on=(),
              notes="one program per (sequence, v-head, BV state columns); configs by table, pools in place"))
examples.register_kernel_example("chunk_state", _example,
                                 [dict(dtype=dt, state_dtype=sd, layout=lay) for dt in (torch.bfloat16, torch.float32)
                                  for sd in (torch.float32, torch.bfloat16) for lay in ("vk", "kv")])
