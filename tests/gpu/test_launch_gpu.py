"""The launch path that skips the JIT's per-launch bookkeeping (gdn.common.launch.launch_compiled): taken on
every launch after the JIT's first, and bit-identical to the JIT's own launch (same binary, same arguments).
Prefill (two Gluon kernels on sm_90, Triton elsewhere) and decode (a Triton kernel), both with pools updated
in place: each run starts from the same pool."""
import pytest
import torch

from gdn import ops
from gdn.common import examples, registry
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


def _copy_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def copy_scaled(x, y, n, s, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y + i, tl.load(x + i, mask=i < n) * s, mask=i < n)
    return copy_scaled


def test_launch_plans_follow_the_specialisation(monkeypatch):
    """Launch plans (found by a key of the arguments, not Triton's binder) launch the binary the JIT would:
    an address off 16 bytes, an int equal to 1 or not a multiple of 16 after aligned ones each get their own binary (a
    vectorised load from a misaligned address would fault or read wrong), and every later launch takes a plan."""
    if not L._launch_compiled_ok():
        pytest.skip("a Triton other than 3.6: the JIT takes every launch")
    kernel = _copy_kernel()
    plans = []
    real = L._Plan.launch

    def spy(self, *a):
        plans.append(self)
        return real(self, *a)
    monkeypatch.setattr(L._Plan, "launch", spy)
    x = torch.randn(4096 + 8, device="cuda")
    for rnd in range(2):
        for off, n in ((0, 4096), (1, 4096), (0, 1), (0, 4095), (0, 4096)):
            y = torch.full((n + 8,), float("nan"), device="cuda")
            L.launch(kernel, (triton_cdiv(n, 256),), x[off:], y[off:], n, 0.5, BLOCK=256)
            torch.cuda.synchronize()
            assert torch.equal(y[off:off + n], x[off:off + n] * 0.5), (rnd, off, n)
            assert y[:off].isnan().all() and y[off + n:].isnan().all()
    assert len(plans) == 6          # the JIT compiles each specialisation's first launch, plans take the rest
    assert len({id(p) for p in plans}) == 4             # (0, 4096) thrice: one plan; the others each their own
    assert len({p.function for p in plans}) == 4        # and each its own binary


def triton_cdiv(a, b):
    return -(-a // b)


def _prefill_inputs(seed, lengths=(300, 0, 77, 1000)):
    torch.manual_seed(seed)         # fresh values, same shapes, strides and dtypes (the call key)
    return examples.example("prefill", "cuda", size="qwen", lengths=lengths)


def _replays(monkeypatch) -> list:
    """The call plans replayed from here on (a spy on CallPlan.replay)."""
    replays = []
    real = L.CallPlan.replay

    def spy(self, *a):
        replays.append(self)
        return real(self, *a)
    monkeypatch.setattr(L.CallPlan, "replay", spy)
    return replays


def test_prefill_call_plans(monkeypatch):
    """Prefill's call plans (gdn.common.launch.CallPlan): an eager call whose tensors match an earlier call's in
    shape, strides, dtype and alignment replays that call's launches with its own tensors, and its outputs and
    pool are bitwise those of the path that decides everything again; a config table change, a registry change
    or launch hooks stop the replay."""
    from gdn.common.triton.prefill import prefill as P
    if not L._launch_compiled_ok():
        pytest.skip("a Triton other than 3.6: the JIT takes every launch")
    replays = _replays(monkeypatch)
    P._CALL_PLANS.clear()

    def run(a, kw, plans: bool):
        if not plans:
            L.bump_version()            # (every plan made so far is stale: the call decides everything)
        pool0 = a[3].clone()
        n = len(replays)
        o = ops.prefill(*a, **kw, backend="triton")
        out = (o.clone(), a[3].clone(), len(replays) - n)
        a[3].copy_(pool0)
        torch.cuda.synchronize()
        return out

    a0, kw = _prefill_inputs(0)
    run(a0, kw, True)                   # compiles (the JIT's launches: no plan)
    run(a0, kw, True)                   # makes the plan (sm_90: the Gluon path)
    from gdn.common import probe
    sm90 = probe.device_info(torch.device("cuda")).arch == "sm_90"
    # fresh values; then other sequence boundaries with the same T and N (cu_seqlens is read on the device only)
    for seed, lengths in ((1, (300, 0, 77, 1000)), (2, (700, 377, 0, 300))):
        a1, kw1 = _prefill_inputs(seed, lengths)
        o_plan, s_plan, n_plan = run(a1, kw1, True)
        o_ref, s_ref, n_ref = run(a1, kw1, False)
        assert torch.equal(o_plan, o_ref) and torch.equal(s_plan, s_ref)
        assert n_ref == 0 and n_plan == (1 if sm90 else 0)     # (only the sm_90 path makes call plans)
        run(a1, kw1, True)              # (the plan again: run(.., False) made the version stale)
    if not sm90:
        return
    # captured in a CUDA graph: the replay's launches and allocations are captured like the deciding path's
    a2, _ = _prefill_inputs(3)
    pool0 = a2[3].clone()
    ref_o = ops.prefill(*a2, **kw, backend="triton").clone()
    ref_s = a2[3].clone()
    a2[3].copy_(pool0)
    n = len(replays)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s), torch.cuda.graph(graph):
        o_g = ops.prefill(*a2, **kw, backend="triton")
    torch.cuda.current_stream().wait_stream(s)
    assert len(replays) == n + 1
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(o_g, ref_o) and torch.equal(a2[3], ref_s)
    a2[3].copy_(pool0)
    # stale after a config table change (here a no-op one), a registry change; skipped under launch hooks
    from gdn.nvidia.gluon import chunk_state as GS
    run(a1, kw1, True)
    key = next(iter(GS._FUSED))
    monkeypatch.setitem(GS._FUSED, key, GS._FUSED[key])
    assert run(a1, kw1, True)[2] == 0 and run(a1, kw1, True)[2] == 1
    registry.clear_cache()
    assert run(a1, kw1, True)[2] == 0 and run(a1, kw1, True)[2] == 1
    from triton import knobs
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", _Hook())
    assert run(a1, kw1, True)[2] == 0


class _Hook:
    """A launch hook as Triton's knobs hold one (`calls` non-empty): launches must go through the JIT."""
    calls = [lambda *a: None]

    def __call__(self, *a):
        pass


@pytest.mark.parametrize("path", ["triton", "gluon_state_triton_output", "triton_prep_gluon_pass", "segmented",
                                  "segmented_triton"])
def test_prefill_call_plans_other_paths(path, monkeypatch):
    """Prefill's other paths (forced here on sm_90) make call plans where every launch took a launch plan (launches
    that need Triton's device-side TMA scratch take none: no call plan then); replayed or not, each call's outputs
    and pool are bitwise those of the deciding path."""
    from gdn.common import probe
    from gdn.common.triton.prefill import prefill as P
    if not L._launch_compiled_ok():
        pytest.skip("a Triton other than 3.6: the JIT takes every launch")
    replays = _replays(monkeypatch)
    env = {"triton": ("GDN_DISABLE", "gluon"), "gluon_state_triton_output": ("GDN_BACKEND_CHUNK_OUTPUT", "triton"),
           "triton_prep_gluon_pass": ("GDN_CALL_PLANS", "1"), "segmented": ("GDN_CALL_PLANS", "1"),
           "segmented_triton": ("GDN_DISABLE", "gluon")}[path]
    if path == "triton_prep_gluon_pass":
        monkeypatch.setitem(P._GLUON_PREP, ("sm_90", "any"), False)
    if path.startswith("segmented"):        # (segments.py: the table forced; seven launches, two persistent passes)
        from gdn.common.triton.prefill import segments as SEG
        for key in list(SEG._SEGMENTS):
            monkeypatch.delitem(SEG._SEGMENTS, key)
        monkeypatch.setitem(SEG._SEGMENTS, "any", dict(max_pairs=1 << 30, min_len=0, pairs=1 << 30, min_seg=256))
    with probe.env_switched(*env):
        a, kw = _prefill_inputs(0)
        for _ in range(3):              # compile, plan, replay
            ops.prefill(*a, **kw, backend="triton")
        for seed, lengths in ((1, (300, 0, 77, 1000)), (2, (700, 377, 0, 300))):
            a1, kw1 = _prefill_inputs(seed, lengths)
            pool0 = a1[3].clone()
            n = len(replays)
            o = ops.prefill(*a1, **kw1, backend="triton").clone()
            s = a1[3].clone()
            replayed = len(replays) - n
            a1[3].copy_(pool0)
            L.bump_version()            # (the next call decides everything)
            o_ref = ops.prefill(*a1, **kw1, backend="triton")
            torch.cuda.synchronize()
            assert torch.equal(o, o_ref) and torch.equal(s, a1[3]), (path, seed, replayed)
            print(f"{path}: replayed {replayed}")
            if path == "segmented":     # (every launch of sm_90's segmented path takes a launch plan)
                assert replayed == 1
