"""Triton chunk_cumsum: chunk-local prefix sums of the log-decay g, vectorised over heads.

Kernel-level signature (gdn/common/reference.py):
    chunk_cumsum(g, cu_seqlens, out, *, chunk_size)
    g [T,HV] (any float dtype); cu_seqlens [N+1] int32/int64; out fp32 [T,HV]:
    out[t] = sum of g over the tokens of t's chunk up to and including t (chunks of chunk_size tokens,
    restarting at every sequence start).

One program owns a [chunk, BH] tile (all heads of a chunk when HV <= BH): coalesced rows of g, one
tl.cumsum down the tile. The gate helpers below (raw a/A_log/dt_bias -> g, b -> beta) are shared with
prefill, which fuses gates + cumsum into its first kernel instead of launching this one.
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton.prefill import _common as C


@triton.jit
def softplus(x):
    # threshold 20 like the spec; log1p(e) = log(1 + e) * e / ((1 + e) - 1) stays accurate for tiny e
    e = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + e
    lp = tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def raw_gate_g(a, A_log, dt_bias):
    """g = -exp(A_log) * softplus(a + dt_bias), fp32."""
    return -tl.exp(A_log) * softplus(a + dt_bias)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _chunk_cumsum_kernel(g, out, cu, N, HV, s_gt, s_gh, s_ot, s_oh,
                         CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BH: tl.constexpr, BLOCK_N: tl.constexpr):
    s = tl.program_id(0)
    i_h = tl.program_id(1)
    n, t0, eos = C.seq_of_slot(cu, N, s, CHUNK, BLOCK_N)
    if t0 < eos:
        o_t = tl.arange(0, BLOCK_T)
        rows = t0 + o_t
        heads = i_h * BH + tl.arange(0, BH)
        m = ((rows < eos) & (o_t < CHUNK))[:, None] & (heads < HV)[None, :]
        x = tl.load(g + rows[:, None] * s_gt + heads[None, :] * s_gh, mask=m, other=0).to(tl.float32)
        tl.store(out + rows[:, None] * s_ot + heads[None, :] * s_oh, tl.cumsum(x, axis=0), mask=m)


_CONFIGS = {
    # bucket: BH (heads per program) -> launch options
    "any": dict(num_warps=4, num_stages=1),
}


def chunk_cumsum(g, cu_seqlens, out, *, chunk_size):
    T, HV = g.shape
    N = cu_seqlens.shape[0] - 1
    if N <= 0 or T == 0:
        return
    arch = L.current_arch(g.device)
    cfg = L.pick(_CONFIGS, arch, "any", _CONFIGS["any"])
    BH = min(64, max(2, L.next_pow2(HV)))
    BLOCK_T = max(2, L.next_pow2(chunk_size))
    grid = (C.num_slots(T, N, chunk_size), L.cdiv(HV, BH))
    L.launch(_chunk_cumsum_kernel, grid, g, out, cu_seqlens, N, HV, g.stride(0), g.stride(1),
             out.stride(0), out.stride(1), CHUNK=chunk_size, BLOCK_T=BLOCK_T, BH=BH,
             BLOCK_N=C.block_n(N), **cfg)


register(Impl(op="chunk_cumsum", backend="triton", fn=chunk_cumsum, archs=C.ARCHS, priority=10,
              requires=C.REQUIRES, dtypes=dtypes("bfloat16", "float16", "float32"), interpretable=True,
              validated_on=("sm_90",), notes="one program per [chunk, heads] tile; no host sync"))
