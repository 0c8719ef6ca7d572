"""Triton chunk_wy: the WY representation of each 64-token chunk.

Kernel-level signature (reference: gdn/common/reference_chunk.py):
    chunk_wy(k, v, g_cum, beta, A, cu_seqlens, w, u, *, use_qk_l2norm)
    k [T,H,K]; v [T,HV,V]; g_cum, beta [T,HV] fp32; A [T,HV,64] (chunk_kkt_solve's output);
    outputs w [T,HV,K], u [T,HV,V] (any float dtype; prefill keeps them in the input dtype).
    Per chunk and v-head:  w = A (beta * exp(g_cum) * k),  u = A (beta * v)  (k l2-normalised when
    use_qk_l2norm; v-head hv reads k head hv // (HV // H)).

With h the state entering the chunk, v_new = u - w h is the chunk's delta-rule residual (chunk_state).
`w_tile` and `u_tile` are shared with prefill's fused first kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn.common import examples
from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton.prefill import _common as C


@triton.jit
def w_tile(Ai, kd, rk, beta, gc, PREC: tl.constexpr):
    """Ai [64, 64] fp32; kd [64, BK] raw keys in the dot dtype; rk (their inverse norms), beta, gc [64]
    fp32 -> w fp32 [64, BK]. The per-token factors fold into A's columns, so the 16-bit inputs enter the
    products exactly and A is split into hi + lo parts (C.dot_split)."""
    return C.dot_split(Ai * (beta * tl.exp(gc) * rk)[None, :], kd, PREC)


@triton.jit
def u_tile(Ai, vd, beta, PREC: tl.constexpr):
    """Ai [64, 64] fp32; vd [64, BV] raw values in the dot dtype; beta [64] fp32 -> u fp32 [64, BV]
    (as w_tile). Separate from w_tile so that a caller can store w before u's accumulator goes live."""
    return C.dot_split(Ai * beta[None, :], vd, PREC)


@triton.jit
def _chunk_wy_kernel(k, v, gcum, beta, A, w, u, cu, N, HV, G,
                     s_kt, s_kh, s_vt, s_vh, s_gt, s_gh, s_bt, s_bh, s_at, s_ah, s_wt, s_wh, s_ut, s_uh,
                     K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     BLOCK_N: tl.constexpr, L2NORM: tl.constexpr, PREC: tl.constexpr):
    s = tl.program_id(0)
    hv = tl.program_id(1)
    hk = hv // G
    n, t0, eos = C.seq_of_slot(cu, N, s, 64, BLOCK_N)
    if t0 < eos:
        o_t = tl.arange(0, 64)
        rows = t0 + o_t
        valid = rows < eos
        o_k = tl.arange(0, BK)
        o_v = tl.arange(0, BV)
        mk = valid[:, None] & (o_k < K)[None, :]
        mv = valid[:, None] & (o_v < V)[None, :]
        kt = tl.load(k + rows[:, None] * s_kt + hk * s_kh + o_k[None, :], mask=mk, other=0)
        rk = C.inv_norm(kt.to(tl.float32), L2NORM)
        vt = tl.load(v + rows[:, None] * s_vt + hv * s_vh + o_v[None, :], mask=mv, other=0)
        bb = tl.load(beta + rows * s_bt + hv * s_bh, mask=valid, other=0).to(tl.float32)
        gc = tl.load(gcum + rows * s_gt + hv * s_gh, mask=valid, other=0).to(tl.float32)
        Ai = tl.load(A + rows[:, None] * s_at + hv * s_ah + o_t[None, :],
                     mask=valid[:, None] & valid[None, :], other=0).to(tl.float32)
        wt = w_tile(Ai, kt, rk, bb, gc, PREC)
        tl.store(w + rows[:, None] * s_wt + hv * s_wh + o_k[None, :], wt.to(w.dtype.element_ty), mask=mk)
        ut = u_tile(Ai, vt.to(kt.dtype), bb, PREC)
        tl.store(u + rows[:, None] * s_ut + hv * s_uh + o_v[None, :], ut.to(u.dtype.element_ty), mask=mv)


_CONFIGS = {
    "big": dict(num_warps=8, num_stages=1),
    "small": dict(num_warps=4, num_stages=1),
}


def chunk_wy(k, v, g_cum, beta, A, cu_seqlens, w, u, *, use_qk_l2norm):
    T, H, K = k.shape
    HV, V = v.shape[1], v.shape[2]
    N = cu_seqlens.shape[0] - 1
    if N <= 0 or T == 0:
        return
    k, v = C.last_dim_contiguous(k), C.last_dim_contiguous(v)
    arch = L.current_arch(k.device)
    BK, BV = C.block_dim(K), C.block_dim(V)
    cfg = L.pick(_CONFIGS, arch, "big" if max(BK, BV) >= 128 else "small", _CONFIGS["small"])
    L.launch(_chunk_wy_kernel, (C.num_slots(T, N), HV), k, v, g_cum, beta, A, w, u, cu_seqlens, N, HV, HV // H,
             k.stride(0), k.stride(1), v.stride(0), v.stride(1), g_cum.stride(0), g_cum.stride(1),
             beta.stride(0), beta.stride(1), A.stride(0), A.stride(1), w.stride(0), w.stride(1),
             u.stride(0), u.stride(1), K=K, V=V, BK=BK, BV=BV, BLOCK_N=C.block_n(N),
             L2NORM=bool(use_qk_l2norm), PREC=C.f32_precision(arch, k.dtype), **cfg)


def _example(device, dtype=torch.bfloat16, lengths=(70, 5, 0, 67), H=16, HV=32, K=128, V=128):
    T = sum(lengths)
    e = lambda *shape, dt=torch.float32: C.example_tensor(device, *shape, dtype=dt)
    return (e(T, H, K, dt=dtype), e(T, HV, V, dt=dtype), e(T, HV), e(T, HV), e(T, HV, 64),
            C.example_cu(lengths, device), e(T, HV, K, dt=dtype), e(T, HV, V, dt=dtype)), dict(use_qk_l2norm=True)


register(Impl(op="chunk_wy", backend="triton", fn=chunk_wy, archs=C.ARCHS, priority=10, requires=C.REQUIRES,
              dtypes=dtypes("bfloat16", "float16", "float32"), check=C.head_dim_reasons, interpretable=True,
              validated_on=(), notes="w = A (beta exp(g_cum) k), u = A (beta v), one program per chunk and v-head"))
examples.register_kernel_example("chunk_wy", _example, [dict(dtype=torch.bfloat16), dict(dtype=torch.float32)])
