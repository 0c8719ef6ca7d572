"""Programmatic dependent launch (PDL) of the CuTeDSL decode family on a real sm_90 / sm_100 GPU.

The CuTeDSL twin of tests/gpu/test_pdl_gpu.py (whose helpers it imports): dependent launches back to back,
where a missing or late griddepcontrol.wait gives wrong or unstable results:
  - N CuTeDSL decode calls on one pool and the same slots (each reads the states the previous one wrote),
    captured in one CUDA graph and eager, B in {1, 8, 64}, vk fp32 / vk bf16 / kv fp32 pools;
  - decode_mtp (T=3, pool updated) the same way;
  - a layer's decode step with the CuTeDSL decode_packed between the Triton PDL kernels (the next token's
    front end overwrites the buffers the CuTeDSL kernel reads, the norms read what it writes).
Each against the reference step by step and bit-identical with GDN_PDL=0 (the kernels differ only by the
wait); the PDL variant must have been the one launched.

Run without TRITON_INTERPRET:  pytest -q -m gpu tests/gpu/test_cutedsl_pdl_gpu.py
"""
import pytest
import torch
from _helpers import bits_equal, cutedsl_gpu_marks, rel, unused_rows
from test_pdl_gpu import H, HV, K, V, assert_steps_match, in_graph, pdl, randn, slots

from gdn.common import probe

pytestmark = cutedsl_gpu_marks()

DEV = "cuda"
NAN = float("nan")
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@pytest.fixture(autouse=True, scope="module")
def _needs_cutedsl_pdl():
    torch.backends.cuda.matmul.allow_tf32 = False
    from gdn import ops
    from gdn.common import launch as L
    ops.load_backends()
    L.probe.reload_env()
    arch = probe.device_info().arch
    if arch not in ("sm_90", "sm_100"):
        pytest.skip(f"the cutedsl backend serves sm_90 / sm_100, this GPU is {arch}")
    if not L.pdl_ok(arch):
        pytest.skip(f"PDL is off on {arch} (GDN_PDL=0?)")
    yield


def fn(op, backend="cutedsl"):
    from gdn.common.registry import get
    return get(op, backend).fn


def launched(**match) -> list:
    """The CuTeDSL variants (Specs) compiled in this process whose fields equal `match`."""
    from gdn.nvidia.cutedsl import _common as C
    return [s for s in C._BY_SPEC if all(getattr(s, k) == v for k, v in match.items())]


def problem(B, T, layout, state_dtype, seed):
    """(pool0 with NaN in unused slots, idx, used slots, inputs of N calls [N, B, (T,) ...], gates)."""
    N, S = 8 if T is None else 4, B + 8
    g = torch.Generator(device=DEV).manual_seed(seed)
    inner = (HV, V, K) if layout == "vk" else (HV, K, V)
    pool0 = torch.full((S, *inner), NAN, dtype=state_dtype, device=DEV)
    idx, used = slots(B, S, g)
    pool0[used] = randn(used.numel(), *inner, g=g, dtype=state_dtype, scale=0.3)
    step = () if T is None else (T,)
    x = dict(q=randn(N, B, *step, H, K, g=g), k=randn(N, B, *step, H, K, g=g), v=randn(N, B, *step, HV, V, g=g),
             a=randn(N, B, *step, HV, g=g), b=randn(N, B, *step, HV, g=g))
    A_log = torch.empty(HV, device=DEV).uniform_(-4, -1, generator=g)
    dt_bias = torch.randn(HV, generator=g, device=DEV) * 0.5
    return N, pool0, idx, used, x, (A_log, dt_bias)


def pdl_vs_plain(calls, pool0, out_shape, graph, aux=lambda: None):
    """{pdl on: (pool, out, aux)} after `calls(pool, out, aux)` with PDL on and off, in a CUDA graph or eager
    (aux(): further buffers the calls write, made before any capture)."""
    results = {}
    for on in (True, False):
        pool, out, extra = pool0.clone(), torch.full(out_shape, NAN, dtype=torch.bfloat16, device=DEV), aux()
        with pdl(on):
            if graph:
                scratch = (pool0.clone(), out.clone(), aux())
                in_graph(lambda warmup: calls(*scratch) if warmup else calls(pool, out, extra))
            else:
                calls(pool, out, extra)
                torch.cuda.synchronize()
        results[on] = pool, out, extra
    return results


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("layout,state_dtype", [("vk", torch.float32), ("vk", torch.bfloat16), ("kv", torch.float32)],
                         ids=["vk-fp32", "vk-bf16", "kv-fp32"])
def test_decode_back_to_back(B, layout, state_dtype, graph):
    from gdn.common import launch as L
    from gdn.nvidia.cutedsl import _common as C
    N, pool0, idx, used, x, (A_log, dt_bias) = problem(B, None, layout, state_dtype, seed=B)
    kw = dict(scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)

    def calls(pool, out, _=None, f=fn("decode")):
        for t in range(N):
            f(x["q"][t], x["k"][t], x["v"][t], x["a"][t], x["b"][t], A_log, dt_bias, pool, idx, out[t], **kw)

    results = pdl_vs_plain(calls, pool0, (N, B, HV, V), graph)
    arch = probe.device_info().arch
    tile = C.tile_for(arch, layout, SHORT[state_dtype], B * HV)
    twins = launched(layout=layout, state=SHORT[state_dtype], T=1, tile=tile, pdl=True)
    assert twins and L.use_pdl(arch, (B * twins[0].ctas(),)), f"no PDL variant of tile {tile} was launched"
    (pool, out, _), (pool_plain, out_plain, _) = results[True], results[False]
    assert bits_equal(pool, pool_plain) and bits_equal(out, out_plain), "PDL changed the results"

    p_ref, o_ref = pool0.clone(), torch.empty_like(out)
    calls(p_ref, o_ref, f=fn("decode", "reference"))
    assert_steps_match(out, pool, o_ref, p_ref, idx, used, pool0, state_dtype)


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("B", [1, 8])
def test_decode_mtp_back_to_back(B, graph):
    """decode_mtp, T=3 chain with the pool updated: each call starts from the states the previous one wrote;
    the intermediate buffer is rewritten by every call (its last contents are checked)."""
    T, layout = 3, "vk"
    N, pool0, idx, used, x, (A_log, dt_bias) = problem(B, T, layout, torch.float32, seed=100 + B)
    kw = dict(disable_state_update=False, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)

    def buffer():
        return torch.full((B, T, HV, V, K), NAN, device=DEV)

    def calls(pool, out, inter, f=fn("decode_mtp")):
        for t in range(N):
            f(x["q"][t], x["k"][t], x["v"][t], x["a"][t], x["b"][t], A_log, dt_bias, pool, idx, out[t], inter, None,
              None, **kw)

    results = pdl_vs_plain(calls, pool0, (N, B, T, HV, V), graph, buffer)
    assert launched(T=T, pdl=True), "no PDL variant of decode_mtp was launched"
    (pool, out, inter), (pool_plain, out_plain, inter_plain) = results[True], results[False]
    assert bits_equal(pool, pool_plain) and bits_equal(out, out_plain), "PDL changed the results"
    assert bits_equal(inter, inter_plain), "PDL changed the intermediate states"

    p_ref, o_ref, i_ref = pool0.clone(), torch.empty_like(out), buffer()
    calls(p_ref, o_ref, i_ref, f=fn("decode_mtp", "reference"))
    live = idx >= 0
    for t in range(N):
        assert rel(out[t][live], o_ref[t][live]) < 5e-3, f"call {t}"
    assert rel(pool[used], p_ref[used]) < 5e-3
    assert rel(inter[live], i_ref[live]) < 5e-3
    assert bits_equal(unused_rows(pool, used), unused_rows(pool0, used))


@pytest.mark.parametrize("front", ["fused", "split"])
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
def test_layer_decode_steps_with_cutedsl_decode(front, B, graph, monkeypatch):
    """tests/gpu/test_pdl_gpu.py's layer steps with decode_packed on CuTeDSL and the rest on Triton: PDL
    launches of two code generators chained, every buffer reused across tokens."""
    import test_pdl_gpu as P
    triton_fn = P.fn
    monkeypatch.setattr(P, "fn", lambda op, backend="triton": triton_fn(
        op, "cutedsl" if (op, backend) == ("decode_packed", "triton") else backend))
    P.test_layer_decode_steps(front, B, graph)
    assert launched(T=1, pdl=True, layout="vk"), "no PDL variant of the CuTeDSL decode was launched"
