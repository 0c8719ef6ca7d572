"""Portable Triton speculative verify: T = 1..16 draft tokens per sequence, chain or tree.

The decode kernel with constexpr T: the program keeps its state tile on chip across the T steps, writes
each step's state to intermediate_states (row intermediate_indices[i], default i; negative skips) and,
unless disable_state_update, the last one to the pool.

Tree verify (parent_indices [B, T], step t starts from the state after step parent[t], -1 = the pool):
the pool state stays in registers, parent t-1 is the running tile, and an earlier parent is read back
from the intermediate row this program wrote itself. Where no intermediate row exists (no buffer, or a
negative intermediate index) the parent's state is recomputed on chip from the pool state along its
ancestor chain, so every combination of arguments computes the reference result. parent[t] < t is
required (a tree in topological order); the walk is bounded by T, so a malformed tree cannot hang.
"""
from __future__ import annotations

from gdn.common.registry import Impl, register
from gdn.common.triton import decode as D

MAX_T = 16


def decode_mtp(q, k, v, a, b, A_log, dt_bias, state, state_indices, out, intermediate_states,
               intermediate_indices, parent_indices, *, disable_state_update, scale, use_qk_l2norm, state_layout,
               _cfg=None):
    """q,k [B,T,H,K]; v [B,T,HV,V]; a,b [B,T,HV]; out [B,T,HV,V]; intermediate_states [slots, >=T, HV, ...]."""
    T = q.shape[1]
    if T > MAX_T:
        raise ValueError(f"gdn decode_mtp (triton): T={T} > {MAX_T}")
    if intermediate_states is not None and intermediate_states.shape[1] < T:
        raise ValueError(f"gdn decode_mtp: intermediate_states has {intermediate_states.shape[1]} steps, need {T}")
    q, k, v = D._row_strides(q), D._row_strides(k), D._row_strides(v)
    D.launch_decode_kernel(
        q, k, v, a, b, A_log, dt_bias, state, state_indices, out, scale=scale, use_qk_l2norm=use_qk_l2norm,
        state_layout=state_layout, T=T,
        strides=(*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *a.stride(), *b.stride(), *out.stride()[:3]),
        H=q.shape[2], K=q.shape[3], V=v.shape[3],
        inter=intermediate_states, inter_indices=intermediate_indices, parent=parent_indices,
        update_state=not disable_state_update, cfg=_cfg)

def _check(props) -> list:
    out = D.head_dim_reasons(props)
    T = props.get("T")
    if T is not None and T > MAX_T:
        out.append(f"T={T} > {MAX_T} draft tokens")
    return out


def _aot(arch: str) -> list:
    import torch
    from gdn.common import launch as L
    built = []
    m = dict(device="meta")
    B, T, H, HV, K, V = 32, 4, 16, 32, 128, 128
    for layout in ("vk", "kv"):
        for sd in (torch.float32, torch.bfloat16):
            for tree in (False, True):
                shape = (HV, V, K) if layout == "vk" else (HV, K, V)
                q = torch.empty(B, T, H, K, dtype=torch.bfloat16, **m)
                v = torch.empty(B, T, HV, V, dtype=torch.bfloat16, **m)
                ab = torch.empty(B, T, HV, dtype=torch.bfloat16, **m)
                par = torch.empty(B, T, dtype=torch.int32, **m) if tree else None
                with L.recording(arch) as launches:
                    decode_mtp(q, q, v, ab, ab, torch.empty(HV, **m), torch.empty(HV, **m),
                               torch.empty(64, *shape, dtype=sd, **m), torch.empty(B, dtype=torch.int32, **m),
                               torch.empty(B, T, HV, V, dtype=torch.bfloat16, **m),
                               torch.empty(B, T, *shape, dtype=sd, **m), None, par,
                               disable_state_update=True, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
                built += D.compile_recorded(launches, arch)
    return built


register(Impl(op="decode_mtp", backend="triton", fn=decode_mtp, archs=D.ARCHS, priority=10,
              requires=("triton>=3.6",), dtypes=D.IN_DTYPES, state_dtypes=D.STATE_DTYPES, layouts=("vk", "kv"),
              check=_check, validated_on=("sm_90",), interpretable=True, aot=_aot,
              notes="the decode kernel with constexpr T <= 16; tree verify reads back or recomputes parents"))
