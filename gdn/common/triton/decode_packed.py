"""Portable Triton decode straight from the conv output row mixed_qkv [B, 2*H*K + HV*V] = [q_all | k_all | v_all].

The rearrange is pointer arithmetic inside the decode kernel (constexpr PACKED): no views, no copies.
"""
from __future__ import annotations

from gdn.common.registry import Impl, register
from gdn.common.triton import decode as D


def decode_packed(mixed_qkv, a, b, A_log, dt_bias, state, state_indices, out, *, num_k_heads, head_k_dim,
                  head_v_dim, scale, use_qk_l2norm, state_layout, _cfg=None):
    """mixed_qkv [B, 2*H*K + HV*V]; a,b [B,HV]; state pool (vk/kv); out [B,HV,V]."""
    x = D._row_strides(mixed_qkv)
    H, K, V = num_k_heads, head_k_dim, head_v_dim
    r = x.stride(0)
    sa, sb, so = a.stride(), b.stride(), out.stride()
    D.launch_decode_kernel(
        x, x, x, a, b, A_log, dt_bias, state, state_indices, out, scale=scale, use_qk_l2norm=use_qk_l2norm,
        state_layout=state_layout, T=1, packed=True,
        strides=(r, 0, K, r, 0, K, r, 0, V, sa[0], 0, sa[1], sb[0], 0, sb[1], so[0], 0, so[1]),
        H=H, K=K, V=V, cfg=_cfg)



def _check(props) -> list:
    return D.head_dim_reasons(props)


def _aot(arch: str) -> list:
    import torch
    from gdn.common import launch as L
    built = []
    for layout in ("vk", "kv"):
        for sd in (torch.float32, torch.bfloat16):
            args, kw = D.meta_decode_args(B=64, layout=layout, state_dtype=sd)
            q, k, v, a, b, A_log, dt_bias, state, idx, out = args
            mixed = torch.empty(64, 2 * 16 * 128 + 32 * 128, dtype=torch.bfloat16, device="meta")
            with L.recording(arch) as launches:
                decode_packed(mixed, a, b, A_log, dt_bias, state, idx, out, num_k_heads=16, head_k_dim=128,
                              head_v_dim=128, scale=kw["scale"], use_qk_l2norm=True, state_layout=layout)
            built += D.compile_recorded(launches, arch)
    return built


register(Impl(op="decode_packed", backend="triton", fn=decode_packed, archs=D.ARCHS, priority=10,
              requires=("triton>=3.6",), dtypes=D.IN_DTYPES, state_dtypes=D.STATE_DTYPES, layouts=("vk", "kv"),
              check=_check, validated_on=("sm_90",), interpretable=True, aot=_aot,
              notes="the decode kernel with q/k/v addressed inside mixed_qkv (constexpr PACKED)"))
