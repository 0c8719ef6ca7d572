"""rms_norm_gated (portable Triton): y = x * rsqrt(mean(x^2) + eps) * weight * silu(z) over rows of [M, V].

x, z [..., V] (rows contiguous), weight [V]; out [..., V] in its own dtype; fp32 math. One program
normalises ROWS rows held whole in registers (V up to a few thousand). Launched with PDL on sm_90+ (_pdl.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton._pdl import pdl_prologue

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _rms_norm_gated_kernel(x_ptr, z_ptr, w_ptr, y_ptr, M, s_x, s_z, s_y, eps,
                           V: tl.constexpr, BV: tl.constexpr, ROWS: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BV)
    m = (r < M)[:, None] & (c < V)[None, :]
    x = tl.load(x_ptr + r[:, None] * s_x + c[None, :], mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + r[:, None] * s_z + c[None, :], mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + c, mask=c < V, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / V + eps)
    y = x * rstd[:, None] * w[None, :] * (z * tl.sigmoid(z))
    tl.store(y_ptr + r[:, None] * s_y + c[None, :], y.to(y_ptr.dtype.element_ty), mask=m)


# ROWS * BV elements per program, by arch; rows shrink as V grows
_CONFIGS = {
    ("nvidia", None): dict(elems=2048, num_warps=4),
    ("amd", None): dict(elems=4096, num_warps=4),
}


def rms_norm_gated(x, z, weight, out, *, eps):
    V = x.shape[-1]
    x2, z2, y2 = x.reshape(-1, V), z.reshape(-1, V), out.view(-1, V)
    M = x2.shape[0]
    if M == 0 or V == 0:
        return
    if x2.stride(1) != 1 or z2.stride(1) != 1 or y2.stride(1) != 1:
        raise ValueError("gdn.rms_norm_gated: rows of x, z and out must be contiguous")
    arch = L.current_arch(x.device)
    cfg = L.pick(_CONFIGS, arch, None, dict(elems=1024, num_warps=4))
    BV = L.next_pow2(V)
    rows = min(max(1, cfg["elems"] // BV), L.next_pow2(M))
    rows = 1 << (rows.bit_length() - 1)
    grid = (L.cdiv(M, rows),)
    pdl = L.use_pdl(arch, grid)
    L.launch(_rms_norm_gated_kernel, grid, x2, z2, weight, y2, M,
             x2.stride(0), z2.stride(0), y2.stride(0), float(eps),
             num_warps=cfg["num_warps"] if BV * rows >= 1024 else 2, num_stages=1, pdl=pdl, V=V, BV=BV, ROWS=rows,
             PDL=pdl)


register(Impl(op="rms_norm_gated", backend="triton", fn=rms_norm_gated, archs=PORTABLE_ARCHS, priority=10,
              requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"), validated_on=("sm_90",),
              interpretable=True, notes="ROWS rows per program, row held in registers"))
