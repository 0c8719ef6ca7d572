"""Column layout of the Gated DeltaNet input projections, shared by split_qkvzba and conv1d_update_split.

mixed_qkvz [T, 2HK + 2HV*V], mixed_ba [T, 2HV] (spec/ops.md op 7):
  "interleaved" (Qwen3-Next): per q/k head h, [q_h (K) | k_h (K) | v_h (G*V) | z_h (G*V)] and [b_h (G) | a_h (G)]
  "contiguous"  (Qwen3.5):    [q_all | k_all | v_all | z_all] and [b_all | a_all]
Either way head group h (q/k head h, v heads hG..hG+G-1) maps to the same destination columns:
mixed_qkv [T, 2HK + HV*V] = [q_all | k_all | v_all], z [T, HV*V], b / a [T, HV].
"""
from __future__ import annotations

import triton
import triton.language as tl

LAYOUTS = ("interleaved", "contiguous")


@triton.jit
def src_cols(h, H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, INTERLEAVED: tl.constexpr):
    """First columns of q_h, k_h, v_h, z_h in mixed_qkvz and of b_h, a_h in mixed_ba."""
    GV: tl.constexpr = G * V
    if INTERLEAVED:
        q0 = h * (2 * K + 2 * GV)
        k0 = q0 + K
        v0 = q0 + 2 * K
        z0 = v0 + GV
        b0 = h * (2 * G)
        a0 = b0 + G
    else:
        q0 = h * K
        k0 = H * K + h * K
        v0 = 2 * H * K + h * GV
        z0 = 2 * H * K + H * GV + h * GV
        b0 = h * G
        a0 = H * G + h * G
    return q0, k0, v0, z0, b0, a0


@triton.jit
def qkv_cols(h, H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr):
    """First columns of q_h, k_h, v_h in mixed_qkv (also the conv channels); z_h starts at column h*G*V of z,
    b_h / a_h at column h*G of b / a."""
    return h * K, H * K + h * K, 2 * H * K + h * (G * V)


def check_split_args(op: str, layout, mixed_qkvz, mixed_ba, mixed_qkv, z, b, a, V: int) -> None:
    """Layout name and the strides the kernels assume (unit column strides, z rows contiguous [HV, V])."""
    if layout not in LAYOUTS:
        raise ValueError(f"gdn.{op}: layout must be 'interleaved' or 'contiguous', got {layout!r}")
    for name, t in (("mixed_qkvz", mixed_qkvz), ("mixed_ba", mixed_ba), ("mixed_qkv", mixed_qkv)):
        if t.stride(1) != 1:
            raise ValueError(f"gdn.{op}: {name} needs unit column stride, got {tuple(t.stride())}")
    if z.stride(2) != 1 or z.stride(1) != V or b.stride(1) != 1 or a.stride(1) != 1:
        raise ValueError(f"gdn.{op}: z needs contiguous [HV, V] rows and b, a unit column stride")
