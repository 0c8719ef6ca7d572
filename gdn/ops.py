"""Public API of gdn: one function per op (validate -> select -> call). Signatures are those of
spec/ops.md. Every op takes `backend=None` to force a registered backend (raises with its reasons if it
cannot run); `explain(op, *args, **kwargs)` returns the dispatch table for those inputs.

Pools (`state`, `conv_state`) are updated in place; a negative slot index is padding (slot untouched,
output rows zero). Outputs are new tensors unless `out=` is given.
"""
from __future__ import annotations

import contextvars
import importlib

import torch

from gdn.common import checks, custom_ops, probe, registry

OPS = ("decode", "decode_mtp", "commit_accepted", "decode_packed", "prefill", "chunk_cumsum",
       "causal_conv1d_update", "causal_conv1d", "split_qkvzba", "conv1d_update_split", "rms_norm_gated",
       "rms_norm_gated_fp8")
__all__ = [*OPS, "explain", "GDNInputError", "NoBackendError"]

GDNInputError = checks.GDNInputError
NoBackendError = registry.NoBackendError

_BACKEND_PACKAGES = ("gdn.common.reference", "gdn.common.reference_chunk", "gdn.common.triton", "gdn.amd.triton",
                     "gdn.nvidia.gluon", "gdn.nvidia.cutedsl")
_loaded = False


def load_backends() -> None:
    """Import every backend package once so it registers (lazy: first op call, `gdn info`, tests)."""
    global _loaded
    if _loaded:
        return
    for name in _BACKEND_PACKAGES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:      # a backend's own dependency is missing: its Impl records say so
                raise
    _loaded = True


class _Intercepted(Exception):
    def __init__(self, result):
        self.result = result


# When set, `_run` hands (op, props, backend, args, kwargs) to this callback instead of running:
# `explain` and the AOT matrix (`capture`) see exactly what a launcher would receive.
_INTERCEPT = contextvars.ContextVar("gdn_intercept", default=None)


@torch._dynamo.assume_constant_result
def _backend_name(op: str, props: tuple, backend: str | None) -> str:
    # Under torch.compile the choice is made once at trace time (dynamo runs this as plain Python and
    # bakes the name into the graph as a constant).
    load_backends()
    return registry.select(op, dict(props), backend).backend


def _run(op: str, props: dict, backend: str | None, *args, **kwargs) -> None:
    if torch.compiler.is_compiling():
        custom_ops.call(op, *args, backend=_backend_name(op, tuple(props.items()), backend), **kwargs)
        return
    load_backends()
    hook = _INTERCEPT.get()
    if hook is not None:
        raise _Intercepted(hook(op, props, backend, args, kwargs))
    registry.select(op, props, backend).fn(*args, **kwargs)


def _intercept(hook, op: str, args, kwargs):
    if op not in OPS:
        raise KeyError(f"gdn: unknown op {op!r} (ops: {', '.join(OPS)})")
    token = _INTERCEPT.set(hook)
    try:
        globals()[op](*args, **kwargs)
    except _Intercepted as e:
        return e.result
    finally:
        _INTERCEPT.reset(token)
    raise AssertionError(f"gdn.{op} returned without dispatching")


def explain(op: str, *args, **kwargs) -> list[dict]:
    """Dispatch table for `gdn.ops.<op>(*args, **kwargs)`: one row per backend (chosen / available /
    unavailable with reasons), without running anything."""
    return _intercept(lambda op_, props, backend, a, kw: registry.explain(op_, props, backend), op, args, kwargs)


def capture(op: str, *args, **kwargs):
    """(props, args, kwargs) that `gdn.ops.<op>(*args, **kwargs)` would pass to a launcher; runs nothing."""
    return _intercept(lambda op_, props, backend, a, kw: (dict(props), a, kw), op, args, kwargs)


def _contig(*ts):
    """.contiguous() of each tensor (None stays); skipped where the validation cache knows all are."""
    return [t.contiguous() if isinstance(t, torch.Tensor) else t for t in ts]


# ----------------------------------------------------------------------------------------------------
# decode family

def decode(q, k, v, a, b, A_log, dt_bias, state, state_indices, *, scale=None, use_qk_l2norm=True,
           state_layout="vk", out=None, backend=None):
    """One token per sequence. q,k [B,H,K]; v [B,HV,V]; a,b [B,HV]; A_log, dt_bias [HV];
    state [S,HV,V,K] ("vk") or [S,HV,K,V] ("kv"), fp32/bf16, updated in place; state_indices [B].
    Returns o [B,HV,V] in v's dtype."""
    props, contiguous = checks.decode(q, k, v, a, b, A_log, dt_bias, state, state_indices, state_layout, out)
    if not contiguous:
        q, k, v, a, b, A_log, dt_bias = _contig(q, k, v, a, b, A_log, dt_bias)
    out = torch.empty_like(v) if out is None else out
    _run("decode", props, backend, q, k, v, a, b, A_log, dt_bias, state, state_indices, out,
         scale=checks.scale(scale, q.shape[-1]), use_qk_l2norm=bool(use_qk_l2norm), state_layout=state_layout)
    return out


def decode_mtp(q, k, v, a, b, A_log, dt_bias, state, state_indices, *, intermediate_states=None,
               intermediate_indices=None, parent_indices=None, disable_state_update=True, scale=None,
               use_qk_l2norm=True, state_layout="vk", out=None, backend=None):
    """Speculative verify, T tokens per sequence: q,k [B,T,H,K]; v [B,T,HV,V]; a,b [B,T,HV].
    intermediate_states [slots,T,HV,...] (pool layout) receives the state after each step (row
    intermediate_indices[i], default i; negative skips); parent_indices [B,T] for tree verify (-1 = pool).
    disable_state_update=False writes the state after the last step to the pool. Returns o [B,T,HV,V]."""
    props, contiguous = checks.decode_mtp(q, k, v, a, b, A_log, dt_bias, state, state_indices, intermediate_states,
                                          intermediate_indices, parent_indices, disable_state_update, state_layout,
                                          out)
    if not contiguous:
        q, k, v, a, b, A_log, dt_bias = _contig(q, k, v, a, b, A_log, dt_bias)
    out = torch.empty_like(v) if out is None else out
    _run("decode_mtp", props, backend, q, k, v, a, b, A_log, dt_bias, state, state_indices, out,
         intermediate_states, intermediate_indices, parent_indices,
         disable_state_update=bool(disable_state_update), scale=checks.scale(scale, q.shape[-1]),
         use_qk_l2norm=bool(use_qk_l2norm), state_layout=state_layout)
    return out


def commit_accepted(state, state_indices, intermediate_states, intermediate_indices, num_accepted, *,
                    state_layout="vk", backend=None) -> None:
    """pool[state_indices[i]] = intermediate_states[intermediate_indices[i], num_accepted[i] - 1];
    num_accepted[i] == 0 or a negative index leaves the slot unchanged."""
    props, _ = checks.commit_accepted(state, state_indices, intermediate_states, intermediate_indices, num_accepted,
                                      state_layout)
    _run("commit_accepted", props, backend, state, state_indices, intermediate_states, intermediate_indices,
         num_accepted, state_layout=state_layout)


def decode_packed(mixed_qkv, a, b, A_log, dt_bias, state, state_indices, *, num_k_heads, head_k_dim, head_v_dim,
                  scale=None, use_qk_l2norm=True, state_layout="vk", out=None, backend=None):
    """Decode straight from the conv output row mixed_qkv [B, 2*H*K + HV*V] = [q_all | k_all | v_all].
    Returns o [B,HV,V] in mixed_qkv's dtype."""
    props, contiguous = checks.decode_packed(mixed_qkv, a, b, A_log, dt_bias, state, state_indices, num_k_heads,
                                             head_k_dim, head_v_dim, state_layout, out)
    if not contiguous:
        mixed_qkv, a, b, A_log, dt_bias = _contig(mixed_qkv, a, b, A_log, dt_bias)
    if out is None:
        out = mixed_qkv.new_empty(mixed_qkv.shape[0], props["HV"], props["V"])
    _run("decode_packed", props, backend, mixed_qkv, a, b, A_log, dt_bias, state, state_indices, out,
         num_k_heads=props["H"], head_k_dim=props["K"], head_v_dim=props["V"],
         scale=checks.scale(scale, props["K"]), use_qk_l2norm=bool(use_qk_l2norm), state_layout=state_layout)
    return out


# ----------------------------------------------------------------------------------------------------
# prefill

def prefill(q, k, v, state, state_indices, cu_seqlens, *, g=None, beta=None, a=None, b=None, A_log=None,
            dt_bias=None, has_initial_state=None, scale=None, use_qk_l2norm=True, state_layout="vk", out=None,
            backend=None):
    """Chunked forward over packed varlen tokens: q,k [T,H,K]; v [T,HV,V]; gates precomputed (g natural-log,
    beta post-sigmoid, [T,HV]) or raw (a, b [T,HV], A_log, dt_bias [HV]); cu_seqlens [N+1];
    state_indices [N]; has_initial_state [N] bool (None = all True). Final states are written into the
    slots. Returns o [T,HV,V]."""
    props, contiguous = checks.prefill(q, k, v, state, state_indices, cu_seqlens, g, beta, a, b, A_log, dt_bias,
                                       has_initial_state, state_layout, out)
    if not contiguous:
        q, k, v, g, beta, a, b, A_log, dt_bias = _contig(q, k, v, g, beta, a, b, A_log, dt_bias)
    out = torch.empty_like(v) if out is None else out
    _run("prefill", props, backend, q, k, v, state, state_indices, cu_seqlens, out, g, beta, a, b, A_log,
         dt_bias, has_initial_state, scale=checks.scale(scale, q.shape[-1]), use_qk_l2norm=bool(use_qk_l2norm),
         state_layout=state_layout)
    return out


def chunk_cumsum(g, cu_seqlens, *, chunk_size=64, backend=None):
    """Chunk-local prefix sum of g [T,HV] within each sequence's chunk_size-token chunks -> fp32 [T,HV]."""
    props, _ = checks.chunk_cumsum(g, cu_seqlens, chunk_size, None)
    g = g.contiguous()
    out = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    _run("chunk_cumsum", props, backend, g, cu_seqlens, out, chunk_size=int(chunk_size))
    return out


# ----------------------------------------------------------------------------------------------------
# layer edges

def causal_conv1d_update(x, conv_state, weight, bias=None, *, state_indices, activation="silu", out=None,
                         backend=None):
    """One token per sequence: x [B,D]; conv_state [S,D,W-1] (oldest column first, updated in place);
    weight [D,W]; bias [D]. Returns act(sum(window * weight) + bias) [B,D] in x's dtype."""
    props, contiguous = checks.causal_conv1d_update(x, conv_state, weight, bias, state_indices, activation, out)
    if not contiguous:
        x, weight, bias = _contig(x, weight, bias)
    out = torch.empty_like(x) if out is None else out
    _run("causal_conv1d_update", props, backend, x, conv_state, weight, bias, state_indices, out,
         activation=activation)
    return out


def causal_conv1d(x, weight, bias=None, *, cu_seqlens, conv_state, state_indices, has_initial_state=None,
                  activation="silu", out=None, backend=None):
    """Prefill conv over packed varlen x [T,D]; initial windows from the pool (zeros where
    has_initial_state is False); each sequence's last W-1 inputs are written back. Returns [T,D]."""
    props, _ = checks.causal_conv1d(x, weight, bias, cu_seqlens, conv_state, state_indices, has_initial_state,
                                    activation, out)
    x, weight, bias = _contig(x, weight, bias)
    out = torch.empty_like(x) if out is None else out
    _run("causal_conv1d", props, backend, x, weight, bias, cu_seqlens, conv_state, state_indices,
         has_initial_state, out, activation=activation)
    return out


def _split_outputs(mixed_qkvz, props):
    T, H, HV, K, V = mixed_qkvz.shape[0], props["H"], props["HV"], props["K"], props["V"]
    new = mixed_qkvz.new_empty
    return new(T, 2 * H * K + HV * V), new(T, HV, V), new(T, HV), new(T, HV)


def split_qkvzba(mixed_qkvz, mixed_ba, *, num_k_heads, num_v_heads, head_k_dim, head_v_dim, layout="interleaved",
                 backend=None):
    """mixed_qkvz [T, 2HK + 2HV*V], mixed_ba [T, 2HV] -> (mixed_qkv [T, 2HK + HV*V], z [T,HV,V], b [T,HV],
    a [T,HV]). layout "interleaved" (Qwen3-Next, per k-head groups) or "contiguous" (Qwen3.5)."""
    props, contiguous = checks.split_qkvzba(mixed_qkvz, mixed_ba, num_k_heads, num_v_heads, head_k_dim, head_v_dim,
                                            layout)
    if not contiguous:
        mixed_qkvz, mixed_ba = _contig(mixed_qkvz, mixed_ba)
    outs = _split_outputs(mixed_qkvz, props)
    _run("split_qkvzba", props, backend, mixed_qkvz, mixed_ba, *outs, num_k_heads=props["H"],
         num_v_heads=props["HV"], head_k_dim=props["K"], head_v_dim=props["V"], layout=layout)
    return outs


def conv1d_update_split(mixed_qkvz, mixed_ba, conv_state, weight, bias=None, *, state_indices, num_k_heads,
                        num_v_heads, head_k_dim, head_v_dim, layout="interleaved", activation="silu", backend=None):
    """Decode front end in one launch: split_qkvzba + causal_conv1d_update on the qkv part.
    Returns (mixed_qkv after the conv [B, 2HK + HV*V], z, b, a)."""
    props, contiguous = checks.conv1d_update_split(mixed_qkvz, mixed_ba, conv_state, weight, bias, state_indices,
                                                   num_k_heads, num_v_heads, head_k_dim, head_v_dim, layout,
                                                   activation)
    if not contiguous:
        mixed_qkvz, mixed_ba, weight, bias = _contig(mixed_qkvz, mixed_ba, weight, bias)
    outs = _split_outputs(mixed_qkvz, props)
    _run("conv1d_update_split", props, backend, mixed_qkvz, mixed_ba, conv_state, weight, bias, state_indices,
         *outs, num_k_heads=props["H"], num_v_heads=props["HV"], head_k_dim=props["K"], head_v_dim=props["V"],
         layout=layout, activation=activation)
    return outs


def rms_norm_gated(x, z, weight, *, eps=1e-6, out_dtype=None, out=None, backend=None):
    """y = x * rsqrt(mean(x^2) + eps) * weight * silu(z) over the last dim of x [..., V]; fp32 math;
    output in x's dtype (or out_dtype)."""
    props, contiguous = checks.rms_norm_gated(x, z, weight, eps, out)
    if not contiguous:
        x, z, weight = _contig(x, z, weight)
    out = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device) if out is None else out
    _run("rms_norm_gated", props, backend, x, z, weight, out, eps=float(eps))
    return out


@torch._dynamo.assume_constant_result
def default_fp8_dtype(device) -> torch.dtype:
    """e4m3fnuz on gfx942 (MI300), e4m3fn on NVIDIA and gfx950."""
    return torch.float8_e4m3fnuz if probe.device_info(device).arch == "gfx942" else torch.float8_e4m3fn


def rms_norm_gated_fp8(x, z, weight, *, eps=1e-6, group_size=128, fp8_dtype=None, backend=None):
    """rms_norm_gated then FP8 group quantisation along each row: returns (y [M,V] fp8, scales
    [M, V // group_size] fp32) with M = x.numel() // V and y * scale ~ the fp32 result."""
    fp8_dtype = fp8_dtype or default_fp8_dtype(x.device if isinstance(x, torch.Tensor) else None)
    props, contiguous = checks.rms_norm_gated_fp8(x, z, weight, eps, int(group_size), fp8_dtype)
    if not contiguous:
        x, z, weight = _contig(x, z, weight)
    V = props["V"]
    M = x.numel() // V if V else 0
    y = torch.empty(M, V, dtype=fp8_dtype, device=x.device)
    scales = torch.empty(M, V // group_size, dtype=torch.float32, device=x.device)
    _run("rms_norm_gated_fp8", props, backend, x.reshape(M, V), z.reshape(M, V), weight, y, scales, eps=float(eps),
         group_size=int(group_size), fp8_max=checks.FP8_MAX[fp8_dtype])
    return y, scales
