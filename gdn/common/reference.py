"""fp32 PyTorch reference of every gdn op: the CPU backend and the oracle of the tests.

Each function has the op's *kernel-level* signature, the one every backend's launcher takes: outputs are
pre-allocated by gdn/ops.py and passed in (`out`, ...), defaults are resolved (`scale` is a float), and
the function writes outputs and pools in place and returns None. Plain, obviously-correct torch; it
shares no code with the kernels it judges. Shapes and layouts are those of spec/ops.md.

Padding rule: a negative slot index means the slot is neither read nor written and the row's output is 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gdn.common.registry import Impl, register

L2NORM_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------
# shared pieces of the recurrence (fp32)

def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 20.0, x, torch.log1p(torch.exp(torch.clamp(x, max=20.0))))


def gates(a, b, A_log, dt_bias):
    """Raw gates -> (g natural-log decay, beta), fp32. a, b [..., HV]; A_log, dt_bias [HV]."""
    g = -torch.exp(A_log.float()) * _softplus(a.float() + dt_bias.float())
    return g, torch.sigmoid(b.float())


def _prep_qk(q, k, G, scale, use_qk_l2norm):
    """[..., H, K] -> fp32 [..., HV, K], l2-normalised and scaled (q only), v-head hv reads hv // G."""
    q, k = q.float(), k.float()
    if use_qk_l2norm:
        q, k = _l2norm(q), _l2norm(k)
    q = q * scale
    return q.repeat_interleave(G, dim=-2), k.repeat_interleave(G, dim=-2)


def _step(S, q, k, v, g, beta):
    """One delta-rule step on KV-form states. S [N,HV,K,V]; q,k [N,HV,K]; v [N,HV,V]; g,beta [N,HV]."""
    S = S * torch.exp(g)[..., None, None]
    u = beta[..., None] * (v - torch.einsum("nhkv,nhk->nhv", S, k))
    S = S + k[..., :, None] * u[..., None, :]
    return S, torch.einsum("nhkv,nhk->nhv", S, q)


def _to_kv(S, layout):
    return S.float().transpose(-1, -2) if layout == "vk" else S.float()


def _from_kv(S, layout, dtype):
    return (S.transpose(-1, -2) if layout == "vk" else S).to(dtype)


# ---------------------------------------------------------------------------------------------------
# decode family

def decode(q, k, v, a, b, A_log, dt_bias, state, state_indices, out, *, scale, use_qk_l2norm, state_layout):
    """q,k [B,H,K]; v [B,HV,V]; a,b [B,HV]; state [S,HV,V,K] (vk) or [S,HV,K,V] (kv); out [B,HV,V]."""
    G = v.shape[1] // q.shape[1]
    rows = (state_indices >= 0).nonzero().flatten()
    out.zero_()
    if rows.numel() == 0:
        return
    slots = state_indices[rows].long()
    qf, kf = _prep_qk(q[rows], k[rows], G, scale, use_qk_l2norm)
    g, beta = gates(a[rows], b[rows], A_log, dt_bias)
    S, o = _step(_to_kv(state[slots], state_layout), qf, kf, v[rows].float(), g, beta)
    state[slots] = _from_kv(S, state_layout, state.dtype)
    out[rows] = o.to(out.dtype)


def decode_mtp(q, k, v, a, b, A_log, dt_bias, state, state_indices, out, intermediate_states,
               intermediate_indices, parent_indices, *, disable_state_update, scale, use_qk_l2norm, state_layout):
    """T draft tokens per sequence. q,k [B,T,H,K]; v [B,T,HV,V]; a,b [B,T,HV]; out [B,T,HV,V].

    intermediate_states [slots, T, HV, ...] (pool layout) receives the state after each step, at row
    intermediate_indices[i] (default i; negative skips). parent_indices [B,T]: step t starts from the state
    after step parent[t] (-1: from the pool); default is the chain t-1.
    """
    B, T = q.shape[:2]
    G = v.shape[2] // q.shape[2]
    rows = (state_indices >= 0).nonzero().flatten()
    out.zero_()
    if rows.numel() == 0:
        return
    slots = state_indices[rows].long()
    n = rows.numel()
    qf, kf = _prep_qk(q[rows], k[rows], G, scale, use_qk_l2norm)
    g, beta = gates(a[rows], b[rows], A_log, dt_bias)
    vf = v[rows].float()
    hist = [_to_kv(state[slots], state_layout)]      # hist[p + 1] = state after step p
    ar = torch.arange(n, device=q.device)
    for t in range(T):
        if parent_indices is None:
            start = hist[t]
        else:
            par = parent_indices[rows, t].long()
            stacked = torch.stack(hist)              # [t+1, n, HV, K, V]
            start = stacked[par + 1, ar]
        S, o = _step(start, qf[:, t], kf[:, t], vf[:, t], g[:, t], beta[:, t])
        hist.append(S)
        out[rows, t] = o.to(out.dtype)
    if intermediate_states is not None:
        dst = rows if intermediate_indices is None else intermediate_indices[rows].long()
        keep = (dst >= 0).nonzero().flatten()
        if keep.numel():
            inter = torch.stack(hist[1:], dim=1)[keep]   # [n', T, HV, K, V]
            intermediate_states[dst[keep]] = _from_kv(inter, state_layout, intermediate_states.dtype)
    if not disable_state_update:
        state[slots] = _from_kv(hist[-1], state_layout, state.dtype)


def commit_accepted(state, state_indices, intermediate_states, intermediate_indices, num_accepted, *, state_layout):
    """pool[state_indices[i]] = inter[intermediate_indices[i], num_accepted[i] - 1] where all are valid."""
    ok = (state_indices >= 0) & (intermediate_indices >= 0) & (num_accepted > 0)
    rows = ok.nonzero().flatten()
    if rows.numel():
        src = intermediate_states[intermediate_indices[rows].long(), num_accepted[rows].long() - 1]
        state[state_indices[rows].long()] = src.to(state.dtype)


def split_packed_qkv(mixed_qkv, num_k_heads, head_k_dim, head_v_dim):
    """[B, 2*H*K + HV*V] -> q,k [B,H,K], v [B,HV,V] (views)."""
    hk = num_k_heads * head_k_dim
    q = mixed_qkv[:, :hk].unflatten(1, (num_k_heads, head_k_dim))
    k = mixed_qkv[:, hk:2 * hk].unflatten(1, (num_k_heads, head_k_dim))
    v = mixed_qkv[:, 2 * hk:].unflatten(1, (-1, head_v_dim))
    return q, k, v


def decode_packed(mixed_qkv, a, b, A_log, dt_bias, state, state_indices, out, *, num_k_heads, head_k_dim,
                  head_v_dim, scale, use_qk_l2norm, state_layout):
    """mixed_qkv [B, 2*H*K + HV*V] = [q_all | k_all | v_all]; a,b [B,HV]; out [B,HV,V]."""
    q, k, v = split_packed_qkv(mixed_qkv, num_k_heads, head_k_dim, head_v_dim)
    decode(q, k, v, a, b, A_log, dt_bias, state, state_indices, out, scale=scale, use_qk_l2norm=use_qk_l2norm,
           state_layout=state_layout)


# ---------------------------------------------------------------------------------------------------
# prefill (token-by-token recurrence, never chunked: it judges the chunked kernels)

def prefill(q, k, v, state, state_indices, cu_seqlens, out, g, beta, a, b, A_log, dt_bias, has_initial_state, *,
            scale, use_qk_l2norm, state_layout):
    """Packed varlen: q,k [T,H,K]; v [T,HV,V]; gates [T,HV] (g, beta given, or raw a, b + A_log, dt_bias);
    cu_seqlens [N+1]; state_indices [N]; has_initial_state [N] bool or None (all True); out [T,HV,V]."""
    G = v.shape[1] // q.shape[1]
    if g is None:
        g, beta = gates(a, b, A_log, dt_bias)
    g, beta = g.float(), beta.float()
    qf, kf = _prep_qk(q, k, G, scale, use_qk_l2norm)
    vf = v.float()
    out.zero_()
    cu = cu_seqlens.tolist()
    idx = state_indices.tolist()
    init = [True] * len(idx) if has_initial_state is None else has_initial_state.tolist()
    HV, K, V = v.shape[1], q.shape[2], v.shape[2]
    for n, slot in enumerate(idx):
        if slot < 0:
            continue
        if init[n]:
            S = _to_kv(state[slot][None], state_layout)
        else:
            S = torch.zeros(1, HV, K, V, device=q.device)
        for t in range(cu[n], cu[n + 1]):
            S, o = _step(S, qf[t][None], kf[t][None], vf[t][None], g[t][None], beta[t][None])
            out[t] = o[0].to(out.dtype)
        state[slot] = _from_kv(S[0], state_layout, state.dtype)


def chunk_cumsum(g, cu_seqlens, out, *, chunk_size):
    """g [T,HV] -> out fp32 [T,HV]: prefix sums restarting at every chunk_size-token chunk of each sequence."""
    cu = cu_seqlens.tolist()
    gf = g.float()
    for n in range(len(cu) - 1):
        for c0 in range(cu[n], cu[n + 1], chunk_size):
            c1 = min(c0 + chunk_size, cu[n + 1])
            out[c0:c1] = torch.cumsum(gf[c0:c1], dim=0)


# ---------------------------------------------------------------------------------------------------
# layer-edge ops

def _act(y, activation):
    return F.silu(y) if activation == "silu" else y


def causal_conv1d_update(x, conv_state, weight, bias, state_indices, out, *, activation):
    """x [B,D]; conv_state [S,D,W-1] (oldest column first); weight [D,W]; bias [D] or None; out [B,D]."""
    rows = (state_indices >= 0).nonzero().flatten()
    out.zero_()
    if rows.numel() == 0:
        return
    slots = state_indices[rows].long()
    window = torch.cat([conv_state[slots].float(), x[rows].float()[:, :, None]], dim=2)   # [n, D, W]
    y = (window * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    out[rows] = _act(y, activation).to(out.dtype)
    conv_state[slots] = window[:, :, 1:].to(conv_state.dtype)


def causal_conv1d(x, weight, bias, cu_seqlens, conv_state, state_indices, has_initial_state, out, *, activation):
    """Packed varlen x [T,D]; conv_state [S,D,W-1]; out [T,D]. Initial window from the pool where
    has_initial_state (zeros otherwise); the last W-1 inputs (window included) are written back."""
    D, W = weight.shape
    out.zero_()
    cu = cu_seqlens.tolist()
    idx = state_indices.tolist()
    init = [True] * len(idx) if has_initial_state is None else has_initial_state.tolist()
    for n, slot in enumerate(idx):
        if slot < 0:
            continue
        t0, t1 = cu[n], cu[n + 1]
        prev = conv_state[slot].float() if init[n] else torch.zeros(D, W - 1, device=x.device)
        xs = torch.cat([prev, x[t0:t1].float().T], dim=1)                                  # [D, W-1+L]
        if t1 > t0:
            y = F.conv1d(xs[None], weight.float()[:, None, :], bias.float() if bias is not None else None,
                         groups=D)[0]                                                      # [D, L]
            out[t0:t1] = _act(y, activation).T.to(out.dtype)
        conv_state[slot] = xs[:, xs.shape[1] - (W - 1):].to(conv_state.dtype)


def split_qkvzba_views(mixed_qkvz, mixed_ba, num_k_heads, num_v_heads, head_k_dim, head_v_dim, layout):
    """(q [T,H*K], k [T,H*K], v [T,HV*V], z [T,HV,V], b [T,HV], a [T,HV]) of the projections."""
    T = mixed_qkvz.shape[0]
    H, HV, K, V = num_k_heads, num_v_heads, head_k_dim, head_v_dim
    G = HV // H
    if layout == "interleaved":
        grp = mixed_qkvz.view(T, H, 2 * K + 2 * G * V)
        q, k, v, z = torch.split(grp, [K, K, G * V, G * V], dim=-1)
        ba = mixed_ba.view(T, H, 2 * G)
        b, a = ba[..., :G], ba[..., G:]
        return (q.reshape(T, H * K), k.reshape(T, H * K), v.reshape(T, HV * V), z.reshape(T, HV, V),
                b.reshape(T, HV), a.reshape(T, HV))
    q, k, v, z = torch.split(mixed_qkvz, [H * K, H * K, HV * V, HV * V], dim=-1)
    return q, k, v, z.reshape(T, HV, V), mixed_ba[:, :HV], mixed_ba[:, HV:]


def split_qkvzba(mixed_qkvz, mixed_ba, mixed_qkv, z, b, a, *, num_k_heads, num_v_heads, head_k_dim, head_v_dim,
                 layout):
    """mixed_qkvz [T, 2HK + 2HV*V], mixed_ba [T, 2HV] -> mixed_qkv [T, 2HK + HV*V], z [T,HV,V], b, a [T,HV]."""
    q, k, v, zz, bb, aa = split_qkvzba_views(mixed_qkvz, mixed_ba, num_k_heads, num_v_heads, head_k_dim,
                                             head_v_dim, layout)
    mixed_qkv.copy_(torch.cat([q, k, v], dim=-1))
    z.copy_(zz)
    b.copy_(bb)
    a.copy_(aa)


def conv1d_update_split(mixed_qkvz, mixed_ba, conv_state, weight, bias, state_indices, mixed_qkv, z, b, a, *,
                        num_k_heads, num_v_heads, head_k_dim, head_v_dim, layout, activation):
    """split_qkvzba then causal_conv1d_update on mixed_qkv (D = 2HK + HV*V); mixed_qkv is the conv output."""
    raw = torch.empty_like(mixed_qkv)
    split_qkvzba(mixed_qkvz, mixed_ba, raw, z, b, a, num_k_heads=num_k_heads, num_v_heads=num_v_heads,
                 head_k_dim=head_k_dim, head_v_dim=head_v_dim, layout=layout)
    causal_conv1d_update(raw, conv_state, weight, bias, state_indices, mixed_qkv, activation=activation)


def _rms_gated(x, z, weight, eps):
    xf = x.float()
    return xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps) * weight.float() * F.silu(z.float())


def rms_norm_gated(x, z, weight, out, *, eps):
    """Rows of x [..., V] (z alike, weight [V]): x * rsqrt(mean(x^2) + eps) * weight * silu(z) -> out."""
    out.copy_(_rms_gated(x, z, weight, eps).to(out.dtype))


def rms_norm_gated_fp8(x, z, weight, y, scales, *, eps, group_size, fp8_max):
    """As rms_norm_gated, then per-group FP8: y [M,V] fp8, scales [M, V // group_size] fp32."""
    yf = _rms_gated(x, z, weight, eps).reshape(-1, x.shape[-1])
    grp = yf.unflatten(-1, (-1, group_size))
    s = torch.clamp(grp.abs().amax(-1) / fp8_max, min=1.0 / (fp8_max * 512.0))
    y.copy_(torch.clamp(grp / s[..., None], -fp8_max, fp8_max).flatten(-2).reshape(y.shape).to(y.dtype))
    scales.copy_(s.reshape(scales.shape))


# ---------------------------------------------------------------------------------------------------

OPS = ("decode", "decode_mtp", "commit_accepted", "decode_packed", "prefill", "chunk_cumsum",
       "causal_conv1d_update", "causal_conv1d", "split_qkvzba", "conv1d_update_split", "rms_norm_gated",
       "rms_norm_gated_fp8")

for _op in OPS:
    register(Impl(op=_op, backend="reference", fn=globals()[_op], archs=("*",), priority=-100,
                  validated_on=("*",),
                  notes="fp32 PyTorch; runs anywhere torch does (slow: the oracle and the CPU backend)"))
