"""CuTeDSL decode / decode_mtp benchmark on one GPU, against the memory roofline and FlashInfer.

    python bench/bench_cutedsl_decode.py                 # main table (< 4 min)
    python bench/bench_cutedsl_decode.py --sweep --no-peers --only vk-fp32,vk-bf16
                                                         # time every tile of C.sweep_tiles (and the "n"
                                                         # twins at B <= 32) per batch, each checked against
                                                         # the reference at every B first; the best six, the
                                                         # table's tile and the Triton decode then in three
                                                         # interleaved rounds; prints TILES entries
    python bench/bench_cutedsl_decode.py --regs          # no GPU: ptxas registers / spills of every sweep tile
    options: --quick (fewer sizes), --no-peers, --csv out.csv, --only vk-fp32,vk-bf16,kv-fp32,kv-bf16,mtp

Qwen3-Next shape (H=16, HV=32, K=V=128), bf16 activations, fp32 A_log/dt_bias, int32 slots. Each number is
the median per-call time of CUDA-graph replays holding n calls whose slots rotate through n disjoint parts
of the pool (the state traffic of one replay is >= 8x L2, so every call reads HBM: "cold L2"). The floor is
the state traffic at the measured copy bandwidth (a 1 GiB device-to-device copy, read + write bytes):
decode reads and writes every state; MTP verify reads it once and writes T intermediate states (same
dtype, disable_state_update=True). Every implementation's output and states are checked against gdn's fp32
reference before it is timed; a wrong one is reported, not timed. Timed calls update the pool in place, so
each check starts from a copy of the pool whose call-0 slots are restored to their initial contents (the
states the reference started from); checking on the pool itself after an earlier candidate had been timed
is what made every tile but the first look "WRONG rel 6e-01" in the first H100 sweep. FlashInfer 0.7 joins
when importable (gated_delta_rule_decode_pretranspose with a pool + indices; gated_delta_rule_mtp with an fp32
buffer).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gdn.common import launch as L  # noqa: E402
from gdn.common.timing import copy_bandwidth, rel  # noqa: E402
from gdn.common.timing import graph_time_us as graph_us  # noqa: E402

H, HV, K, V = 16, 32, 128, 128
DEV = "cuda"
ESZ = {torch.float32: 4, torch.bfloat16: 2}
DNAME = {torch.float32: "fp32", torch.bfloat16: "bf16"}
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# measurement

# ---------------------------------------------------------------------------------------------------
# one problem: B sequences, n rotations of disjoint slots

class Problem:
    def __init__(self, B, sd, layout, l2, T=None, seed=0, device=None):
        DEV = device or globals()["DEV"]
        self.device = DEV
        g = torch.Generator(device=DEV).manual_seed(seed)
        self.B, self.T, self.sd, self.layout = B, T, sd, layout
        lead = (B,) if T is None else (B, T)
        r = lambda *s: torch.randn(*lead, *s, generator=g, device=DEV).to(torch.bfloat16)  # noqa: E731
        self.q, self.k, self.v, self.a, self.b = r(H, K), r(H, K), r(HV, V), r(HV), r(HV)
        self.A_log = torch.empty(HV, device=DEV).uniform_(-4, -1, generator=g)
        self.dt_bias = torch.randn(HV, generator=g, device=DEV) * 0.5
        state_bytes = B * HV * K * V * ESZ[sd]
        self.floor_bytes = state_bytes * (2 if T is None else 1 + T)
        self.n = max(2, min(128, math.ceil(8 * l2 / self.floor_bytes)))
        self.shape = (HV, V, K) if layout == "vk" else (HV, K, V)
        self.pool = (torch.randn(self.n * B, *self.shape, generator=g, device=DEV) * 0.1).to(sd)
        perm = torch.randperm(self.n * B, generator=g, device=DEV)
        self.idx = [perm[c * B:(c + 1) * B].to(torch.int32).contiguous() for c in range(self.n)]
        self.init0 = self.pool[self.idx[0].long()].clone()     # call 0's states before anything ran
        self.scale = K ** -0.5
        if T is None:
            self.out = torch.empty(B, HV, V, dtype=torch.bfloat16, device=DEV)
        else:
            self.out = torch.empty(B, T, HV, V, dtype=torch.bfloat16, device=DEV)
            self.inter = [torch.empty(B, T, *self.shape, dtype=sd, device=DEV) for _ in range(self.n)]

    def tol(self):
        return 1e-2 if self.sd == torch.bfloat16 else 5e-3

    def fresh_pool(self):
        """A copy of the pool with call 0's slots as they were before any call ran (timed calls update
        self.pool in place; the reference and every check start from this)."""
        pool = self.pool.clone()
        pool[self.idx[0].long()] = self.init0
        return pool

    def reference(self):
        """(out, slots' new states | intermediates) of call 0 from gdn's fp32 reference."""
        from gdn.common import reference as R
        pool = self.fresh_pool()
        out = torch.empty_like(self.out)
        if self.T is None:
            R.decode(self.q, self.k, self.v, self.a, self.b, self.A_log, self.dt_bias, pool, self.idx[0], out,
                     scale=self.scale, use_qk_l2norm=True, state_layout=self.layout)
            return out, pool[self.idx[0].long()]
        inter = torch.empty_like(self.inter[0])
        R.decode_mtp(self.q, self.k, self.v, self.a, self.b, self.A_log, self.dt_bias, pool, self.idx[0], out,
                     inter, None, None, disable_state_update=True, scale=self.scale, use_qk_l2norm=True,
                     state_layout=self.layout)
        return out, inter


def cutedsl(p: Problem, tile=None, backend="cutedsl"):
    """(calls, check): calls[c] runs rotation c in place; check() -> (out, states) of call 0 on a copy.
    `tile` forces a CuTeDSL tile; backend="triton" runs the Triton decode family (its own table's config)."""
    from gdn.common.registry import get
    kw = {"_tile": tile} if backend == "cutedsl" else {}
    if p.T is None:
        f = get("decode", backend).fn

        def mk(pool, c):
            return lambda: f(p.q, p.k, p.v, p.a, p.b, p.A_log, p.dt_bias, pool, p.idx[c], p.out, scale=p.scale,
                             use_qk_l2norm=True, state_layout=p.layout, **kw)

        def check():
            pool = p.fresh_pool()
            mk(pool, 0)()
            return p.out.clone(), pool[p.idx[0].long()]
    else:
        f = get("decode_mtp", backend).fn

        def mk(pool, c):
            return lambda: f(p.q, p.k, p.v, p.a, p.b, p.A_log, p.dt_bias, pool, p.idx[c], p.out, p.inter[c], None,
                             None, disable_state_update=True, scale=p.scale, use_qk_l2norm=True,
                             state_layout=p.layout, **kw)

        def check():
            mk(p.fresh_pool(), 0)()
            return p.out.clone(), p.inter[0].clone()
    return [mk(p.pool, c) for c in range(p.n)], check


def flashinfer(p: Problem):
    """FlashInfer 0.7 VK kernels with a pool + indices (keyword arguments; None where it has no kernel)."""
    import flashinfer.gdn_decode as fi
    if p.layout != "vk":
        return None
    if p.T is None:
        q, k, v, a, b = p.q[:, None], p.k[:, None], p.v[:, None], p.a[:, None], p.b[:, None]
        out = torch.empty(p.B, 1, HV, V, dtype=torch.bfloat16, device=DEV)

        def mk(pool, c):
            return lambda: fi.gated_delta_rule_decode_pretranspose(
                q=q, k=k, v=v, state=None, A_log=p.A_log, a=a, dt_bias=p.dt_bias, b=b, scale=p.scale, output=out,
                use_qk_l2norm=True, initial_state=pool, initial_state_indices=p.idx[c])

        def check():
            pool = p.fresh_pool()
            mk(pool, 0)()
            return out[:, 0].clone(), pool[p.idx[0].long()]
    else:
        if p.sd != torch.float32:
            return None
        out = torch.empty(p.B, p.T, HV, V, dtype=torch.bfloat16, device=DEV)

        def mk(pool, c):
            return lambda: fi.gated_delta_rule_mtp(
                q=p.q, k=p.k, v=p.v, initial_state=pool, initial_state_indices=p.idx[c], A_log=p.A_log, a=p.a,
                dt_bias=p.dt_bias, b=p.b, scale=p.scale, output=out, intermediate_states_buffer=p.inter[c],
                disable_state_update=True, use_qk_l2norm=True)

        def check():
            mk(p.fresh_pool(), 0)()
            return out.clone(), p.inter[0].clone()
    return [mk(p.pool, c) for c in range(p.n)], check


def verified(p: Problem, make, ref):
    """(calls, None) when the implementation matches the reference, else (None, why)."""
    try:
        res = make(p)
        if res is None:
            return None, "n/a"
        calls, check = res
        got = check()
        if p.device != "cpu":
            torch.cuda.synchronize()
        e = max(rel(got[0], ref[0]), rel(got[1], ref[1]))
        if not e < p.tol():
            return None, f"WRONG rel {e:.1e}"
        return calls, None
    except ImportError:
        return None, "n/a"
    except Exception as ex:
        msg = str(ex).splitlines()[0][:100] if str(ex) else ""
        return None, f"error {type(ex).__name__}: {msg}"


def eager_overhead_us(p: Problem, reps=300) -> float:
    """Host time per eager cutedsl call (launcher + marshalling), B = p.B, measured without syncing."""
    calls, _ = cutedsl(p)
    c = calls[0]
    c()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        c()
    dt = (time.perf_counter() - t) / reps * 1e6
    torch.cuda.synchronize()
    return dt


# ---------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="time every sweep tile per batch size")
    ap.add_argument("--regs", action="store_true", help="no GPU: ptxas registers and spills of the sweep tiles")
    ap.add_argument("--arch", default="sm_90", help="--regs: the arch to compile for")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--only", default="vk-fp32,vk-bf16,kv-fp32,mtp")
    ap.add_argument("--mtp-t", default="4", help="--sweep: the draft lengths T of the MTP sweep (comma list); "
                                                  "T=4 gives the \"mtp\" rows (any T), others \"mtp<T>\" rows")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--replays", type=int, default=20)
    args = ap.parse_args()
    only = set(args.only.split(","))
    if args.regs:
        return regs(args, only)
    assert torch.cuda.is_available(), "needs a GPU"
    from gdn import ops
    from gdn.common import probe
    from gdn.nvidia.cutedsl import _common as C
    ops.load_backends()
    info = probe.device_info()
    arch = info.arch
    l2 = info.l2_bytes or (50 << 20)
    bw = copy_bandwidth(reps=15)
    log(f"{info.name} ({arch}, {info.multiprocessors} SMs, L2 {l2 >> 20} MiB), copy bandwidth {bw / 1e12:.3f} TB/s, "
        f"torch {torch.__version__}, cutlass-dsl {probe.versions().get('nvidia-cutlass-dsl')}, "
        f"flashinfer {probe.package_version('flashinfer-python')}")
    Bs = (1, 8, 128, 512) if args.quick else (1, 8, 32, 64, 128, 256, 512)
    variants = variants_of(only)
    mtp = [(B, T) for B in ((32,) if args.quick else (8, 32, 128)) for T in (2, 4, 8)] if "mtp" in only else []
    peers = {}
    if not args.no_peers:
        try:
            import flashinfer.gdn_decode  # noqa: F401
            peers["flashinfer"] = flashinfer
        except Exception as e:
            log(f"flashinfer not importable ({type(e).__name__}: {e}); cutedsl only")

    rows = []
    if args.sweep:
        rows = sweep(args, C, arch, l2, bw, Bs, variants, mtp)
    else:
        for sd, lay in variants:
            for B in Bs:
                rows.append(measure(args, C, arch, l2, bw, B, sd, lay, None, peers))
        for B, T in mtp:
            rows.append(measure(args, C, arch, l2, bw, B, torch.float32, "vk", T, peers))
        p = Problem(1, torch.float32, "vk", l2)
        log(f"eager host time per cutedsl decode call (B=1): {eager_overhead_us(p):.1f} us")
        del p
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
    log("done")
    print()
    print(f"# cutedsl decode on {info.name} ({arch}), copy bandwidth {bw / 1e12:.3f} TB/s, "
          f"{time.strftime('%Y-%m-%d')}, cold L2, CUDA-graph replay, us per call")
    print()
    if args.sweep:
        print("| case | B | best tile | us | % copy bw | runner-up | us | table tile | us | triton us |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['B']} | {r['tile']} | {r['us']:.2f} | {r['pct']:.1f}% | {r['second']} | "
                  f"{r['second_us']} | {r['default']} | {r['default_us']} | {r['triton_us']} |")
    else:
        print("| case | B | tile | cutedsl us | % copy bw | floor us | flashinfer us | cutedsl vs flashinfer |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            fi = r.get("flashinfer", "")
            sp = f"{float(fi) / r['us']:.2f}x" if isinstance(fi, float) else ""
            fis = f"{fi:.2f}" if isinstance(fi, float) else fi
            print(f"| {r['case']} | {r['B']} | {r['tile']} | {r['us']:.2f} | {r['pct']:.1f}% | {r['floor_us']:.2f} | "
                  f"{fis} | {sp} |")


def variants_of(only):
    return [(sd, lay) for sd, lay, key in ((torch.float32, "vk", "vk-fp32"), (torch.bfloat16, "vk", "vk-bf16"),
                                           (torch.float32, "kv", "kv-fp32"), (torch.bfloat16, "kv", "kv-bf16"))
            if key in only]


def regs(args, only):
    """ptxas registers / spills of every sweep tile (bf16 activations, the Qwen3-Next shape), CPU only."""
    from gdn.nvidia.cutedsl import _common as C
    cases = [(DNAME[sd], lay, 1) for sd, lay in variants_of(only)] + ([("fp32", "vk", 4)] if "mtp" in only else [])
    print(f"# ptxas usage of the sweep tiles for {args.arch} (128 threads x regs <= 64K per SM; "
          f"state bytes in flight per CTA = rows x K x dtype bytes)")
    for sd, lay, T in cases:
        for t in C.sweep_tiles(args.arch, lay, sd, T):
            kw = dict(inter="fp32", update_state=False) if T > 1 else {}
            spec = C.base_spec(args.arch, layout=lay, state=sd, T=T, tile=t, **kw)
            u = C.ptxas_usage(spec)
            if u is None:
                print("ptxas not found on PATH")
                return
            a, nw, _ = C.split_tile(t)
            cta_bytes = (a * nw * K if lay == "vk" else a * K) * ESZ[{"fp32": torch.float32,
                                                                    "bf16": torch.bfloat16}[sd]]
            per_warp = -(-u["registers"] * 32 // 256) * 256
            ctas = min(32, 65536 // (per_warp * nw), 64 // nw)
            print(f"{lay} {sd} T={T} {C.tile_label(t):>7}: {u['registers']:3d} regs, spill {u['spill_bytes']} B, "
                  f"{ctas} CTAs/SM x {cta_bytes >> 10} KiB = {ctas * cta_bytes >> 10} KiB of state per SM", flush=True)


def case_name(sd, lay, T):
    return f"{lay} {DNAME[sd]}" + (f" mtp T={T}" if T else " decode")


def measure(args, C, arch, l2, bw, B, sd, lay, T, peers):
    p = Problem(B, sd, lay, l2, T=T)
    ref = p.reference()
    tile = C.tile_for(arch, lay, DNAME[sd], B * HV, T or 1)
    row = dict(case=case_name(sd, lay, T), B=B, tile=C.tile_label(tile), floor_us=p.floor_bytes / bw * 1e6)
    calls, err = verified(p, cutedsl, ref)
    if calls is None:
        row.update(us=float("nan"), pct=float("nan"), error=err)
        log(f"{row['case']} B={B}: cutedsl {err}")
    else:
        us = graph_us(calls, args.replays)
        row.update(us=us, pct=100 * p.floor_bytes / (us * 1e-6) / bw)
        log(f"{row['case']} B={B} tile {row['tile']}: {us:.2f} us ({row['pct']:.1f}% of copy bw)")
    for name, make in peers.items():
        pc, perr = verified(p, make, ref)
        if pc is None:
            row[name] = perr
        else:
            row[name] = graph_us(pc, args.replays)
            log(f"   {name}: {row[name]:.2f} us")
    del p
    torch.cuda.empty_cache()
    return row


def sweep_candidates(C, arch, lay, sd, T, B):
    """C.sweep_tiles, plus the "n" twin (no L2 prefetch before the PDL wait) of each tile that run() launches
    with PDL at this B when B <= 32 (the prefetch pays only where the grid is resident early)."""
    out = []
    for t in C.sweep_tiles(arch, lay, sd, T, K, V):
        out.append(t)
        spec = C.base_spec(arch, layout=lay, state=sd, T=T, tile=t)
        if B <= 32 and "s" not in C.split_tile(t)[2] and B * spec.ctas() <= L.PDL_MAX_PROGRAMS:
            out.append(C.with_opts(t, "n"))
    return out


def sweep(args, C, arch, l2, bw, Bs, variants, mtp):
    """Every tile of `sweep_candidates` at every B, each checked against the reference at that B before it is
    timed (a wrong tile is reported and not timed): each timed once (short warm-up), then the six fastest,
    the table's tile and the Triton decode in three interleaved rounds (median). Prints the best per (case,
    bucket) as TILES entries under this GPU's table key (`C.table_key_of`)."""
    from gdn.common import timing
    tkey = C.table_key_of(torch.device(DEV), arch)
    tkey = tkey if ":" in tkey else f"{arch}:{L.model_of(torch.cuda.get_device_name())}"
    rows, entries, wrong = [], {}, []
    cases = [(sd, lay, None, B) for sd, lay in variants for B in Bs]
    cases += [(torch.float32, "vk", int(T), B) for T in args.mtp_t.split(",") for B in sorted({B for B, _ in mtp})]
    for sd, lay, T, B in cases:
        p = Problem(B, sd, lay, l2, T=T)
        ref = p.reference()
        runs = {}
        for tile in sweep_candidates(C, arch, lay, DNAME[sd], T or 1, B):
            calls, err = verified(p, lambda q, t=tile: cutedsl(q, t), ref)
            if err:
                wrong.append(f"{case_name(sd, lay, T)} B={B} tile {C.tile_label(tile)}: {err}")
                log(wrong[-1])
                continue
            runs[tile] = calls
        if not runs:
            continue
        first = {tile: graph_us(calls, 8, warm_ms=8.0) for tile, calls in runs.items()}   # stage 1: short warm-up
        dflt = C.pick_tile(tkey, lay, DNAME[sd], K, V, B * HV, T or 1)
        keep = {t: runs[t] for t in sorted(first, key=first.get)[:6]}
        if dflt in runs:
            keep[dflt] = runs[dflt]
        tri = triton_calls(p)
        if tri is not None:
            keep["triton"] = tri
        times = timing.interleaved_us(keep, max(5, args.replays), 3)
        best = sorted(((t, u) for t, u in times.items() if t != "triton"), key=lambda kv: kv[1])
        (t1, u1), second = best[0], (best[1] if len(best) > 1 else (None, float("nan")))
        pct = 100 * p.floor_bytes / (u1 * 1e-6) / bw
        dus, tus = times.get(dflt), times.get("triton")
        log(f"{case_name(sd, lay, T)} B={B}: best {C.tile_label(t1)} {u1:.2f} us ({pct:.1f}%); table "
            f"{C.tile_label(dflt)} {dus if dus is None else f'{dus:.2f}'}; triton {tus if tus is None else f'{tus:.2f}'}; "
            + ", ".join(f"{C.tile_label(t)}={u:.2f}" for t, u in best[1:8]))
        rows.append(dict(case=case_name(sd, lay, T), B=B, tile=C.tile_label(t1), us=u1, pct=pct,
                         second=C.tile_label(second[0]) if second[0] else "", second_us=f"{second[1]:.2f}",
                         default=C.tile_label(dflt), default_us=f"{dus:.2f}" if dus else "",
                         triton_us=f"{tus:.2f}" if tus else ""))
        kind = "decode" if T is None else ("mtp" if T == 4 else f"mtp{T}")
        entries[(tkey, lay, DNAME[sd], kind, C.nh_bucket(B * HV))] = C.norm_tile(t1)
        del p, runs, keep
        torch.cuda.empty_cache()
    if wrong:
        print(f"\n# {len(wrong)} WRONG (case, B, tile) combinations -- these were not timed:")
        for w in wrong:
            print("    " + w)
    print("\n# TILES entries for gdn/nvidia/cutedsl/_common.py (buckets of B*HV; HV=32 here)")
    for k_, v_ in sorted(entries.items(), key=lambda kv: (kv[0][:4], kv[0][4])):
        print(f"    {k_!r}: {v_!r},")
    return rows


def triton_calls(p: Problem):
    """The Triton decode family's calls on the same problem, for the sweep's comparison (None without it)."""
    try:
        return cutedsl(p, backend="triton")[0]
    except Exception as e:          # no Triton on this host: the sweep goes on without the comparison
        log(f"triton decode unavailable: {type(e).__name__}: {e}")
        return None


if __name__ == "__main__":
    main()
