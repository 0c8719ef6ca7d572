"""Triton decode_mtp / commit_accepted against gdn.common.reference (CPU interpreter, or the GPU if present).

Chain and tree verify (parent_indices; parents read back from intermediate_states or recomputed on chip),
intermediate_indices with skips, disable_state_update both ways, padding slots, NaN-poisoned outputs,
untouched pool slots and intermediate rows checked bit for bit, and a 512-step recurrence.
"""

import pytest
import torch

import gdn.common.triton  # noqa: F401  (registers the triton backends)
from gdn.common import reference as R
from gdn.common.probe import interpreter_on
from gdn.common.registry import get
from _helpers import rel, bits_equal

# On a GPU host these run compiled on the GPU; on a CPU machine under the interpreter (tests/conftest.py
# switches it on before any kernel module is imported).
DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEV == "cpu" and not interpreter_on(),
                                reason="CPU tensors need TRITON_INTERPRET=1 set before triton kernels are imported")


@pytest.fixture(autouse=True)
def _default_device():
    prev = torch.get_default_device()
    torch.set_default_device(DEV)
    yield
    torch.set_default_device(prev)

NAN = float("nan")


def pshape(layout, HV, K, V):
    return (HV, V, K) if layout == "vk" else (HV, K, V)


def make(B, T, H, HV, K, V, S, *, state_dtype=torch.float32, layout="vk", pad=(1,), seed=0, dtype=torch.float32):
    g = torch.Generator(device=DEV).manual_seed(seed)
    d = dict(q=torch.randn(B, T, H, K, generator=g).to(dtype), k=torch.randn(B, T, H, K, generator=g).to(dtype),
             v=torch.randn(B, T, HV, V, generator=g).to(dtype), a=torch.randn(B, T, HV, generator=g).to(dtype),
             b=torch.randn(B, T, HV, generator=g).to(dtype), A_log=torch.empty(HV).uniform_(-4, -1, generator=g),
             dt_bias=torch.randn(HV, generator=g) * 0.5)
    pool = torch.full((S, *pshape(layout, HV, K, V)), NAN, dtype=state_dtype)
    slots = torch.randperm(S, generator=g)[:B]
    for i in pad:
        slots[i] = -1
    used = slots[slots >= 0]
    pool[used] = torch.randn(len(used), *pool.shape[1:], generator=g).to(state_dtype)
    d.update(pool=pool, idx=slots.to(torch.int32), used=used)
    return d


def unused_rows(n, used):
    m = torch.ones(n, dtype=torch.bool)
    m[used] = False
    return m


def run_mtp(backend, d, pool, out, inter, inter_idx, parent, disable, layout, cfg=None):
    K = d["q"].shape[-1]
    kw = dict(disable_state_update=disable, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    if cfg is not None:
        kw["_cfg"] = cfg
    get("decode_mtp", backend).fn(d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"], pool, d["idx"],
                                  out, inter, inter_idx, parent, **kw)


def check_mtp(d, layout, *, T, inter_rows=None, inter_idx=None, parent=None, disable=True, tol=1e-5,
              inter_dtype=None):
    B, _, HV, V = d["v"].shape
    K = d["q"].shape[-1]
    res = {}
    for backend in ("triton", "reference"):
        pool = d["pool"].clone()
        out = torch.full((B, T, HV, V), NAN)
        inter = None
        if inter_rows is not None:
            inter = torch.full((inter_rows, T, *pshape(layout, HV, K, V)), NAN, dtype=inter_dtype or d["pool"].dtype)
        run_mtp(backend, d, pool, out, inter, inter_idx, parent, disable, layout)
        res[backend] = (pool, out, inter)
    (p1, o1, i1), (p2, o2, i2) = res["triton"], res["reference"]
    valid = d["idx"] >= 0
    assert rel(o1[valid], o2[valid]) < tol and (o1[~valid] == 0).all()
    used = d["used"]
    if disable:
        assert bits_equal(p1, d["pool"])
    else:
        assert rel(p1[used], p2[used]) < tol
        assert bits_equal(p1[unused_rows(p1.shape[0], used)], d["pool"][unused_rows(p1.shape[0], used)])
    if i1 is not None:
        written = torch.zeros(i1.shape[0], dtype=torch.bool)
        dst = torch.arange(B) if inter_idx is None else inter_idx.long()
        for i in range(B):
            if valid[i] and dst[i] >= 0:
                written[dst[i]] = True
        assert written.any()
        assert rel(i1[written], i2[written]) < tol
        assert torch.isnan(i1[~written].float()).all()          # rows not addressed stay untouched
    return res


CHAIN_VARIANTS = {
    # name: (T, inter rows, intermediate_indices, disable_state_update)
    "inter-default-rows": (3, 4, None, True),
    "inter-indices-skip": (4, 6, [5, 0, -1, 2], False),
    "no-inter-update": (2, None, None, False),
}


@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", list(CHAIN_VARIANTS))
def test_mtp_chain(layout, state_dtype, variant):
    T, rows, iidx, disable = CHAIN_VARIANTS[variant]
    d = make(4, T, 1, 2, 16, 16, 7, state_dtype=state_dtype, layout=layout, pad=(1,), seed=T)
    iidx = None if iidx is None else torch.tensor(iidx, dtype=torch.int64)
    check_mtp(d, layout, T=T, inter_rows=rows, inter_idx=iidx, disable=disable,
              tol=1e-2 if state_dtype == torch.bfloat16 else 1e-5)


def test_mtp_t1_matches_decode():
    d = make(3, 1, 1, 2, 16, 16, 5, pad=(2,))
    check_mtp(d, "vk", T=1, disable=False)


# parent[t] < t; rows differ. -1 restarts from the pool state.
PARENTS = [[-1, 0, 0, 1, 2],       # binary-ish tree
           [-1, 0, 1, 2, 3],       # chain, written explicitly
           [-1, -1, 1, 0, 3]]      # two roots


@pytest.mark.parametrize("case", ["readback", "recompute", "mixed-kv", "readback-bf16"])
def test_mtp_tree(case):
    T, B = 5, 3
    layout = "kv" if case == "mixed-kv" else "vk"
    sd = torch.bfloat16 if case == "readback-bf16" else torch.float32
    d = make(B, T, 1, 2, 16, 16, 6, state_dtype=sd, layout=layout, pad=(), seed=3)
    parent = torch.tensor(PARENTS, dtype=torch.int32)
    tol = 1e-2 if sd == torch.bfloat16 else 1e-5
    if case in ("readback", "readback-bf16"):
        check_mtp(d, layout, T=T, inter_rows=B, parent=parent, disable=False, tol=tol)
    elif case == "recompute":
        check_mtp(d, layout, T=T, parent=parent.long(), disable=False, tol=tol)
    else:   # row 1 has no intermediate row: its parents are recomputed, the others read back
        check_mtp(d, layout, T=T, inter_rows=4, inter_idx=torch.tensor([3, -1, 0]), parent=parent, disable=True,
                  tol=tol)


@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                    (torch.bfloat16, torch.bfloat16)], ids=["fp32", "bf16<-fp32", "bf16"])
def test_commit_accepted(layout, dtypes):
    state_dtype, inter_dtype = dtypes
    g = torch.Generator(device=DEV).manual_seed(1)
    S, T, HV, K, V = 8, 4, 2, 16, 32
    shp = pshape(layout, HV, K, V)
    pool = torch.randn(S, *shp, generator=g).to(state_dtype)
    pool[0] = NAN                                                     # a poisoned slot nobody addresses
    inter = torch.randn(5, T, *shp, generator=g).to(inter_dtype)
    state_indices = torch.tensor([3, 5, -1, 1, 6, 2], dtype=torch.int32)
    inter_indices = torch.tensor([0, 4, 1, -1, 2, 3], dtype=torch.int64)
    num_accepted = torch.tensor([1, 4, 2, 3, 0, 2], dtype=torch.int32)
    p1, p2 = pool.clone(), pool.clone()
    get("commit_accepted", "triton").fn(p1, state_indices, inter, inter_indices, num_accepted, state_layout=layout)
    R.commit_accepted(p2, state_indices, inter, inter_indices, num_accepted, state_layout=layout)
    if state_dtype == inter_dtype:
        assert bits_equal(p1, p2)
    else:   # the interpreter rounds fp32 -> bf16 toward zero (GPUs round to nearest even): 1 ulp
        d = p1.view(torch.int16).int() - p2.view(torch.int16).int()
        assert d.abs().max() <= 1
    assert bits_equal(p1[[0, 1, 4, 6, 7]], pool[[0, 1, 4, 6, 7]])     # skipped rows and unaddressed slots


def test_mtp_verify_then_commit_flow():
    """verify (pool untouched, states cached per step) -> commit the accepted prefix, as a runtime does."""
    T, B = 4, 3
    d = make(B, T, 1, 2, 16, 16, 5, pad=(2,), seed=9)
    acc = torch.tensor([2, 4, 1], dtype=torch.int32)
    pools = {}
    for backend in ("triton", "reference"):
        pool = d["pool"].clone()
        inter = torch.full((B, T, 2, 16, 16), NAN)
        out = torch.empty(B, T, 2, 16)
        run_mtp(backend, d, pool, out, inter, None, None, True, "vk")
        get("commit_accepted", backend).fn(pool, d["idx"], inter, torch.arange(B), acc, state_layout="vk")
        pools[backend] = pool
    assert rel(pools["triton"][d["used"]], pools["reference"][d["used"]]) < 1e-5
    assert bits_equal(pools["triton"][unused_rows(5, d["used"])], d["pool"][unused_rows(5, d["used"])])


def test_long_recurrence_drift():
    """512 steps (32 verify calls of T=16 with state update) on one tiny fp32 state: no drift.
    The >= 2048-step runs (decode and decode_mtp) are in tests/gpu/test_decode_gpu.py: the interpreter is slow."""
    T, calls, K = 16, 32, 16
    g = torch.Generator(device=DEV).manual_seed(11)
    A_log, dt_bias = torch.tensor([-2.0]), torch.tensor([0.3])
    p_tri = torch.randn(2, 1, K, K, generator=g)
    p_ref = p_tri.clone()
    idx = torch.tensor([1], dtype=torch.int32)
    worst = 0.0
    for _ in range(calls):
        d = dict(q=torch.randn(1, T, 1, K, generator=g), k=torch.randn(1, T, 1, K, generator=g),
                 v=torch.randn(1, T, 1, K, generator=g), a=torch.randn(1, T, 1, generator=g),
                 b=torch.randn(1, T, 1, generator=g), A_log=A_log, dt_bias=dt_bias, idx=idx)
        o1, o2 = torch.empty(1, T, 1, K), torch.empty(1, T, 1, K)
        run_mtp("triton", d, p_tri, o1, None, None, None, False, "vk", cfg=(16, 1, 1))
        run_mtp("reference", d, p_ref, o2, None, None, None, False, "vk")
        worst = max(worst, rel(o1, o2))
    assert worst < 1e-5
    assert rel(p_tri[1], p_ref[1]) < 1e-5
