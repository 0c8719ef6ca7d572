"""Programmatic dependent launch (PDL) of the decode-step Triton kernels, on the CPU.

`launch.pdl_ok(arch)`: on for NVIDIA sm_90+ only, off under the interpreter and with GDN_PDL=0. Every
decode-step launcher records PDL=True and the `launch_pdl` option on sm_90+ and neither elsewhere; compiled
for sm_90 (a child process without TRITON_INTERPRET: the interpreter replaces @triton.jit at import) each
kernel's PTX issues griddepcontrol.wait before its first global load, and sm_80 / gfx942 code has no
griddepcontrol at all. On a GPU: tests/gpu/test_pdl_gpu.py.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from gdn.common import launch as L
from gdn.common import probe
from gdn.common.registry import get
from gdn.common.triton.decode import gdn_decode_kernel  # importing gdn.common.triton registers its backends

DECODE_STEP_OPS = ("split_qkvzba", "causal_conv1d_update", "conv1d_update_split", "decode", "decode_packed",
                   "decode_mtp", "rms_norm_gated", "rms_norm_gated_fp8")


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def decode_step_calls(B=4, H=2, HV=4, K=32, V=32, W=4, T=2):
    """(op, args, kwargs) of every decode-step launcher, meta tensors at small widths."""
    D = 2 * H * K + HV * V
    i32 = torch.int32
    split = dict(num_k_heads=H, num_v_heads=HV, head_k_dim=K, head_v_dim=V, layout="interleaved")
    outs = (meta(B, D), meta(B, HV, V), meta(B, HV), meta(B, HV))
    gates = (meta(HV, dtype=torch.float32), meta(HV, dtype=torch.float32))
    pool, idx = meta(8, HV, V, K, dtype=torch.float32), meta(B, dtype=i32)
    dec = dict(scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    q, v, ab = meta(B, T, H, K), meta(B, T, HV, V), meta(B, T, HV)
    return [
        ("split_qkvzba", (meta(B, 2 * H * K + 2 * HV * V), meta(B, 2 * HV), *outs), split),
        ("causal_conv1d_update", (meta(B, D), meta(8, D, W - 1), meta(D, W), meta(D), idx, meta(B, D)),
         dict(activation="silu")),
        ("conv1d_update_split", (meta(B, 2 * H * K + 2 * HV * V), meta(B, 2 * HV), meta(8, D, W - 1), meta(D, W),
                                 None, idx, *outs), dict(split, activation="silu")),
        ("decode", (meta(B, H, K), meta(B, H, K), meta(B, HV, V), meta(B, HV), meta(B, HV), *gates, pool, idx,
                    meta(B, HV, V)), dec),
        ("decode_packed", (meta(B, D), meta(B, HV), meta(B, HV), *gates, pool, idx, meta(B, HV, V)),
         dict(dec, num_k_heads=H, head_k_dim=K, head_v_dim=V)),
        ("decode_mtp", (q, q, v, ab, ab, *gates, pool, idx, meta(B, T, HV, V), meta(B, T, HV, V, K, dtype=torch.float32),
                        None, meta(B, T, dtype=i32)), dict(dec, disable_state_update=True)),
        ("rms_norm_gated", (meta(B, HV, V), meta(B, HV, V), meta(V), meta(B, HV, V)), dict(eps=1e-6)),
        ("rms_norm_gated_fp8", (meta(B * HV, V), meta(B * HV, V), meta(V), meta(B * HV, V, dtype=torch.float8_e4m3fn),
                                meta(B * HV, 1, dtype=torch.float32)), dict(eps=1e-6, group_size=V, fp8_max=448.0)),
    ]


def record(arch):
    """{op: Launch} of each decode-step launcher on `arch`."""
    out = {}
    for op, args, kw in decode_step_calls():
        with L.recording(arch) as launches:
            get(op, "triton").fn(*args, **kw)
        assert len(launches) == 1, op
        out[op] = launches[0]
    return out


# every decode-step kernel for sm_90; the decode kernel elsewhere (the AOT matrix compiles the rest)
PLAN = {"sm_90": DECODE_STEP_OPS, "sm_100": ("decode",), "sm_80": ("decode",), "gfx942": ("decode",)}


def compile_report(plan=PLAN):
    """{arch: {op: [launch_pdl option, PDL constexpr, griddepcontrol.wait index, first ld.global index,
    [loads and prefetches before the wait]]}} of the compiled kernels (PTX line indices, -1 = absent; the
    first ld.global not counting the decode family's speculative L2-only ld.global.cg of its slot index;
    AMD: griddepcontrol anywhere in the asm)."""
    from gdn.common.aot import _compile
    rep = {}
    for arch, ops in plan.items():
        rep[arch] = {}
        for op, l in record(arch).items():
            if op not in ops:
                continue
            c = _compile(l, arch)
            if "ptx" in c.asm:
                lines = c.asm["ptx"].splitlines()
                wait = next((i for i, s in enumerate(lines) if "griddepcontrol.wait" in s), -1)
                load = next((i for i, s in enumerate(lines) if "ld.global" in s and "ld.global.cg" not in s), -1)
                early = sorted({s.split()[0] if not s.lstrip().startswith("{") else "prefetch.global.L2"
                                for s in lines[:max(wait, 0)] if "ld.global" in s or "prefetch" in s})
            else:
                wait = 0 if any("griddepcontrol" in a for a in c.asm.values() if isinstance(a, str)) else -1
                load, early = -1, []
            rep[arch][op] = [l.options.get("launch_pdl", False), l.constexprs["PDL"], wait, load, early]
    return rep


@pytest.fixture
def compiled_mode(monkeypatch):
    """pdl_ok as in a process without TRITON_INTERPRET (its cache cleared before and after)."""
    monkeypatch.setattr(probe, "interpreter_on", lambda: False)
    monkeypatch.delenv("GDN_PDL", raising=False)
    L.probe.reload_env()
    yield monkeypatch
    monkeypatch.undo()
    L.probe.reload_env()


def test_pdl_ok_by_arch(compiled_mode):
    assert [L.pdl_ok(a) for a in ("sm_90", "sm_100", "sm_120")] == [True] * 3
    assert not any(L.pdl_ok(a) for a in ("sm_80", "sm_86", "sm_89", "gfx942", "gfx950", "cpu"))


def test_pdl_env_off_read_once(compiled_mode):
    assert L.pdl_ok("sm_90")
    compiled_mode.setenv("GDN_PDL", "0")
    assert L.pdl_ok("sm_90"), "the environment is read once per arch (decode's hot path)"
    L.probe.reload_env()
    assert not L.pdl_ok("sm_90")
    assert not record("sm_90")["decode"].constexprs["PDL"]
    compiled_mode.setenv("GDN_PDL", "1")
    L.probe.reload_env()
    assert L.pdl_ok("sm_90")


@pytest.mark.skipif(not probe.interpreter_on(), reason="the CPU run (TRITON_INTERPRET=1)")
def test_pdl_off_under_interpreter():
    L.probe.reload_env()
    try:
        assert not L.pdl_ok("sm_90")     # gdc_wait is inline PTX: the interpreter must never trace it
    finally:
        L.probe.reload_env()


@pytest.mark.parametrize("arch,on", [("sm_90", True), ("sm_100", True), ("sm_80", False), ("gfx942", False),
                                     ("gfx950", False)])
def test_decode_step_launchers_record_pdl(compiled_mode, arch, on):
    for op, l in record(arch).items():
        assert l.constexprs["PDL"] is on, op
        assert l.options.get("launch_pdl", False) is on, op      # so the AOT matrix compiles what runs


def test_launch_refuses_pdl_without_the_constexpr():
    with pytest.raises(ValueError, match="PDL=True"):
        L.launch(gdn_decode_kernel, (1,), pdl=True, PDL=False)


def _child(code):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GDN_PDL")}
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(here), here, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=here)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_ptx_waits_before_the_first_load():
    rep = _child("import json, os, test_pdl as t\n"
                 "rep = t.compile_report()\n"
                 "os.environ['GDN_PDL'] = '0'\n"
                 "t.L.probe.reload_env()\n"
                 "rep['sm_90, GDN_PDL=0'] = t.compile_report({'sm_90': ('decode',)})['sm_90']\n"
                 "print(json.dumps(rep))")
    assert sorted(rep["sm_90"]) == sorted(DECODE_STEP_OPS)
    speculative = ["ld.global.cg.b32", "prefetch.global.L2"]     # decode's slot guess and its tile's L2 prefetch
    for arch in ("sm_90", "sm_100"):
        for op, (opt, pdl, wait, load, early) in rep[arch].items():
            assert opt and pdl, (arch, op)
            assert 0 <= wait < load, f"{arch} {op}: griddepcontrol.wait (PTX line {wait}) not before ld.global ({load})"
            assert early == (speculative if op.startswith("decode") else []), (arch, op, early)
    for arch in ("sm_80", "gfx942", "sm_90, GDN_PDL=0"):
        for op, (opt, pdl, wait, _, early) in rep[arch].items():
            assert not opt and not pdl and wait == -1 and not early, (arch, op)
