"""conv1d_update_split (portable Triton): the decode front end, split_qkvzba + causal_conv1d_update in one
launch, reading mixed_qkvz / mixed_ba directly (no split copy in between).

mixed_qkvz [B, 2HK + 2HV*V], mixed_ba [B, 2HV] ("interleaved" or "contiguous", see _split_layout.py);
conv pool [S, D, W-1] with D = 2HK + HV*V over the channels of mixed_qkv = [q_all | k_all | v_all];
outputs mixed_qkv (after the conv) [B, D], z [B, HV, V], b, a [B, HV]. Negative slot: that row's
mixed_qkv is 0 and its slot untouched (z, b, a are still split). Grid (row blocks, H): the program of
(rows, h) convolves q_h, k_h and v-heads hG..hG+G-1 and copies z/b/a of that head group, issuing every
load before the first store; the conv itself is causal_conv1d_update's (`_win_load` / `_win_finish`,
flat 16-byte state I/O where the slot rows are contiguous). Launched with PDL on sm_90+ (_pdl.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton._pdl import pdl_prologue
from gdn.common.triton._split_layout import check_split_args, qkv_cols, src_cols
from gdn.common.triton.causal_conv1d_update import _win_finish, _win_load, fit_warps, flat_ok

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _conv1d_update_split_kernel(qkvz_ptr, ba_ptr, state_ptr, w_ptr, bias_ptr, idx_ptr, qkv_ptr, z_ptr, b_ptr,
                                a_ptr, B, s_qkvz, s_ba, s_qkv, s_z, s_b, s_a,
                                s_st0, s_st1, s_st2, s_w0, s_w1,
                                H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                                INTERLEAVED: tl.constexpr, W: tl.constexpr, SILU: tl.constexpr,
                                ROWS: tl.constexpr, BK: tl.constexpr, BGV: tl.constexpr, BG: tl.constexpr,
                                FLAT: tl.constexpr, W_CONTIG: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    h = tl.program_id(1)
    GV: tl.constexpr = G * V
    q0, k0, v0, z0, b0, a0 = src_cols(h, H, G, K, V, INTERLEAVED)
    qc, kc, vc = qkv_cols(h, H, G, K, V)     # channels of this head group in mixed_qkv / the conv
    rm = r < B
    slot = tl.load(idx_ptr + r, mask=rm, other=-1).to(tl.int64)
    live = rm & (slot >= 0)
    src = qkvz_ptr + r * s_qkvz
    out = qkv_ptr + r * s_qkv
    st = state_ptr + tl.where(live, slot, 0) * s_st0
    # every load first (one memory round trip per program), then the math and the stores
    qs0, qs1, qs2, qx, qw, qb = _win_load(src, st, live, rm, q0, qc, qc + K, w_ptr, bias_ptr, s_st1, s_st2,
                                          s_w0, s_w1, W, BK, FLAT, W_CONTIG)
    ks0, ks1, ks2, kx, kw, kb = _win_load(src, st, live, rm, k0, kc, kc + K, w_ptr, bias_ptr, s_st1, s_st2,
                                          s_w0, s_w1, W, BK, FLAT, W_CONTIG)
    vs0, vs1, vs2, vx, vw, vb = _win_load(src, st, live, rm, v0, vc, vc + GV, w_ptr, bias_ptr, s_st1, s_st2,
                                          s_w0, s_w1, W, BGV, FLAT, W_CONTIG)
    e = tl.arange(0, BGV)
    zm = rm[:, None] & (e < GV)[None, :]
    zv = tl.load(src[:, None] + (z0 + e)[None, :], mask=zm)      # z row [HV * V]: this group's heads are one run
    g = tl.arange(0, BG)
    gm = rm[:, None] & (g < G)[None, :]
    bv = tl.load(ba_ptr + (r * s_ba)[:, None] + (b0 + g)[None, :], mask=gm)
    av = tl.load(ba_ptr + (r * s_ba)[:, None] + (a0 + g)[None, :], mask=gm)
    _win_finish(qs0, qs1, qs2, qx, qw, qb, out, st, live, rm, qc, qc, qc + K, s_st1, s_st2, W, BK, FLAT, SILU)
    _win_finish(ks0, ks1, ks2, kx, kw, kb, out, st, live, rm, kc, kc, kc + K, s_st1, s_st2, W, BK, FLAT, SILU)
    _win_finish(vs0, vs1, vs2, vx, vw, vb, out, st, live, rm, vc, vc, vc + GV, s_st1, s_st2, W, BGV, FLAT, SILU)
    tl.store(z_ptr + (r * s_z)[:, None] + (h * GV + e)[None, :], zv.to(z_ptr.dtype.element_ty), mask=zm)
    tl.store(b_ptr + (r * s_b)[:, None] + (h * G + g)[None, :], bv.to(b_ptr.dtype.element_ty), mask=gm)
    tl.store(a_ptr + (r * s_a)[:, None] + (h * G + g)[None, :], av.to(a_ptr.dtype.element_ty), mask=gm)


# (arch, bucket) -> config: ROWS batch rows x one q/k head group per program (2K + G*V conv channels, 512 for
# Qwen3-Next, plus the z copy); FLAT as in causal_conv1d_update. Bucket: "large" (B >= 256) / "small".
_CONFIGS = {
    # H100 sweep (bench_edge_ops.py --sweep, 2026-11-22, triton 3.6.0): 451.8 us, 89.3% of copy at B=8192;
    # 8.3 us at B=32 (launch-bound)
    ("sm_90", "large"): dict(ROWS=2, num_warps=1, FLAT=True),
    ("sm_90", "small"): dict(ROWS=1, num_warps=1, FLAT=True),
    ("nvidia", "large"): dict(ROWS=8, num_warps=4, FLAT=True),
    ("nvidia", "small"): dict(ROWS=2, num_warps=1, FLAT=True),
    ("amd", "large"): dict(ROWS=8, num_warps=4, FLAT=True),
    ("amd", "small"): dict(ROWS=2, num_warps=1, FLAT=True),
}
_DEFAULT = dict(ROWS=2, num_warps=2, FLAT=True)


def conv1d_update_split(mixed_qkvz, mixed_ba, conv_state, weight, bias, state_indices, mixed_qkv, z, b, a, *,
                        num_k_heads, num_v_heads, head_k_dim, head_v_dim, layout, activation, config=None):
    """`config` (a dict like the table's entries) overrides the table: for sweeps only."""
    H, HV, K, V = num_k_heads, num_v_heads, head_k_dim, head_v_dim
    G = HV // H
    B = mixed_qkvz.shape[0]
    W = weight.shape[1]
    check_split_args("conv1d_update_split", layout, mixed_qkvz, mixed_ba, mixed_qkv, z, b, a, V)
    if B == 0:
        return
    arch = L.current_arch(mixed_qkvz.device)
    cfg = config or L.pick(_CONFIGS, arch, "large" if B >= 256 else "small", _DEFAULT)
    BK, BGV, BG = L.next_pow2(K), L.next_pow2(G * V), L.next_pow2(G)
    rows = min(cfg["ROWS"], L.next_pow2(B))
    flat = bool(cfg["FLAT"]) and flat_ok(conv_state, W) and (W < 4 or min(BK, BGV) >= 8)
    grid = (L.cdiv(B, rows), H)
    pdl = L.use_pdl(arch, grid)
    L.launch(_conv1d_update_split_kernel, grid,
             mixed_qkvz, mixed_ba, conv_state, weight, bias, state_indices, mixed_qkv, z, b, a, B,
             mixed_qkvz.stride(0), mixed_ba.stride(0), mixed_qkv.stride(0), z.stride(0), b.stride(0), a.stride(0),
             conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), weight.stride(0), weight.stride(1),
             num_warps=fit_warps(cfg["num_warps"], rows, min(BK, BGV), flat and W == 4, arch), num_stages=1,
             pdl=pdl, H=H, G=G, K=K, V=V, INTERLEAVED=layout == "interleaved", W=W, SILU=activation == "silu",
             ROWS=rows, BK=BK, BGV=BGV, BG=BG, FLAT=flat, W_CONTIG=weight.stride(1) == 1 and weight.stride(0) == W,
             PDL=pdl)


def _reasons(props) -> list[str]:
    out = []
    H, HV, W = props.get("H"), props.get("HV"), props.get("W")
    if H and HV and HV % H:
        out.append(f"HV={HV} not a multiple of H={H}")
    if W is not None and not 2 <= W <= 4:
        out.append(f"conv width W={W} outside 2..4")
    return out


register(Impl(op="conv1d_update_split", backend="triton", fn=conv1d_update_split, archs=PORTABLE_ARCHS,
              priority=10, requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"),
              state_dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons, validated_on=("sm_90",),
              interpretable=True,
              notes="one launch, grid (row blocks, H): split + conv update, z/b/a copied alongside; loads before "
                    "stores; flat 16-byte state I/O"))
