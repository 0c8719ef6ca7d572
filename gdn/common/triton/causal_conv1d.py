"""causal_conv1d (portable Triton): depthwise causal conv over packed varlen tokens, prefill.

x [T, D] packed by cu_seqlens [N+1] (int32/int64, zero-length sequences legal); weight [D, W]; bias [D] or
None; conv pool [S, D, W-1] (oldest column first, any slot stride); state_indices [N] (negative = padding:
outputs 0, slot untouched); has_initial_state [N] bool or None (= all True); out [T, D].
Sequence n sees the window [init | x[cu[n]:cu[n+1]]] with init = pool[slot] where has_initial_state else 0;
afterwards its slot holds the last W-1 columns of that window (a short sequence keeps part of the old one).

Two launches, no host sync (the launcher never reads cu_seqlens):
  1. outputs, grid (token blocks, D blocks): each token finds its sequence by binary search over
     cu_seqlens; taps before the sequence start read the initial window.
  2. state write-back, grid (N, D blocks), after 1 has read every initial window.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _causal_conv1d_fwd_kernel(x_ptr, w_ptr, bias_ptr, cu_ptr, state_ptr, idx_ptr, init_ptr, out_ptr, T, N, D,
                              s_x, s_out, s_st0, s_st1, s_st2, s_w0, s_w1,
                              W: tl.constexpr, SILU: tl.constexpr, SEARCH_STEPS: tl.constexpr,
                              BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    tm = t < T
    dm = d < D
    # sequence of each token: the largest n in [0, N) with cu[n] <= t (skips zero-length sequences)
    lo = tl.zeros([BLOCK_T], dtype=tl.int32)
    hi = tl.zeros([BLOCK_T], dtype=tl.int32) + (N - 1)
    for _ in tl.static_range(SEARCH_STEPS):
        mid = (lo + hi + 1) // 2
        go = tl.load(cu_ptr + mid).to(tl.int64) <= t
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid - 1)
    start = tl.load(cu_ptr + lo).to(tl.int64)
    slot = tl.load(idx_ptr + lo, mask=tm, other=-1).to(tl.int64)
    live = tm & (slot >= 0)
    from_pool = live
    if init_ptr is not None:
        from_pool = from_pool & (tl.load(init_ptr + lo, mask=tm, other=0) != 0)
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)[None, :]
    for j in tl.static_range(W):
        p = t - (W - 1) + j                 # input position of tap j
        in_x = p >= start
        xv = tl.load(x_ptr + p[:, None] * s_x + d[None, :], mask=(live & in_x)[:, None] & dm[None, :], other=0.0)
        xv = xv.to(tl.float32)
        if j < W - 1:                       # tap j == W-1 is the token itself
            col = p - start + (W - 1)       # column of the initial window, in [0, W-2] when not in_x
            sp = state_ptr + slot[:, None] * s_st0 + d[None, :] * s_st1 + col[:, None] * s_st2
            sm = (from_pool & (p < start))[:, None] & dm[None, :]
            xv += tl.load(sp, mask=sm, other=0.0).to(tl.float32)
        acc += xv * tl.load(w_ptr + d * s_w0 + j * s_w1, mask=dm, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    acc = tl.where(live[:, None], acc, 0.0)
    tl.store(out_ptr + t[:, None] * s_out + d[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=tm[:, None] & dm[None, :])


@triton.jit
def _causal_conv1d_state_kernel(x_ptr, cu_ptr, state_ptr, idx_ptr, init_ptr, D,
                                s_x, s_st0, s_st1, s_st2,
                                W: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    slot = tl.load(idx_ptr + n).to(tl.int64)
    live = slot >= 0
    start = tl.load(cu_ptr + n).to(tl.int64)
    end = tl.load(cu_ptr + n + 1).to(tl.int64)
    keep = live
    if init_ptr is not None:
        keep = keep & (tl.load(init_ptr + n) != 0)
    st = state_ptr + slot * s_st0 + d * s_st1
    # new column c = window column (end - start) + c: an input if that lies in the sequence, else the old
    # column c + L; ascending c reads column c + L >= c before anything at or past it is overwritten
    for c in tl.static_range(W - 1):
        p = end - (W - 1) + c
        xv = tl.load(x_ptr + p * s_x + d, mask=dm & live & (p >= start), other=0.0)
        old = tl.load(st + (c + (end - start)) * s_st2, mask=dm & keep & (p < start), other=0.0)
        tl.store(st + c * s_st2, (xv.to(tl.float32) + old.to(tl.float32)).to(state_ptr.dtype.element_ty),
                 mask=dm & live)


_CONFIGS = {
    ("nvidia", None): dict(BLOCK_T=32, BLOCK_D=128, num_warps=4, STATE_BLOCK_D=256),
    ("amd", None): dict(BLOCK_T=32, BLOCK_D=128, num_warps=4, STATE_BLOCK_D=512),
}


def causal_conv1d(x, weight, bias, cu_seqlens, conv_state, state_indices, has_initial_state, out, *, activation):
    T, D = x.shape
    W = weight.shape[1]
    N = state_indices.shape[0]
    if x.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError("gdn.causal_conv1d: x and out need unit column stride")
    arch = L.current_arch(x.device)
    cfg = L.pick(_CONFIGS, arch, None, dict(BLOCK_T=16, BLOCK_D=64, num_warps=4, STATE_BLOCK_D=128))
    init = None if has_initial_state is None else has_initial_state.view(torch.uint8)
    if T > 0 and N > 0:
        block_t = min(cfg["BLOCK_T"], L.next_pow2(T))
        block_d = min(cfg["BLOCK_D"], L.next_pow2(D))
        L.launch(_causal_conv1d_fwd_kernel, (L.cdiv(T, block_t), L.cdiv(D, block_d)),
                 x, weight, bias, cu_seqlens, conv_state, state_indices, init, out, T, N, D,
                 x.stride(0), out.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
                 weight.stride(0), weight.stride(1),
                 num_warps=cfg["num_warps"], num_stages=1, W=W, SILU=activation == "silu",
                 SEARCH_STEPS=max(1, (N - 1).bit_length()), BLOCK_T=block_t, BLOCK_D=block_d)
    if N > 0:
        block_d = min(cfg["STATE_BLOCK_D"], L.next_pow2(D))
        L.launch(_causal_conv1d_state_kernel, (N, L.cdiv(D, block_d)),
                 x, cu_seqlens, conv_state, state_indices, init, D,
                 x.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
                 num_warps=4, num_stages=1, W=W, BLOCK_D=block_d)


def _reasons(props) -> list[str]:
    W = props.get("W")
    return [f"conv width W={W} outside 2..4"] if W is not None and not 2 <= W <= 4 else []


register(Impl(op="causal_conv1d", backend="triton", fn=causal_conv1d, archs=PORTABLE_ARCHS, priority=10,
              requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"),
              state_dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons, validated_on=("sm_90",),
              interpretable=True,
              notes="two launches (outputs by token block with an in-kernel sequence search, then states); no host sync"))
