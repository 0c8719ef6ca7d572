"""Triton chunked prefill (gdn/common/triton/prefill/) under the interpreter, on tiny shapes.

Each sub-op against its fp32 reference (chunk_cumsum: reference.py; the others: reference_chunk.py), and
prefill against the token-by-token reference recurrence: both state layouts, fp32/bf16 pools, GVA, raw and
precomputed gates, int32/int64 cu_seqlens, a has_initial_state mix, padding slots (-1), zero-length
sequences, lengths that are not multiples of 64, the unused tail of a token budget, strided inputs, both
launch plans (output fused into the state pass or not). Outputs and unused pool slots are NaN-poisoned.
Tolerances (spec/ops.md): fp32 1e-5, bf16 inputs 5e-3, bf16 state 1e-2.
"""
import contextlib

import numpy as np
import pytest
import torch

from gdn import ops
from gdn.common import probe
from gdn.common import launch as L
from gdn.common import reference as R
from gdn.common import reference_chunk as RC
from gdn.common import registry
from gdn.common.triton.prefill import _common as C
from gdn.common.triton.prefill import chunk_state as CS
from gdn.common.triton.prefill import prefill as P
from gdn.common.triton.prefill import segments as SEG

NAN = float("nan")


def relerr(x, ref):
    x, ref = x.double(), ref.double()
    assert torch.isfinite(x).all(), "non-finite values"
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def tol(dtype, state_dtype=torch.float32):
    """spec/ops.md: fp32 1e-5, 16-bit inputs 5e-3, bf16 state 1e-2."""
    if state_dtype == torch.bfloat16:
        return 1e-2
    return 1e-5 if dtype == torch.float32 else 5e-3


def cu_of(lengths, dtype=torch.int32):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=dtype)


def triton(op):
    return registry.get(op, "triton").fn


def gates(T, HV, dtype):
    a, b = torch.randn(T, HV).to(dtype), torch.randn(T, HV).to(dtype)
    return a, b, torch.empty(HV).uniform_(-4, -1), torch.empty(HV).uniform_(-1, 1)


def pool_of(S, HV, K, V, layout, dtype, slot_pad=0):
    """A pool whose slot stride exceeds HV*K*V when slot_pad > 0 (a view of a wider buffer)."""
    inner = (HV, V, K) if layout == "vk" else (HV, K, V)
    n = HV * K * V
    buf = (torch.randn(S, n + slot_pad) * 0.1).to(dtype)
    return buf[:, :n].view(S, *inner) if slot_pad == 0 else buf.as_strided((S, *inner), (n + slot_pad, *torch.empty(inner).stride()))


def poison_unused(pool, idx):
    used = torch.zeros(pool.shape[0], dtype=torch.bool)
    used[idx[idx >= 0].long()] = True
    pool[~used] = NAN
    return used


@pytest.fixture
def plan(monkeypatch):
    """plan(fuse, BV): force prefill's launch plan (output fused into the state pass or not) and the state
    pass's V split, whatever the size bucket."""
    def set_plan(fuse, BV=32):
        for bucket in ("narrow", "wide"):
            monkeypatch.setitem(P._FUSE, bucket, fuse)
            monkeypatch.setitem(CS._CONFIGS, bucket, dict(BV=BV, num_warps=4, num_stages=1))
    return set_plan


@contextlib.contextmanager
def bounds_checked():
    """Under the interpreter: every active lane of every tl.load / tl.store of the kernels launched inside
    must fall within one of the launch's tensor arguments (their extents, views included), else
    AssertionError naming the kernel and program. The GPU faults on such accesses only sometimes (the
    address may land in another live allocation); the interpreter reads host memory and never faults."""
    import triton.runtime.interpreter as interp
    GE, B = interp.GridExecutor, interp.InterpreterBuilder
    saved = GE._init_args_hst, B.create_masked_load, B.create_masked_store
    launch = {}

    def extent(t):
        span = sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) + 1
        return t.data_ptr(), t.data_ptr() + span * t.element_size()

    def init(self, args_dev, kwargs):
        a, k = saved[0](self, args_dev, kwargs)
        ts = [x for x in list(a) + list(k.values()) if isinstance(x, torch.Tensor) and x.numel()]
        launch.update(name=self.fn.__name__, regions=np.array([extent(t) for t in ts], dtype=np.uint64).reshape(-1, 2))
        return a, k

    def check(ptrs, mask, what):
        addr = ptrs.data.astype(np.uint64).reshape(-1)[np.broadcast_to(mask.data.astype(bool), ptrs.data.shape).reshape(-1)]
        if addr.size == 0:
            return
        size = np.uint64(max(1, ptrs.get_element_ty().primitive_bitwidth // 8))
        lo, hi = launch["regions"][:, 0], launch["regions"][:, 1]
        inside = ((addr[:, None] >= lo[None, :]) & (addr[:, None] + size <= hi[None, :])).any(axis=1)
        if not inside.all():
            raise AssertionError(f"{what} out of bounds in {launch['name']}, program "
                                 f"{interp.interpreter_builder.grid_idx}: {int((~inside).sum())} lanes")

    def load(self, ptrs, mask, other, *rest):
        check(ptrs, mask, "load")
        return saved[1](self, ptrs, mask, other, *rest)

    def store(self, ptrs, value, mask, *rest):
        check(ptrs, mask, "store")
        return saved[2](self, ptrs, value, mask, *rest)

    GE._init_args_hst, B.create_masked_load, B.create_masked_store = init, load, store
    try:
        yield
    finally:
        GE._init_args_hst, B.create_masked_load, B.create_masked_store = saved


@pytest.fixture
def poisoned_workspace(monkeypatch):
    """prefill's internal buffers (g_cum, w, u, norms, h, v_new) come from torch.empty: fill them with NaN
    so that a read of anything no kernel wrote shows (on the CPU fresh pages are zeros and hide it)."""
    class _Torch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(*a, **kw):
            t = torch.empty(*a, **kw)
            return t.fill_(NAN) if t.dtype.is_floating_point else t
    monkeypatch.setattr(P, "torch", _Torch())
    monkeypatch.setattr(SEG, "torch", _Torch())


# ---------------------------------------------------------------------------------------------------
# sub-ops

@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("chunk_size,HV,dtype", [(64, 4, torch.float32), (16, 6, torch.bfloat16)])
def test_chunk_cumsum(cu_dtype, chunk_size, HV, dtype):
    lengths = [70, 0, 5, 130, 64]
    T = sum(lengths)
    g = (-torch.rand(T, HV)).to(dtype)
    cu = cu_of(lengths, cu_dtype)
    ref = torch.full((T, HV), NAN)
    got = torch.full((T, HV), NAN)
    R.chunk_cumsum(g, cu, ref, chunk_size=chunk_size)
    triton("chunk_cumsum")(g, cu, got, chunk_size=chunk_size)
    assert relerr(got, ref) < 1e-6
    # through the public op too
    assert relerr(ops.chunk_cumsum(g, cu, chunk_size=chunk_size, backend="triton"), ref) < 1e-6


def _chunk_inputs(lengths, H, HV, K, V, dtype):
    T = sum(lengths)
    cu = cu_of(lengths)
    q, k, v = torch.randn(T, H, K).to(dtype), torch.randn(T, H, K).to(dtype), torch.randn(T, HV, V).to(dtype)
    g, beta = R.gates(*gates(T, HV, torch.float32))
    g_cum = torch.empty(T, HV)
    R.chunk_cumsum(g, cu, g_cum, chunk_size=64)
    return q, k, v, g_cum, beta, cu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("l2", [True, False])
def test_chunk_kkt_solve_and_wy(dtype, l2):
    lengths, H, HV, K, V = [130, 0, 37], 1, 2, 32, 16
    q, k, v, g_cum, beta, cu = _chunk_inputs(lengths, H, HV, K, V, dtype)
    if not l2:
        k = (k.float() / k.float().norm(dim=-1, keepdim=True)).to(dtype)    # keys of unit norm either way
    T = k.shape[0]
    A_ref, A = torch.full((T, HV, 64), NAN), torch.full((T, HV, 64), NAN)
    RC.chunk_kkt_solve(k, g_cum, beta, cu, A_ref, use_qk_l2norm=l2)
    triton("chunk_kkt_solve")(k, g_cum, beta, cu, A, use_qk_l2norm=l2)
    assert relerr(A, A_ref) < 1e-5
    w_ref, u_ref = torch.full((T, HV, K), NAN), torch.full((T, HV, V), NAN)
    w, u = torch.full((T, HV, K), NAN), torch.full((T, HV, V), NAN)
    RC.chunk_wy(k, v, g_cum, beta, A_ref, cu, w_ref, u_ref, use_qk_l2norm=l2)
    triton("chunk_wy")(k, v, g_cum, beta, A_ref, cu, w, u, use_qk_l2norm=l2)
    # fp32 outputs: bf16 inputs enter exactly, A is split into two 16-bit parts
    t = 1e-5 if dtype == torch.float32 else 1e-4
    assert relerr(w, w_ref) < t and relerr(u, u_ref) < t


@pytest.mark.parametrize("layout,pool_dtype,BV", [("vk", torch.float32, 32), ("kv", torch.bfloat16, 16)])
def test_chunk_state(layout, pool_dtype, BV, monkeypatch):
    monkeypatch.setitem(CS._CONFIGS, "narrow", dict(BV=BV, num_warps=4, num_stages=1))
    lengths, H, HV, K, V = [70, 0, 64, 9], 1, 2, 16, 32
    N, T = len(lengths), sum(lengths)
    q, k, v, g_cum, beta, cu = _chunk_inputs(lengths, H, HV, K, V, torch.float32)
    w, u = torch.randn(T, HV, K) * 0.3, torch.randn(T, HV, V)
    idx = torch.tensor([4, 1, -1, 0])
    init = torch.tensor([True, False, True, False])
    pool = pool_of(6, HV, K, V, layout, pool_dtype)
    used = poison_unused(pool, idx)
    NS = C.num_slots(T, N)
    outs = {}
    for name, fn in (("ref", RC.chunk_state), ("tri", triton("chunk_state"))):
        p, h, vn = pool.clone(), torch.full((NS, HV, K, V), NAN), torch.full((T, HV, V), NAN)
        fn(k, w, u, g_cum, p, idx, cu, init, h, vn, use_qk_l2norm=True, state_layout=layout)
        outs[name] = p, h, vn
    (p0, h0, v0), (p1, h1, v1) = outs["ref"], outs["tri"]
    assert torch.equal(p1[~used].view(torch.uint8), p0[~used].view(torch.uint8))
    assert relerr(p1[used], p0[used]) < tol(torch.float32, pool_dtype)
    assert torch.equal(h1.isnan(), h0.isnan())              # slots without a chunk untouched
    assert relerr(h1.nan_to_num(), h0.nan_to_num()) < 1e-5
    assert relerr(v1, v0) < 1e-5
    assert (v1[cu[2]:cu[3]] == 0).all()                       # the padding sequence's v_new is zero


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_output(dtype):
    lengths, H, HV, K, V = [70, 0, 64, 9], 2, 4, 16, 32
    N, T = len(lengths), sum(lengths)
    q, k, v, g_cum, beta, cu = _chunk_inputs(lengths, H, HV, K, V, dtype)
    h = (torch.randn(C.num_slots(T, N), HV, K, V) * 0.3).to(dtype)
    vn = torch.randn(T, HV, V).to(dtype)
    idx = torch.tensor([0, 1, 2, -1])
    ref, got = torch.full((T, HV, V), NAN), torch.full((T, HV, V), NAN)
    RC.chunk_output(q, k, vn, h, g_cum, idx, cu, ref, scale=K ** -0.5, use_qk_l2norm=True)
    triton("chunk_output")(q, k, vn, h, g_cum, idx, cu, got, scale=K ** -0.5, use_qk_l2norm=True)
    assert relerr(got, ref) < (1e-5 if dtype == torch.float32 else 1e-3)
    assert (got[cu[3]:] == 0).all()


# ---------------------------------------------------------------------------------------------------
# prefill against the token-by-token reference

CASES = [
    # dtype, pool dtype, layout, raw gates, cu dtype, fuse, BV
    pytest.param(torch.float32, torch.float32, "vk", True, torch.int32, False, 16, id="fp32-vk-raw-i32-split"),
    pytest.param(torch.float32, torch.float32, "kv", False, torch.int64, True, 32, id="fp32-kv-pre-i64-fused"),
    pytest.param(torch.bfloat16, torch.float32, "vk", True, torch.int64, True, 16, id="bf16-vk-raw-i64-fused"),
    pytest.param(torch.bfloat16, torch.bfloat16, "kv", False, torch.int32, False, 32, id="bf16-kv-pre-bf16pool"),
    pytest.param(torch.float32, torch.bfloat16, "vk", True, torch.int32, True, 32, id="fp32-vk-bf16pool-fused"),
    pytest.param(torch.float16, torch.float32, "kv", True, torch.int32, True, 32, id="fp16-kv-raw-fused"),
]


@pytest.mark.parametrize("dtype,pool_dtype,layout,raw,cu_dtype,fuse,BV", CASES)
def test_prefill_matches_recurrence(plan, dtype, pool_dtype, layout, raw, cu_dtype, fuse, BV):
    plan(fuse, BV)
    lengths, H, HV, K, V = [75, 0, 64, 1, 50], 2, 4, 16, 32
    N, T = len(lengths), sum(lengths)
    cu = cu_of(lengths, cu_dtype)
    q, k, v = torch.randn(T, H, K).to(dtype), torch.randn(T, H, K).to(dtype), torch.randn(T, HV, V).to(dtype)
    a, b, A_log, dt_bias = gates(T, HV, dtype)
    g = beta = None
    if not raw:
        g, beta = R.gates(a, b, A_log, dt_bias)
        a = b = A_log = dt_bias = None
    idx = torch.tensor([5, 2, -1, 0, 3])
    init = torch.tensor([True, True, False, False, True])
    pool = pool_of(7, HV, K, V, layout, pool_dtype, slot_pad=3)
    used = poison_unused(pool, idx)
    res = {}
    for name, fn in (("ref", R.prefill), ("tri", triton("prefill"))):
        p, o = pool.clone(), torch.full((T, HV, V), NAN, dtype=dtype)
        fn(q, k, v, p, idx, cu, o, g, beta, a, b, A_log, dt_bias, init, scale=K ** -0.5, use_qk_l2norm=True,
           state_layout=layout)
        res[name] = p, o
    (p0, o0), (p1, o1) = res["ref"], res["tri"]
    assert relerr(o1, o0) < tol(dtype)
    assert (o1[cu[2]:cu[3]] == 0).all()                      # the padding sequence's rows
    assert torch.equal(p1[~used].view(torch.uint8), p0[~used].view(torch.uint8)), "an unused slot changed"
    assert relerr(p1[used], p0[used]) < tol(dtype, pool_dtype)


TMA_CASES = [   # fuse, l2norm, pool layout / dtype, input dtype
    pytest.param(True, True, "vk", torch.float32, torch.bfloat16, id="fused-l2-vk"),
    pytest.param(False, True, "kv", torch.bfloat16, torch.bfloat16, id="plain-l2-kv-bf16pool"),
    pytest.param(True, False, "kv", torch.float32, torch.float32, id="fused-nol2-fp32"),
    pytest.param(False, False, "vk", torch.float32, torch.float16, id="plain-nol2-fp16"),
]


@pytest.mark.parametrize("fuse,l2,layout,pool_dtype,dtype", TMA_CASES)
def test_prefill_tma_state_pass(plan, monkeypatch, fuse, l2, layout, pool_dtype, dtype):
    """The sm_90+ state pass (TMA descriptors cut at each sequence's end), run under the interpreter by
    letting the CPU count as a TMA arch: several sequences (tails, a zero-length one, a padding slot, the
    unused tail of a token budget whose rows are NaN), against the token-by-token reference."""
    monkeypatch.setattr(CS, "TMA_ARCHS", CS.TMA_ARCHS + ("cpu",))
    plan(fuse, 16)
    launched = []
    real = L.launch
    monkeypatch.setattr(L, "launch", lambda kern, *a, **kw: (launched.append(kern.fn.__name__), real(kern, *a, **kw)))
    lengths, H, HV, K, V = [70, 0, 64, 1, 129], 1, 2, 16, 32
    N, T = len(lengths), sum(lengths) + 20
    cu = cu_of(lengths)
    s = 1.0 if l2 else 0.3                                    # raw keys: keep fp16 intermediates in range
    q, k, v = (torch.randn(T, H, K) * s).to(dtype), (torch.randn(T, H, K) * s).to(dtype), torch.randn(T, HV, V).to(dtype)
    q[cu[-1]:], k[cu[-1]:], v[cu[-1]:] = NAN, NAN, NAN         # garbage in the unused budget
    a, b, A_log, dt_bias = gates(T, HV, dtype)
    idx = torch.tensor([3, 0, -1, 5, 1])
    init = torch.tensor([True, False, True, True, False])
    pool = pool_of(7, HV, K, V, layout, pool_dtype)
    used = poison_unused(pool, idx)
    res = {}
    for name, fn in (("ref", R.prefill), ("tri", triton("prefill"))):
        p, o = pool.clone(), torch.full((T, HV, V), NAN, dtype=dtype)
        fn(q, k, v, p, idx, cu, o, None, None, a, b, A_log, dt_bias, init, scale=K ** -0.5, use_qk_l2norm=l2,
           state_layout=layout)
        res[name] = p, o
    assert "_chunk_state_tma_kernel" in launched, launched
    (p0, o0), (p1, o1) = res["ref"], res["tri"]
    assert relerr(o1[:cu[-1]], o0[:cu[-1]]) < tol(dtype)
    assert (o1[cu[2]:cu[3]] == 0).all() and (o1[cu[-1]:] == 0).all()
    assert torch.equal(p1[~used].view(torch.uint8), p0[~used].view(torch.uint8)), "an unused slot changed"
    assert relerr(p1[used], p0[used]) < tol(dtype, pool_dtype)


def test_prefill_padding_rows_budget_tail_and_no_l2norm(plan):
    """A padding sequence with tokens gets zero rows; rows past cu_seqlens[-1] (the unused part of a fixed
    token budget) are zeroed; use_qk_l2norm=False; a zero-length sequence with has_initial_state False
    resets its slot to zeros."""
    plan(False)
    lengths, H, HV, K, V = [40, 66, 0], 1, 2, 16, 16
    T = sum(lengths) + 30                                     # token budget > tokens
    cu = cu_of(lengths)
    q, k, v = torch.randn(T, H, K) * 0.3, torch.randn(T, H, K) * 0.3, torch.randn(T, HV, V)
    a, b, A_log, dt_bias = gates(T, HV, torch.float32)
    idx = torch.tensor([-1, 0, 2])
    init = torch.tensor([True, True, False])
    pool = pool_of(4, HV, K, V, "vk", torch.float32)
    res = {}
    for name, fn in (("ref", R.prefill), ("tri", triton("prefill"))):
        p, o = pool.clone(), torch.full((T, HV, V), NAN)
        fn(q, k, v, p, idx, cu, o, None, None, a, b, A_log, dt_bias, init, scale=0.25, use_qk_l2norm=False,
           state_layout="vk")
        res[name] = p, o
    (p0, o0), (p1, o1) = res["ref"], res["tri"]
    assert relerr(o1, o0) < 1e-5
    assert (o1[:40] == 0).all() and (o1[106:] == 0).all()
    assert (p1[2] == 0).all()
    assert relerr(p1, p0) < 1e-5


def test_prefill_strided_inputs(plan):
    """q, k, v as views into one packed row per token (the conv output), gates as strided views."""
    plan(True)
    lengths, H, HV, K, V = [100, 3], 2, 4, 16, 16
    T = sum(lengths)
    cu = cu_of(lengths)
    packed = torch.randn(T, 2 * H * K + HV * V + 5)
    q = packed[:, :H * K].view(T, H, K)
    k = packed[:, H * K:2 * H * K].view(T, H, K)
    v = packed[:, 2 * H * K:2 * H * K + HV * V].view(T, HV, V)
    ab = torch.randn(T, 2 * HV + 1)
    a, b = ab[:, :HV], ab[:, HV:2 * HV]
    A_log, dt_bias = torch.empty(HV).uniform_(-4, -1), torch.empty(HV).uniform_(-1, 1)
    idx = torch.tensor([1, 0])
    pool = pool_of(2, HV, K, V, "kv", torch.float32)
    res = {}
    for name, fn in (("ref", R.prefill), ("tri", triton("prefill"))):
        p, o = pool.clone(), torch.full((T, HV, V), NAN)
        fn(q, k, v, p, idx, cu, o, None, None, a, b, A_log, dt_bias, None, scale=K ** -0.5, use_qk_l2norm=True,
           state_layout="kv")
        res[name] = p, o
    assert relerr(res["tri"][1], res["ref"][1]) < 1e-5
    assert relerr(res["tri"][0], res["ref"][0]) < 1e-5


def test_prefill_then_decode_equals_one_recurrence(plan):
    """Triton prefill of the first L tokens, then reference decode steps from the pool, equals the reference
    recurrence over all L + steps tokens (outputs of the decode steps and final states)."""
    plan(False, 16)
    H, HV, K, V, steps = 2, 4, 16, 32, 3
    lengths = [130, 64]
    N = len(lengths)
    full = [n + steps for n in lengths]
    Tf = sum(full)
    q, k, v = torch.randn(Tf, H, K), torch.randn(Tf, H, K), torch.randn(Tf, HV, V)
    a, b, A_log, dt_bias = gates(Tf, HV, torch.float32)
    idx = torch.tensor([2, 0])
    pool0 = pool_of(3, HV, K, V, "vk", torch.float32)
    # reference over the whole sequences
    p_ref, o_ref = pool0.clone(), torch.empty(Tf, HV, V)
    R.prefill(q, k, v, p_ref, idx, cu_of(full), o_ref, None, None, a, b, A_log, dt_bias, None, scale=K ** -0.5,
              use_qk_l2norm=True, state_layout="vk")
    # triton prefill of the prefixes, then decode steps
    cf = cu_of(full).tolist()
    pre = torch.cat([torch.arange(cf[n], cf[n] + lengths[n]) for n in range(N)])
    p = pool0.clone()
    o_pre = torch.empty(len(pre), HV, V)
    triton("prefill")(q[pre], k[pre], v[pre], p, idx, cu_of(lengths), o_pre, None, None, a[pre], b[pre], A_log,
                      dt_bias, None, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    assert relerr(o_pre, o_ref[pre]) < 1e-5
    for s in range(steps):
        rows = torch.tensor([cf[n] + lengths[n] + s for n in range(N)])
        o = torch.empty(N, HV, V)
        R.decode(q[rows], k[rows], v[rows], a[rows], b[rows], A_log, dt_bias, p, idx, o, scale=K ** -0.5,
                 use_qk_l2norm=True, state_layout="vk")
        assert relerr(o, o_ref[rows]) < 1e-5
    assert relerr(p, p_ref) < 1e-5


def test_public_api_dispatches_to_triton():
    lengths, H, HV, K, V = [70, 0, 9], 2, 4, 16, 16
    T = sum(lengths)
    q, k, v = torch.randn(T, H, K), torch.randn(T, H, K), torch.randn(T, HV, V)
    a, b, A_log, dt_bias = gates(T, HV, torch.float32)
    cu = cu_of(lengths)
    idx = torch.tensor([1, 0, 2], dtype=torch.int32)
    pool = pool_of(3, HV, K, V, "vk", torch.float32)
    kw = dict(a=a, b=b, A_log=A_log, dt_bias=dt_bias, has_initial_state=torch.tensor([True, False, True]))
    rows = {r["backend"]: r for r in ops.explain("prefill", q, k, v, pool, idx, cu, **kw)}
    assert not rows["triton"]["reasons"], rows["triton"]
    p0, p1 = pool.clone(), pool.clone()
    o0 = ops.prefill(q, k, v, p0, idx, cu, backend="reference", **kw)
    o1 = ops.prefill(q, k, v, p1, idx, cu, backend="triton", **kw)
    assert relerr(o1, o0) < 1e-5 and relerr(p1, p0) < 1e-5


# The GPU failures of 2026-11-22 (H100: "illegal memory access" in the state pass for N*HV >= 128, garbage
# from the plain pass) had the shapes below: several sequences, so that N * HV reaches the "wide" bucket,
# multi-chunk lengths that are not multiples of 64, a padding slot, zero-length sequences. Their cause was
# a Triton codegen bug for num_stages=1 on sm_90 (chunk_state.MIN_STAGES; test_state_pass_stages_on_hopper),
# which no CPU run can show; these tests pin everything else for those shapes: every access in bounds,
# no read of unwritten workspace, both plans, the V split, both buckets' tables.

MANY = [   # lengths, slots, output fused into the state pass
    pytest.param([130, 0, 65, 70, 1, 64, 0, 129], [9, -1, 2, 7, 1, 0, 6, 4], False, id="8seq-pad1-zero2-plain"),
    pytest.param([130, 0, 65, 70, 1, 64, 0, 129], [9, -1, 2, 7, 1, 0, 6, 4], True, id="8seq-pad1-zero2-fused"),
    pytest.param([200, 64, 0, 129], [3, -1, 0, 5], False, id="4seq-pad1-zero1-plain"),
    pytest.param([0, 130, 1, 64, 77], [-1, 4, 0, 2, 6], True, id="5seq-pad0-fused"),
]


@pytest.mark.parametrize("budget", [0, 40], ids=["T0", "tail-only"])
def test_prefill_only_empty_sequences(plan, budget):
    """Every sequence empty: T == 0, or only an unused token budget past cu_seqlens[-1]. Each live slot as the
    reference leaves it (its initial state, or zeros without one), padding and unused slots untouched, the
    budget rows zero."""
    plan(True, 16)
    H, HV, K, V = 1, 2, 16, 32
    cu = cu_of([0, 0, 0])
    q, k = torch.randn(budget, H, K).bfloat16(), torch.randn(budget, H, K).bfloat16()
    v = torch.randn(budget, HV, V).bfloat16()
    a, b, A_log, dt_bias = gates(budget, HV, torch.bfloat16)
    idx = torch.tensor([2, -1, 0], dtype=torch.int32)
    init = torch.tensor([True, True, False])
    pool = pool_of(4, HV, K, V, "vk", torch.float32)
    used = poison_unused(pool, idx)
    res = {}
    for name, fn in (("ref", R.prefill), ("tri", triton("prefill"))):
        p, o = pool.clone(), torch.full((budget, HV, V), NAN, dtype=torch.bfloat16)
        fn(q, k, v, p, idx, cu, o, None, None, a, b, A_log, dt_bias, init, scale=K ** -0.5, use_qk_l2norm=True,
           state_layout="vk")
        res[name] = p, o
    (p0, o0), (p1, o1) = res["ref"], res["tri"]
    assert (o1 == 0).all()
    assert torch.equal(p1.view(torch.uint8), p0.view(torch.uint8))
    assert torch.equal(p1[~used].view(torch.uint8), pool[~used].view(torch.uint8))


@pytest.mark.skipif(not probe.interpreter_on(), reason="bounds checks hook the Triton interpreter")
@pytest.mark.parametrize("lengths,idx,fuse", MANY)
def test_prefill_many_sequences_in_bounds(plan, poisoned_workspace, fuse, lengths, idx):
    plan(fuse, 16)                                            # V = 32: two V blocks per (sequence, head)
    H, HV, K, V = 1, 2, 16, 32                                # (both buckets' tables are patched)
    N, T = len(lengths), sum(lengths) + 40                    # plus the unused tail of a token budget
    cu = cu_of(lengths)
    q, k, v = torch.randn(T, H, K).bfloat16(), torch.randn(T, H, K).bfloat16(), torch.randn(T, HV, V).bfloat16()
    a, b, A_log, dt_bias = gates(T, HV, torch.bfloat16)
    idx = torch.tensor(idx, dtype=torch.int32)
    init = torch.rand(N) > 0.3
    pool = pool_of(int(idx.max()) + 2, HV, K, V, "vk", torch.float32)
    used = poison_unused(pool, idx)
    res = {}
    for name, fn in (("ref", R.prefill), ("tri", triton("prefill"))):
        p, o = pool.clone(), torch.full((T, HV, V), NAN, dtype=torch.bfloat16)
        with bounds_checked() if name == "tri" else contextlib.nullcontext():
            fn(q, k, v, p, idx, cu, o, None, None, a, b, A_log, dt_bias, init, scale=K ** -0.5,
               use_qk_l2norm=True, state_layout="vk")
        res[name] = p, o
    (p0, o0), (p1, o1) = res["ref"], res["tri"]
    assert relerr(o1, o0) < tol(torch.bfloat16)
    pad = (idx < 0).nonzero().flatten().tolist()
    for n in pad:
        assert (o1[cu[n]:cu[n + 1]] == 0).all()
    assert (o1[cu[-1]:] == 0).all()
    assert torch.equal(p1[~used].view(torch.uint8), p0[~used].view(torch.uint8)), "an unused slot changed"
    assert relerr(p1[used], p0[used]) < tol(torch.bfloat16)


@pytest.mark.skipif(not probe.interpreter_on(), reason="bounds checks hook the Triton interpreter")
def test_sub_ops_many_sequences_in_bounds(poisoned_workspace):
    """chunk_state and chunk_output on their own (the plain plan's h buffer: chunk slots, not sequence-local
    chunk ids), bounds-checked, with more chunk slots than chunks (zero-length and short sequences)."""
    lengths, H, HV, K, V = [130, 0, 65, 1, 0, 129], 1, 4, 16, 32
    T = sum(lengths)
    q, k, v, g_cum, beta, cu = _chunk_inputs(lengths, H, HV, K, V, torch.float32)
    w, u = torch.randn(T, HV, K) * 0.3, torch.randn(T, HV, V)
    idx = torch.tensor([5, 0, -1, 2, 3, 1])
    pool = pool_of(6, HV, K, V, "kv", torch.float32)
    NS = C.num_slots(T, len(lengths))
    outs = {}
    for name, fn in (("ref", RC.chunk_state), ("tri", triton("chunk_state"))):
        p, h, vn = pool.clone(), torch.full((NS, HV, K, V), NAN), torch.full((T, HV, V), NAN)
        with bounds_checked() if name == "tri" else contextlib.nullcontext():
            fn(k, w, u, g_cum, p, idx, cu, None, h, vn, use_qk_l2norm=True, state_layout="kv")
        outs[name] = p, h, vn
    (p0, h0, v0), (p1, h1, v1) = outs["ref"], outs["tri"]
    assert relerr(p1, p0) < 1e-5 and relerr(v1, v0) < 1e-5
    assert torch.equal(h1.isnan(), h0.isnan()) and relerr(h1.nan_to_num(), h0.nan_to_num()) < 1e-5
    o0, o1 = torch.full((T, HV, V), NAN), torch.full((T, HV, V), NAN)
    RC.chunk_output(q, k, v0, h0.nan_to_num(), g_cum, idx, cu, o0, scale=K ** -0.5, use_qk_l2norm=True)
    with bounds_checked():
        triton("chunk_output")(q, k, v0, h0.nan_to_num(), g_cum, idx, cu, o1, scale=K ** -0.5, use_qk_l2norm=True)
    assert relerr(o1, o0) < 1e-5


@pytest.mark.skipif(not probe.interpreter_on(), reason="hooks the Triton interpreter")
def test_bounds_checker_catches_out_of_range():
    """The checker itself: a chunk_state launch given a pool slot past the pool's end must trip it."""
    lengths, H, HV, K, V = [70], 1, 2, 16, 16
    q, k, v, g_cum, beta, cu = _chunk_inputs(lengths, H, HV, K, V, torch.float32)
    w, u = torch.randn(70, HV, K), torch.randn(70, HV, V)
    pool = torch.zeros(2, HV, V, K)
    with pytest.raises(Exception, match="out of bounds"), bounds_checked():
        triton("chunk_state")(k, w, u, g_cum, pool, torch.tensor([2]), cu, None, torch.empty(3, HV, K, V),
                              torch.empty(70, HV, V), use_qk_l2norm=True, state_layout="vk")


@pytest.mark.parametrize("N", [1, 2, 4, 8, 64])
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("stages", [None, 1])
def test_state_pass_stages_on_hopper(monkeypatch, N, fuse, stages):
    """The root cause of the H100 failures: chunk_state's loop compiled with num_stages=1 on sm_90 reads
    shared memory out of range (Triton 3.6). Whatever the tables say (stages=1 patched in: a sweep), every
    state-pass launch on sm_90 has num_stages >= 2, for both plans and both buckets."""
    for bucket in ("narrow", "wide"):
        monkeypatch.setitem(P._FUSE, bucket, fuse)
        if stages is not None:
            for key in (bucket, ("nvidia", bucket), ("sm_90", bucket)):
                monkeypatch.setitem(CS._CONFIGS, key, dict(BV=32, num_warps=4, num_stages=stages))
    with L.recording("sm_90") as launches:
        triton("prefill")(*_meta_prefill(N, 4096), scale=0.1, use_qk_l2norm=True, state_layout="vk")
    name = lambda l: (l.kernel.fn if hasattr(l.kernel, "fn") else l.kernel).__name__
    state = [l for l in launches if name(l).startswith("_chunk_state")]
    assert len(state) == 1 and state[0].options["num_stages"] >= 2
    assert state[0].constexprs["FUSE_OUT"] == fuse


# ---------------------------------------------------------------------------------------------------
# no host synchronisation: every launcher runs on meta tensors (shapes only) and records its launches

def _meta_prefill(N, T, dtype=torch.bfloat16, layout="vk", raw=True, H=16, HV=32, K=128, V=128):
    m = lambda *s, dt=torch.float32: torch.empty(s, dtype=dt, device="meta")
    pool = m(N + 2, HV, V, K) if layout == "vk" else m(N + 2, HV, K, V)
    gates_ = (None, None, m(T, HV, dt=dtype), m(T, HV, dt=dtype), m(HV), m(HV)) if raw else \
        (m(T, HV), m(T, HV), None, None, None, None)
    return (m(T, H, K, dt=dtype), m(T, H, K, dt=dtype), m(T, HV, V, dt=dtype), pool, m(N, dt=torch.int32),
            m(N + 1, dt=torch.int64), m(T, HV, V, dt=dtype), *gates_, m(N, dt=torch.bool))


@pytest.mark.parametrize("arch", ["sm_90", "gfx942"])
@pytest.mark.parametrize("N,kernels", [(1, ["_prep_kernel", "_chunk_state_kernel", "_chunk_output_kernel"]),
                                       (8, ["_prep_kernel", "_chunk_state_kernel"])])
def test_prefill_records_on_meta(arch, N, kernels):
    args = _meta_prefill(N, 4096)
    with L.recording(arch) as launches:
        triton("prefill")(*args, scale=0.1, use_qk_l2norm=True, state_layout="vk")
    if arch in CS.TMA_ARCHS:                                  # Hopper+: the state pass moves tiles by TMA
        kernels = [k.replace("_chunk_state_kernel", "_chunk_state_tma_kernel") for k in kernels]
    assert [l.kernel.fn.__name__ if hasattr(l.kernel, "fn") else l.kernel.__name__ for l in launches] == kernels
    fused = [l for l in launches if l.constexprs.get("FUSE_OUT") is not None]
    assert fused and fused[0].constexprs["FUSE_OUT"] == (N == 8)


def test_sub_ops_record_on_meta():
    from gdn.common import examples
    for op in ("chunk_kkt_solve", "chunk_wy", "chunk_state", "chunk_output"):
        fn, variants = examples.KERNEL_EXAMPLES[op]
        for opts in variants:
            args, kwargs = fn("meta", **opts)
            with L.recording("sm_100") as launches:
                triton(op)(*args, **kwargs)
            assert len(launches) == 1, op
    g = torch.empty(4096, 32, device="meta")
    with L.recording("gfx950") as launches:
        triton("chunk_cumsum")(g, torch.empty(9, dtype=torch.int32, device="meta"), g, chunk_size=64)
    assert len(launches) == 1


def test_bench_gpu_time_counts_overlap_once():
    """bench_prefill's GPU time is the union of the kernel intervals: the sum where kernels do not overlap, the
    time covered where they do (a kernel beside another counts once), gaps not counted."""
    from _helpers import load_bench
    bp = load_bench("prefill")
    assert bp.busy_time([]) == 0.0
    assert bp.busy_time([(0.0, 2.0), (5.0, 6.0)]) == 3.0                  # apart: the sum
    assert bp.busy_time([(5.0, 9.0), (0.0, 2.0), (1.0, 6.0)]) == 9.0      # overlapping, any order
    assert bp.busy_time([(0.0, 10.0), (2.0, 3.0)]) == 10.0               # one inside another


# ---------------------------------------------------------------------------------------------------
# segmented prefill (segments.py): sequences cut into segments, a transition pass, the combine, the pass

def test_segment_tokens_rule(monkeypatch):
    """The table's rule: few pairs and long sequences only; the length makes ~`pairs` (segment, head) pairs, a
    multiple of 64 and at least min_seg; head dims that are not powers of two decline."""
    monkeypatch.setitem(SEG._SEGMENTS, ("sm_90", "any"), dict(max_pairs=8, min_len=2048, pairs=64, min_seg=512))
    assert SEG.segment_tokens("sm_90", 32768, 1, 4, 128, 128) == 2048
    assert SEG.segment_tokens("sm_90", 32768, 1, 8, 128, 128) == 4096
    assert SEG.segment_tokens("sm_90", 4096, 1, 4, 128, 128) == 512           # min_seg
    assert SEG.segment_tokens("sm_90", 32768, 1, 16, 128, 128) == 0           # too many pairs
    assert SEG.segment_tokens("sm_90", 2000, 1, 4, 128, 128) == 0             # too short
    assert SEG.segment_tokens("sm_90", 32768, 1, 4, 96, 128) == 0             # K not a power of two
    assert SEG.segment_tokens("gfx942", 32768, 1, 4, 128, 128) == 0           # no rule for the arch


@pytest.mark.parametrize("lengths,idx,seg", [
    ([300, 0, 64, 1, 190], [5, 2, -1, 0, 3], 128),
    ([256, 128], [0, 1], 128),                     # exact multiples: the bound N + T // seg not reached
    ([64] * 5, [0, 1, 2, 3, 4], 64),               # every sequence one whole segment: the bound reached
    ([0, 0], [0, -1], 64),
])
def test_segment_table(lengths, idx, seg):
    """The device-built table against a Python one: each sequence's segments (starts cu[n] + j seg; the segment's
    index as its slot, -1 for a padding sequence; the transition pass's slots also -1 for each last segment), then
    empty skipped segments at cu[N] up to the static bound."""
    cu = cu_of(lengths)
    N, T = len(lengths), sum(lengths)
    P = SEG.num_segments(T, N, seg)
    cu_seg = torch.full((P + 1,), -7, dtype=torch.int32)
    seg_idx, seg_idx1 = torch.full((P,), -7, dtype=torch.int32), torch.full((P,), -7, dtype=torch.int32)
    SEG.launch_table(cu, torch.tensor(idx, dtype=torch.int32), cu_seg, seg_idx, seg_idx1, seg)
    starts, slots, slots1 = [], [], []
    for n, ln in enumerate(lengths):
        count = max(1, -(-ln // seg))
        for j in range(count):
            slots.append(len(starts) if idx[n] >= 0 else -1)
            slots1.append(slots[-1] if j < count - 1 else -1)         # (the last segment's map is not needed)
            starts.append(int(cu[n]) + j * seg)
    assert len(starts) <= P
    starts += [T] * (P + 1 - len(starts))
    slots += [-1] * (P - len(slots))
    slots1 += [-1] * (P - len(slots1))
    assert cu_seg.tolist() == starts
    assert seg_idx.tolist() == slots and seg_idx1.tolist() == slots1


SEG_CASES = [   # input dtype, pool dtype, layout, raw gates, l2norm, segment tokens
    pytest.param(torch.float32, torch.float32, "vk", True, True, 64, id="fp32-vk-raw-seg64"),
    pytest.param(torch.float32, torch.float32, "kv", False, False, 128, id="fp32-kv-pre-nol2-seg128"),
    pytest.param(torch.bfloat16, torch.bfloat16, "vk", False, True, 64, id="bf16-vk-bf16pool-seg64"),
    pytest.param(torch.bfloat16, torch.float32, "kv", True, True, 192, id="bf16-kv-raw-seg192"),
]


@pytest.mark.skipif(not probe.interpreter_on(), reason="bounds checks hook the Triton interpreter")
@pytest.mark.parametrize("dtype,pool_dtype,layout,raw,l2,seg", SEG_CASES)
def test_prefill_segmented(monkeypatch, poisoned_workspace, dtype, pool_dtype, layout, raw, l2, seg):
    """prefill through segments (forced by the table) against the token-by-token reference: sequences of
    several segments with tails, an empty one, a padding one, a has_initial_state mix, the unused tail of a
    token budget; workspace NaN-poisoned, every kernel bounds-checked, unused slots bit-identical."""
    monkeypatch.setitem(SEG._SEGMENTS, "any", dict(max_pairs=1 << 20, min_len=0, pairs=1 << 20, min_seg=seg))
    lengths, H, HV, K, V = [300, 0, 130, 1, 190], 2, 4, 16, 32
    N, T = len(lengths), sum(lengths) + 40
    cu = cu_of(lengths)
    assert SEG.segment_tokens("cpu", T, N, HV, K, V) == seg
    q, k, v = torch.randn(T, H, K), torch.randn(T, H, K), torch.randn(T, HV, V).to(dtype)
    if not l2:      # (unit keys by the caller: raw ones make the recurrence blow up)
        q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    q, k = q.to(dtype), k.to(dtype)
    a, b, A_log, dt_bias = gates(T, HV, dtype)
    g = beta = None
    if not raw:
        g, beta = R.gates(a, b, A_log, dt_bias)
        a = b = A_log = dt_bias = None
    idx = torch.tensor([5, 2, 0, -1, 3])
    init = torch.tensor([True, False, True, True, False])
    pool = pool_of(7, HV, K, V, layout, pool_dtype, slot_pad=3)
    used = poison_unused(pool, idx)
    launched = []
    combine = SEG.launch_combine
    monkeypatch.setattr(SEG, "launch_combine", lambda *a_, **kw: launched.append(1) or combine(*a_, **kw))
    res = {}
    for name, fn in (("ref", R.prefill), ("tri", triton("prefill"))):
        p, o = pool.clone(), torch.full((T, HV, V), NAN, dtype=dtype)
        with bounds_checked() if name == "tri" else contextlib.nullcontext():
            fn(q, k, v, p, idx, cu, o, g, beta, a, b, A_log, dt_bias, init, scale=K ** -0.5, use_qk_l2norm=l2,
               state_layout=layout)
        res[name] = p, o
    assert launched, "the segmented path did not run"
    (p0, o0), (p1, o1) = res["ref"], res["tri"]
    assert relerr(o1[:cu[-1]], o0[:cu[-1]]) < tol(dtype)
    assert (o1[cu[3]:cu[4]] == 0).all() and (o1[cu[-1]:] == 0).all()     # the padding sequence, the budget tail
    assert torch.equal(p1[~used].view(torch.uint8), p0[~used].view(torch.uint8)), "an unused slot changed"
    assert relerr(p1[used], p0[used]) < tol(dtype, pool_dtype)
