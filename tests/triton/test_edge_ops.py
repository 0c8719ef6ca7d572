"""Portable Triton layer-edge ops under the CPU interpreter: split_qkvzba, causal_conv1d_update,
conv1d_update_split, causal_conv1d, rms_norm_gated, rms_norm_gated_fp8.

Each is checked against gdn.common.reference and against an independent float64 formulation written
here (for the interleaved split: HF transformers' Qwen3-Next `fix_query_key_value_ordering`). Outputs
are NaN-poisoned, unused pool slots and slot padding NaN-poisoned and compared bit for bit.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # before any triton kernel is imported

import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import gdn.common.triton  # noqa: F401  (registers the triton backends)
from gdn.common import probe, reference as R
from gdn.common.launch import pick, recording
from gdn.common.registry import get
from gdn.common.triton import _fp8 as FP8
from gdn.common.triton import causal_conv1d_update as CU
from gdn.common.triton._fp8 import e4m3_bits
from _helpers import rel, bits_equal, unused_rows

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs TRITON_INTERPRET=1 before triton kernels are imported")

TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 1e-3}
NAN = float("nan")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def slots_for(n, S, g, pad=(), idx_dtype=torch.int32):
    s = torch.randperm(S, generator=g)[:n]
    for i in pad:
        if i < n:
            s[i] = -1
    return s.to(idx_dtype)


def conv_pool(S, D, W, dtype, g, used, slot_pad=0):
    """[S, D, W-1] pool, NaN everywhere but the used slots; slot stride D*(W-1) + slot_pad.
    Returns (pool view, backing buffer)."""
    n = D * (W - 1)
    buf = torch.full((S, n + slot_pad), NAN, dtype=dtype)
    pool = buf[:, :n].view(S, D, W - 1)
    pool[used] = randn(len(used), D, W - 1, g=g, dtype=dtype)
    return pool, buf


# ---------------------------------------------------------------------------------------------------
# split_qkvzba

def hf_fix_query_key_value_ordering(mixed_qkvz, mixed_ba, H, HV, K, V):
    """HF transformers Qwen3-Next semantics (float64): view [T, H, 2K + 2GV], split [K, K, GV, GV];
    mixed_ba [T, H, 2G] split [G, G]; mixed_qkv = cat(q, k, v) flattened per token."""
    T, G = mixed_qkvz.shape[0], HV // H
    qkvz = mixed_qkvz.double().view(T, H, 2 * K + 2 * G * V)
    q, k, v, z = torch.split(qkvz, [K, K, G * V, G * V], dim=-1)
    b, a = torch.split(mixed_ba.double().view(T, H, 2 * G), [G, G], dim=-1)
    v = v.reshape(T, HV, V)
    z = z.reshape(T, HV, V)
    mixed_qkv = torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], dim=-1)
    return mixed_qkv, z, b.reshape(T, HV), a.reshape(T, HV)


def gather_split(mixed_qkvz, mixed_ba, H, HV, K, V, layout):
    """Index-map formulation: the source column of every output column, written out per head."""
    G = HV // H
    per = 2 * K + 2 * G * V
    qcols, kcols, vcols, zcols, bcols, acols = [], [], [], [], [], []
    for h in range(H):
        if layout == "interleaved":
            base = h * per
            qcols += range(base, base + K)
            kcols += range(base + K, base + 2 * K)
            vcols += range(base + 2 * K, base + 2 * K + G * V)
            zcols += range(base + 2 * K + G * V, base + per)
            bcols += range(h * 2 * G, h * 2 * G + G)
            acols += range(h * 2 * G + G, h * 2 * G + 2 * G)
        else:
            qcols += range(h * K, h * K + K)
            kcols += range(H * K + h * K, H * K + h * K + K)
            vcols += range(2 * H * K + h * G * V, 2 * H * K + (h + 1) * G * V)
            zcols += range(2 * H * K + HV * V + h * G * V, 2 * H * K + HV * V + (h + 1) * G * V)
            bcols += range(h * G, h * G + G)
            acols += range(HV + h * G, HV + h * G + G)
    x, ba = mixed_qkvz.double(), mixed_ba.double()
    T = x.shape[0]
    return (x[:, qcols + kcols + vcols], x[:, zcols].reshape(T, HV, V), ba[:, bcols], ba[:, acols])


def split_outputs(T, H, HV, K, V, dtype):
    return (torch.full((T, 2 * H * K + HV * V), NAN, dtype=dtype), torch.full((T, HV, V), NAN, dtype=dtype),
            torch.full((T, HV), NAN, dtype=dtype), torch.full((T, HV), NAN, dtype=dtype))


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
@pytest.mark.parametrize("H,HV,K,V,T,dtype", [
    (2, 4, 16, 32, 5, torch.bfloat16),     # G = 2
    (2, 6, 5, 7, 3, torch.float32),        # G = 3, odd dims (odd D)
    (3, 3, 8, 4, 4, torch.float16),        # G = 1
    (1, 5, 6, 3, 1, torch.float32),        # G = 5, one token
])
def test_split_qkvzba(layout, H, HV, K, V, T, dtype):
    g = gen(H * 100 + HV)
    qkvz = randn(T, 2 * H * K + 2 * HV * V, g=g, dtype=dtype)
    ba = randn(T, 2 * HV, g=g, dtype=dtype)
    kw = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout=layout)
    outs = split_outputs(T, H, HV, K, V, dtype)
    refs = split_outputs(T, H, HV, K, V, dtype)
    get("split_qkvzba", "triton").fn(qkvz, ba, *outs, **kw)
    R.split_qkvzba(qkvz, ba, *refs, **kw)
    indep = (hf_fix_query_key_value_ordering(qkvz, ba, H, HV, K, V) if layout == "interleaved"
             else gather_split(qkvz, ba, H, HV, K, V, layout))
    for o, r, i in zip(outs, refs, indep):
        assert bits_equal(o, r)                       # a pure copy: exact
        assert torch.equal(o.double(), i)
    if layout == "interleaved":
        for o, i in zip(outs, gather_split(qkvz, ba, H, HV, K, V, layout)):
            assert torch.equal(o.double(), i)


def test_split_matches_transformers_qwen3_next():
    """The real HF method, where transformers is installed."""
    m = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    H, HV, K, V, T = 2, 4, 8, 16, 3
    g = gen(3)
    qkvz, ba = randn(T, 2 * H * K + 2 * HV * V, g=g), randn(T, 2 * HV, g=g)
    stub = types.SimpleNamespace(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V)
    q, k, v, z, b, a = m.Qwen3NextGatedDeltaNet.fix_query_key_value_ordering(stub, qkvz[None], ba[None])
    mixed = torch.cat([x.reshape(1, T, -1) for x in (q, k, v)], dim=-1)[0]
    outs = split_outputs(T, H, HV, K, V, torch.float32)
    get("split_qkvzba", "triton").fn(qkvz, ba, *outs, num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V,
                                     layout="interleaved")
    for o, r in zip(outs, (mixed, z[0], b[0], a[0])):
        assert torch.equal(o, r)


# ---------------------------------------------------------------------------------------------------
# causal_conv1d_update

def conv_update_f64(x, pool, weight, bias, idx, activation):
    """float64, per row with F.conv1d over the W-column window; returns (out, new pool)."""
    B, D = x.shape
    out = torch.zeros(B, D, dtype=torch.float64)
    new = pool.double().clone()
    for i in range(B):
        s = int(idx[i])
        if s < 0:
            continue
        win = torch.cat([pool[s].double(), x[i].double()[:, None]], dim=1)            # [D, W]
        y = F.conv1d(win[None], weight.double()[:, None, :], None if bias is None else bias.double(), groups=D)[0, :, 0]
        out[i] = F.silu(y) if activation == "silu" else y
        new[s] = win[:, 1:]
    return out, new


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("dtype,state_dtype,bias,act,idx_dtype", [
    (torch.float32, torch.float32, True, "silu", torch.int32),
    (torch.bfloat16, torch.bfloat16, False, None, torch.int64),
    (torch.float16, torch.float32, True, None, torch.int32),
])
def test_causal_conv1d_update(W, dtype, state_dtype, bias, act, idx_dtype):
    g = gen(W * 7 + len(str(dtype)))
    B, D, S = 5, 37, 9
    idx = slots_for(B, S, g, pad=(1, 3), idx_dtype=idx_dtype)
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, D, W, state_dtype, g, used, slot_pad=5)
    x = randn(B, D, g=g, dtype=dtype)
    w = randn(D, W, g=g, dtype=dtype, scale=0.5)
    bb = randn(D, g=g, dtype=dtype) if bias else None
    buf0 = buf.clone()
    out = torch.full((B, D), NAN, dtype=dtype)
    get("causal_conv1d_update", "triton").fn(x, pool, w, bb, idx, out, activation=act)
    ref = torch.full((B, D), NAN, dtype=dtype)
    p0 = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    R.causal_conv1d_update(x, p0, w, bb, idx, ref, activation=act)
    o64, p64 = conv_update_f64(x, buf0[:, :D * (W - 1)].view(S, D, W - 1), w, bb, idx, act)
    live = idx >= 0
    assert (out[~live] == 0).all()
    assert rel(out[live], ref[live]) < TOL[dtype]
    assert rel(out[live], o64[live]) < TOL[dtype]
    assert bits_equal(pool[used], p0[used])                        # new state columns are copies
    assert torch.equal(pool[used].double(), p64[used].to(state_dtype).double())
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))
    assert bits_equal(buf[:, D * (W - 1):], buf0[:, D * (W - 1):])   # slot padding untouched


def test_causal_conv1d_update_all_padding():
    g = gen(1)
    pool, buf = conv_pool(3, 8, 4, torch.float32, g, torch.tensor([0, 1, 2]))
    before = buf.clone()
    out = torch.full((2, 8), NAN)
    get("causal_conv1d_update", "triton").fn(randn(2, 8, g=g), pool, randn(8, 4, g=g), None,
                                             torch.tensor([-1, -1]), out, activation="silu")
    assert (out == 0).all() and bits_equal(buf, before)


CONV_CONFIGS = [dict(ROWS=1, BLOCK_D=16, num_warps=1, FLAT=True), dict(ROWS=4, BLOCK_D=32, num_warps=2, FLAT=True),
                dict(ROWS=2, BLOCK_D=64, num_warps=4, FLAT=False), dict(ROWS=8, BLOCK_D=8, num_warps=1, FLAT=True)]


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=lambda c: f"r{c['ROWS']}d{c['BLOCK_D']}{'f' if c['FLAT'] else 't'}")
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("layout", ["slots", "transposed"])
def test_causal_conv1d_update_configs(cfg, W, layout):
    """Every config path (flat 8-channel groups, flat runs, per-column) with partial blocks and rows, and a
    pool whose slot rows are not contiguous ([S, W-1, D] storage seen as [S, D, W-1]: the per-column path)."""
    g = gen(W * 31 + cfg["BLOCK_D"])
    B, D, S = 7, 45, 11
    idx = slots_for(B, S, g, pad=(0, 5))
    used = idx[idx >= 0].long()
    if layout == "slots":
        pool, buf = conv_pool(S, D, W, torch.bfloat16, g, used, slot_pad=3)
        p0 = buf[:, :D * (W - 1)].view(S, D, W - 1).clone()
    else:
        buf = torch.full((S, W - 1, D), NAN, dtype=torch.bfloat16)
        pool = buf.transpose(1, 2)
        pool[used] = randn(len(used), D, W - 1, g=g, dtype=torch.bfloat16)
        p0 = pool.clone()
    buf0 = buf.clone()
    x = randn(B, D, g=g, dtype=torch.bfloat16)
    w, bb = randn(D, W, g=g, dtype=torch.bfloat16, scale=0.5), randn(D, g=g, dtype=torch.bfloat16)
    out = torch.full((B, D), NAN, dtype=torch.bfloat16)
    get("causal_conv1d_update", "triton").fn(x, pool, w, bb, idx, out, activation="silu", config=cfg)
    ref = torch.empty_like(out)
    R.causal_conv1d_update(x, p0, w, bb, idx, ref, activation="silu")
    live = idx >= 0
    assert (out[~live] == 0).all() and rel(out[live], ref[live]) < TOL[torch.bfloat16]
    assert bits_equal(pool[used], p0[used])
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))
    if layout == "slots":
        assert bits_equal(buf[:, D * (W - 1):], buf0[:, D * (W - 1):])


def test_causal_conv1d_update_strided_weight_fp32_state():
    """Weight [D, W] as a transposed view (non-unit column stride), fp16 input into an fp32 pool."""
    g = gen(77)
    B, D, S, W = 4, 40, 6, 4
    idx = slots_for(B, S, g, pad=(2,), idx_dtype=torch.int64)
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, D, W, torch.float32, g, used)
    p0 = pool.clone()
    x = randn(B, D, g=g, dtype=torch.float16)
    w = randn(W, D, g=g, dtype=torch.float16, scale=0.5).T
    out = torch.full((B, D), NAN, dtype=torch.float16)
    for cfg in (dict(ROWS=2, BLOCK_D=32, num_warps=1, FLAT=True), dict(ROWS=1, BLOCK_D=64, num_warps=2, FLAT=False)):
        pool.copy_(p0)
        get("causal_conv1d_update", "triton").fn(x, pool, w, None, idx, out, activation=None, config=cfg)
        o64, p64 = conv_update_f64(x, p0, w, None, idx, None)
        live = idx >= 0
        assert rel(out[live], o64[live]) < TOL[torch.float16]
        assert torch.equal(pool[used].double(), p64[used].float().double())


# ---------------------------------------------------------------------------------------------------
# conv1d_update_split

@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
@pytest.mark.parametrize("H,HV,K,V,W,dtype", [
    (2, 4, 16, 32, 4, torch.bfloat16),
    (2, 6, 5, 7, 3, torch.float32),       # G = 3, odd D
    (1, 1, 4, 6, 2, torch.float16),
])
def test_conv1d_update_split(layout, H, HV, K, V, W, dtype):
    g = gen(K * V + W)
    B, S = 4, 7
    D = 2 * H * K + HV * V
    idx = slots_for(B, S, g, pad=(2,), idx_dtype=torch.int64 if W == 3 else torch.int32)
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, D, W, dtype, g, used, slot_pad=3)
    buf0 = buf.clone()
    qkvz = randn(B, 2 * H * K + 2 * HV * V, g=g, dtype=dtype)
    ba = randn(B, 2 * HV, g=g, dtype=dtype)
    w = randn(D, W, g=g, dtype=dtype, scale=0.5)
    bb = randn(D, g=g, dtype=dtype)
    kw = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout=layout, activation="silu")
    outs = split_outputs(B, H, HV, K, V, dtype)
    get("conv1d_update_split", "triton").fn(qkvz, ba, pool, w, bb, idx, *outs, **kw)
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    refs = split_outputs(B, H, HV, K, V, dtype)
    R.conv1d_update_split(qkvz, ba, p_ref, w, bb, idx, *refs, **kw)
    # independent: HF/gather split then the float64 conv update
    sp = (hf_fix_query_key_value_ordering(qkvz, ba, H, HV, K, V) if layout == "interleaved"
          else gather_split(qkvz, ba, H, HV, K, V, layout))
    o64, p64 = conv_update_f64(sp[0].to(dtype), buf0[:, :D * (W - 1)].view(S, D, W - 1), w, bb, idx, "silu")
    live = idx >= 0
    assert (outs[0][~live] == 0).all()
    assert rel(outs[0][live], refs[0][live]) < TOL[dtype]
    assert rel(outs[0][live], o64[live]) < TOL[dtype]
    for o, r, i in zip(outs[1:], refs[1:], sp[1:]):                # z, b, a split for every row
        assert bits_equal(o, r) and torch.equal(o.double(), i)
    assert bits_equal(pool[used], p_ref[used])
    assert torch.equal(pool[used].double(), p64[used].to(dtype).double())
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))


@pytest.mark.parametrize("cfg", [dict(ROWS=1, num_warps=1, FLAT=True), dict(ROWS=4, num_warps=2, FLAT=True),
                                 dict(ROWS=2, num_warps=4, FLAT=False), dict(ROWS=8, num_warps=4, FLAT=True)],
                         ids=["r1f", "r4f", "r2t", "r8f"])
@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
def test_conv1d_update_split_configs(cfg, layout):
    """Table-style configs (rows per program, flat or per-column state) with partial row blocks, W = 4 and
    8-channel groups (K = 16, G*V = 48: a partial group block in v)."""
    H, HV, K, V, W, dtype = 2, 6, 16, 16, 4, torch.bfloat16
    g = gen(101 + cfg["ROWS"])
    B, S = 5, 9
    D = 2 * H * K + HV * V
    idx = slots_for(B, S, g, pad=(3,))
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, D, W, dtype, g, used, slot_pad=1)
    buf0 = buf.clone()
    qkvz, ba = randn(B, 2 * H * K + 2 * HV * V, g=g, dtype=dtype), randn(B, 2 * HV, g=g, dtype=dtype)
    w, bb = randn(D, W, g=g, dtype=dtype, scale=0.5), randn(D, g=g, dtype=dtype)
    kw = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout=layout, activation="silu")
    outs, refs = split_outputs(B, H, HV, K, V, dtype), split_outputs(B, H, HV, K, V, dtype)
    get("conv1d_update_split", "triton").fn(qkvz, ba, pool, w, bb, idx, *outs, **kw, config=cfg)
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    R.conv1d_update_split(qkvz, ba, p_ref, w, bb, idx, *refs, **kw)
    live = idx >= 0
    assert (outs[0][~live] == 0).all() and rel(outs[0][live], refs[0][live]) < TOL[dtype]
    for o, r in zip(outs[1:], refs[1:]):
        assert bits_equal(o, r)
    assert bits_equal(pool[used], p_ref[used])
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))


# ---------------------------------------------------------------------------------------------------
# causal_conv1d (prefill)

def causal_conv1d_f64(x, weight, bias, lengths, pool, idx, init, activation):
    """float64, token by token: y_t = sum_j w[:, j] * window[t + j] over [init | x_seq]."""
    T, D = x.shape
    W = weight.shape[1]
    out = torch.zeros(T, D, dtype=torch.float64)
    new = pool.double().clone()
    t0 = 0
    wd = weight.double()
    for n, L in enumerate(lengths):
        s = int(idx[n])
        if s >= 0:
            prev = pool[s].double() if init[n] else torch.zeros(D, W - 1, dtype=torch.float64)
            seq = torch.cat([prev, x[t0:t0 + L].double().T], dim=1)              # [D, W-1+L]
            for t in range(L):
                y = (seq[:, t:t + W] * wd).sum(1)
                if bias is not None:
                    y = y + bias.double()
                out[t0 + t] = F.silu(y) if activation == "silu" else y
            new[s] = seq[:, -(W - 1):]
        t0 += L
    return out, new


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("lengths,init,dtype,act", [
    ([5, 0, 1, 9, 2, 0], [True, True, False, True, True, False], torch.float32, "silu"),
    ([0, 3, 17, 1], None, torch.bfloat16, None),
    ([2, 40], [False, True], torch.float16, "silu"),
])
def test_causal_conv1d(W, lengths, init, dtype, act):
    g = gen(W + sum(lengths))
    N, S, D = len(lengths), len(lengths) + 3, 19
    T = sum(lengths)
    idx = slots_for(N, S, g, pad=(1,) if N > 2 else (), idx_dtype=torch.int64 if W == 3 else torch.int32)
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, D, W, dtype, g, used, slot_pad=7)
    buf0 = buf.clone()
    x = randn(T, D, g=g, dtype=dtype)
    w = randn(D, W, g=g, dtype=dtype, scale=0.5)
    bb = randn(D, g=g, dtype=dtype) if act else None
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32 if W != 4 else torch.int64)
    his = None if init is None else torch.tensor(init)
    out = torch.full((T, D), NAN, dtype=dtype)
    get("causal_conv1d", "triton").fn(x, w, bb, cu, pool, idx, his, out, activation=act)
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    ref = torch.full((T, D), NAN, dtype=dtype)
    R.causal_conv1d(x, w, bb, cu, p_ref, idx, his, ref, activation=act)
    o64, p64 = causal_conv1d_f64(x, w, bb, lengths, buf0[:, :D * (W - 1)].view(S, D, W - 1), idx,
                                 [True] * N if init is None else init, act)
    tok_live = torch.repeat_interleave(idx >= 0, torch.tensor(lengths))
    assert (out[~tok_live] == 0).all()
    assert rel(out[tok_live], ref[tok_live]) < TOL[dtype]
    assert rel(out[tok_live], o64[tok_live]) < TOL[dtype]
    assert bits_equal(pool[used], p_ref[used])
    assert torch.equal(pool[used].double(), p64[used].to(dtype).double())
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))
    assert bits_equal(buf[:, D * (W - 1):], buf0[:, D * (W - 1):])


def test_causal_conv1d_many_sequences_in_one_block():
    """Many short sequences (binary search over 33 offsets, sequences straddling token blocks)."""
    g = gen(5)
    lengths = [int(v) for v in torch.randint(0, 4, (33,), generator=g)]
    N, D, W = len(lengths), 6, 4
    T = sum(lengths)
    idx = slots_for(N, N + 2, g, pad=(4, 9))
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(N + 2, D, W, torch.float32, g, used)
    buf0 = buf.clone()
    init = [bool(v) for v in torch.randint(0, 2, (N,), generator=g)]
    x, w = randn(T, D, g=g), randn(D, W, g=g)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out = torch.full((T, D), NAN)
    get("causal_conv1d", "triton").fn(x, w, None, cu, pool, idx, torch.tensor(init), out, activation="silu")
    o64, p64 = causal_conv1d_f64(x, w, None, lengths, buf0.view(N + 2, D, W - 1), idx, init, "silu")
    tok_live = torch.repeat_interleave(idx >= 0, torch.tensor(lengths))
    assert (out[~tok_live] == 0).all() and rel(out[tok_live], o64[tok_live]) < 1e-5
    assert torch.equal(pool[used].double(), p64[used].float().double())
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))


@pytest.mark.parametrize("cfg,W", [(dict(BLOCK_T=4, CHUNK=4, BLOCK_D=16, num_warps=1), 4),
                                   (dict(BLOCK_T=4, CHUNK=4, BLOCK_D=32, num_warps=1), 3),
                                   (dict(BLOCK_T=16, CHUNK=4, BLOCK_D=8, num_warps=2), 2),
                                   (dict(BLOCK_T=8, CHUNK=8, BLOCK_D=32, num_warps=1), 4),
                                   (dict(BLOCK_T=64, CHUNK=16, BLOCK_D=32, num_warps=1), 3)],
                         ids=["t4-W4", "t4-W3", "t16c4-W2", "t8c8-W4", "t64c16-W3"])
def test_causal_conv1d_configs(cfg, W):
    """Small and large token blocks, with and without the chunk loop (sequence starts inside, at and within
    W-1 tokens of block edges, so block edges move), a transposed pool (non-unit column stride) and
    has_initial_state."""
    g = gen(W * 7 + cfg["BLOCK_T"])
    lengths = [9, 0, 2, 23, 1, 5, 0, 13, 0]                  # the last one starts at T
    N, D = len(lengths), 21
    S = N + 3
    T = sum(lengths)
    idx = slots_for(N, S, g, pad=(4,))
    used = idx[idx >= 0].long()
    buf = torch.full((S, W - 1, D), NAN, dtype=torch.float32)
    pool = buf.transpose(1, 2)
    pool[used] = randn(len(used), D, W - 1, g=g)
    p0 = pool.clone()
    buf0 = buf.clone()
    init = [True, True, False, True, True, False, True, True, False]
    x, w, bb = randn(T, D, g=g), randn(D, W, g=g, scale=0.5), randn(D, g=g)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    out = torch.full((T, D), NAN)
    get("causal_conv1d", "triton").fn(x, w, bb, cu, pool, idx, torch.tensor(init), out, activation="silu", config=cfg)
    o64, p64 = causal_conv1d_f64(x, w, bb, lengths, p0, idx, init, "silu")
    tok_live = torch.repeat_interleave(idx >= 0, torch.tensor(lengths))
    assert (out[~tok_live] == 0).all() and rel(out[tok_live], o64[tok_live]) < 1e-5
    assert torch.equal(pool[used].double(), p64[used].float().double())
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))


def test_causal_conv1d_no_tokens():
    """T = 0: every sequence is empty; slots without an initial state are zeroed, the others kept."""
    W, D, N = 4, 6, 3
    pool = torch.randn(N + 1, D, W - 1)
    p0 = pool.clone()
    idx = torch.tensor([2, -1, 0], dtype=torch.int32)
    init = torch.tensor([False, False, True])
    x, out = torch.empty(0, D), torch.empty(0, D)
    get("causal_conv1d", "triton").fn(x, torch.randn(D, W), None, torch.zeros(N + 1, dtype=torch.int32), pool, idx,
                                      init, out, activation="silu")
    assert (pool[2] == 0).all() and torch.equal(pool[[0, 1, 3]], p0[[0, 1, 3]])

# ---------------------------------------------------------------------------------------------------
# rms_norm_gated / rms_norm_gated_fp8

def rms_gated_f64(x, z, w, eps):
    x, z, w = x.double(), z.double(), w.double()
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w * (z * torch.sigmoid(z))


@pytest.mark.parametrize("shape,dtype,out_dtype", [
    ((3, 4, 32), torch.bfloat16, torch.bfloat16),
    ((7, 48), torch.float32, torch.float32),       # V not a power of two
    ((5, 33), torch.float16, torch.float32),       # odd V, out_dtype differs
])
def test_rms_norm_gated(shape, dtype, out_dtype):
    g = gen(shape[-1])
    x, z = randn(*shape, g=g, dtype=dtype, scale=2.0), randn(*shape, g=g, dtype=dtype)
    w = randn(shape[-1], g=g, dtype=dtype)
    out = torch.full(shape, NAN, dtype=out_dtype)
    get("rms_norm_gated", "triton").fn(x, z, w, out, eps=1e-6)
    ref = torch.full(shape, NAN, dtype=out_dtype)
    R.rms_norm_gated(x, z, w, ref, eps=1e-6)
    t = TOL[out_dtype] if out_dtype != torch.float32 else 1e-5
    assert rel(out, ref) < t and rel(out, rms_gated_f64(x, z, w, 1e-6)) < t


FP8_FORMATS = [(torch.float8_e4m3fn, 448.0), (torch.float8_e4m3fnuz, 224.0)]


def check_fp8(y, scales, x, z, w, eps, gs, fp8_max, ref_y, ref_s):
    M, V = x.shape
    yf = rms_gated_f64(x, z, w, eps)                                          # [M, V] float64
    grp = yf.view(M, V // gs, gs)
    s64 = torch.clamp(grp.abs().amax(-1) / fp8_max, min=1.0 / (fp8_max * 512.0))
    assert torch.isfinite(scales).all() and rel(scales, s64) < 1e-5
    deq = (y.double().view(M, V // gs, gs) * scales.double()[..., None])
    # e4m3: 3 mantissa bits -> relative rounding error <= 2^-4; subnormals: absolute <= scale * 2^-9
    err = (deq - grp).abs()
    bound = grp.abs() * 2.0 ** -4 + scales.double()[..., None] * 2.0 ** -9 + 1e-12
    assert (err <= bound).all(), f"worst {(err / bound).max().item()}"
    assert y.float().abs().max() <= fp8_max
    # against the reference: same codes except rare one-step flips at rounding ties of the fp32 value
    diff = (y.view(torch.uint8).int() - ref_y.view(torch.uint8).int())
    assert (diff != 0).float().mean() < 0.01 and (y.float() - ref_y.float()).abs().max() <= \
        (ref_y.float().abs().max() * 2.0 ** -3)
    assert rel(scales, ref_s) < 1e-6


@pytest.mark.parametrize("fp8_dtype,fp8_max", FP8_FORMATS, ids=["e4m3fn", "e4m3fnuz"])
@pytest.mark.parametrize("M,V,gs,dtype", [
    (6, 256, 128, torch.bfloat16),
    (5, 96, 32, torch.float32),      # 3 groups (padded to 4 in the kernel)
    (3, 60, 20, torch.float16),      # group_size not a power of two
])
def test_rms_norm_gated_fp8(fp8_dtype, fp8_max, M, V, gs, dtype):
    g = gen(V + gs)
    x, z = randn(M, V, g=g, dtype=dtype, scale=2.0), randn(M, V, g=g, dtype=dtype)
    x[0, : V // 2] *= 1e-4      # tiny values in a group: subnormal codes
    w = randn(V, g=g, dtype=dtype)
    y = torch.full((M, V), NAN).to(fp8_dtype)
    scales = torch.full((M, V // gs), NAN)
    get("rms_norm_gated_fp8", "triton").fn(x, z, w, y, scales, eps=1e-6, group_size=gs, fp8_max=fp8_max)
    ry, rs = torch.empty_like(y), torch.empty_like(scales)
    R.rms_norm_gated_fp8(x, z, w, ry, rs, eps=1e-6, group_size=gs, fp8_max=fp8_max)
    check_fp8(y, scales, x, z, w, 1e-6, gs, fp8_max, ry, rs)


@pytest.mark.parametrize("cfg", [dict(elems=128, num_warps=1), dict(elems=4096, num_warps=8)], ids=["e128", "e4096"])
@pytest.mark.parametrize("M,V,gs", [(37, 128, 128), (9, 96, 32), (5, 60, 20)])
def test_rms_norm_gated_fp8_configs(cfg, M, V, gs):
    """Rows per program from 1 to many (partial row blocks), grouped (pow2 group) and generic tiles."""
    g = gen(M * V)
    x, z, w = randn(M, V, g=g, dtype=torch.bfloat16, scale=2.0), randn(M, V, g=g, dtype=torch.bfloat16), \
        randn(V, g=g, dtype=torch.bfloat16)
    for fp8_dtype, fp8_max in FP8_FORMATS:
        y = torch.full((M, V), NAN).to(fp8_dtype)
        scales = torch.full((M, V // gs), NAN)
        get("rms_norm_gated_fp8", "triton").fn(x, z, w, y, scales, eps=1e-6, group_size=gs, fp8_max=fp8_max,
                                               config=cfg)
        ry, rs = torch.empty_like(y), torch.empty_like(scales)
        R.rms_norm_gated_fp8(x, z, w, ry, rs, eps=1e-6, group_size=gs, fp8_max=fp8_max)
        check_fp8(y, scales, x, z, w, 1e-6, gs, fp8_max, ry, rs)


def test_fnuz_equals_fn_of_twice():
    """The identity behind FNUZ_VIA_FN (e4m3fnuz stored through the e4m3fn cvt where only fn is in hardware):
    for |v| <= 224, fnuz bits of v == fn bits of 2v, fn's -0 (0x80) mapped to 0. Checked with torch's own
    roundings on every fnuz value, every midpoint and its neighbours, random and tiny values, signed zeros."""
    g = gen(11)
    vals = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fnuz).float()
    vals = vals[torch.isfinite(vals) & (vals.abs() <= 224)].unique()
    mids = (vals[1:] + vals[:-1]) / 2
    xs = torch.cat([vals, -vals, mids, -mids, mids.nextafter(torch.tensor(1e9)), mids.nextafter(torch.tensor(-1e9)),
                    torch.randn(20000, generator=g) * 30, torch.randn(5000, generator=g) * 1e-3,
                    torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40])]).clamp(-224, 224)
    fnuz = xs.to(torch.float8_e4m3fnuz).view(torch.uint8)
    fn = (xs * 2).to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(fnuz, torch.where(fn == 0x80, torch.zeros_like(fn), fn))


@triton.jit
def _e4m3_kernel(x_ptr, y_ptr, n, EB: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    tl.store(y_ptr + o, e4m3_bits(tl.load(x_ptr + o, mask=m), EB), mask=m)


def test_e4m3_software_rounding_is_bit_exact():
    """The software fp32 -> e4m3 path (sm_80, interpreter, fnuz off gfx942) against torch's rounding:
    every representable value, every midpoint and its neighbours, random values, signed zeros."""
    g = gen(0)
    for dt, eb, fmax in [(torch.float8_e4m3fn, 7, 448.0), (torch.float8_e4m3fnuz, 8, 240.0)]:
        vals = torch.arange(256, dtype=torch.uint8).view(dt).float()
        vals = vals[torch.isfinite(vals) & (vals.abs() <= fmax)].unique()
        mids = (vals[1:] + vals[:-1]) / 2
        xs = torch.cat([vals, -vals, mids, -mids, mids.nextafter(torch.tensor(1e9)),
                        mids.nextafter(torch.tensor(-1e9)), torch.randn(20000, generator=g) * 30,
                        torch.randn(5000, generator=g) * 1e-3, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-40])])
        xs = xs.clamp(-fmax, fmax)
        y = torch.empty(xs.numel(), dtype=torch.uint8)
        _e4m3_kernel[(triton.cdiv(xs.numel(), 8192),)](xs, y, xs.numel(), EB=eb, BLOCK=8192)
        assert torch.equal(y, xs.to(dt).view(torch.uint8)), dt


# ---------------------------------------------------------------------------------------------------
# the per-arch config tables (the tests above run the interpreter's default configs)

@pytest.mark.parametrize("arch", ["sm_90", "gfx942"])
def test_table_configs_numerics(arch, monkeypatch):
    """Each portable launcher with the configs its table picks for a real arch (GDN_ARCH pretends the
    arch; fp8 formats chosen so the store stays on the software path the interpreter can run)."""
    monkeypatch.setenv("GDN_ARCH", arch)
    probe.reload_env()
    g = gen(42)
    H, HV, K, V, W, B, S = 2, 4, 16, 40, 4, 40, 48
    D = 2 * H * K + HV * V                           # 224: partial 256-wide blocks
    idx = slots_for(B, S, g, pad=(0, 9))
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, D, W, torch.bfloat16, g, used, slot_pad=2)
    buf0 = buf.clone()
    qkvz, ba = randn(B, 2 * H * K + 2 * HV * V, g=g, dtype=torch.bfloat16), randn(B, 2 * HV, g=g, dtype=torch.bfloat16)
    w, bias = randn(D, W, g=g, dtype=torch.bfloat16, scale=0.5), randn(D, g=g, dtype=torch.bfloat16)
    kw = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout="interleaved")
    outs, refs = split_outputs(B, H, HV, K, V, torch.bfloat16), split_outputs(B, H, HV, K, V, torch.bfloat16)
    get("split_qkvzba", "triton").fn(qkvz, ba, *outs, **kw)
    R.split_qkvzba(qkvz, ba, *refs, **kw)
    assert all(bits_equal(o, r) for o, r in zip(outs, refs))
    outs, refs = split_outputs(B, H, HV, K, V, torch.bfloat16), split_outputs(B, H, HV, K, V, torch.bfloat16)
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    get("conv1d_update_split", "triton").fn(qkvz, ba, pool, w, bias, idx, *outs, **kw, activation="silu")
    R.conv1d_update_split(qkvz, ba, p_ref, w, bias, idx, *refs, **kw, activation="silu")
    live = idx >= 0
    assert rel(outs[0][live], refs[0][live]) < 5e-3 and (outs[0][~live] == 0).all()
    assert bits_equal(pool[used], p_ref[used]) and bits_equal(unused_rows(buf, used), unused_rows(buf0, used))
    x = randn(B, D, g=g, dtype=torch.bfloat16)
    out, ref = torch.full((B, D), NAN, dtype=torch.bfloat16), torch.empty(B, D, dtype=torch.bfloat16)
    get("causal_conv1d_update", "triton").fn(x, pool, w, bias, idx, out, activation="silu")
    R.causal_conv1d_update(x, p_ref, w, bias, idx, ref, activation="silu")
    assert rel(out[live], ref[live]) < 5e-3 and bits_equal(pool[used], p_ref[used])
    lengths = [0, 3, 40, 1, 26]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    xs = randn(sum(lengths), D, g=g, dtype=torch.bfloat16)
    sidx = idx[1:6]
    out, ref = torch.full_like(xs, NAN), torch.empty_like(xs)
    get("causal_conv1d", "triton").fn(xs, w, bias, cu, pool, sidx, None, out, activation="silu")
    R.causal_conv1d(xs, w, bias, cu, p_ref, sidx, None, ref, activation="silu")
    assert rel(out, ref) < 5e-3 and bits_equal(pool[used], p_ref[used])
    xr, zr, wr = randn(B * HV, V, g=g), randn(B * HV, V, g=g), randn(V, g=g)
    out, ref = torch.full_like(xr, NAN), torch.empty_like(xr)
    get("rms_norm_gated", "triton").fn(xr, zr, wr, out, eps=1e-6)
    R.rms_norm_gated(xr, zr, wr, ref, eps=1e-6)
    assert rel(out, ref) < 1e-5
    fp8, fmax = (torch.float8_e4m3fnuz, 224.0) if arch == "sm_90" else (torch.float8_e4m3fn, 448.0)
    y, sc = torch.empty(B * HV, V, dtype=fp8), torch.full((B * HV, V // 20), NAN)
    get("rms_norm_gated_fp8", "triton").fn(xr, zr, wr, y, sc, eps=1e-6, group_size=20, fp8_max=fmax)
    ry, rs = torch.empty_like(y), torch.empty_like(sc)
    R.rms_norm_gated_fp8(xr, zr, wr, ry, rs, eps=1e-6, group_size=20, fp8_max=fmax)
    check_fp8(y, sc, xr, zr, wr, 1e-6, 20, fmax, ry, rs)


# ---------------------------------------------------------------------------------------------------
# recording on meta tensors at Qwen3-Next widths (what gdn/common/aot.py and CUDA graphs need)

QW = dict(H=16, HV=32, K=128, V=128, W=4)


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def qwen_meta_calls(B=8192):
    """(op, args, kwargs) for every portable launcher, meta tensors at Qwen3-Next widths."""
    H, HV, K, V, W = QW["H"], QW["HV"], QW["K"], QW["V"], QW["W"]
    D = 2 * H * K + HV * V
    S = B + 7
    i32 = torch.int32
    pool = meta(S, D, W - 1)
    split = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout="interleaved")
    outs = (meta(B, D), meta(B, HV, V), meta(B, HV), meta(B, HV))
    N = 8
    return [
        ("split_qkvzba", (meta(B, 2 * H * K + 2 * HV * V), meta(B, 2 * HV), *outs), split),
        ("causal_conv1d_update", (meta(B, D), pool, meta(D, W), meta(D), meta(B, dtype=torch.int64), meta(B, D)),
         dict(activation="silu")),
        ("conv1d_update_split", (meta(B, 2 * H * K + 2 * HV * V), meta(B, 2 * HV), pool, meta(D, W), None,
                                 meta(B, dtype=i32), *outs), dict(split, activation="silu")),
        ("causal_conv1d", (meta(B, D), meta(D, W), meta(D), meta(N + 1, dtype=i32), pool, meta(N, dtype=i32),
                           meta(N, dtype=torch.bool), meta(B, D)), dict(activation="silu")),
        ("rms_norm_gated", (meta(B, HV, V), meta(B, HV, V), meta(V), meta(B, HV, V)), dict(eps=1e-6)),
        ("rms_norm_gated_fp8", (meta(B * HV, V), meta(B * HV, V), meta(V),
                                meta(B * HV, V, dtype=torch.float8_e4m3fn), meta(B * HV, V // 128, dtype=torch.float32)),
         dict(eps=1e-6, group_size=128, fp8_max=448.0)),
    ]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "gfx942", "gfx950"])
def test_launchers_record_on_meta(arch):
    for op, args, kw in qwen_meta_calls():
        with recording(arch) as launches:
            get(op, "triton").fn(*args, **kw)
        assert len(launches) == 1, op
        for l in launches:
            assert all(v == "constexpr" or v.startswith(("*", "i", "fp")) for v in l.signature.values())
        sig = launches[0].signature
        if op == "causal_conv1d_update":
            assert sig["idx_ptr"] == "*i64" and sig["bias_ptr"] == "*bf16"
            cfg = pick(CU._CONFIGS, arch, CU.bucket(*args[0].shape), CU._DEFAULT)             # by table
            assert launches[0].constexprs["BLOCK_D"] == cfg["BLOCK_D"]
            assert launches[0].constexprs["FLAT"] is bool(cfg["FLAT"])
        if op == "conv1d_update_split":
            assert launches[0].constexprs["bias_ptr"] is None and launches[0].constexprs["G"] == 2
        if op == "causal_conv1d":
            assert sig["init_ptr"] == "*u8" and launches[0].constexprs["STEPS"] == 4    # N + 1 = 9 offsets
        if op == "rms_norm_gated_fp8":
            soft = arch in ("sm_80", "gfx942")           # e4m3fn: native on sm_89+ and gfx950 only
            assert launches[0].constexprs["MODE"] == (FP8.SOFT if soft else FP8.NATIVE)
            assert launches[0].constexprs["GROUPED"] is True
            assert sig["y_ptr"] == ("*u8" if soft else "*fp8e4nv")
            y = meta(*args[3].shape, dtype=torch.float8_e4m3fnuz)        # fnuz: native on gfx942, via fn on sm_90+
            with recording(arch) as ls:
                get(op, "triton").fn(*args[:3], y, args[4], **dict(kw, fp8_max=224.0))
            want = {"gfx942": FP8.NATIVE, "sm_80": FP8.SOFT}.get(arch, FP8.FNUZ_VIA_FN)
            assert ls[0].constexprs["MODE"] == want


def test_aot_compile_qwen_widths():
    """triton.compile of what each launcher records at Qwen3-Next widths, for sm_90 and gfx942 (the
    interpreter replaces @triton.jit at import, so this needs a fresh process without it)."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root, os.path.join(root, "tests"), os.path.dirname(os.path.abspath(__file__)),
                                         env.get("PYTHONPATH", "")])
    code = (
        "import sys, test_edge_ops as t\n"
        "from gdn.common.aot import _compile\n"
        "from gdn.common.launch import recording\n"
        "from gdn.common.registry import get\n"
        "for arch in ('sm_90', 'gfx942'):\n"
        "    n = 0\n"
        "    for op, args, kw in t.qwen_meta_calls(B=64):\n"
        "        with recording(arch) as ls:\n"
        "            get(op, 'triton').fn(*args, **kw)\n"
        "        for l in ls:\n"
        "            _compile(l, arch); n += 1\n"
        "    print(arch, n)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.abspath(__file__)))
    assert r.returncode == 0, r.stderr[-4000:]
    assert "sm_90 6" in r.stdout and "gfx942 6" in r.stdout
