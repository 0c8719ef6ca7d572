"""Host side of the CuTeDSL decode family: variant specs, the tile table, compile cache, launch, AOT.

Nothing here imports cutlass at module import: the op modules register their Impl records on any machine,
and `gdn info` reports "needs nvidia-cutlass-dsl>=4.8.1, not installed" where it is missing. The kernel
class (`_kernel.py`) is imported on the first compile.

A variant (`Spec`) is fixed by dtypes, layout, head dims, T, flags, tile split, alignment and target arch;
batch size, pool sizes, slot strides and the row strides of q/k/v/a/b are runtime arguments, so a variant
compiles once and serves every B. Launches pass raw device pointers and go on torch's current stream:
no host sync, no allocation, CUDA-graph capturable.

Programmatic dependent launch (PDL, sm_90+): `Spec.pdl` variants start with griddepcontrol.wait and
launch_dependents and are launched with CuTeDSL's `use_pdl`, so a launch may overlap the tail of the
previous kernel on the stream. run() picks the PDL twin of a variant per call with `launch.use_pdl(arch,
grid)`, the policy (small grids, GDN_PDL=0 turns it off) of the Triton kernels.

Compiling without a GPU: `cute.compile(..., options="--gpu-arch sm_90a")` makes cubins for that target on
a CPU-only host (CuTeDSL reads CUTE_DSL_ARCH once, when it is imported, and falls back to sm_100a when no
GPU answers; the explicit option overrides both). `aot_arch()` also sets CUTE_DSL_ARCH for the duration.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import threading
from dataclasses import dataclass

import torch

from gdn.common import launch as L

REQUIRES = ("nvidia-cutlass-dsl>=4.8.1",)
ARCHS = ("sm_90", "sm_100")
# Dispatch order per arch (registry.Impl.arch_priority): first on sm_90 and sm_100 (issue #6). With the tile
# tables of 2026-11-23 04:45-05:39 UTC (one- and two-warp vk tiles, 64/128-column kv tiles, MTP rows per T,
# per-GPU rows) this family was faster than or level with the Triton decode family at 24 of 30 points of the
# H200 table (bench/results/decode_h200_2026-11-23_0542.md) and at most 3.5% slower at the other 6 (bf16 B = 8:
# 5.84 against 5.65 us; the rest within 1.3%); on the H100 (decode_h100_2026-11-23_0505.md, before the MTP rows
# per T) its decode was faster or level at 18 of 21 points. Before those tables it lost at 26 of 30 points and
# ranked below Triton on sm_90. The dispatch ranks backends per op and arch, not per batch. GDN_BACKEND=triton
# selects the Triton family.
PRIORITY = 40
ARCH_PRIORITY: dict = {}
TARGET = {"sm_90": "sm_90a", "sm_100": "sm_100a"}
HEAD_DIMS = frozenset({64, 128, 256})
MAX_T = 16

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
               torch.int32: "i32", torch.int64: "i64"}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "i32": 4, "i64": 8}


def dname(dt: torch.dtype) -> str:
    return DTYPE_NAMES[dt]


@dataclass(frozen=True)
class Spec:
    """Every compile-time choice of one variant."""
    layout: str                 # "vk" | "kv"
    qkv: str                    # q/k/v dtype
    a: str
    b: str
    alog: str
    dtb: str
    out: str
    state: str                  # pool dtype
    idx: str                    # state_indices dtype
    H: int
    HV: int
    K: int
    V: int
    T: int = 1
    l2norm: bool = True
    update_state: bool = True
    inter: str | None = None    # intermediate_states dtype (None: no buffer)
    inter_idx: str | None = None
    parent: str | None = None   # parent_indices dtype (None: chain)
    pdl: bool = False           # griddepcontrol.wait before any global access; launched with use_pdl
    tile: tuple = (4, 4)        # vk: (rows per warp, warps[, opts]); kv: (columns per CTA, warps[, opts])
    state_align: int = 16       # bytes the pool pointer and slot stride are multiples of
    inter_align: int = 16       # the same for intermediate_states (pointer, row and step strides)
    qkv_align: int = 16         # bytes the q/k/v pointers and row strides are multiples of
    out_align: int = 16         # bytes the output pointer is a multiple of
    vec_bytes: int = 16         # bytes per state vector access (32: Blackwell's 256-bit loads/stores)
    arch: str = "sm_90a"

    def name(self) -> str:
        flags = "".join(c for c, on in (("n", self.l2norm), ("u", self.update_state), ("i", self.inter),
                                         ("x", self.inter_idx), ("p", self.parent), ("d", self.pdl)) if on)
        return (f"gdn_decode_{self.layout}_{self.qkv}_s{self.state}_T{self.T}_H{self.H}x{self.HV}_"
                f"K{self.K}V{self.V}_{flags}_t{tile_label(self.tile)}_v{self.vec_bytes}_"
                f"a{self.state_align}.{self.inter_align}.{self.qkv_align}.{self.out_align}_{self.arch}")

    def ctas(self) -> int:
        """CTAs per sequence: HV states split into V / BV tiles each (a launch's grid is B * ctas(); the
        kernel's grid_size says the same)."""
        a, nw, _ = split_tile(self.tile)
        return self.HV * (self.V // (a * nw if self.layout == "vk" else a))


# ---------------------------------------------------------------------------------------------------
# tile table: (arch, layout, state dtype, step kind, bucket of B*HV) -> tile; never autotuned

NH_BUCKETS = (32, 64, 256, 512, 1024, 2048, 4096, 8192, 16384)

# Filled from `python bench/bench_cutedsl_decode.py --sweep` on real hardware; keys
# (table key, layout, state dtype, "decode" | "mtp" | "mtp<T>", bucket), values tiles (a, warps) or (a, warps, opts); the table
# key is the arch or "<arch>:<model>" (`table_key_of`). Missing keys (and entries that do not fit the head dims)
# fall back to the arch's row, then to `default_tile`.
# sm_90: `bench_cutedsl_decode.py --sweep --no-peers` on an H100 80GB HBM3, 2026-11-23 04:54-04:59 UTC, with the one-
# and two-warp vk tiles and the "n" twins (every tile checked against the reference first; the six fastest, the
# previous row's tile and the Triton decode in three interleaved rounds). Against the rows it replaced (the
# 2026-11-22 sweep: 4 and 8 warps only, one round, before the L2 prefetch), us: fp32 VK B=1 3.18 -> 2.60 (4x1;
# Triton 2.61), B=8 13.12 -> 12.69, B=512 743.8 -> 732.7; bf16 B=512 392.2 -> 371.0; KV B=1 3.54 -> 2.68; MTP
# T=4 B=128 479.3 -> 472.8.
TILES: dict = {
    ('sm_90', 'vk', 'bf16', 'decode', 32): (8, 4, 's'),
    ('sm_90', 'vk', 'bf16', 'decode', 256): (4, 4, 'es'),
    ('sm_90', 'vk', 'bf16', 'decode', 1024): (16, 2),
    ('sm_90', 'vk', 'bf16', 'decode', 2048): (16, 4, 'e'),
    ('sm_90', 'vk', 'bf16', 'decode', 4096): (16, 2, 'e'),
    ('sm_90', 'vk', 'bf16', 'decode', 8192): (16, 8, 'e'),
    ('sm_90', 'vk', 'bf16', 'decode', 16384): (16, 8, 'e'),
    ('sm_90', 'vk', 'fp32', 'decode', 32): (4, 1),
    ('sm_90', 'vk', 'fp32', 'decode', 256): (2, 4, 'es'),
    ('sm_90', 'vk', 'fp32', 'decode', 1024): (16, 1, 'e'),
    ('sm_90', 'vk', 'fp32', 'decode', 2048): (4, 4, 'e'),
    ('sm_90', 'vk', 'fp32', 'decode', 4096): (8, 8, 'e'),
    ('sm_90', 'vk', 'fp32', 'decode', 8192): (8, 8, 'e'),
    ('sm_90', 'vk', 'fp32', 'decode', 16384): (16, 8, 's'),
    # kv: a second sweep at 05:01 UTC with 64- and 128-column tiles (the first offered at most 32): fp32
    # B=256 396.2 -> 368.1 us, B=512 783.6 -> 733.3 (Triton 371.9 / 746.7); bf16 (no rows before: default tiles)
    # B=512 397.5 -> 391.4 (Triton 624.3)
    ('sm_90', 'kv', 'fp32', 'decode', 32): (32, 2),
    ('sm_90', 'kv', 'fp32', 'decode', 256): (32, 4),
    ('sm_90', 'kv', 'fp32', 'decode', 1024): (64, 8, 'e'),
    ('sm_90', 'kv', 'fp32', 'decode', 2048): (64, 8, 'e'),
    ('sm_90', 'kv', 'fp32', 'decode', 4096): (64, 8, 'e'),
    ('sm_90', 'kv', 'fp32', 'decode', 8192): (64, 8, 'e'),
    ('sm_90', 'kv', 'fp32', 'decode', 16384): (128, 8),
    ('sm_90', 'kv', 'bf16', 'decode', 32): (32, 2),
    ('sm_90', 'kv', 'bf16', 'decode', 256): (32, 2, 'en'),
    ('sm_90', 'kv', 'bf16', 'decode', 1024): (64, 4, 'e'),
    ('sm_90', 'kv', 'bf16', 'decode', 2048): (64, 4, 'e'),
    ('sm_90', 'kv', 'bf16', 'decode', 4096): (64, 4, 'e'),
    ('sm_90', 'kv', 'bf16', 'decode', 8192): (64, 4, 'e'),
    ('sm_90', 'kv', 'bf16', 'decode', 16384): (128, 8, 'e'),
    ('sm_90', 'vk', 'fp32', 'mtp', 256): (8, 4, 'n'),
    ('sm_90', 'vk', 'fp32', 'mtp', 1024): (2, 4),
    ('sm_90', 'vk', 'fp32', 'mtp', 4096): (4, 8),
    # MTP rows chosen at T = 2 and 8 (`--sweep --only mtp --mtp-t 2,8`, 05:35 UTC), us against the T = 4 rows and
    # Triton: T=2 B=8 20.90 -> 19.31 (Triton 19.47), T=8 B=32 228.5 -> 220.3 (223.9)
    ('sm_90', 'vk', 'fp32', 'mtp2', 256): (16, 1, 'en'),
    ('sm_90', 'vk', 'fp32', 'mtp2', 1024): (4, 8),
    ('sm_90', 'vk', 'fp32', 'mtp2', 4096): (16, 4, 'e'),
    ('sm_90', 'vk', 'fp32', 'mtp8', 256): (8, 2, 'en'),
    ('sm_90', 'vk', 'fp32', 'mtp8', 1024): (2, 1),
    ('sm_90', 'vk', 'fp32', 'mtp8', 4096): (2, 4, 'e'),
    # H200 (same sm_90, its own rows: `table_key_of`): a sweep on an NVIDIA H200, 2026-11-23 04:45-04:50 UTC, with the
    # one- and two-warp vk tiles and the "n" twins at B <= 32 (each tile checked against the reference, timed
    # once, the six fastest and the sm_90 row's tile again in three interleaved rounds; the method of
    # bench_cutedsl_decode.py --sweep). Against the sm_90 rows on the H200, us: fp32 VK B=1 3.11 -> 2.37 (4x1),
    # B=64 73.86 -> 70.78, B=512 557.5 -> 525.8; bf16 B=512 312.7 -> 273.5; KV B=1 3.37 -> 2.45, B=8 11.89 ->
    # 10.60; MTP T=4 B=32 107.8 -> 90.8.
    ('sm_90:h200', 'vk', 'fp32', 'decode', 32): (4, 1),
    ('sm_90:h200', 'vk', 'fp32', 'decode', 256): (16, 1, 'en'),
    ('sm_90:h200', 'vk', 'fp32', 'decode', 1024): (16, 1, 'n'),
    ('sm_90:h200', 'vk', 'fp32', 'decode', 2048): (16, 4, 'e'),
    ('sm_90:h200', 'vk', 'fp32', 'decode', 4096): (16, 4, 'e'),
    ('sm_90:h200', 'vk', 'fp32', 'decode', 8192): (16, 4, 'e'),
    ('sm_90:h200', 'vk', 'fp32', 'decode', 16384): (16, 8, 'e'),
    ('sm_90:h200', 'vk', 'bf16', 'decode', 32): (8, 4, 's'),
    ('sm_90:h200', 'vk', 'bf16', 'decode', 256): (16, 4),
    ('sm_90:h200', 'vk', 'bf16', 'decode', 1024): (8, 2, 'e'),
    ('sm_90:h200', 'vk', 'bf16', 'decode', 2048): (16, 1),
    ('sm_90:h200', 'vk', 'bf16', 'decode', 4096): (16, 4),
    ('sm_90:h200', 'vk', 'bf16', 'decode', 8192): (16, 8, 'es'),
    ('sm_90:h200', 'vk', 'bf16', 'decode', 16384): (32, 4, 'es'),
    # kv: a second H200 sweep with 64- and 128-column tiles, 05:07 UTC: fp32 B=512 584.2 -> 529.9 us (Triton 551.3)
    ('sm_90:h200', 'kv', 'fp32', 'decode', 32): (32, 2),
    ('sm_90:h200', 'kv', 'fp32', 'decode', 256): (64, 4, 'en'),
    ('sm_90:h200', 'kv', 'fp32', 'decode', 1024): (64, 8, 'e'),
    ('sm_90:h200', 'kv', 'fp32', 'decode', 2048): (64, 8, 'e'),
    ('sm_90:h200', 'kv', 'fp32', 'decode', 4096): (64, 8, 'e'),
    ('sm_90:h200', 'kv', 'fp32', 'decode', 8192): (64, 8, 'e'),
    ('sm_90:h200', 'kv', 'fp32', 'decode', 16384): (128, 8, 'e'),
    ('sm_90:h200', 'kv', 'bf16', 'decode', 32): (32, 2),
    ('sm_90:h200', 'kv', 'bf16', 'decode', 256): (32, 2),
    ('sm_90:h200', 'kv', 'bf16', 'decode', 1024): (64, 4, 'e'),
    ('sm_90:h200', 'kv', 'bf16', 'decode', 2048): (64, 4),
    ('sm_90:h200', 'kv', 'bf16', 'decode', 4096): (64, 4),
    ('sm_90:h200', 'kv', 'bf16', 'decode', 8192): (64, 4),
    ('sm_90:h200', 'kv', 'bf16', 'decode', 16384): (64, 4),
    ('sm_90:h200', 'vk', 'fp32', 'mtp', 256): (8, 1, 'n'),
    ('sm_90:h200', 'vk', 'fp32', 'mtp', 1024): (4, 4),
    ('sm_90:h200', 'vk', 'fp32', 'mtp', 4096): (8, 4),
    # T = 2 and 8 (05:39 UTC): T=2 B=8 16.18 -> 15.22 us (Triton 15.03), T=8 B=32 166.2 -> 162.7 (165.0)
    ('sm_90:h200', 'vk', 'fp32', 'mtp2', 256): (4, 1),
    ('sm_90:h200', 'vk', 'fp32', 'mtp2', 1024): (8, 1, 'n'),
    ('sm_90:h200', 'vk', 'fp32', 'mtp2', 4096): (16, 2, 'e'),
    ('sm_90:h200', 'vk', 'fp32', 'mtp8', 256): (4, 8, 'n'),
    ('sm_90:h200', 'vk', 'fp32', 'mtp8', 1024): (4, 2, 'e'),
    ('sm_90:h200', 'vk', 'fp32', 'mtp8', 4096): (8, 4),
}


def nh_bucket(nh: int) -> int:
    for cap in NH_BUCKETS:
        if nh <= cap:
            return cap
    return 1 << 30


def vec_bytes_for(arch: str) -> int:
    """Bytes per state vector access: 32 (ld/st.global.v8, Blackwell) on sm_100 when aligned, else 16."""
    return 32 if arch.startswith("sm_10") else 16


def geometry(layout: str, state: str, K: int, vec_bytes: int = 16):
    """vk: (lanes per row, K elements per lane, rows per warp pass); kv: (columns per thread,)."""
    vec = max(1, vec_bytes // BYTES[state])
    if layout == "vk":
        lpr = min(32, max(1, K // vec))
        return lpr, K // lpr, 32 // lpr
    return (vec,)


# A tile is (a, warps) or (a, warps, opts): vk a = rows of V per warp, kv a = columns of V per CTA. opts is a
# string of option letters in this order (the canonical form, what cache keys and the table hold):
#   "e"  early loads: the slot index and every load that does not depend on it (q, k, v, gates,
#        intermediate index) are issued before the kernel waits for the slot; the state loads follow
#   "s"  streamed rows (vk, T = 1): the state tile stays in registers in the pool dtype and each row is
#        widened, updated and stored on its own, so a bf16 tile costs half the registers per byte and a
#        thread can keep twice the bytes in flight
#   "n"  no L2 prefetch of the state before the PDL wait (the PDL twin prefetches by default, _kernel.py
#        `_prefetch_state`); where that measured slower
TILE_OPTS = "esn"


def split_tile(tile) -> tuple:
    """(a, warps, opts) of a 2- or 3-tuple tile."""
    t = tuple(tile)
    if len(t) == 2:
        return int(t[0]), int(t[1]), ""
    if len(t) == 3 and isinstance(t[2], str):
        return int(t[0]), int(t[1]), t[2]
    raise ValueError(f"gdn cutedsl: a tile is (a, warps) or (a, warps, opts), got {tile!r}")


def norm_tile(tile) -> tuple:
    """The canonical form of a tile: (a, warps) without options, else (a, warps, opts)."""
    a, nw, opts = split_tile(tile)
    return (a, nw) if not opts else (a, nw, opts)


def with_opts(tile, opts: str) -> tuple:
    """`tile` with the option letters `opts` added (canonical order)."""
    a, nw, have = split_tile(tile)
    return norm_tile((a, nw, "".join(c for c in TILE_OPTS if c in have + opts)))


def tile_label(tile) -> str:
    a, nw, opts = split_tile(tile)
    return f"{a}x{nw}{opts}"


def state_elems_limit(state: str, opts: str) -> int:
    """State elements one thread may hold: 64 fp32 registers, or 256 bytes of pool-dtype registers when
    rows are streamed (the widened fp32 copy is one row at a time)."""
    return 256 // BYTES[state] if "s" in opts else 64


def tile_ok(layout: str, state: str, K: int, V: int, tile, vec_bytes: int = 16, T: int = 1) -> bool:
    """Whether the kernel accepts `tile` for these head dims and T (and holds <= 64 state registers per
    thread); options must be canonical and apply ("s": vk and T = 1 only)."""
    try:
        a, nw, opts = split_tile(tile)
    except ValueError:
        return False
    if nw not in (1, 2, 4, 8) or opts != "".join(c for c in TILE_OPTS if c in opts):
        return False
    if "s" in opts and (layout != "vk" or T != 1):
        return False
    if layout == "vk":
        lpr, kpl, rpp = geometry(layout, state, K, vec_bytes)
        return (lpr * kpl == K and a >= 1 and a % rpp == 0 and a * nw <= V and V % (a * nw) == 0
                and (a // rpp) * kpl <= state_elems_limit(state, opts))
    (vec,) = geometry(layout, state, K, vec_bytes)
    if a < vec or a % vec or a > V or V % a or (a // vec) > 32 or 32 % (a // vec):
        return False
    lkw = 32 // (a // vec)
    return K % (lkw * nw) == 0 and (K // (lkw * nw)) * vec <= 64 and K >= 32


def default_tile(arch: str, layout: str, state: str, K: int, V: int, nh: int, T: int, vec_bytes: int = 16):
    """Enough CTAs to fill the machine at small batch (a state split over up to 16 CTAs), larger tiles
    (more bytes in flight per thread) once there are plenty of states."""
    sm100 = arch.startswith("sm_10")
    if layout == "vk":
        rpp = geometry(layout, state, K, vec_bytes)[2]
        if nh <= 64:
            rw, nw = 2, 4
        elif nh <= 512:
            rw, nw = 4, 4
        else:
            rw, nw = (8, 4) if not sm100 else (8, 8)
        rw = max(rw, rpp)
        while rw * nw > V and nw > 1:
            nw //= 2
        rw = min(rw, V // nw)
        return (rw, nw)
    (vec,) = geometry(layout, state, K, vec_bytes)
    m = 2 if nh <= 64 else 4 if nh <= 512 else 8
    bv, nw = min(m * vec, V), 4
    while not tile_ok(layout, state, K, V, (bv, nw), vec_bytes) and nw > 1:
        nw //= 2
    while not tile_ok(layout, state, K, V, (bv, nw), vec_bytes) and bv > vec:
        bv //= 2
    return (bv, nw)


def candidate_tiles(layout: str, state: str, K: int = 128, V: int = 128, vec_bytes: int = 16, T: int = 1,
                    opts: tuple = ("",)) -> list:
    """Every tile the kernel accepts for these head dims, with each of `opts` where it applies."""
    if layout == "vk":
        base = [(rw, nw) for nw in (1, 2, 4, 8) for rw in (1, 2, 4, 8, 16, 32)]
    else:
        (vec,) = geometry(layout, state, K, vec_bytes)
        base = [(m * vec, nw) for m in (1, 2, 4, 8, 16, 32) for nw in (1, 2, 4, 8)]
    cands = [norm_tile((a, nw, o)) for o in opts for a, nw in base]
    return [t for t in cands if tile_ok(layout, state, K, V, t, vec_bytes, T)]


SWEEP_OPTS = {("vk", 1): ("", "e", "s", "es"), ("vk", "mtp"): ("", "e"), ("kv", 1): ("", "e"),
              ("kv", "mtp"): ("",)}


def sweep_tiles(arch: str, layout: str, state: str, T: int = 1, K: int = 128, V: int = 128) -> list:
    """The tiles `bench/bench_cutedsl_decode.py --sweep` times (and tests/gpu/test_cutedsl_gpu.py checks
    numerically, every one): 1-8 warps for vk, 2-8 for kv, each with the options that apply. (One- and
    two-warp vk tiles joined on 2026-11-23: at B = 1 the one-warp 4-row tile, the Triton decode's, is the
    fastest on an H200, 2.37 us against the 3.11 of the earlier table's 1x8e.)"""
    opts = SWEEP_OPTS[(layout, 1 if T == 1 else "mtp")]
    min_w = 1 if layout == "vk" else 2
    return [t for t in candidate_tiles(layout, state, K, V, vec_bytes_for(arch), T, opts) if t[1] >= min_w]


@functools.lru_cache(maxsize=4096)
def pick_tile(arch: str, layout: str, state: str, K: int, V: int, nh: int, T: int, vec_bytes: int = 16) -> tuple:
    """The table's tile for nh = B * HV states. `arch` is a table key (`table_key_of`): an arch, or
    "<arch>:<model>" whose own rows come first, then the arch's, then `default_tile`. A step kind is "decode"
    (T = 1) or for T > 1 "mtp<T>" (rows chosen at that T) before "mtp" (rows chosen at T = 4, for any T)."""
    kinds = ("decode",) if T == 1 else (f"mtp{T}", "mtp")
    base = arch.split(":")[0]
    for key in dict.fromkeys((arch, base)):
        for kind in kinds:
            hit = TILES.get((key, layout, state, kind, nh_bucket(nh)))
            if hit is not None and tile_ok(layout, state, K, V, norm_tile(hit), vec_bytes, T):
                return norm_tile(hit)
    return default_tile(base, layout, state, K, V, nh, T, vec_bytes)


_TABLE_KEY: dict = {}


def table_key_of(device, arch: str) -> str:
    """The TILES key of `device` (`launch.model_table_key`): "sm_90:h200" on an H200, whose own sweep picks
    other tiles than the H100's; else the arch. Cached per device (the decode hot path)."""
    key = _TABLE_KEY.get(device)
    if key is None:
        key = _TABLE_KEY[device] = L.model_table_key(device, arch, (k[0] for k in TILES))
    return key


# ---------------------------------------------------------------------------------------------------
# compile

_CACHE: dict = {}
_LOCK = threading.Lock()


@contextlib.contextmanager
def aot_arch(arch: str):
    """CUTE_DSL_ARCH=<target> for the duration (the explicit --gpu-arch option is what decides)."""
    old = os.environ.get("CUTE_DSL_ARCH")
    os.environ["CUTE_DSL_ARCH"] = TARGET.get(arch, arch)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUTE_DSL_ARCH", None)
        else:
            os.environ["CUTE_DSL_ARCH"] = old


def _placeholders(spec: Spec):
    """Pointer and scalar arguments with the compile-time types of `spec` (values are never used)."""
    import cuda.bindings.driver as cuda
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_ptr

    from gdn.nvidia.cutedsl import _kernel as Kn
    g = cute.AddressSpace.gmem

    def ptr(dt, align):
        return make_ptr(Kn.DTYPES[dt], 1 << 20, g, assumed_align=align)

    ptrs = tuple(ptr(dt, al) for dt, al in pointer_types(spec))
    I32, I64 = cutlass.Int32, cutlass.Int64
    scalars = (I32(1), I32(1), I32(1), cutlass.Float32(1.0)) + (I64(0),) * 14
    return ptrs + scalars + (cuda.CUstream(0),)


def pointer_types(spec: Spec) -> list:
    """(dtype, assumed alignment) of the 13 pointer arguments, in order; unused ones alias the pool."""
    qa = spec.qkv_align
    return [(spec.qkv, qa), (spec.qkv, qa), (spec.qkv, qa), (spec.a, BYTES[spec.a]), (spec.b, BYTES[spec.b]),
            (spec.alog, BYTES[spec.alog]), (spec.dtb, BYTES[spec.dtb]), (spec.state, spec.state_align),
            (spec.idx, BYTES[spec.idx]), (spec.out, spec.out_align),
            (spec.inter or spec.state, spec.inter_align if spec.inter else spec.state_align),
            (spec.inter_idx or spec.idx, BYTES[spec.inter_idx or spec.idx]),
            (spec.parent or spec.idx, BYTES[spec.parent or spec.idx])]


def compile_spec(spec: Spec):
    """The compiled callable of `spec` (cached per process)."""
    hit = _CACHE.get(spec)
    if hit is not None:
        return hit
    with _LOCK:
        hit = _CACHE.get(spec)
        if hit is not None:
            return hit
        import cutlass.cute as cute

        from gdn.nvidia.cutedsl import _kernel as Kn
        kern = Kn.DecodeKernel(spec)
        with aot_arch(spec.arch):
            fn = cute.compile(kern, *_placeholders(spec), options=f"--gpu-arch {spec.arch}")
        _CACHE[spec] = fn
        return fn


# ---------------------------------------------------------------------------------------------------
# launch

def align_of(*byte_values: int, cap: int = 16) -> int:
    """Largest power of two <= cap dividing every value (addresses and byte strides)."""
    a = cap
    for x in byte_values:
        while a > 1 and x % a:
            a //= 2
    return a


@functools.lru_cache(maxsize=None)
def _rt():
    """Runtime pieces, imported on first launch."""
    import cuda.bindings.driver as cuda
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_ptr

    from gdn.nvidia.cutedsl import _kernel as Kn
    return cuda, cute.AddressSpace.gmem, make_ptr, Kn.DTYPES


def target_of(arch: str) -> str:
    if arch not in TARGET:
        raise RuntimeError(f"gdn cutedsl: arch {arch} not served (serves {', '.join(ARCHS)})")
    return TARGET[arch]


def variant_spec(*, arch, layout, q, a, b, A_log, dt_bias, out, state, state_indices, H, HV, K, V, T,
                 use_qk_l2norm, update_state, inter, inter_indices, parent, tile, nh, s_align, i_align, q_align,
                 o_align, table=None) -> Spec:
    """The Spec that run() compiles for these arguments: the forced `tile` (validated, canonical) or the
    table's pick for nh = B * HV (read with the table key `table`, default the arch), and the vector width
    the alignments allow."""
    vb = vec_bytes_for(arch)
    if vb > min(s_align, i_align):
        vb = 16
    sd = dname(state.dtype)
    if tile is None:
        tile = pick_tile(table or arch, layout, sd, K, V, nh, T, vb)
    elif not tile_ok(layout, sd, K, V, tuple(tile), vb, T):
        raise ValueError(f"gdn cutedsl: tile {tuple(tile)} does not fit {layout} {sd} K={K} V={V} T={T} with "
                         f"{vb}-byte vectors (candidates: "
                         f"{candidate_tiles(layout, sd, K, V, vb, T, ('', 'e', 's', 'es'))})")
    return Spec(layout=layout, qkv=dname(q.dtype), a=dname(a.dtype), b=dname(b.dtype),
                alog=dname(A_log.dtype), dtb=dname(dt_bias.dtype), out=dname(out.dtype), state=sd,
                idx=dname(state_indices.dtype), H=H, HV=HV, K=K, V=V, T=T, l2norm=bool(use_qk_l2norm),
                update_state=bool(update_state), inter=dname(inter.dtype) if inter is not None else None,
                inter_idx=dname(inter_indices.dtype) if inter_indices is not None else None,
                parent=dname(parent.dtype) if parent is not None else None, tile=norm_tile(tile),
                state_align=min(s_align, vb), inter_align=min(i_align, vb) if inter is not None else 16,
                qkv_align=q_align, out_align=o_align, vec_bytes=vb, arch=target_of(arch))


def run(*, q, k, v, q_addr, k_addr, v_addr, qkv_strides, a, b, ab_strides, A_log, dt_bias, state,
        state_indices, out, scale, use_qk_l2norm, state_layout, H, K, V, T=1, inter=None, inter_indices=None,
        parent=None, update_state=True, tile=None):
    """Launch one decode-family variant. q/k/v: tensors (for dtypes) and the device addresses of their
    [b, t] = [0, 0] rows; qkv_strides: ((q_b, q_t), (k_b, k_t), (v_b, v_t)) element strides; ab_strides:
    ((a_b, a_t), (b_b, b_t)). Inner dims (heads, head dim) are contiguous."""
    B = state_indices.shape[0]
    if B == 0:
        return
    HV = state.shape[1]
    arch = L.current_arch(state.device)
    tkey = table_key_of(state.device, arch)
    es, eq = state.element_size(), q.element_size()
    (q_b, q_t), (k_b, k_t), (v_b, v_t) = qkv_strides
    s_align = align_of(state.data_ptr(), state.stride(0) * es, cap=32)
    i_align = (align_of(inter.data_ptr(), inter.stride(0) * inter.element_size(),
                        inter.stride(1) * inter.element_size(), cap=32) if inter is not None else 32)
    q_align = align_of(q_addr, k_addr, v_addr, *(x * eq for x in (q_b, q_t, k_b, k_t, v_b, v_t)))
    o_align = align_of(out.data_ptr())
    # the variant key is a plain tuple (building and hashing a Spec costs ~10 us per call)
    key = (state_layout, q.dtype, a.dtype, b.dtype, A_log.dtype, dt_bias.dtype, out.dtype, state.dtype,
           state_indices.dtype, H, HV, K, V, T, bool(use_qk_l2norm), bool(update_state),
           inter.dtype if inter is not None else None,
           inter_indices.dtype if inter_indices is not None else None,
           parent.dtype if parent is not None else None,
           tuple(tile) if tile is not None else nh_bucket(B * HV), s_align, i_align, q_align, o_align, tkey)
    var = _LAUNCHERS.get(key)
    if var is None:
        var = _LAUNCHERS[key] = _Variant(variant_spec(
            arch=arch, layout=state_layout, q=q, a=a, b=b, A_log=A_log, dt_bias=dt_bias, out=out, state=state,
            state_indices=state_indices, H=H, HV=HV, K=K, V=V, T=T, use_qk_l2norm=use_qk_l2norm,
            update_state=update_state, inter=inter, inter_indices=inter_indices, parent=parent, tile=tile,
            nh=B * HV, s_align=s_align, i_align=i_align, q_align=q_align, o_align=o_align, table=tkey))
    launch = var.launcher(L.use_pdl(arch, (B * var.ctas,)))
    addrs = (q_addr, k_addr, v_addr, a.data_ptr(), b.data_ptr(), A_log.data_ptr(), dt_bias.data_ptr(),
             state.data_ptr(), state_indices.data_ptr(), out.data_ptr(),
             inter.data_ptr() if inter is not None else state.data_ptr(),
             inter_indices.data_ptr() if inter_indices is not None else state_indices.data_ptr(),
             parent.data_ptr() if parent is not None else state_indices.data_ptr())
    (a_b, a_t), (b_b, b_t) = ab_strides
    SI = inter.shape[0] if inter is not None else 1
    s_is, s_it = (inter.stride(0), inter.stride(1)) if inter is not None else (0, 0)
    s_pb = parent.stride(0) if parent is not None else 0
    if parent is not None and parent.stride(1) != 1:
        raise ValueError("gdn decode_mtp (cutedsl): parent_indices rows must be contiguous")
    stream = torch.cuda.current_stream(state.device).cuda_stream
    args = (addrs, (B, state.shape[0], SI), float(scale),
            (q_b, q_t, k_b, k_t, v_b, v_t, a_b, a_t, b_b, b_t, state.stride(0), s_is, s_it, s_pb), stream)
    if state.device.index is not None and state.device.index != torch.cuda.current_device():
        with torch.cuda.device(state.device):
            launch(*args)
    else:
        launch(*args)


class Launcher:
    """Calls one compiled variant. The DSL's generic argument marshalling costs 100-300 us of host time per
    call for these 32 arguments; this packs them straight into ctypes values instead (a few us), after
    checking once, byte for byte, that the packing equals the DSL's own for the same arguments. If it does
    not (another CuTeDSL version), or GDN_CUTEDSL_FAST_ARGS=0, it uses the DSL's path."""

    N_PTR, N_I32, N_I64 = 13, 3, 14

    def __init__(self, spec: Spec):
        self.spec = spec
        self.fn = compile_spec(spec)
        self._tls = threading.local()
        self.fast = None if os.environ.get("GDN_CUTEDSL_FAST_ARGS", "1") not in ("0", "") else False

    def _dsl_args(self, addrs, i32, scale, i64, stream):
        cuda, gmem, make_ptr, DT = _rt()
        ptrs = [make_ptr(DT[dt], x, gmem, assumed_align=al) for x, (dt, al) in zip(addrs, pointer_types(self.spec))]
        return (*ptrs, *i32, scale, *i64, cuda.CUstream(stream))

    @staticmethod
    def _pack(addrs, i32, scale, i64, stream):
        vals = ([ctypes.c_void_p(x) for x in addrs] + [ctypes.c_int32(x) for x in i32] + [ctypes.c_float(scale)]
                + [ctypes.c_int64(x) for x in i64] + [ctypes.c_void_p(stream)])
        return vals, [ctypes.addressof(v) for v in vals]

    def _verify(self, addrs, i32, scale, i64, stream) -> bool:
        try:
            dargs = self._dsl_args(addrs, i32, scale, i64, stream)     # keeps the DSL's ctypes values alive
            ref, keep = self.fn.generate_execution_args(*dargs)
            vals, mine = self._pack(addrs, i32, scale, i64, stream)
            if len(ref) != len(mine):
                return False
            for r, v in zip(ref, vals):
                ra = r.value if isinstance(r, ctypes.c_void_p) else int(r)
                n = ctypes.sizeof(v)
                if ctypes.string_at(ra, n) != ctypes.string_at(ctypes.addressof(v), n):
                    return False
            return True
        except Exception:   # any surprise: use the DSL's own path
            return False

    def __call__(self, addrs, i32, scale, i64, stream):
        if self.fast is None:
            self.fast = self._verify(addrs, i32, scale, i64, stream)
        if not self.fast:
            self.fn(*self._dsl_args(addrs, i32, scale, i64, stream))
            return
        # per-thread argument slots, refilled in place (the launch copies the values, so a captured CUDA
        # graph keeps its own)
        slots = getattr(self._tls, "slots", None)
        if slots is None:
            slots = self._tls.slots = self._pack((0,) * self.N_PTR, (0,) * self.N_I32, 0.0, (0,) * self.N_I64, 0)
        vals, exe = slots
        for v, x in zip(vals, (*addrs, *i32, scale, *i64, stream)):
            v.value = x
        self.fn.run_compiled_program(exe)


class _Variant:
    """What run()'s variant key fixes: the Spec (pdl False), its CTAs per sequence, and the launchers of it
    and of its PDL twin, each made on first use (whether a launch uses PDL depends on B, which the key
    leaves out within a batch bucket)."""
    __slots__ = ("spec", "ctas", "by_pdl")

    def __init__(self, spec: Spec):
        self.spec, self.ctas, self.by_pdl = spec, spec.ctas(), [None, None]

    def launcher(self, pdl: bool):
        hit = self.by_pdl[pdl]
        if hit is None:
            hit = self.by_pdl[pdl] = _launcher(dataclasses.replace(self.spec, pdl=pdl))
        return hit


_LAUNCHERS: dict = {}         # run()'s variant key -> _Variant
_BY_SPEC: dict = {}           # Spec -> Launcher


def _launcher(spec: Spec) -> Launcher:
    hit = _BY_SPEC.get(spec)
    if hit is None:
        hit = _BY_SPEC[spec] = Launcher(spec)
    return hit


def inner_contiguous(x: torch.Tensor, n: int) -> torch.Tensor:
    """x with its last n dims contiguous (the leading batch / step strides may be anything)."""
    want = 1
    for d in range(x.dim() - 1, x.dim() - 1 - n, -1):
        if x.shape[d] > 1 and x.stride(d) != want:
            return x.contiguous()
        want *= x.shape[d]
    return x


def check_pool(name: str, pool: torch.Tensor, lead: int) -> None:
    """Each slot's [HV, a, b] block contiguous (gdn.ops checks it too; direct launcher calls land here)."""
    n = pool.dim()
    want = (pool.shape[n - 2] * pool.shape[n - 1], pool.shape[n - 1], 1)
    got = tuple(pool.stride()[n - 3:])
    if any(g != w for g, w, sz in zip(got, want, pool.shape[n - 3:]) if sz > 1) or n != lead + 3:
        raise ValueError(f"gdn cutedsl: {name} needs each slot's [HV, ., .] block contiguous, got strides "
                         f"{tuple(pool.stride())}")


def aot_compile(arch: str, specs) -> list:
    """Compile `specs` for `arch` ("sm_90" | "sm_100") without a GPU; returns the variant names."""
    target = target_of(arch)
    names = []
    with aot_arch(arch):
        for sp in specs:
            if sp.arch != target:
                raise ValueError(f"{sp.name()} is not for {target}")
            compile_spec(sp)
            names.append(sp.name())
    return names


def base_spec(arch: str = "sm_90", **kw) -> Spec:
    """Qwen3-Next shapes (H=16, HV=32, K=V=128), bf16 activations, fp32 A_log / dt_bias, int32 slots, pools
    aligned for the arch's vector width, compiled for `arch`."""
    vb = vec_bytes_for(arch)
    d = dict(layout="vk", qkv="bf16", a="bf16", b="bf16", alog="fp32", dtb="fp32", out="bf16", state="fp32",
             idx="i32", H=16, HV=32, K=128, V=128, vec_bytes=vb, state_align=vb, inter_align=vb,
             arch=target_of(arch))
    d.update(kw)
    return Spec(**d)


def compile_text(spec: Spec) -> tuple:
    """(kernel PTX, host module MLIR) of `spec`, compiled again with --keep-ptx into a temporary folder (no GPU
    needed; the cached compile keeps no PTX). The host module is the launch code (cudaLaunchKernelEx and its
    attributes) with the cubin embedded."""
    import tempfile

    import cutlass.cute as cute

    from gdn.nvidia.cutedsl import _kernel as Kn
    with tempfile.TemporaryDirectory() as d:
        with aot_arch(spec.arch):
            fn = cute.compile(Kn.DecodeKernel(spec), *_placeholders(spec),
                              options=f"--gpu-arch {spec.arch} --keep-ptx --dump-dir {d}")
        return fn.__ptx__, str(fn.ir_module)


def ptxas_usage(spec: Spec, ptxas: str = "ptxas") -> dict | None:
    """Registers and spill bytes of `spec`'s kernel as ptxas reports them (compile_text's PTX; no GPU
    needed). None when ptxas is not on PATH."""
    import re
    import shutil
    import subprocess
    import tempfile

    if shutil.which(ptxas) is None:
        return None
    ptx, _ = compile_text(spec)
    if not ptx:
        return None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, "-v", "--gpu-name", spec.arch, path, "-o", os.devnull], capture_output=True,
                           text=True)
    regs = re.findall(r"Used (\d+) registers", r.stderr)
    spill = re.findall(r"(\d+) bytes spill stores", r.stderr)
    return dict(registers=int(regs[0]) if regs else None, spill_bytes=int(spill[0]) if spill else None)


def tile_for(arch: str, layout: str, state: str, nh: int, T: int = 1, K: int = 128, V: int = 128) -> tuple:
    return pick_tile(arch, layout, state, K, V, nh, T, vec_bytes_for(arch))


TABLE_BATCHES = (1, 2, 8, 16, 32, 64, 128, 256, 512, 1024)


def table_keys(arch: str) -> list:
    """`arch` and every "<arch>:<model>" key of TILES (the rows one arch's GPUs may read)."""
    return [arch] + sorted({k[0] for k in TILES if k[0].startswith(arch + ":")})


def _table_picks(arch, layout, state, K, V, T, HV, pdl_only):
    out = []
    for key in table_keys(arch):
        for B in TABLE_BATCHES:
            t = pick_tile(key, layout, state, K, V, B * HV, T, vec_bytes_for(arch))
            if t in out or (pdl_only and B * base_spec(arch, layout=layout, state=state, K=K, V=V, HV=HV, T=T,
                                                       tile=t).ctas() > L.PDL_MAX_PROGRAMS):
                continue
            out.append(t)
    return out


def table_tiles(arch: str, layout: str, state: str, K: int = 128, V: int = 128, T: int = 1, HV: int = 32) -> list:
    """The distinct tiles the table picks for B in 1..1024 on `arch`, under every table key of it (what the AOT
    matrix must cover)."""
    return _table_picks(arch, layout, state, K, V, T, HV, False)


def pdl_table_tiles(arch: str, layout: str, state: str, K: int = 128, V: int = 128, T: int = 1,
                    HV: int = 32) -> list:
    """The distinct tiles of table_tiles that run() launches with PDL at some of those batches (grid small
    enough for launch.use_pdl; GDN_PDL and the interpreter not consulted: this is what a GPU host runs)."""
    return _table_picks(arch, layout, state, K, V, T, HV, True)
