"""Triton decode / decode_packed against gdn.common.reference (CPU interpreter, or the GPU when there is one).

Small shapes (K, V = 16 or 32) so the interpreter is quick. Every test poisons outputs and unused pool
slots with NaN and checks the unused slots bit for bit.
"""
import pytest
import torch

import gdn.common.triton  # noqa: F401  (registers the triton backends)
from gdn.common import reference as R
from gdn.common.launch import recording
from gdn.common.probe import interpreter_on
from gdn.common.registry import get
from _helpers import rel, bits_equal

# On a GPU host these run compiled on the GPU; on a CPU machine under the interpreter (tests/conftest.py
# switches it on before any kernel module is imported).
DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEV == "cpu" and not interpreter_on(),
                                reason="CPU tensors need TRITON_INTERPRET=1 set before triton kernels are imported")


@pytest.fixture(autouse=True)
def _default_device():
    prev = torch.get_default_device()
    torch.set_default_device(DEV)
    yield
    torch.set_default_device(prev)


TOL = {(torch.float32, torch.float32): 1e-5, (torch.bfloat16, torch.float32): 5e-3,
       (torch.float16, torch.float32): 5e-3}


def tol(in_dtype, state_dtype):
    return 1e-2 if state_dtype == torch.bfloat16 else TOL[(in_dtype, torch.float32)]


def pool_shape(layout, HV, K, V):
    return (HV, V, K) if layout == "vk" else (HV, K, V)


def make(B, H, HV, K, V, S, *, dtype=torch.float32, state_dtype=torch.float32, layout="vk",
         idx_dtype=torch.int32, pad=(1,), gen=None):
    g = gen or torch.Generator(device=DEV).manual_seed(0)
    q = torch.randn(B, H, K, generator=g).to(dtype)
    k = torch.randn(B, H, K, generator=g).to(dtype)
    v = torch.randn(B, HV, V, generator=g).to(dtype)
    a = torch.randn(B, HV, generator=g).to(dtype)
    b = torch.randn(B, HV, generator=g).to(dtype)
    A_log = torch.empty(HV).uniform_(-4, -1, generator=g)
    dt_bias = torch.randn(HV, generator=g) * 0.5
    pool = torch.full((S, *pool_shape(layout, HV, K, V)), float("nan"), dtype=state_dtype)
    slots = torch.randperm(S, generator=g)[:B]
    for i in pad:
        if i < B:
            slots[i] = -1
    used = slots[slots >= 0]
    pool[used] = torch.randn(len(used), *pool.shape[1:], generator=g).to(state_dtype)
    return dict(q=q, k=k, v=v, a=a, b=b, A_log=A_log, dt_bias=dt_bias, pool=pool,
                idx=slots.to(idx_dtype), used=used)


def unused(pool, used):
    m = torch.ones(pool.shape[0], dtype=torch.bool)
    m[used] = False
    return pool[m]


def run_decode(backend, d, pool, out, layout, scale, l2=True):
    get("decode", backend).fn(d["q"], d["k"], d["v"], d["a"], d["b"], d["A_log"], d["dt_bias"], pool, d["idx"],
                              out, scale=scale, use_qk_l2norm=l2, state_layout=layout)


def check_decode(d, layout, in_dtype, state_dtype, *, l2=True, out=None):
    B, HV, V = d["v"].shape
    K = d["q"].shape[-1]
    scale = K ** -0.5
    p_tri, p_ref = d["pool"].clone(), d["pool"].clone()
    o_tri = out if out is not None else torch.full((B, HV, V), float("nan"), dtype=in_dtype)
    o_ref = torch.full((B, HV, V), float("nan"), dtype=in_dtype)
    run_decode("triton", d, p_tri, o_tri, layout, scale, l2)
    run_decode("reference", d, p_ref, o_ref, layout, scale, l2)
    t = tol(in_dtype, state_dtype)
    valid = d["idx"] >= 0
    assert rel(o_tri[valid], o_ref[valid]) < t
    assert (o_tri[~valid] == 0).all()
    assert rel(p_tri[d["used"]], p_ref[d["used"]]) < t
    assert bits_equal(unused(p_tri, d["used"]), unused(d["pool"], d["used"]))
    return p_tri, o_tri


@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("G", [1, 2, 4])
def test_decode_matrix(layout, state_dtype, G):
    # fp32 pools get fp32 inputs for G in (1, 4) (the 1e-5 bar) and bf16 inputs for G = 2
    in_dtype = torch.bfloat16 if (state_dtype == torch.bfloat16 or G == 2) else torch.float32
    idx_dtype = torch.int64 if G == 2 else torch.int32
    H, K, V = 2, 32, 16 if G == 4 else 32
    d = make(5, H, H * G, K, V, 9, dtype=in_dtype, state_dtype=state_dtype, layout=layout, idx_dtype=idx_dtype,
             pad=(1, 3), gen=torch.Generator(device=DEV).manual_seed(G))
    check_decode(d, layout, in_dtype, state_dtype)


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_decode_fp16_no_l2norm_odd_dims(layout):
    # K, V not powers of two (masked tiles), fp16 inputs, l2norm off
    d = make(3, 1, 2, 24, 20, 4, dtype=torch.float16, layout=layout, pad=())
    d["q"] = torch.nn.functional.normalize(d["q"].float(), dim=-1).half()
    d["k"] = torch.nn.functional.normalize(d["k"].float(), dim=-1).half()
    check_decode(d, layout, torch.float16, torch.float32, l2=False)


def test_decode_all_padding():
    d = make(3, 1, 2, 16, 16, 4, pad=(0, 1, 2))
    p = d["pool"].clone()
    o = torch.full((3, 2, 16), float("nan"))
    run_decode("triton", d, p, o, "vk", 0.25)
    assert (o == 0).all() and bits_equal(p, d["pool"])


@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_strided_pool_and_out(layout, state_dtype):
    """Slot stride larger than HV*K*V (a bigger buffer sliced), strided out=, strided q/k/v views."""
    B, H, HV, K, V, S = 4, 2, 4, 16, 32, 6
    d = make(B, H, HV, K, V, S, state_dtype=state_dtype, layout=layout, pad=(2,))
    n = HV * K * V
    buf = torch.full((S, n + 40), float("nan"), dtype=state_dtype)
    pool = buf[:, :n].view(S, *pool_shape(layout, HV, K, V))
    pool.copy_(d["pool"])
    assert pool.stride(0) == n + 40
    # q/k/v as views of wider rows (head stride == dim, row stride larger)
    qkv = torch.randn(B, 2 * H * K + HV * V + 8)
    d["q"] = qkv[:, :H * K].view(B, H, K)
    d["k"] = qkv[:, H * K:2 * H * K].view(B, H, K)
    d["v"] = qkv[:, 2 * H * K:2 * H * K + HV * V].view(B, HV, V)
    obuf = torch.full((B, HV, V + 8), float("nan"))
    out = obuf[..., :V]
    pad_before = buf[:, n:].clone()
    p_ref = d["pool"].clone()
    o_ref = torch.empty(B, HV, V)
    run_decode("triton", d, pool, out, layout, K ** -0.5)
    run_decode("reference", d, p_ref, o_ref, layout, K ** -0.5)
    t = tol(torch.float32, state_dtype)
    valid = d["idx"] >= 0
    assert rel(out[valid], o_ref[valid]) < t and (out[~valid] == 0).all()
    assert rel(pool[d["used"]], p_ref[d["used"]]) < t
    assert bits_equal(buf[:, n:], pad_before)                       # slot padding untouched
    assert bits_equal(unused(pool, d["used"]), unused(d["pool"], d["used"]))
    assert torch.isnan(obuf[..., V:]).all()                         # out padding untouched


def test_decode_repeated_steps_track_reference():
    """A few consecutive decode calls on the same slots (state feeds back)."""
    d = make(2, 1, 2, 16, 16, 3, pad=())
    p_tri, p_ref = d["pool"].clone(), d["pool"].clone()
    g = torch.Generator(device=DEV).manual_seed(7)
    for _ in range(6):
        for key, shape in (("q", (2, 1, 16)), ("k", (2, 1, 16)), ("v", (2, 2, 16)), ("a", (2, 2)), ("b", (2, 2))):
            d[key] = torch.randn(*shape, generator=g)
        o1, o2 = torch.empty(2, 2, 16), torch.empty(2, 2, 16)
        run_decode("triton", d, p_tri, o1, "vk", 0.25)
        run_decode("reference", d, p_ref, o2, "vk", 0.25)
        assert rel(o1, o2) < 1e-5
    assert rel(p_tri[d["used"]], p_ref[d["used"]]) < 1e-5


@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_packed(layout, state_dtype):
    B, H, HV, K, V, S = 4, 2, 4, 16, 32, 7
    in_dtype = torch.bfloat16 if state_dtype == torch.bfloat16 else torch.float32
    d = make(B, H, HV, K, V, S, dtype=in_dtype, state_dtype=state_dtype, layout=layout, pad=(0,),
             idx_dtype=torch.int64)
    g = torch.Generator(device=DEV).manual_seed(5)
    wide = torch.randn(B, 2 * H * K + HV * V + 16, generator=g).to(in_dtype)
    mixed = wide[:, :2 * H * K + HV * V]                 # row stride larger than the row
    p_tri, p_ref = d["pool"].clone(), d["pool"].clone()
    o_tri = torch.full((B, HV, V), float("nan"), dtype=in_dtype)
    o_ref = torch.full((B, HV, V), float("nan"), dtype=in_dtype)
    kw = dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)
    args = (d["a"], d["b"], d["A_log"], d["dt_bias"])
    get("decode_packed", "triton").fn(mixed, *args, p_tri, d["idx"], o_tri, **kw)
    R.decode_packed(mixed, *args, p_ref, d["idx"], o_ref, **kw)
    t = tol(in_dtype, state_dtype)
    valid = d["idx"] >= 0
    assert rel(o_tri[valid], o_ref[valid]) < t and (o_tri[~valid] == 0).all()
    assert rel(p_tri[d["used"]], p_ref[d["used"]]) < t
    assert bits_equal(unused(p_tri, d["used"]), unused(d["pool"], d["used"]))


# ---------------------------------------------------------------------------------------------------
# recording on meta tensors (what gdn/common/aot.py and CUDA graphs need: no host reads of data)

@pytest.mark.parametrize("arch", ["sm_90", "sm_100", "gfx942", "gfx950"])
def test_launchers_record_on_meta(arch):
    import gdn.common.triton.decode as D
    m = dict(device="meta")
    args, kw = D.meta_decode_args(B=64, layout="kv", state_dtype=torch.bfloat16, idx_dtype=torch.int64)
    with recording(arch) as launches:
        get("decode", "triton").fn(*args, **kw)
    assert len(launches) == 1
    l = launches[0]
    assert l.constexprs["VK"] is False and l.constexprs["T"] == 1 and l.signature["state"] == "*bf16"
    assert l.signature["state_indices"] == "*i64"
    a, b, A_log, dt_bias, state, idx, out = args[3:]
    with recording(arch) as launches:
        get("decode_packed", "triton").fn(torch.empty(64, 2 * 16 * 128 + 32 * 128, dtype=torch.bfloat16, **m), a, b,
                                          A_log, dt_bias, state, idx, out, num_k_heads=16, head_k_dim=128,
                                          head_v_dim=128, scale=0.1, use_qk_l2norm=True, state_layout="kv")
        T = 4
        q = torch.empty(64, T, 16, 128, dtype=torch.bfloat16, **m)
        v = torch.empty(64, T, 32, 128, dtype=torch.bfloat16, **m)
        ab = torch.empty(64, T, 32, dtype=torch.bfloat16, **m)
        inter = torch.empty(64, T, *state.shape[1:], dtype=state.dtype, **m)
        get("decode_mtp", "triton").fn(q, q, v, ab, ab, A_log, dt_bias, state, idx,
                                       torch.empty(64, T, 32, 128, dtype=torch.bfloat16, **m), inter, None,
                                       torch.empty(64, T, dtype=torch.int32, **m), disable_state_update=True,
                                       scale=0.1, use_qk_l2norm=True, state_layout="kv")
        get("commit_accepted", "triton").fn(state, idx, inter, idx, idx, state_layout="kv")
    assert [l.constexprs.get("PACKED") for l in launches] == [True, False, None]
    assert launches[1].constexprs["T"] == T and launches[1].constexprs["HAS_PARENT"]


def test_config_table_key_by_gpu_model(monkeypatch):
    """An H200 (sm_90) picks its own measured rows; an H100 and an unknown sm_90 model the arch's rows;
    GDN_ARCH (arch_overridden) never picks model rows."""
    from gdn.common import probe
    from gdn.common.triton import decode as D
    dev = torch.device("cuda", 7)                       # never touched: device_info is faked
    for name, overridden, want in (("NVIDIA H200", False, "sm_90:h200"), ("NVIDIA H100 80GB HBM3", False, "sm_90"),
                                   ("NVIDIA H20", False, "sm_90"), ("NVIDIA H200", True, "sm_90")):
        info = probe.DeviceInfo("cuda", "nvidia", "sm_90", name, 132, 50 << 20, arch_overridden=overridden)
        monkeypatch.setattr(probe, "device_info", lambda d=None, info=info: info)
        monkeypatch.setattr(D, "_ARCH", {})
        monkeypatch.setattr(D, "_TABLE_KEY", {})
        assert D.table_key_of(dev) == want, name
    big = (torch.float32, 512 * 32, 128, 128)
    assert D.config("sm_90:h200", "vk", *big) == D.full_config(D.CONFIGS[("sm_90:h200", ("vk", "fp32", 16384))])
    assert D.config("sm_90", "vk", *big) == D.full_config(D.CONFIGS[("sm_90", ("vk", "fp32", 16384))])
    # a model key without a row for this bucket (the H200 has no kv rows: its sweep chose the H100 ones)
    # falls back to the arch's row
    assert ("sm_90:h200", ("kv", "fp32", 16384)) not in D.CONFIGS
    D.config.cache_clear()
    assert D.config("sm_90:h200", "kv", *big) == D.full_config(D.CONFIGS[("sm_90", ("kv", "fp32", 16384))])
    D.config.cache_clear()


def test_config_entries_and_prefetch_flag(monkeypatch):
    """CONFIGS rows are (BV, warps, stages) or with a fourth prefetch flag 0/1; config() always returns four, a
    forced 3-tuple means prefetch on, and the flag reaches an sm_90 launch (with PDL) as the PREFETCH constexpr;
    GDN_DECODE_PREFETCH=0 turns it off."""
    from gdn.common import launch as L
    from gdn.common import probe
    from gdn.common.triton import decode as D
    monkeypatch.setattr(probe, "interpreter_on", lambda: False)     # launches as on a GPU host (recorded)
    monkeypatch.delenv("GDN_PDL", raising=False)
    probe.reload_env()
    for key, cfg in D.CONFIGS.items():
        assert len(cfg) in (3, 4) and (len(cfg) == 3 or cfg[3] in (0, 1)), (key, cfg)
        assert D.full_config(cfg)[:3] == tuple(cfg[:3]) and len(D.full_config(cfg)) == 4
    D.config.cache_clear()
    off = next(k for k, c in D.CONFIGS.items() if len(c) == 4 and c[3] == 0)
    (arch, (layout, sd, nh)) = off if len(off[1]) == 3 else (off[0], off[1][1:])
    got = D.config(arch, layout, {"fp32": torch.float32, "bf16": torch.bfloat16}[sd], nh, 128, 128,
                   2 if len(off[1]) == 4 else 1)
    assert got[3] == 0, (off, got)
    args, kw = D.meta_decode_args(B=1)
    for cfg, env, want in (((4, 1, 1), None, True), ((4, 1, 1, 0), None, False), ((4, 1, 1), "0", False)):
        if env is not None:
            monkeypatch.setenv("GDN_DECODE_PREFETCH", env)
        probe.reload_env()
        with L.recording("sm_90") as launches:
            D.decode(*args, **kw, _cfg=cfg)
        assert launches[0].constexprs["PDL"] is True
        assert launches[0].constexprs["PREFETCH"] is want, (cfg, env)
    monkeypatch.delenv("GDN_DECODE_PREFETCH")
    monkeypatch.undo()
    probe.reload_env()


def test_bench_sweep_grid_adds_prefetch_off_where_it_may_pay():
    from _helpers import load_bench
    bd = load_bench("decode")
    base = bd.sweep_grid(None)
    assert all(len(c) == 3 for c in base)
    assert bd.sweep_grid(None, 8, pdl=True) == base + [c + (0,) for c in base]
    assert bd.sweep_grid(None, 64, pdl=True) == base and bd.sweep_grid(None, 8, pdl=False) == base
    assert bd.cfg_name((8, 2, 1, 0)) == "8/2/nopf" and bd.cfg_name((8, 2, 1)) == "8/2"


def test_env_switched_restores():
    import os

    from gdn.common import probe
    name = "GDN_TEST_ENV_SWITCHED"
    os.environ.pop(name, None)
    with probe.env_switched(name, "0"):
        assert probe.env(name) == "0"
        with probe.env_switched(name, "1"):
            assert probe.env(name) == "1"
        assert probe.env(name) == "0"
    assert name not in os.environ and probe.env(name) is None
