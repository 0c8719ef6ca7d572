"""Portable Triton commit of accepted draft steps: pool[state_indices[i]] = inter[intermediate_indices[i],
num_accepted[i] - 1], one gather/scatter launch, no host loop. num_accepted[i] == 0 or a negative index
leaves the slot unchanged. Pool and intermediate buffer share the layout, so the copy is layout-blind;
dtypes may differ (converted on the fly)."""
from __future__ import annotations

import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register
from gdn.common.triton import decode as D


@triton.jit
def commit_accepted_kernel(state, state_indices, inter, inter_indices, num_accepted,
                           s_ss, s_sh, s_sr, s_is, s_it, s_ih, s_ir,
                           HV: tl.constexpr, R: tl.constexpr, C: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    NR: tl.constexpr = (R + BR - 1) // BR
    pid = tl.program_id(0)
    i_r = pid % NR
    i_bh = pid // NR
    row = i_bh // HV
    i_hv = i_bh % HV
    slot = tl.load(state_indices + row).to(tl.int64)
    src = tl.load(inter_indices + row).to(tl.int64)
    n = tl.load(num_accepted + row).to(tl.int64)
    ok = (slot >= 0) & (src >= 0) & (n > 0)
    o_r = i_r * BR + tl.arange(0, BR)
    o_c = tl.arange(0, BC)
    m = (o_r[:, None] < R) & (o_c[None, :] < C) & ok
    x = tl.load(inter + src * s_is + (n - 1) * s_it + i_hv * s_ih + o_r[:, None] * s_ir + o_c[None, :], mask=m)
    tl.store(state + slot * s_ss + i_hv * s_sh + o_r[:, None] * s_sr + o_c[None, :],
             x.to(state.dtype.element_ty), mask=m)


def commit_accepted(state, state_indices, intermediate_states, intermediate_indices, num_accepted, *, state_layout):
    """state [S,HV,R,C]; intermediate_states [slots,T,HV,R,C] (same layout); indices, num_accepted [B]."""
    B = state_indices.shape[0]
    if B == 0:
        return
    if state.stride(-1) != 1 or intermediate_states.stride(-1) != 1:
        raise ValueError("gdn commit_accepted: the last dim of state and intermediate_states must be contiguous")
    HV, R, C = state.shape[1], state.shape[2], state.shape[3]
    BC = L.next_pow2(C)
    arch = L.current_arch(state.device)
    BR = max(1, min(L.next_pow2(R), 4096 // BC)) if arch != "cpu" else L.next_pow2(R)
    nw = 4 if BR * BC >= 2048 else 1
    grid = (B * HV * L.cdiv(R, BR),)
    si = intermediate_states
    L.launch(commit_accepted_kernel, grid, state, state_indices, si, intermediate_indices, num_accepted,
             state.stride(0), state.stride(1), state.stride(2), si.stride(0), si.stride(1), si.stride(2), si.stride(3),
             num_warps=nw, num_stages=1, HV=HV, R=R, C=C, BR=BR, BC=BC)


def _aot(arch: str) -> list:
    import torch
    m = dict(device="meta")
    built = []
    for sd in (torch.float32, torch.bfloat16):
        with L.recording(arch) as launches:
            commit_accepted(torch.empty(64, 32, 128, 128, dtype=sd, **m), torch.empty(32, dtype=torch.int32, **m),
                            torch.empty(32, 4, 32, 128, 128, dtype=sd, **m), torch.empty(32, dtype=torch.int32, **m),
                            torch.empty(32, dtype=torch.int32, **m), state_layout="vk")
        built += D.compile_recorded(launches, arch)
    return built


register(Impl(op="commit_accepted", backend="triton", fn=commit_accepted, archs=D.ARCHS, priority=10,
              requires=("triton>=3.6",), state_dtypes=dtypes("float32", "bfloat16"), layouts=("vk", "kv"),
              validated_on=("sm_90",), interpretable=True, aot=_aot,
              notes="one gather/scatter launch over (sequence, head, row block)"))
