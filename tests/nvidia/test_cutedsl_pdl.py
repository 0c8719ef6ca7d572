"""Programmatic dependent launch (PDL) of the CuTeDSL decode family, on the CPU.

A `Spec(pdl=True)` variant compiled for sm_90a / sm_100a issues griddepcontrol.wait (then launch_dependents)
before its first global access (but for a hint: its slot index read L2-only and its state rows prefetched
into L2) and its host code launches it with the programmatic-stream-serialization
attribute set; the variant without PDL has neither. run() launches the PDL twin exactly when
`launch.use_pdl(arch, grid)` says so (same policy and GDN_PDL as the Triton kernels), the fast argument
packing is unchanged by it, and the AOT lists compile the PDL variants. On a GPU:
tests/gpu/test_cutedsl_pdl_gpu.py.
"""
import re

import pytest
from _cutedsl_fakes import FakeDecodeLaunches

from gdn.common import probe

needs_cutlass = pytest.mark.skipif(not probe.cutedsl_available(),
                                   reason="nvidia-cutlass-dsl (CuTeDSL) is not importable here")

# cudaLaunchAttributeProgrammaticStreamSerialization (CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
PROGRAMMATIC_STREAM_SERIALIZATION = 6
GLOBAL_ACCESS = re.compile(r"^\s*(@%p\d+\s+)?(ld|st|atom|red|prefetch)\.global|cp\.async")


def launch_attributes(host: str) -> dict:
    """{attribute id: value} that the host function calling cudaLaunchKernelEx stores into the launch
    attribute array (entries struct<(i32 id, pad, 64-byte value)>: the id to field [0, 0], then the value to
    field [0, 2]), read from the host module's MLIR."""
    funcs = [f for f in host.split("llvm.func @")[1:] if "llvm.call @_cudaLaunchKernelEx(" in f]
    assert len(funcs) == 1, f"expected one host function launching the kernel, found {len(funcs)}"
    body = funcs[0]
    const = dict(re.findall(r"(%\w+) = llvm\.mlir\.constant\((-?\d+) : i32\) : i32", body))
    pairs = re.findall(r"llvm\.store (%\w+), %\w+ : i32, !llvm\.ptr\s+%\w+ = llvm\.getelementptr %\w+\[0, 2\] : "
                       r"\(!llvm\.ptr\) -> !llvm\.ptr, !llvm\.struct<\(i32, array<4 x i8>, array<64 x i8>\)>\s+"
                       r"llvm\.store (%\w+), %\w+ : i32", body)
    return {int(const[a]): int(const[b]) for a, b in pairs if a in const and b in const}


SPECULATIVE = re.compile(r"ld\.global\.cg|prefetch\.global\.L2")   # the slot guess and its L2 prefetch


def ptx_report(ptx: str) -> dict:
    """Line indices in the PTX of griddepcontrol.wait / launch_dependents (every occurrence) and of the first
    global memory access (-1: none) other than the PDL variant's hint (its slot index read L2-only and the
    state prefetched into L2 before the wait), and the kinds of global access before the first wait."""
    lines = ptx.splitlines()
    first = next((i for i, l in enumerate(lines) if GLOBAL_ACCESS.search(l) and not SPECULATIVE.search(l)), -1)
    wait = [i for i, l in enumerate(lines) if "griddepcontrol.wait" in l]
    early = sorted({SPECULATIVE.search(l).group(0) if SPECULATIVE.search(l) else l.split()[0]
                    for l in lines[:wait[0] if wait else 0] if GLOBAL_ACCESS.search(l)})
    return dict(wait=wait, launch=[i for i, l in enumerate(lines) if "griddepcontrol.launch_dependents" in l],
                any_gdc=any("griddepcontrol" in l for l in lines), first_global=first, early=early)


def _cases(C):
    """Variants whose first global access differs: plain vk decode; early loads + streamed rows (the slot
    index and q/k/v go out first); kv tree verify (shared-memory reduction, parent loads); sm_100a; a tile
    without the L2 prefetch before the wait ("n")."""
    return [
        C.base_spec("sm_90", tile=(4, 4)),
        C.base_spec("sm_90", state="bf16", tile=(4, 4, "es")),
        C.base_spec("sm_90", layout="kv", T=4, inter="fp32", parent="i32", update_state=False, tile=(32, 4)),
        C.base_spec("sm_100", tile=(4, 4)),
        C.base_spec("sm_90", tile=(16, 4, "n")),
    ]


@needs_cutlass
@pytest.mark.parametrize("case", range(5), ids=["vk-sm90", "vk-bf16-es-sm90", "kv-tree-sm90", "vk-sm100",
                                                 "vk-no-prefetch-sm90"])
def test_pdl_variant_waits_before_any_global_access(case):
    import dataclasses

    from gdn.nvidia.cutedsl import _common as C
    spec = _cases(C)[case]
    twin = dataclasses.replace(spec, pdl=True)
    assert twin.name() != spec.name() and twin.name().endswith(spec.arch)

    ptx, host = C.compile_text(twin)
    rep = ptx_report(ptx)
    wait_lines = [ln.strip() for ln in ptx.splitlines() if "griddepcontrol" in ln]
    print(f"[{twin.name()}] {wait_lines}, first global access at PTX line {rep['first_global']}")
    assert len(rep["wait"]) == 1 and len(rep["launch"]) == 1, rep
    assert rep["first_global"] > rep["launch"][0] > rep["wait"][0], rep
    no_prefetch = "n" in C.split_tile(spec.tile)[2]
    assert rep["early"] == ([] if no_prefetch else ["ld.global.cg", "prefetch.global.L2"]), rep
    assert launch_attributes(host).get(PROGRAMMATIC_STREAM_SERIALIZATION) == 1, launch_attributes(host)

    ptx, host = C.compile_text(spec)
    rep = ptx_report(ptx)
    assert not rep["any_gdc"] and rep["first_global"] >= 0, rep
    assert launch_attributes(host).get(PROGRAMMATIC_STREAM_SERIALIZATION) == 0, launch_attributes(host)


@needs_cutlass
def test_fast_argument_packing_matches_dsl_with_pdl():
    """use_pdl is a compile-time launch attribute: the host function's arguments (what the fast path packs)
    are the same."""
    from gdn.nvidia.cutedsl import _common as C
    launcher = C.Launcher(C.base_spec(tile=(4, 4), pdl=True))
    assert launcher._verify((1 << 20,) * 13, (8, 100, 1), 0.0884, tuple(range(1, 15)), 0x7777)


@needs_cutlass
def test_ctas_match_the_kernel_grid():
    """Spec.ctas() (what run() hands use_pdl) is the kernel's own grid per sequence, for every tile."""
    from gdn.nvidia.cutedsl import _common as C
    from gdn.nvidia.cutedsl import _kernel as Kn
    for arch in ("sm_90", "sm_100"):
        for layout in ("vk", "kv"):
            for sd in ("fp32", "bf16"):
                for T in (1, 4):
                    for tile in C.candidate_tiles(layout, sd, 128, 128, C.vec_bytes_for(arch), T, ("", "e", "s")):
                        spec = C.base_spec(arch, layout=layout, state=sd, T=T, tile=tile)
                        assert 3 * spec.ctas() == Kn.DecodeKernel(spec).grid_size(3), spec.name()


def test_aot_lists_compile_the_pdl_variants():
    """Each op's AOT list holds PDL variants (tests/nvidia/test_cutedsl_compile.py compiles them for sm_90a and
    sm_100a), decode's exactly the twins of the table tiles run() launches with PDL at some batch."""
    from gdn.common import launch as L
    from gdn.nvidia.cutedsl import _common as C
    from gdn.nvidia.cutedsl import decode, decode_mtp, decode_packed
    for arch in ("sm_90", "sm_100"):
        for mod in (decode, decode_mtp, decode_packed):
            specs = mod.aot_specs(arch)
            assert any(s.pdl for s in specs) and any(not s.pdl for s in specs), (mod.__name__, arch)
        specs = decode.aot_specs(arch)
        for layout in ("vk", "kv"):
            for sd in ("fp32", "bf16"):
                want = C.pdl_table_tiles(arch, layout, sd)
                assert want, (arch, layout, sd)          # B=1 always launches with PDL
                got = [s.tile for s in specs if s.pdl and s.layout == layout and s.state == sd]
                assert got == want, (arch, layout, sd, got, want)
                for t in want:
                    assert C.base_spec(arch, layout=layout, state=sd, tile=t).ctas() <= L.PDL_MAX_PROGRAMS


def test_run_launches_the_pdl_twin_by_grid(monkeypatch):
    """run() keeps one variant per key and launches its PDL twin when use_pdl(arch, (B * ctas,)) holds: small
    grids yes, past PDL_MAX_PROGRAMS no (within one key: a forced tile), never when pdl_ok says no (GDN_PDL=0,
    the interpreter: tests/test_pdl.py tests pdl_ok itself, here it is stubbed). The twin differs from the
    plain variant by the flag only, and gets the same arguments."""
    import dataclasses

    from gdn.common import launch as L
    from gdn.nvidia.cutedsl import _common as C

    fake = FakeDecodeLaunches(monkeypatch)
    call = lambda B, tile=None: fake.call(B, tile=tile)  # noqa: E731
    pdl_on = {"sm_90": True}
    monkeypatch.setattr(L, "pdl_ok", lambda arch: pdl_on[arch])

    with L.recording("sm_90"):
        spec, args = call(1)
        assert spec.pdl and spec.ctas() <= L.PDL_MAX_PROGRAMS
        big, _ = call(1024)
        assert not big.pdl and 1024 * big.ctas() > L.PDL_MAX_PROGRAMS
        # one key (forced tile (1, 4): 32 CTAs per state, 1024 per sequence), both sides of the limit
        n = L.PDL_MAX_PROGRAMS // C.base_spec(tile=(1, 4)).ctas()
        at, args_at = call(n, (1, 4))
        past, args_past = call(n + 1, (1, 4))
        assert at.pdl and not past.pdl and dataclasses.replace(at, pdl=False) == past
        assert len(C._LAUNCHERS) == 3 and args_at[1][0] == n and args_past[1][0] == n + 1
        pdl_on["sm_90"] = False
        off, args_off = call(1)
        assert not off.pdl and dataclasses.replace(spec, pdl=False) == off and args_off[1:] == args[1:]
    assert len({m.spec for m in fake.made}) == len(fake.made)
