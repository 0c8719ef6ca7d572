"""Programmatic dependent launch (PDL) of the decode-step Triton kernels on a real sm_90+ GPU.

With PDL a kernel starts while the previous one on the stream still runs; only its griddepcontrol.wait
orders it after that kernel's writes (and before its own writes land on what that kernel still reads).
So dependent kernels run back to back here, where a missing or late wait gives wrong or unstable results:
  - N decode calls on one pool and the same slots in one CUDA graph (each reads the states the previous
    one wrote), against the reference step by step;
  - a layer's decode step (split_qkvzba + causal_conv1d_update, or conv1d_update_split; decode_packed;
    rms_norm_gated and rms_norm_gated_fp8) over several tokens with every intermediate buffer reused (the
    next token's front end overwrites z while the previous token's norms read it), eager and in a graph.
Each is also run with GDN_PDL=0: the results must be bit-identical (the kernels differ only by the wait).

Run without TRITON_INTERPRET:  pytest -q -m gpu tests/gpu/test_pdl_gpu.py
"""
import os

import pytest
import torch
from _helpers import rel, bits_equal, unused_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                       reason="GPU tests run compiled kernels (unset TRITON_INTERPRET)"),
]

H, HV, K, V, W = 16, 32, 128, 128, 4
D = 2 * H * K + HV * V           # mixed_qkv width, 8192
DZ = 2 * H * K + 2 * HV * V      # mixed_qkvz width, 12288
DEV = "cuda"
NAN = float("nan")


@pytest.fixture(autouse=True, scope="module")
def _needs_pdl():
    torch.backends.cuda.matmul.allow_tf32 = False
    from gdn.common import launch as L, probe
    L.probe.reload_env()
    arch = probe.device_info().arch
    if not L.pdl_ok(arch):
        pytest.skip(f"PDL is off on {arch} (needs NVIDIA sm_90+ and GDN_PDL unset or not 0)")
    yield


def pdl(on: bool):
    """Launches inside use PDL or not (see launch.pdl_switched)."""
    from gdn.common import launch as L
    return L.pdl_switched(on)


def assert_steps_match(out, pool, o_ref, p_ref, idx, used, pool0, state_dtype):
    """out [steps, B, ...] and the pool after back-to-back calls against the reference's (o_ref, p_ref):
    padding rows (idx < 0) zero, used slots within tolerance, every other slot bit-identical to pool0."""
    live = idx >= 0
    tol = 1e-2 if state_dtype == torch.bfloat16 else 5e-3
    for t in range(out.shape[0]):
        assert rel(out[t][live], o_ref[t][live]) < tol, f"step {t}"
        assert (out[t][~live] == 0).all()
    assert rel(pool[used], p_ref[used]) < tol
    assert bits_equal(unused_rows(pool, used), unused_rows(pool0, used))


def fn(op, backend="triton"):
    from gdn.common.registry import get
    return get(op, backend).fn


def randn(*shape, g, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(*shape, generator=g, device=DEV) * scale).to(dtype)


def slots(B, S, g):
    idx = torch.randperm(S, generator=g, device=DEV)[:B]
    if B > 1:
        idx[1::5] = -1
    return idx.to(torch.int32), idx[idx >= 0].long()


def step_inputs(N, B, g):
    """q, k, v, a, b for N decode steps of B sequences ([N, B, ...]), and A_log, dt_bias."""
    q, k = randn(N, B, H, K, g=g), randn(N, B, H, K, g=g)
    v, a, b = randn(N, B, HV, V, g=g), randn(N, B, HV, g=g), randn(N, B, HV, g=g)
    A_log = torch.empty(HV, device=DEV).uniform_(-4, -1, generator=g)
    dt_bias = torch.randn(HV, generator=g, device=DEV) * 0.5
    return q, k, v, a, b, A_log, dt_bias


def in_graph(run):
    """run() captured in a CUDA graph (warmed up on a side stream first: compiles), replayed once."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run(warmup=True)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run(warmup=False)
    g.replay()
    torch.cuda.synchronize()


def compiled_with_pdl(kernel) -> list:
    """launch_pdl of every compiled variant of `kernel` on this device (Triton's per-device kernel cache)."""
    cache = kernel.device_caches[torch.cuda.current_device()][0]
    return [k.metadata.launch_pdl for k in cache.values()]


# ---------------------------------------------------------------------------------------------------
# back-to-back decode calls on one pool

@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("layout,state_dtype", [("vk", torch.float32), ("vk", torch.bfloat16), ("kv", torch.float32)],
                         ids=["vk-fp32", "vk-bf16", "kv-fp32"])
def test_decode_back_to_back_in_graph(B, layout, state_dtype):
    from gdn.common.triton.decode import gdn_decode_kernel
    N, S = 8, B + 8
    g = torch.Generator(device=DEV).manual_seed(B)
    inner = (HV, V, K) if layout == "vk" else (HV, K, V)
    pool0 = torch.full((S, *inner), NAN, dtype=state_dtype, device=DEV)       # unused slots stay NaN
    idx, used = slots(B, S, g)
    pool0[used] = randn(used.numel(), *inner, g=g, dtype=state_dtype, scale=0.3)
    q, k, v, a, b, A_log, dt_bias = step_inputs(N, B, g)
    kw = dict(scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)

    def calls(f, pool, out):
        for t in range(N):
            f(q[t], k[t], v[t], a[t], b[t], A_log, dt_bias, pool, idx, out[t], **kw)

    results = {}
    for on in (True, False):
        pool, out = pool0.clone(), torch.full((N, B, HV, V), NAN, dtype=torch.bfloat16, device=DEV)
        scratch, sout = pool0.clone(), out.clone()
        with pdl(on):
            in_graph(lambda warmup: calls(fn("decode"), scratch, sout) if warmup else calls(fn("decode"), pool, out))
        results[on] = pool, out
    assert any(compiled_with_pdl(gdn_decode_kernel)), "no decode kernel was compiled with launch_pdl"
    (pool, out), (pool_nopdl, out_nopdl) = results[True], results[False]
    assert bits_equal(pool, pool_nopdl) and bits_equal(out, out_nopdl), "PDL changed the results"

    p_ref, o_ref = pool0.clone(), torch.empty_like(out)
    calls(fn("decode", "reference"), p_ref, o_ref)
    assert_steps_match(out, pool, o_ref, p_ref, idx, used, pool0, state_dtype)


@pytest.mark.parametrize("backend", ["triton", "cutedsl"])
@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("layout,state_dtype", [("vk", torch.float32), ("vk", torch.bfloat16), ("kv", torch.float32)],
                         ids=["vk-fp32", "vk-bf16", "kv-fp32"])
def test_decode_follows_indices_the_previous_kernel_wrote(B, layout, state_dtype, backend):
    """Before its wait a PDL decode reads its slot index speculatively (to prefetch the state tile into L2):
    here the kernel right before each decode call moves state_indices to other slots (and back), so a stale
    guess is the rule. Each call must read and write the slots of the indices that kernel wrote."""
    from gdn.common import probe
    if backend == "cutedsl" and not probe.cutedsl_available():
        pytest.skip("CuTeDSL is not importable here")
    N, S = 6, 2 * B + 8
    g = torch.Generator(device=DEV).manual_seed(100 + B)
    inner = (HV, V, K) if layout == "vk" else (HV, K, V)
    perm = torch.randperm(S, generator=g, device=DEV)
    idx_a, idx_b = perm[:B].to(torch.int32), perm[B:2 * B].to(torch.int32)
    if B > 1:
        idx_a[1::5] = -1
        idx_b[2::5] = -1
    used = torch.cat([idx_a[idx_a >= 0], idx_b[idx_b >= 0]]).long()
    pool0 = torch.full((S, *inner), NAN, dtype=state_dtype, device=DEV)
    pool0[used] = randn(used.numel(), *inner, g=g, dtype=state_dtype, scale=0.3)
    q, k, v, a, b, A_log, dt_bias = step_inputs(N, B, g)
    kw = dict(scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    step_idx = [idx_b if t % 2 == 0 else idx_a for t in range(N)]
    delta = (idx_b - idx_a).to(torch.int32)
    sign = [1 if t % 2 == 0 else -1 for t in range(N)]

    def calls(f, pool, out, idx):
        for t in range(N):
            idx.add_(sign[t] * delta)            # an elementwise kernel: the launch just before decode's
            f(q[t], k[t], v[t], a[t], b[t], A_log, dt_bias, pool, idx, out[t], **kw)

    pool, out, idx = pool0.clone(), torch.full((N, B, HV, V), NAN, dtype=torch.bfloat16, device=DEV), idx_a.clone()
    scratch, sout, sidx = pool0.clone(), out.clone(), idx_a.clone()
    with pdl(True):
        in_graph(lambda warmup: calls(fn("decode", backend), scratch, sout, sidx) if warmup
                 else calls(fn("decode", backend), pool, out, idx))
    p_ref, o_ref = pool0.clone(), torch.empty_like(out)
    ref = fn("decode", "reference")
    for t in range(N):
        ref(q[t], k[t], v[t], a[t], b[t], A_log, dt_bias, p_ref, step_idx[t], o_ref[t], **kw)
    tol = 1e-2 if state_dtype == torch.bfloat16 else 5e-3
    for t in range(N):
        live = step_idx[t] >= 0
        assert rel(out[t][live], o_ref[t][live]) < tol, f"step {t}"
        assert (out[t][~live] == 0).all(), f"step {t}"
    assert rel(pool[used], p_ref[used]) < tol
    assert bits_equal(unused_rows(pool, used), unused_rows(pool0, used))


# ---------------------------------------------------------------------------------------------------
# a layer's decode step over several tokens, every buffer reused

def layer_steps(front, B, T, g):
    """(run(backend, tensors), fresh tensors()) for T tokens of one layer's decode step."""
    conv0 = torch.full((B + 8, D, W - 1), NAN, dtype=torch.bfloat16, device=DEV)
    state0 = torch.full((B + 8, HV, V, K), NAN, dtype=torch.float32, device=DEV)
    idx, used = slots(B, B + 8, g)
    conv0[used] = randn(used.numel(), D, W - 1, g=g)
    state0[used] = randn(used.numel(), HV, V, K, g=g, dtype=torch.float32, scale=0.3)
    qkvz, ba = randn(T, B, DZ, g=g), randn(T, B, 2 * HV, g=g)
    conv_w, conv_b, norm_w = randn(D, W, g=g, scale=0.5), randn(D, g=g, scale=0.1), randn(V, g=g)
    A_log = torch.empty(HV, device=DEV).uniform_(-4, -1, generator=g)
    dt_bias = torch.randn(HV, generator=g, device=DEV) * 0.5
    split = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout="interleaved")

    def tensors():
        e = lambda *s, dtype=torch.bfloat16: torch.full(s, NAN, dtype=dtype, device=DEV)  # noqa: E731
        return dict(conv=conv0.clone(), state=state0.clone(), raw=e(B, D), qkv=e(B, D), z=e(B, HV, V), b=e(B, HV),
                    a=e(B, HV), o=e(B, HV, V), y=e(T, B, HV, V),
                    y8=torch.zeros(T, B * HV, V, dtype=torch.float8_e4m3fn, device=DEV),
                    s8=e(T, B * HV, 1, dtype=torch.float32))

    def run(backend, x):
        for t in range(T):
            if front == "fused":
                fn("conv1d_update_split", backend)(qkvz[t], ba[t], x["conv"], conv_w, conv_b, idx, x["qkv"], x["z"],
                                                   x["b"], x["a"], **split, activation="silu")
            else:
                fn("split_qkvzba", backend)(qkvz[t], ba[t], x["raw"], x["z"], x["b"], x["a"], **split)
                fn("causal_conv1d_update", backend)(x["raw"], x["conv"], conv_w, conv_b, idx, x["qkv"],
                                                    activation="silu")
            fn("decode_packed", backend)(x["qkv"], x["a"], x["b"], A_log, dt_bias, x["state"], idx, x["o"],
                                         num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5,
                                         use_qk_l2norm=True, state_layout="vk")
            fn("rms_norm_gated", backend)(x["o"], x["z"], norm_w, x["y"][t], eps=1e-6)
            fn("rms_norm_gated_fp8", backend)(x["o"].view(B * HV, V), x["z"].view(B * HV, V), norm_w, x["y8"][t],
                                              x["s8"][t], eps=1e-6, group_size=V, fp8_max=448.0)

    return run, tensors, idx, used


@pytest.mark.parametrize("front", ["fused", "split"])
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
def test_layer_decode_steps(front, B, graph):
    T = 4
    run, tensors, idx, used = layer_steps(front, B, T, torch.Generator(device=DEV).manual_seed(7 + B))
    results = {}
    for on in (True, False):
        x = tensors()
        with pdl(on):
            if graph:
                scratch = tensors()
                in_graph(lambda warmup: run("triton", scratch if warmup else x))
            else:
                run("triton", x)
                torch.cuda.synchronize()
        results[on] = x
    for name in results[True]:
        assert bits_equal(results[True][name], results[False][name]), f"PDL changed {name}"

    x, r = results[True], tensors()
    run("reference", r)
    live = (idx >= 0).repeat_interleave(HV)             # rows of the [B * HV, V] views
    for t in range(T):
        assert rel(x["y"][t][idx >= 0], r["y"][t][idx >= 0]) < 2e-2, f"token {t}"
        deq = x["y8"][t].float() * x["s8"][t]
        assert rel(deq[live], r["y"][t].view(B * HV, V)[live].float()) < 5e-2, f"token {t} (fp8)"
    assert rel(x["state"][used], r["state"][used]) < 1e-2 and rel(x["conv"][used], r["conv"][used]) < 1e-2
    assert bits_equal(unused_rows(x["state"], used), unused_rows(tensors()["state"], used))
