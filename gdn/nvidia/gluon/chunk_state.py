"""Gluon chunk_state for Hopper (sm_90a): the sequential inter-chunk pass with the state in registers.

Kernel-level signature and semantics as gdn/common/triton/prefill/chunk_state.py (oracle:
gdn/common/reference_chunk.py), the plain pass (h and v_new outputs):
    chunk_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, *,
                use_qk_l2norm, state_layout)
    k [T,H,K]; w [T,HV,K], u [T,HV,V]; g_cum [T,HV] fp32; state pool [S,HV,V,K] ("vk") or [S,HV,K,V]
    ("kv"), fp32 or bf16, any strides; state_indices [N] (negative: pool untouched, the sequence's h slots
    and v_new rows zero); has_initial_state [N] bool or None; outputs h [T//64 + N, HV, K, V] (w's dtype)
    and v_new [T,HV,V] (unit last stride, any float dtype). Per chunk (slot s = cu[n] // 64 + n + c):
        h[s] = state;  v_new = u - w h;  state = exp(g_last) state + (k * rk * exp(g_last - g_cum))^T v_new
bf16/fp16 k, w, u of one dtype (wgmma operands); fp32 is declined (the Triton kernel serves it). K, V in
{64, 128, 256}. The key norms rk are taken in the kernel from the k tile (no [T,H] buffer needed).
k, w, u may have any 16-byte aligned row stride with packed heads; h is written as a dense
[slots * HV * K, V] matrix by TMA (it must be contiguous).
"""
from __future__ import annotations

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton.prefill import chunk_state as TS
from gdn.nvidia.gluon import _common as C

# BV (state columns per CTA) and STAGES (chunks of w/k/u tiles in flight) by bucket (TS.bucket: N * HV
# below 128 is "narrow"). Narrow (1x32768: 32 pairs): BV=32 makes 4 CTAs per pair (128 CTAs), 3 stages
# (108 KB of tiles) hide TMA latency behind a chain that has no other work to overlap. Wide (8x4096: 256
# pairs): BV=64, 2 stages (104 KB in all) for two CTAs per SM. Not yet swept on a GPU.
# bench/bench_gluon_prefill.py on an H100, 2026-11-22 (chunk_state alone, CUDA graph): 8x4096 ("wide")
# BV=32/2 stages 0.655 ms (64/2 0.665, 16/2 0.861; Triton 0.72); 1x32768 ("narrow") 32/3 0.754 ms
# (16/2 0.763, 64/2 0.908; Triton 0.774).
_CONFIGS = {("sm_90", "narrow"): dict(BV=32, STAGES=3), ("sm_90", "wide"): dict(BV=32, STAGES=2)}
NUM_WARPS = 4                  # one warpgroup: the 64-row wgmma tile
SMEM_BUDGET = 200 * 1024       # of sm_90's 227 KB per CTA, leaving room for layout-conversion scratch


def smem_bytes(K: int, BV: int, stages: int, itemsize: int = 2) -> int:
    """Shared tiles of one CTA: STAGES x (w, k [64, K], u [64, BV]), h [K, BV], vs [64, BV]."""
    return (stages * (2 * C.BT * K + C.BT * BV) + K * BV + C.BT * BV) * itemsize


def config(arch: str, N: int, HV: int, K: int, V: int) -> dict:
    cfg = dict(L.pick(_CONFIGS, arch, TS.bucket(N, HV), dict(BV=32, STAGES=2)))
    cfg["BV"] = min(cfg["BV"], V, 32 if K > 128 else 256)     # K=256: the [K, BV] fp32 state in registers
    while cfg["STAGES"] > 2 and smem_bytes(K, cfg["BV"], cfg["STAGES"]) > SMEM_BUDGET:
        cfg["STAGES"] -= 1
    return cfg


def launch_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, use_qk_l2norm,
                 state_layout, cfg):
    from gdn.nvidia.gluon._chunk_state_kernels import chunk_state_sm90
    T, H, K = k.shape
    HV, V = u.shape[1], u.shape[2]
    N = cu_seqlens.shape[0] - 1
    BV, stages = cfg["BV"], cfg["STAGES"]
    if V % BV or BV < 16:
        raise ValueError(f"gdn.chunk_state (gluon): BV={BV} must divide V={V} and be >= 16")
    if T == 0:      # only empty sequences (states still set): descriptors need rows, no chunk reads them
        k, w, u = k.new_zeros(1, H, K), w.new_zeros(1, HV, K), u.new_zeros(1, HV, V)
    k, w, u = C.tma_ready(k), C.tma_ready(w), C.tma_ready(u)
    NS = h.shape[0]
    if NS * HV * K >= 2 ** 31:
        raise ValueError(f"gdn.chunk_state (gluon): argument 'h' has {NS}*{HV}*{K} rows, over the int32 TMA "
                         "coordinate range")
    NV = V // BV
    C.launch(chunk_state_sm90, (N * HV * NV,),
             C.head_matrix(w, C.BT), C.head_matrix(k, C.BT), C.head_matrix(u, C.BT, BV),
             C.Desc(h, (NS * HV * K, V), V, (K, BV)),
             g_cum, state, state_indices, cu_seqlens, has_initial_state, v_new, HV, HV // H, NV,
             g_cum.stride(0), g_cum.stride(1), *TS.pool_strides(state, state_layout), v_new.stride(0),
             v_new.stride(1), V=V, L2NORM=bool(use_qk_l2norm), STAGES=stages, num_warps=NUM_WARPS)


def chunk_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, *, use_qk_l2norm,
                state_layout):
    N = cu_seqlens.shape[0] - 1
    if N <= 0:
        return
    C.check_inputs("chunk_state", k=k, w=w, u=u)
    for name, t in (("u", u), ("k", k)):
        if t.dtype != w.dtype:
            raise TypeError(f"gdn.chunk_state (gluon): argument '{name}' must have w's dtype {w.dtype} (one wgmma "
                            f"operand type), got {t.dtype}")
    if h.dtype != w.dtype or not h.is_contiguous():
        raise ValueError(f"gdn.chunk_state (gluon): argument 'h' must be contiguous with w's dtype {w.dtype} "
                         f"(TMA-stored from the MMA's shared tile), got {h.dtype}, strides {h.stride()}")
    if v_new.stride(-1) != 1:
        raise ValueError("gdn.chunk_state (gluon): argument 'v_new' needs a unit last stride")
    if state_layout not in ("vk", "kv"):
        raise ValueError(f"gdn.chunk_state (gluon): argument 'state_layout' must be 'vk' or 'kv', got "
                         f"{state_layout!r}")
    cfg = config(L.current_arch(k.device), N, u.shape[1], k.shape[2], u.shape[2])
    launch_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, use_qk_l2norm,
                 state_layout, cfg)


def _aot(arch: str) -> list[str]:
    return [name for name, _ in C.aot_compile("chunk_state", chunk_state, arch)]


register(Impl(op="chunk_state", backend="gluon", fn=chunk_state, archs=C.HOPPER, priority=30, requires=C.REQUIRES,
              dtypes=frozenset(C.DTYPES), state_dtypes=dtypes("float32", "bfloat16"), layouts=("vk", "kv"),
              head_dims=C.HEAD_DIMS, validated_on=("sm_90",), aot=_aot,
              notes="Gluon sm_90a: fp32 state in registers, TMA-pipelined w/k/u tiles, wgmma; one warpgroup "
                    "per (sequence, v-head, BV state columns)"))
