"""CuTeDSL decode straight from the conv output row mixed_qkv [B, 2*H*K + HV*V] = [q_all | k_all | v_all].

The decode kernel with q, k and v addressed inside mixed_qkv: three base addresses and one row stride,
no views, no copies (the same compiled variant as `decode` when the alignments agree).
"""
from __future__ import annotations

from gdn.common.registry import Impl, register
from gdn.nvidia.cutedsl import _common as C
from gdn.nvidia.cutedsl.decode import IN_DTYPES, STATE_DTYPES


def decode_packed(mixed_qkv, a, b, A_log, dt_bias, state, state_indices, out, *, num_k_heads, head_k_dim,
                  head_v_dim, scale, use_qk_l2norm, state_layout, _tile=None):
    """mixed_qkv [B, 2*H*K + HV*V]; a,b [B,HV]; state pool (vk/kv); out [B,HV,V]."""
    x = C.inner_contiguous(mixed_qkv, 1)
    a, b = C.inner_contiguous(a, 1), C.inner_contiguous(b, 1)
    A_log, dt_bias = A_log.contiguous(), dt_bias.contiguous()
    C.check_pool("state", state, 1)
    if not out.is_contiguous():
        raise ValueError("gdn decode_packed (cutedsl): out must be contiguous")
    H, K, V = num_k_heads, head_k_dim, head_v_dim
    base, es, r = x.data_ptr(), x.element_size(), x.stride(0)
    C.run(q=x, k=x, v=x, q_addr=base, k_addr=base + H * K * es, v_addr=base + 2 * H * K * es,
          qkv_strides=((r, 0), (r, 0), (r, 0)), a=a, b=b, ab_strides=((a.stride(0), 0), (b.stride(0), 0)),
          A_log=A_log, dt_bias=dt_bias, state=state, state_indices=state_indices, out=out, scale=scale,
          use_qk_l2norm=use_qk_l2norm, state_layout=state_layout, H=H, K=K, V=V, T=1, tile=_tile)


def aot_specs(arch: str) -> list:
    """Both layouts and pool dtypes at the table's large-batch tile; a mixed_qkv row that is only 4-byte
    aligned exercises the narrow-vector q/k/v variant; the PDL variant of B=1 (a layer's decode step)."""
    specs = []
    for layout in ("vk", "kv"):
        for sd in ("fp32", "bf16"):
            specs.append(C.base_spec(arch, layout=layout, state=sd, tile=C.tile_for(arch, layout, sd, 32 * 256)))
    specs.append(C.base_spec(arch, qkv_align=4, tile=C.tile_for(arch, "vk", "fp32", 32 * 8)))
    specs.append(C.base_spec(arch, tile=C.tile_for(arch, "vk", "fp32", 32), pdl=True))
    return specs


def _aot(arch: str) -> list:
    return C.aot_compile(arch, aot_specs(arch))


register(Impl(op="decode_packed", backend="cutedsl", fn=decode_packed, archs=C.ARCHS, priority=C.PRIORITY,
              arch_priority=C.ARCH_PRIORITY,
              requires=C.REQUIRES, dtypes=IN_DTYPES, state_dtypes=STATE_DTYPES, layouts=("vk", "kv"),
              head_dims=C.HEAD_DIMS, validated_on=("sm_90",), interpretable=False, aot=_aot,
              notes="the CuTeDSL decode kernel addressing q/k/v inside mixed_qkv (pointer arithmetic)"))
