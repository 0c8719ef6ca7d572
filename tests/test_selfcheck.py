"""First-use self-check of compile-only implementations (gdn/common/selfcheck.py).

The device is made to look like an sm_100 GPU the way tests/test_registry.py does it: `probe.device_info`
returns a CUDA DeviceInfo while the tensors stay on the CPU, so dispatch, the check and the fall-back run
for real on CPU (the fake backends wrap the reference launcher, so no Triton kernel runs)."""
import inspect
import logging

import pytest
import torch

from gdn import ops
from gdn.common import examples, probe, registry, selfcheck
from gdn.common.registry import Impl, NoBackendError

SM100 = probe.DeviceInfo("cuda", "nvidia", "sm_100", "fake Blackwell", 148, 0)
OUT, STATE, IDX = 9, 7, 8           # positions of out / state / state_indices in decode's kernel-level args


def _wrong_out(a, k):
    a[OUT].add_(0.5)


def _wrong_state(a, k):
    live = a[IDX][a[IDX] >= 0].long()
    a[STATE][live[0]] += 0.5


def _stray_write(a, k):
    unused = torch.ones(a[STATE].shape[0], dtype=torch.bool)
    unused[a[IDX][a[IDX] >= 0].long()] = False
    a[STATE][unused.nonzero()[0, 0]] = 0.0


def _raises(a, k):
    raise RuntimeError("illegal instruction")


@pytest.fixture
def fake(monkeypatch):
    """Registers decode backends 'bad' (priority 100, broken by `fake.breakage`) and 'good' (90, the
    reference launcher), both compile-only on sm_100; device looks like sm_100. Returns the call log."""
    monkeypatch.setattr(registry, "_REGISTRY", {op: list(v) for op, v in registry._REGISTRY.items()})
    monkeypatch.setattr(probe, "device_info", lambda d=None: SM100)
    monkeypatch.delenv("GDN_SELFCHECK", raising=False)
    registry.clear_cache()
    ref = registry.get("decode", "reference").fn

    class Calls(list):
        breakage = staticmethod(_wrong_out)

    calls = Calls()

    def bad(*a, **k):
        calls.append("bad")
        ref(*a, **k)
        calls.breakage(a, k)

    def good(*a, **k):
        calls.append("good")
        ref(*a, **k)

    for name, fn, prio in (("bad", bad, 100), ("good", good, 90)):
        registry.register(Impl(op="decode", backend=name, fn=fn, archs=("sm_100",), priority=prio,
                               validated_on=("sm_90",)))
    yield calls
    registry.clear_cache()


def _decode_args():
    return examples.example("decode", "cpu", dtype=torch.float32)


def _row(op, backend, args, kwargs):
    return next(r for r in ops.explain(op, *args, **kwargs) if r["backend"] == backend)


def test_correct_impl_passes_once_and_is_used(fake, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {**registry._REGISTRY,
                                                "decode": [i for i in registry._REGISTRY["decode"] if i.backend != "bad"]})
    registry.clear_cache()
    args, kwargs = _decode_args()
    assert "self-checked on first call" in _row("decode", "good", args, kwargs)["selfcheck"]
    state = args[STATE].clone()
    out = ops.decode(*args, **kwargs)
    ops.decode(*[x.clone() if isinstance(x, torch.Tensor) else x for x in args], **kwargs)
    assert fake == ["good"] * 3                 # one self-check run, then two real calls
    ref = ops.decode(*args[:STATE], state, *args[STATE + 1:], **kwargs, backend="reference")
    assert torch.equal(out, ref)
    row = _row("decode", "good", args, kwargs)
    assert row["status"] == "chosen" and row["selfcheck"].startswith("self-check passed on sm_100 against reference")


@pytest.mark.parametrize("breakage,figure", [(_wrong_out, "out rel err"), (_wrong_state, "state rel err"),
                                             (_stray_write, "slot(s) changed that reference left untouched"),
                                             (_raises, "raised RuntimeError: illegal instruction")])
def test_mismatch_falls_back_with_warning(fake, caplog, breakage, figure):
    fake.breakage = breakage
    args, kwargs = _decode_args()
    with caplog.at_level(logging.WARNING, logger="gdn.selfcheck"):
        for _ in range(2):
            ops.decode(*args, **kwargs)
    assert fake == ["bad", "good", "good", "good"]        # checked once each, then only 'good' runs
    msgs = [r.getMessage() for r in caplog.records if r.name == "gdn.selfcheck"]
    assert len(msgs) == 1 and all(w in msgs[0] for w in ("gdn.decode", "bad", "sm_100", figure)), msgs
    row = _row("decode", "bad", args, kwargs)
    assert row["status"] == "unavailable" and figure in row["selfcheck"]
    assert any(r.startswith("excluded: self-check failed on sm_100 against reference") for r in row["reasons"])
    assert _row("decode", "good", args, kwargs)["status"] == "chosen"


def test_forced_backend_raises_instead_of_falling_back(fake, monkeypatch):
    args, kwargs = _decode_args()
    with pytest.raises(NoBackendError, match=r"(?s)forced backend 'bad' is compile-only on sm_100 and failed.*"
                                             r"out rel err.*GDN_SELFCHECK=0"):
        ops.decode(*args, **kwargs, backend="bad")
    monkeypatch.setenv("GDN_BACKEND_DECODE", "bad")
    probe.reload_env()
    with pytest.raises(NoBackendError, match="failed its first-use self-check"):
        ops.decode(*args, **kwargs)
    assert fake == ["bad"]                         # the verdict is cached: checked once
    monkeypatch.setenv("GDN_BACKEND_DECODE", "good")
    probe.reload_env()
    ops.decode(*args, **kwargs)
    assert fake == ["bad", "good", "good"]


def test_selfcheck_off(fake, monkeypatch):
    monkeypatch.setenv("GDN_SELFCHECK", "0")
    probe.reload_env()
    args, kwargs = _decode_args()
    ops.decode(*args, **kwargs)
    assert fake == ["bad"] and _row("decode", "bad", args, kwargs)["selfcheck"] == ""


def test_no_kernels_run_while_capturing(fake, monkeypatch, caplog):
    args, kwargs = _decode_args()
    props = ops.capture("decode", *args, **kwargs)[0]
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="gdn.dispatch"):
        m.setattr(selfcheck, "capturing", lambda: "CUDA-graph capture")
        for _ in range(2):
            assert registry.select("decode", props).backend == "bad"     # unchecked, and not cached
    assert fake == []
    assert len([r for r in caplog.records if "skipped during CUDA-graph capture" in r.getMessage()]) == 1
    assert registry.select("decode", props).backend == "good"            # eager again: checked, falls back
    assert fake == ["bad", "good"]


def test_not_needed_on_cpu_or_validated_arch():
    cpu = probe.device_info("cpu")
    impl = registry.get("decode", "triton")
    assert not selfcheck.needed(impl, cpu)                                  # CPU: interpreter, covered by tests
    assert not selfcheck.needed(impl, probe.DeviceInfo("cuda", "nvidia", "sm_90", "H100", 132, 0))
    assert selfcheck.needed(impl, SM100)
    assert not selfcheck.needed(registry.get("decode", "reference"), SM100)


@pytest.mark.parametrize("op,opts,over", [
    ("decode", dict(dtype=torch.bfloat16, state_dtype=torch.bfloat16, layout="kv"), {}),
    ("decode_mtp", dict(T=2), dict(disable_state_update=True, intermediate_states=None)),
    ("decode_mtp", dict(), dict(parent_indices=torch.tensor([[-1, 0, 0]] * 4, dtype=torch.int32))),
    ("prefill", dict(dtype=torch.float32), "precomputed"),
    ("causal_conv1d_update", dict(), dict(bias=None, activation=None)),
    ("rms_norm_gated_fp8", dict(fp8_dtype=torch.float8_e4m3fnuz), {}),
])
def test_example_matches_the_call_signature(op, opts, over):
    args, kwargs = examples.example(op, "cpu", **opts)
    kwargs = inspect.signature(getattr(ops, op)).bind(*args, **kwargs).arguments
    if over == "precomputed":
        from gdn.common import reference
        g, beta = reference.gates(*(kwargs.pop(n) for n in ("a", "b", "A_log", "dt_bias")))
        kwargs.update(g=g, beta=beta)
    else:
        kwargs.update(over)
    props = ops.capture(op, **kwargs)[0]
    torch.manual_seed(0)
    ex_props, _, _, note = selfcheck._example(op, props, torch.device("cpu"))
    assert ex_props == props and note == ""


def test_internal_sub_op_uses_its_kernel_example(monkeypatch, caplog):
    """Prefill sub-ops have no public function: the check runs their kernel-level example, dims from props."""
    monkeypatch.setattr(registry, "_REGISTRY", {op: list(v) for op, v in registry._REGISTRY.items()})
    monkeypatch.setattr(probe, "device_info", lambda d=None: SM100)
    registry.clear_cache()
    ref = registry.get("chunk_output", "reference").fn

    def bad(*a, **k):
        ref(*a, **k)
        a[-1].mul_(1.01)                        # out: 1% off

    registry.register(Impl(op="chunk_output", backend="bad", fn=bad, archs=("sm_100",), priority=100))
    monkeypatch.setenv("GDN_DISABLE", "triton,gluon")           # keep the interpreter out of this test
    probe.reload_env()
    props = {"device": torch.device("cpu"), "dtype": torch.float32, "H": 2, "HV": 4, "K": 16, "V": 32}
    with caplog.at_level(logging.WARNING, logger="gdn.selfcheck"):
        chosen = registry.select("chunk_output", props).backend
    assert chosen == "reference" and "chunk_output" in caplog.text and "rel err 1.0e-02 > 1e-05" in caplog.text
    registry.clear_cache()


def test_trusted_follows_the_arch_order(fake):
    """The implementation a compile-only kernel is checked against is the first validated one in the registry's
    order for the device's arch, arch_priority included."""
    noop = lambda *a, **k: None  # noqa: E731
    registry.register(Impl(op="decode", backend="ranked_down", fn=noop, archs=("sm_100",), priority=50,
                           arch_priority={"sm_100": 1}, validated_on=("sm_100",)))
    registry.register(Impl(op="decode", backend="ranked_up", fn=noop, archs=("sm_100",), priority=20,
                           validated_on=("sm_100",)))
    assert selfcheck._trusted(registry.get("decode", "bad"), {}, SM100).backend == "ranked_up"
