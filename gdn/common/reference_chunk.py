"""fp32 PyTorch references of prefill's internal sub-ops (chunk_kkt_solve, chunk_wy, chunk_state,
chunk_output): the oracles of the Triton sub-op kernels, written from the math of the chunked gated
delta rule and sharing no code with them. Kernel-level signatures (outputs pre-allocated, written in
place); chunk_cumsum's reference is in reference.py. Chunks are 64 tokens, restarting at every sequence
start; chunk c of sequence n owns the slot cu[n] // 64 + n + c of per-chunk buffers (T // 64 + N slots).

Within a chunk (rows i, j; Gamma_ij = exp(g_cum_i - g_cum_j); k, q l2-normalised, q scaled):
    A     = (I + strict_lower(diag(beta) K K^T * Gamma))^-1
    w     = A (beta * exp(g_cum) * K),   u = A (beta * V)
    v_new = u - w h                         (h: the KV state entering the chunk)
    o     = (q * exp(g_cum)) h + lower_incl(q K^T * Gamma) v_new
    h'    = exp(g_last) h + (K * exp(g_last - g_cum))^T v_new
"""
from __future__ import annotations

import torch

from gdn.common.reference import _l2norm
from gdn.common.registry import Impl, register

CHUNK = 64


def _chunks(cu_seqlens):
    """(n, c, t0, t1, slot) of every chunk."""
    cu = cu_seqlens.tolist()
    for n in range(len(cu) - 1):
        for c, t0 in enumerate(range(cu[n], cu[n + 1], CHUNK)):
            yield n, c, t0, min(t0 + CHUNK, cu[n + 1]), cu[n] // CHUNK + n + c


def _keys(k, HV, use_qk_l2norm):
    """[T,H,K] -> fp32 [T,HV,K] (v-head hv reads head hv // G)."""
    kf = k.float()
    if use_qk_l2norm:
        kf = _l2norm(kf)
    return kf.repeat_interleave(HV // k.shape[1], dim=1)


def _decay(gc):
    """gc [L,HV] -> Gamma [HV,L,L] = exp(gc_i - gc_j), zero above the diagonal."""
    d = gc.T[:, :, None] - gc.T[:, None, :]
    return torch.where(torch.ones_like(d, dtype=torch.bool).tril(), d, torch.full_like(d, -float("inf"))).exp()


def chunk_kkt_solve(k, g_cum, beta, cu_seqlens, A, *, use_qk_l2norm):
    """k [T,H,K]; g_cum, beta [T,HV]; A out [T,HV,64] fp32 (columns past the chunk's length zero)."""
    HV = g_cum.shape[1]
    kf = _keys(k, HV, use_qk_l2norm)
    A.zero_()
    for _, _, t0, t1, _ in _chunks(cu_seqlens):
        L = t1 - t0
        kc = kf[t0:t1].transpose(0, 1)                                  # [HV,L,K]
        bc = beta[t0:t1].float().T                                      # [HV,L]
        Nm = (bc[:, :, None] * (kc @ kc.transpose(1, 2)) * _decay(g_cum[t0:t1].float())).tril(-1)
        eye = torch.eye(L, device=k.device).expand(HV, L, L)
        inv = torch.linalg.solve_triangular(eye + Nm, eye, upper=False, unitriangular=True)
        A[t0:t1, :, :L] = inv.transpose(0, 1).to(A.dtype)


def chunk_wy(k, v, g_cum, beta, A, cu_seqlens, w, u, *, use_qk_l2norm):
    """w [T,HV,K] = A (beta exp(g_cum) k), u [T,HV,V] = A (beta v), chunk by chunk."""
    HV = v.shape[1]
    kf = _keys(k, HV, use_qk_l2norm)
    for _, _, t0, t1, _ in _chunks(cu_seqlens):
        L = t1 - t0
        Ac = A[t0:t1, :, :L].float().transpose(0, 1)                    # [HV,L,L]
        bc = beta[t0:t1].float()                                        # [L,HV]
        kb = kf[t0:t1] * (bc * g_cum[t0:t1].float().exp())[..., None]   # [L,HV,K]
        vb = v[t0:t1].float() * bc[..., None]
        w[t0:t1] = (Ac @ kb.transpose(0, 1)).transpose(0, 1).to(w.dtype)
        u[t0:t1] = (Ac @ vb.transpose(0, 1)).transpose(0, 1).to(u.dtype)


def chunk_state(k, w, u, g_cum, state, state_indices, cu_seqlens, has_initial_state, h, v_new, *, use_qk_l2norm,
                state_layout):
    """Sequential pass: h [T//64+N, HV, K, V] (state entering each chunk slot), v_new [T,HV,V]; final
    states into the pool (negative slot: pool untouched, h and v_new zero)."""
    T, HV, V = u.shape
    K = w.shape[2]
    kf = _keys(k, HV, use_qk_l2norm)
    idx = state_indices.tolist()
    init = [True] * len(idx) if has_initial_state is None else has_initial_state.tolist()
    cu = cu_seqlens.tolist()
    for n, slot in enumerate(idx):
        S = torch.zeros(HV, K, V, device=k.device)
        if slot >= 0 and init[n]:
            S = state[slot].float()
            S = S.transpose(1, 2) if state_layout == "vk" else S
        for c, t0 in enumerate(range(cu[n], cu[n + 1], CHUNK)):
            t1 = min(t0 + CHUNK, cu[n + 1])
            s = cu[n] // CHUNK + n + c
            if slot < 0:
                h[s] = 0
                v_new[t0:t1] = 0
                continue
            h[s] = S.to(h.dtype)
            vn = u[t0:t1].float().transpose(0, 1) - w[t0:t1].float().transpose(0, 1) @ S      # [HV,L,V]
            v_new[t0:t1] = vn.transpose(0, 1).to(v_new.dtype)
            gc = g_cum[t0:t1].float()                                    # [L,HV]
            gl = gc[-1]                                                  # [HV]
            kd = kf[t0:t1] * (gl[None, :] - gc).exp()[..., None]         # [L,HV,K]
            S = gl.exp()[:, None, None] * S + kd.permute(1, 2, 0) @ vn
        if slot >= 0:
            state[slot] = (S.transpose(1, 2) if state_layout == "vk" else S).to(state.dtype)


def chunk_output(q, k, v_new, h, g_cum, state_indices, cu_seqlens, out, *, scale, use_qk_l2norm):
    """out [T,HV,V] = (q exp(g_cum)) h + lower_incl(q k^T Gamma) v_new per chunk (q scaled); rows of
    sequences with a negative slot are zero."""
    HV = v_new.shape[1]
    qf = _keys(q, HV, use_qk_l2norm) * scale
    kf = _keys(k, HV, use_qk_l2norm)
    idx = state_indices.tolist()
    out.zero_()
    for n, _, t0, t1, s in _chunks(cu_seqlens):
        if idx[n] < 0:
            continue
        gc = g_cum[t0:t1].float()
        qc, kc = qf[t0:t1].transpose(0, 1), kf[t0:t1].transpose(0, 1)   # [HV,L,K]
        inter = (qc * gc.T.exp()[..., None]) @ h[s].float()
        intra = (qc @ kc.transpose(1, 2) * _decay(gc)) @ v_new[t0:t1].float().transpose(0, 1)
        out[t0:t1] = (inter + intra).transpose(0, 1).to(out.dtype)


for _op in ("chunk_kkt_solve", "chunk_wy", "chunk_state", "chunk_output"):
    register(Impl(op=_op, backend="reference", fn=globals()[_op], archs=("*",), priority=-100, validated_on=("*",),
                  notes="fp32 PyTorch from the chunked math (oracle of the Triton sub-ops)"))


def recurrence_f64(q, k, v, g, beta, state, state_indices, cu_seqlens, has_initial_state, *, scale,
                   use_qk_l2norm=True, state_layout="vk"):
    """The gated delta rule in float64, one token step at a time for all sequences and heads at once (fast
    enough for large T on a GPU: max(lengths) steps). The judge of GPU-sized prefill runs (tests, bench,
    scripts/debug_prefill.py). q, k [T,H,K]; v [T,HV,V]; g, beta [T,HV] (natural-log decay, post-sigmoid);
    state pool in `state_layout`, read only. Returns (o [T,HV,V] float64, rows of padding sequences and
    rows past cu_seqlens[-1] zero; final states [N,HV,K,V] float64 KV form, zero for padding sequences)."""
    dev, T = q.device, q.shape[0]
    HV, V, K = v.shape[1], v.shape[2], q.shape[2]
    G = HV // q.shape[1]
    cu = cu_seqlens.long()
    lens = cu[1:] - cu[:-1]
    N = lens.shape[0]
    qd, kd = q.double(), k.double()
    if use_qk_l2norm:
        qd = qd * torch.rsqrt((qd * qd).sum(-1, keepdim=True) + 1e-6)
        kd = kd * torch.rsqrt((kd * kd).sum(-1, keepdim=True) + 1e-6)
    qd, kd = (qd * scale).repeat_interleave(G, 1), kd.repeat_interleave(G, 1)
    idx = state_indices.long()
    live = idx >= 0
    init = live if has_initial_state is None else live & has_initial_state.bool()
    S = torch.zeros(N, HV, K, V, dtype=torch.float64, device=dev)
    if bool(init.any()):
        s0 = state[idx.clamp_min(0)].double()
        s0 = s0.transpose(-1, -2) if state_layout == "vk" else s0
        S = torch.where(init[:, None, None, None], s0, S)
    o = torch.zeros(T, HV, V, dtype=torch.float64, device=dev)
    gd, bd, vd = g.double(), beta.double(), v.double()
    for t in range(int(lens.max()) if N else 0):
        act = (lens > t) & live
        rows = torch.where(act, cu[:-1] + t, torch.zeros_like(cu[:-1]))
        S1 = S * torch.exp(gd[rows])[:, :, None, None]
        u = bd[rows][..., None] * (vd[rows] - torch.einsum("nhkv,nhk->nhv", S1, kd[rows]))
        S1 = S1 + kd[rows][..., :, None] * u[..., None, :]
        S = torch.where(act[:, None, None, None], S1, S)
        o[rows[act]] = torch.einsum("nhkv,nhk->nhv", S1, qd[rows])[act]
    return o, S
