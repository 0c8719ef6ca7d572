"""Layer-edge ops and the ROCm decode path on a real GPU, at Qwen3-Next widths (H=16, HV=32, K=V=128,
D = 2*16*128 + 32*128 = 8192, W=4) and 8192 rows, against gdn.common.reference.

The amd-triton kernels are plain Triton, so they run here on NVIDIA too: real-hardware numerics for the
ROCm decode path, with the default configs and with the gfx942 / gfx950 table configs (GDN_ARCH).
Marker `gpu`: skipped without CUDA. Run: pytest -q -m gpu tests/gpu/test_edge_ops_gpu.py
"""
import pytest
import torch

import gdn.amd.triton  # noqa: F401  (registers amd-triton)
import gdn.common.triton  # noqa: F401  (registers triton)
from gdn.common import probe, reference as R
from gdn.common.registry import get
from _helpers import rel, bits_equal, unused_rows

pytestmark = pytest.mark.gpu

H, HV, K, V, W = 16, 32, 128, 128, 4
G = HV // H
D = 2 * H * K + HV * V           # 8192
DZ = 2 * H * K + 2 * HV * V      # 12288
ROWS = 8192
DEV = "cuda"
NAN = float("nan")
TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 2e-3}
EDGE = ("triton",)


def gen(seed):
    return torch.Generator(device=DEV).manual_seed(seed)


def randn(*shape, g, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(*shape, generator=g, device=DEV) * scale).to(dtype)


def slots(n, S, g, pad_every=7, idx_dtype=torch.int32):
    s = torch.randperm(S, generator=g, device=DEV)[:n]
    s[::pad_every] = -1
    return s.to(idx_dtype)


def conv_pool(S, dtype, g, used, slot_pad=8):
    n = D * (W - 1)
    buf = torch.full((S, n + slot_pad), NAN, dtype=dtype, device=DEV)
    pool = buf[:, :n].view(S, D, W - 1)
    pool[used] = randn(used.numel(), D, W - 1, g=g, dtype=dtype)
    return pool, buf


def split_outputs(T, dtype):
    return (torch.full((T, D), NAN, dtype=dtype, device=DEV), torch.full((T, HV, V), NAN, dtype=dtype, device=DEV),
            torch.full((T, HV), NAN, dtype=dtype, device=DEV), torch.full((T, HV), NAN, dtype=dtype, device=DEV))


@pytest.fixture(params=["native", "gfx942", "gfx950"])
def amd_arch(request, monkeypatch):
    """The arch the amd-triton launchers read for their tables: the real one, or a pretended ROCm one
    (its wave64 configs then run on this GPU)."""
    if request.param != "native":
        monkeypatch.setenv("GDN_ARCH", request.param)
        probe.reload_env()
    return request.param


# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
def test_split_qkvzba_full(layout):
    g = gen(1)
    qkvz, ba = randn(ROWS, DZ, g=g), randn(ROWS, 2 * HV, g=g)
    kw = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout=layout)
    outs, refs = split_outputs(ROWS, torch.bfloat16), split_outputs(ROWS, torch.bfloat16)
    get("split_qkvzba", "triton").fn(qkvz, ba, *outs, **kw)
    R.split_qkvzba(qkvz, ba, *refs, **kw)
    for o, r in zip(outs, refs):
        assert bits_equal(o, r)


@pytest.mark.parametrize("backend", ["triton", "amd-triton"])
@pytest.mark.parametrize("dtype,state_dtype,idx_dtype", [(torch.bfloat16, torch.bfloat16, torch.int32),
                                                         (torch.float32, torch.float32, torch.int64)])
def test_causal_conv1d_update_full(backend, dtype, state_dtype, idx_dtype, amd_arch):
    if backend == "triton" and amd_arch != "native":
        pytest.skip("portable kernel: native arch only")
    g = gen(2)
    S = ROWS + 100
    idx = slots(ROWS, S, g, idx_dtype=idx_dtype)
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, state_dtype, g, used)
    buf0 = buf.clone()
    x, w, b = randn(ROWS, D, g=g, dtype=dtype), randn(D, W, g=g, dtype=dtype, scale=0.5), randn(D, g=g, dtype=dtype)
    out = torch.full((ROWS, D), NAN, dtype=dtype, device=DEV)
    get("causal_conv1d_update", backend).fn(x, pool, w, b, idx, out, activation="silu")
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    ref = torch.empty_like(out)
    R.causal_conv1d_update(x, p_ref, w, b, idx, ref, activation="silu")
    live = idx >= 0
    assert (out[~live] == 0).all() and rel(out[live], ref[live]) < TOL[dtype]
    assert bits_equal(pool[used], p_ref[used])
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))
    assert bits_equal(buf[:, D * (W - 1):], buf0[:, D * (W - 1):])


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
def test_conv1d_update_split_full(layout):
    g = gen(3)
    S = ROWS + 50
    idx = slots(ROWS, S, g)
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, torch.bfloat16, g, used)
    buf0 = buf.clone()
    qkvz, ba = randn(ROWS, DZ, g=g), randn(ROWS, 2 * HV, g=g)
    w, b = randn(D, W, g=g, scale=0.5), randn(D, g=g)
    kw = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout=layout, activation="silu")
    outs, refs = split_outputs(ROWS, torch.bfloat16), split_outputs(ROWS, torch.bfloat16)
    get("conv1d_update_split", "triton").fn(qkvz, ba, pool, w, b, idx, *outs, **kw)
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    R.conv1d_update_split(qkvz, ba, p_ref, w, b, idx, *refs, **kw)
    live = idx >= 0
    assert (outs[0][~live] == 0).all() and rel(outs[0][live], refs[0][live]) < TOL[torch.bfloat16]
    for o, r in zip(outs[1:], refs[1:]):
        assert bits_equal(o, r)
    assert bits_equal(pool[used], p_ref[used])
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_causal_conv1d_full(dtype):
    g = gen(4)
    lengths = [0, 1, 2, 3, ROWS // 12, 0, ROWS // 4, 5, ROWS // 6, 0, 0]     # zero-length and short ones
    lengths[9] = ROWS - sum(lengths)
    N = len(lengths)
    S = N + 5
    idx = torch.randperm(S, generator=g, device=DEV)[:N].to(torch.int32)
    idx[6] = -1
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, dtype, g, used)
    buf0 = buf.clone()
    init = torch.tensor([True, False, True, True, False, True, True, True, True, True, False], device=DEV)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    x, w, b = randn(ROWS, D, g=g, dtype=dtype), randn(D, W, g=g, dtype=dtype, scale=0.5), randn(D, g=g, dtype=dtype)
    out = torch.full((ROWS, D), NAN, dtype=dtype, device=DEV)
    get("causal_conv1d", "triton").fn(x, w, b, cu, pool, idx, init, out, activation="silu")
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    ref = torch.empty_like(out)
    R.causal_conv1d(x, w, b, cu, p_ref, idx, init, ref, activation="silu")
    tok_live = torch.repeat_interleave(idx >= 0, torch.tensor(lengths, device=DEV))
    assert (out[~tok_live] == 0).all() and rel(out[tok_live], ref[tok_live]) < TOL[dtype]
    assert bits_equal(pool[used], p_ref[used])
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))
    assert bits_equal(buf[:, D * (W - 1):], buf0[:, D * (W - 1):])


# the other config paths of the table-driven kernels (the tests above run the tables' choices)

@pytest.mark.parametrize("cfg", [dict(ROWS=1, BLOCK_D=1024, num_warps=4, FLAT=True),
                                 dict(ROWS=4, BLOCK_D=256, num_warps=4, FLAT=True),
                                 dict(ROWS=2, BLOCK_D=512, num_warps=4, FLAT=False)], ids=["r1flat", "r4flat", "cols"])
@pytest.mark.parametrize("B", [3, ROWS])
def test_causal_conv1d_update_configs_full(cfg, B):
    g = gen(12)
    S = ROWS + 100
    idx = slots(B, S, g)
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, torch.bfloat16, g, used)
    buf0 = buf.clone()
    x, w, b = randn(B, D, g=g), randn(D, W, g=g, scale=0.5), randn(D, g=g)
    out = torch.full((B, D), NAN, dtype=torch.bfloat16, device=DEV)
    get("causal_conv1d_update", "triton").fn(x, pool, w, b, idx, out, activation="silu", config=cfg)
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    ref = torch.empty_like(out)
    R.causal_conv1d_update(x, p_ref, w, b, idx, ref, activation="silu")
    live = idx >= 0
    assert (out[~live] == 0).all() and rel(out[live], ref[live]) < TOL[torch.bfloat16]
    assert bits_equal(pool[used], p_ref[used])
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))
    assert bits_equal(buf[:, D * (W - 1):], buf0[:, D * (W - 1):])


def test_causal_conv1d_update_transposed_pool_full():
    """A pool whose slot rows are not contiguous ([S, W-1, D] storage): the per-column state path."""
    g = gen(13)
    B, S = 512, 600
    idx = slots(B, S, g)
    used = idx[idx >= 0].long()
    buf = torch.full((S, W - 1, D), NAN, dtype=torch.bfloat16, device=DEV)
    pool = buf.transpose(1, 2)
    pool[used] = randn(used.numel(), D, W - 1, g=g)
    p_ref, buf0 = pool.clone(), buf.clone()
    x, w, b = randn(B, D, g=g), randn(D, W, g=g, scale=0.5), randn(D, g=g)
    out = torch.full((B, D), NAN, dtype=torch.bfloat16, device=DEV)
    get("causal_conv1d_update", "triton").fn(x, pool, w, b, idx, out, activation="silu")
    ref = torch.empty_like(out)
    R.causal_conv1d_update(x, p_ref, w, b, idx, ref, activation="silu")
    live = idx >= 0
    assert (out[~live] == 0).all() and rel(out[live], ref[live]) < TOL[torch.bfloat16]
    assert torch.equal(pool[used], p_ref[used]) and bits_equal(unused_rows(buf, used), unused_rows(buf0, used))


@pytest.mark.parametrize("cfg", [dict(ROWS=2, num_warps=1, FLAT=True), dict(ROWS=16, num_warps=8, FLAT=True),
                                 dict(ROWS=4, num_warps=4, FLAT=False)], ids=["r2", "r16", "cols"])
@pytest.mark.parametrize("B", [5, ROWS])
def test_conv1d_update_split_configs_full(cfg, B):
    g = gen(14)
    S = ROWS + 50
    idx = slots(B, S, g)
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, torch.bfloat16, g, used)
    buf0 = buf.clone()
    qkvz, ba = randn(B, DZ, g=g), randn(B, 2 * HV, g=g)
    w, b = randn(D, W, g=g, scale=0.5), randn(D, g=g)
    kw = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout="contiguous", activation="silu")
    outs = tuple(o[:B] for o in split_outputs(ROWS, torch.bfloat16))
    refs = tuple(torch.empty_like(o) for o in outs)
    get("conv1d_update_split", "triton").fn(qkvz, ba, pool, w, b, idx, *outs, **kw, config=cfg)
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    R.conv1d_update_split(qkvz, ba, p_ref, w, b, idx, *refs, **kw)
    live = idx >= 0
    assert (outs[0][~live] == 0).all() and rel(outs[0][live], refs[0][live]) < TOL[torch.bfloat16]
    for o, r in zip(outs[1:], refs[1:]):
        assert bits_equal(o, r)
    assert bits_equal(pool[used], p_ref[used])
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))


@pytest.mark.parametrize("cfg", [dict(BLOCK_T=128, CHUNK=4, BLOCK_D=512, num_warps=2),
                                 dict(BLOCK_T=16, CHUNK=16, BLOCK_D=256, num_warps=1),
                                 dict(BLOCK_T=32, CHUNK=32, BLOCK_D=256, num_warps=4)],
                         ids=["loop", "tile16", "tile32-2ch"])
def test_causal_conv1d_configs_full(cfg):
    g = gen(15)
    lengths = [0, 1, 2, 3, ROWS // 12, 0, ROWS // 4, 5, ROWS // 6, 0, 0, 130, 4, 4, 4]
    lengths[9] = ROWS - sum(lengths)
    N = len(lengths)
    S = N + 5
    idx = torch.randperm(S, generator=g, device=DEV)[:N].to(torch.int64)
    idx[6] = -1
    used = idx[idx >= 0].long()
    pool, buf = conv_pool(S, torch.bfloat16, g, used)
    buf0 = buf.clone()
    init = torch.tensor([i % 3 != 1 for i in range(N)], device=DEV)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int64, device=DEV)
    x, w, b = randn(ROWS, D, g=g), randn(D, W, g=g, scale=0.5), randn(D, g=g)
    out = torch.full((ROWS, D), NAN, dtype=torch.bfloat16, device=DEV)
    get("causal_conv1d", "triton").fn(x, w, b, cu, pool, idx, init, out, activation="silu", config=cfg)
    p_ref = buf0[:, :D * (W - 1)].view(S, D, W - 1).clone()
    ref = torch.empty_like(out)
    R.causal_conv1d(x, w, b, cu, p_ref, idx, init, ref, activation="silu")
    tok_live = torch.repeat_interleave(idx >= 0, torch.tensor(lengths, device=DEV))
    assert (out[~tok_live] == 0).all() and rel(out[tok_live], ref[tok_live]) < TOL[torch.bfloat16]
    assert bits_equal(pool[used], p_ref[used])
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rms_norm_gated_full(dtype):
    g = gen(5)
    x, z, w = randn(ROWS, HV, V, g=g, dtype=dtype, scale=3.0), randn(ROWS, HV, V, g=g, dtype=dtype), randn(V, g=g,
                                                                                                            dtype=dtype)
    out = torch.full_like(x, NAN)
    get("rms_norm_gated", "triton").fn(x, z, w, out, eps=1e-6)
    ref = torch.empty_like(x)
    R.rms_norm_gated(x, z, w, ref, eps=1e-6)
    assert rel(out, ref) < TOL[dtype]


@pytest.mark.parametrize("backend", ["triton", "amd-triton"])
@pytest.mark.parametrize("fp8_dtype,fp8_max", [(torch.float8_e4m3fn, 448.0), (torch.float8_e4m3fnuz, 224.0)],
                         ids=["e4m3fn", "e4m3fnuz"])
@pytest.mark.parametrize("gs", [128, 64])
def test_rms_norm_gated_fp8_full(backend, fp8_dtype, fp8_max, gs):
    """e4m3fn goes through the hardware cvt on sm_89+, e4m3fnuz through the software rounding."""
    g = gen(6)
    M = ROWS * HV
    x, z, w = randn(M, V, g=g, scale=3.0), randn(M, V, g=g), randn(V, g=g)
    y = torch.empty(M, V, dtype=fp8_dtype, device=DEV)
    s = torch.full((M, V // gs), NAN, device=DEV)
    get("rms_norm_gated_fp8", backend).fn(x, z, w, y, s, eps=1e-6, group_size=gs, fp8_max=fp8_max)
    ry, rs = torch.empty_like(y), torch.empty_like(s)
    R.rms_norm_gated_fp8(x, z, w, ry, rs, eps=1e-6, group_size=gs, fp8_max=fp8_max)
    assert rel(s, rs) < 1e-5
    yf = torch.empty(M, V, device=DEV)
    R.rms_norm_gated(x, z, w, yf, eps=1e-6)
    grp = yf.double().view(M, V // gs, gs)
    deq = y.double().view(M, V // gs, gs) * s.double()[..., None]
    bound = grp.abs() * 2.0 ** -4 + s.double()[..., None] * 2.0 ** -9 + 1e-12
    assert ((deq - grp).abs() <= bound).all()
    mismatch = (y.view(torch.uint8) != ry.view(torch.uint8)).float().mean().item()
    assert mismatch < 1e-3, mismatch


# ---------------------------------------------------------------------------------------------------
# decode_packed (amd-triton) on real hardware

def decode_inputs(B, layout, state_dtype, g, dtype=torch.bfloat16):
    S = B + 16
    mixed = randn(B, D, g=g, dtype=dtype)
    a, b = randn(B, HV, g=g, dtype=dtype), randn(B, HV, g=g, dtype=dtype)
    A_log = torch.empty(HV, device=DEV).uniform_(-4, -1, generator=g)
    dt_bias = torch.empty(HV, device=DEV).uniform_(-1, 1, generator=g)
    inner = (HV, V, K) if layout == "vk" else (HV, K, V)
    pool = torch.full((S, *inner), NAN, dtype=state_dtype, device=DEV)
    idx = torch.randperm(S, generator=g, device=DEV)[:B]
    if B > 1:
        idx[1::5] = -1
    used = idx[idx >= 0]
    pool[used] = randn(used.numel(), *inner, g=g, dtype=state_dtype, scale=0.3)
    return mixed, a, b, A_log, dt_bias, pool, idx.to(torch.int64), used


@pytest.mark.parametrize("B", [1, 64, 2048])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_packed_amd_full(B, layout, state_dtype, amd_arch):
    g = gen(7)
    dtype = torch.float32 if state_dtype == torch.float32 and B == 64 else torch.bfloat16
    mixed, a, b, A_log, dt_bias, pool, idx, used = decode_inputs(B, layout, state_dtype, g, dtype)
    p0 = pool.clone()
    p_ref = pool.clone()
    out = torch.full((B, HV, V), NAN, dtype=dtype, device=DEV)
    ref = torch.empty_like(out)
    kw = dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    get("decode_packed", "amd-triton").fn(mixed, a, b, A_log, dt_bias, pool, idx, out, **kw)
    R.decode_packed(mixed, a, b, A_log, dt_bias, p_ref, idx, ref, **kw)
    t = 1e-2 if state_dtype == torch.bfloat16 else TOL[dtype]
    live = idx >= 0
    if (~live).any():
        assert (out[~live] == 0).all()
    assert rel(out[live], ref[live]) < t and rel(pool[used], p_ref[used]) < t
    assert bits_equal(unused_rows(pool, used), unused_rows(p0, used))


def test_decode_packed_amd_drift_4096_steps(amd_arch):
    """4096 consecutive steps, fp32 pool and inputs, at full width: tracks fp32 torch throughout."""
    g = gen(8)
    B, steps = 4, 4096
    mixed, a, b, A_log, dt_bias, pool, idx, used = decode_inputs(B, "vk", torch.float32, g, torch.float32)
    idx = torch.arange(B, device=DEV)
    pool[:B] = randn(B, HV, V, K, g=g, dtype=torch.float32, scale=0.3)
    p_ref = pool.clone()
    o1, o2 = torch.empty(B, HV, V, device=DEV), torch.empty(B, HV, V, device=DEV)
    kw = dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    fn = get("decode_packed", "amd-triton").fn
    worst = torch.zeros((), dtype=torch.float64, device=DEV)
    for _ in range(steps):
        mixed, a, b = randn(B, D, g=g, dtype=torch.float32), randn(B, HV, g=g, dtype=torch.float32), \
            randn(B, HV, g=g, dtype=torch.float32)
        fn(mixed, a, b, A_log, dt_bias, pool, idx, o1, **kw)
        R.decode_packed(mixed, a, b, A_log, dt_bias, p_ref, idx, o2, **kw)
        worst = torch.maximum(worst, (o1 - o2).double().norm() / o2.double().norm())
    assert worst.item() < 1e-5
    assert rel(pool[:B], p_ref[:B]) < 1e-5


# ---------------------------------------------------------------------------------------------------
# CUDA graphs: the decode front end and decode_packed capture and replay (no host syncs)

def test_decode_path_cuda_graph():
    g = gen(9)
    B, S = 64, 80
    idx = slots(B, S, g)
    used = idx[idx >= 0].long()
    pool, _ = conv_pool(S, torch.bfloat16, g, used)
    qkvz, ba = randn(B, DZ, g=g), randn(B, 2 * HV, g=g)
    w, bias = randn(D, W, g=g, scale=0.5), randn(D, g=g)
    outs = split_outputs(B, torch.bfloat16)
    _, a, b, A_log, dt_bias, spool, sidx, _ = decode_inputs(B, "vk", torch.float32, g)
    o = torch.empty(B, HV, V, dtype=torch.bfloat16, device=DEV)
    skw = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout="interleaved", activation="silu")
    dkw = dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")

    def step():
        get("conv1d_update_split", "triton").fn(qkvz, ba, pool, w, bias, idx, *outs, **skw)
        get("decode_packed", "amd-triton").fn(outs[0], outs[3], outs[2], A_log, dt_bias, spool, sidx, o, **dkw)

    pool0, spool0 = pool.clone(), spool.clone()
    step()                                       # compile outside the capture
    torch.cuda.synchronize()
    pool.copy_(pool0)
    spool.copy_(spool0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    pool.copy_(pool0)
    spool.copy_(spool0)
    graph.replay()
    torch.cuda.synchronize()
    o_graph, pool_graph, spool_graph = o.clone(), pool.clone(), spool.clone()
    pool.copy_(pool0)
    spool.copy_(spool0)
    step()
    torch.cuda.synchronize()
    assert bits_equal(o_graph, o) and bits_equal(pool_graph, pool) and bits_equal(spool_graph, spool)
