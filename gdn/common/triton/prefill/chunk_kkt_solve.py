"""Triton chunk_kkt_solve: the inverse of the WY lower-triangular system of each 64-token chunk.

Kernel-level signature (reference: gdn/common/reference_chunk.py):
    chunk_kkt_solve(k, g_cum, beta, cu_seqlens, A, *, use_qk_l2norm)
    k [T,H,K] (l2-normalised in the kernel when use_qk_l2norm); g_cum [T,HV] fp32 chunk-local cumsum of g
    (64-token chunks, chunk_cumsum's output); beta [T,HV] post-sigmoid; cu_seqlens [N+1];
    A [T,HV,64] fp32 output. For a chunk with tokens t0..t0+L-1 (L <= 64) and v-head hv (reading k head
    hv // (HV // H)):  A[t0+i, hv, j] = ((I + strict_lower(diag(beta) K K^T * Gamma))^-1)[i, j] for j < L,
    zero for j >= L, with Gamma[i, j] = exp(g_cum[t0+i] - g_cum[t0+j]).

Solve: the four diagonal 16x16 blocks D at once as a batch [4, 16, 16]: D^16 = 0, so
(I + D)^-1 = (I - D)(I + D^2)(I + D^4)(I + D^8), six batched 16x16x16 products in fp32-exact precision
(3xTF32 on NVIDIA, "ieee" elsewhere). Then (I + N)^-1 = (I - M)(I + M^2) Dinv with M = Dinv E (E the
off-diagonal blocks, M^4 = 0): four 64x64 tl.dot products, i.e. blocked forward substitution written as
matmuls; tf32 for those when the inputs are 16-bit ("ieee" for fp32 inputs). The doubling replaced a
15-step row substitution whose cross-lane reductions dominated the prep kernel (H100, 8x4096: prep
1.29 -> 0.94 ms; w and u within 1e-5 of the substitution's). (The Gluon first kernel on sm_90 went the
other way: its substitution keeps each block column in one thread's registers, a layout Gluon lets it pick,
so no cross-lane reduction is left; gdn/nvidia/gluon/_chunk_prep_kernels.py `_tri_inv16`.) Doubling stays
inside 16x16 blocks: over the whole 64x64 tile the powers of N grow large for correlated keys and tf32
loses the result.
K K^T is taken on the raw keys (exact products of the 16-bit inputs) and the l2norm applied as row and
column scales. `kkt_solve_tile` is shared with prefill's fused first kernel.
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
def solve_unit_lower(Nm, PREC: tl.constexpr, PREC_EXACT: tl.constexpr):
    """(I + Nm)^-1 for a strictly lower-triangular fp32 [64, 64] tile."""
    r = tl.arange(0, 64)
    same = (r[:, None] // 16) == (r[None, :] // 16)
    eye = (r[:, None] == r[None, :]).to(tl.float32)
    # diagonal blocks as [4, 16, 16]: D[b, i, j] = Nm[16b + i, 16b + j]
    b4 = tl.arange(0, 4)
    sel = b4[:, None, None, None] == b4[None, None, :, None]
    D = tl.sum(tl.where(sel, tl.reshape(Nm, (4, 16, 4, 16)), 0.0), axis=2)
    i16 = tl.arange(0, 16)
    eye3 = tl.zeros((4, 16, 16), tl.float32) + (i16[:, None] == i16[None, :]).to(tl.float32)[None, :, :]
    X = eye3 - D
    Dp = D
    for _ in tl.static_range(3):          # X = (I - D)(I + D^2)(I + D^4)(I + D^8)
        Dp = tl.dot(Dp, Dp, input_precision=PREC_EXACT)
        X = tl.dot(X, eye3 + Dp, input_precision=PREC_EXACT)
    Dinv = tl.reshape(tl.where(sel, tl.expand_dims(X, 2), 0.0), (64, 64))
    M = tl.dot(Dinv, tl.where(same, 0.0, Nm), input_precision=PREC)
    M2 = tl.dot(M, M, input_precision=PREC)
    P = eye - M + M2 - tl.dot(M, M2, input_precision=PREC)
    return tl.dot(P, Dinv, input_precision=PREC)


@triton.jit
def kkt_solve_tile(kk, rk, beta, gc, valid, PREC: tl.constexpr, PREC_EXACT: tl.constexpr):
    """kk [64, 64] fp32 Gram matrix k_i.k_j of the raw keys of one chunk; rk (their inverse norms), beta,
    gc [64] fp32; valid [64] rows of the chunk. Returns
    (I + strict_lower(beta_i rk_i rk_j k_i.k_j exp(gc_i - gc_j)))^-1, fp32 [64, 64] (identity on
    rows/columns outside the chunk)."""
    r = tl.arange(0, 64)
    low = (r[:, None] > r[None, :]) & valid[:, None] & valid[None, :]
    decay = tl.exp(tl.where(low, gc[:, None] - gc[None, :], 0.0))
    return solve_unit_lower(tl.where(low, kk * (beta * rk)[:, None] * rk[None, :] * decay, 0.0), PREC, PREC_EXACT)


@triton.jit
def _chunk_kkt_solve_kernel(k, gcum, beta, cu, A, N, HV, G,
                            s_kt, s_kh, s_gt, s_gh, s_bt, s_bh, s_at, s_ah,
                            K: tl.constexpr, BK: tl.constexpr, BLOCK_N: tl.constexpr,
                            L2NORM: tl.constexpr, PREC: tl.constexpr, PREC_EXACT: tl.constexpr):
    s = tl.program_id(0)
    hv = tl.program_id(1)
    hk = hv // G
    n, t0, eos = C.seq_of_slot(cu, N, s, 64, BLOCK_N)
    if t0 < eos:
        o_t = tl.arange(0, 64)
        rows = t0 + o_t
        valid = rows < eos
        o_k = tl.arange(0, BK)
        kt = tl.load(k + rows[:, None] * s_kt + hk * s_kh + o_k[None, :],
                     mask=valid[:, None] & (o_k < K)[None, :], other=0)
        rk = C.inv_norm(kt.to(tl.float32), L2NORM)
        bb = tl.load(beta + rows * s_bt + hv * s_bh, mask=valid, other=0).to(tl.float32)
        gc = tl.load(gcum + rows * s_gt + hv * s_gh, mask=valid, other=0).to(tl.float32)
        Ai = kkt_solve_tile(tl.dot(kt, tl.trans(kt), input_precision=PREC), rk, bb, gc, valid, PREC, PREC_EXACT)
        Ai = tl.where(valid[None, :], Ai, 0.0)
        tl.store(A + rows[:, None] * s_at + hv * s_ah + o_t[None, :], Ai, mask=valid[:, None])


_CONFIGS = {
    ("nvidia", "big"): dict(num_warps=8, num_stages=1),
    "big": dict(num_warps=8, num_stages=1),
    "small": dict(num_warps=4, num_stages=1),
}


def chunk_kkt_solve(k, g_cum, beta, cu_seqlens, A, *, use_qk_l2norm):
    T, H, K = k.shape
    HV = g_cum.shape[1]
    N = cu_seqlens.shape[0] - 1
    if N <= 0 or T == 0:
        return
    k = C.last_dim_contiguous(k)
    arch = L.current_arch(k.device)
    BK = C.block_dim(K)
    cfg = L.pick(_CONFIGS, arch, "big" if BK >= 128 else "small", _CONFIGS["small"])
    L.launch(_chunk_kkt_solve_kernel, (C.num_slots(T, N), HV), k, g_cum, beta, cu_seqlens, A, N, HV, HV // H,
             k.stride(0), k.stride(1), g_cum.stride(0), g_cum.stride(1), beta.stride(0), beta.stride(1),
             A.stride(0), A.stride(1), K=K, BK=BK, BLOCK_N=C.block_n(N), L2NORM=bool(use_qk_l2norm),
             PREC=C.f32_precision(arch, k.dtype), PREC_EXACT=C.f32_exact_precision(arch), **cfg)


def _example(device, dtype=torch.bfloat16, lengths=(70, 5, 0, 67), H=16, HV=32, K=128):
    T = sum(lengths)
    e = lambda *shape, dt=torch.float32: C.example_tensor(device, *shape, dtype=dt)
    return (e(T, H, K, dt=dtype), e(T, HV), e(T, HV), C.example_cu(lengths, device), e(T, HV, 64)), \
        dict(use_qk_l2norm=True)


register(Impl(op="chunk_kkt_solve", backend="triton", fn=chunk_kkt_solve, archs=C.ARCHS, priority=10,
              requires=C.REQUIRES, dtypes=dtypes("bfloat16", "float16", "float32"), check=C.head_dim_reasons,
              interpretable=True, validated_on=(), notes="blocked forward substitution as tl.dot products"))
examples.register_kernel_example("chunk_kkt_solve", _example, [dict(dtype=torch.bfloat16), dict(dtype=torch.float32)])
