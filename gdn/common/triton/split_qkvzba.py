"""split_qkvzba (portable Triton): projection outputs -> (mixed_qkv, z, b, a) in one launch.

mixed_qkvz [T, 2HK + 2HV*V], mixed_ba [T, 2HV] -> mixed_qkv [T, 2HK + HV*V] = [q_all | k_all | v_all],
z [T, HV, V], b, a [T, HV]. Layouts (spec/ops.md op 7):
  "interleaved" (Qwen3-Next): per q/k head h, [q_h (K) | k_h (K) | v_h (G*V) | z_h (G*V)] and [b_h (G) | a_h (G)]
  "contiguous"  (Qwen3.5):    [q_all | k_all | v_all | z_all] and [b_all | a_all]
Either way head h owns q_h, k_h, v-heads hG..hG+G-1 of v and z, and their b/a; only the source offsets
differ. One program copies those six pieces for BLOCK_T rows; the grid is (row blocks, H).
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _copy_cols(src_ptr, dst_ptr, src_row, dst_row, rmask, src_c0, dst_c0, N: tl.constexpr, BN: tl.constexpr):
    """dst[rows, dst_c0 : dst_c0 + N] = src[rows, src_c0 : src_c0 + N] (row offsets given, int64)."""
    c = tl.arange(0, BN)
    m = rmask[:, None] & (c < N)[None, :]
    x = tl.load(src_ptr + src_row[:, None] + (src_c0 + c)[None, :], mask=m)
    tl.store(dst_ptr + dst_row[:, None] + (dst_c0 + c)[None, :], x.to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def _split_qkvzba_kernel(qkvz_ptr, ba_ptr, qkv_ptr, z_ptr, b_ptr, a_ptr, T,
                         s_qkvz, s_ba, s_qkv, s_z, s_b, s_a,
                         H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                         INTERLEAVED: tl.constexpr, BLOCK_T: tl.constexpr, BK: tl.constexpr,
                         BGV: tl.constexpr, BG: tl.constexpr):
    h = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < T
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
    src = rows * s_qkvz
    dst = rows * s_qkv
    _copy_cols(qkvz_ptr, qkv_ptr, src, dst, rmask, q0, h * K, K, BK)
    _copy_cols(qkvz_ptr, qkv_ptr, src, dst, rmask, k0, H * K + h * K, K, BK)
    _copy_cols(qkvz_ptr, qkv_ptr, src, dst, rmask, v0, 2 * H * K + h * GV, GV, BGV)
    # z rows [HV * V] (heads hG.. of this group are one run), b / a rows [HV]
    _copy_cols(qkvz_ptr, z_ptr, src, rows * s_z, rmask, z0, h * GV, GV, BGV)
    _copy_cols(ba_ptr, b_ptr, rows * s_ba, rows * s_b, rmask, b0, h * G, G, BG)
    _copy_cols(ba_ptr, a_ptr, rows * s_ba, rows * s_a, rmask, a0, h * G, G, BG)


# elements per program ~ BLOCK_T * (2K + 2GV): aim for 4-8K per program
_CONFIGS = {
    ("nvidia", None): dict(elems=8192, num_warps=4),
    ("amd", None): dict(elems=8192, num_warps=4),
}


def split_qkvzba(mixed_qkvz, mixed_ba, mixed_qkv, z, b, a, *, num_k_heads, num_v_heads, head_k_dim, head_v_dim,
                 layout):
    H, HV, K, V = num_k_heads, num_v_heads, head_k_dim, head_v_dim
    G = HV // H
    T = mixed_qkvz.shape[0]
    if layout not in ("interleaved", "contiguous"):
        raise ValueError(f"gdn.split_qkvzba: layout must be 'interleaved' or 'contiguous', got {layout!r}")
    if T == 0:
        return
    for name, t in (("mixed_qkvz", mixed_qkvz), ("mixed_ba", mixed_ba), ("mixed_qkv", mixed_qkv)):
        if t.stride(1) != 1:
            raise ValueError(f"gdn.split_qkvzba: {name} needs unit column stride, got {tuple(t.stride())}")
    if z.stride(2) != 1 or z.stride(1) != V or b.stride(1) != 1 or a.stride(1) != 1:
        raise ValueError("gdn.split_qkvzba: z needs contiguous [HV, V] rows and b, a unit column stride")
    arch = L.current_arch(mixed_qkvz.device)
    cfg = L.pick(_CONFIGS, arch, None, dict(elems=4096, num_warps=4))
    BK, BGV, BG = L.next_pow2(K), L.next_pow2(G * V), L.next_pow2(G)
    rows = max(1, cfg["elems"] // (2 * BK + 2 * BGV + 2 * BG))
    block_t = min(1 << (rows.bit_length() - 1), 64, L.next_pow2(T))      # a power of two
    L.launch(_split_qkvzba_kernel, (L.cdiv(T, block_t), H),
             mixed_qkvz, mixed_ba, mixed_qkv, z, b, a, T,
             mixed_qkvz.stride(0), mixed_ba.stride(0), mixed_qkv.stride(0), z.stride(0), b.stride(0), a.stride(0),
             num_warps=cfg["num_warps"], num_stages=1,
             H=H, G=G, K=K, V=V, INTERLEAVED=layout == "interleaved", BLOCK_T=block_t, BK=BK, BGV=BGV, BG=BG)


def _reasons(props) -> list[str]:
    H, HV = props.get("H"), props.get("HV")
    if H and HV and HV % H:
        return [f"HV={HV} not a multiple of H={H}"]
    return []


register(Impl(op="split_qkvzba", backend="triton", fn=split_qkvzba, archs=PORTABLE_ARCHS, priority=10,
              requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons,
              validated_on=("sm_90",), interpretable=True,
              notes="one launch, grid (row blocks, H); interleaved and contiguous layouts, any G"))
