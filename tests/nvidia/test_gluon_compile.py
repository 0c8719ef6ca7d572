"""Gluon prefill kernels without a GPU: registration (arch, priority over Triton, not yet validated), the
sm_90a compile of each, and that the compiled PTX really uses the Hopper paths (wgmma from shared memory,
TMA bulk tensor copies), not a fallback. Gluon kernels compile in-process even with TRITON_INTERPRET=1
(the interpreter only replaces @triton.jit)."""
import re

import pytest
import torch

from gdn.common import probe, registry

needs_gluon = pytest.mark.skipif(not probe.gluon_available(), reason="triton.experimental.gluon not importable")
HOPPER_OPS = ("chunk_output", "chunk_wy", "chunk_state")
VALIDATED = {"chunk_output": ("sm_90",), "chunk_wy": ("sm_90",), "chunk_state": ("sm_90",)}


@pytest.mark.parametrize("op", HOPPER_OPS)
def test_registered(op):
    impl = registry.get(op, "gluon")
    assert impl.archs == ("sm_90", "sm_100")
    assert impl.priority > registry.get(op, "triton").priority
    # numerics checked on an H100 (tests/gpu/test_gluon_gpu.py, 2026-11-22); others compile-only until run
    assert impl.validated_on == VALIDATED.get(op, ())
    assert impl.aot is not None and not impl.interpretable
    # compile-only on sm_100: the first call per signature there is self-checked (registry.select), else skipped
    from gdn.common import selfcheck
    assert selfcheck.needed(impl, probe.DeviceInfo("cuda", "nvidia", "sm_100", "B200", 148, 0))
    assert not selfcheck.needed(impl, probe.DeviceInfo("cuda", "nvidia", "sm_90", "H100", 132, 0))
    info = probe.DeviceInfo("cuda", "nvidia", "sm_90", "sm_90", 1, 0)
    reasons = impl.not_supported_reasons({"dtype": torch.float32, "K": 128, "V": 128}, info)
    assert any("float32" in r for r in reasons)


@needs_gluon
@pytest.mark.parametrize("op", HOPPER_OPS)
def test_compiles_sm90_with_wgmma_and_tma(op):
    from gdn.nvidia.gluon import _common as C
    built = C.aot_compile(op, registry.get(op, "gluon").fn, "sm_90")
    assert built
    for name, kernel in built:
        ptx = kernel.asm["ptx"]
        assert ".target sm_90a" in ptx, name
        assert "wgmma.mma_async" in ptx, f"{name}: no wgmma in the PTX"
        assert "cp.async.bulk.tensor" in ptx, f"{name}: no TMA copy in the PTX"
        assert kernel.asm["cubin"], name


def _check_blackwell_kernel(name, kernel, mmas: int):
    """An sm_100a build: tcgen05 MMAs (mmas instructions of K = 16) into tensor memory, TMA copies, no wgmma,
    tensor memory allocated and freed, a cubin, and no register spill (ptxas -v)."""
    ptx = kernel.asm["ptx"]
    assert ".target sm_100a" in ptx, name
    assert ptx.count("tcgen05.mma.cta_group::1.kind::f16") == mmas, (name, ptx.count("tcgen05.mma"))
    assert "tcgen05.alloc" in ptx and "tcgen05.dealloc" in ptx and "tcgen05.commit" in ptx, name
    assert "cp.async.bulk.tensor" in ptx and "wgmma" not in ptx, name
    assert kernel.asm["cubin"], name
    spill = _spill_bytes(_ptxas_info(kernel, "sm_100"))
    assert spill is None or spill == 0, (name, spill)


# tcgen05.mma instructions per kernel at K = V = 128 (one per 16 of the reduced dimension): chunk_wy four products
# of K = 64 (A's two parts against k and v); chunk_output q k^T and q h (K = 128) and the scores' two parts
# against v_new (64); chunk_state w h (K = 128) and k^T vs (64)
SM100_MMAS = {"chunk_wy": 16, "chunk_output": 24, "chunk_state": 12}


@needs_gluon
@pytest.mark.parametrize("op", HOPPER_OPS)
def test_compiles_sm100_with_tcgen05_and_tma(op):
    """The Blackwell kernel bodies (compile-only: no Blackwell GPU has run them; registry.py self-checks them on
    first use there), as the launchers pick them for sm_100."""
    from gdn.nvidia.gluon import _common as C
    built = C.aot_compile(op, registry.get(op, "gluon").fn, "sm_100")
    assert built
    for name, kernel in built:
        assert name.startswith(f"{op}_sm100["), name
        _check_blackwell_kernel(name, kernel, SM100_MMAS[op])


@needs_gluon
def test_chunk_state_sm100_fp32_v_new_and_configs():
    """The Blackwell plain pass's other branches: v_new by plain stores (fp32) and other BV / stage counts."""
    import torch

    from gdn.common import launch as L
    from gdn.common.triton.prefill import chunk_state as TS
    from gdn.nvidia.gluon import _common as C
    from gdn.nvidia.gluon import chunk_state as GS
    args, kw = TS._example("meta", layout="vk")
    fp32_vn = (*args[:9], torch.empty(args[9].shape, dtype=torch.float32, device="meta"))
    for name, a, cfg in (("v_new=fp32", fp32_vn, dict(BV=32, STAGES=2)),
                         ("BV=64,STAGES=3", args, dict(BV=64, STAGES=3)),
                         ("BV=16,STAGES=4", args, dict(BV=16, STAGES=4))):
        with L.recording("sm_100"), C.recording() as launches:
            GS.launch_state(*a, kw["use_qk_l2norm"], kw["state_layout"], cfg)
        assert launches[0].kernel.fn.__name__ == "chunk_state_sm100"
        _check_blackwell_kernel(f"chunk_state_sm100[{name}]", C.compile_launch(launches[0], "sm_100"),
                                SM100_MMAS["chunk_state"])


def test_chunk_state_k256_declined_on_sm100(monkeypatch):
    """k^T vs is one tcgen05 MMA of M = K, at most 128: K = 256 goes to the Triton pass on sm_100 (a reason in
    the dispatch table), and a forced launch says why; sm_90 keeps K = 256."""
    import torch

    from gdn.common import launch as L
    from gdn.common.triton.prefill import chunk_state as TS
    from gdn.nvidia.gluon import _common as C
    from gdn.nvidia.gluon import chunk_state as GS
    impl = registry.get("chunk_state", "gluon")
    for arch, declined in (("sm_100", True), ("sm_90", False)):
        info = probe.DeviceInfo("cuda", "nvidia", arch, arch, 1, 0)
        monkeypatch.setattr(probe, "device_info", lambda device=None, info=info: info)
        props = {"device": torch.device("cuda"), "dtype": torch.bfloat16, "K": 256, "V": 128}
        reasons = impl.not_supported_reasons(props, info)
        assert any("K=256" in r and "sm_100" in r for r in reasons) == declined, (arch, reasons)
        assert not impl.not_supported_reasons({**props, "K": 128}, info)
    args, kw = TS._example("meta", layout="vk")
    T, H, _ = args[0].shape
    HV = args[2].shape[1]
    m = lambda *s: torch.empty(s, dtype=torch.bfloat16, device="meta")
    h = args[8]                       # (k, w, u, g_cum, pool, idx, cu, has_init, h, v_new)
    big = (m(T, H, 256), m(T, HV, 256), *args[2:8], m(h.shape[0], h.shape[1], 256, h.shape[3]), args[9])
    with L.recording("sm_100"), C.recording(), pytest.raises(ValueError, match="argument 'k' head dim 256.*sm_100"):
        GS.launch_state(*big, kw["use_qk_l2norm"], kw["state_layout"], dict(BV=32, STAGES=2))


def test_kernel_arch_is_the_hardware_not_gdn_arch(monkeypatch):
    """The launchers build the body of the arch being recorded for (AOT), else of the device itself: GDN_ARCH
    changes dispatch, never which body a GPU compiles (an sm_100 body on an sm_90 GPU aborts in LLVM)."""
    import torch

    from gdn.common import launch as L
    from gdn.nvidia.gluon import _common as C
    monkeypatch.setenv("GDN_ARCH", "sm_100")
    probe.reload_env()
    try:
        assert probe.device_info("cpu").arch == "sm_100" and probe.device_info("cpu").arch_overridden
        assert probe.hardware_arch("cpu") == "cpu" and C.kernel_arch(torch.device("cpu")) == "cpu"
        with L.recording("sm_100"):
            assert C.kernel_arch(torch.device("meta")) == "sm_100"
    finally:
        monkeypatch.delenv("GDN_ARCH")
        probe.reload_env()


@pytest.mark.parametrize("op,arg", [("chunk_output", "q"), ("chunk_wy", "k"), ("chunk_state", "k")])
def test_fp32_declined_with_a_clear_error(op, arg):
    from gdn.common import examples
    ex, _ = examples.KERNEL_EXAMPLES[op]
    args, kwargs = ex("meta", dtype=torch.float32)
    with pytest.raises(TypeError, match=f"argument '{arg}'.*float16"):
        registry.get(op, "gluon").fn(*args, **kwargs)


def _unretired_operands(ttgir: str) -> list[str]:
    """Operands (A and B) of async wgmmas missing from the deps of the wait that retires the last wgmma using
    them. The shared-memory allocator sees a buffer live only until its last use: a tile that is no wait's
    dep may be handed out as convert_layout scratch while a wgmma still reads it (a silent race)."""
    import re
    pending, last_wait = [], {}          # last_wait: operand -> deps of its retiring wait
    for line in ttgir.splitlines():
        if "ttng.warp_group_dot " in line and "isAsync = true" in line:
            ops = re.search(r"warp_group_dot ([^{]*)\{", line).group(1).split(",")
            pending.append([o.strip() for o in ops[:2]])
        elif "ttng.warp_group_dot_wait" in line:
            m = re.search(r"warp_group_dot_wait ([^{]*)\{pendings = (\d+)", line)
            deps = {o.strip() for o in m.group(1).split(",")}
            keep = int(m.group(2))
            retired, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
            for ops in retired:
                for o in ops:
                    last_wait[o] = deps
    assert not pending, "async wgmma never waited on"
    return sorted(o for o, deps in last_wait.items() if o not in deps)


@needs_gluon
@pytest.mark.parametrize("op", HOPPER_OPS)
def test_async_wgmma_operands_live_until_wait(op):
    from gdn.nvidia.gluon import _common as C
    for name, kernel in C.aot_compile(op, registry.get(op, "gluon").fn, "sm_90"):
        assert "isAsync = true" in kernel.asm["ttgir"], name
        assert _unretired_operands(kernel.asm["ttgir"]) == [], name
        assert _injected_waits(_ptxas_info(kernel)) == [], name


def _ptxas_info(kernel, arch: str = "sm_90") -> str | None:
    """What `ptxas -v` (Triton's own; its Blackwell build for sm_100) says about the kernel's PTX for arch (sm_90a,
    sm_100a); None without that ptxas."""
    import os
    import subprocess
    import tempfile

    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                         "ptxas-blackwell" if arch == "sm_100" else "ptxas")
    if not os.path.exists(ptxas):
        return None
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(kernel.asm["ptx"])
        return subprocess.run([ptxas, "-v", "--gpu-name", f"{arch}a", src, "-o", os.devnull], capture_output=True,
                              text=True).stderr


def _spill_bytes(info: str | None) -> int | None:
    """Bytes of register spill stores in ptxas's report `info` (_ptxas_info); None without ptxas."""
    import re
    return None if info is None else int(re.search(r"(\d+) bytes spill stores", info).group(1))


def _injected_waits(info: str | None) -> list[str]:
    """ptxas's notes in its report `info` (_ptxas_info) that it serialised wgmmas: C7517, a register of an
    in-flight wgmma's accumulator side was touched, so ptxas made the warps wait for the MMA there (seen when
    the state pass's decay of S moved after `w h` was issued); C7512, too few registers for the accumulators
    of the wgmmas in flight together (seen in the fused-prefill experiment with three 64x64 accumulators and
    the state live at 176 registers). Both silently serialise MMAs meant to overlap other work."""
    return [line for line in (info or "").splitlines() if "C7517" in line or "C7512" in line]


def _check_hopper_kernel(name, launch, max_spill=0):
    """Compile a recorded launch for sm_90: wgmma and TMA in the PTX, every async wgmma operand retired by a
    wait, no wgmma wait injected by ptxas, ptxas spills within max_spill bytes. Returns the compiled kernel."""
    from gdn.nvidia.gluon import _common as C
    kernel = C.compile_launch(launch, "sm_90")
    assert "wgmma.mma_async" in kernel.asm["ptx"] and "cp.async.bulk.tensor" in kernel.asm["ptx"], name
    assert _unretired_operands(kernel.asm["ttgir"]) == [], name
    info = _ptxas_info(kernel)
    assert _injected_waits(info) == [], name
    spill = _spill_bytes(info)
    assert spill is None or spill <= max_spill, (name, spill)
    return kernel


@needs_gluon
def test_chunk_state_fp32_v_new_compiles():
    """The plain pass with a fp32 v_new (no TMA view of it: plain stores, the kernel's other branch)."""
    import torch

    from gdn.common import launch as L
    from gdn.common.triton.prefill import chunk_state as TS
    from gdn.nvidia.gluon import _common as C
    from gdn.nvidia.gluon import chunk_state as GS
    args, kw = TS._example("meta", layout="vk")
    args = (*args[:9], torch.empty(args[9].shape, dtype=torch.float32, device="meta"))
    with L.recording("sm_90"), C.recording() as launches:
        GS.launch_state(*args, kw["use_qk_l2norm"], kw["state_layout"], dict(BV=32, STAGES=4))
    assert launches[0].constexprs.get("vn_desc", "absent") is None
    _check_hopper_kernel("chunk_state_sm90[v_new=fp32]", launches[0])


@needs_gluon
@pytest.mark.parametrize("cfg", [dict(BV=32, STAGES=4), dict(BV=32, STAGES=3), dict(BV=16, STAGES=2)])
def test_chunk_state_other_configs(cfg):
    """The registered example takes the "wide" config (BV=32, 2 stages); the narrow one (BV=32, 4 stages), 3
    stages and the finest split compile too, with every wgmma operand retired by a wait, and without register
    spills (ptxas -v)."""
    from gdn.common import launch as L
    from gdn.common.triton.prefill import chunk_state as TS
    from gdn.nvidia.gluon import _common as C
    from gdn.nvidia.gluon import chunk_state as GS
    args, kw = TS._example("meta", layout="kv")
    with L.recording("sm_90"), C.recording() as launches:
        GS.launch_state(*args, kw["use_qk_l2norm"], kw["state_layout"], cfg)
    _check_hopper_kernel(f"chunk_state_sm90{cfg}", launches[0])


@needs_gluon
def test_chunk_state_output_fused_compiles():
    """The state pass with the output fused (prefill's sm_90 path for wide batches). The table's config
    (BV=128, two warpgroups) runs at 255 registers and spills a few bytes (ptxas, triton 3.6: 4; it was 184
    with the output offsets held across the chunk loop, 2.5% slower); the bound catches a change that makes
    the spill grow back."""
    from gdn.nvidia.gluon import chunk_state as GS
    launches = GS._fused_example_launches("sm_90")
    assert launches and any("TMA_O=0" in name for name, _ in launches[:2])      # both output branches
    # and as prefill launches it: the key and query norms as TMA tiles from the first kernel, with the wide and
    # the narrow table entries (the narrow one's chain takes EARLY)
    norms = [(name, launch) for name, launch in launches if name.endswith(",norms]") and ",head" not in name]
    assert len(norms) == 2 and all("rq_desc" in launch.signature for _, launch in norms), [n for n, _ in launches]
    assert sorted(launch.constexprs["EARLY"] for _, launch in norms) == [False, True]
    for name, launch in launches[:2] + norms:
        _check_hopper_kernel(name, launch, max_spill=32)


@needs_gluon
def test_transition_pass_compiles():
    """The segmented prefill's transition pass (cfg TRANSITION: the A path's warp-specialised pass with V + K state
    columns, v's columns past V read as zeros, no output): no spill, none of the output partition's wgmmas, no
    o store, no q tile loaded (the query norms come from the first kernel)."""
    from gdn.nvidia.gluon import chunk_state as GS
    launches = dict(GS._fused_example_launches("sm_90"))
    name = next(n for n in launches if n.endswith(",transition]"))
    tr, full = launches[name], launches[name.replace(",transition]", ",norms]")]      # (the same pass, with o)
    assert tr.constexprs["NO_OUT"] and tr.constexprs["VU"] == full.constexprs["V"]
    assert tr.constexprs["V"] == 2 * full.constexprs["V"]       # V + K state columns (the example's K = V)
    ptx = _check_hopper_kernel(name, tr).asm["ptx"]
    ptx_full = _check_hopper_kernel(name + "(with output)", full).asm["ptx"]
    mma = lambda p: p.count("wgmma.mma_async")
    assert 0 < mma(ptx) < mma(ptx_full)
    store = "cp.async.bulk.tensor.2d.global.shared::cta"     # o's TMA store (the final state: plain stores)
    assert store in ptx_full and store not in ptx
    loads = lambda p: p.count("cp.async.bulk.tensor.2d.shared::cluster.global")
    assert loads(ptx) < loads(ptx_full)


@needs_gluon
def test_head_pass_compiles():
    """The head pass (cfg HEAD, prefill's wide batches at V = 128): two math warpgroups at 192 registers, the scores
    warpgroup at 104, the loader at 24 (setmaxnreg from a 128-register launch); no injected wgmma wait; o by TMA
    store; the products of a chunk as the kernel's docstring has them (per math warpgroup k h and q h over K, A' x,
    the [64, 128] state update, P' v_new; q k^T once in the scores warpgroup). ptxas spills a few bytes in the
    initial state's load (offsets of the [64, 128] tile, before the chunk loop; triton 3.6: 56): bounded at 64."""
    from gdn.nvidia.gluon import chunk_state as GS
    launches = dict(GS._fused_example_launches("sm_90"))
    names = [n for n in launches if ",head" in n]
    assert names, "no head-pass example"
    for name in names:
        launch = launches[name]
        assert launch.kernel.fn.__name__ == "chunk_state_output_head_sm90"
        assert launch.options.get("maxnreg") == 128
        assert launch.signature["o_desc"].startswith("tensordesc")
        assert launch.signature["rk_desc"].startswith("tensordesc")
        assert launch.signature["rq_desc"].startswith("tensordesc") == name.endswith(",norms]")
        ptx = _check_hopper_kernel(name, launch, max_spill=64).asm["ptx"]
        for regs in (192, 104, 24):
            assert f"setmaxnreg.inc.sync.aligned.u32 \t{regs}" in ptx or \
                f"setmaxnreg.dec.sync.aligned.u32 \t{regs}" in ptx, (name, regs)
        shapes = re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m64n\d+k16)", ptx)
        # per chunk: 2 x (k h 8 + q h 8 + A' x 4 + P' v_new 4) m64n64 and 2 x 4 m64n128 (the update); q k^T 8 m64n64
        assert shapes.count("m64n128k16") == 8 and shapes.count("m64n64k16") == 2 * 24 + 8, (name, shapes)


@needs_gluon
def test_chunk_state_output_tma_o_compiles():
    """The fused pass with whole chunks' output by TMA store (cfg TMA_O, 16-bit out): it fits sm_90's shared
    memory (an extra [64, BV] tile), and keeps the spill bound and no injected waits."""
    import torch

    from gdn.common import examples
    from gdn.common import launch as L
    from gdn.nvidia.gluon import _common as C
    from gdn.nvidia.gluon import chunk_state as GS
    ex, variants = examples.KERNEL_EXAMPLES["chunk_state"]
    (k, w, u, g_cum, pool, idx, cu, has_init, _, _), kw = ex("meta", **variants[0])
    cfg = GS.fit_config(GS.TWO_WG, u.shape[2])
    with L.recording("sm_90"), C.recording() as launches:
        GS.launch_state_output(k, w, u, torch.empty_like(k), g_cum, pool, idx, cu, has_init, torch.empty_like(u),
                               0.1, kw["use_qk_l2norm"], kw["state_layout"], cfg)
    assert launches[0].signature["o_desc"].startswith("tensordesc")
    _check_hopper_kernel("chunk_state_output_sm90[TMA_O]", launches[0], max_spill=32)


@needs_gluon
@pytest.mark.parametrize("tma_o,rk,pairs,p_split,a_path",
                         [(True, True, 1, False, False), (False, False, 1, True, False), (True, True, 128, False, False),
                          (True, True, 1, False, True), (True, True, 128, False, True)])
def test_chunk_state_output_ws_compiles(tma_o, rk, pairs, p_split, a_path):
    """The warp-specialised fused pass (prefill's entries: 32 state columns per CTA for narrow batches, 64 for
    the rest): three partitions with their register budgets (setmaxnreg), one named barrier each, no spill,
    no injected wgmma wait; o by TMA store and by plain stores (fp32 out, or a table without TMA_O); the key
    norms from prefill's first kernel (as prefill runs it) and from the k tiles; the scores times v_new as
    one MMA (the table) and as hi + lo parts (P_SPLIT: one wgmma more per chunk); the A path (A' [T, HV, 64]
    tiles in w's place, v in u's)."""
    import torch

    from gdn.common import examples
    from gdn.common import launch as L
    from gdn.nvidia.gluon import _common as C
    from gdn.nvidia.gluon import chunk_state as GS
    ex, variants = examples.KERNEL_EXAMPLES["chunk_state"]
    (k, w, u, g_cum, pool, idx, cu, has_init, _, _), kw = ex("meta", **variants[0])
    cfg = GS.fused_config("sm_90", pairs, 1, k.shape[2], u.shape[2], head=False)       # (the head pass: below)
    assert cfg.get("WS") and cfg["P_SPLIT"] is False
    cfg = dict(cfg, TMA_O=tma_o, P_SPLIT=p_split, A_PATH=a_path)
    if a_path:
        w = w.new_empty(w.shape[0], w.shape[1], C.BT)
    with L.recording("sm_90"), C.recording() as launches:
        GS.launch_state_output(k, w, u, torch.empty_like(k), g_cum, pool, idx, cu, has_init, torch.empty_like(u),
                               0.1, kw["use_qk_l2norm"], kw["state_layout"], cfg,
                               torch.empty(k.shape[:2], dtype=torch.float32, device="meta") if rk else None)
    (launch,) = launches
    assert launch.kernel.fn.__name__ == "chunk_state_output_ws_sm90"
    assert launch.signature["rk_desc"].startswith("tensordesc") == rk
    assert launch.options.get("maxnreg") == cfg["maxnreg"]
    assert launch.signature["o_desc"].startswith("tensordesc") == tma_o
    assert launch.constexprs["P_SPLIT"] == p_split and launch.constexprs["A_PATH"] == a_path
    ptx = _check_hopper_kernel(f"chunk_state_output_ws_sm90[TMA_O={tma_o},P_SPLIT={p_split},A_PATH={a_path}]",
                               launch).asm["ptx"]
    assert f"setmaxnreg.inc.sync.aligned.u32 \t{cfg['OUT_REGS']}" in ptx
    assert "bar.sync \t0, 128" in ptx and "mbarrier.arrive" in ptx
    # the wide entry's pass is persistent: its loader takes work items from the queue by one atomic add each
    persist = pairs > GS.FUSED_NARROW_PAIRS
    assert launch.constexprs["PERSIST"] == persist
    assert ("atom.global.gpu.acq_rel.add" in ptx) == persist


@needs_gluon
def test_chunk_prep_compiles():
    """Prefill's first kernel in Gluon (sm_90, raw and precomputed gates) at its 168-register cap (three CTAs
    per SM) without register spill (ptxas, triton 3.6: none since the 16x16 blocks are inverted by forward
    substitution; the doubling's wgmma loop spilled 32 bytes there); also with A' out instead of w and u, at
    its 128-register cap (four CTAs per SM) with the solve's single-product merges."""
    from gdn.nvidia.gluon import chunk_prep as CP
    launches = CP.example_launches("sm_90")
    assert len(launches) == 3 and launches[2][1].constexprs["A_OUT"] is True
    for name, launch in launches:
        a_out = launch.constexprs["A_OUT"]
        # the cap and the solve's precision reach the compile
        assert launch.options.get("maxnreg") == (CP.A_OUT_MAXNREG if a_out else CP.MAXNREG), name
        assert launch.constexprs["SOLVE_SPLIT"] == (CP.A_OUT_SOLVE_SPLIT if a_out else True), name
        kernel = _check_hopper_kernel(name, launch)
        # shared memory must not lower the occupancy the register cap buys (65536 / (128 x cap) CTAs per SM;
        # sm_90: 228 KB, 1 KB of it reserved per CTA): the query norms' q tile once took the A' kernel from four
        # CTAs per SM to three until the solve's unused lo tiles went (8x4096: 0.224 against 0.201 ms, H100)
        ctas = 65536 // (128 * launch.options["maxnreg"])
        assert ctas * (kernel.metadata.shared + 1024) <= 228 * 1024, (name, kernel.metadata.shared, ctas)


@needs_gluon
def test_prefill_pdl_pair_compiles(monkeypatch):
    """Prefill's two sm_90 kernels as a PDL pair (on a GPU host by default; this CPU session has the interpreter
    on, so PDL is forced here): the first kernel triggers its dependents at its start, the warp-specialised pass
    is launched with launch_pdl and waits (griddepcontrol.wait) in its loader and before it completes."""
    import torch

    from gdn.common import examples
    from gdn.common import launch as L
    from gdn.nvidia.gluon import _common as C
    from gdn.nvidia.gluon import chunk_prep as CP
    from gdn.nvidia.gluon import chunk_state as GS
    monkeypatch.setattr(L, "pdl_ok", lambda arch: True)
    ex, variants = examples.KERNEL_EXAMPLES["chunk_state"]
    (k, w, u, g_cum, pool, idx, cu, has_init, _, _), kw = ex("meta", **variants[0])
    cfg = dict(GS.fused_config("sm_90", 1, 1, k.shape[2], u.shape[2]))
    assert cfg["PDL"] and GS.pdl_pass(cfg, k.device)
    w = w.new_empty(w.shape[0], w.shape[1], C.BT)
    norms = [torch.empty(k.shape[:2], dtype=torch.float32, device="meta") for _ in range(2)]
    with L.recording("sm_90"), C.recording() as launches:
        GS.launch_state_output(k, w, u, torch.empty_like(k), g_cum, pool, idx, cu, has_init, torch.empty_like(u),
                               0.1, kw["use_qk_l2norm"], kw["state_layout"], cfg, *norms)
    (launch,) = launches
    assert launch.options.get("launch_pdl") is True and launch.constexprs["PDL"] is True
    ptx = _check_hopper_kernel("chunk_state_output_ws_sm90[PDL]", launch).asm["ptx"]
    assert ptx.count("griddepcontrol.wait") == 2, ptx.count("griddepcontrol.wait")
    (name, prep), = [x for x in CP.example_launches("sm_90") if x[1].constexprs["A_OUT"]]
    prep = L.Launch(prep.kernel, prep.signature, dict(prep.constexprs, TRIGGER=True), prep.options, prep.attrs)
    ptx = _check_hopper_kernel(name + "[TRIGGER]", prep).asm["ptx"]
    assert "griddepcontrol.launch_dependents" in ptx and "griddepcontrol.wait" not in ptx


def test_fused_config_table():
    """The fused pass: warp-specialised, 32 state columns per CTA up to 32 (sequence, v-head) pairs (four CTAs
    a pair fill one wave), 64 up to 64 pairs, then the head pass (all 128 columns a CTA) at K = V = 128 (the
    warp-specialised pass at 64 columns for other sizes, and where the caller has no A' to give: head=False); at
    K <= 128, with >= 16 state columns per warpgroup."""
    from gdn.nvidia.gluon import chunk_state as GS
    for N, BV, stages in ((1, 32, 3), (2, 64, 2)):     # 1x32768, 2x8192
        cfg = GS.fused_config("sm_90", N, 32, 128, 128)
        assert cfg["WS"] and not cfg.get("HEAD") and (cfg["BV"], cfg["STAGES"]) == (BV, stages), (N, cfg)
    for N in (3, 8, 64):                                # 3x1000, 8x4096, 64x512
        cfg = GS.fused_config("sm_90", N, 32, 128, 128)
        assert cfg["HEAD"] and cfg["A_PATH"] and cfg["BV"] == 128, (N, cfg)
        assert not GS.fused_config("sm_90", N, 32, 128, 128, head=False).get("HEAD")
        assert not GS.fused_config("sm_90", N, 32, 64, 128).get("HEAD")
    assert GS.fused_config("sm_90", 1, 33, 128, 128)["BV"] == 64
    assert GS.fused_config("sm_90", 8, 32, 256, 128) is None
    assert GS.fused_config("sm_80", 8, 32, 128, 128) is None
    cfg = GS.fused_config("sm_90", 64, 4, 64, 64)
    assert cfg["BV"] == 64 and cfg["BV"] // (cfg["num_warps"] // 4) >= 16


def test_gcum_desc_tma_addressable():
    """The plain state pass reads g_cum [T, HV] by TMA in [64, 4] tiles: prefill's padded buffer (and any
    16-byte-row g_cum) is described in place; any other g_cum is copied into a padded buffer, values kept."""
    import torch

    from gdn.common.triton.prefill import _common as PC
    from gdn.nvidia.gluon import chunk_state as GS
    g = PC.gcum_empty(100, 6, "cpu")
    assert g.shape == (100, 6) and g.stride(0) * 4 % 16 == 0
    g.copy_(torch.randn(100, 6))
    d = GS.gcum_desc(g)
    assert d.base is g and d.shape == (100, 6) and d.stride == 8 and d.block == (64, 4)
    for bad in (torch.randn(100, 6),                      # 24-byte rows
                torch.randn(100, 16)[:, 3:9],             # base 12 bytes into the rows
                torch.randn(6, 100).t()):                 # head stride 100
        d = GS.gcum_desc(bad)
        assert d.base is not bad and d.base.stride(0) * 4 % 16 == 0 and d.base.stride(1) == 1
        assert d.shape == (100, 6) and torch.equal(d.base, bad)
    d = GS.gcum_desc(torch.empty(0, 6))                   # no tokens: one zero row for the descriptor
    assert d.shape == (1, 6)


@needs_gluon
def test_desc_build_matches_checked_constructor():
    """Desc.build skips TensorDescriptor's constructor checks (host time): the object must be the one that
    constructor makes, field for field, and the JIT must specialise on it the same way."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from gdn.nvidia.gluon import _common as C
    packed = torch.empty(200, 8, 32, dtype=torch.float16)[:, 2:6]          # a view: row stride 256, heads packed
    for t, cols in ((torch.empty(100, 4, 64, dtype=torch.bfloat16), None),
                    (torch.empty(100, 4, 64, dtype=torch.bfloat16), 32), (packed, None)):
        assert C.tma_ok(t)
        d = C.head_matrix(t, 64, cols)
        fast = d.build()
        checked = TensorDescriptor(t, list(d.shape), [d.stride, 1], list(d.block), d.layout())
        assert type(fast) is TensorDescriptor and vars(fast) == vars(checked)
        assert (native_specialize_impl(CUDABackend, fast, False, True, True)
                == native_specialize_impl(CUDABackend, checked, False, True, True))


def test_tma_ok():
    from gdn.nvidia.gluon import _common as C
    bf = torch.bfloat16
    assert C.tma_ok(torch.empty(10, 4, 64, dtype=bf))
    assert C.tma_ok(torch.empty(10, 8, 64, dtype=bf)[:, :4])                # row stride 512 elements
    assert C.tma_ok(torch.empty(10, 1, 64, dtype=bf).expand(10, 1, 64))
    assert C.tma_ok(torch.empty(10, 4, 64, dtype=bf, device="meta"))
    assert not C.tma_ok(torch.empty(10, 64, 4, dtype=bf).transpose(1, 2))   # heads not packed
    assert not C.tma_ok(torch.empty(10, 4, 65, dtype=bf)[:, :, :64])        # 130-byte head stride
    assert not C.tma_ok(torch.empty(10 * 4 * 64 + 1, dtype=bf)[1:].view(10, 4, 64))   # base 2 bytes off
    assert not C.tma_ok(torch.empty(10, 4, 4, dtype=bf))                    # 8-byte rows


def test_launch_compiled_declines_without_a_jit_binary():
    """The launch path that skips the JIT's bookkeeping takes only calls the JIT has compiled for: an
    interpreted kernel (no device caches) goes through the JIT."""
    from gdn.common import launch as L

    class Interpreted:          # what TRITON_INTERPRET=1 makes of a kernel: no device_caches
        pass
    assert L.launch_compiled(Interpreted(), (1,), [], {}) is False


@needs_gluon
def test_launch_plan_keys_as_fine_as_triton_specialisation():
    """A launch plan is found by a key of the arguments (gdn.common.launch._plan_key) instead of Triton's
    binder: two arguments with one key must specialise alike in Triton 3.6 (else a plan would launch a binary
    compiled for other arguments), and a Desc's key must determine its signature."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend
    from gdn.common import launch as L
    from gdn.nvidia.gluon import _common as C
    buf = torch.empty(4096, dtype=torch.uint8)
    vals = [0, 1, 2, 15, 16, 17, 32, -16, -5, 2**31 - 16, 2**31 - 1, 2**31, 2**32 + 16, 2**63 - 1, 2**63, 2**64 - 16,
            True, False, 0.0, 1.0, 3.5, None]
    vals += [buf[o:o + 64].view(dt) for o in (0, 16, 32, 4, 8) for dt in (torch.bfloat16, torch.float32, torch.int32)]
    vals += [buf[2:66].view(torch.bfloat16), buf[18:82].view(torch.float16)]
    vals += [torch.nn.Parameter(torch.zeros(8)), buf[1:9]]
    seen = {}
    for v in vals:
        key = L._plan_key(None, 0, [v], {}, False, "")[2][0]
        spec = native_specialize_impl(CUDABackend, v, False, True, True)
        assert seen.setdefault(key, spec) == spec, (v, key, spec, seen[key])
    assert len(seen) >= 15          # (the keys do tell these apart)
    bf = torch.bfloat16
    descs = [C.head_matrix(torch.empty(rows, 4, d, dtype=dt), 64, bc) for rows in (64, 200) for d in (64, 128)
             for dt in (bf, torch.float16) for bc in (None, 32)]
    sigs = {}
    for d in descs:
        assert sigs.setdefault(L._plan_key(None, 0, [d], {}, False, "")[2][0], d.signature()) == d.signature()
    assert len(sigs) == 6           # tiles [64, 64], [64, 128], [64, 32] in two dtypes
