"""split_qkvzba (portable Triton): projection outputs -> (mixed_qkv, z, b, a) in one launch.

mixed_qkvz [T, 2HK + 2HV*V], mixed_ba [T, 2HV] -> mixed_qkv [T, 2HK + HV*V] = [q_all | k_all | v_all],
z [T, HV, V], b, a [T, HV]; layouts "interleaved" / "contiguous" (gdn/common/triton/_split_layout.py).
Either way head h owns q_h, k_h, v-heads hG..hG+G-1 of v and z, and their b/a; only the source offsets
differ. One program copies those six pieces for BLOCK_T rows; the grid is (row blocks, H). Launched with PDL
on sm_90+ (gdn/common/triton/_pdl.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton._pdl import pdl_prologue
from gdn.common.triton._split_layout import check_split_args, qkv_cols, src_cols

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
                         BGV: tl.constexpr, BG: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    h = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < T
    GV: tl.constexpr = G * V
    q0, k0, v0, z0, b0, a0 = src_cols(h, H, G, K, V, INTERLEAVED)
    qc, kc, vc = qkv_cols(h, H, G, K, V)
    src = rows * s_qkvz
    dst = rows * s_qkv
    _copy_cols(qkvz_ptr, qkv_ptr, src, dst, rmask, q0, qc, K, BK)
    _copy_cols(qkvz_ptr, qkv_ptr, src, dst, rmask, k0, kc, K, BK)
    _copy_cols(qkvz_ptr, qkv_ptr, src, dst, rmask, v0, vc, GV, BGV)
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
    check_split_args("split_qkvzba", layout, mixed_qkvz, mixed_ba, mixed_qkv, z, b, a, V)
    if T == 0:
        return
    arch = L.current_arch(mixed_qkvz.device)
    cfg = L.pick(_CONFIGS, arch, None, dict(elems=4096, num_warps=4))
    BK, BGV, BG = L.next_pow2(K), L.next_pow2(G * V), L.next_pow2(G)
    rows = max(1, cfg["elems"] // (2 * BK + 2 * BGV + 2 * BG))
    block_t = min(1 << (rows.bit_length() - 1), 64, L.next_pow2(T))      # a power of two
    grid = (L.cdiv(T, block_t), H)
    pdl = L.use_pdl(arch, grid)
    L.launch(_split_qkvzba_kernel, grid,
             mixed_qkvz, mixed_ba, mixed_qkv, z, b, a, T,
             mixed_qkvz.stride(0), mixed_ba.stride(0), mixed_qkv.stride(0), z.stride(0), b.stride(0), a.stride(0),
             num_warps=cfg["num_warps"], num_stages=1, pdl=pdl,
             H=H, G=G, K=K, V=V, INTERLEAVED=layout == "interleaved", BLOCK_T=block_t, BK=BK, BGV=BGV, BG=BG, PDL=pdl)


def _reasons(props) -> list[str]:
    H, HV = props.get("H"), props.get("HV")
    if H and HV and HV % H:
        return [f"HV={HV} not a multiple of H={H}"]
    return []


register(Impl(op="split_qkvzba", backend="triton", fn=split_qkvzba, archs=PORTABLE_ARCHS, priority=10,
              requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons,
              validated_on=("sm_90",), interpretable=True,
              notes="one launch, grid (row blocks, H); interleaved and contiguous layouts, any G"))
