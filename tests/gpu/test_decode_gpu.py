"""Triton decode family on a real GPU at the Qwen3-Next shape (H=16, HV=32, K=V=128).

Run without TRITON_INTERPRET:  pytest -m gpu tests/gpu/test_decode_gpu.py
Covers: full-size matrix vs the fp32 reference (B=1 and B=1024, vk/kv, fp32/bf16 pools, padding, poisoned
unused slots), decode_packed, decode_mtp (chain, tree, commit), >= 2048-step recurrences, a pool past
2^31 elements (int64 offsets), CUDA-graph capture and replay, torch.compile(fullgraph=True) over
gdn.ops.decode.
"""
import os

import pytest
import torch
from _helpers import rel, bits_equal

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                       reason="GPU tests run compiled kernels (unset TRITON_INTERPRET)"),
]

H, HV, K, V = 16, 32, 128, 128
NAN = float("nan")
DEV = "cuda"


@pytest.fixture(autouse=True, scope="module")
def _setup():
    torch.backends.cuda.matmul.allow_tf32 = False     # the fp32 reference must stay fp32
    torch.backends.cudnn.allow_tf32 = False
    import gdn.common.triton  # noqa: F401
    yield


def fns(op):
    from gdn.common.registry import get
    return get(op, "triton").fn, get(op, "reference").fn


def pshape(layout):
    return (HV, V, K) if layout == "vk" else (HV, K, V)


def inputs(B, T=None, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    r = lambda *s: torch.randn(*lead, *s, generator=g, device=DEV).to(dtype)  # noqa: E731
    return dict(q=r(H, K), k=r(H, K), v=r(HV, V), a=r(HV), b=r(HV),
                A_log=torch.empty(HV, device=DEV).uniform_(-4, -1, generator=g),
                dt_bias=torch.randn(HV, generator=g, device=DEV) * 0.5)


def pool_and_slots(B, S, layout, state_dtype, idx_dtype=torch.int32, pad_every=7, seed=1):
    g = torch.Generator(device=DEV).manual_seed(seed)
    pool = torch.full((S, *pshape(layout)), NAN, dtype=state_dtype, device=DEV)
    slots = torch.randperm(S, generator=g, device=DEV)[:B]
    if B > 1:
        slots[::pad_every] = -1
    used = slots[slots >= 0]
    pool[used] = torch.randn(len(used), *pool.shape[1:], generator=g, device=DEV).to(state_dtype)
    return pool, slots.to(idx_dtype), used


def unused_mask(S, used):
    m = torch.ones(S, dtype=torch.bool, device=DEV)
    m[used] = False
    return m


def tol_for(in_dtype, state_dtype):
    if state_dtype == torch.bfloat16:
        return 1e-2
    return 1e-5 if in_dtype == torch.float32 else 5e-3


@pytest.mark.parametrize("B", [1, 1024])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("state_dtype,in_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                                  (torch.bfloat16, torch.bfloat16)],
                         ids=["fp32-fp32in", "fp32-bf16in", "bf16-bf16in"])
def test_decode_full_size(B, layout, state_dtype, in_dtype):
    tri, ref = fns("decode")
    d = inputs(B, dtype=in_dtype)
    S = B + 13
    pool, idx, used = pool_and_slots(B, S, layout, state_dtype, idx_dtype=torch.int64 if B == 1 else torch.int32)
    p1, p2 = pool.clone(), pool.clone()
    o1 = torch.full((B, HV, V), NAN, dtype=in_dtype, device=DEV)
    o2 = torch.empty_like(o1)
    args = (d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"])
    kw = dict(scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    tri(*args, p1, idx, o1, **kw)
    ref(*args, p2, idx, o2, **kw)
    t = tol_for(in_dtype, state_dtype)
    valid = idx >= 0
    assert rel(o1[valid], o2[valid]) < t
    assert (o1[~valid] == 0).all()
    assert rel(p1[used], p2[used]) < t
    m = unused_mask(S, used)
    assert bits_equal(p1[m], pool[m])


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_decode_packed_full_size(layout):
    tri, ref = fns("decode_packed")
    B = 64
    d = inputs(B)
    mixed = torch.randn(B, 2 * H * K + HV * V, device=DEV).to(torch.bfloat16)
    pool, idx, used = pool_and_slots(B, 80, layout, torch.float32)
    p1, p2 = pool.clone(), pool.clone()
    o1 = torch.full((B, HV, V), NAN, dtype=torch.bfloat16, device=DEV)
    o2 = torch.empty_like(o1)
    kw = dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    tri(mixed, d["a"], d["b"], d["A_log"], d["dt_bias"], p1, idx, o1, **kw)
    ref(mixed, d["a"], d["b"], d["A_log"], d["dt_bias"], p2, idx, o2, **kw)
    valid = idx >= 0
    assert rel(o1[valid], o2[valid]) < 5e-3 and (o1[~valid] == 0).all()
    assert rel(p1[used], p2[used]) < 5e-3


@pytest.mark.parametrize("T", [2, 4, 8, 16])
@pytest.mark.parametrize("layout,state_dtype", [("vk", torch.float32), ("kv", torch.float32),
                                                ("vk", torch.bfloat16)], ids=["vk-fp32", "kv-fp32", "vk-bf16"])
@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
def test_mtp_full_size(T, layout, state_dtype, tree):
    tri, ref = fns("decode_mtp")
    com_tri, _ = fns("commit_accepted")
    B = 32
    d = inputs(B, T)
    pool, idx, used = pool_and_slots(B, 48, layout, state_dtype)
    parent = None
    if tree:
        g = torch.Generator(device=DEV).manual_seed(T)
        # random trees in topological order: parent[t] uniform in [-1, t-1]
        parent = torch.stack([torch.randint(-1, t, (B,), generator=g, device=DEV) if t else
                              torch.full((B,), -1, device=DEV) for t in range(T)], dim=1).to(torch.int32)
    res = {}
    for name, fn in (("tri", tri), ("ref", ref)):
        p = pool.clone()
        inter = torch.full((B, T, *pshape(layout)), NAN, dtype=state_dtype, device=DEV)
        o = torch.full((B, T, HV, V), NAN, dtype=torch.bfloat16, device=DEV)
        fn(d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"], p, idx, o, inter, None, parent,
           disable_state_update=True, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
        res[name] = (p, o, inter)
    t = 1e-2 if state_dtype == torch.bfloat16 else 5e-3
    valid = idx >= 0
    assert rel(res["tri"][1][valid], res["ref"][1][valid]) < t and (res["tri"][1][~valid] == 0).all()
    assert rel(res["tri"][2][valid], res["ref"][2][valid]) < t
    assert torch.isnan(res["tri"][2][~valid].float()).all()
    assert bits_equal(res["tri"][0], pool)                       # disable_state_update
    acc = torch.randint(0, T + 1, (B,), device=DEV, dtype=torch.int32)
    p = pool.clone()
    com_tri(p, idx, res["tri"][2], torch.arange(B, device=DEV), acc, state_layout=layout)
    ok = valid & (acc > 0)
    rows = ok.nonzero().flatten()
    assert bits_equal(p[idx[rows].long()], res["tri"][2][rows, acc[rows].long() - 1])
    keep = unused_mask(48, idx[rows].long())
    assert bits_equal(p[keep], pool[keep])


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_mtp_tree_without_intermediate_states(layout):
    """parent_indices with no intermediate buffer (and a negative intermediate index): parents recomputed."""
    tri, ref = fns("decode_mtp")
    B, T = 16, 8
    d = inputs(B, T, dtype=torch.float32)
    pool, idx, used = pool_and_slots(B, 20, layout, torch.float32)
    g = torch.Generator(device=DEV).manual_seed(5)
    parent = torch.stack([torch.randint(-1, t, (B,), generator=g, device=DEV) if t else
                          torch.full((B,), -1, device=DEV) for t in range(T)], dim=1)
    for inter_rows, iidx in ((None, None), (B, torch.where(torch.arange(B, device=DEV) % 3 == 0, -1,
                                                           torch.arange(B, device=DEV)))):
        res = []
        for fn in (tri, ref):
            p = pool.clone()
            inter = None if inter_rows is None else torch.zeros(inter_rows, T, *pshape(layout), device=DEV)
            o = torch.full((B, T, HV, V), NAN, device=DEV)
            fn(d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"], p, idx, o, inter, iidx, parent,
               disable_state_update=False, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
            res.append((p, o))
        valid = idx >= 0
        assert rel(res[0][1][valid], res[1][1][valid]) < 1e-5
        assert rel(res[0][0][used], res[1][0][used]) < 1e-5


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("Bsz", [2, 64])
def test_decode_long_recurrence(state_dtype, Bsz):
    """2048 consecutive decode steps on the same slots; outputs checked at every step."""
    tri, ref = fns("decode")
    in_dtype = torch.float32 if state_dtype == torch.float32 else torch.bfloat16
    pool, idx, used = pool_and_slots(Bsz, Bsz + 3, "vk", state_dtype, pad_every=5)
    p1, p2 = pool.clone(), pool.clone()
    o1 = torch.empty(Bsz, HV, V, dtype=in_dtype, device=DEV)
    o2 = torch.empty_like(o1)
    worst = 0.0
    valid = idx >= 0
    for step in range(2048):
        d = inputs(Bsz, dtype=in_dtype, seed=100 + step)
        args = (d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"])
        tri(*args, p1, idx, o1, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
        ref(*args, p2, idx, o2, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
        if step % 64 == 63 or step < 4:
            worst = max(worst, rel(o1[valid], o2[valid]))
    t = tol_for(in_dtype, state_dtype)
    assert worst < t, worst
    assert rel(p1[used], p2[used]) < t


def test_mtp_long_recurrence():
    """2048 steps as 128 verify calls of T=16 with state update (fp32 pool, fp32 inputs)."""
    tri, ref = fns("decode_mtp")
    B, T = 4, 16
    pool, idx, used = pool_and_slots(B, 6, "vk", torch.float32, pad_every=3)
    p1, p2 = pool.clone(), pool.clone()
    worst = 0.0
    valid = idx >= 0
    for c in range(128):
        d = inputs(B, T, dtype=torch.float32, seed=c)
        outs = []
        for fn, p in ((tri, p1), (ref, p2)):
            o = torch.empty(B, T, HV, V, device=DEV)
            fn(d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"], p, idx, o, None, None, None,
               disable_state_update=False, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
            outs.append(o)
        worst = max(worst, rel(outs[0][valid], outs[1][valid]))
    assert worst < 1e-5, worst
    assert rel(p1[used], p2[used]) < 1e-5


def test_large_pool_int64_offsets():
    """bf16 pool [4097, 32, 128, 128]: 2^31 + 2^19 elements; the last slot sits past int32 offsets."""
    S = 4097
    assert S * HV * K * V > 2 ** 31
    try:
        pool = torch.zeros(S, HV, V, K, dtype=torch.bfloat16, device=DEV)
    except torch.cuda.OutOfMemoryError:
        pytest.skip("not enough GPU memory for a 4.3 GB pool")
    tri, ref = fns("decode")
    g = torch.Generator(device=DEV).manual_seed(3)
    last = torch.randn(2, HV, V, K, generator=g, device=DEV).to(torch.bfloat16)
    pool[S - 1] = last[0]
    pool[17] = last[1]
    before = pool.clone()
    idx = torch.tensor([S - 1, 17], dtype=torch.int32, device=DEV)
    d = inputs(2)
    o1 = torch.full((2, HV, V), NAN, dtype=torch.bfloat16, device=DEV)
    tri(d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"], pool, idx, o1, scale=K ** -0.5,
        use_qk_l2norm=True, state_layout="vk")
    small = last.clone()
    o2 = torch.empty_like(o1)
    ref(d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"], small,
        torch.tensor([0, 1], device=DEV), o2, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    assert rel(o1, o2) < 1e-2
    assert rel(pool[S - 1], small[0]) < 1e-2 and rel(pool[17], small[1]) < 1e-2
    # nothing else written (a wrapped int32 offset would land in another slot)
    for lo, hi in ((0, 17), (18, 2048), (2048, S - 1)):
        assert torch.equal(pool[lo:hi], before[lo:hi]), f"slots [{lo}, {hi}) changed"
    del before
    # commit_accepted into the last slot, from an intermediate buffer
    com, _ = fns("commit_accepted")
    inter = torch.randn(1, 2, HV, V, K, device=DEV).to(torch.bfloat16)
    com(pool, torch.tensor([S - 1], device=DEV), inter, torch.tensor([0], device=DEV),
        torch.tensor([2], device=DEV), state_layout="vk")
    assert bits_equal(pool[S - 1], inter[0, 1])


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_cuda_graph_capture_replay(layout):
    tri, ref = fns("decode")
    B, S = 48, 64
    pool, idx, used = pool_and_slots(B, S, layout, torch.float32)
    d = inputs(B)
    static = {k: v.clone() for k, v in d.items()}
    out = torch.empty(B, HV, V, dtype=torch.bfloat16, device=DEV)
    kw = dict(scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    p_ref = pool.clone()

    def call():
        tri(static["q"], static["k"], static["v"], static["a"], static["b"], static["A_log"], static["dt_bias"],
            pool, idx, out, **kw)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    scratch = pool.clone()
    with torch.cuda.stream(s):                          # warm-up (compiles) on a scratch pool
        tri(static["q"], static["k"], static["v"], static["a"], static["b"], static["A_log"], static["dt_bias"],
            scratch, idx, out, **kw)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        call()
    assert bits_equal(pool, p_ref)                      # capture ran nothing
    o_ref = torch.empty_like(out)
    for step in range(5):
        nd = inputs(B, seed=50 + step)
        for k2 in ("q", "k", "v", "a", "b"):
            static[k2].copy_(nd[k2])
        g.replay()
        ref(nd["q"], nd["k"], nd["v"], nd["a"], nd["b"], d["A_log"], d["dt_bias"], p_ref, idx, o_ref, **kw)
        torch.cuda.synchronize()
        valid = idx >= 0
        assert rel(out[valid], o_ref[valid]) < 5e-3 and (out[~valid] == 0).all()
    assert rel(pool[used], p_ref[used]) < 5e-3


def test_cuda_graph_mtp():
    tri, ref = fns("decode_mtp")
    B, T = 16, 4
    pool, idx, used = pool_and_slots(B, 20, "vk", torch.float32)
    d = inputs(B, T)
    inter = torch.empty(B, T, HV, V, K, device=DEV)
    out = torch.empty(B, T, HV, V, dtype=torch.bfloat16, device=DEV)
    kw = dict(disable_state_update=True, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    args = (d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"], pool, idx, out, inter, None, None)
    tri(*args, **kw)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        tri(*args, **kw)
    out.fill_(NAN)
    g.replay()
    o2 = torch.empty_like(out)
    i2 = torch.empty_like(inter)
    ref(*args[:9], o2, i2, None, None, **kw)
    valid = idx >= 0
    assert rel(out[valid], o2[valid]) < 5e-3 and rel(inter[valid], i2[valid]) < 5e-3


def test_torch_compile_fullgraph_public_decode():
    ops = pytest.importorskip("gdn.ops")
    B = 24
    pool, idx, used = pool_and_slots(B, 32, "vk", torch.float32)
    d = inputs(B)

    def step(q, k, v, a, b, state, state_indices):
        o = ops.decode(q, k, v, a, b, d["A_log"], d["dt_bias"], state, state_indices, state_layout="vk",
                       backend="triton")
        return o * 2.0

    compiled = torch.compile(step, fullgraph=True)
    p1, p2 = pool.clone(), pool.clone()
    o1 = compiled(d["q"], d["k"], d["v"], d["a"], d["b"], p1, idx)
    o_eager = torch.empty(B, HV, V, dtype=torch.bfloat16, device=DEV)
    fns("decode")[1](d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"], p2, idx, o_eager,
                     scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    valid = idx >= 0
    assert rel(o1[valid], 2.0 * o_eager[valid].float()) < 5e-3
    assert rel(p1[used], p2[used]) < 5e-3                # the pool mutation survived compilation
