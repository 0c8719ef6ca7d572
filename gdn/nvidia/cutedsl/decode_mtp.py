"""CuTeDSL speculative verify (decode_mtp): T = 1..16 draft tokens per sequence, chain or tree.

The decode kernel with compile-time T: the CTA keeps its state tile in registers across the T steps, writes
each step's state to intermediate_states (row intermediate_indices[i], default i; negative skips) and,
unless disable_state_update, the last one to the pool.

Tree verify (parent_indices [B, T]; step t starts from the state after step parent[t], -1 = the pool):
the pool state stays in registers, parent t-1 is the running tile, and an earlier parent is read back from
the fp32 intermediate row this thread wrote itself; with no buffer, a negative intermediate index or a
bf16 buffer (whose rounding the reference does not have) the parent's state is recomputed on chip from the
pool state along its ancestor chain. parent[t] < t is required; the walk is bounded by T.
"""
from __future__ import annotations

from gdn.common.registry import Impl, register
from gdn.nvidia.cutedsl import _common as C
from gdn.nvidia.cutedsl.decode import IN_DTYPES, STATE_DTYPES


def decode_mtp(q, k, v, a, b, A_log, dt_bias, state, state_indices, out, intermediate_states,
               intermediate_indices, parent_indices, *, disable_state_update, scale, use_qk_l2norm, state_layout,
               _tile=None):
    """q,k [B,T,H,K]; v [B,T,HV,V]; a,b [B,T,HV]; out [B,T,HV,V]; intermediate_states [slots, >=T, HV, ...]."""
    T = q.shape[1]
    if T > C.MAX_T:
        raise ValueError(f"gdn decode_mtp (cutedsl): T={T} > {C.MAX_T}")
    q, k, v = C.inner_contiguous(q, 2), C.inner_contiguous(k, 2), C.inner_contiguous(v, 2)
    a, b = C.inner_contiguous(a, 1), C.inner_contiguous(b, 1)
    A_log, dt_bias = A_log.contiguous(), dt_bias.contiguous()
    C.check_pool("state", state, 1)
    inter = intermediate_states
    if inter is not None:
        C.check_pool("intermediate_states", inter, 2)
        if inter.shape[1] < T:
            raise ValueError(f"gdn decode_mtp: intermediate_states has {inter.shape[1]} steps, need {T}")
    parent = parent_indices.contiguous() if parent_indices is not None else None
    if not out.is_contiguous():
        raise ValueError("gdn decode_mtp (cutedsl): out must be contiguous")
    C.run(q=q, k=k, v=v, q_addr=q.data_ptr(), k_addr=k.data_ptr(), v_addr=v.data_ptr(),
          qkv_strides=((q.stride(0), q.stride(1)), (k.stride(0), k.stride(1)), (v.stride(0), v.stride(1))),
          a=a, b=b, ab_strides=((a.stride(0), a.stride(1)), (b.stride(0), b.stride(1))), A_log=A_log,
          dt_bias=dt_bias, state=state, state_indices=state_indices, out=out, scale=scale,
          use_qk_l2norm=use_qk_l2norm, state_layout=state_layout, H=q.shape[2], K=q.shape[3], V=v.shape[3],
          T=T, inter=inter, inter_indices=intermediate_indices, parent=parent,
          update_state=not disable_state_update, tile=_tile)


def _check(props) -> list:
    T = props.get("T")
    return [f"T={T} > {C.MAX_T} draft tokens"] if T is not None and T > C.MAX_T else []


def aot_specs(arch: str) -> list:
    """Chain verify (fp32 intermediates, pool untouched) for T in 2, 4, 8 in vk; tree verify with read-back
    (fp32 buffer, explicit rows) and with recompute (bf16 buffer); the state update path; kv at T=4; the
    early-load option at T=4 and streamed rows at T=1; PDL twins of the T=4 chain (vk) and tree (kv) verify
    at B=32 (run() launches grids that small with PDL); every table tile at T = 2, 4, 8 and its PDL twin."""
    specs = []
    for T in (2, 4, 8):
        specs.append(C.base_spec(arch, T=T, inter="fp32", update_state=False,
                                 tile=C.tile_for(arch, "vk", "fp32", 32 * 32, T)))
    tile = C.tile_for(arch, "vk", "fp32", 32 * 32, 4)
    specs.append(C.base_spec(arch, T=4, inter="fp32", inter_idx="i32", parent="i32", update_state=False, tile=tile))
    tile_b = C.tile_for(arch, "vk", "bf16", 32 * 32, 4)
    specs.append(C.base_spec(arch, T=4, state="bf16", inter="bf16", parent="i64", update_state=False, tile=tile_b))
    specs.append(C.base_spec(arch, T=4, state="bf16", tile=tile_b))
    for sd in ("fp32", "bf16"):
        specs.append(C.base_spec(arch, layout="kv", T=4, state=sd, inter=sd, parent="i32", update_state=False,
                                 tile=C.tile_for(arch, "kv", sd, 32 * 32, 4)))
    # early loads with T > 1 (tree, read-back); T = 1 with streamed rows writing intermediates and the pool
    specs.append(C.base_spec(arch, T=4, inter="fp32", inter_idx="i32", parent="i32", update_state=False,
                             tile=C.with_opts(tile, "e")))
    specs.append(C.base_spec(arch, T=1, state="bf16", inter="bf16", inter_idx="i32",
                             tile=C.with_opts(C.tile_for(arch, "vk", "bf16", 32 * 512), "es")))
    specs.append(C.base_spec(arch, T=4, inter="fp32", update_state=False, tile=tile, pdl=True))
    specs.append(C.base_spec(arch, layout="kv", T=4, inter="fp32", parent="i32", update_state=False, pdl=True,
                             tile=C.tile_for(arch, "kv", "fp32", 32 * 32, 4)))
    # every tile the MTP rows pick under each table key of the arch (an H200 has its own), with the PDL twin of
    # those run() launches with PDL
    for T in (2, 4, 8):
        for t in C.table_tiles(arch, "vk", "fp32", T=T):
            specs.append(C.base_spec(arch, T=T, inter="fp32", update_state=False, tile=t))
        for t in C.pdl_table_tiles(arch, "vk", "fp32", T=T):
            specs.append(C.base_spec(arch, T=T, inter="fp32", update_state=False, tile=t, pdl=True))
    return list(dict.fromkeys(specs))


def _aot(arch: str) -> list:
    return C.aot_compile(arch, aot_specs(arch))


register(Impl(op="decode_mtp", backend="cutedsl", fn=decode_mtp, archs=C.ARCHS, priority=C.PRIORITY,
              arch_priority=C.ARCH_PRIORITY,
              requires=C.REQUIRES, dtypes=IN_DTYPES, state_dtypes=STATE_DTYPES, layouts=("vk", "kv"),
              head_dims=C.HEAD_DIMS, check=_check, validated_on=("sm_90",), interpretable=False, aot=_aot,
              notes="the CuTeDSL decode kernel with compile-time T <= 16; tree verify reads back (fp32 "
                    "buffer) or recomputes parents"))
