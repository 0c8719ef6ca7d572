"""Public API: input validation names the argument, expected and got; outputs honour out=; every op is
a torch.library op that passes opcheck and runs under torch.compile(fullgraph=True)."""
import pytest
import torch

from gdn import ops
from gdn.common import examples
from gdn.common.checks import GDNInputError


def dec(**over):
    args, kwargs = examples.example("decode", "cpu", dtype=torch.float32)
    names = ["q", "k", "v", "a", "b", "A_log", "dt_bias", "state", "state_indices"]
    d = dict(zip(names, args), **kwargs)
    d.update(over)
    return d


@pytest.mark.parametrize("over,pattern", [
    (lambda d: dict(k=d["k"][:, :1]), r"argument 'k' expected shape \[B=4, H=2, K=16\], got \[4, 1, 16\]"),
    (lambda d: dict(v=d["v"].double()), r"argument 'v' expected dtype in \(float32\), got float64"),
    (lambda d: dict(state_layout="VK"), r"argument 'state_layout' expected 'vk'"),
    (lambda d: dict(state_indices=d["state_indices"].float()), r"argument 'state_indices' expected dtype in"),
    (lambda d: dict(state_indices=torch.tensor([0, 1, 2, 99], dtype=torch.int32)),
     r"argument 'state_indices' expected slot indices < 11"),
    (lambda d: dict(state=d["state"].transpose(-1, -2)), r"argument 'state' expected shape"),
    (lambda d: dict(state=d["state"].permute(0, 1, 3, 2).contiguous().transpose(-1, -2)),
     r"argument 'state' expected each slot's"),
    (lambda d: dict(A_log=d["A_log"][:2]), r"argument 'A_log' expected shape \[HV=4\], got \[2\]"),
    (lambda d: dict(out=torch.empty(4, 4, 31)), r"argument 'out' expected shape"),
    (lambda d: dict(v=torch.randn(4, 3, 32)), r"HV divisible by the q/k head count H=2"),
])
def test_decode_validation_messages(over, pattern):
    d = dec()
    d.update(over(d))
    state_before = d["state"].clone()
    with pytest.raises(GDNInputError, match=pattern):
        ops.decode(**d)
    assert torch.equal(d["state"].nan_to_num(), state_before.nan_to_num())   # the pool is never touched


def test_prefill_gate_errors_and_cu_seqlens():
    args, kwargs = examples.example("prefill", "cpu", dtype=torch.float32)
    q = args[0]
    with pytest.raises(GDNInputError, match="not both"):
        ops.prefill(*args, **kwargs, g=torch.zeros(q.shape[0], 4), beta=torch.zeros(q.shape[0], 4))
    kw = dict(kwargs)
    del kw["A_log"]
    with pytest.raises(GDNInputError, match=r"missing \['A_log'"):
        ops.prefill(*args, **kw)
    bad = list(args)
    bad[5] = torch.tensor([0, 5, 3, 100, 142], dtype=torch.int32)
    with pytest.raises(GDNInputError, match="cu_seqlens"):
        ops.prefill(*bad, **kwargs)


def test_strided_inputs_and_slot_stride():
    d = dec()
    big = torch.randn(4, 2, 32)
    d["q"] = big[:, :, ::2]                       # non-contiguous q
    pool = torch.randn(11, 2, *d["state"].shape[1:])[:, 0]   # slot stride 2x the slot size
    d["state"] = pool
    ref_pool = pool.clone()
    o = ops.decode(**d)
    d2 = dict(d, q=d["q"].contiguous(), state=ref_pool)
    o2 = ops.decode(**d2)
    assert torch.equal(o, o2) and torch.equal(pool, ref_pool)


def test_out_is_written_and_returned():
    d = dec()
    out = torch.full_like(d["v"], float("nan"))
    o = ops.decode(**d, out=out)
    assert o is out and not torch.isnan(out).any()


OPCHECK_OPS = list(ops.OPS)


@pytest.mark.parametrize("op", OPCHECK_OPS)
def test_opcheck(op):
    args, kwargs = examples.example(op, "cpu", dtype=torch.float32)
    props, kargs, kkw = ops.capture(op, *args, **kwargs)
    # opcheck's schema test multiplies mutated outputs, which float8 tensors do not support on CPU.
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic") \
        if op == "rms_norm_gated_fp8" else None
    kw = {} if utils is None else {"test_utils": utils}
    torch.library.opcheck(getattr(torch.ops.gdn, op).default, tuple(kargs), dict(kkw, backend="reference"), **kw)


@pytest.mark.parametrize("op", ["decode", "prefill", "conv1d_update_split", "rms_norm_gated_fp8"])
def test_torch_compile_fullgraph(op):
    torch._dynamo.reset()
    args, kwargs = examples.example(op, "cpu", dtype=torch.float32)
    clone = lambda xs: [x.clone() if isinstance(x, torch.Tensor) else x for x in xs]
    a1, a2 = clone(args), clone(args)
    k1 = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    k2 = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    fn = getattr(ops, op)
    got = torch.compile(lambda *a, **k: fn(*a, **k), fullgraph=True)(*a1, **k1)
    ref = fn(*a2, **k2)
    flat = lambda o: o if isinstance(o, tuple) else (o,)
    for g, r in zip(flat(got), flat(ref)):
        assert torch.equal(g.float().nan_to_num(), r.float().nan_to_num())
    for x, y in zip(a1 + list(k1.values()), a2 + list(k2.values())):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x.nan_to_num(), y.nan_to_num())
