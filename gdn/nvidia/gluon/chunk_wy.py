"""Gluon chunk_wy for Hopper (sm_90a: k and v tiles by TMA, A from registers into wgmma) and Blackwell (sm_100a,
compile-only: the same tiles, A's parts from shared memory into tcgen05, w and u accumulated in tensor memory).

Kernel-level signature and semantics as gdn/common/triton/prefill/chunk_wy.py (oracle:
gdn/common/reference_chunk.py):
    chunk_wy(k, v, g_cum, beta, A, cu_seqlens, w, u, *, use_qk_l2norm)
    k [T,H,K]; v [T,HV,V]; g_cum, beta [T,HV] fp32; A [T,HV,64] (chunk_kkt_solve's output, fp32 or 16-bit);
    outputs w [T,HV,K], u [T,HV,V] (unit last stride, any float dtype). Per chunk and v-head:
        w = A (beta * exp(g_cum) * k),  u = A (beta * v)   (k l2-normalised when use_qk_l2norm)
bf16/fp16 k and v (the wgmma operand types); fp32 is declined (the Triton kernel serves it). K, V in
{64, 128, 256}; k and v may have any 16-byte aligned row stride with packed heads.
"""
from __future__ import annotations

from gdn.common.registry import Impl, register
from gdn.common.triton.prefill import _common as PC
from gdn.nvidia.gluon import _common as C

NUM_WARPS = 4      # one warpgroup: the 64-row wgmma tile


def chunk_wy(k, v, g_cum, beta, A, cu_seqlens, w, u, *, use_qk_l2norm):
    T, H, K = k.shape
    HV = v.shape[1]
    N = cu_seqlens.shape[0] - 1
    if N <= 0 or T == 0:
        return
    C.check_inputs("chunk_wy", k=k, v=v)
    for name, t in (("A", A), ("w", w), ("u", u)):
        if t.stride(-1) != 1:
            raise ValueError(f"gdn.chunk_wy (gluon): argument '{name}' needs a unit last stride")
    k, v = C.tma_ready(k), C.tma_ready(v)
    C.launch(_kernel(C.kernel_arch(k.device)), (PC.num_slots(T, N) * HV,), C.head_matrix(k, C.BT),
             C.head_matrix(v, C.BT), g_cum, beta, A, w, u, cu_seqlens, N, HV, HV // H, g_cum.stride(0), g_cum.stride(1),
             beta.stride(0), beta.stride(1), A.stride(0), A.stride(1), w.stride(0), w.stride(1),
             u.stride(0), u.stride(1), BLOCK_N=PC.block_n(N), L2NORM=bool(use_qk_l2norm), num_warps=NUM_WARPS)


def _kernel(arch: str):
    """The kernel body for the arch: wgmma on sm_90, tcgen05 with tensor-memory accumulators on sm_100."""
    if arch == "sm_100":
        from gdn.nvidia.gluon._chunk_wy_sm100 import chunk_wy_sm100
        return chunk_wy_sm100
    from gdn.nvidia.gluon._chunk_wy_kernels import chunk_wy_sm90
    return chunk_wy_sm90


def _aot(arch: str) -> list[str]:
    return [name for name, _ in C.aot_compile("chunk_wy", chunk_wy, arch)]


register(Impl(op="chunk_wy", backend="gluon", fn=chunk_wy, archs=C.NVIDIA_ARCHS, priority=30, requires=C.REQUIRES,
              dtypes=frozenset(C.DTYPES), head_dims=C.HEAD_DIMS, validated_on=("sm_90",), aot=_aot,
              notes="Gluon: TMA + mbarrier; sm_90a wgmma with A from registers, sm_100a tcgen05 with A's two "
                    "16-bit parts in shared memory; one warpgroup per (chunk slot, v-head)"))
