"""rms_norm_gated_fp8 (portable Triton): gated RMSNorm then FP8 group quantisation, one pass.

x, z [M, V], weight [V] -> y [M, V] fp8 (e4m3fn or e4m3fnuz: y's dtype says which), scales
[M, V // group_size] fp32 with scale = max(absmax / fp8_max, 1 / (fp8_max * 512)), y = clamp(v / scale).
fp8_max comes from the caller (448 for e4m3fn, 224 for e4m3fnuz as aiter uses). fp32 math.
A program holds ROWS rows: with a power-of-two group_size as one [ROWS, V] tile (V padded to a multiple of
the group count's power of two), the groups taken by reshaping it to [ROWS, groups, group_size]; with any
other group_size dividing V as a [ROWS, groups, group_size] tile, both padded to powers of two. The fp8
store (gdn/common/triton/_fp8.py `fp8_mode`): the hardware cvt where the arch has the format; e4m3fnuz
where only e4m3fn is in hardware (sm_89+) through the e4m3fn cvt of 2v (same bits for |v| <= 224);
elsewhere bit-exact software rounding. Launched with PDL on sm_90+ (gdn/common/triton/_pdl.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton._pdl import pdl_prologue
from gdn.common.triton._fp8 import fp8_mode, fp8_store_value

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _rms_norm_gated_fp8_kernel(x_ptr, z_ptr, w_ptr, y_ptr, s_ptr, M, s_x, s_z, s_y, s_s, eps,
                               V: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr, BGS: tl.constexpr,
                               BNG: tl.constexpr, ROWS: tl.constexpr, FP8_MAX: tl.constexpr,
                               MODE: tl.constexpr, EXP_BIAS: tl.constexpr, GROUPED: tl.constexpr,
                               PDL: tl.constexpr):
    pdl_prologue(PDL)
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rm = r < M
    if GROUPED:
        # group_size a power of two: a [ROWS, BV] tile (BV = BNG * GS), groups by reshape
        BV: tl.constexpr = BNG * GS
        c = tl.arange(0, BV)
        m = rm[:, None] & (c < V)[None, :]
        x = tl.load(x_ptr + r[:, None] * s_x + c[None, :], mask=m, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + r[:, None] * s_z + c[None, :], mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c, mask=c < V, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / V + eps)
        y = x * rstd[:, None] * w[None, :] * (z * tl.sigmoid(z))
        yg = tl.reshape(y, (ROWS, BNG, GS))
        scale = tl.maximum(tl.max(tl.abs(yg), axis=2) / FP8_MAX, 1.0 / (FP8_MAX * 512.0))    # [ROWS, BNG]
        q = tl.reshape(tl.minimum(tl.maximum(yg / scale[:, :, None], -FP8_MAX), FP8_MAX), (ROWS, BV))
        tl.store(y_ptr + r[:, None] * s_y + c[None, :], fp8_store_value(q, y_ptr, MODE, EXP_BIAS), mask=m)
    else:
        # any group_size: a [ROWS, groups, group_size] tile, both padded to powers of two
        g = tl.arange(0, BNG)
        e = tl.arange(0, BGS)
        col = (g[:, None] * GS + e[None, :])[None, :, :]                  # [1, BNG, BGS]
        cm = ((g < NG)[:, None] & (e < GS)[None, :])[None, :, :]
        rr = r[:, None, None]
        m = (rr < M) & cm
        x = tl.load(x_ptr + rr * s_x + col, mask=m, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + rr * s_z + col, mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + col, mask=cm, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(tl.sum(x * x, axis=2), axis=1) / V + eps)
        y = x * rstd[:, None, None] * w * (z * tl.sigmoid(z))
        scale = tl.maximum(tl.max(tl.abs(y), axis=2) / FP8_MAX, 1.0 / (FP8_MAX * 512.0))   # [ROWS, BNG]
        q = tl.minimum(tl.maximum(y / scale[:, :, None], -FP8_MAX), FP8_MAX)
        tl.store(y_ptr + rr * s_y + col, fp8_store_value(q, y_ptr, MODE, EXP_BIAS), mask=m)
    g = tl.arange(0, BNG)
    tl.store(s_ptr + r[:, None] * s_s + g[None, :], scale, mask=rm[:, None] & (g < NG)[None, :])


# (arch, bucket) -> config: elems = ROWS x (padded) V per program; bucket "grouped" (power-of-two
# group_size, the [ROWS, V] tile) or "generic"
_CONFIGS = {
    # H100 sweep (bench_edge_ops.py --sweep, 2026-11-22, triton 3.6.0), M=262144 V=128: e4m3fn 65.0 us
    # (86.7% of copy), e4m3fnuz 65.1 us (86.4%)
    ("sm_90", "grouped"): dict(elems=1024, num_warps=2),
    ("nvidia", "grouped"): dict(elems=2048, num_warps=4),
    ("nvidia", "generic"): dict(elems=2048, num_warps=4),
    ("amd", "grouped"): dict(elems=2048, num_warps=4),
    ("amd", "generic"): dict(elems=4096, num_warps=4),
}
_DEFAULT = dict(elems=1024, num_warps=4)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def rms_norm_gated_fp8(x, z, weight, y, scales, *, eps, group_size, fp8_max, config=None):
    """`config` (a dict like the table's entries) overrides the table: for sweeps only."""
    M, V = x.shape
    if V % group_size:
        raise ValueError(f"gdn.rms_norm_gated_fp8: group_size {group_size} does not divide V={V}")
    if M == 0 or V == 0:
        return
    if x.stride(1) != 1 or z.stride(1) != 1 or y.stride(1) != 1 or scales.stride(1) != 1:
        raise ValueError("gdn.rms_norm_gated_fp8: rows of x, z, y and scales must be contiguous")
    arch = L.current_arch(x.device)
    yk, mode, bias = fp8_mode(y, arch, fp8_max)
    grouped = _pow2(group_size)
    cfg = config or L.pick(_CONFIGS, arch, "grouped" if grouped else "generic", _DEFAULT)
    NG = V // group_size
    BGS, BNG = L.next_pow2(group_size), L.next_pow2(NG)
    rows = min(max(1, cfg["elems"] // (BGS * BNG)), L.next_pow2(M))
    rows = 1 << (rows.bit_length() - 1)
    grid = (L.cdiv(M, rows),)
    pdl = L.use_pdl(arch, grid)
    L.launch(_rms_norm_gated_fp8_kernel, grid, x, z, weight, yk, scales, M,
             x.stride(0), z.stride(0), yk.stride(0), scales.stride(0), float(eps),
             num_warps=cfg["num_warps"] if BGS * BNG * rows >= 1024 else 2, num_stages=1, pdl=pdl,
             V=V, GS=group_size, NG=NG, BGS=BGS, BNG=BNG, ROWS=rows, FP8_MAX=float(fp8_max), MODE=mode,
             EXP_BIAS=bias, GROUPED=grouped, PDL=pdl)


def _reasons(props) -> list[str]:
    V, gs = props.get("V"), props.get("group_size")
    return [f"group_size {gs} does not divide V={V}"] if V and gs and V % gs else []


register(Impl(op="rms_norm_gated_fp8", backend="triton", fn=rms_norm_gated_fp8, archs=PORTABLE_ARCHS, priority=10,
              requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons,
              validated_on=("sm_90",), interpretable=True,
              notes="e4m3fn / e4m3fnuz by output dtype; rows x V tile, groups by reshape (pow2 group_size); native cvt "
                    "where the arch has it (fnuz on sm_89+ via the fn cvt of 2v), exact software RNE elsewhere"))
