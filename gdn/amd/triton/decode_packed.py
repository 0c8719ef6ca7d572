"""decode_packed (ROCm, wave64-tuned Triton): aiter-style fused rearrange + sigmoid gated delta rule.

Reads q/k/v straight from the conv output row mixed_qkv [B, 2*H*K + HV*V] = [q_all | k_all | v_all] by
pointer arithmetic (no split copies). Gates fused in fp32: g = -exp(A_log) * softplus(a + dt_bias)
(softplus threshold 20), beta = sigmoid(b); q, k l2-normalised (eps 1e-6) and q scaled in registers.
State pool [S, HV, V, K] ("vk", K contiguous) or [S, HV, K, V] ("kv"), fp32 or bf16 (fp32 math, written
back in the pool dtype), any slot stride, int64 slot offsets; negative slot: output 0, slot untouched.

Grid (B, HV // NH, V // BV). A program loads and normalises q/k of head h once and runs the update for
NH consecutive v-heads of that head's group (NH divides G), each on a [BV, K] state tile. The tile sizes
and NH come from a table keyed by arch and a batch bucket: with 64-lane wavefronts a [32, 128] fp32 tile
is 16 values per lane at 4 waves; small batches use narrower V tiles so the 304 (gfx942) / 256 (gfx950)
CUs have work, large ones share q/k over the whole head group.
"""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.amd.triton import VALIDATION_NOTE
from gdn.common.registry import Impl, dtypes, register

AMD_ARCHS = ("gfx942", "gfx950")


@triton.jit
def _gdr_packed_kernel(qkv_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, state_ptr, idx_ptr, o_ptr,
                       s_qkv, s_a, s_b, s_st0, s_o0, s_o1, scale,
                       H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, NH: tl.constexpr,
                       L2NORM: tl.constexpr, VK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    hv0 = tl.program_id(1) * NH
    v_idx = tl.program_id(2) * BV + tl.arange(0, BV)
    k_idx = tl.arange(0, BK)
    G: tl.constexpr = HV // H
    h = hv0 // G
    km = k_idx < K
    vm = v_idx < V
    slot = tl.load(idx_ptr + i).to(tl.int64)
    live = slot >= 0
    row = qkv_ptr + i * s_qkv
    q = tl.load(row + h * K + k_idx, mask=km, other=0.0).to(tl.float32)
    k = tl.load(row + H * K + h * K + k_idx, mask=km, other=0.0).to(tl.float32)
    if L2NORM:
        q = q * tl.rsqrt(tl.sum(q * q, axis=0) + 1e-6)
        k = k * tl.rsqrt(tl.sum(k * k, axis=0) + 1e-6)
    q = q * scale
    if VK:   # tile [BV, BK], K contiguous
        t_off = v_idx[:, None] * K + k_idx[None, :]
        t_m = vm[:, None] & km[None, :]
    else:    # tile [BK, BV], V contiguous
        t_off = k_idx[:, None] * V + v_idx[None, :]
        t_m = km[:, None] & vm[None, :]
    for j in tl.static_range(NH):
        hv = hv0 + j
        x = tl.load(a_ptr + i * s_a + hv).to(tl.float32) + tl.load(dtb_ptr + hv).to(tl.float32)
        softplus = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
        decay = tl.exp(-tl.exp(tl.load(alog_ptr + hv).to(tl.float32)) * softplus)
        beta = tl.sigmoid(tl.load(b_ptr + i * s_b + hv).to(tl.float32))
        v = tl.load(row + 2 * H * K + hv * V + v_idx, mask=vm, other=0.0).to(tl.float32)
        sp = state_ptr + slot * s_st0 + hv * (K * V) + t_off
        S = tl.load(sp, mask=t_m & live, other=0.0).to(tl.float32) * decay
        if VK:
            u = beta * (v - tl.sum(S * k[None, :], axis=1))
            S = S + u[:, None] * k[None, :]
            o = tl.sum(S * q[None, :], axis=1)
        else:
            u = beta * (v - tl.sum(S * k[:, None], axis=0))
            S = S + k[:, None] * u[None, :]
            o = tl.sum(S * q[:, None], axis=0)
        tl.store(sp, S.to(state_ptr.dtype.element_ty), mask=t_m & live)
        tl.store(o_ptr + i * s_o0 + hv * s_o1 + v_idx, tl.where(live, o, 0.0).to(o_ptr.dtype.element_ty), mask=vm)


# bucket by the number of (row, v-head) pairs B*HV. BV: V-tile rows; NH: v-heads per program (capped at G).
_CONFIGS = {
    ("amd", "small"): dict(BV=16, NH=1, num_warps=2),      # <= 512 pairs: spread over the CUs
    ("amd", "medium"): dict(BV=32, NH=1, num_warps=4),     # <= 8192
    ("amd", "large"): dict(BV=64, NH=2, num_warps=8),      # share q/k over the head group
    ("gfx950", "large"): dict(BV=64, NH=2, num_warps=4),
}


def _bucket(pairs: int) -> str:
    return "small" if pairs <= 512 else ("medium" if pairs <= 8192 else "large")


def decode_packed(mixed_qkv, a, b, A_log, dt_bias, state, state_indices, out, *, num_k_heads, head_k_dim,
                  head_v_dim, scale, use_qk_l2norm, state_layout):
    H, K, V = num_k_heads, head_k_dim, head_v_dim
    B = mixed_qkv.shape[0]
    HV = (mixed_qkv.shape[1] - 2 * H * K) // V
    G = HV // H
    if state_layout not in ("vk", "kv"):
        raise ValueError(f"gdn.decode_packed: state_layout must be 'vk' or 'kv', got {state_layout!r}")
    if B == 0:
        return
    inner = (K * V, K, 1) if state_layout == "vk" else (K * V, V, 1)
    if tuple(state.stride()[1:]) != inner or mixed_qkv.stride(1) != 1 or out.stride(2) != 1:
        raise ValueError("gdn.decode_packed: needs per-slot contiguous state blocks and unit last strides")
    if a.stride(1) != 1 or b.stride(1) != 1:
        raise ValueError("gdn.decode_packed: a and b need unit column stride")
    arch = L.current_arch(mixed_qkv.device)
    cfg = L.pick(_CONFIGS, arch, _bucket(B * HV), dict(BV=32, NH=1, num_warps=4))
    BK = L.next_pow2(K)
    BV = min(cfg["BV"], L.next_pow2(V))
    NH = cfg["NH"] if G % cfg["NH"] == 0 else 1
    L.launch(_gdr_packed_kernel, (B, HV // NH, L.cdiv(V, BV)),
             mixed_qkv, a, b, A_log, dt_bias, state, state_indices, out,
             mixed_qkv.stride(0), a.stride(0), b.stride(0), state.stride(0), out.stride(0), out.stride(1),
             float(scale),
             num_warps=cfg["num_warps"], num_stages=1,
             H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, NH=NH, L2NORM=bool(use_qk_l2norm), VK=state_layout == "vk")


register(Impl(op="decode_packed", backend="amd-triton", fn=decode_packed, archs=AMD_ARCHS, priority=20,
              requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"),
              state_dtypes=dtypes("float32", "bfloat16"), layouts=("vk", "kv"), validated_on=(),
              interpretable=True,
              notes="fused rearrange + gates + l2norm + delta rule from mixed_qkv; wave64 tile table by batch" + VALIDATION_NOTE))
