"""Triton chunk_output: the output of each 64-token chunk from the state entering it.

Kernel-level signature (reference: gdn/common/reference_chunk.py):
    chunk_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, *, scale, use_qk_l2norm)
    q, k [T,H,K]; v_new [T,HV,V] and h [T//64 + N, HV, K, V] (chunk_state's outputs: h[s] is the KV-form
    state entering the chunk in slot s = cu[n] // 64 + n + c); g_cum [T,HV] fp32; state_indices [N];
    out [T,HV,V]. Per chunk and v-head, with q l2-normalised and scaled, k l2-normalised:
        o = (q * exp(g_cum)) h + causal(q k^T * exp(g_cum_i - g_cum_j)) v_new   (causal: j <= i)
    Rows of sequences with a negative slot are zero.

`out_tile` is shared with chunk_state, which evaluates it inside the sequential pass when prefill fuses
the output there.
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
def intra_scores(qd, kd, rq, rk, gc, PREC: tl.constexpr):
    """causal(q k^T * exp(gc_i - gc_j)) of one chunk, fp32 [BT, BT]: qd, kd [BT, BK] raw q / k in the dot
    dtype; rq (inverse q norms times scale), rk, gc [BT] fp32 (normalisation and scale are row/column
    factors of the product). Independent of the state, so the sequential pass computes it first."""
    s = tl.dot(qd, tl.trans(kd), input_precision=PREC) * rq[:, None] * rk[None, :]
    r = tl.arange(0, qd.shape[0])
    causal = r[:, None] >= r[None, :]
    return tl.where(causal, s * tl.exp(tl.where(causal, gc[:, None] - gc[None, :], 0.0)), 0.0)


@triton.jit
def out_tile(qd, hd, s, vd, rq, gc, PREC: tl.constexpr):
    """o = (q * exp(gc)) h + s v_new, fp32 [BT, BV]: qd [BT, BK] raw q, hd [BK, BV] state and vd [BT, BV]
    v_new in the dot dtype; s = intra_scores(...), split into two 16-bit parts for its product."""
    o = tl.dot(qd, hd, input_precision=PREC) * (rq * tl.exp(gc))[:, None]
    return o + C.dot_split(s, vd, PREC)


@triton.jit
def _chunk_output_kernel(q, k, v_new, h, gcum, state_indices, cu, o, rq_buf, rk_buf, N, HV, G, scale, s_rt,
                         s_qt, s_qh, s_kt, s_kh, s_nt, s_nh, s_hs, s_hh, s_hk, s_gt, s_gh, s_ot, s_oh,
                         K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         BLOCK_N: tl.constexpr, L2NORM: tl.constexpr, PREC: tl.constexpr):
    s = tl.program_id(0)
    hv = tl.program_id(1)
    i_v = tl.program_id(2)
    hk = hv // G
    n, t0, eos = C.seq_of_slot(cu, N, s, 64, BLOCK_N)
    if t0 < eos:
        DT = v_new.dtype.element_ty
        live = tl.load(state_indices + n) >= 0
        rows = t0 + tl.arange(0, 64)
        in_seq = rows < eos
        valid = in_seq & live
        o_k = tl.arange(0, BK)
        o_v = i_v * BV + tl.arange(0, BV)
        mk = valid[:, None] & (o_k < K)[None, :]
        mv = (o_v < V)[None, :]
        qt = tl.load(q + rows[:, None] * s_qt + hk * s_qh + o_k[None, :], mask=mk, other=0)
        kt = tl.load(k + rows[:, None] * s_kt + hk * s_kh + o_k[None, :], mask=mk, other=0)
        if rq_buf is not None:
            rq = tl.load(rq_buf + rows * s_rt + hk, mask=valid, other=0)
            rk = tl.load(rk_buf + rows * s_rt + hk, mask=valid, other=0)
        else:
            rq = C.inv_norm(qt.to(tl.float32), L2NORM) * scale
            rk = C.inv_norm(kt.to(tl.float32), L2NORM)
        gc = tl.load(gcum + rows * s_gt + hv * s_gh, mask=valid, other=0).to(tl.float32)
        hd = tl.load(h + s.to(tl.int64) * s_hs + hv * s_hh + o_k[:, None] * s_hk + o_v[None, :],
                     mask=((o_k < K)[:, None] & mv) & live, other=0)
        vd = tl.load(v_new + rows[:, None] * s_nt + hv * s_nh + o_v[None, :], mask=valid[:, None] & mv, other=0)
        qd = qt.to(DT)
        ot = out_tile(qd, hd.to(DT), intra_scores(qd, kt.to(DT), rq, rk, gc, PREC), vd, rq, gc, PREC)
        tl.store(o + rows[:, None] * s_ot + hv * s_oh + o_v[None, :], ot.to(o.dtype.element_ty),
                 mask=in_seq[:, None] & mv)


_CONFIGS = L.ConfigTable({
    "big": dict(BV=64, num_warps=4, num_stages=2),
    "small": dict(BV=64, num_warps=4, num_stages=1),
})


def config(arch: str, K: int, V: int) -> dict:
    big = max(C.block_dim(K), C.block_dim(V)) >= 128
    return dict(L.pick(_CONFIGS, arch, "big" if big else "small", _CONFIGS["small"]))


def launch_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, scale, use_qk_l2norm, cfg, arch, rq=None,
                  rk=None):
    T, H, K = q.shape
    HV, V = v_new.shape[1], v_new.shape[2]
    N = cu_seqlens.shape[0] - 1
    cfg = dict(cfg)
    BV = min(cfg.pop("BV"), C.block_dim(V))
    L.launch(_chunk_output_kernel, (C.num_slots(T, N), HV, L.cdiv(V, BV)), q, k, v_new, h, g_cum, state_indices,
             cu_seqlens, out, rq, rk, N, HV, HV // H, float(scale), H, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
             v_new.stride(0), v_new.stride(1), h.stride(0), h.stride(1), h.stride(2), g_cum.stride(0),
             g_cum.stride(1), out.stride(0), out.stride(1), K=K, V=V, BK=C.block_dim(K), BV=BV,
             BLOCK_N=C.block_n(N), L2NORM=bool(use_qk_l2norm), PREC=C.f32_precision(arch, q.dtype), **cfg)


def chunk_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, *, scale, use_qk_l2norm):
    N = cu_seqlens.shape[0] - 1
    if N <= 0 or q.shape[0] == 0:
        return
    q, k = C.last_dim_contiguous(q), C.last_dim_contiguous(k)
    arch = L.current_arch(q.device)
    launch_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, scale, use_qk_l2norm,
                  config(arch, q.shape[2], v_new.shape[2]), arch)


def _example(device, dtype=torch.bfloat16, lengths=(70, 5, 0, 67), H=16, HV=32, K=128, V=128):
    T, N = sum(lengths), len(lengths)
    e = lambda *shape, dt=torch.float32: C.example_tensor(device, *shape, dtype=dt)
    idx = torch.empty(N, dtype=torch.int32, device=device) if torch.device(device).type == "meta" \
        else torch.arange(N, dtype=torch.int32, device=device)
    return (e(T, H, K, dt=dtype), e(T, H, K, dt=dtype), e(T, HV, V, dt=dtype),
            e(C.num_slots(T, N), HV, K, V, dt=dtype), e(T, HV), idx, C.example_cu(lengths, device),
            e(T, HV, V, dt=dtype)), dict(scale=K ** -0.5, use_qk_l2norm=True)


register(Impl(op="chunk_output", backend="triton", fn=chunk_output, archs=C.ARCHS, priority=10,
              requires=C.REQUIRES, dtypes=dtypes("bfloat16", "float16", "float32"), check=C.head_dim_reasons,
              interpretable=True, validated_on=(), notes="one program per chunk, v-head and V block"))
examples.register_kernel_example("chunk_output", _example, [dict(dtype=torch.bfloat16), dict(dtype=torch.float32)])
