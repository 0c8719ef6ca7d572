"""causal_conv1d_update (ROCm, wave64-tuned Triton): single-token depthwise conv update.

x [B, D]; conv pool [S, D, W-1] (oldest column first, any slot stride); weight [D, W]; bias [D] or None;
state_indices [B] (negative: output 0, slot untouched); out [B, D]; fp32 math, int64 slot offsets.

ROCm flavour: the whole window is one [ROWS, BLOCK_D, WP] register tile (WP = W padded to a power of
two): one masked vector load brings a channel's W-1 state columns, the new token fills column W-1, the
output is a row reduction against the [BLOCK_D, WP] weight tile, and the shifted window is formed in
registers (select-and-reduce) and written back with one vector store per channel. ROWS batch rows share a
program so that a 64-lane wavefront keeps its lanes busy when D is small; the table is keyed by arch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.amd.triton import VALIDATION_NOTE
from gdn.common.registry import Impl, dtypes, register

AMD_ARCHS = ("gfx942", "gfx950")


@triton.jit
def _conv1d_update_window_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, idx_ptr, out_ptr, B, D,
                                 s_x, s_out, s_st0, s_st1, s_st2, s_w0, s_w1,
                                 W: tl.constexpr, WP: tl.constexpr, SILU: tl.constexpr,
                                 ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    j = tl.arange(0, WP)
    rm = r < B
    dm = d < D
    slot = tl.load(idx_ptr + r, mask=rm, other=-1).to(tl.int64)
    live = rm & (slot >= 0)
    d3 = d[None, :, None]
    j3 = j[None, None, :]
    st_m = live[:, None, None] & dm[None, :, None] & (j3 < W - 1)
    st_p = state_ptr + slot[:, None, None] * s_st0 + d3 * s_st1 + j3 * s_st2
    x = tl.load(x_ptr + r[:, None] * s_x + d[None, :], mask=rm[:, None] & dm[None, :], other=0.0)
    win = tl.load(st_p, mask=st_m, other=0.0).to(tl.float32)
    win = tl.where(j3 == W - 1, x.to(tl.float32)[:, :, None], win)                   # [ROWS, BLOCK_D, WP]
    w = tl.load(w_ptr + d[:, None] * s_w0 + j[None, :] * s_w1, mask=dm[:, None] & (j < W)[None, :], other=0.0)
    acc = tl.sum(win * w.to(tl.float32)[None, :, :], axis=2)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + r[:, None] * s_out + d[None, :], tl.where(live[:, None], acc, 0.0).to(out_ptr.dtype.element_ty),
             mask=rm[:, None] & dm[None, :])
    # new column c = window column c + 1, moved in registers (no re-read of the slot being overwritten)
    sel = (j[:, None] + 1) == j[None, :]                                              # [WP(c), WP(src)]
    shifted = tl.sum(tl.where(sel[None, None, :, :], win[:, :, None, :], 0.0), axis=3)
    tl.store(st_p, shifted.to(state_ptr.dtype.element_ty), mask=st_m)


# ROWS x BLOCK_D channels per program; 4 waves of 64 lanes
_CONFIGS = {
    ("amd", "wide"): dict(ROWS=1, BLOCK_D=512, num_warps=4),     # D >= 2048 (Qwen3-Next: 8192 / TP)
    ("amd", "narrow"): dict(ROWS=4, BLOCK_D=128, num_warps=4),
}


def causal_conv1d_update(x, conv_state, weight, bias, state_indices, out, *, activation):
    B, D = x.shape
    W = weight.shape[1]
    if B == 0:
        return
    if x.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError("gdn.causal_conv1d_update: x and out need unit column stride")
    arch = L.current_arch(x.device)
    cfg = L.pick(_CONFIGS, arch, "wide" if D >= 2048 else "narrow", dict(ROWS=1, BLOCK_D=256, num_warps=4))
    block_d = min(cfg["BLOCK_D"], L.next_pow2(D))
    rows = min(cfg["ROWS"], L.next_pow2(B))
    L.launch(_conv1d_update_window_kernel, (L.cdiv(B, rows), L.cdiv(D, block_d)),
             x, conv_state, weight, bias, state_indices, out, B, D,
             x.stride(0), out.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
             weight.stride(0), weight.stride(1),
             num_warps=cfg["num_warps"], num_stages=1, W=W, WP=L.next_pow2(W), SILU=activation == "silu",
             ROWS=rows, BLOCK_D=block_d)


def _reasons(props) -> list[str]:
    W = props.get("W")
    return [f"conv width W={W} outside 2..4"] if W is not None and not 2 <= W <= 4 else []


register(Impl(op="causal_conv1d_update", backend="amd-triton", fn=causal_conv1d_update, archs=AMD_ARCHS,
              priority=20, requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"),
              state_dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons, validated_on=(),
              interpretable=True, notes="window as one register tile, shift in registers, vector state I/O" + VALIDATION_NOTE))
