"""Call plans (gdn.common.launch.CallPlan) on the CPU: what a plan is made of, when one is refused, how it names a
later call's tensors on replay, and what makes plans stale. The replay on a GPU, bitwise against the deciding path:
tests/gpu/test_launch_gpu.py `test_prefill_call_plans`."""
import gc
import weakref

import pytest
import torch

from gdn.common import launch as L
from gdn.common import probe, registry


class _FakePlan:
    """Stands in for a launch plan: notes what it was asked to launch."""

    def __init__(self):
        self.calls = []

    def launch(self, grid, args, stream):
        self.calls.append((grid, args, stream))


class _Desc:
    """A TMA descriptor argument type (plan_arg_type's contract: base, shape, stride, block)."""

    def __init__(self, base, shape, stride, block):
        self.base, self.shape, self.stride, self.block = base, shape, stride, block


@pytest.fixture
def desc_type(monkeypatch):
    monkeypatch.setitem(L._TMA_TYPES, _Desc, lambda d: (d.base.dtype, d.block))
    return _Desc


def _replay(cp, tensors, monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda dev: 1234, raising=False)
    cp.replay(tensors)


def test_replay_names_tensors_by_position(desc_type, monkeypatch):
    x, y, buf = torch.zeros(4), torch.ones(4), torch.empty(8)
    p1, p2 = _FakePlan(), _FakePlan()
    rec = [(p1, (3,), (x, desc_type(buf, (8, 1), 1, (4, 1)), 7, 0.5, None)), (p2, (1, 2), (y, buf))]
    cp = L.CallPlan.make(rec, (x, y, buf), buffers=lambda: (torch.full((8,), 2.0),))
    assert cp is not None
    # the plan holds none of the recorded call's tensors (a plan per key: they would stay allocated)
    refs = [weakref.ref(t) for t in (x, y, buf)]
    del rec, x, y, buf
    gc.collect()
    assert all(r() is None for r in refs)
    x2, y2 = torch.full((4,), 5.0), torch.full((4,), 6.0)
    buf2 = cp.buffers()[0]
    _replay(cp, (x2, y2, buf2), monkeypatch)
    (grid, args, stream), = p1.calls
    assert grid == (3,) and stream == 1234
    assert args[0] is x2 and args[2:] == [7, 0.5, None]
    d = args[1]
    assert type(d) is desc_type and d.base is buf2 and (d.shape, d.stride, d.block) == ((8, 1), 1, (4, 1))
    (grid2, args2, _), = p2.calls
    assert grid2 == (1, 2) and args2[0] is y2 and args2[1] is buf2


def test_refused(desc_type):
    x, y = torch.zeros(4), torch.zeros(4)
    p = _FakePlan()
    assert L.CallPlan.make([], (x,)) is None                                     # nothing launched
    assert L.CallPlan.make([(p, (1,), (x,)), None], (x,)) is None                # a launch off a launch plan
    assert L.CallPlan.make([(p, (1,), (x,))], (x, x)) is None                    # one tensor passed twice
    assert L.CallPlan.make([(p, (1,), (y,))], (x,)) is None                      # a tensor the launcher made
    assert L.CallPlan.make([(p, (1,), (desc_type(y, (4,), 1, (4,)),))], (x,)) is None   # a descriptor of one
    assert L.CallPlan.make([(p, (1,), (x,))], (x, None)) is not None


def test_config_table_changes_make_plans_stale(monkeypatch):
    t = L.ConfigTable({"a": 1})
    v = L._VERSION[0]
    _ = t["a"], t.get("a"), dict(t)                     # reads do not
    assert L._VERSION[0] == v
    monkeypatch.setitem(t, "a", 2)
    assert L._VERSION[0] > v
    for change in (lambda: t.update(b=3), lambda: t.pop("b"), lambda: t.setdefault("c", 4), lambda: t.clear()):
        v = L._VERSION[0]
        change()
        assert L._VERSION[0] > v
    v = L._VERSION[0]
    registry.clear_cache()
    assert L._VERSION[0] > v
    v = L._VERSION[0]
    probe.reload_env()
    assert L._VERSION[0] > v


class _GpuLike:
    """What call_key reads of a GPU tensor."""
    is_cuda = True

    def __init__(self, shape, stride, dtype=torch.bfloat16, ptr=4096):
        self.shape, self._stride, self.dtype, self._ptr = torch.Size(shape), stride, dtype, ptr

    def stride(self):
        return self._stride

    def data_ptr(self):
        return self._ptr


def test_call_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    if not L._LAUNCH_COMPILED:
        pytest.skip("a Triton other than 3.6: no launch plans, no call plans")
    a = _GpuLike((8, 2), (2, 1))
    key = L.call_key((a, None), 1.0, "vk")
    assert key is not None
    assert L.call_key((_GpuLike((8, 2), (2, 1), ptr=8192), None), 1.0, "vk") == key     # values and addresses: no
    for other in (_GpuLike((9, 2), (2, 1)), _GpuLike((8, 2), (4, 1)), _GpuLike((8, 2), (2, 1), torch.float16),
                  _GpuLike((8, 2), (2, 1), ptr=4098)):                                  # metadata, alignment: yes
        assert L.call_key((other, None), 1.0, "vk") != key
    assert L.call_key((a, a), 1.0, "vk") != key and L.call_key((a, None), 2.0, "vk") != key
    L.bump_version()
    assert L.call_key((a, None), 1.0, "vk") != key
    assert L.call_key((torch.zeros(4), None), 1.0) is None          # CPU tensors: no launch plans there
    with probe.env_switched("GDN_CALL_PLANS", "0"):
        assert L.call_key((a, None), 1.0, "vk") is None
