"""CuTeDSL decode for Hopper and Blackwell: one token per sequence, state tile in registers.

The kernel (`_kernel.DecodeKernel`, T = 1) splits each (sequence, v-head) state over `V / BV` CTAs, with the
split chosen by batch from the table in `_common.py` (many CTAs per state at small batch, larger tiles at
large batch); 16-byte state vectors, warp-shuffle reductions over K (vk), raw gates, q/k l2norm and scale
fused. Compiled once per (dtypes, layout, head dims, flags, tile, arch), symbolic batch; launched on torch's
current stream with raw pointers (CUDA-graph capturable, no host sync, nothing allocated), with programmatic
dependent launch where `launch.use_pdl` says so (small grids; `_common.run`).
"""
from __future__ import annotations

from gdn.common.registry import Impl, dtypes, register
from gdn.nvidia.cutedsl import _common as C

IN_DTYPES = dtypes("bfloat16", "float16", "float32")
STATE_DTYPES = dtypes("float32", "bfloat16")


def decode(q, k, v, a, b, A_log, dt_bias, state, state_indices, out, *, scale, use_qk_l2norm, state_layout,
           _tile=None):
    """q,k [B,H,K]; v [B,HV,V]; a,b [B,HV]; state [S,HV,V,K] (vk) / [S,HV,K,V] (kv); out [B,HV,V]."""
    q, k, v = C.inner_contiguous(q, 2), C.inner_contiguous(k, 2), C.inner_contiguous(v, 2)
    a, b = C.inner_contiguous(a, 1), C.inner_contiguous(b, 1)
    A_log, dt_bias = A_log.contiguous(), dt_bias.contiguous()
    C.check_pool("state", state, 1)
    if not out.is_contiguous():
        raise ValueError("gdn decode (cutedsl): out must be contiguous")
    C.run(q=q, k=k, v=v, q_addr=q.data_ptr(), k_addr=k.data_ptr(), v_addr=v.data_ptr(),
          qkv_strides=((q.stride(0), 0), (k.stride(0), 0), (v.stride(0), 0)),
          a=a, b=b, ab_strides=((a.stride(0), 0), (b.stride(0), 0)), A_log=A_log, dt_bias=dt_bias,
          state=state, state_indices=state_indices, out=out, scale=scale, use_qk_l2norm=use_qk_l2norm,
          state_layout=state_layout, H=q.shape[1], K=q.shape[2], V=v.shape[2], T=1, tile=_tile)


def aot_specs(arch: str) -> list:
    """Every tile the table picks, both layouts, both pool dtypes, and the PDL twin of each tile run() launches
    with PDL at some batch; plus fp32 activations with int64 slots,
    no l2norm with a bf16 dt_bias, K=V=64 and K=V=256, a pool whose slot stride is only 4-byte aligned, and
    the tile options (early loads, streamed rows) the sweep may put in the table."""
    specs = []
    for layout in ("vk", "kv"):
        for sd in ("fp32", "bf16"):
            for tile in C.table_tiles(arch, layout, sd):
                specs.append(C.base_spec(arch, layout=layout, state=sd, tile=tile))
            for tile in C.pdl_table_tiles(arch, layout, sd):
                specs.append(C.base_spec(arch, layout=layout, state=sd, tile=tile, pdl=True))
    t = C.tile_for(arch, "vk", "fp32", 32 * 64)
    specs.append(C.base_spec(arch, qkv="fp32", a="fp32", b="fp32", out="fp32", idx="i64", tile=t))
    specs.append(C.base_spec(arch, l2norm=False, dtb="bf16", tile=t))
    specs.append(C.base_spec(arch, state_align=4, tile=t))
    for d in (64, 256):
        for layout in ("vk", "kv"):
            specs.append(C.base_spec(arch, layout=layout, K=d, V=d, H=4, HV=8,
                                     tile=C.tile_for(arch, layout, "fp32", 8 * 64, 1, d, d)))
    # the tile options the sweep may put in the table: early loads (both layouts), streamed rows (vk)
    for layout, sd, nh, opts in (("vk", "bf16", 32 * 512, "es"), ("vk", "fp32", 32 * 512, "es"),
                                 ("vk", "fp32", 32, "e"), ("kv", "fp32", 32 * 64, "e")):
        specs.append(C.base_spec(arch, layout=layout, state=sd,
                                 tile=C.with_opts(C.tile_for(arch, layout, sd, nh), opts)))
    specs.append(C.base_spec(arch, state="bf16", tile=(32, 4, "s")))
    return specs


def _aot(arch: str) -> list:
    return C.aot_compile(arch, aot_specs(arch))


register(Impl(op="decode", backend="cutedsl", fn=decode, archs=C.ARCHS, priority=C.PRIORITY,
              arch_priority=C.ARCH_PRIORITY, requires=C.REQUIRES,
              dtypes=IN_DTYPES, state_dtypes=STATE_DTYPES, layouts=("vk", "kv"), head_dims=C.HEAD_DIMS,
              validated_on=("sm_90",), interpretable=False, aot=_aot,
              notes="CuTeDSL; state tile in registers, V split over CTAs by a (arch or GPU model, batch) table, "
                    "symbolic batch, raw-pointer launch on the current stream"))
