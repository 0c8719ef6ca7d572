"""causal_conv1d_update (portable Triton): one token per sequence through a depthwise causal conv.

x [B, D]; conv pool [S, D, W-1] (columns oldest to newest, any slot stride); weight [D, W]; bias [D] or
None; state_indices [B] (int32/int64, negative = padding: output row 0, slot untouched); out [B, D].
window = [pool[s], x] (W columns): out = act(sum_j window[:, j] * weight[:, j] + bias); then the window
drops its oldest column. Grid (B, D blocks); fp32 math; slot offsets int64.
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _conv1d_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, idx_ptr, out_ptr, D,
                          s_x, s_out, s_st0, s_st1, s_st2, s_w0, s_w1,
                          W: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    slot = tl.load(idx_ptr + i).to(tl.int64)
    live = slot >= 0
    sm = dm & live
    st = state_ptr + slot * s_st0 + d * s_st1
    x = tl.load(x_ptr + i * s_x + d, mask=dm, other=0.0).to(tl.float32)
    acc = x * tl.load(w_ptr + d * s_w0 + (W - 1) * s_w1, mask=dm, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)
    # column j is read before column j-1 is overwritten with it (same thread, same address order)
    for j in tl.static_range(W - 1):
        c = tl.load(st + j * s_st2, mask=sm, other=0.0)
        acc += c.to(tl.float32) * tl.load(w_ptr + d * s_w0 + j * s_w1, mask=dm, other=0.0).to(tl.float32)
        if j > 0:
            tl.store(st + (j - 1) * s_st2, c, mask=sm)
    tl.store(st + (W - 2) * s_st2, x.to(state_ptr.dtype.element_ty), mask=sm)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + i * s_out + d, tl.where(live, acc, 0.0).to(out_ptr.dtype.element_ty), mask=dm)


_CONFIGS = {
    ("nvidia", None): dict(BLOCK_D=256, num_warps=4),
    ("amd", None): dict(BLOCK_D=512, num_warps=4),
}


def causal_conv1d_update(x, conv_state, weight, bias, state_indices, out, *, activation):
    B, D = x.shape
    W = weight.shape[1]
    if B == 0:
        return
    if x.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError("gdn.causal_conv1d_update: x and out need unit column stride")
    arch = L.current_arch(x.device)
    cfg = L.pick(_CONFIGS, arch, None, dict(BLOCK_D=128, num_warps=4))
    block_d = min(cfg["BLOCK_D"], L.next_pow2(D))
    L.launch(_conv1d_update_kernel, (B, L.cdiv(D, block_d)),
             x, conv_state, weight, bias, state_indices, out, D,
             x.stride(0), out.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
             weight.stride(0), weight.stride(1),
             num_warps=cfg["num_warps"], num_stages=1, W=W, SILU=activation == "silu", BLOCK_D=block_d)


def _reasons(props) -> list[str]:
    W = props.get("W")
    return [f"conv width W={W} outside 2..4"] if W is not None and not 2 <= W <= 4 else []


register(Impl(op="causal_conv1d_update", backend="triton", fn=causal_conv1d_update, archs=PORTABLE_ARCHS,
              priority=10, requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"),
              state_dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons, validated_on=("sm_90",),
              interpretable=True, notes="grid (B, D blocks); W 2..4; -1 slots; int64 slot offsets"))
