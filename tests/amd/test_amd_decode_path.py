"""ROCm decode path (gdn/amd/triton: decode_packed, causal_conv1d_update, rms_norm_gated_fp8) under the
CPU interpreter, against gdn.common.reference and an independent float64 formulation written here.

The configs the AMD tables pick for gfx942 / gfx950 are exercised by pretending the arch (GDN_ARCH) and
by forcing each batch bucket. Outputs and unused pool slots are NaN-poisoned and checked bit for bit.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # before any triton kernel is imported

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import gdn.amd.triton  # noqa: F401  (registers the amd-triton backends)
import gdn.amd.triton.decode_packed as DP
import gdn.common.triton  # noqa: F401
from gdn.common import reference as R
from gdn.common import probe, registry
from gdn.common.launch import recording
from gdn.common.registry import get
from _helpers import rel, bits_equal, unused_rows

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs TRITON_INTERPRET=1 before triton kernels are imported")

NAN = float("nan")
TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 2e-3}


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def arch(request, monkeypatch):
    """Pretend the device is request.param (the launchers read it for their config tables)."""
    if request.param != "cpu":
        monkeypatch.setenv("GDN_ARCH", request.param)
        probe.reload_env()
    return request.param


# ---------------------------------------------------------------------------------------------------
# decode_packed

def decode_packed_f64(mixed, a, b, A_log, dt_bias, pool, idx, H, K, V, scale, layout, l2=True):
    """float64, explicit per (row, v-head), KV-form state. Returns (out, new pool as float64)."""
    B = mixed.shape[0]
    HV = (mixed.shape[1] - 2 * H * K) // V
    G = HV // H
    x = mixed.double()
    out = torch.zeros(B, HV, V, dtype=torch.float64)
    new = pool.double().clone()
    for i in range(B):
        s = int(idx[i])
        if s < 0:
            continue
        for hv in range(HV):
            h = hv // G
            q = x[i, h * K:(h + 1) * K]
            k = x[i, H * K + h * K:H * K + (h + 1) * K]
            v = x[i, 2 * H * K + hv * V:2 * H * K + (hv + 1) * V]
            if l2:
                q = q / torch.sqrt((q * q).sum() + 1e-6)
                k = k / torch.sqrt((k * k).sum() + 1e-6)
            q = q * scale
            xa = float(a[i, hv]) + float(dt_bias[hv])
            sp = xa if xa > 20 else math.log1p(math.exp(xa))
            g = -math.exp(float(A_log[hv])) * sp
            beta = 1.0 / (1.0 + math.exp(-float(b[i, hv])))
            S = pool[s, hv].double()
            S = S.T if layout == "vk" else S                 # -> [K, V]
            S = S * math.exp(g)
            u = beta * (v - k @ S)
            S = S + torch.outer(k, u)
            out[i, hv] = q @ S
            new[s, hv] = S.T if layout == "vk" else S
    return out, new


def make_decode(B, H, HV, K, V, S, *, dtype, state_dtype, layout, idx_dtype, pad, g, slot_pad=0, row_pad=0):
    D = 2 * H * K + HV * V
    wide = (torch.randn(B, D + row_pad, generator=g)).to(dtype)
    mixed = wide[:, :D]                                              # row stride may exceed the row
    a = torch.randn(B, HV, generator=g).to(dtype)
    b = torch.randn(B, HV, generator=g).to(dtype)
    A_log = torch.empty(HV).uniform_(-4, -1, generator=g)
    dt_bias = torch.randn(HV, generator=g) * 0.5
    inner = (HV, V, K) if layout == "vk" else (HV, K, V)
    n = HV * K * V
    buf = torch.full((S, n + slot_pad), NAN, dtype=state_dtype)
    pool = buf[:, :n].view(S, *inner)
    idx = torch.randperm(S, generator=g)[:B]
    for i in pad:
        if i < B:
            idx[i] = -1
    used = idx[idx >= 0]
    pool[used] = (torch.randn(len(used), *inner, generator=g) * 0.3).to(state_dtype)
    return mixed, a, b, A_log, dt_bias, pool, buf, idx.to(idx_dtype), used


@pytest.mark.parametrize("arch", ["gfx942", "gfx950", "cpu"], indirect=True)
@pytest.mark.parametrize("bucket", ["small", "medium", "large"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_decode_packed_configs(arch, bucket, layout, monkeypatch):
    """Every table config (per arch and bucket), both layouts, G = 2 (NH = 2 in the large bucket)."""
    monkeypatch.setattr(DP, "_bucket", lambda pairs: bucket)
    g = gen(len(arch) * 100 + len(bucket) * 10 + len(layout))
    H, HV, K, V = 2, 4, 16, 32
    mixed, a, b, A_log, dt_bias, pool, buf, idx, used = make_decode(
        4, H, HV, K, V, 7, dtype=torch.float32, state_dtype=torch.float32, layout=layout, idx_dtype=torch.int32,
        pad=(1,), g=g, slot_pad=9, row_pad=5)
    check_decode(mixed, a, b, A_log, dt_bias, pool, buf, idx, used, H, K, V, layout, torch.float32, torch.float32)


def check_decode(mixed, a, b, A_log, dt_bias, pool, buf, idx, used, H, K, V, layout, dtype, state_dtype, l2=True):
    B, HV = a.shape
    scale = K ** -0.5
    buf0 = buf.clone()
    p_ref = pool.clone()
    out = torch.full((B, HV, V), NAN, dtype=dtype)
    ref = torch.full((B, HV, V), NAN, dtype=dtype)
    kw = dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=scale, use_qk_l2norm=l2, state_layout=layout)
    get("decode_packed", "amd-triton").fn(mixed, a, b, A_log, dt_bias, pool, idx, out, **kw)
    R.decode_packed(mixed, a, b, A_log, dt_bias, p_ref, idx, ref, **kw)
    o64, p64 = decode_packed_f64(mixed, a, b, A_log, dt_bias, buf0[:, :pool[0].numel()].view(pool.shape), idx,
                                 H, K, V, scale, layout, l2)
    t = 1e-2 if state_dtype == torch.bfloat16 else TOL[dtype]
    live = idx >= 0
    assert (out[~live] == 0).all()
    assert rel(out[live], ref[live]) < t and rel(out[live], o64[live]) < t
    assert rel(pool[used], p_ref[used]) < t and rel(pool[used], p64[used]) < t
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))
    n = pool[0].numel()
    assert bits_equal(buf[:, n:], buf0[:, n:])                       # slot padding untouched


@pytest.mark.parametrize("arch", ["gfx942"], indirect=True)
@pytest.mark.parametrize("H,HV,K,V,dtype,state_dtype,layout,idx_dtype", [
    (2, 6, 16, 16, torch.bfloat16, torch.bfloat16, "vk", torch.int64),   # G = 3 (NH falls back to 1), bf16 pool
    (1, 2, 24, 20, torch.float16, torch.float32, "kv", torch.int32),    # K, V not powers of two
    (3, 3, 9, 5, torch.float32, torch.bfloat16, "kv", torch.int64),     # G = 1, odd dims
    (2, 4, 32, 16, torch.bfloat16, torch.float32, "vk", torch.int32),
])
def test_decode_packed_shapes_dtypes(arch, H, HV, K, V, dtype, state_dtype, layout, idx_dtype, monkeypatch):
    for bucket in ("small", "large"):
        monkeypatch.setattr(DP, "_bucket", lambda pairs, b=bucket: b)
        g = gen(K * V + HV)
        mixed, a, b, A_log, dt_bias, pool, buf, idx, used = make_decode(
            5, H, HV, K, V, 8, dtype=dtype, state_dtype=state_dtype, layout=layout, idx_dtype=idx_dtype,
            pad=(0, 3), g=g, slot_pad=3)
        check_decode(mixed, a, b, A_log, dt_bias, pool, buf, idx, used, H, K, V, layout, dtype, state_dtype)


@pytest.mark.parametrize("arch", ["gfx942"], indirect=True)
def test_decode_packed_no_l2norm_and_all_padding(arch):
    g = gen(2)
    H, HV, K, V = 1, 2, 16, 16
    mixed, a, b, A_log, dt_bias, pool, buf, idx, used = make_decode(
        3, H, HV, K, V, 5, dtype=torch.float32, state_dtype=torch.float32, layout="vk", idx_dtype=torch.int32,
        pad=(), g=g)
    mixed[:, :2 * K] = F.normalize(mixed[:, :2 * K].view(3, 2, K), dim=-1).view(3, 2 * K)
    check_decode(mixed, a, b, A_log, dt_bias, pool, buf, idx, used, H, K, V, "vk", torch.float32, torch.float32,
                 l2=False)
    before = buf.clone()
    out = torch.full((3, HV, V), NAN)
    get("decode_packed", "amd-triton").fn(mixed, a, b, A_log, dt_bias, pool, torch.full((3,), -1), out,
                                          num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=0.25,
                                          use_qk_l2norm=True, state_layout="vk")
    assert (out == 0).all() and bits_equal(buf, before)


@pytest.mark.parametrize("arch", ["gfx942"], indirect=True)
def test_decode_packed_recurrence_drift(arch):
    """384 consecutive steps on one small state (fp32 pool and inputs) track fp32 torch step for step.
    (The interpreter costs ~15 ms a step; tests/gpu runs 4096 steps at full width.)"""
    K = V = 16
    H, HV, steps = 1, 1, 384
    g = gen(11)
    D = 2 * H * K + HV * V
    xs = torch.randn(steps, 1, D, generator=g)
    a_s, bs = torch.randn(steps, 1, HV, generator=g), torch.randn(steps, 1, HV, generator=g)
    A_log, dt_bias = torch.tensor([-2.0]), torch.tensor([0.3])
    p_tri = torch.randn(2, HV, V, K, generator=g) * 0.3
    p_tri[0] = NAN
    p_ref = p_tri.clone()
    idx = torch.tensor([1], dtype=torch.int32)
    o1, o2 = torch.empty(1, HV, V), torch.empty(1, HV, V)
    kw = dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    fn = get("decode_packed", "amd-triton").fn
    worst = 0.0
    for t in range(steps):
        fn(xs[t], a_s[t], bs[t], A_log, dt_bias, p_tri, idx, o1, **kw)
        R.decode_packed(xs[t], a_s[t], bs[t], A_log, dt_bias, p_ref, idx, o2, **kw)
        worst = max(worst, rel(o1, o2))
    assert worst < 1e-5
    assert rel(p_tri[1], p_ref[1]) < 1e-5 and bits_equal(p_tri[0], p_ref[0])


# ---------------------------------------------------------------------------------------------------
# causal_conv1d_update (ROCm flavour)

def conv_update_f64(x, pool, weight, bias, idx, activation):
    B, D = x.shape
    W = weight.shape[1]
    out = torch.zeros(B, D, dtype=torch.float64)
    new = pool.double().clone()
    for i in range(B):
        s = int(idx[i])
        if s < 0:
            continue
        win = torch.cat([pool[s].double(), x[i].double()[:, None]], dim=1)
        y = sum(win[:, j] * weight[:, j].double() for j in range(W))
        if bias is not None:
            y = y + bias.double()
        out[i] = F.silu(y) if activation == "silu" else y
        new[s] = win[:, 1:]
    return out, new


@pytest.mark.parametrize("arch", ["gfx942", "gfx950", "cpu"], indirect=True)
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("B,D,dtype,state_dtype,bias,act,idx_dtype", [
    (6, 37, torch.float32, torch.float32, True, "silu", torch.int32),       # narrow: 4 rows per program
    (3, 2051, torch.bfloat16, torch.bfloat16, False, None, torch.int64),   # wide: 512-channel blocks, odd D
    (5, 45, torch.float16, torch.float32, True, None, torch.int64),
])
def test_causal_conv1d_update_amd(arch, W, B, D, dtype, state_dtype, bias, act, idx_dtype):
    g = gen(W * 31 + D)
    S = B + 4
    n = D * (W - 1)
    buf = torch.full((S, n + 6), NAN, dtype=state_dtype)
    pool = buf[:, :n].view(S, D, W - 1)
    idx = torch.randperm(S, generator=g)[:B]
    idx[1] = -1
    used = idx[idx >= 0]
    pool[used] = torch.randn(len(used), D, W - 1, generator=g).to(state_dtype)
    idx = idx.to(idx_dtype)
    x = torch.randn(B, D, generator=g).to(dtype)
    w = (torch.randn(D, W, generator=g) * 0.5).to(dtype)
    bb = torch.randn(D, generator=g).to(dtype) if bias else None
    buf0 = buf.clone()
    out = torch.full((B, D), NAN, dtype=dtype)
    get("causal_conv1d_update", "amd-triton").fn(x, pool, w, bb, idx, out, activation=act)
    p_ref = buf0[:, :n].view(S, D, W - 1).clone()
    ref = torch.full((B, D), NAN, dtype=dtype)
    R.causal_conv1d_update(x, p_ref, w, bb, idx, ref, activation=act)
    o64, p64 = conv_update_f64(x, buf0[:, :n].view(S, D, W - 1), w, bb, idx, act)
    live = idx >= 0
    assert (out[~live] == 0).all()
    assert rel(out[live], ref[live]) < TOL[dtype] and rel(out[live], o64[live]) < TOL[dtype]
    assert bits_equal(pool[used], p_ref[used])
    assert torch.equal(pool[used].double(), p64[used].to(state_dtype).double())
    assert bits_equal(unused_rows(buf, used), unused_rows(buf0, used))
    assert bits_equal(buf[:, n:], buf0[:, n:])


# ---------------------------------------------------------------------------------------------------
# rms_norm_gated_fp8 (ROCm flavour)

def rms_gated_f64(x, z, w, eps):
    x, z, w = x.double(), z.double(), w.double()
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w * (z * torch.sigmoid(z))


@pytest.mark.parametrize("fp8_dtype,fp8_max", [(torch.float8_e4m3fnuz, 224.0), (torch.float8_e4m3fn, 448.0)],
                         ids=["e4m3fnuz-gfx942", "e4m3fn-gfx950"])
@pytest.mark.parametrize("M,V,gs,dtype", [
    (37, 128, 128, torch.bfloat16),      # rows not a multiple of the rows per program
    (9, 256, 64, torch.float32),
    (4, 64, 16, torch.float16),
])
def test_rms_norm_gated_fp8_amd(fp8_dtype, fp8_max, M, V, gs, dtype):
    g = gen(M + V + gs)
    x = (torch.randn(M, V, generator=g) * 2).to(dtype)
    z = torch.randn(M, V, generator=g).to(dtype)
    x[1, : V // 2] *= 1e-4                                       # small values: subnormal codes
    w = torch.randn(V, generator=g).to(dtype)
    y = torch.full((M, V), NAN).to(fp8_dtype)
    s = torch.full((M, V // gs), NAN)
    get("rms_norm_gated_fp8", "amd-triton").fn(x, z, w, y, s, eps=1e-6, group_size=gs, fp8_max=fp8_max)
    ry, rs = torch.empty_like(y), torch.empty_like(s)
    R.rms_norm_gated_fp8(x, z, w, ry, rs, eps=1e-6, group_size=gs, fp8_max=fp8_max)
    yf = rms_gated_f64(x, z, w, 1e-6).view(M, V // gs, gs)
    s64 = torch.clamp(yf.abs().amax(-1) / fp8_max, min=1.0 / (fp8_max * 512.0))
    assert torch.isfinite(s).all() and rel(s, s64) < 1e-5 and rel(s, rs) < 1e-6
    deq = y.double().view(M, V // gs, gs) * s.double()[..., None]            # FP8 round trip
    bound = yf.abs() * 2.0 ** -4 + s.double()[..., None] * 2.0 ** -9 + 1e-12
    assert ((deq - yf).abs() <= bound).all()
    assert y.float().abs().max() <= fp8_max
    assert (y.view(torch.uint8) != ry.view(torch.uint8)).float().mean() < 0.01
    if fp8_dtype == torch.float8_e4m3fnuz:
        assert not (y.view(torch.uint8) == 0x80).any()                       # 0x80 is NaN in fnuz


def test_rms_norm_gated_fp8_amd_declines_non_pow2():
    impl = get("rms_norm_gated_fp8", "amd-triton")
    assert impl.check({"V": 96, "group_size": 32}) and not impl.check({"V": 256, "group_size": 128})
    assert not get("rms_norm_gated_fp8", "triton").check({"V": 96, "group_size": 32})


# ---------------------------------------------------------------------------------------------------
# registry, recording on meta tensors, AOT compile

def test_registered_for_rocm_only():
    for op in ("decode_packed", "causal_conv1d_update", "rms_norm_gated_fp8"):
        impl = get(op, "amd-triton")
        assert impl.priority == 20 and impl.interpretable and impl.archs == ("gfx942", "gfx950")
        assert impl.validated_on == () and not impl.serves("sm_90")
        order = [i.backend for i in registry.impls(op)]
        assert order.index("amd-triton") < order.index("triton")    # tried before the portable kernel


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def amd_meta_calls(B=512, fp8_dtype=torch.float8_e4m3fnuz, layout="vk", state_dtype=torch.float32):
    H, HV, K, V, W = 16, 32, 128, 128, 4
    D = 2 * H * K + HV * V
    pool = meta(B + 3, HV, V, K, dtype=state_dtype) if layout == "vk" else meta(B + 3, HV, K, V, dtype=state_dtype)
    return [
        ("decode_packed", (meta(B, D), meta(B, HV), meta(B, HV), meta(HV, dtype=torch.float32),
                           meta(HV, dtype=torch.float32), pool, meta(B, dtype=torch.int64), meta(B, HV, V)),
         dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5, use_qk_l2norm=True, state_layout=layout)),
        ("causal_conv1d_update", (meta(B, D), meta(B + 3, D, W - 1), meta(D, W), meta(D), meta(B, dtype=torch.int32),
                                  meta(B, D)), dict(activation="silu")),
        ("rms_norm_gated_fp8", (meta(B * HV, V), meta(B * HV, V), meta(V), meta(B * HV, V, dtype=fp8_dtype),
                                meta(B * HV, 1, dtype=torch.float32)),
         dict(eps=1e-6, group_size=128, fp8_max=224.0 if fp8_dtype == torch.float8_e4m3fnuz else 448.0)),
    ]


@pytest.mark.parametrize("arch_name", ["gfx942", "gfx950"])
def test_launchers_record_on_meta(arch_name):
    fp8 = torch.float8_e4m3fnuz if arch_name == "gfx942" else torch.float8_e4m3fn
    for B, bucket in ((1, "small"), (64, "medium"), (8192, "large")):
        for op, args, kw in amd_meta_calls(B, fp8):
            with recording(arch_name) as launches:
                get(op, "amd-triton").fn(*args, **kw)
            assert len(launches) == 1, op
            l = launches[0]
            if op == "decode_packed":
                cfg = DP._CONFIGS.get((arch_name, bucket), DP._CONFIGS[("amd", bucket)])
                assert l.constexprs["BV"] == cfg["BV"] and l.constexprs["NH"] == cfg["NH"]
                assert l.options["num_warps"] == cfg["num_warps"] and l.signature["idx_ptr"] == "*i64"
                assert l.constexprs["VK"] is True
            if op == "rms_norm_gated_fp8":                      # hardware cvt on both archs
                assert l.constexprs["SOFT_FP8"] is False
                assert l.signature["y_ptr"] == ("*fp8e4b8" if arch_name == "gfx942" else "*fp8e4nv")
            if op == "causal_conv1d_update":
                assert l.constexprs["BLOCK_D"] == 512 and l.constexprs["WP"] == 4


def test_aot_compile_gfx942_gfx950():
    """triton.compile for both ROCm targets (and sm_90: the same kernels validate numerics on NVIDIA),
    every layout / pool dtype of decode_packed; a fresh process without the interpreter."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.pop("GDN_ARCH", None)
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    env["PYTHONPATH"] = os.pathsep.join([root, os.path.join(root, "tests"), here, env.get("PYTHONPATH", "")])
    code = (
        "import torch, test_amd_decode_path as t\n"
        "from gdn.common.aot import _compile\n"
        "from gdn.common.launch import recording\n"
        "from gdn.common.registry import get\n"
        "for arch in ('gfx942', 'gfx950', 'sm_90'):\n"
        "    n = 0\n"
        "    fp8 = torch.float8_e4m3fnuz if arch == 'gfx942' else torch.float8_e4m3fn\n"
        "    for lay in ('vk', 'kv'):\n"
        "        for sd in (torch.float32, torch.bfloat16):\n"
        "            for B in (1, 8192):\n"
        "                calls = t.amd_meta_calls(B, fp8, lay, sd)\n"
        "                if (lay, sd) != ('vk', torch.float32):\n"
        "                    calls = calls[:1]\n"
        "                for op, args, kw in calls:\n"
        "                    with recording(arch) as ls:\n"
        "                        get(op, 'amd-triton').fn(*args, **kw)\n"
        "                    for l in ls:\n"
        "                        _compile(l, arch); n += 1\n"
        "    print(arch, n)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=here)
    assert r.returncode == 0, r.stderr[-4000:]
    for arch in ("gfx942", "gfx950", "sm_90"):
        assert f"{arch} 12" in r.stdout, r.stdout
