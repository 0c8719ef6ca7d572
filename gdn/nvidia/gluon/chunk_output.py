"""Gluon chunk_output for Hopper (sm_90a: TMA tiles on mbarriers, wgmma for q k^T, q h and scores x v_new) and
Blackwell (sm_100a, compile-only: the same products by tcgen05 into tensor memory).

Kernel-level signature and semantics as gdn/common/triton/prefill/chunk_output.py (oracle:
gdn/common/reference_chunk.py):
    chunk_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, *, scale, use_qk_l2norm)
    q, k [T,H,K]; v_new [T,HV,V]; h [T//64 + N, HV, K, V] (h[s]: KV-form state entering the chunk in slot
    s = cu[n] // 64 + n + c); g_cum [T,HV] fp32; state_indices [N] (negative: the sequence's rows are zero);
    cu_seqlens [N+1]; out [T,HV,V]. Per chunk and v-head (q, k l2-normalised, q scaled):
        o = (q * exp(g_cum)) h + causal(q k^T * exp(g_cum_i - g_cum_j)) v_new
bf16/fp16 q, k, v_new, h (the wgmma operand types); fp32 inputs are declined (the Triton kernel serves them).
K, V in {64, 128, 256}. q/k/v_new may have any 16-byte aligned row stride with packed heads (views into a
packed projection are read in place); h is read as a dense [slots * HV * K, V] matrix (a copy if it is not
contiguous). Out is written with masked stores (a TMA store would overwrite the next sequence's rows in a
tail chunk).
"""
from __future__ import annotations

from gdn.common import launch as L
from gdn.common.registry import Impl, register
from gdn.common.triton.prefill import _common as PC
from gdn.nvidia.gluon import _common as C

# V block per CTA by arch: 128 keeps one CTA per (slot, v-head) at K=V=128 (h and v_new read in one tile);
# smem q, k, h, v_new = 80 KB at bf16: two CTAs per SM. One warpgroup per CTA (the 64-row wgmma tile).
_CONFIGS = L.ConfigTable({("sm_90", "any"): dict(BV=128)})
NUM_WARPS = 4


def config(arch: str, V: int) -> dict:
    cfg = dict(L.pick(_CONFIGS, arch, "any", dict(BV=128)))
    cfg["BV"] = min(cfg["BV"], V)
    return cfg


def launch_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, scale, use_qk_l2norm, cfg):
    T, H, K = q.shape
    HV, V = v_new.shape[1], v_new.shape[2]
    N = cu_seqlens.shape[0] - 1
    BV = cfg["BV"]
    q, k, v_new = C.tma_ready(q), C.tma_ready(k), C.tma_ready(v_new)
    h = h.contiguous()
    NS = h.shape[0]
    if NS * HV * K >= 2 ** 31:
        raise ValueError(f"gdn.chunk_output (gluon): argument 'h' has {NS}*{HV}*{K} rows, over the int32 TMA "
                         "coordinate range")
    NV = V // BV
    C.launch(_kernel(C.kernel_arch(q.device)), (PC.num_slots(T, N) * HV * NV,),
             C.head_matrix(q, C.BT), C.head_matrix(k, C.BT),
             C.Desc(h, (NS * HV * K, V), V, (K, BV)), C.head_matrix(v_new, C.BT, BV),
             g_cum, state_indices, cu_seqlens, out, N, HV, HV // H, NV, float(scale),
             g_cum.stride(0), g_cum.stride(1), out.stride(0), out.stride(1),
             V=V, BLOCK_N=PC.block_n(N), L2NORM=bool(use_qk_l2norm), num_warps=NUM_WARPS)


def chunk_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, *, scale, use_qk_l2norm):
    N = cu_seqlens.shape[0] - 1
    if N <= 0 or q.shape[0] == 0:
        return
    C.check_inputs("chunk_output", q=q, k=k, v_new=v_new, h=h)
    if out.stride(-1) != 1:
        raise ValueError("gdn.chunk_output (gluon): argument 'out' needs a unit last stride")
    launch_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, scale, use_qk_l2norm,
                  config(L.current_arch(q.device), v_new.shape[2]))


def _kernel(arch: str):
    """The kernel body for the arch: wgmma on sm_90, tcgen05 with tensor-memory accumulators on sm_100."""
    if arch == "sm_100":
        from gdn.nvidia.gluon._chunk_output_sm100 import chunk_output_sm100
        return chunk_output_sm100
    from gdn.nvidia.gluon._chunk_output_kernels import chunk_output_sm90
    return chunk_output_sm90


def _aot(arch: str) -> list[str]:
    return [name for name, _ in C.aot_compile("chunk_output", chunk_output, arch)]


register(Impl(op="chunk_output", backend="gluon", fn=chunk_output, archs=C.NVIDIA_ARCHS, priority=30,
              requires=C.REQUIRES, dtypes=frozenset(C.DTYPES), head_dims=C.HEAD_DIMS, validated_on=("sm_90",),
              aot=_aot, notes="Gluon: TMA + mbarrier; sm_90a wgmma, sm_100a tcgen05 into tensor memory; one "
                              "warpgroup per (chunk slot, v-head, V block)"))
