"""The launch path that skips the JIT's per-launch bookkeeping (gdn.common.launch.launch_compiled): taken on
every launch after the JIT's first, and bit-identical to the JIT's own launch (same binary, same arguments).
Prefill (two Gluon kernels on sm_90, Triton elsewhere) and decode (a Triton kernel), both with pools updated
in place: each run starts from the same pool."""
import pytest
import torch

from gdn import ops
from gdn.common import examples
from gdn.common import launch as L

_REAL = L.launch_compiled      # (the spies below wrap this one, never each other)
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")]


def _run(op, backend, a, kw, monkeypatch, compiled_path: bool):
    pool_i = 3 if op == "prefill" else 7
    pool0 = a[pool_i].clone()
    taken = []

    def spy(*args):
        r = _REAL(*args)
        taken.append(r)
        return r
    monkeypatch.setattr(L, "launch_compiled", spy)
    monkeypatch.setattr(L, "_LAUNCH_COMPILED", compiled_path)
    outs = []
    for _ in range(2):
        a[pool_i].copy_(pool0)
        o = getattr(ops, op)(*a, **kw, backend=backend)
        outs.append((o.clone(), a[pool_i].clone()))
    a[pool_i].copy_(pool0)
    torch.cuda.synchronize()
    return outs, taken


@pytest.mark.parametrize("op,backend", [("prefill", "triton"), ("decode", "triton")])
def test_launch_compiled_taken_and_identical(op, backend, monkeypatch):
    if not L._launch_compiled_ok():
        pytest.skip("a Triton other than 3.6: the JIT takes every launch")
    a, kw = examples.example(op, "cuda", size="qwen", B=4, lengths=(300, 0, 77, 1000))
    jit, taken_jit = _run(op, backend, a, kw, monkeypatch, False)
    fast, taken = _run(op, backend, a, kw, monkeypatch, True)
    assert not any(taken_jit)
    # the second call's launches all take the compiled path (the first may have compiled)
    n = len(taken) // 2
    assert n > 0 and all(taken[n:]), taken
    for (o_j, s_j), (o_f, s_f) in zip(jit, fast):
        assert torch.equal(o_j, o_f) and torch.equal(s_j, s_f)
