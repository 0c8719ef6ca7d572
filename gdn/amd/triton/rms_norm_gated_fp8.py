"""rms_norm_gated_fp8 (ROCm, wave64-tuned Triton): gated RMSNorm + FP8 group quantisation.

x, z [M, V], weight [V] -> y [M, V] fp8, scales [M, V // group_size] fp32:
y_f = x * rsqrt(mean(x^2) + eps) * weight * silu(z) (fp32), per group scale = max(absmax / fp8_max,
1 / (fp8_max * 512)), y = clamp(y_f / scale, +-fp8_max). e4m3fnuz (fp8_max 224, as aiter uses) on gfx942,
e4m3fn (448) on gfx950; the output dtype says which, fp8_max comes from the caller.

ROCm flavour: many rows per program (a [ROWS, V] tile: 16 rows of 128 is 8 values per lane over four
64-lane waves), the groups taken by reshaping the tile to [ROWS, V / group_size, group_size] (both powers
of two; other shapes fall back to the portable kernel), and the hardware cvt (v_cvt_pk_fp8_f32) where the
arch has the format. On other archs (the CPU interpreter, NVIDIA for the fnuz format) the bit pattern is
rounded in software, bit-exact with torch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.amd.triton import VALIDATION_NOTE
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton._fp8 import e4m3_bits, fp8_target

AMD_ARCHS = ("gfx942", "gfx950")


@triton.jit
def _rms_gated_fp8_rows_kernel(x_ptr, z_ptr, w_ptr, y_ptr, s_ptr, M, s_x, s_z, s_y, s_s, eps,
                               V: tl.constexpr, GS: tl.constexpr, ROWS: tl.constexpr, FP8_MAX: tl.constexpr,
                               SOFT_FP8: tl.constexpr, EXP_BIAS: tl.constexpr):
    NG: tl.constexpr = V // GS
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, V)
    rm = (r < M)[:, None]
    x = tl.load(x_ptr + r[:, None] * s_x + c[None, :], mask=rm, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + r[:, None] * s_z + c[None, :], mask=rm, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + c).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / V + eps)
    y = x * rstd[:, None] * w[None, :] * (z * tl.sigmoid(z))
    yg = tl.reshape(y, (ROWS, NG, GS))
    scale = tl.maximum(tl.max(tl.abs(yg), axis=2) / FP8_MAX, 1.0 / (FP8_MAX * 512.0))     # [ROWS, NG]
    q = tl.reshape(tl.minimum(tl.maximum(yg / scale[:, :, None], -FP8_MAX), FP8_MAX), (ROWS, V))
    if SOFT_FP8:
        tl.store(y_ptr + r[:, None] * s_y + c[None, :], e4m3_bits(q, EXP_BIAS), mask=rm)
    else:
        tl.store(y_ptr + r[:, None] * s_y + c[None, :], q.to(y_ptr.dtype.element_ty), mask=rm)
    g = tl.arange(0, NG)
    tl.store(s_ptr + r[:, None] * s_s + g[None, :], scale, mask=rm)


# rows per program by arch; V * ROWS values over num_warps * 64 lanes
_CONFIGS = {
    ("gfx942", None): dict(elems=2048, num_warps=4),
    ("gfx950", None): dict(elems=2048, num_warps=4),
}


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def rms_norm_gated_fp8(x, z, weight, y, scales, *, eps, group_size, fp8_max):
    M, V = x.shape
    if not (_pow2(V) and _pow2(group_size) and V % group_size == 0):
        raise ValueError(f"gdn.rms_norm_gated_fp8 (amd-triton): V={V} and group_size={group_size} must be powers "
                         "of two with group_size | V")
    if M == 0:
        return
    if x.stride(1) != 1 or z.stride(1) != 1 or y.stride(1) != 1 or scales.stride(1) != 1:
        raise ValueError("gdn.rms_norm_gated_fp8: rows of x, z, y and scales must be contiguous")
    arch = L.current_arch(x.device)
    yk, soft, bias = fp8_target(y, arch)
    cfg = L.pick(_CONFIGS, arch, None, dict(elems=2048, num_warps=4))
    rows = min(max(1, cfg["elems"] // V), L.next_pow2(M))
    L.launch(_rms_gated_fp8_rows_kernel, (L.cdiv(M, rows),), x, z, weight, yk, scales, M,
             x.stride(0), z.stride(0), yk.stride(0), scales.stride(0), float(eps),
             num_warps=cfg["num_warps"], num_stages=1, V=V, GS=group_size, ROWS=rows, FP8_MAX=float(fp8_max),
             SOFT_FP8=soft, EXP_BIAS=bias)


def _reasons(props) -> list[str]:
    V, gs = props.get("V"), props.get("group_size")
    if V is not None and gs is not None and not (_pow2(V) and _pow2(gs) and V % gs == 0):
        return [f"V={V}, group_size={gs}: needs powers of two with group_size | V (portable kernel takes any)"]
    return []


register(Impl(op="rms_norm_gated_fp8", backend="amd-triton", fn=rms_norm_gated_fp8, archs=AMD_ARCHS, priority=20,
              requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons,
              validated_on=(), interpretable=True,
              notes="rows-per-program tile, groups by reshape; hardware fp8 cvt (fnuz on gfx942, fn on gfx950)" + VALIDATION_NOTE))
