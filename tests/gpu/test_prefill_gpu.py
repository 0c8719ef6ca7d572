"""Triton chunked prefill on the GPU at real sizes (Qwen3-Next heads: H=16, HV=32, K=V=128).

Large T is checked against a float64 chunk-free recurrence written here (vectorised over sequences and
heads, one token step at a time); a smaller case against the token-by-token reference op. Both state
layouts, fp32/bf16 pools, both launch plans, a padding slot, zero-length sequences, poisoned unused
slots; CUDA-graph capture with a fixed token budget; the sub-ops against their references.
"""
import pytest
import torch

from gdn.common import reference as R
from gdn.common import reference_chunk as RC
from gdn.common import registry
from gdn.common.triton.prefill import _common as C
from gdn.common.triton.prefill import chunk_state as CS
from gdn.common.triton.prefill import prefill as P

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")]

H, HV, K, V = 16, 32, 128, 128
NAN = float("nan")


def relerr(x, ref):
    x, ref = x.double(), ref.double()
    assert torch.isfinite(x).all(), "non-finite values"
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def tol(dtype, state_dtype):
    if state_dtype == torch.bfloat16:
        return 1e-2
    return 1e-5 if dtype == torch.float32 else 5e-3


def cu_of(lengths, dev):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=dev)


def recurrence64(q, k, v, g, beta, pool, idx, cu, init, scale, layout):
    """float64 gated delta rule, token by token, all sequences and heads at once. Returns (o [T,HV,V],
    final states [N,HV,K,V] KV form; rows of padding sequences zero)."""
    dev = q.device
    lengths = (cu[1:] - cu[:-1]).tolist()
    N, Lmax = len(lengths), max(lengths + [0])
    G = HV // q.shape[1]
    qn = q.double() / torch.sqrt((q.double() ** 2).sum(-1, keepdim=True) + 1e-6) * scale
    kn = k.double() / torch.sqrt((k.double() ** 2).sum(-1, keepdim=True) + 1e-6)
    qn, kn = qn.repeat_interleave(G, 1), kn.repeat_interleave(G, 1)
    S = torch.zeros(N, HV, K, V, dtype=torch.float64, device=dev)
    live = idx >= 0
    for n in range(N):
        if live[n] and init[n]:
            s = pool[idx[n]].double()
            S[n] = s.transpose(-1, -2) if layout == "vk" else s
    o = torch.zeros(q.shape[0], HV, V, dtype=torch.float64, device=dev)
    starts = cu[:-1].long()
    lens = torch.tensor(lengths, device=dev)
    for t in range(Lmax):
        act = (lens > t) & live
        rows = torch.where(act, starts + t, torch.zeros_like(starts))
        a = act.double()[:, None, None, None]
        S1 = S * torch.exp(g[rows].double())[:, :, None, None]
        u = beta[rows].double()[..., None] * (v[rows].double() - torch.einsum("nhkv,nhk->nhv", S1, kn[rows]))
        S1 = S1 + kn[rows][..., :, None] * u[..., None, :]
        S = a * S1 + (1 - a) * S
        ot = torch.einsum("nhkv,nhk->nhv", S1, qn[rows])
        o[rows[act]] = ot[act]
    return o, S


def make_case(lengths, dtype, layout, pool_dtype, dev, pad_seq=None):
    N, T = len(lengths), sum(lengths)
    q, k = torch.randn(T, H, K, device=dev).to(dtype), torch.randn(T, H, K, device=dev).to(dtype)
    v = torch.randn(T, HV, V, device=dev).to(dtype)
    a, b = torch.randn(T, HV, device=dev).to(dtype), torch.randn(T, HV, device=dev).to(dtype)
    A_log = torch.empty(HV, device=dev).uniform_(-4, -1)
    dt_bias = torch.empty(HV, device=dev).uniform_(-1, 1)
    S = N + 3
    shape = (S, HV, V, K) if layout == "vk" else (S, HV, K, V)
    pool = (torch.randn(shape, device=dev) * 0.1).to(pool_dtype)
    idx = torch.randperm(S, device=dev)[:N].to(torch.int32)
    if pad_seq is not None:
        idx[pad_seq] = -1
    init = torch.rand(N, device=dev) > 0.3
    used = torch.zeros(S, dtype=torch.bool, device=dev)
    used[idx[idx >= 0].long()] = True
    pool[~used] = NAN
    return dict(q=q, k=k, v=v, a=a, b=b, A_log=A_log, dt_bias=dt_bias, pool=pool, idx=idx,
                cu=cu_of(lengths, dev), init=init, used=used)


def run_triton(c, layout, g=None, beta=None):
    p = c["pool"].clone()
    o = torch.full_like(c["v"], NAN)
    raw = g is None
    registry.get("prefill", "triton").fn(
        c["q"], c["k"], c["v"], p, c["idx"], c["cu"], o, g, beta, *((c["a"], c["b"], c["A_log"], c["dt_bias"])
                                                                    if raw else (None,) * 4),
        c["init"], scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    return o, p


def check_against_recurrence(c, o, p, layout, dtype, pool_dtype):
    g, beta = R.gates(c["a"], c["b"], c["A_log"], c["dt_bias"])
    o_ref, S_ref = recurrence64(c["q"], c["k"], c["v"], g, beta, c["pool"], c["idx"], c["cu"], c["init"],
                                K ** -0.5, layout)
    assert relerr(o, o_ref) < tol(dtype, torch.float32)
    live = (c["idx"] >= 0).nonzero().flatten()
    got = p[c["idx"][live].long()].double()
    got = got.transpose(-1, -2) if layout == "vk" else got
    assert relerr(got, S_ref[live]) < tol(dtype, pool_dtype)
    before = c["pool"][~c["used"]].view(torch.uint8)
    assert torch.equal(p[~c["used"]].view(torch.uint8), before), "an unused slot changed"


def varlen_64(total, dev, seed=0):
    """64 sequence lengths summing to `total`: a few zero, most not multiples of 64."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(64, generator=gen) + 0.05
    w[[3, 17, 40]] = 0
    lens = (w / w.sum() * total).floor().long()
    lens[0] += total - lens.sum()
    return lens.tolist()


@pytest.mark.parametrize("lengths,dtype,layout,pool_dtype", [
    pytest.param("64x~1024", torch.bfloat16, "vk", torch.float32, id="64seq-65536-bf16-vk-fp32pool"),
    pytest.param("64x~1024", torch.bfloat16, "kv", torch.bfloat16, id="64seq-65536-bf16-kv-bf16pool"),
    pytest.param([65536], torch.bfloat16, "vk", torch.bfloat16, id="1x65536-bf16-vk-bf16pool"),
    pytest.param([32768], torch.bfloat16, "kv", torch.float32, id="1x32768-bf16-kv-fp32pool"),
    pytest.param([4096] * 8, torch.float32, "vk", torch.float32, id="8x4096-fp32-vk-fp32pool"),
    pytest.param([512] * 64, torch.float32, "kv", torch.float32, id="64x512-fp32-kv-fp32pool"),
])
def test_prefill_large_against_float64(lengths, dtype, layout, pool_dtype):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    if lengths == "64x~1024":
        lengths = varlen_64(65536, dev)
    c = make_case(lengths, dtype, layout, pool_dtype, dev, pad_seq=1 if len(lengths) > 1 else None)
    o, p = run_triton(c, layout)
    check_against_recurrence(c, o, p, layout, dtype, pool_dtype)
    if len(lengths) > 1:
        assert (o[c["cu"][1]:c["cu"][2]] == 0).all()


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("layout,pool_dtype,raw", [("vk", torch.float32, True), ("kv", torch.bfloat16, False)])
def test_prefill_both_plans_against_reference_op(monkeypatch, fuse, layout, pool_dtype, raw):
    """Both launch plans on the same inputs against gdn's token-by-token reference op."""
    for bucket in ("narrow", "wide"):
        monkeypatch.setitem(P._FUSE, bucket, fuse)
    torch.manual_seed(1)
    dev = torch.device("cuda")
    lengths = [700, 0, 64, 1, 300, 129]
    c = make_case(lengths, torch.bfloat16, layout, pool_dtype, dev, pad_seq=2)
    g = beta = None
    if not raw:
        g, beta = R.gates(c["a"], c["b"], c["A_log"], c["dt_bias"])
    o, p = run_triton(c, layout, g, beta)
    p_ref, o_ref = c["pool"].clone(), torch.full_like(c["v"], NAN)
    R.prefill(c["q"], c["k"], c["v"], p_ref, c["idx"], c["cu"], o_ref, None, None, c["a"], c["b"], c["A_log"],
              c["dt_bias"], c["init"], scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    assert relerr(o, o_ref) < 5e-3
    u = c["used"]
    assert relerr(p[u], p_ref[u]) < tol(torch.bfloat16, pool_dtype)
    assert torch.equal(p[~u].view(torch.uint8), c["pool"][~u].view(torch.uint8))


def test_prefill_only_empty_sequences():
    """T == 0 with N > 0 (every sequence empty; on sm_90 the first kernel does not run, so the pass is launched
    without PDL): each live slot as the reference leaves it (its initial state, or zeros where has_initial_state
    is False), the padding slot's and the unused slots' bytes untouched, nothing written to the empty output."""
    torch.manual_seed(5)
    dev = torch.device("cuda")
    c = make_case([0, 0, 0], torch.bfloat16, "vk", torch.float32, dev, pad_seq=1)
    c["init"] = torch.tensor([True, True, False], device=dev)
    o, p = run_triton(c, "vk")
    p_ref, o_ref = c["pool"].clone(), torch.empty_like(c["v"])
    R.prefill(c["q"], c["k"], c["v"], p_ref, c["idx"], c["cu"], o_ref, None, None, c["a"], c["b"], c["A_log"],
              c["dt_bias"], c["init"], scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    torch.cuda.synchronize()
    assert o.shape[0] == 0
    assert torch.equal(p.view(torch.uint8), p_ref.view(torch.uint8))
    assert torch.equal(p[~c["used"]].view(torch.uint8), c["pool"][~c["used"]].view(torch.uint8))


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("lengths,pad", [
    pytest.param([300, 64, 0, 129], 1, id="4seq-pad1-zero1"),
    pytest.param([512] * 8, 1, id="8x512-pad1"),
    pytest.param([1000, 0, 65, 1, 512, 129, 0, 2000], 3, id="8seq-pad3-zero2"),
])
def test_prefill_many_sequences_both_plans(monkeypatch, fuse, lengths, pad):
    """The shapes that failed on the H100 (N*HV >= 128: the "wide" bucket; padding and zero-length
    sequences; multi-chunk lengths not multiples of 64), each plan forced, against the float64 recurrence."""
    for bucket in ("narrow", "wide"):
        monkeypatch.setitem(P._FUSE, bucket, fuse)
    torch.manual_seed(4)
    dev = torch.device("cuda")
    c = make_case(lengths, torch.bfloat16, "vk", torch.float32, dev, pad_seq=pad)
    o, p = run_triton(c, "vk")
    check_against_recurrence(c, o, p, "vk", torch.bfloat16, torch.float32)
    assert (o[c["cu"][pad]:c["cu"][pad + 1]] == 0).all()


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
def test_prefill_single_stage_request_is_clamped(monkeypatch, fuse):
    """Tables (or a sweep) asking for num_stages=1: on sm_90 that loop is miscompiled by Triton 3.6 (garbage
    or an illegal address); chunk_state clamps it, so the result stays right."""
    for bucket in ("narrow", "wide"):
        monkeypatch.setitem(P._FUSE, bucket, fuse)
        for key in (bucket, ("nvidia", bucket)):
            monkeypatch.setitem(CS._CONFIGS, key, dict(BV=32, num_warps=4, num_stages=1))
    torch.manual_seed(5)
    dev = torch.device("cuda")
    c = make_case([512] * 8, torch.bfloat16, "vk", torch.float32, dev, pad_seq=1)
    o, p = run_triton(c, "vk")
    check_against_recurrence(c, o, p, "vk", torch.bfloat16, torch.float32)


@pytest.mark.parametrize("lengths,layout,pool_dtype", [
    pytest.param([300, 64, 0, 129], "vk", torch.float32, id="4seq-zero1-vk-fp32pool"),
    pytest.param([1000, 0, 65, 1, 512, 129, 0, 2000], "kv", torch.bfloat16, id="8seq-zero2-kv-bf16pool"),
])
def test_prefill_head_pass_against_float64(monkeypatch, lengths, layout, pool_dtype):
    """The head pass (sm_90 wide batches at V = 128: one CTA per (sequence, v-head), S^T in two math warpgroups;
    chunk_state.py HEAD) against the float64 recurrence (a padding sequence, empty ones, tails, a has_initial_state
    mix, unused slots NaN and bit-identical after) and against the warp-specialised pass it replaces there."""
    from gdn.common import probe
    from gdn.nvidia.gluon import chunk_state as GS
    if probe.device_info().arch != "sm_90":
        pytest.skip("the head pass runs on sm_90")
    dev = torch.device("cuda")
    torch.manual_seed(9)
    c = make_case(lengths, torch.bfloat16, layout, pool_dtype, dev, pad_seq=1)
    ran = []
    head = GS._launch_head
    monkeypatch.setattr(GS, "_launch_head", lambda *a, **kw: ran.append(1) or head(*a, **kw))
    o1, p1 = run_triton(c, layout)
    assert ran, "the head pass did not run"
    check_against_recurrence(c, o1, p1, layout, torch.bfloat16, pool_dtype)
    assert (o1[c["cu"][1]:c["cu"][2]] == 0).all()        # the padding sequence
    monkeypatch.delitem(GS._FUSED, ("sm_90", "head"))
    ran.clear()
    o0, p0 = run_triton(c, layout)
    assert not ran
    assert relerr(o1, o0) < 5e-3


def check_graph_replays(budget, N, batches):
    """Capture prefill once for a token budget and N sequences; replay with each batch's lengths (summing to at
    most the budget), new inputs and slots: the same output and pool as an eager call, rows past the tokens zero."""
    dev = torch.device("cuda")
    st = make_case([budget // N] * N, torch.bfloat16, "vk", torch.float32, dev)
    pool_static = st["pool"].clone()
    out = torch.empty_like(st["v"])
    fn = registry.get("prefill", "triton").fn

    def run(pool, o):
        fn(st["q"], st["k"], st["v"], pool, st["idx"], st["cu"], o, None, None, st["a"], st["b"],
           st["A_log"], st["dt_bias"], st["init"], scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run(pool_static, out)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(pool_static, out)
    for lengths in batches:
        new = make_case(lengths, torch.bfloat16, "vk", torch.float32, dev)
        T = sum(lengths)
        for name in ("q", "k", "v", "a", "b"):
            st[name].zero_()
            st[name][:T] = new[name]
        for name in ("A_log", "dt_bias", "idx", "cu", "init"):
            st[name].copy_(new[name][:st[name].shape[0]] if name != "cu" else new[name])
        pool_static.copy_(new["pool"][:pool_static.shape[0]])
        p0 = pool_static.clone()
        graph.replay()
        torch.cuda.synchronize()
        p_eager, o_eager = p0.clone(), torch.full_like(out, NAN)
        run(p_eager, o_eager)
        assert torch.equal(out, o_eager)
        assert torch.equal(pool_static.view(torch.uint8), p_eager.view(torch.uint8))
        assert (out[T:] == 0).all()


@pytest.mark.parametrize("N", [1, 8])
def test_prefill_cuda_graph(N):
    """check_graph_replays at 8192 tokens: two batches of random lengths."""
    torch.manual_seed(2)
    budget = 8192
    check_graph_replays(budget, N, [torch.randint(0, budget // N, (N,)).tolist() for _ in range(2)])


def test_sub_ops_against_references():
    dev = torch.device("cuda")
    torch.manual_seed(3)
    lengths = [300, 0, 64, 77]
    N, T = len(lengths), sum(lengths)
    cu = cu_of(lengths, dev)
    k, q = torch.randn(T, H, K, device=dev).bfloat16(), torch.randn(T, H, K, device=dev).bfloat16()
    v = torch.randn(T, HV, V, device=dev).bfloat16()
    g, beta = R.gates(torch.randn(T, HV, device=dev), torch.randn(T, HV, device=dev),
                      torch.empty(HV, device=dev).uniform_(-4, -1), torch.zeros(HV, device=dev))
    g_cum = torch.empty(T, HV, device=dev)
    R.chunk_cumsum(g, cu, g_cum, chunk_size=64)
    got = torch.empty_like(g_cum)
    registry.get("chunk_cumsum", "triton").fn(g, cu, got, chunk_size=64)
    assert relerr(got, g_cum) < 1e-6
    A0, A1 = torch.zeros(T, HV, 64, device=dev), torch.zeros(T, HV, 64, device=dev)
    RC.chunk_kkt_solve(k, g_cum, beta, cu, A0, use_qk_l2norm=True)
    registry.get("chunk_kkt_solve", "triton").fn(k, g_cum, beta, cu, A1, use_qk_l2norm=True)
    assert relerr(A1, A0) < 1e-4                 # tf32 products in the solve
    w0, u0 = torch.empty(T, HV, K, device=dev), torch.empty(T, HV, V, device=dev)
    w1, u1 = torch.empty_like(w0), torch.empty_like(u0)
    RC.chunk_wy(k, v, g_cum, beta, A0, cu, w0, u0, use_qk_l2norm=True)
    registry.get("chunk_wy", "triton").fn(k, v, g_cum, beta, A0, cu, w1, u1, use_qk_l2norm=True)
    assert relerr(w1, w0) < 1e-4 and relerr(u1, u0) < 1e-4
    idx = torch.tensor([2, 0, -1, 1], dtype=torch.int32, device=dev)
    pool = torch.randn(4, HV, V, K, device=dev) * 0.1
    NS = C.num_slots(T, N)
    wb, ub = w0.bfloat16(), u0.bfloat16()
    res = []
    for fn in (RC.chunk_state, registry.get("chunk_state", "triton").fn):
        p, h, vn = pool.clone(), torch.zeros(NS, HV, K, V, device=dev), torch.zeros(T, HV, V, device=dev)
        fn(k, wb, ub, g_cum, p, idx, cu, None, h, vn, use_qk_l2norm=True, state_layout="vk")
        res.append((p, h, vn))
    assert relerr(res[1][0], res[0][0]) < 5e-3      # bf16 products of the state pass
    assert relerr(res[1][2], res[0][2]) < 5e-3
    hb, vb = res[0][1].bfloat16(), res[0][2].bfloat16()
    o0, o1 = torch.empty(T, HV, V, device=dev), torch.empty(T, HV, V, device=dev)
    RC.chunk_output(q, k, vb, hb, g_cum, idx, cu, o0, scale=K ** -0.5, use_qk_l2norm=True)
    registry.get("chunk_output", "triton").fn(q, k, vb, hb, g_cum, idx, cu, o1, scale=K ** -0.5, use_qk_l2norm=True)
    assert relerr(o1, o0) < 1e-3


@pytest.mark.parametrize("raw", [True, False], ids=["raw-gates", "g-beta"])
@pytest.mark.parametrize("lengths,pad,budget", [
    pytest.param([300, 64, 0, 129], 1, 40, id="4seq-pad1-zero1-budget"),
    pytest.param([512] * 8, None, 0, id="8x512"),
    pytest.param([1000, 0, 65, 1, 512, 129, 0, 2000], 3, 7, id="8seq-pad3-zero2-budget"),
])
def test_gluon_first_kernel_matches_triton(monkeypatch, raw, lengths, pad, budget):
    """sm_90: prefill's first kernel in Gluon (gdn/nvidia/gluon/chunk_prep.py) against the Triton one, the rest
    of the pipeline the same: outputs (rows past cu_seqlens[-1] of a token budget zero) and final states agree
    to the rounding of w and u, and the Gluon one matches the float64 recurrence."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon first kernel is sm_90")
    torch.manual_seed(6)
    dev = torch.device("cuda")
    c = make_case(lengths, torch.bfloat16, "vk", torch.float32, dev, pad_seq=pad)
    if budget:      # a fixed token budget: rows past the last sequence hold NaN in q, k, v
        for key in ("q", "k", "v", "a", "b"):
            c[key] = torch.cat([c[key], torch.full((budget, *c[key].shape[1:]), NAN, device=dev,
                                                   dtype=c[key].dtype)])
    g = beta = None
    if not raw:
        g, beta = R.gates(c["a"], c["b"], c["A_log"], c["dt_bias"])
    res = {}
    for gluon_prep in (False, True):
        monkeypatch.setitem(P._GLUON_PREP, ("sm_90", "any"), gluon_prep)
        res[gluon_prep] = run_triton(c, "vk", g, beta)
    (o0, p0), (o1, p1) = res[False], res[True]
    end = int(c["cu"][-1])
    assert (o1[end:] == 0).all(), "rows past cu_seqlens[-1] must be zero"
    # both are ~3-4e-3 from float64 with independent roundings (Triton: w and u in bf16, the solve in tf32;
    # Gluon on sm_90: A' = A diag(beta) in bf16, its warp-specialised pass's A path), so up to ~5e-3 apart;
    # the float64 check below holds each to the spec's bound
    assert relerr(o1[:end], o0[:end]) < 6e-3
    u = c["used"]
    assert relerr(p1[u], p0[u]) < 6e-3
    assert torch.equal(p1[~u].view(torch.uint8), c["pool"][~u].view(torch.uint8))
    if budget:
        for key in ("q", "k", "v", "a", "b"):
            c[key] = c[key][:end]
        o1 = o1[:end]
    check_against_recurrence(c, o1, p1, "vk", torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------------------
# segmented prefill (segments.py), forced by its table at the full head count

def force_segments(monkeypatch, seg):
    """Every batch cut into segments of `seg` tokens (the table's entries replaced: call plans follow)."""
    from gdn.common.triton.prefill import segments as SEG
    for key in list(SEG._SEGMENTS):
        monkeypatch.delitem(SEG._SEGMENTS, key)
    monkeypatch.setitem(SEG._SEGMENTS, "any", dict(max_pairs=1 << 30, min_len=0, pairs=1 << 30, min_seg=seg))


@pytest.mark.parametrize("path", ["gluon", "triton"])
@pytest.mark.parametrize("seg,layout,pool_dtype", [(1024, "vk", torch.float32), (448, "kv", torch.bfloat16)])
def test_prefill_segmented_against_float64(monkeypatch, path, seg, layout, pool_dtype):
    """Sequences cut into segments (a padding sequence, an empty one, tails, a has_initial_state mix) against the
    float64 recurrence and the unsegmented prefill: the Gluon path (sm_90: transition pass with v's extra columns
    read as TMA zero fill, no output) and the Triton kernels' (GDN_DISABLE=gluon); unused slots bit-identical."""
    from gdn.common import probe
    from gdn.common.triton.prefill import segments as SEG
    if path == "gluon" and probe.device_info().arch != "sm_90":
        pytest.skip("the Gluon path runs on sm_90")
    dev = torch.device("cuda")
    torch.manual_seed(7)
    c = make_case([70, 1000, 0, 2100, 3000], torch.bfloat16, layout, pool_dtype, dev, pad_seq=1)
    ran = []
    combine = SEG.launch_combine
    monkeypatch.setattr(SEG, "launch_combine", lambda *a, **kw: ran.append(1) or combine(*a, **kw))
    with probe.env_switched("GDN_DISABLE", "gluon" if path == "triton" else ""):
        o0, p0 = run_triton(c, layout)
        assert not ran
        force_segments(monkeypatch, seg)
        o1, p1 = run_triton(c, layout)
    assert ran
    check_against_recurrence(c, o1, p1, layout, torch.bfloat16, pool_dtype)
    assert relerr(o1, o0) < 5e-3
    assert (o1[c["cu"][1]:c["cu"][2]] == 0).all()        # the padding sequence


def test_prefill_segmented_cuda_graph(monkeypatch):
    """The segmented path under check_graph_replays (the segment table is built on the device from cu_seqlens)."""
    force_segments(monkeypatch, 512)
    torch.manual_seed(4)
    check_graph_replays(6144, 3, [[3000, 0, 2500], [100, 5000, 1]])
