"""CuTeDSL decode family on a real Hopper/Blackwell GPU at the Qwen3-Next shape (H=16, HV=32, K=V=128).

    pytest -m gpu -v tests/gpu/test_cutedsl_gpu.py            (add -s to see the per-case error lines)

Every case prints `[case] rel=... (tol ...)`; a failure says where the error sits (which batch row, v-head,
V split, slot) and how it looks (cosine ~0: layout mix-up; zeros; NaN), so one run tells what to fix.
Covers: decode vs the fp32 reference and vs the Triton kernel (B=1 and 1024, vk/kv, fp32/bf16 pools,
padding slots, NaN-poisoned unused slots and output), every tile the sweep times and the table picks
(decode, both layouts and pool dtypes; the MTP sweep case), the early-load / streamed-row options through
decode_mtp T=1 and decode_packed, fp32 activations,
stride-padded pools (aligned and unaligned slot stride), a pool past 2^31 elements (int64 offsets),
decode_packed (aligned and 2-byte-aligned rows), a 2048-step recurrence, CUDA-graph capture/replay, no
recompile across batch sizes of one bucket, decode_mtp (T=2/4/8 chain, tree parents with read-back and
recompute, state update, intermediate_indices with padding), and gdn.ops dispatch to cutedsl.
"""
import pytest
import torch
from _helpers import cutedsl_gpu_marks

from gdn.common import probe

pytestmark = cutedsl_gpu_marks()

H, HV, K, V = 16, 32, 128, 128
DEV = "cuda"
NAN = float("nan")
F32, BF16 = torch.float32, torch.bfloat16
SHORT = {F32: "fp32", BF16: "bf16"}


@pytest.fixture(autouse=True, scope="module")
def _setup():
    arch = probe.device_info().arch
    if arch not in ("sm_90", "sm_100"):
        pytest.skip(f"the cutedsl backend serves sm_90 / sm_100, this GPU is {arch}")
    torch.backends.cuda.matmul.allow_tf32 = False
    from gdn import ops
    ops.load_backends()
    yield


def fn(op, backend="cutedsl"):
    from gdn.common.registry import get
    return get(op, backend).fn


def ref(op):
    return fn(op, "reference")


# ---------------------------------------------------------------------------------------------------
# comparison with diagnostics

def tol_for(in_dtype, state_dtype):
    if state_dtype == BF16:
        return 1e-2
    return 5e-3 if in_dtype != F32 else 1e-5


def rel(x, r):
    x, r = x.double(), r.double()
    return ((x - r).norm() / r.norm().clamp_min(1e-30)).item()


def diagnose(x, r, dims):
    """Where and how x differs from r (x, r: same shape; dims names the axes)."""
    x, r = x.double(), r.double()
    lines = []
    nan = ~torch.isfinite(x)
    if nan.any():
        first = [int(i) for i in nan.nonzero()[0]]
        lines.append(f"{int(nan.sum())} non-finite values, first at {dict(zip(dims, first))}")
        x = torch.where(nan, torch.zeros_like(x), x)
    err = (x - r).abs()
    idx = [int(i) for i in (err == err.max()).nonzero()[0]]
    lines.append(f"max abs err {err.max().item():.3e} at {dict(zip(dims, idx))}: got {x[tuple(idx)].item():.6g} "
                 f"want {r[tuple(idx)].item():.6g}")
    cos = (x.flatten() @ r.flatten() / (x.norm() * r.norm()).clamp_min(1e-30)).item()
    lines.append(f"cosine {cos:.4f}; zeros got {(x == 0).double().mean().item():.3f} "
                 f"want {(r == 0).double().mean().item():.3f}")
    scale = r.abs().mean().clamp_min(1e-30)
    for d, name in enumerate(dims[:-1]):
        per = (err / scale).transpose(0, d).reshape(x.shape[d], -1).amax(1)
        bad = (per > 1e-2).nonzero().flatten().tolist()
        if bad and len(bad) < x.shape[d]:
            lines.append(f"bad {name}: {bad[:16]}{' ...' if len(bad) > 16 else ''} of {x.shape[d]}")
    if len(dims) >= 1 and x.shape[-1] >= 8:
        n = x.shape[-1]
        per = (err / scale).reshape(-1, n).amax(0)
        bad = (per > 1e-2).nonzero().flatten().tolist()
        if bad and len(bad) < n:
            lines.append(f"bad {dims[-1]} (last axis) positions: {bad[:32]}")
    return "\n    ".join(lines)


def check(name, got, want, tol, dims):
    e = rel(got, want) if torch.isfinite(got).all() else float("inf")
    print(f"[{name}] rel={e:.2e} (tol {tol:.0e})")
    assert e < tol, f"{name}: rel err {e:.3e} >= {tol:.0e}\n    {diagnose(got, want, dims)}"


def bits_equal(x, y):
    return torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))


# ---------------------------------------------------------------------------------------------------
# inputs

def pshape(layout):
    return (HV, V, K) if layout == "vk" else (HV, K, V)


def pdims(layout):
    return ("slot", "hv", "v", "k") if layout == "vk" else ("slot", "hv", "k", "v")


def inputs(B, T=None, dtype=BF16, seed=0, h=H, hv=HV):
    g = torch.Generator(device=DEV).manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    r = lambda *s: torch.randn(*lead, *s, generator=g, device=DEV).to(dtype)  # noqa: E731
    return dict(q=r(h, K), k=r(h, K), v=r(hv, V), a=r(hv), b=r(hv),
                A_log=torch.empty(hv, device=DEV).uniform_(-4, -1, generator=g),
                dt_bias=torch.randn(hv, generator=g, device=DEV) * 0.5)


def make_pool(S, layout, sd, slot_pad=0, seed=1):
    """[S, HV, ...] pool, NaN everywhere (also in the padding between slots when slot_pad > 0)."""
    inner = HV * V * K
    if slot_pad:
        buf = torch.full((S * (inner + slot_pad),), NAN, dtype=sd, device=DEV)
        return buf.as_strided((S, *pshape(layout)), (inner + slot_pad, V * K, pshape(layout)[2], 1)), buf
    pool = torch.full((S, *pshape(layout)), NAN, dtype=sd, device=DEV)
    return pool, pool


def fill_slots(pool, slots, seed=2):
    g = torch.Generator(device=DEV).manual_seed(seed)
    used = slots[slots >= 0].long()
    pool[used] = (torch.randn(len(used), *pool.shape[1:], generator=g, device=DEV) * 0.5).to(pool.dtype)
    return used


def choose_slots(B, S, pad_every=7, seed=3, dtype=torch.int32):
    g = torch.Generator(device=DEV).manual_seed(seed)
    slots = torch.randperm(S, generator=g, device=DEV)[:B]
    if B > 2:
        slots[1::pad_every] = -1
    return slots.to(dtype)


def run_decode(backend, x, pool, slots, layout, out_dtype=None, **kw):
    out = torch.full((slots.shape[0], HV, V), NAN, dtype=out_dtype or x["v"].dtype, device=DEV)
    fn("decode", backend)(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], pool, slots, out,
                          scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout, **kw)
    return out


def check_decode(name, x, pool0, slots, layout, tol, buf0=None, pool_view=None, **kw):
    """cutedsl vs reference (and Triton): outputs, updated slots, padding rows zero, untouched slots."""
    torch.cuda.synchronize()
    if pool_view is not None:      # a strided view into buf0: compare the whole buffer afterwards
        buf = buf0.clone()
        pool = pool_view(buf)
    else:
        pool = pool0.clone()
    out = run_decode("cutedsl", x, pool, slots, layout, **kw)
    torch.cuda.synchronize()
    rpool = pool0.clone() if pool_view is None else pool_view(buf0.clone())
    rout = run_decode("reference", x, rpool, slots, layout)
    used = slots[slots >= 0].long()
    pad = (slots < 0).nonzero().flatten()
    check(f"{name} out", out.float(), rout.float(), tol, ("b", "hv", "v"))
    if pad.numel():
        assert (out[pad] == 0).all(), f"{name}: padding rows {pad.tolist()[:8]} not zero"
    if used.numel():
        check(f"{name} state", pool[used].float(), rpool[used].float(), tol, pdims(layout))
    if pool_view is None:
        untouched = torch.ones(pool.shape[0], dtype=torch.bool, device=DEV)
        untouched[used] = False
        assert bits_equal(pool[untouched], pool0[untouched]), f"{name}: an unused slot changed"
    else:
        mask = torch.ones(buf.numel(), dtype=torch.bool, device=DEV)
        sv = pool_view(torch.arange(buf.numel(), device=DEV, dtype=torch.float64))
        mask[sv[used].flatten().long()] = False
        assert bits_equal(buf[mask], buf0[mask]), f"{name}: memory outside the updated slots changed"
    return out, pool


# ---------------------------------------------------------------------------------------------------
# decode

@pytest.mark.parametrize("sd", [F32, BF16], ids=["fp32pool", "bf16pool"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("B", [1, 1024])
def test_decode_vs_reference_and_triton(B, layout, sd):
    S = B + 41
    x = inputs(B)
    pool0, _ = make_pool(S, layout, sd)
    slots = choose_slots(B, S)
    fill_slots(pool0, slots)
    name = f"decode B={B} {layout} {SHORT[sd]}"
    out, pool = check_decode(name, x, pool0, slots, layout, tol_for(BF16, sd))
    try:
        tpool = pool0.clone()
        tout = run_decode("triton", x, tpool, slots, layout)
    except Exception as e:                       # the Triton backend is another helper's; report, don't fail
        print(f"[{name}] triton comparison skipped: {type(e).__name__}: {e}")
        return
    check(f"{name} vs triton out", out.float(), tout.float(), tol_for(BF16, sd), ("b", "hv", "v"))
    used = slots[slots >= 0].long()
    check(f"{name} vs triton state", pool[used].float(), tpool[used].float(), tol_for(BF16, sd), pdims(layout))


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_decode_fp32_activations_int64_slots(layout):
    B, S = 77, 100
    x = inputs(B, dtype=F32)
    pool0, _ = make_pool(S, layout, F32)
    slots = choose_slots(B, S, dtype=torch.int64)
    fill_slots(pool0, slots)
    check_decode(f"decode fp32 in {layout}", x, pool0, slots, layout, 1e-5)


def _arch():
    arch = probe.device_info().arch if torch.cuda.is_available() else "sm_90"
    return arch if arch in ("sm_90", "sm_100") else "sm_90"


def _sweep_cases():
    """Every tile `bench/bench_cutedsl_decode.py --sweep` times (C.sweep_tiles) plus every tile the table
    picks, per layout and pool dtype: a GPU run proves each one before the sweep trusts its timing."""
    from gdn.nvidia.cutedsl import _common as C
    arch = _arch()
    cases = []
    for layout in ("vk", "kv"):
        for sd in ("fp32", "bf16"):
            tiles = C.sweep_tiles(arch, layout, sd)
            tiles += [t for t in C.table_tiles(arch, layout, sd) if t not in tiles]
            for t in tiles:
                cases.append(pytest.param(layout, sd, t, id=f"{layout}-{sd}-{C.tile_label(t)}"))
    return cases


@pytest.mark.parametrize("layout,sd,tile", _sweep_cases())
def test_decode_every_sweep_tile(layout, sd, tile):
    sdt = {"fp32": F32, "bf16": BF16}[sd]
    B, S = 5, 16
    x = inputs(B, seed=11)
    pool0, _ = make_pool(S, layout, sdt)
    slots = choose_slots(B, S, pad_every=3)
    fill_slots(pool0, slots)
    check_decode(f"tile {tile} {layout} {sd}", x, pool0, slots, layout, tol_for(BF16, sdt), _tile=tile)


def _mtp_sweep_cases():
    from gdn.nvidia.cutedsl import _common as C
    return [pytest.param(t, id=C.tile_label(t)) for t in C.sweep_tiles(_arch(), "vk", "fp32", 4)]


@pytest.mark.parametrize("tile", _mtp_sweep_cases())
def test_mtp_every_sweep_tile(tile):
    """The sweep's MTP case (vk fp32 pool, T=4 chain, fp32 intermediates, pool untouched) at every tile."""
    B, S, T = 7, 12, 4
    x = inputs(B, T=T, seed=90)
    slots = choose_slots(B, S, pad_every=3)
    pool0, _ = make_pool(S, "vk", F32)
    fill_slots(pool0, slots)
    res = {}
    for backend in ("cutedsl", "reference"):
        pool = pool0.clone()
        inter = torch.full((B, T, *pshape("vk")), NAN, dtype=F32, device=DEV)
        out = torch.full((B, T, HV, V), NAN, dtype=BF16, device=DEV)
        kw = dict(_tile=tile) if backend == "cutedsl" else {}
        fn("decode_mtp", backend)(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], pool, slots,
                                  out, inter, None, None, disable_state_update=True, scale=K ** -0.5,
                                  use_qk_l2norm=True, state_layout="vk", **kw)
        torch.cuda.synchronize()
        res[backend] = (out, pool, inter)
    (out, pool, it), (rout, _, rit) = res["cutedsl"], res["reference"]
    name = f"mtp sweep tile {tile}"
    check(f"{name} out", out.float(), rout.float(), 5e-3, ("b", "t", "hv", "v"))
    rows = (slots >= 0).nonzero().flatten()
    check(f"{name} intermediates", it[rows].float(), rit[rows].float(), 5e-3, ("row", "t") + pdims("vk")[1:])
    assert bits_equal(pool, pool0), f"{name}: the pool changed"


@pytest.mark.parametrize("tile", [(8, 4, "s"), (16, 4, "es"), (2, 4, "e")], ids=["8x4s", "16x4es", "2x4e"])
@pytest.mark.parametrize("sd", [F32, BF16], ids=["fp32pool", "bf16pool"])
def test_mtp_T1_streamed_rows_with_intermediates(sd, tile):
    """decode_mtp with T=1 runs the streamed-row path with an intermediate buffer (rows picked by
    intermediate_indices, one of them negative) and the state update."""
    from gdn.nvidia.cutedsl import _common as C
    if not C.tile_ok("vk", SHORT[sd], K, V, tile, C.vec_bytes_for(_arch()), 1):
        pytest.skip(f"{tile} does not fit {SHORT[sd]} on {_arch()}")
    B, S, T = 9, 14, 1
    x = inputs(B, T=T, seed=95)
    slots = choose_slots(B, S, pad_every=4)
    pool0, _ = make_pool(S, "vk", sd)
    fill_slots(pool0, slots)
    R = B + 2
    inter0 = torch.full((R, T, *pshape("vk")), NAN, dtype=sd, device=DEV)
    g = torch.Generator(device=DEV).manual_seed(8)
    inter_idx = torch.randperm(R, generator=g, device=DEV)[:B].to(torch.int32)
    inter_idx[2] = -1
    res = {}
    for backend in ("cutedsl", "reference"):
        pool, inter = pool0.clone(), inter0.clone()
        out = torch.full((B, T, HV, V), NAN, dtype=BF16, device=DEV)
        kw = dict(_tile=tile) if backend == "cutedsl" else {}
        fn("decode_mtp", backend)(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], pool, slots,
                                  out, inter, inter_idx, None, disable_state_update=False, scale=K ** -0.5,
                                  use_qk_l2norm=True, state_layout="vk", **kw)
        torch.cuda.synchronize()
        res[backend] = (out, pool, inter)
    (out, pool, it), (rout, rpool, rit) = res["cutedsl"], res["reference"]
    name = f"mtp T=1 {tile} {SHORT[sd]}"
    tol = tol_for(BF16, sd)
    check(f"{name} out", out.float(), rout.float(), tol, ("b", "t", "hv", "v"))
    used = slots[slots >= 0].long()
    check(f"{name} pool", pool[used].float(), rpool[used].float(), tol, pdims("vk"))
    rows = inter_idx[(slots >= 0) & (inter_idx >= 0)].long()
    check(f"{name} intermediates", it[rows].float(), rit[rows].float(), tol, ("row", "t") + pdims("vk")[1:])
    keep = torch.ones(R, dtype=torch.bool, device=DEV)
    keep[rows] = False
    assert bits_equal(it[keep], inter0[keep]), f"{name}: an intermediate row that should stay untouched changed"
    pad = (slots < 0).nonzero().flatten()
    assert (out[pad] == 0).all(), f"{name}: padding rows not zero"


@pytest.mark.parametrize("pad", [64, 3], ids=["aligned-pad", "unaligned-pad"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_decode_stride_padded_pool(layout, pad):
    B, S = 19, 24
    x = inputs(B, seed=5)
    pool0, buf0 = make_pool(S, layout, F32, slot_pad=pad)
    slots = choose_slots(B, S)
    fill_slots(pool0, slots)
    inner = HV * V * K

    def view(buf):
        return buf.as_strided((S, *pshape(layout)), (inner + pad, V * K, pshape(layout)[2], 1))

    check_decode(f"padded pool +{pad} {layout}", x, pool0, slots, layout, tol_for(BF16, F32), buf0=buf0,
                 pool_view=view)


def test_decode_int64_offsets_past_2_31():
    """A bf16 pool of 4100 slots (2.15e9 elements): slot offsets overflow int32 past slot 4096."""
    S = 4100
    try:
        pool = torch.empty((S, *pshape("vk")), dtype=BF16, device=DEV)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for a 4.3 GB pool")
    assert pool.numel() > 2 ** 31
    slots = torch.tensor([S - 1, 4097, -1, 5, 4096], dtype=torch.int64, device=DEV)
    used = slots[slots >= 0]
    g = torch.Generator(device=DEV).manual_seed(9)
    pool[used] = torch.randn(len(used), *pool.shape[1:], generator=g, device=DEV).to(BF16)
    before = pool[used].clone()
    neighbours = pool[[S - 2, 4095, 4098]].clone()
    x = inputs(len(slots), seed=9)
    out = run_decode("cutedsl", x, pool, slots, "vk")
    rpool = torch.empty((len(used), *pool.shape[1:]), dtype=BF16, device=DEV)
    rpool.copy_(before)
    rslots = torch.tensor([0, 1, -1, 2, 3], dtype=torch.int64, device=DEV)
    rout = run_decode("reference", x, rpool, rslots, "vk")
    check("int64 offsets out", out.float(), rout.float(), 1e-2, ("b", "hv", "v"))
    check("int64 offsets state", pool[used].float(), rpool.float(), 1e-2, pdims("vk"))
    assert bits_equal(pool[[S - 2, 4095, 4098]], neighbours), "a neighbouring slot changed"
    del pool, rpool
    torch.cuda.empty_cache()


@pytest.mark.parametrize("sd", [F32, BF16], ids=["fp32pool", "bf16pool"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "odd-offset"])
def test_decode_packed(layout, sd, aligned):
    _packed_case(layout, sd, aligned, None)


@pytest.mark.parametrize("sd", [F32, BF16], ids=["fp32pool", "bf16pool"])
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "odd-offset"])
def test_decode_packed_early_streamed(sd, aligned):
    """decode_packed with the early-load / streamed-row options (vk), also on 2-byte-aligned rows."""
    _packed_case("vk", sd, aligned, (8, 4, "es"))


def _packed_case(layout, sd, aligned, tile):
    B, S = 37, 50
    x = inputs(B, seed=13)
    mixed = torch.cat([x["q"].flatten(1), x["k"].flatten(1), x["v"].flatten(1)], dim=1)
    if not aligned:    # row starts 2-byte aligned only: the narrow-vector variant
        buf = torch.empty(B, mixed.shape[1] + 1, dtype=BF16, device=DEV)
        buf[:, 1:] = mixed
        mixed = buf[:, 1:]
    pool0, _ = make_pool(S, layout, sd)
    slots = choose_slots(B, S)
    fill_slots(pool0, slots)
    pool, rpool = pool0.clone(), pool0.clone()
    out = torch.full((B, HV, V), NAN, dtype=BF16, device=DEV)
    rout = torch.empty_like(out)
    kw = dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    fn("decode_packed")(mixed, x["a"], x["b"], x["A_log"], x["dt_bias"], pool, slots, out, _tile=tile, **kw)
    ref("decode_packed")(mixed, x["a"], x["b"], x["A_log"], x["dt_bias"], rpool, slots, rout, **kw)
    name = f"packed {layout} {SHORT[sd]} {'aligned' if aligned else 'odd'}" + (f" {tile}" if tile else "")
    check(f"{name} out", out.float(), rout.float(), tol_for(BF16, sd), ("b", "hv", "v"))
    used = slots[slots >= 0].long()
    check(f"{name} state", pool[used].float(), rpool[used].float(), tol_for(BF16, sd), pdims(layout))


@pytest.mark.parametrize("sd", [F32, BF16], ids=["fp32pool", "bf16pool"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_recurrence_2048_steps(layout, sd):
    """2048 decode steps feeding the state back (fp32 activations): drift stays within tolerance."""
    B, S, steps = 4, 6, 2048
    in_dt = F32
    slots = torch.tensor([3, -1, 0, 5], dtype=torch.int32, device=DEV)
    pool0, _ = make_pool(S, layout, sd)
    fill_slots(pool0, slots)
    pool, rpool = pool0.clone(), pool0.clone()
    g = torch.Generator(device=DEV).manual_seed(21)
    A_log = torch.empty(HV, device=DEV).uniform_(-4, -1, generator=g)
    dt_bias = torch.randn(HV, generator=g, device=DEV) * 0.5
    worst = 0.0
    for t in range(steps):
        r = lambda *s: torch.randn(B, *s, generator=g, device=DEV).to(in_dt)  # noqa: E731
        x = dict(q=r(H, K), k=r(H, K), v=r(HV, V), a=r(HV), b=r(HV), A_log=A_log, dt_bias=dt_bias)
        out = run_decode("cutedsl", x, pool, slots, layout)
        rout = run_decode("reference", x, rpool, slots, layout)
        if t % 128 == 127 or t == steps - 1:
            worst = max(worst, rel(out.float(), rout.float()))
    used = slots[slots >= 0].long()
    tol = tol_for(in_dt, sd)
    name = f"recurrence {layout} {SHORT[sd]}"
    print(f"[{name}] worst sampled out rel={worst:.2e}")
    check(f"{name} final state", pool[used].float(), rpool[used].float(), tol, pdims(layout))
    assert worst < tol, f"{name}: output rel err reached {worst:.3e}"


@pytest.mark.parametrize("sd", [F32, BF16], ids=["fp32pool", "bf16pool"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_cuda_graph_capture_replay(layout, sd):
    B, S = 48, 64
    slots = choose_slots(B, S)
    pool0, _ = make_pool(S, layout, sd)
    fill_slots(pool0, slots)
    pool, rpool = pool0.clone(), pool0.clone()
    x = inputs(B, seed=31)
    static = {k_: v_.clone() for k_, v_ in x.items()}
    out = torch.empty(B, HV, V, dtype=BF16, device=DEV)
    call = lambda: fn("decode")(static["q"], static["k"], static["v"], static["a"], static["b"],  # noqa: E731
                                static["A_log"], static["dt_bias"], pool, slots, out, scale=K ** -0.5,
                                use_qk_l2norm=True, state_layout=layout)
    # warm up (compile, module load) on a scratch pool, then capture
    scratch = pool.clone()
    fn("decode")(static["q"], static["k"], static["v"], static["a"], static["b"], static["A_log"],
                 static["dt_bias"], scratch, slots, out, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    torch.cuda.synchronize()
    assert bits_equal(pool, pool0), "capture ran the kernel"
    for step in range(3):
        x = inputs(B, seed=40 + step)
        for k_ in static:
            static[k_].copy_(x[k_])
        graph.replay()
        rout = run_decode("reference", x, rpool, slots, layout)
        torch.cuda.synchronize()
        check(f"graph {layout} {SHORT[sd]} replay {step} out", out.float(), rout.float(), tol_for(BF16, sd),
              ("b", "hv", "v"))
        used = slots[slots >= 0].long()
        check(f"graph {layout} {SHORT[sd]} replay {step} state", pool[used].float(), rpool[used].float(),
              tol_for(BF16, sd), pdims(layout))


def test_no_recompile_across_batch_sizes():
    from gdn.nvidia.cutedsl import _common as C
    S = 200
    pool0, _ = make_pool(S, "vk", F32)
    fill_slots(pool0, torch.arange(S, device=DEV))
    seen = None
    for B in (65, 100, 128):           # one table bucket (B*HV in (2048, 4096])
        x = inputs(B, seed=B)
        slots = choose_slots(B, S)
        run_decode("cutedsl", x, pool0.clone(), slots, "vk")
        n = len(C._CACHE)
        seen = n if seen is None else seen
        assert n == seen, f"B={B} compiled a new variant ({n} cached, was {seen})"


# ---------------------------------------------------------------------------------------------------
# decode_mtp

def tree_parents(B, T, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    p = torch.full((B, T), -1, dtype=torch.int32)
    for t in range(1, T):
        p[:, t] = torch.randint(-1, t, (B,), generator=g, dtype=torch.int32)
    p[0, :] = torch.arange(-1, T - 1, dtype=torch.int32)        # one pure chain
    return p.to(DEV)


MTP_CASES = [
    # (T, layout, state dtype, mode)
    (2, "vk", F32, "chain-inter"), (4, "vk", F32, "chain-inter"), (8, "vk", F32, "chain-inter"),
    (4, "vk", BF16, "chain-inter"), (4, "kv", F32, "chain-inter"), (8, "kv", BF16, "chain-inter"),
    (4, "vk", F32, "chain-update"), (4, "kv", BF16, "chain-update"),
    (4, "vk", F32, "tree-inter"), (8, "vk", F32, "tree-inter"), (4, "vk", BF16, "tree-inter"),
    (4, "kv", F32, "tree-inter"), (4, "vk", F32, "tree-update"), (8, "kv", BF16, "tree-update"),
]


@pytest.mark.parametrize("T,layout,sd,mode", MTP_CASES,
                         ids=[f"T{c[0]}-{c[1]}-{'fp32' if c[2] == F32 else 'bf16'}-{c[3]}" for c in MTP_CASES])
def test_mtp_vs_reference(T, layout, sd, mode):
    B, S = 29, 40
    x = inputs(B, T=T, seed=50 + T)
    slots = choose_slots(B, S, pad_every=6)
    pool0, _ = make_pool(S, layout, sd)
    fill_slots(pool0, slots)
    tree = mode.startswith("tree")
    parent = tree_parents(B, T, seed=T) if tree else None
    inter = inter_idx = None
    if mode.endswith("inter"):
        R = B + 3
        inter = torch.full((R, T, *pshape(layout)), NAN, dtype=sd, device=DEV)
        g = torch.Generator(device=DEV).manual_seed(7)
        inter_idx = torch.randperm(R, generator=g, device=DEV)[:B].to(torch.int32)
        inter_idx[2] = -1                    # this row keeps no intermediates (tree: recompute path)
    update = mode.endswith("update")
    res = {}
    for backend in ("cutedsl", "reference"):
        pool = pool0.clone()
        it = inter.clone() if inter is not None else None
        out = torch.full((B, T, HV, V), NAN, dtype=BF16, device=DEV)
        fn("decode_mtp", backend)(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], pool, slots,
                                  out, it, inter_idx, parent, disable_state_update=not update, scale=K ** -0.5,
                                  use_qk_l2norm=True, state_layout=layout)
        torch.cuda.synchronize()
        res[backend] = (out, pool, it)
    name = f"mtp T={T} {layout} {SHORT[sd]} {mode}"
    tol = tol_for(BF16, sd)
    (out, pool, it), (rout, rpool, rit) = res["cutedsl"], res["reference"]
    check(f"{name} out", out.float(), rout.float(), tol, ("b", "t", "hv", "v"))
    pad = (slots < 0).nonzero().flatten()
    if pad.numel():
        assert (out[pad] == 0).all(), f"{name}: padding rows not zero"
    used = slots[slots >= 0].long()
    if update:
        check(f"{name} pool", pool[used].float(), rpool[used].float(), tol, pdims(layout))
    else:
        assert bits_equal(pool, pool0), f"{name}: disable_state_update=True but the pool changed"
    if it is not None:
        rows = inter_idx[(slots >= 0) & (inter_idx >= 0)].long()
        check(f"{name} intermediates", it[rows].float(), rit[rows].float(), tol,
              ("row", "t") + pdims(layout)[1:])
        keep = torch.ones(it.shape[0], dtype=torch.bool, device=DEV)
        keep[rows] = False
        assert bits_equal(it[keep], inter[keep]), f"{name}: an intermediate row that should stay untouched changed"


# ---------------------------------------------------------------------------------------------------
# through gdn.ops

def test_ops_dispatch_order():
    """CuTeDSL is available here; dispatch runs its decode first (gdn/nvidia/cutedsl/_common.py PRIORITY,
    ARCH_PRIORITY); forced, it runs and matches the reference."""
    from gdn import ops
    from gdn.common import probe
    B, S = 8, 12
    x = inputs(B, seed=61)
    slots = choose_slots(B, S)
    pool0, _ = make_pool(S, "vk", F32)
    fill_slots(pool0, slots)
    rows = ops.explain("decode", x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], pool0.clone(),
                       slots)
    print("[dispatch]", [(r["backend"], r["status"], r["reasons"]) for r in rows])
    chosen = next(r for r in rows if r["status"] == "chosen")
    cut = next(r for r in rows if r["backend"] == "cutedsl")
    assert cut["status"] != "unavailable", cut["reasons"]
    assert chosen["backend"] == "cutedsl", f"chose {chosen['backend']} on {probe.device_info().arch}"
    pool = pool0.clone()
    o = ops.decode(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], pool, slots, backend="cutedsl")
    rpool = pool0.clone()
    ro = ops.decode(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], rpool, slots,
                    backend="reference")
    check("ops.decode cutedsl", o.float(), ro.float(), 5e-3, ("b", "hv", "v"))


def test_fast_argument_path_in_use():
    """The launcher packs arguments itself after checking once that it equals CuTeDSL's marshalling; if the
    check failed here (another CuTeDSL build) it falls back to the DSL's slower path: report which."""
    from gdn.nvidia.cutedsl import _common as C
    B, S = 3, 4
    x = inputs(B, seed=71)
    pool0, _ = make_pool(S, "vk", F32)
    slots = torch.tensor([0, 2, -1], dtype=torch.int32, device=DEV)
    fill_slots(pool0, slots)
    run_decode("cutedsl", x, pool0.clone(), slots, "vk")
    flags = {sp.name(): l.fast for sp, l in C._BY_SPEC.items()}
    print("[launcher] fast argument packing:", flags)
    assert all(flags.values()), f"fell back to CuTeDSL's argument marshalling for {flags}"
