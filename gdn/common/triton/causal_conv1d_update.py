"""causal_conv1d_update (portable Triton): one token per sequence through a depthwise causal conv.

x [B, D]; conv pool [S, D, W-1] (columns oldest to newest, any slot stride); weight [D, W]; bias [D] or
None; state_indices [B] (int32/int64, negative = padding: output row 0, slot untouched); out [B, D].
window = [pool[s], x] (W columns): out = act(sum_j window[:, j] * weight[:, j] + bias); then the window
drops its oldest column. fp32 math; slot offsets int64.

A program takes ROWS batch rows x BLOCK_D channels; grid (row blocks, channel blocks). Every load (x, the
state window, weights) is issued before the first store, so a program waits for one memory round trip,
not one per state column. Two ways to move the state, by config (FLAT):
  FLAT  (slot rows [D, W-1] contiguous, the usual pool): the BLOCK_D*(W-1) state values of a row are one
        contiguous run, loaded and stored as 16-byte vectors. With W = 4 the run is taken as 8-channel
        groups of 24 values (three 8-wide vectors, one group per thread) and de-interleaved into state
        columns, and the shifted window interleaved back, by register moves (tl.split / tl.join); with
        W = 3 the run reshapes to [BLOCK_D, 2], with W = 2 it is the column itself;
  per-column (any strides): one strided load / store per state column.
The helpers `_win_load` (all loads of a channel segment) / `_win_finish` (math and stores) are shared with
conv1d_update_split. Launched with PDL on sm_90+ (gdn/common/triton/_pdl.py), as every decode-step op.
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton._pdl import pdl_prologue

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _unzip8(t):
    """[R, Q, 8] -> its 8 columns, each [R, Q] (register moves)."""
    ev, od = tl.split(tl.reshape(t, (t.shape[0], t.shape[1], 4, 2)))        # s = 0,2,4,6 / 1,3,5,7
    e0, e1 = tl.split(tl.reshape(ev, (t.shape[0], t.shape[1], 2, 2)))       # 0,4 / 2,6
    o0, o1 = tl.split(tl.reshape(od, (t.shape[0], t.shape[1], 2, 2)))       # 1,5 / 3,7
    a0, a4 = tl.split(e0)
    a2, a6 = tl.split(e1)
    a1, a5 = tl.split(o0)
    a3, a7 = tl.split(o1)
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _zip8(a0, a1, a2, a3, a4, a5, a6, a7):
    """Inverse of _unzip8: 8 tensors [R, Q] -> [R, Q, 8]."""
    t = tl.join(tl.join(tl.join(a0, a4), tl.join(a2, a6)), tl.join(tl.join(a1, a5), tl.join(a3, a7)))
    return tl.reshape(t, (a0.shape[0], a0.shape[1], 8))


@triton.jit
def _win_load(x_rows, st_rows, live, rm, xc0, ch0, D, w_ptr, bias_ptr, s_st1, s_st2, s_w0, s_w1,
              W: tl.constexpr, BN: tl.constexpr, FLAT: tl.constexpr, W_CONTIG: tl.constexpr):
    """Every load of one channel segment: channels ch0 + [0, BN) (valid below D) of the rows given by the
    pointer vectors x_rows (input rows; the segment starts at column xc0) and st_rows (slots; live rows only).
    Returns raw tiles (s0, s1, s2, x, wt, b) for `_win_finish`; their shapes depend on W and FLAT:
      FLAT, W == 4: s0..s2 = the three 8-wide vectors of each 8-channel group's 24 state values [R, BN/8, 8],
                    x [R, BN/8, 8] fp32, wt [BN/8, 8, 4], b [BN/8, 8]
      otherwise:    state columns [R, BN] (FLAT W == 3: s0 = the [R, 2BN] flat run), x [R, BN] fp32,
                    wt [BN, 2 or 4], b [BN]."""
    if FLAT and W == 4:
        Q: tl.constexpr = BN // 8
        q = tl.arange(0, Q)
        u = tl.arange(0, 8)
        cg = q[:, None] * 8 + u[None, :]                                    # [Q, 8] channel in the segment
        mg = (ch0 + cg) < D
        x = tl.load(x_rows[:, None, None] + (xc0 + cg)[None, :, :], mask=rm[:, None, None] & mg[None, :, :],
                    other=0.0).to(tl.float32)
        if bias_ptr is not None:
            b = tl.load(bias_ptr + ch0 + cg, mask=mg, other=0.0).to(tl.float32)
        else:
            b = tl.zeros([Q, 8], dtype=tl.float32)
        j = tl.arange(0, 4)
        ch3 = (ch0 + cg)[:, :, None]
        if W_CONTIG:
            wp = w_ptr + ch3 * 4 + j[None, None, :]
        else:
            wp = w_ptr + ch3 * s_w0 + j[None, None, :] * s_w1
        wt = tl.load(wp, mask=(ch3 < D), other=0.0).to(tl.float32)
        # the segment's state is the contiguous run st_rows + ch0*3 + [0, 3*BN): group q holds 24 values at
        # 24q, value e = 3s + j being state column j of channel 8q + s
        base = (st_rows + ch0 * 3)[:, None, None]
        lim = (D - ch0) * 3
        g = (q[:, None] * 24 + u[None, :])[None, :, :]
        lm = live[:, None, None]
        s0 = tl.load(base + g, mask=lm & (g < lim), other=0.0)
        s1 = tl.load(base + (g + 8), mask=lm & (g + 8 < lim), other=0.0)
        s2 = tl.load(base + (g + 16), mask=lm & (g + 16 < lim), other=0.0)
    else:
        c = tl.arange(0, BN)
        ch = ch0 + c
        m = ch < D
        x = tl.load(x_rows[:, None] + (xc0 + c)[None, :], mask=rm[:, None] & m[None, :], other=0.0).to(tl.float32)
        if bias_ptr is not None:
            b = tl.load(bias_ptr + ch, mask=m, other=0.0).to(tl.float32)
        else:
            b = tl.zeros([BN], dtype=tl.float32)
        WP: tl.constexpr = 2 if W == 2 else 4
        j = tl.arange(0, WP)
        if W_CONTIG:
            wp = w_ptr + ch[:, None] * W + j[None, :]
        else:
            wp = w_ptr + ch[:, None] * s_w0 + j[None, :] * s_w1
        wt = tl.load(wp, mask=m[:, None] & (j < W)[None, :], other=0.0).to(tl.float32)
        lm = live[:, None] & m[None, :]
        if FLAT:
            base = st_rows[:, None] + ch0 * (W - 1)
            if W == 2:
                s0 = tl.load(base + c[None, :], mask=lm, other=0.0)
            else:
                k = tl.arange(0, 2 * BN)
                s0 = tl.load(base + k[None, :], mask=live[:, None] & (k < (D - ch0) * 2)[None, :], other=0.0)
            s1 = s0
            s2 = s0
        else:
            sp = st_rows[:, None] + (ch * s_st1)[None, :]
            s0 = tl.load(sp, mask=lm, other=0.0)
            s1 = s0
            s2 = s0
            if W >= 3:
                s1 = tl.load(sp + s_st2, mask=lm, other=0.0)
            if W >= 4:
                s2 = tl.load(sp + 2 * s_st2, mask=lm, other=0.0)
    return s0, s1, s2, x, wt, b


@triton.jit
def _win_finish(s0, s1, s2, x, wt, b, out_rows, st_rows, live, rm, oc0, ch0, D, s_st1, s_st2,
                W: tl.constexpr, BN: tl.constexpr, FLAT: tl.constexpr, SILU: tl.constexpr):
    """Output of one segment (channels ch0 + [0, BN) to out_rows + oc0 + c) and its shifted state, from
    `_win_load`'s tiles. Register moves only (split/join); fp32 math."""
    R: tl.constexpr = x.shape[0]
    st_ty = st_rows.dtype.element_ty
    if FLAT and W == 4:
        Q: tl.constexpr = BN // 8
        q = tl.arange(0, Q)
        u = tl.arange(0, 8)
        cg = q[:, None] * 8 + u[None, :]
        mg = (ch0 + cg) < D
        e0, e1, e2, e3, e4, e5, e6, e7 = _unzip8(s0)
        e8, e9, e10, e11, e12, e13, e14, e15 = _unzip8(s1)
        e16, e17, e18, e19, e20, e21, e22, e23 = _unzip8(s2)
        c0 = _zip8(e0, e3, e6, e9, e12, e15, e18, e21).to(tl.float32)
        c1 = _zip8(e1, e4, e7, e10, e13, e16, e19, e22).to(tl.float32)
        c2 = _zip8(e2, e5, e8, e11, e14, e17, e20, e23).to(tl.float32)
        wa, wb = tl.split(tl.reshape(wt, (Q, 8, 2, 2)))                   # j = 2a + b
        w0, w2 = tl.split(wa)
        w1, w3 = tl.split(wb)
        acc = b[None] + c0 * w0[None] + c1 * w1[None] + c2 * w2[None] + x * w3[None]
        if SILU:
            acc = acc * tl.sigmoid(acc)
        acc = tl.where(live[:, None, None], acc, 0.0)
        tl.store(out_rows[:, None, None] + (oc0 + cg)[None, :, :], acc.to(out_rows.dtype.element_ty),
                 mask=rm[:, None, None] & mg[None, :, :])
        # new value e = 3s + j of a group: old column j + 1 of channel s (j < 2), else x of channel s
        x0, x1, x2, x3, x4, x5, x6, x7 = _unzip8(x.to(st_ty))
        base = (st_rows + ch0 * 3)[:, None, None]
        lim = (D - ch0) * 3
        g = (q[:, None] * 24 + u[None, :])[None, :, :]
        lm = live[:, None, None]
        tl.store(base + g, _zip8(e1, e2, x0, e4, e5, x1, e7, e8), mask=lm & (g < lim))
        tl.store(base + (g + 8), _zip8(x2, e10, e11, x3, e13, e14, x4, e16), mask=lm & (g + 8 < lim))
        tl.store(base + (g + 16), _zip8(e17, x5, e19, e20, x6, e22, e23, x7), mask=lm & (g + 16 < lim))
    else:
        c = tl.arange(0, BN)
        ch = ch0 + c
        m = ch < D
        if FLAT and W == 3:
            c0, c1 = tl.split(tl.reshape(s0, (R, BN, 2)))
            c2 = c0
        else:
            c0 = s0
            c1 = s1
            c2 = s2
        if W == 2:
            w0, w1 = tl.split(wt)
            acc = b[None, :] + c0.to(tl.float32) * w0[None, :] + x * w1[None, :]
        else:
            wa, wb = tl.split(tl.reshape(wt, (BN, 2, 2)))
            w0, w2 = tl.split(wa)
            w1, w3 = tl.split(wb)
            acc = b[None, :] + c0.to(tl.float32) * w0[None, :] + c1.to(tl.float32) * w1[None, :]
            if W == 3:
                acc += x * w2[None, :]
            else:
                acc += c2.to(tl.float32) * w2[None, :] + x * w3[None, :]
        if SILU:
            acc = acc * tl.sigmoid(acc)
        acc = tl.where(live[:, None], acc, 0.0)
        tl.store(out_rows[:, None] + (oc0 + c)[None, :], acc.to(out_rows.dtype.element_ty),
                 mask=rm[:, None] & m[None, :])
        xs = x.to(st_ty)
        lm = live[:, None] & m[None, :]
        if FLAT:
            base = st_rows[:, None] + ch0 * (W - 1)
            if W == 2:
                tl.store(base + c[None, :], xs, mask=lm)
            else:
                k = tl.arange(0, 2 * BN)
                tl.store(base + k[None, :], tl.reshape(tl.join(c1, xs), (R, 2 * BN)),
                         mask=live[:, None] & (k < (D - ch0) * 2)[None, :])
        else:
            sp = st_rows[:, None] + (ch * s_st1)[None, :]
            if W == 2:
                tl.store(sp, xs, mask=lm)
            elif W == 3:
                tl.store(sp, c1, mask=lm)
                tl.store(sp + s_st2, xs, mask=lm)
            else:
                tl.store(sp, c1, mask=lm)
                tl.store(sp + s_st2, c2, mask=lm)
                tl.store(sp + 2 * s_st2, xs, mask=lm)


@triton.jit
def _conv1d_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, idx_ptr, out_ptr, B, D,
                          s_x, s_out, s_st0, s_st1, s_st2, s_w0, s_w1,
                          W: tl.constexpr, SILU: tl.constexpr, ROWS: tl.constexpr,
                          BLOCK_D: tl.constexpr, FLAT: tl.constexpr, W_CONTIG: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    ch0 = tl.program_id(1) * BLOCK_D
    rm = r < B
    slot = tl.load(idx_ptr + r, mask=rm, other=-1).to(tl.int64)
    live = rm & (slot >= 0)
    st_rows = state_ptr + tl.where(live, slot, 0) * s_st0
    s0, s1, s2, x, wt, b = _win_load(x_ptr + r * s_x, st_rows, live, rm, ch0, ch0, D, w_ptr, bias_ptr,
                             s_st1, s_st2, s_w0, s_w1, W, BLOCK_D, FLAT, W_CONTIG)
    _win_finish(s0, s1, s2, x, wt, b, out_ptr + r * s_out, st_rows, live, rm, ch0, ch0, D,
                s_st1, s_st2, W, BLOCK_D, FLAT, SILU)


# (arch, bucket) -> config. Buckets: "large" (B >= 256 rows) / "small", then "wide" (D >= 2048, Qwen3-Next:
# 8192 / TP) / "narrow". FLAT applies only where the pool's slot rows are contiguous ([D, W-1], unit column
# stride); with W == 4 it works on 8-channel groups, one or more per thread (`fit_warps`).
_CONFIGS = {
    # H100 sweep (bench_edge_ops.py --sweep, 2026-11-22, triton 3.6.0): 387.3 us, 92.5% of copy at B=8192
    ("sm_90", ("large", "wide")): dict(ROWS=2, num_warps=2, FLAT=True, BLOCK_D=256),
    # same sweep: 7.3 us at B=32 (launch-bound, 19.6% of copy)
    ("sm_90", ("small", "wide")): dict(ROWS=1, num_warps=2, FLAT=True, BLOCK_D=512),
    ("nvidia", ("large", "wide")): dict(ROWS=1, BLOCK_D=1024, num_warps=4, FLAT=True),
    ("nvidia", ("large", "narrow")): dict(ROWS=4, BLOCK_D=256, num_warps=4, FLAT=True),
    ("nvidia", ("small", "wide")): dict(ROWS=1, BLOCK_D=256, num_warps=1, FLAT=True),
    ("nvidia", ("small", "narrow")): dict(ROWS=2, BLOCK_D=128, num_warps=1, FLAT=True),
    ("amd", ("large", "wide")): dict(ROWS=2, BLOCK_D=1024, num_warps=4, FLAT=True),
    ("amd", ("large", "narrow")): dict(ROWS=4, BLOCK_D=512, num_warps=4, FLAT=True),
    ("amd", ("small", "wide")): dict(ROWS=1, BLOCK_D=512, num_warps=1, FLAT=True),
    ("amd", ("small", "narrow")): dict(ROWS=2, BLOCK_D=256, num_warps=1, FLAT=True),
}
_DEFAULT = dict(ROWS=1, BLOCK_D=256, num_warps=2, FLAT=True)


def bucket(B: int, D: int) -> tuple[str, str]:
    return ("large" if B >= 256 else "small", "wide" if D >= 2048 else "narrow")


def fit_warps(num_warps: int, rows: int, bn: int, flat4: bool, arch: str) -> int:
    """Warps for a FLAT W=4 tile of rows x bn channels: at most one warp-width of 8-channel groups per warp
    (a smaller tile would split groups over threads and move them through shared memory)."""
    if not flat4:
        return num_warps
    lanes = 64 if L.is_amd(arch) else 32
    return max(1, min(num_warps, rows * bn // (8 * lanes)))


def flat_ok(conv_state, W: int) -> bool:
    """Whether each slot's [D, W-1] block is one contiguous run (the FLAT state path applies)."""
    return conv_state.stride(2) == 1 and (conv_state.stride(1) == W - 1 or conv_state.shape[1] == 1)


def causal_conv1d_update(x, conv_state, weight, bias, state_indices, out, *, activation, config=None):
    """`config` (a dict like the table's entries) overrides the table: for sweeps only."""
    B, D = x.shape
    W = weight.shape[1]
    if B == 0 or D == 0:
        return
    if x.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError("gdn.causal_conv1d_update: x and out need unit column stride")
    arch = L.current_arch(x.device)
    cfg = config or L.pick(_CONFIGS, arch, bucket(B, D), _DEFAULT)
    block_d = min(cfg["BLOCK_D"], L.next_pow2(D))
    rows = min(cfg["ROWS"], L.next_pow2(B))
    flat = bool(cfg["FLAT"]) and flat_ok(conv_state, W) and (W < 4 or block_d >= 8)
    grid = (L.cdiv(B, rows), L.cdiv(D, block_d))
    pdl = L.use_pdl(arch, grid)
    L.launch(_conv1d_update_kernel, grid,
             x, conv_state, weight, bias, state_indices, out, B, D,
             x.stride(0), out.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
             weight.stride(0), weight.stride(1),
             num_warps=fit_warps(cfg["num_warps"], rows, block_d, flat and W == 4, arch), num_stages=1, pdl=pdl,
             W=W, SILU=activation == "silu", ROWS=rows, BLOCK_D=block_d, FLAT=flat,
             W_CONTIG=weight.stride(1) == 1 and weight.stride(0) == W, PDL=pdl)


def _reasons(props) -> list[str]:
    W = props.get("W")
    return [f"conv width W={W} outside 2..4"] if W is not None and not 2 <= W <= 4 else []


register(Impl(op="causal_conv1d_update", backend="triton", fn=causal_conv1d_update, archs=PORTABLE_ARCHS,
              priority=10, requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"),
              state_dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons, validated_on=("sm_90",),
              interpretable=True,
              notes="grid (row blocks, D blocks); loads before stores; flat 16-byte state I/O de-interleaved "
                    "on chip; W 2..4; -1 slots; int64 slot offsets"))
