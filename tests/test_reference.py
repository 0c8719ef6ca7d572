"""The reference ops against an independent float64 formulation written here from spec/ops.md
(per-sequence, per-head scalar loops over explicit K x V matrices; nothing shared with gdn.common.reference).
Fresh random inputs every test, padding slots (-1), both state layouts, GVA, long recurrences."""
import math

import pytest
import torch

from gdn import ops

torch.set_default_dtype(torch.float32)


def gates64(a, b, A_log, dt_bias):
    x = a.double() + dt_bias.double()
    sp = torch.where(x > 20, x, torch.log(1 + torch.exp(torch.clamp(x, max=20))))
    return -torch.exp(A_log.double()) * sp, 1 / (1 + torch.exp(-b.double()))


def norm64(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def step64(S, q, k, v, g, beta):
    """S [K,V] float64; q,k [K]; v [V]; scalar g (log), beta."""
    S = math.exp(g) * S
    u = beta * (v - S.T @ k)
    S = S + torch.outer(k, u)
    return S, S.T @ q


def pool_get(pool, slot, hv, layout):
    s = pool[slot, hv].double()
    return s.T if layout == "vk" else s


def pool_put(pool, slot, hv, S, layout):
    pool[slot, hv] = (S.T if layout == "vk" else S).to(pool.dtype)


def relerr(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def make(B, H, HV, K, V, S, layout, lead=(), pool_dtype=torch.float32):
    q, k = torch.randn(*lead, B, H, K), torch.randn(*lead, B, H, K)
    v = torch.randn(*lead, B, HV, V)
    a, b = torch.randn(*lead, B, HV), torch.randn(*lead, B, HV)
    A_log, dt_bias = torch.empty(HV).uniform_(-4, -1), torch.empty(HV).uniform_(-1, 1)
    shape = (S, HV, V, K) if layout == "vk" else (S, HV, K, V)
    pool = (torch.randn(shape) * 0.1).to(pool_dtype)
    return q, k, v, a, b, A_log, dt_bias, pool


@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("H,HV", [(2, 2), (2, 6)])
def test_decode_matches_float64(layout, H, HV):
    B, K, V, S = 5, 8, 12, 9
    q, k, v, a, b, A_log, dt_bias, pool = make(B, H, HV, K, V, S, layout)
    idx = torch.tensor([3, -1, 0, 7, -1], dtype=torch.int64)
    pool[[1, 2, 4, 5, 6, 8]] = float("nan")            # unused slots: poisoned
    before = pool.clone()
    o = ops.decode(q, k, v, a, b, A_log, dt_bias, pool, idx, state_layout=layout, scale=0.3)
    g, beta = gates64(a, b, A_log, dt_bias)
    G = HV // H
    for i in range(B):
        if idx[i] < 0:
            assert (o[i] == 0).all()
            continue
        for hv in range(HV):
            qh, kh = norm64(q[i, hv // G].double()) * 0.3, norm64(k[i, hv // G].double())
            S1, oo = step64(pool_get(before, idx[i], hv, layout), qh, kh, v[i, hv].double(), g[i, hv].item(),
                            beta[i, hv].item())
            assert relerr(o[i, hv], oo) < 1e-5
            assert relerr(pool_get(pool, idx[i], hv, layout), S1) < 1e-5
    unused = torch.tensor([1, 2, 4, 5, 6, 8])
    assert torch.isnan(pool[unused]).all()


def test_decode_long_recurrence_and_layout_equivalence():
    """2048 steps on one sequence: no drift against float64; vk and kv pools give the same outputs."""
    H, HV, K, V, T = 1, 2, 8, 8, 2048
    q, k = torch.randn(T, 1, H, K), torch.randn(T, 1, H, K)
    v = torch.randn(T, 1, HV, V)
    a, b = torch.randn(T, 1, HV), torch.randn(T, 1, HV)
    A_log, dt_bias = torch.empty(HV).uniform_(-4, -1), torch.empty(HV).uniform_(-1, 1)
    vk, kv = torch.zeros(1, HV, V, K), torch.zeros(1, HV, K, V)
    idx = torch.tensor([0], dtype=torch.int32)
    S64 = [torch.zeros(K, V, dtype=torch.float64) for _ in range(HV)]
    g, beta = gates64(a, b, A_log, dt_bias)
    outs, refs = [], []
    for t in range(T):
        o1 = ops.decode(q[t], k[t], v[t], a[t], b[t], A_log, dt_bias, vk, idx, state_layout="vk")
        o2 = ops.decode(q[t], k[t], v[t], a[t], b[t], A_log, dt_bias, kv, idx, state_layout="kv")
        assert torch.equal(o1, o2)
        outs.append(o1[0])
        row = []
        for hv in range(HV):
            S64[hv], oo = step64(S64[hv], norm64(q[t, 0, 0].double()) * K ** -0.5, norm64(k[t, 0, 0].double()),
                                 v[t, 0, hv].double(), g[t, 0, hv].item(), beta[t, 0, hv].item())
            row.append(oo)
        refs.append(torch.stack(row))
    assert relerr(torch.stack(outs), torch.stack(refs)) < 1e-5
    assert relerr(vk[0].transpose(-1, -2), torch.stack(S64)) < 1e-5


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_decode_bf16_pool_and_inputs(layout):
    B, H, HV, K, V, S = 3, 2, 4, 16, 16, 4
    q, k, v, a, b, A_log, dt_bias, pool = make(B, H, HV, K, V, S, layout, pool_dtype=torch.bfloat16)
    idx = torch.tensor([2, 0, -1], dtype=torch.int32)
    before = pool.clone()
    o = ops.decode(q.bfloat16(), k.bfloat16(), v.bfloat16(), a, b, A_log, dt_bias, pool, idx, state_layout=layout)
    assert o.dtype == torch.bfloat16
    g, beta = gates64(a, b, A_log, dt_bias)
    ref = torch.zeros(B, HV, V, dtype=torch.float64)
    for i in (0, 1):
        for hv in range(HV):
            _, ref[i, hv] = step64(pool_get(before, idx[i], hv, layout), norm64(q[i, hv // 2].bfloat16().double())
                                   * K ** -0.5, norm64(k[i, hv // 2].bfloat16().double()),
                                   v[i, hv].bfloat16().double(), g[i, hv].item(), beta[i, hv].item())
    assert relerr(o, ref) < 1e-2


@pytest.mark.parametrize("tree", [False, True])
def test_decode_mtp_and_commit(tree):
    B, T, H, HV, K, V, S = 3, 4, 1, 2, 8, 8, 5
    q, k, v, a, b, A_log, dt_bias, pool = make(B, H, HV, K, V, S, "vk", lead=())
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    v, a, b = torch.randn(B, T, HV, V), torch.randn(B, T, HV), torch.randn(B, T, HV)
    idx = torch.tensor([4, -1, 1])
    inter = torch.full((B, T, HV, V, K), float("nan"))
    parents = torch.tensor([[-1, 0, 0, 2]] * B) if tree else None
    before = pool.clone()
    o = ops.decode_mtp(q, k, v, a, b, A_log, dt_bias, pool, idx, intermediate_states=inter, parent_indices=parents)
    assert torch.equal(pool, before)                     # disable_state_update=True by default
    g, beta = gates64(a, b, A_log, dt_bias)
    for i in (0, 2):
        for hv in range(HV):
            hist = []
            for t in range(T):
                p = (t - 1) if parents is None else int(parents[i, t])
                S0 = pool_get(before, idx[i], hv, "vk") if p < 0 else hist[p]
                S1, oo = step64(S0, norm64(q[i, t, 0].double()) * K ** -0.5, norm64(k[i, t, 0].double()),
                                v[i, t, hv].double(), g[i, t, hv].item(), beta[i, t, hv].item())
                hist.append(S1)
                assert relerr(o[i, t, hv], oo) < 1e-5
                assert relerr(inter[i, t, hv].double().T, S1) < 1e-5
    assert (o[1] == 0).all() and torch.isnan(inter[1]).all()
    # commit: slot 4 takes step 2's state, padding row and num_accepted == 0 leave slots unchanged
    ops.commit_accepted(pool, idx, inter, torch.arange(B), torch.tensor([3, 2, 0]))
    assert torch.equal(pool[4], inter[0, 2]) and torch.equal(pool[1], before[1])
    assert torch.equal(pool[[0, 2, 3]], before[[0, 2, 3]])


def test_decode_packed_equals_decode():
    B, H, HV, K, V, S = 4, 2, 4, 8, 16, 6
    q, k, v, a, b, A_log, dt_bias, pool = make(B, H, HV, K, V, S, "vk")
    mixed = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1)
    idx = torch.tensor([5, -1, 2, 0])
    p1, p2 = pool.clone(), pool.clone()
    o1 = ops.decode(q, k, v, a, b, A_log, dt_bias, p1, idx)
    o2 = ops.decode_packed(mixed, a, b, A_log, dt_bias, p2, idx, num_k_heads=H, head_k_dim=K, head_v_dim=V)
    assert torch.equal(o1, o2) and torch.equal(p1, p2)


@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("gates", ["raw", "precomputed"])
def test_prefill_matches_float64(layout, gates):
    H, HV, K, V, S = 1, 2, 8, 8, 6
    lens = [7, 0, 13, 5]
    Tt = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = torch.randn(Tt, H, K), torch.randn(Tt, H, K), torch.randn(Tt, HV, V)
    a, b = torch.randn(Tt, HV), torch.randn(Tt, HV)
    A_log, dt_bias = torch.empty(HV).uniform_(-4, -1), torch.empty(HV).uniform_(-1, 1)
    pool = torch.randn((S, HV, V, K) if layout == "vk" else (S, HV, K, V)) * 0.1
    idx = torch.tensor([3, 1, -1, 0])
    has_init = torch.tensor([True, True, True, False])
    pool[[2, 4, 5]] = float("nan")
    before = pool.clone()
    g, beta = gates64(a, b, A_log, dt_bias)
    gate_kw = dict(a=a, b=b, A_log=A_log, dt_bias=dt_bias) if gates == "raw" else dict(g=g.float(), beta=beta.float())
    o = ops.prefill(q, k, v, pool, idx, cu, has_initial_state=has_init, state_layout=layout, **gate_kw)
    for n in range(len(lens)):
        toks = range(int(cu[n]), int(cu[n + 1]))
        if idx[n] < 0:
            assert all((o[t] == 0).all() for t in toks)
            continue
        for hv in range(HV):
            S_ = pool_get(before, idx[n], hv, layout) if has_init[n] else torch.zeros(K, V, dtype=torch.float64)
            for t in toks:
                S_, oo = step64(S_, norm64(q[t, 0].double()) * K ** -0.5, norm64(k[t, 0].double()), v[t, hv].double(),
                                g[t, hv].item(), beta[t, hv].item())
                assert relerr(o[t, hv], oo) < 1e-5
            assert relerr(pool_get(pool, idx[n], hv, layout), S_) < 1e-5
    assert torch.isnan(pool[[2, 4, 5]]).all()


def test_chunk_cumsum():
    lens = [70, 0, 64, 3]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    g = torch.randn(sum(lens), 3)
    out = ops.chunk_cumsum(g, cu, chunk_size=64)
    for n in range(len(lens)):
        for c0 in range(int(cu[n]), int(cu[n + 1]), 64):
            c1 = min(c0 + 64, int(cu[n + 1]))
            for t in range(c0, c1):
                assert torch.allclose(out[t].double(), g[c0:t + 1].double().sum(0), atol=1e-5)


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("bias,act", [(True, "silu"), (False, None)])
def test_conv1d_update_and_prefill(W, bias, act):
    D, S = 7, 5                                             # odd D
    weight = torch.randn(D, W)
    bvec = torch.randn(D) if bias else None
    pool = torch.randn(S, D, W - 1)
    idx = torch.tensor([2, -1, 4])
    x = torch.randn(3, D)
    before = pool.clone()
    out = ops.causal_conv1d_update(x, pool, weight, bvec, state_indices=idx, activation=act)

    def conv64(window):                                     # window [D, W] oldest first
        y = (window.double() * weight.double()).sum(-1) + (bvec.double() if bias else 0)
        return y * torch.sigmoid(y) if act == "silu" else y
    for i in (0, 2):
        window = torch.cat([before[idx[i]], x[i][:, None]], dim=1)
        assert relerr(out[i], conv64(window)) < 1e-6
        assert torch.equal(pool[idx[i]], window[:, 1:])
    assert (out[1] == 0).all() and torch.equal(pool[[0, 1, 3]], before[[0, 1, 3]])
    # prefill conv: sequence lengths 1 (shorter than W-1), 0 and 6
    cu = torch.tensor([0, 1, 1, 7])
    xs = torch.randn(7, D)
    pool2 = torch.randn(S, D, W - 1)
    b2 = pool2.clone()
    idx2 = torch.tensor([0, 3, 1])
    init = torch.tensor([True, True, False])
    y = ops.causal_conv1d(xs, weight, bvec, cu_seqlens=cu, conv_state=pool2, state_indices=idx2,
                          has_initial_state=init, activation=act)
    for n in range(3):
        hist = b2[idx2[n]] if init[n] else torch.zeros(D, W - 1)
        for t in range(int(cu[n]), int(cu[n + 1])):
            window = torch.cat([hist, xs[t][:, None]], dim=1)
            assert relerr(y[t], conv64(window)) < 1e-6
            hist = window[:, 1:]
        assert torch.equal(pool2[idx2[n]], hist)


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
@pytest.mark.parametrize("H,HV", [(2, 2), (2, 6)])
def test_split_qkvzba(layout, H, HV):
    T, K, V = 3, 4, 5
    G = HV // H
    qkvz, ba = torch.randn(T, 2 * H * K + 2 * HV * V), torch.randn(T, 2 * HV)
    mixed, z, b, a = ops.split_qkvzba(qkvz, ba, num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V,
                                      layout=layout)
    for t in range(T):
        for h in range(H):
            if layout == "interleaved":      # HF fix_query_key_value_ordering: per k-head [q|k|v(G*V)|z(G*V)]
                base = h * (2 * K + 2 * G * V)
                qh, kh = qkvz[t, base:base + K], qkvz[t, base + K:base + 2 * K]
                vh = qkvz[t, base + 2 * K:base + 2 * K + G * V].reshape(G, V)
                zh = qkvz[t, base + 2 * K + G * V:base + 2 * K + 2 * G * V].reshape(G, V)
                bh, ah = ba[t, h * 2 * G:h * 2 * G + G], ba[t, h * 2 * G + G:(h + 1) * 2 * G]
            else:
                qh, kh = qkvz[t, h * K:(h + 1) * K], qkvz[t, H * K + h * K:H * K + (h + 1) * K]
                off = 2 * H * K
                vh = qkvz[t, off + h * G * V:off + (h + 1) * G * V].reshape(G, V)
                zh = qkvz[t, off + HV * V + h * G * V:off + HV * V + (h + 1) * G * V].reshape(G, V)
                bh, ah = ba[t, h * G:(h + 1) * G], ba[t, HV + h * G:HV + (h + 1) * G]
            assert torch.equal(mixed[t, h * K:(h + 1) * K], qh)
            assert torch.equal(mixed[t, H * K + h * K:H * K + (h + 1) * K], kh)
            assert torch.equal(mixed[t, 2 * H * K:].reshape(HV, V)[h * G:(h + 1) * G], vh)
            assert torch.equal(z[t, h * G:(h + 1) * G], zh)
            assert torch.equal(b[t, h * G:(h + 1) * G], bh) and torch.equal(a[t, h * G:(h + 1) * G], ah)


def test_conv1d_update_split_equals_split_then_conv():
    H, HV, K, V, W, S = 2, 4, 4, 3, 4, 4
    D = 2 * H * K + HV * V
    qkvz, ba = torch.randn(3, 2 * H * K + 2 * HV * V), torch.randn(3, 2 * HV)
    weight, pool = torch.randn(D, W), torch.randn(S, D, W - 1)
    idx = torch.tensor([1, -1, 3])
    p1, p2 = pool.clone(), pool.clone()
    m, z, b, a = ops.split_qkvzba(qkvz, ba, num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V)
    ref = ops.causal_conv1d_update(m, p1, weight, state_indices=idx)
    got = ops.conv1d_update_split(qkvz, ba, p2, weight, state_indices=idx, num_k_heads=H, num_v_heads=HV,
                                  head_k_dim=K, head_v_dim=V)
    assert torch.equal(got[0], ref) and torch.equal(p1, p2)
    assert all(torch.equal(x, y) for x, y in zip(got[1:], (z, b, a)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_gated_and_fp8(dtype):
    M, V = 6, 256
    x, z = torch.randn(M, V).to(dtype), torch.randn(M, V).to(dtype)
    w = torch.randn(V).to(dtype)
    y = ops.rms_norm_gated(x, z, w, eps=1e-5)
    xd = x.double()
    ref = xd / torch.sqrt((xd * xd).mean(-1, keepdim=True) + 1e-5) * w.double() * z.double() * torch.sigmoid(z.double())
    assert y.dtype == dtype and relerr(y, ref) < (1e-6 if dtype == torch.float32 else 5e-3)
    for fmt, fmax in ((torch.float8_e4m3fn, 448.0), (torch.float8_e4m3fnuz, 224.0)):
        q8, sc = ops.rms_norm_gated_fp8(x, z, w, eps=1e-5, group_size=128, fp8_dtype=fmt)
        assert q8.dtype == fmt and sc.shape == (M, 2)
        expect = torch.clamp(ref.reshape(M, 2, 128).abs().amax(-1) / fmax, min=1 / (fmax * 512))
        assert relerr(sc, expect) < 1e-5
        deq = q8.float().reshape(M, 2, 128) * sc[..., None]
        assert relerr(deq.reshape(M, V), ref) < 2 ** -4          # e4m3: 3 mantissa bits
        assert q8.float().abs().max() <= fmax
