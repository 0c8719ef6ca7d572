"""conv1d_update_split (portable Triton): the decode front end, split_qkvzba + causal_conv1d_update in one
launch, reading mixed_qkvz / mixed_ba directly (no split copy in between).

mixed_qkvz [B, 2HK + 2HV*V], mixed_ba [B, 2HV] ("interleaved" or "contiguous", see split_qkvzba.py);
conv pool [S, D, W-1] with D = 2HK + HV*V over the channels of mixed_qkv = [q_all | k_all | v_all];
outputs mixed_qkv (after the conv) [B, D], z [B, HV, V], b, a [B, HV]. Negative slot: that row's
mixed_qkv is 0 and its slot untouched (z, b, a are still split). Grid (B, H): the program of (row, h)
convolves q_h, k_h and v-heads hG..hG+G-1 and copies z/b/a of that head group.
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _conv_seg(src_ptr, out_ptr, st_ptr, w_ptr, bias_ptr, src_c0, ch0, live,
              s_st1, s_st2, s_w0, s_w1,
              N: tl.constexpr, BN: tl.constexpr, W: tl.constexpr, SILU: tl.constexpr):
    """Channels ch0 .. ch0+N-1: input row segment src_ptr[src_c0 ...], state of this row's slot at st_ptr."""
    c = tl.arange(0, BN)
    m = c < N
    ch = ch0 + c
    sm = m & live
    st = st_ptr + ch * s_st1
    x = tl.load(src_ptr + src_c0 + c, mask=m, other=0.0).to(tl.float32)
    acc = x * tl.load(w_ptr + ch * s_w0 + (W - 1) * s_w1, mask=m, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + ch, mask=m, other=0.0).to(tl.float32)
    for j in tl.static_range(W - 1):
        col = tl.load(st + j * s_st2, mask=sm, other=0.0)
        acc += col.to(tl.float32) * tl.load(w_ptr + ch * s_w0 + j * s_w1, mask=m, other=0.0).to(tl.float32)
        if j > 0:
            tl.store(st + (j - 1) * s_st2, col, mask=sm)
    tl.store(st + (W - 2) * s_st2, x.to(st_ptr.dtype.element_ty), mask=sm)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + ch, tl.where(live, acc, 0.0).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv1d_update_split_kernel(qkvz_ptr, ba_ptr, state_ptr, w_ptr, bias_ptr, idx_ptr, qkv_ptr, z_ptr, b_ptr,
                                a_ptr, s_qkvz, s_ba, s_qkv, s_z, s_b, s_a,
                                s_st0, s_st1, s_st2, s_w0, s_w1,
                                H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                                INTERLEAVED: tl.constexpr, W: tl.constexpr, SILU: tl.constexpr,
                                BK: tl.constexpr, BGV: tl.constexpr, BG: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
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
    slot = tl.load(idx_ptr + i).to(tl.int64)
    live = slot >= 0
    src = qkvz_ptr + i * s_qkvz
    out = qkv_ptr + i * s_qkv
    st = state_ptr + slot * s_st0
    _conv_seg(src, out, st, w_ptr, bias_ptr, q0, h * K, live, s_st1, s_st2, s_w0, s_w1, K, BK, W, SILU)
    _conv_seg(src, out, st, w_ptr, bias_ptr, k0, H * K + h * K, live, s_st1, s_st2, s_w0, s_w1, K, BK, W, SILU)
    _conv_seg(src, out, st, w_ptr, bias_ptr, v0, 2 * H * K + h * GV, live, s_st1, s_st2, s_w0, s_w1, GV, BGV, W,
              SILU)
    e = tl.arange(0, BGV)
    m = e < GV
    zv = tl.load(src + z0 + e, mask=m)                        # z row [HV * V]: this group's heads are one run
    tl.store(z_ptr + i * s_z + h * GV + e, zv.to(z_ptr.dtype.element_ty), mask=m)
    g = tl.arange(0, BG)
    m = g < G
    bv = tl.load(ba_ptr + i * s_ba + b0 + g, mask=m)
    av = tl.load(ba_ptr + i * s_ba + a0 + g, mask=m)
    tl.store(b_ptr + i * s_b + h * G + g, bv.to(b_ptr.dtype.element_ty), mask=m)
    tl.store(a_ptr + i * s_a + h * G + g, av.to(a_ptr.dtype.element_ty), mask=m)


# per program: 2K + G*V conv channels (512 for Qwen3-Next) plus the z copy; warps by that size
_CONFIGS = {
    ("nvidia", None): dict(num_warps=4),
    ("amd", None): dict(num_warps=4),
}


def conv1d_update_split(mixed_qkvz, mixed_ba, conv_state, weight, bias, state_indices, mixed_qkv, z, b, a, *,
                        num_k_heads, num_v_heads, head_k_dim, head_v_dim, layout, activation):
    H, HV, K, V = num_k_heads, num_v_heads, head_k_dim, head_v_dim
    G = HV // H
    B = mixed_qkvz.shape[0]
    W = weight.shape[1]
    if layout not in ("interleaved", "contiguous"):
        raise ValueError(f"gdn.conv1d_update_split: layout must be 'interleaved' or 'contiguous', got {layout!r}")
    if B == 0:
        return
    for name, t in (("mixed_qkvz", mixed_qkvz), ("mixed_ba", mixed_ba), ("mixed_qkv", mixed_qkv)):
        if t.stride(1) != 1:
            raise ValueError(f"gdn.conv1d_update_split: {name} needs unit column stride, got {tuple(t.stride())}")
    if z.stride(2) != 1 or z.stride(1) != V or b.stride(1) != 1 or a.stride(1) != 1:
        raise ValueError("gdn.conv1d_update_split: z needs contiguous [HV, V] rows and b, a unit column stride")
    arch = L.current_arch(mixed_qkvz.device)
    cfg = L.pick(_CONFIGS, arch, None, dict(num_warps=4))
    BK, BGV, BG = L.next_pow2(K), L.next_pow2(G * V), L.next_pow2(G)
    L.launch(_conv1d_update_split_kernel, (B, H),
             mixed_qkvz, mixed_ba, conv_state, weight, bias, state_indices, mixed_qkv, z, b, a,
             mixed_qkvz.stride(0), mixed_ba.stride(0), mixed_qkv.stride(0), z.stride(0), b.stride(0), a.stride(0),
             conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), weight.stride(0), weight.stride(1),
             num_warps=cfg["num_warps"], num_stages=1,
             H=H, G=G, K=K, V=V, INTERLEAVED=layout == "interleaved", W=W, SILU=activation == "silu",
             BK=BK, BGV=BGV, BG=BG)


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
              interpretable=True, notes="one launch, grid (B, H): split + conv update, z/b/a copied alongside"))
