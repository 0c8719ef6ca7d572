"""Gluon prefill sub-ops on a Hopper GPU: numerics against the fp32 chunk references
(gdn/common/reference_chunk.py) and against the Triton kernels, on varlen batches with tail chunks,
zero-length sequences, padding slots (-1), GVA (HV = 2H) and plain heads, tokens past cu_seqlens[-1]
holding NaN garbage, and q/k read in place from strided views."""
import pytest
import torch

from gdn.common import reference as R
from gdn.common import reference_chunk as RC
from gdn.common import registry
from gdn.common.triton.prefill import _common as PC

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                                 reason="needs a Hopper (sm_90) GPU")]

NAN = float("nan")
CASES = [
    # lengths, H, HV, K, V, state_indices (None: distinct live slots)
    pytest.param((70, 5, 0, 67), 16, 32, 128, 128, (2, 0, -1, 1), id="tails-zero-len-pad-gva"),
    pytest.param((64, 128, 1), 16, 32, 128, 128, None, id="exact-chunks-and-1"),
    pytest.param((4096, 1000, 33, 63), 16, 32, 128, 128, (3, -1, 0, 1), id="long-gva-pad"),
    pytest.param((8192,), 16, 32, 128, 128, None, id="one-long"),
    pytest.param((100, 31, 200), 4, 4, 64, 64, (0, 1, -1), id="no-gva-k64"),
    pytest.param((130, 70), 2, 4, 128, 256, None, id="v256"),
]


def relerr(x, ref):
    x, ref = x.double(), ref.double()
    assert torch.isfinite(x).all(), "non-finite values"
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def gluon(op):
    return registry.get(op, "gluon").fn


def triton(op):
    return registry.get(op, "triton").fn


def _cu(lengths, dev):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=dev)


def _output_inputs(lengths, H, HV, K, V, slots, dtype, pad_tokens=0, strong=False):
    """chunk_output's inputs; `pad_tokens` rows past cu_seqlens[-1] (a fixed token budget) hold NaN. `strong`:
    the v-heads' A_log cycle through [-4, -1], 0.5 and 2.5 (chunk decays from a few to hundreds of nats)."""
    dev = "cuda"
    N = len(lengths)
    T = sum(lengths) + pad_tokens
    cu = _cu(lengths, dev)
    # q and k as views into one packed row (as the conv output delivers them): row stride 2*H*K + 8
    qk = torch.randn(T, 2 * H * K + 8, device=dev).to(dtype)
    q = qk[:, :H * K].view(T, H, K)
    k = qk[:, H * K:2 * H * K].view(T, H, K)
    A_log = torch.empty(HV, device=dev).uniform_(-4, -1)
    if strong:
        A_log[1::3], A_log[2::3] = 0.5, 2.5
    g, _ = R.gates(torch.randn(T, HV, device=dev), torch.randn(T, HV, device=dev), A_log, torch.zeros(HV, device=dev))
    g_cum = torch.zeros(T, HV, device=dev)
    R.chunk_cumsum(g, cu, g_cum, chunk_size=64)
    v_new = torch.randn(T, HV, V, device=dev).to(dtype)
    h = (torch.randn(PC.num_slots(T, N), HV, K, V, device=dev) * 0.3).to(dtype)
    if pad_tokens:
        v_new[sum(lengths):] = NAN
        qk[sum(lengths):] = NAN
    idx = torch.tensor(slots if slots is not None else range(N), dtype=torch.int32, device=dev)
    return q, k, v_new, h, g_cum, idx, cu


@pytest.mark.parametrize("lengths,H,HV,K,V,slots", CASES)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_chunk_output(lengths, H, HV, K, V, slots, out_dtype):
    q, k, vn, h, g_cum, idx, cu = _output_inputs(lengths, H, HV, K, V, slots, torch.bfloat16, pad_tokens=37)
    T, end = q.shape[0], int(cu[-1])
    ref = torch.full((T, HV, V), NAN, device="cuda")
    got = torch.full((T, HV, V), NAN, device="cuda", dtype=out_dtype)
    tri = torch.full((T, HV, V), NAN, device="cuda", dtype=out_dtype)
    RC.chunk_output(q, k, vn, h, g_cum, idx, cu, ref, scale=K ** -0.5, use_qk_l2norm=True)
    gluon("chunk_output")(q, k, vn, h, g_cum, idx, cu, got, scale=K ** -0.5, use_qk_l2norm=True)
    triton("chunk_output")(q, k, vn, h, g_cum, idx, cu, tri, scale=K ** -0.5, use_qk_l2norm=True)
    tol = 1e-3 if out_dtype == torch.float32 else 5e-3
    assert relerr(got[:end], ref[:end]) < tol
    assert relerr(got[:end], tri[:end]) < tol
    assert torch.isnan(got[end:]).all(), "rows past cu_seqlens[-1] must stay untouched"
    for n, s in enumerate(idx.tolist()):
        if s < 0:
            assert (got[cu[n]:cu[n + 1]] == 0).all(), "a padding sequence's rows must be zero"


@pytest.mark.parametrize("l2", [True, False])
def test_chunk_output_options(l2):
    """use_qk_l2norm off, fp16 inputs, an arbitrary scale."""
    q, k, vn, h, g_cum, idx, cu = _output_inputs((300, 64, 7), 8, 16, 128, 128, None, torch.float16)
    if not l2:
        q, k = q * 0.1, k * 0.1
    ref = torch.empty(q.shape[0], 16, 128, device="cuda")
    got = torch.empty_like(ref)
    RC.chunk_output(q, k, vn, h, g_cum, idx, cu, ref, scale=0.3, use_qk_l2norm=l2)
    gluon("chunk_output")(q, k, vn, h, g_cum, idx, cu, got, scale=0.3, use_qk_l2norm=l2)
    assert relerr(got, ref) < 1e-3


def test_chunk_output_cuda_graph():
    """No host sync or allocation in the launch: capturable, replays with new data."""
    q, k, vn, h, g_cum, idx, cu = _output_inputs((200, 90), 16, 32, 128, 128, None, torch.bfloat16)
    out = torch.empty(q.shape[0], 32, 128, device="cuda", dtype=torch.bfloat16)
    fn = gluon("chunk_output")
    fn(q, k, vn, h, g_cum, idx, cu, out, scale=128 ** -0.5, use_qk_l2norm=True)   # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(q, k, vn, h, g_cum, idx, cu, out, scale=128 ** -0.5, use_qk_l2norm=True)
    vn.copy_(torch.randn_like(vn))
    graph.replay()
    ref = torch.empty(out.shape, device="cuda")
    RC.chunk_output(q, k, vn, h, g_cum, idx, cu, ref, scale=128 ** -0.5, use_qk_l2norm=True)
    assert relerr(out, ref) < 5e-3


def _nonfinite_where(x, cu):
    """Where x [T, heads, dim] is not finite: count, tokens as token(sequence:offset), rows within the chunk
    (offset % 64), heads, columns; '' when all finite."""
    bad = ~torch.isfinite(x)
    if not bad.any():
        return ""
    t, h, d = bad.nonzero(as_tuple=True)
    toks = t.unique()
    seq = torch.searchsorted(cu.to(toks.dtype), toks, right=True) - 1      # last sequence starting <= token
    off = toks - cu.to(toks.dtype)[seq]
    at = [f"{a}({n}:{o})" for a, n, o in zip(toks[:24].tolist(), seq[:24].tolist(), off[:24].tolist())]
    return (f"{int(bad.sum())} of {x.numel()} non-finite; {len(toks)} tokens {at}{'...' * (len(toks) > 24)}; "
            f"chunk rows {(off % 64).unique().tolist()}; heads {h.unique().tolist()}; "
            f"columns {d.unique().tolist()}")


@pytest.mark.parametrize("lengths,H,HV,K,V,slots", CASES)
def test_chunk_wy(lengths, H, HV, K, V, slots):
    """A from the reference solve (fp32), k/v bf16 with NaN rows past cu_seqlens[-1]; w, u bf16 as prefill
    keeps them, and fp32 for a tight comparison."""
    q, k, _, _, g_cum, _, cu = _output_inputs(lengths, H, HV, K, V, slots, torch.bfloat16, pad_tokens=37)
    T, end = k.shape[0], int(cu[-1])
    v = torch.randn(T, HV, V, device="cuda").bfloat16()
    v[end:] = NAN
    beta = torch.rand(T, HV, device="cuda")
    A = torch.zeros(T, HV, 64, device="cuda")
    RC.chunk_kkt_solve(k, g_cum, beta, cu, A, use_qk_l2norm=True)
    w0, u0 = torch.zeros(T, HV, K, device="cuda"), torch.zeros(T, HV, V, device="cuda")
    RC.chunk_wy(k, v, g_cum, beta, A, cu, w0, u0, use_qk_l2norm=True)
    for dt, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-3)):
        w1 = torch.full((T, HV, K), NAN, device="cuda", dtype=dt)
        u1 = torch.full((T, HV, V), NAN, device="cuda", dtype=dt)
        w2, u2 = torch.empty_like(w1), torch.empty_like(u1)
        gluon("chunk_wy")(k, v, g_cum, beta, A, cu, w1, u1, use_qk_l2norm=True)
        triton("chunk_wy")(k, v, g_cum, beta, A, cu, w2, u2, use_qk_l2norm=True)
        for name, got, ref, tri in (("w", w1, w0, w2), ("u", u1, u0, u2)):
            where = _nonfinite_where(got[:end], cu)
            assert not where, f"{name} ({dt}): {where}"
            assert relerr(got[:end], ref[:end]) < tol, f"{name} ({dt}) vs reference"
            assert relerr(got[:end], tri[:end]) < tol, f"{name} ({dt}) vs triton"
        assert torch.isnan(w1[end:]).all() and torch.isnan(u1[end:]).all()


def _state_pool(S, HV, K, V, layout, dtype):
    """A pool with a padded slot stride (any slot stride is allowed): [S, HV, V, K] or [S, HV, K, V]."""
    M = HV * K * V
    base = (torch.randn(S, M + 64, device="cuda") * 0.1).to(dtype)
    return base[:, :M].view(S, HV, *((V, K) if layout == "vk" else (K, V)))


def _state_inputs(lengths, H, HV, K, V, slots, layout, pool_dtype, init, strong=False):
    """chunk_state's inputs: q, k (strided views) and bf16 w, u from the reference WY solve, NaN rows past
    cu_seqlens[-1] in all four; has_initial_state from the `init` pattern (None: all True); a pool with two
    slots no sequence uses, and the mask of the used ones."""
    q, k, _, _, g_cum, idx, cu = _output_inputs(lengths, H, HV, K, V, slots, torch.bfloat16, pad_tokens=37,
                                                strong=strong)
    T, N, end = k.shape[0], len(lengths), int(cu[-1])
    v = torch.randn(T, HV, V, device="cuda").bfloat16()
    beta = torch.rand(T, HV, device="cuda")
    A = torch.zeros(T, HV, 64, device="cuda")
    RC.chunk_kkt_solve(k, g_cum, beta, cu, A, use_qk_l2norm=True)
    w0, u0 = torch.zeros(T, HV, K, device="cuda"), torch.zeros(T, HV, V, device="cuda")
    RC.chunk_wy(k, v, g_cum, beta, A, cu, w0, u0, use_qk_l2norm=True)
    w, u = w0.bfloat16(), u0.bfloat16()
    w[end:], u[end:] = NAN, NAN
    has_init = None if init is None else torch.tensor([init[n % 2] for n in range(N)], device="cuda")
    pool = _state_pool(N + 2, HV, K, V, layout, pool_dtype)
    used = torch.zeros(N + 2, dtype=torch.bool, device="cuda")
    used[[s for s in idx.tolist() if s >= 0]] = True
    return q, k, w, u, g_cum, idx, cu, has_init, pool, used


STATE_VARIANTS = [
    # layout, pool dtype, has_initial_state pattern (None: all True), config (None: the launcher's table)
    pytest.param("vk", torch.float32, (True, False), None, id="vk-fp32-mixinit"),
    pytest.param("kv", torch.bfloat16, None, None, id="kv-bf16"),
    pytest.param("vk", torch.bfloat16, (False, True), dict(BV=16, STAGES=2), id="vk-bf16-mixinit-bv16"),
    pytest.param("kv", torch.float32, None, dict(BV=64, STAGES=3), id="kv-fp32-bv64-3stages"),
]


@pytest.mark.parametrize("lengths,H,HV,K,V,slots", CASES)
@pytest.mark.parametrize("layout,pool_dtype,init,cfg", STATE_VARIANTS)
def test_chunk_state(lengths, H, HV, K, V, slots, layout, pool_dtype, init, cfg):
    """w, u from the reference WY solve (bf16, as prefill keeps them), NaN rows past cu_seqlens[-1] in k, w, u;
    a pool with two slots no sequence uses (must stay bit-identical); h and v_new pre-filled with NaN (h
    slots holding no chunk and v_new rows past the end must stay NaN). Against the fp32 reference and the
    Triton kernel (both round the state and v_new's factor to bf16 for the products as this kernel does)."""
    from gdn.nvidia.gluon import chunk_state as GS
    _, k, w, u, g_cum, idx, cu, has_init, pool, used = _state_inputs(lengths, H, HV, K, V, slots, layout,
                                                                      pool_dtype, init)
    T, N, end = k.shape[0], len(lengths), int(cu[-1])
    NS = PC.num_slots(T, N)
    res = {}
    if cfg is None:
        gl_fn = gluon("chunk_state")
    else:
        def gl_fn(*a, use_qk_l2norm, state_layout):
            GS.launch_state(*a, use_qk_l2norm, state_layout, cfg)
    for name, fn in (("ref", RC.chunk_state), ("triton", triton("chunk_state")), ("gluon", gl_fn)):
        p = pool.clone()
        h = torch.full((NS, HV, K, V), NAN, device="cuda", dtype=torch.bfloat16)
        vn = torch.full((T, HV, V), NAN, device="cuda", dtype=torch.bfloat16)
        fn(k, w, u, g_cum, p, idx, cu, has_init, h, vn, use_qk_l2norm=True, state_layout=layout)
        res[name] = p, h, vn
    p, h, vn = res["gluon"]
    assert torch.equal(p[~used].view(torch.int16), pool[~used].view(torch.int16)), "unused pool slots changed"
    assert torch.equal(h.isnan(), res["ref"][1].isnan()), "h slots holding no chunk must stay untouched"
    assert not _nonfinite_where(vn[:end], cu), _nonfinite_where(vn[:end], cu)
    assert torch.isnan(vn[end:]).all(), "v_new rows past cu_seqlens[-1] must stay untouched"
    for n, s in enumerate(idx.tolist()):
        if s < 0:
            assert (vn[cu[n]:cu[n + 1]] == 0).all(), "a padding sequence's v_new rows must be zero"
            s0, nc = int(cu[n]) // 64 + n, (int(cu[n + 1] - cu[n]) + 63) // 64
            assert (h[s0:s0 + nc] == 0).all(), "a padding sequence's h slots must be zero"
    tol_p = 5e-3 if pool_dtype == torch.float32 else 1e-2
    for other in ("ref", "triton"):
        p1, h1, vn1 = res[other]
        assert relerr(p[used], p1[used]) < tol_p, f"pool vs {other}"
        assert relerr(h.nan_to_num(), h1.nan_to_num()) < 5e-3, f"h vs {other}"
        assert relerr(vn[:end], vn1[:end]) < 5e-3, f"v_new vs {other}"


def test_chunk_state_gcum_copied():
    """g_cum with 24-byte rows (HV = 6): the plain pass copies it into a 16-byte-row buffer for its TMA tiles,
    whose columns past HV read zero; heads 4, 5 take column hv % 4 of a tile starting at column 4."""
    test_chunk_state((70, 5, 0, 67), 3, 6, 64, 64, (2, 0, -1, 1), "vk", torch.float32, (True, False), None)


FUSED_VARIANTS = [
    # layout, pool dtype, has_initial_state pattern, config (None: the prefill table's "wide" entry)
    pytest.param("vk", torch.float32, (True, False), None, id="vk-fp32-mixinit-table"),
    pytest.param("kv", torch.float32, None, None, id="kv-fp32-table"),
    pytest.param("kv", torch.bfloat16, None, dict(BV=32, STAGES=2, num_warps=4), id="kv-bf16-1wg"),
    pytest.param("vk", torch.bfloat16, (False, True), dict(BV=32, STAGES=3, num_warps=8), id="vk-bf16-2wg-bv32"),
    pytest.param("vk", torch.float32, (True, False), dict(BV=64, STAGES=2, num_warps=8, TMA_O=True),
                 id="vk-fp32-tma-o"),
    # the warp-specialised pass (prefill's "narrow" entry), and with o by plain stores
    pytest.param("vk", torch.float32, (True, False), "narrow", id="vk-fp32-mixinit-ws-table"),
    pytest.param("kv", torch.float32, None, "narrow-rk", id="kv-fp32-ws-table-key-norms-given"),
    pytest.param("kv", torch.bfloat16, None, dict(BV=32, STAGES=2, num_warps=4, WS=True, RING=2, OUT_REGS=232,
                                                   maxnreg=168),
                 id="kv-bf16-ws-plain-o-2stages"),
    # strong decays on some heads (chunks decaying by hundreds of nats: scores and states underflow to zero)
    pytest.param("vk", torch.float32, (True, False), "narrow-strong", id="vk-fp32-ws-strong-decays"),
]


@pytest.mark.parametrize("lengths,H,HV,K,V,slots", CASES)
@pytest.mark.parametrize("layout,pool_dtype,init,cfg", FUSED_VARIANTS)
def test_chunk_state_output_fused(lengths, H, HV, K, V, slots, layout, pool_dtype, init, cfg):
    """The state pass with the output fused (prefill's sm_90 path for wide batches) against the reference
    chunk_state followed by the reference chunk_output, and against the Gluon plain pass + Gluon chunk_output:
    final states, outputs, unused pool slots bit-identical, output rows past cu_seqlens[-1] untouched (NaN),
    a padding sequence's rows zero. q, k are strided views with NaN rows past the end, as are w and u."""
    from gdn.nvidia.gluon import chunk_state as GS
    q, k, w, u, g_cum, idx, cu, has_init, pool, used = _state_inputs(lengths, H, HV, K, V, slots, layout,
                                                                      pool_dtype, init, strong=cfg == "narrow-strong")
    T, N, end = k.shape[0], len(lengths), int(cu[-1])
    NS, scale = PC.num_slots(T, N), K ** -0.5
    rk = None
    if cfg == "narrow-rk":      # the key norms as prefill's first kernel hands them over (NaN past the end)
        rk = PC.gcum_empty(T, H, "cuda")
        rk.copy_(torch.rsqrt((k.float() ** 2).sum(-1) + 1e-6))
    if cfg in (None, "narrow", "narrow-rk", "narrow-strong"):
        # the table's entry fed w and u (its A path takes A' and v from prefill's first kernel: test_prefill_gpu)
        # (not the head pass: it takes A' only)
        cfg = dict(GS.fused_config("sm_90", 1 if cfg else 128, 1, K, V, head=False), A_PATH=False)
    res = {}
    for name, st, out_fn, dt in (("ref", RC.chunk_state, RC.chunk_output, torch.float32),
                                 ("gluon", gluon("chunk_state"), gluon("chunk_output"), torch.bfloat16)):
        p = pool.clone()
        h = torch.zeros((NS, HV, K, V), device="cuda", dtype=dt)
        vn = torch.zeros((T, HV, V), device="cuda", dtype=dt)
        st(k, w, u, g_cum, p, idx, cu, has_init, h, vn, use_qk_l2norm=True, state_layout=layout)
        o = torch.full((T, HV, V), NAN, device="cuda")
        out_fn(q, k, vn, h, g_cum, idx, cu, o, scale=scale, use_qk_l2norm=True)
        res[name] = p, o
    p = pool.clone()
    o = torch.full((T, HV, V), NAN, device="cuda", dtype=torch.bfloat16)
    GS.launch_state_output(k, w, u, q, g_cum, p, idx, cu, has_init, o, scale, True, layout, cfg, rk)
    assert torch.equal(p[~used].view(torch.int16), pool[~used].view(torch.int16)), "unused pool slots changed"
    assert not _nonfinite_where(o[:end], cu), _nonfinite_where(o[:end], cu)
    assert torch.isnan(o[end:]).all(), "output rows past cu_seqlens[-1] must stay untouched"
    for n, s in enumerate(idx.tolist()):
        if s < 0:
            assert (o[cu[n]:cu[n + 1]] == 0).all(), "a padding sequence's rows must be zero"
    tol_p = 5e-3 if pool_dtype == torch.float32 else 1e-2
    for other in ("ref", "gluon"):
        p1, o1 = res[other]
        assert relerr(p[used], p1[used]) < tol_p, f"pool vs {other}"
        assert relerr(o[:end], o1[:end]) < 1e-2, f"output vs {other}"


def test_pretend_sm100_runs_the_hopper_bodies(monkeypatch, caplog):
    """GDN_ARCH=sm_100 on a Hopper: dispatch treats the Gluon sub-ops as compile-only (so prefill self-checks
    them first), and their launchers build the bodies for the GPU itself (an sm_100 body compiled for sm_90
    aborts the process in LLVM). Prefill through them matches the reference, and the pool's untouched slots stay
    bit-identical."""
    import logging

    from gdn import ops
    from gdn.common import examples, probe
    monkeypatch.setenv("GDN_ARCH", "sm_100")
    probe.reload_env()
    registry.clear_cache()
    try:
        args, kw = examples.example("prefill", "cuda", size="qwen", lengths=(70, 5, 0, 130))
        pool = args[3]
        ref_pool = pool.clone()
        with caplog.at_level(logging.INFO):
            o = ops.prefill(*args, **kw)
        rows = {r["backend"]: r for r in registry.explain("chunk_state", dict(
            device=args[0].device, dtype=args[0].dtype, H=args[0].shape[1], HV=args[2].shape[1], K=args[0].shape[2],
            V=args[2].shape[2], state_dtype=pool.dtype, layout=kw.get("state_layout", "vk")))}
        assert rows["gluon"]["status"] == "chosen", rows["gluon"]
        assert rows["gluon"]["selfcheck"].startswith("self-check passed on sm_100"), rows["gluon"]
        ref_args = list(args)
        ref_args[3] = ref_pool
        o_ref = ops.prefill(*ref_args, **kw, backend="reference")
        assert relerr(o, o_ref) < 2e-2
        touched = args[4][args[4] >= 0].long()
        assert relerr(pool[touched], ref_pool[touched]) < 2e-2
        keep = torch.ones(pool.shape[0], dtype=torch.bool, device=pool.device)
        keep[touched] = False
        assert torch.equal(pool[keep], ref_pool[keep])
    finally:
        monkeypatch.delenv("GDN_ARCH")
        probe.reload_env()
        registry.clear_cache()
