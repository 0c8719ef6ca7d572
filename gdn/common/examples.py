"""Representative inputs for every public op, for the demo, the AOT compile matrix, the benchmarks and
smoke tests. Values are realistic (A_log in [-4, -1], raw a/b ~ randn, keys not pre-normalised); on the
`meta` device only shapes exist.

`example(op, device, **opts)` returns (args, kwargs) for `gdn.ops.<op>(*args, **kwargs)`.
`variants(op)` lists the option sets that select different kernels (dtype, pool dtype, layout, ...).
"""
from __future__ import annotations

import torch

QWEN3_NEXT = dict(H=16, HV=32, K=128, V=128, W=4)   # per TP=1 rank
SMALL = dict(H=2, HV=4, K=16, V=32, W=4)


def _rand(shape, dtype, device, scale=1.0):
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    return (torch.randn(shape, dtype=torch.float32, device=device) * scale).to(dtype)


def _gates(HV, lead, dtype, device):
    a = _rand((*lead, HV), dtype, device)
    b = _rand((*lead, HV), dtype, device)
    if torch.device(device).type == "meta":
        A_log = torch.empty(HV, device=device)
        dt_bias = torch.empty(HV, device=device)
    else:
        A_log = torch.empty(HV, device=device).uniform_(-4, -1)
        dt_bias = torch.empty(HV, device=device).uniform_(-1, 1)
    return a, b, A_log, dt_bias


def _pool(S, HV, K, V, layout, dtype, device, lead=()):
    shape = (*lead, S, HV, V, K) if layout == "vk" else (*lead, S, HV, K, V)
    return _rand(shape, dtype, device, 0.1)


def _slots(B, S, device, pad=True):
    """B distinct slots out of S, with the second row padding (-1) when pad and B > 1."""
    if torch.device(device).type == "meta":
        return torch.empty(B, dtype=torch.int32, device=device)
    idx = torch.randperm(S, device="cpu")[:B].to(torch.int32)
    if pad and B > 1:
        idx[1] = -1
    return idx.to(device)


def _cu(lengths, device):
    if torch.device(device).type == "meta":
        return torch.empty(len(lengths) + 1, dtype=torch.int32, device=device)
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


def example(op: str, device="cpu", *, size="small", dtype=torch.bfloat16, state_dtype=torch.float32,
            layout="vk", B=4, T=3, lengths=(70, 5, 0, 67), split_layout="interleaved", fp8_dtype=None):
    d = dict(QWEN3_NEXT if size == "qwen" else SMALL)
    H, HV, K, V, W = d["H"], d["HV"], d["K"], d["V"], d["W"]
    D = 2 * H * K + HV * V
    S = 2 * B + 3
    if op == "decode":
        return (_rand((B, H, K), dtype, device), _rand((B, H, K), dtype, device), _rand((B, HV, V), dtype, device),
                *_gates(HV, (B,), dtype, device), _pool(S, HV, K, V, layout, state_dtype, device),
                _slots(B, S, device)), dict(state_layout=layout)
    if op == "decode_mtp":
        inter = _pool(T, HV, K, V, layout, state_dtype, device, lead=(B,))
        return (_rand((B, T, H, K), dtype, device), _rand((B, T, H, K), dtype, device),
                _rand((B, T, HV, V), dtype, device), *_gates(HV, (B, T), dtype, device),
                _pool(S, HV, K, V, layout, state_dtype, device), _slots(B, S, device)), \
            dict(intermediate_states=inter, disable_state_update=False, state_layout=layout)
    if op == "commit_accepted":
        inter = _pool(T, HV, K, V, layout, state_dtype, device, lead=(B,))
        if torch.device(device).type == "meta":
            acc = torch.empty(B, dtype=torch.int32, device=device)
            ii = torch.empty(B, dtype=torch.int32, device=device)
        else:
            acc = torch.randint(0, T + 1, (B,), dtype=torch.int32, device=device)
            ii = torch.arange(B, dtype=torch.int32, device=device)
        return (_pool(S, HV, K, V, layout, state_dtype, device), _slots(B, S, device), inter, ii, acc), \
            dict(state_layout=layout)
    if op == "decode_packed":
        return (_rand((B, D), dtype, device), *_gates(HV, (B,), dtype, device),
                _pool(S, HV, K, V, layout, state_dtype, device), _slots(B, S, device)), \
            dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, state_layout=layout)
    Tt = sum(lengths)
    N = len(lengths)
    if op == "prefill":
        return (_rand((Tt, H, K), dtype, device), _rand((Tt, H, K), dtype, device), _rand((Tt, HV, V), dtype, device),
                _pool(S, HV, K, V, layout, state_dtype, device), _slots(N, S, device), _cu(lengths, device)), dict(zip(("a", "b", "A_log", "dt_bias"), _gates(HV, (Tt,), dtype, device)),
                                            state_layout=layout)
    if op == "chunk_cumsum":
        return (_rand((Tt, HV), torch.float32, device),), dict(cu_seqlens=_cu(lengths, device))
    weight, bias = _rand((D, W), dtype, device, 0.5), _rand((D,), dtype, device, 0.1)
    conv_pool = _rand((S, D, W - 1), dtype, device)
    if op == "causal_conv1d_update":
        return (_rand((B, D), dtype, device), conv_pool, weight, bias), dict(state_indices=_slots(B, S, device))
    if op == "causal_conv1d":
        return (_rand((Tt, D), dtype, device), weight, bias), dict(
            cu_seqlens=_cu(lengths, device), conv_state=conv_pool, state_indices=_slots(N, S, device))
    split = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout=split_layout)
    qkvz, ba = _rand((B, 2 * H * K + 2 * HV * V), dtype, device), _rand((B, 2 * HV), dtype, device)
    if op == "split_qkvzba":
        return (qkvz, ba), split
    if op == "conv1d_update_split":
        return (qkvz, ba, conv_pool, weight, bias), dict(state_indices=_slots(B, S, device), **split)
    M = B * HV
    x, z, w = _rand((M, V), dtype, device), _rand((M, V), dtype, device), _rand((V,), dtype, device)
    if op == "rms_norm_gated":
        return (x, z, w), {}
    if op == "rms_norm_gated_fp8":
        return (x, z, w), dict(group_size=min(128, V), fp8_dtype=fp8_dtype)
    raise KeyError(f"gdn.examples: no example for op {op!r}")


_POOL_VARIANTS = [dict(dtype=dt, state_dtype=sd, layout=lay) for dt in (torch.bfloat16, torch.float32)
                  for sd in (torch.float32, torch.bfloat16) for lay in ("vk", "kv")]


def variants(op: str) -> list[dict]:
    """Option sets that compile to different kernels, for the AOT matrix."""
    if op in ("decode", "decode_packed", "prefill"):
        return _POOL_VARIANTS
    if op == "decode_mtp":
        return [dict(dtype=torch.bfloat16, state_dtype=sd, layout=lay) for sd in (torch.float32, torch.bfloat16)
                for lay in ("vk", "kv")]
    if op == "commit_accepted":
        return [dict(state_dtype=sd) for sd in (torch.float32, torch.bfloat16)]
    if op in ("split_qkvzba", "conv1d_update_split"):
        return [dict(dtype=torch.bfloat16, split_layout=s) for s in ("interleaved", "contiguous")]
    if op == "rms_norm_gated_fp8":
        return [dict(dtype=torch.bfloat16, fp8_dtype=f) for f in (torch.float8_e4m3fn, torch.float8_e4m3fnuz)]
    return [dict(dtype=torch.bfloat16), dict(dtype=torch.float32)]


# Internal ops (prefill sub-ops) have no public function: their modules register kernel-level examples.
KERNEL_EXAMPLES: dict[str, tuple] = {}


def register_kernel_example(op: str, fn, op_variants=({},)) -> None:
    """fn(device, **opts) -> (args, kwargs) in the op's kernel-level signature (outputs included)."""
    KERNEL_EXAMPLES[op] = (fn, list(op_variants))
