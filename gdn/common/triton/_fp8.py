"""FP8 (e4m3) store helpers shared by the gated-RMSNorm + FP8 kernels (not an op: no registration).

Triton converts fp32 -> fp8 natively only where the hardware has the format: e4m3fn on sm_89+ and gfx950,
e4m3fnuz on gfx942. Elsewhere (sm_80, fnuz on NVIDIA, the CPU interpreter, which rounds e4m3fn wrongly
and has no fnuz at all) the kernels compute the bit pattern themselves: `e4m3_bits` rounds to nearest
even exactly like torch's `.to(float8_*)`, and the launcher hands the kernel a uint8 view of the output.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn.common import probe

# exponent bias of each e4m3 flavour: fn (OCP, +-448, -0 exists) and fnuz (+-240, 0x80 is NaN, no -0)
EXP_BIAS = {torch.float8_e4m3fn: 7, torch.float8_e4m3fnuz: 8}


def native_fp8(arch: str, dtype: torch.dtype) -> bool:
    """Whether Triton converts fp32 -> `dtype` in hardware on `arch` (else use `e4m3_bits`)."""
    if dtype == torch.float8_e4m3fn:
        return arch in ("gfx950",) or (arch.startswith("sm_") and int(arch[3:]) >= 89)
    if dtype == torch.float8_e4m3fnuz:
        return arch == "gfx942"
    return False


def fp8_target(y: torch.Tensor, arch: str):
    """(tensor the kernel stores to, SOFT_FP8, EXP_BIAS) for an fp8 output `y` on `arch`."""
    if y.dtype not in EXP_BIAS:
        raise ValueError(f"gdn: fp8 output must be float8_e4m3fn or float8_e4m3fnuz, got {y.dtype}")
    if native_fp8(arch, y.dtype):
        return y, False, EXP_BIAS[y.dtype]
    return y.view(torch.uint8), True, EXP_BIAS[y.dtype]


# store modes of `fp8_store`: the output's own fp8 type (hardware cvt), software rounding to bits, or (e4m3fnuz
# where only e4m3fn is in hardware) the e4m3fn cvt of 2v: fnuz has the same 3-bit mantissa and one more
# exponent bias, so fnuz(v) and fn(2v) have the same bits for every |v| <= 224 (fn saturates at 448), RNE
# ties included; fn's -0 (0x80, NaN in fnuz) becomes 0, as in torch's fnuz rounding.
NATIVE, SOFT, FNUZ_VIA_FN = 0, 1, 2


def fp8_mode(y: torch.Tensor, arch: str, fp8_max: float):
    """(tensor the kernel stores to, MODE, EXP_BIAS) for an fp8 output `y` on `arch` with values clamped to
    +-fp8_max. The interpreter's fp32 -> fp8 cast rounds wrongly, so running under it always uses SOFT
    (recording on meta tensors for the AOT matrix keeps the arch's real choice)."""
    if y.dtype not in EXP_BIAS:
        raise ValueError(f"gdn: fp8 output must be float8_e4m3fn or float8_e4m3fnuz, got {y.dtype}")
    interp = probe.interpreter_on() and y.device.type != "meta"
    if not interp and native_fp8(arch, y.dtype):
        return y, NATIVE, EXP_BIAS[y.dtype]
    if (not interp and y.dtype == torch.float8_e4m3fnuz and native_fp8(arch, torch.float8_e4m3fn)
            and fp8_max <= 224.0):
        return y.view(torch.uint8), FNUZ_VIA_FN, EXP_BIAS[y.dtype]
    return y.view(torch.uint8), SOFT, EXP_BIAS[y.dtype]


@triton.jit
def fp8_store_value(q, y_ptr, MODE: tl.constexpr, EXP_BIAS: tl.constexpr):
    """The value to store at y_ptr (its element type) for q, already clamped to +-fp8_max (see fp8_mode)."""
    if MODE == 0:
        return q.to(y_ptr.dtype.element_ty)
    elif MODE == 2:
        bits = (q * 2.0).to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        return tl.where(bits == 0x80, 0, bits).to(tl.uint8)
    else:
        return e4m3_bits(q, EXP_BIAS)


@triton.jit
def e4m3_bits(v, EXP_BIAS: tl.constexpr):
    """fp32 -> e4m3 bit pattern (uint8), round to nearest even. |v| must not exceed the format's max
    finite (the callers clamp first). EXP_BIAS 7: e4m3fn (sign kept on zero); 8: e4m3fnuz (no -0)."""
    EMIN: tl.constexpr = 1 - EXP_BIAS                 # smallest normal exponent
    bits = v.to(tl.int32, bitcast=True)
    mag = bits & 0x7FFFFFFF
    e = (mag >> 23) - 127
    # normal range: keep 3 mantissa bits, RNE via the carry trick, then rebias the exponent
    qn = ((mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20) - ((127 - EXP_BIAS) << 3)
    # subnormal range (and zero): q = round_half_even(|v| / 2^(EMIN - 3)); q == 8 is the smallest normal
    m = (mag & 0x7FFFFF) | 0x800000
    sh = tl.minimum(20 + EMIN - e, 31)                # >= 21 here; >= 25 rounds to 0
    qs = (m + (1 << (sh - 1)) - 1 + ((m >> sh) & 1)) >> sh
    q = tl.where(e >= EMIN, qn, qs)
    neg = bits < 0
    if EXP_BIAS == 8:
        neg = neg & (q != 0)
    return (q | tl.where(neg, 0x80, 0)).to(tl.uint8)
