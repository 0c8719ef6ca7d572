"""rms_norm_gated_fp8 (portable Triton): gated RMSNorm then FP8 group quantisation, one pass.

x, z [M, V], weight [V] -> y [M, V] fp8 (e4m3fn or e4m3fnuz: y's dtype says which), scales
[M, V // group_size] fp32 with scale = max(absmax / fp8_max, 1 / (fp8_max * 512)), y = clamp(v / scale).
fp8_max comes from the caller (448 for e4m3fn, 224 for e4m3fnuz as aiter uses). fp32 math.
A program holds ROWS rows as a [ROWS, groups, group_size] tile (both padded to powers of two), so any
group_size dividing V works. The fp8 store is native where the arch has the format, else bit-exact
software rounding (gdn/common/triton/_fp8.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton._fp8 import e4m3_bits, fp8_target

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _rms_norm_gated_fp8_kernel(x_ptr, z_ptr, w_ptr, y_ptr, s_ptr, M, s_x, s_z, s_y, s_s, eps,
                               V: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr, BGS: tl.constexpr,
                               BNG: tl.constexpr, ROWS: tl.constexpr, FP8_MAX: tl.constexpr,
                               SOFT_FP8: tl.constexpr, EXP_BIAS: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    g = tl.arange(0, BNG)
    e = tl.arange(0, BGS)
    col = (g[:, None] * GS + e[None, :])[None, :, :]                      # [1, BNG, BGS]
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
    if SOFT_FP8:
        tl.store(y_ptr + rr * s_y + col, e4m3_bits(q, EXP_BIAS), mask=m)
    else:
        tl.store(y_ptr + rr * s_y + col, q.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(s_ptr + r[:, None] * s_s + g[None, :], scale, mask=(r < M)[:, None] & (g < NG)[None, :])


_CONFIGS = {
    ("nvidia", None): dict(elems=2048, num_warps=4),
    ("amd", None): dict(elems=4096, num_warps=4),
}


def rms_norm_gated_fp8(x, z, weight, y, scales, *, eps, group_size, fp8_max):
    M, V = x.shape
    if V % group_size:
        raise ValueError(f"gdn.rms_norm_gated_fp8: group_size {group_size} does not divide V={V}")
    if M == 0 or V == 0:
        return
    if x.stride(1) != 1 or z.stride(1) != 1 or y.stride(1) != 1 or scales.stride(1) != 1:
        raise ValueError("gdn.rms_norm_gated_fp8: rows of x, z, y and scales must be contiguous")
    arch = L.current_arch(x.device)
    yk, soft, bias = fp8_target(y, arch)
    cfg = L.pick(_CONFIGS, arch, None, dict(elems=1024, num_warps=4))
    NG = V // group_size
    BGS, BNG = L.next_pow2(group_size), L.next_pow2(NG)
    rows = min(max(1, cfg["elems"] // (BGS * BNG)), L.next_pow2(M))
    rows = 1 << (rows.bit_length() - 1)
    L.launch(_rms_norm_gated_fp8_kernel, (L.cdiv(M, rows),), x, z, weight, yk, scales, M,
             x.stride(0), z.stride(0), yk.stride(0), scales.stride(0), float(eps),
             num_warps=cfg["num_warps"] if BGS * BNG * rows >= 1024 else 2, num_stages=1,
             V=V, GS=group_size, NG=NG, BGS=BGS, BNG=BNG, ROWS=rows, FP8_MAX=float(fp8_max), SOFT_FP8=soft,
             EXP_BIAS=bias)


def _reasons(props) -> list[str]:
    V, gs = props.get("V"), props.get("group_size")
    return [f"group_size {gs} does not divide V={V}"] if V and gs and V % gs else []


register(Impl(op="rms_norm_gated_fp8", backend="triton", fn=rms_norm_gated_fp8, archs=PORTABLE_ARCHS, priority=10,
              requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons,
              validated_on=("sm_90",), interpretable=True,
              notes="e4m3fn / e4m3fnuz by output dtype; native cvt where the arch has it, exact software RNE elsewhere"))
