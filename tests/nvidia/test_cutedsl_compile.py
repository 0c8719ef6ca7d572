"""CuTeDSL decode family without a GPU: every AOT variant compiles for sm_90a and sm_100a (and the cubin is
for that arch), the modules register without cutlass, the tile table only yields valid tiles, and the fast
argument packing equals CuTeDSL's own marshalling.

The two archs compile in two child processes at once, each with CUTE_DSL_ARCH set before CuTeDSL is
imported (the explicit `--gpu-arch` compile option is what decides; the variable is belt and braces).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from _cutedsl_fakes import FakeDecodeLaunches

from gdn.common import probe, registry

OPS = ("decode", "decode_packed", "decode_mtp")
ARCHS = {"sm_90": "sm_90a", "sm_100": "sm_100a"}
needs_cutlass = pytest.mark.skipif(not probe.cutedsl_available(),
                                   reason="nvidia-cutlass-dsl (CuTeDSL) is not importable here")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = textwrap.dedent(r"""
    import json, struct, sys, time
    from gdn import ops
    from gdn.common import registry
    from gdn.nvidia.cutedsl import _common as C
    ops.load_backends()
    arch = sys.argv[1]

    def cubin_sm(fn):
        # the fatbin embedded in the host module, as MLIR prints it (\XX escapes); ELF e_flags -> SM
        s = str(fn.ir_module)
        j = s.index('@kernels_binary("') + len('@kernels_binary("')
        out = bytearray()
        while s[j] != '"':
            if s[j] == "\\" and s[j + 1] == "\\":
                out.append(0x5C); j += 2
            elif s[j] == "\\":
                out.append(int(s[j + 1:j + 3], 16)); j += 3
            else:
                out.append(ord(s[j])); j += 1
        e = bytes(out[out.find(b"\x7fELF"):])
        flags = struct.unpack_from("<I", e, 48)[0]
        return (flags & 0xff) if e[8] < 8 else ((flags >> 8) & 0xff)

    res = {}
    for op in %r:
        t0 = time.time()
        try:
            names = registry.get(op, "cutedsl").aot(arch)
            res[op] = dict(names=names, seconds=round(time.time() - t0, 1), error=None)
        except Exception as e:
            import traceback
            res[op] = dict(names=[], seconds=round(time.time() - t0, 1),
                           error=f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}")
    res["sm"] = {spec.name(): cubin_sm(fn) for spec, fn in C._CACHE.items()}
    print("RESULT" + json.dumps(res))
""") % (OPS,)


@pytest.fixture(scope="module")
def aot_results():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    procs = {}
    for arch, target in ARCHS.items():
        procs[arch] = subprocess.Popen([sys.executable, "-c", _CHILD, arch], env={**env, "CUTE_DSL_ARCH": target},
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    out = {}
    for arch, p in procs.items():
        stdout, stderr = p.communicate(timeout=1200)
        line = next((l for l in stdout.splitlines() if l.startswith("RESULT")), None)
        if line is None:
            pytest.fail(f"AOT child for {arch} died (rc {p.returncode}):\n{stdout[-3000:]}\n{stderr[-5000:]}")
        out[arch] = json.loads(line[len("RESULT"):])
    return out


@needs_cutlass
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_aot_compiles_every_variant(aot_results, op, arch):
    r = aot_results[arch][op]
    assert r["error"] is None, r["error"]
    assert r["names"], f"{op} compiled nothing for {arch}"
    want = int(arch.split("_")[1])
    sm = aot_results[arch]["sm"]
    for name in r["names"]:
        assert name.endswith(ARCHS[arch]), name
        assert sm.get(name) == want, f"{name}: cubin is for sm_{sm.get(name)}, expected sm_{want}"


def test_registered_records():
    from gdn import ops
    ops.load_backends()
    for op in OPS:
        impl = registry.get(op, "cutedsl")
        assert impl.priority == 40 and impl.archs == ("sm_90", "sm_100")
        assert impl.requires == ("nvidia-cutlass-dsl>=4.8.1",)
        # numerics validated on an H100 (2026-11-22); sm_100 stays compile-only until a Blackwell run
        assert impl.validated_on == ("sm_90",) and impl.interpretable is False and impl.aot is not None
        assert impl.layouts == ("vk", "kv")


def test_registers_without_cutlass():
    """With cutlass unimportable the modules still import and register; the compile path says why not."""
    code = textwrap.dedent("""
        import sys
        sys.modules["cutlass"] = None          # import cutlass -> ImportError
        from gdn.common import probe, registry
        probe.package_version.cache_clear()
        probe.cutedsl_available.cache_clear()
        real = probe.package_version
        probe.package_version = lambda d: None if d == "nvidia-cutlass-dsl" else real(d)
        from gdn import ops
        ops.load_backends()
        for op in ("decode", "decode_packed", "decode_mtp"):
            impl = registry.get(op, "cutedsl")
            assert impl.requirement_reasons() == ["needs nvidia-cutlass-dsl>=4.8.1, not installed"], \
                impl.requirement_reasons()
        try:
            registry.get("decode", "cutedsl").aot("sm_90")
        except ImportError:
            print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.stdout.strip().endswith("OK"), p.stdout[-2000:] + p.stderr[-3000:]


@needs_cutlass
def test_tile_table_yields_valid_tiles():
    from gdn.nvidia.cutedsl import _common as C
    from gdn.nvidia.cutedsl import _kernel as Kn
    for arch in ("sm_90", "sm_100"):
        for layout in ("vk", "kv"):
            for sd in ("fp32", "bf16"):
                for d in (64, 128, 256):
                    for T in (1, 4):
                        for B in (1, 3, 8, 32, 64, 128, 256, 512, 1024, 4096):
                            tile = C.pick_tile(arch, layout, sd, d, d, B * 32, T)
                            spec = C.base_spec(layout=layout, state=sd, K=d, V=d, T=T, tile=tile)
                            k = Kn.DecodeKernel(spec)       # asserts the tile fits the head dims
                            assert k.NSPLIT * k.BV == d and k.threads <= 1024


def test_align_of():
    from gdn.nvidia.cutedsl._common import align_of
    assert align_of(0, 4096) == 16
    assert align_of(8, 16) == 8
    assert align_of(2, 16) == 2
    assert align_of(6) == 2 and align_of(1) == 1


@needs_cutlass
def test_fast_argument_packing_matches_dsl():
    from gdn.nvidia.cutedsl import _common as C
    for kw in (dict(tile=(4, 4)), dict(layout="kv", tile=(32, 4), T=2, inter="fp32", parent="i64",
                                       inter_idx="i32", state_align=8, qkv_align=4)):
        launcher = C.Launcher(C.base_spec(**kw))
        for args in (((1 << 20,) * 13, (8, 100, 1), 0.0884, tuple(range(1, 15)), 0x7777),
                     ((1 << 40,) * 13, (4096, 1 << 20, 7), -1.5, (-3,) + (1 << 33,) * 13, 0)):
            assert launcher._verify(*args), kw


# ---------------------------------------------------------------------------------------------------
# tile bookkeeping (CPU): every tile the kernel accepts covers each state element, v/q/k chunk and output
# exactly once, with the same index arithmetic the kernel runs (DecodeKernel.coords / tile_coord /
# out_coords / grid_size evaluated on numpy integer arrays)

def _all_tiles(C, layout, sd, d, vb, T):
    return C.candidate_tiles(layout, sd, d, d, vb, T, ("", "e", "s", "es"))


def _check_cover(kern, B):
    """Emulate one launch of `kern` for batch B over every (CTA, thread); assert exact covers."""
    import numpy as np
    HV, K, V = kern.HV, kern.K, kern.V
    nblk = kern.grid_size(B)
    bidx, tidx = np.meshgrid(np.arange(nblk), np.arange(kern.threads), indexing="ij")
    bidx, tidx = bidx.ravel(), tidx.ravel()
    c = kern.coords(tidx, bidx)
    b, hv = c["b"], c["hv"]
    assert b.min() == 0 and b.max() == B - 1 and hv.min() == 0 and hv.max() == HV - 1
    assert (c["h"] == hv // kern.G).all()
    rows_n, cols_n = (V, K) if kern.vk else (K, V)
    cover = np.zeros((B, HV, rows_n, cols_n), np.int64)
    for r in range(kern.NROW):
        row, col = kern.tile_coord(r, c)
        assert (row >= 0).all() and (row < rows_n).all()
        assert (col >= 0).all() and ((col + 1) * kern.NCOL <= cols_n).all()
        for i in range(kern.NCOL):
            np.add.at(cover, (b, hv, row, col * kern.NCOL + i), 1)
    assert (cover == 1).all(), f"{kern.spec.name()}: state elements covered {cover.min()}..{cover.max()} times"
    outs = np.zeros((B, HV, V), np.int64)
    lead = np.asarray(c["lead"], bool)
    for pos in kern.out_coords(c):
        np.add.at(outs, (b[lead], hv[lead], np.asarray(pos)[lead]), 1)
    assert (outs == 1).all(), f"{kern.spec.name()}: outputs written {outs.min()}..{outs.max()} times"
    if kern.vk:
        # a row's K is split over the LPR lanes of an aligned lane group (what the butterflies reduce over)
        assert kern.LPR & (kern.LPR - 1) == 0
        grp = (bidx * kern.threads + tidx) // kern.LPR
        kq = np.zeros((grp.max() + 1, kern.LPR), np.int64)
        np.add.at(kq, (grp, c["kq"]), 1)
        assert (kq == 1).all(), f"{kern.spec.name()}: a lane group does not hold each K chunk once"
        lo, hi = np.full(grp.max() + 1, 1 << 30), np.full(grp.max() + 1, -1)
        np.minimum.at(lo, grp, c["row0"])
        np.maximum.at(hi, grp, c["row0"])
        assert (lo == hi).all(), f"{kern.spec.name()}: a lane group spans two rows"
    else:
        # a column group's K rows: lanes with equal lane % LV (butterfly over the high lane bits) and warps
        # (shared memory, column (tidx % LV) * VEC of the CTA's BV)
        assert kern.LV & (kern.LV - 1) == 0
        key = (bidx // kern.NSPLIT) * (V // kern.VEC) + c["vc"]          # (state, column group)
        assert ((tidx % kern.LV) + (bidx % kern.NSPLIT) * kern.LV == c["vc"]).all()
        kr = np.zeros((key.max() + 1, K), np.int64)
        for r in range(kern.NROW):
            np.add.at(kr, (key, c["kg"] * kern.RK + r), 1)
        assert (kr == 1).all(), f"{kern.spec.name()}: a column group does not hold each K row once"
        assert kern.KPN * 32 == K


@needs_cutlass
def test_tile_bookkeeping_covers_every_element_once():
    from gdn.nvidia.cutedsl import _common as C
    from gdn.nvidia.cutedsl import _kernel as Kn
    n = 0
    for arch in ("sm_90", "sm_100"):
        vb = C.vec_bytes_for(arch)
        for layout in ("vk", "kv"):
            for sd in ("fp32", "bf16"):
                for d in (64, 128, 256):
                    for T in (1, 4):
                        for tile in _all_tiles(C, layout, sd, d, vb, T):
                            spec = C.base_spec(arch, layout=layout, state=sd, K=d, V=d, H=1, HV=2, T=T, tile=tile)
                            kern = Kn.DecodeKernel(spec)
                            assert kern.threads <= 1024 and kern.NROW * kern.NCOL <= C.state_elems_limit(
                                sd, C.split_tile(tile)[2])
                            _check_cover(kern, 3)
                            n += 1
    assert n > 300, n


@needs_cutlass
def test_sweep_grid_is_valid_and_canonical():
    """Every tile the sweep times is accepted by tile_ok / the kernel, canonical, and distinct; options
    that do not apply are rejected up front."""
    from gdn.nvidia.cutedsl import _common as C
    from gdn.nvidia.cutedsl import _kernel as Kn
    for arch in ("sm_90", "sm_100"):
        vb = C.vec_bytes_for(arch)
        for layout in ("vk", "kv"):
            for sd in ("fp32", "bf16"):
                for T in (1, 4):
                    tiles = C.sweep_tiles(arch, layout, sd, T)
                    assert tiles and len(set(tiles)) == len(tiles)
                    for t in tiles:
                        assert C.norm_tile(t) == t and C.tile_ok(layout, sd, 128, 128, t, vb, T)
                        Kn.DecodeKernel(C.base_spec(arch, layout=layout, state=sd, T=T, tile=t))
    assert C.sweep_tiles("sm_90", "vk", "bf16") and any("s" in C.split_tile(t)[2]
                                                        for t in C.sweep_tiles("sm_90", "vk", "bf16"))
    ok = lambda *a, **k: C.tile_ok(*a, **k)  # noqa: E731
    assert ok("vk", "bf16", 128, 128, (32, 4, "s")) and not ok("vk", "bf16", 128, 128, (32, 4))
    assert not ok("vk", "fp32", 128, 128, (8, 4, "s"), 16, 4)            # streamed rows: T = 1 only
    assert not ok("kv", "fp32", 128, 128, (16, 4, "s"))                  # and vk only
    assert ok("kv", "fp32", 128, 128, (16, 4, "e"))
    assert not ok("vk", "fp32", 128, 128, (8, 4, "se"))                  # not canonical
    assert not ok("vk", "fp32", 128, 128, (8, 4, "x")) and not ok("vk", "fp32", 128, 128, (8, 4, 1))
    assert C.norm_tile((8, 4, "")) == (8, 4) and C.tile_label((8, 4, "es")) == "8x4es"


@needs_cutlass
def test_run_compiles_exactly_the_forced_tile(monkeypatch):
    """The launcher cache key and the compiled Spec agree: a forced tile compiles that tile (never the
    table's), the table's pick is used otherwise, each tile gets its own launcher, a bad tile raises."""
    import torch

    from gdn.common import launch as L
    from gdn.nvidia.cutedsl import _common as C

    fake = FakeDecodeLaunches(monkeypatch)

    with L.recording("sm_90"):
        for sd, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            for B in (1, 128):
                spec, args = fake.call(B, sd)
                assert spec.tile == C.tile_for("sm_90", "vk", name, B * fake.HV)
                assert args[1][0] == B
                for tile in C.sweep_tiles("sm_90", "vk", name):
                    spec, args = fake.call(B, sd, tile)
                    assert spec.tile == tile, (tile, spec.tile)
                    assert args[1][0] == B
            with pytest.raises(ValueError, match="does not fit"):
                fake.call(4, sd, (3, 4))
        made = fake.made
        specs = [m.spec for m in made]
        n_tiles = sum(len(C.sweep_tiles("sm_90", "vk", n)) for n in ("fp32", "bf16"))
        assert len(set(specs)) == len(made) <= n_tiles           # one launcher per distinct variant


@pytest.mark.parametrize("T", [None, 2])
def test_bench_checks_survive_earlier_timed_calls(T, monkeypatch):
    """The sweep checks tile after tile on one Problem while the timed calls of the earlier tiles update the
    pool in place; every check must still start from the states the reference started from (the first H100
    sweep compared later tiles against a pool the earlier timings had advanced: 'WRONG rel 6e-01' for every
    tile but the first). The bench's own cutedsl() wrapper runs here with gdn's reference standing in for
    the kernel (both update the pool they are given in place)."""
    import torch

    from gdn.common import reference as R
    from gdn.common import registry
    from _helpers import load_bench
    bench = load_bench("cutedsl_decode")
    bench.H, bench.HV, bench.K, bench.V = 2, 4, 16, 16
    seen = []

    class Stand:
        def __init__(self, fn):
            self.fn = lambda *a, _tile=None, **k: (seen.append(_tile), fn(*a, **k))

    monkeypatch.setattr(registry, "get", lambda op, backend: Stand(getattr(R, op)))
    p = bench.Problem(3, torch.float32, "vk", l2=1 << 20, T=T, device="cpu")
    ref = p.reference()
    for tile in ((1, 4), (2, 4, "e"), (4, 4, "s")):          # tile after tile: check, then "time"
        calls, err = bench.verified(p, lambda q, t=tile: bench.cutedsl(q, t), ref)
        assert err is None, f"tile {tile}: {err}"
        assert seen[-1] == tile
        for _ in range(5):
            for c in calls:
                c()
    if T is None:
        assert not torch.equal(p.pool[p.idx[0].long()], p.init0)     # the timed calls did move the pool


def test_tile_table_key_by_gpu_model(monkeypatch):
    """An H200 reads its own TILES rows first, then the arch's, then default_tile (the key comes from
    launch.model_table_key, whose other cases tests/triton/test_decode.py covers). The AOT lists cover the
    tiles of every table key."""
    import torch

    from gdn.common import probe
    from gdn.nvidia.cutedsl import _common as C
    h200 = probe.DeviceInfo("cuda", "nvidia", "sm_90", "NVIDIA H200", 132, 50 << 20)
    monkeypatch.setattr(probe, "device_info", lambda d=None: h200)
    monkeypatch.setattr(C, "_TABLE_KEY", {})
    assert C.table_key_of(torch.device("cuda", 7), "sm_90") == "sm_90:h200"   # device never touched: faked
    monkeypatch.setattr(C, "TILES", {("sm_90", "vk", "fp32", "decode", 32): (4, 1),
                                     ("sm_90", "vk", "fp32", "decode", 256): (2, 4),
                                     ("sm_90:h200", "vk", "fp32", "decode", 256): (16, 1, "en")})
    C.pick_tile.cache_clear()
    try:
        pick = lambda key, nh: C.pick_tile(key, "vk", "fp32", 128, 128, nh, 1)  # noqa: E731
        assert pick("sm_90:h200", 256) == (16, 1, "en") and pick("sm_90", 256) == (2, 4)
        assert pick("sm_90:h200", 32) == (4, 1)                                   # the arch's row
        assert pick("sm_90:h200", 2048) == C.default_tile("sm_90", "vk", "fp32", 128, 128, 2048, 1)
        assert C.table_keys("sm_90") == ["sm_90", "sm_90:h200"] and C.table_keys("sm_100") == ["sm_100"]
        assert (16, 1, "en") in C.table_tiles("sm_90", "vk", "fp32")
    finally:
        C.pick_tile.cache_clear()
