"""Decode-family benchmark on one GPU: gdn's Triton decode / decode_mtp against the memory roofline and peers.

    python bench/bench_decode.py [--quick] [--sweep] [--out results.csv]

Qwen3-Next shape (H=16, HV=32, K=V=128), bf16 inputs. Each row times CUDA-graph replays of many calls
over rotated pools (working set > 4x L2, so state traffic comes from HBM), median over replays, per
call, after a warm-up (gdn/common/timing.py); the implementations of one problem are timed in ROUNDS
interleaved rounds and each keeps its median. The floor is the state traffic at the measured copy
bandwidth (large D2D copy, read+write bytes): decode reads and writes every active state; MTP verify reads
it once and writes T intermediate states (fp32). Peers (FLA 0.6 fused_recurrent_gated_delta_rule,
FlashInfer 0.7.2 gdn_decode) join when importable; every implementation's output is checked against gdn's
fp32 reference before it is timed. gdn's slots are a random permutation of the pool; FLA takes no state
indices and reads call c's contiguous slice, so with FLA the table also has gdn-triton-fla-slots (and
gdn-cutedsl-fla-slots where CuTeDSL is installed): gdn on those same slots. Where gdn launches with PDL (sm_90+, gdn/common/launch.py `pdl_ok`) the main table also
has gdn-triton-nopdl: the same kernels and configs launched without it (GDN_PDL=0), and gdn-triton-noprefetch:
with PDL but without the state tile's L2 prefetch before the wait (GDN_DECODE_PREFETCH=0). `--sweep` times the
Triton kernel over a grid of (BV, num_warps, num_stages) per batch and prints the best configs as
entries for gdn/common/triton/decode.py's CONFIGS table.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gdn.common import timing  # noqa: E402
from gdn.common.timing import copy_bandwidth, graph_time_us, rel  # noqa: E402

H, HV, K, V = 16, 32, 128, 128
DEV = "cuda"
ESZ = {torch.float32: 4, torch.bfloat16: 2}


# ---------------------------------------------------------------------------------------------------
# measurement

ROUNDS = 3    # each implementation (and --sweep config) timed this many times, interleaved; median kept


def interleaved_us(runs: dict, replays: int, context=lambda key: contextlib.nullcontext()) -> dict:
    return timing.interleaved_us(runs, replays, ROUNDS, context)


def n_rot(per_call_bytes: int, l2: int, lo=2, hi=128) -> int:
    return max(lo, min(hi, math.ceil(8 * l2 / max(per_call_bytes, 1))))


# ---------------------------------------------------------------------------------------------------
# problem

class Decode:
    """One decode configuration: B sequences, rotated over n pools-worth of slots."""

    def __init__(self, B, state_dtype, layout, l2, T=None, seed=0):
        g = torch.Generator(device=DEV).manual_seed(seed)
        self.B, self.T, self.sd, self.layout = B, T, state_dtype, layout
        lead = (B,) if T is None else (B, T)
        r = lambda *s: torch.randn(*lead, *s, generator=g, device=DEV).to(torch.bfloat16)  # noqa: E731
        self.q, self.k, self.v, self.a, self.b = r(H, K), r(H, K), r(HV, V), r(HV), r(HV)
        self.A_log = torch.empty(HV, device=DEV).uniform_(-4, -1, generator=g)
        self.dt_bias = torch.randn(HV, generator=g, device=DEV) * 0.5
        state_bytes = B * HV * K * V * ESZ[state_dtype]
        per_call = state_bytes * (1 + (T or 1))
        self.n = n_rot(per_call, l2)
        shape = (HV, V, K) if layout == "vk" else (HV, K, V)
        self.pool = (torch.randn(self.n * B, *shape, generator=g, device=DEV) * 0.1).to(state_dtype)
        perm = torch.randperm(self.n * B, generator=g, device=DEV)
        self.idx = [perm[c * B:(c + 1) * B].to(torch.int32).contiguous() for c in range(self.n)]
        self.scale = K ** -0.5
        if T is None:
            self.out = torch.empty(B, HV, V, dtype=torch.bfloat16, device=DEV)
            self.floor_bytes = 2 * state_bytes
        else:
            self.out = torch.empty(B, T, HV, V, dtype=torch.bfloat16, device=DEV)
            self.inter = [torch.empty(B, T, *shape, dtype=state_dtype, device=DEV) for _ in range(self.n)]
            self.floor_bytes = state_bytes * (1 + T)

    def reference(self, c=0):
        """(out, new states of call c's slots [B, ...] or intermediate states) from gdn's fp32 reference."""
        from gdn.common import reference as R
        pool = self.pool.clone()
        out = torch.empty_like(self.out)
        if self.T is None:
            R.decode(self.q, self.k, self.v, self.a, self.b, self.A_log, self.dt_bias, pool, self.idx[c], out,
                     scale=self.scale, use_qk_l2norm=True, state_layout=self.layout)
            return out, pool[self.idx[c].long()]
        inter = torch.empty_like(self.inter[c])
        R.decode_mtp(self.q, self.k, self.v, self.a, self.b, self.A_log, self.dt_bias, pool, self.idx[c], out,
                     inter, None, None, disable_state_update=True, scale=self.scale, use_qk_l2norm=True,
                     state_layout=self.layout)
        return out, inter

    def tol(self):
        return 1e-2 if self.sd == torch.bfloat16 else 5e-3


# ---------------------------------------------------------------------------------------------------
# implementations: each returns (calls, check) where check() -> (out, states) for call 0 on a scratch pool

def gdn_impl(p: Decode, cfg=None, backend="triton"):
    """A registered gdn backend through its kernel-level launcher (`cfg` forces a triton config)."""
    from gdn.common.registry import get
    extra = {"_cfg": cfg} if cfg is not None else {}
    if p.T is None:
        fn = get("decode", backend).fn

        def mk(pool, c):
            return lambda: fn(p.q, p.k, p.v, p.a, p.b, p.A_log, p.dt_bias, pool, p.idx[c], p.out, scale=p.scale,
                              use_qk_l2norm=True, state_layout=p.layout, **extra)

        def check():
            pool = p.pool.clone()
            mk(pool, 0)()
            return p.out.clone(), pool[p.idx[0].long()]
    else:
        fn = get("decode_mtp", backend).fn

        def mk(pool, c):
            return lambda: fn(p.q, p.k, p.v, p.a, p.b, p.A_log, p.dt_bias, pool, p.idx[c], p.out, p.inter[c], None,
                              None, disable_state_update=True, scale=p.scale, use_qk_l2norm=True,
                              state_layout=p.layout, **extra)

        def check():
            mk(p.pool, 0)()
            return p.out.clone(), p.inter[0].clone()
    return [mk(p.pool, c) for c in range(p.n)], check


def gdn_triton(p: Decode, cfg=None):
    return gdn_impl(p, cfg)


def on_fla_slots(p: Decode) -> Decode:
    """The same problem with call c on the contiguous slots c*B .. c*B + B - 1: the slots FLA reads (it takes
    no state indices), so gdn-triton-fla-slots against fla-0.6 compares the kernels on one access pattern."""
    import copy
    q = copy.copy(p)
    q.idx = [torch.arange(c * p.B, (c + 1) * p.B, dtype=torch.int32, device=DEV) for c in range(p.n)]
    return q


def gdn_triton_fla_slots(p: Decode):
    return None if p.T is not None else gdn_triton(on_fla_slots(p))


def gdn_cutedsl_fla_slots(p: Decode):
    return None if p.T is not None else gdn_impl(on_fla_slots(p), None, "cutedsl")


def row_context(name: str):
    """The launch context of a table row: PDL off for gdn-triton-nopdl (GDN_PDL=0), the state's L2 prefetch
    before the PDL wait off for gdn-triton-noprefetch (GDN_DECODE_PREFETCH=0), else as launched by default.
    Warm-up and CUDA-graph capture of the row's calls both happen inside."""
    from gdn.common import launch as L, probe
    if name == "gdn-triton-nopdl":
        return L.pdl_switched(False)
    if name == "gdn-triton-noprefetch":
        return probe.env_switched("GDN_DECODE_PREFETCH", "0")
    return contextlib.nullcontext()


def other_backends(p: Decode) -> dict:
    """Other registered gdn backends for this op that accept the problem (e.g. cutedsl), by name."""
    from gdn.common import probe, registry
    op = "decode" if p.T is None else "decode_mtp"
    info = probe.device_info()
    props = {"device": torch.device(DEV), "dtype": torch.bfloat16, "state_dtype": p.sd, "layout": p.layout,
             "H": H, "HV": HV, "K": K, "V": V}
    if p.T is not None:
        props.update(T=p.T, intermediate=True, inter_dtype=p.sd, tree=False, update=False)
    out = {}
    for impl in registry.impls(op):
        if impl.backend in ("reference", "triton") or impl.not_supported_reasons(props, info):
            continue
        out[f"gdn-{impl.backend}"] = (lambda q, b=impl.backend: gdn_impl(q, None, b))
    return out


def fla(p: Decode):
    """FLA 0.6: no state indices, so each call takes its contiguous pool slice as initial_state; the final
    state comes back as a new fp32 tensor (not in place)."""
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as f
    if p.T is not None:
        return None
    q, k, v = p.q[:, None], p.k[:, None], p.v[:, None]
    a, b = p.a[:, None], p.b[:, None]
    vfirst = p.layout == "vk"

    def run(c, pool=None):
        h0 = (pool if pool is not None else p.pool)[c * p.B:(c + 1) * p.B]
        return f(q, k, v, g=a, beta=b, scale=p.scale, initial_state=h0, output_final_state=True,
                 use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=p.A_log, dt_bias=p.dt_bias,
                 use_beta_sigmoid_in_kernel=True, state_v_first=vfirst)

    def check():
        # reference on the same contiguous slots FLA reads
        saved = p.idx[0]
        p.idx[0] = torch.arange(p.B, dtype=torch.int32, device=DEV)
        try:
            o, st = run(0, p.pool.clone())
            ref = p.reference(0)
        finally:
            p.idx[0] = saved
        return (o[:, 0], st), ref

    return [lambda c=c: run(c) for c in range(p.n)], check


def flashinfer(p: Decode):
    import flashinfer.gdn_decode as fi
    q, k, v = p.q[:, None] if p.T is None else p.q, p.k[:, None] if p.T is None else p.k, \
        p.v[:, None] if p.T is None else p.v
    a, b = (p.a[:, None], p.b[:, None]) if p.T is None else (p.a, p.b)
    out = torch.empty(p.B, 1 if p.T is None else p.T, HV, V, dtype=torch.bfloat16, device=DEV)
    if p.T is None and p.layout == "vk":
        def mk(pool, c):
            return lambda: fi.gated_delta_rule_decode_pretranspose(
                q, k, v, None, p.A_log, a, p.dt_bias, b, scale=p.scale, output=out, use_qk_l2norm=True,
                initial_state=pool, initial_state_indices=p.idx[c])

        def check():
            pool = p.pool.clone()
            mk(pool, 0)()
            return (out[:, 0].clone(), pool[p.idx[0].long()]), p.reference(0)
    elif p.T is None:       # KV: the non-transposed kernel takes a per-batch state, not a pool
        if p.sd != torch.float32:
            return None

        def mk(pool, c):
            return lambda: fi.gated_delta_rule_decode(q, k, v, pool[c * p.B:(c + 1) * p.B], p.A_log, a, p.dt_bias, b,
                                                      scale=p.scale, output=out, use_qk_l2norm=True)

        def check():
            saved = p.idx[0]
            p.idx[0] = torch.arange(p.B, dtype=torch.int32, device=DEV)
            try:
                pool = p.pool.clone()
                mk(pool, 0)()
                return (out[:, 0].clone(), pool[:p.B]), p.reference(0)
            finally:
                p.idx[0] = saved
    else:
        if p.layout != "vk" or p.sd != torch.float32:
            return None

        def mk(pool, c):
            return lambda: fi.gated_delta_rule_mtp(
                q, k, v, pool, p.idx[c], p.A_log, a, p.dt_bias, b, scale=p.scale, output=out,
                intermediate_states_buffer=p.inter[c], disable_state_update=True, use_qk_l2norm=True)

        def check():
            mk(p.pool, 0)()
            return (out.clone(), p.inter[0].clone()), p.reference(0)
    return [mk(p.pool, c) for c in range(p.n)], check


PEERS = {"fla-0.6": fla, "flashinfer-0.7": flashinfer}


def checked(name, p, make):
    """(calls, error string or None)."""
    try:
        res = make(p)
        if res is None:
            return None, "n/a"
        calls, check = res
        if name.endswith("-fla-slots"):
            got, ref = check(), on_fla_slots(p).reference(0)
        elif name.startswith("gdn-"):
            got, ref = check(), p.reference(0)
        else:
            got, ref = check()
        e = max(rel(got[0], ref[0]), rel(got[1], ref[1]))
        if not e < p.tol():
            return None, f"WRONG (rel err {e:.2e})"
        return calls, None
    except ImportError:
        return None, "n/a"
    except Exception as ex:           # a peer refusing the shape
        return None, f"error: {type(ex).__name__}: {str(ex).splitlines()[0][:80] if str(ex) else ''}"


# ---------------------------------------------------------------------------------------------------

def sweep_grid(T, B=None, pdl=False):
    """Configs to time: (BV, num_warps, num_stages), and with PDL at B <= 32 each once more without the state's
    L2 prefetch (a fourth entry 0: decode.py's CONFIGS), which pays only where the grid is resident early."""
    out = []
    for BV in (4, 8, 16, 32, 64):
        for nw in (1, 2, 4, 8):
            per_thread = BV * K // (32 * nw)
            if per_thread < 4 or per_thread > 128:
                continue
            if T is not None and (BV > 32 or nw > 4):
                continue
            out.append((BV, nw, 1))
    if pdl and B is not None and B <= 32:
        out += [c + (0,) for c in out]
    return out


def cfg_name(c) -> str:
    return f"{c[0]}/{c[1]}" + ("/nopf" if len(c) > 3 and not c[3] else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes and replays")
    ap.add_argument("--sweep", action="store_true", help="time the triton kernel over a config grid")
    ap.add_argument("--sweep-only", action="store_true", help="the sweep without the main table")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--require-peers", action="store_true", help="stop at once if FLA or FlashInfer does not import")
    ap.add_argument("--out", default=None, help="CSV path")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a GPU"
    from gdn import ops
    from gdn.common import launch as L, probe
    peer_modules = ("fla.ops.gated_delta_rule", "flashinfer.gdn_decode")
    if args.require_peers and (bad := probe.unimportable(peer_modules)):
        sys.exit("peers required but not importable:\n  " + "\n  ".join(bad))
    import gdn.common.triton.decode as D
    ops.load_backends()                       # registers every backend (triton, cutedsl, ...)

    info = probe.device_info()
    l2 = info.l2_bytes or 50 << 20
    bw = copy_bandwidth()
    replays = 10 if args.quick else 25
    Bs = (1, 32, 256) if args.quick else (1, 8, 32, 64, 128, 256, 512)
    variants = [(torch.float32, "vk"), (torch.bfloat16, "vk"), (torch.float32, "kv")]
    mtp_cases = [(32, 4)] if args.quick else [(B, T) for B in (8, 32, 128) for T in (2, 4, 8)]
    peers = {}
    for name, mod in zip(("fla-0.6", "flashinfer-0.7"), peer_modules):
        if args.no_peers:
            break
        try:
            __import__(mod)
            peers[name] = PEERS[name]
        except Exception as ex:       # noqa: BLE001 (reported, not fatal)
            print(f"# peer {name} not importable: {type(ex).__name__}: {str(ex)[:120]}")
    print(f"# gdn decode bench: {info.name} ({info.arch}), L2 {l2 >> 20} MiB, copy bandwidth {bw / 1e12:.2f} TB/s "
          f"(read+write), torch {torch.__version__}, triton {probe.package_version('triton')}, "
          f"fla-core {probe.package_version('fla-core')}, flashinfer {probe.package_version('flashinfer-python')}, "
          f"{datetime.date.today()}")
    print(f"# H={H} HV={HV} K=V={K}, bf16 inputs, CUDA-graph replay over rotated pools, median of {replays} "
          f"replays, median of {ROUNDS} interleaved rounds; "
          f"PDL {'on' if L.pdl_ok(info.arch) else 'off'}\n")
    triton_rows = [("gdn-triton", gdn_triton)] + ([("gdn-triton-nopdl", gdn_triton),
                                                   ("gdn-triton-noprefetch", gdn_triton)] if L.pdl_ok(info.arch) else [])
    rows = []
    t_start = time.time()

    def emit(kind, impl, p, us, err=None, cfg=""):
        floor = p.floor_bytes / bw * 1e6
        row = dict(kind=kind, impl=impl, state=("fp32" if p.sd == torch.float32 else "bf16"), layout=p.layout,
                   B=p.B, T=p.T or 1, us=(round(us, 2) if us else ""), floor_us=round(floor, 2),
                   pct_floor=(round(100 * floor / us, 1) if us else ""), cfg=cfg, note=err or "")
        rows.append(row)
        return row

    def bench_problem(kind, p):
        out = []
        others = {} if args.no_peers else other_backends(p)
        # with FLA, gdn once more on FLA's slots (contiguous; the main row's are a random permutation)
        fla_slots = [("gdn-triton-fla-slots", gdn_triton_fla_slots)] if "fla-0.6" in peers else []
        if fla_slots and "gdn-cutedsl" in others:
            fla_slots.append(("gdn-cutedsl-fla-slots", gdn_cutedsl_fla_slots))
        runs = []
        for name, make in triton_rows + list(others.items()) + list(peers.items()) + fla_slots:
            with row_context(name):
                calls, err = checked(name, p, make)
            if err != "n/a":
                runs.append((name, calls, err))
        us_of = interleaved_us({name: calls for name, calls, _ in runs if calls}, replays, row_context)
        for name, calls, err in runs:
            us = us_of.get(name)
            cfg = ""
            if name.startswith("gdn-triton"):
                cfg = str(D.config(D.table_key_of(torch.device(DEV)), p.layout, p.sd, p.B * HV, K, V, p.T or 1))
            out.append(emit(kind, name, p, us, err, cfg))
        return out

    if args.sweep_only:
        args.sweep = True
    else:
        print("| kind | impl | state | layout | B | T | us | floor us | % floor | vs gdn | note |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")

    def show(rs):
        base = next((r["us"] for r in rs if r["impl"] == "gdn-triton" and r["us"]), None)
        for r in rs:
            vs = f"{r['us'] / base:.2f}x" if (base and r["us"]) else ""
            print(f"| {r['kind']} | {r['impl']} | {r['state']} | {r['layout']} | {r['B']} | {r['T']} | {r['us']} | "
                  f"{r['floor_us']} | {r['pct_floor']} | {vs} | {r['note']} |", flush=True)

    for sd, layout in ([] if args.sweep_only else variants):
        for B in Bs:
            p = Decode(B, sd, layout, l2)
            show(bench_problem("decode", p))
            del p
            torch.cuda.empty_cache()
    for B, T in ([] if args.sweep_only else mtp_cases):
        p = Decode(B, torch.float32, "vk", l2, T=T)
        show(bench_problem("mtp", p))
        del p
        torch.cuda.empty_cache()
    if not args.sweep_only:
        print(f"\n# main table: {time.time() - t_start:.0f} s")
        # host cost of one eager call (B=1, host-bound): what the launcher adds outside CUDA graphs
        p = Decode(1, torch.float32, "vk", l2)
        for name, make in [("gdn-triton", gdn_triton)] + list(peers.items()):
            try:
                res = make(p)
                if res is None:
                    continue
                c = res[0][0]
                for _ in range(20):
                    c()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(500):
                    c()
                t1 = time.perf_counter()
                torch.cuda.synchronize()
                print(f"# eager host time per call, {name}: {(t1 - t0) / 500 * 1e6:.1f} us")
            except Exception as ex:
                print(f"# eager host time per call, {name}: {type(ex).__name__}")
        del p

    if args.sweep:
        sweep_rows = []
        print("\n## sweep (gdn-triton, us per call; best per row marked *)\n")
        cases = [("decode", sd, layout, B, None) for sd, layout in variants for B in Bs]
        cases += [("mtp", torch.float32, "vk", B, T) for B, T in mtp_cases]
        best = {}
        for kind, sd, layout, B, T in cases:
            p = Decode(B, sd, layout, l2, T=T)
            res = []
            pool0 = p.pool.clone()
            ref = p.reference(0)
            runs = {}
            for cfg in sweep_grid(T, B, L.pdl_ok(info.arch)):
                try:
                    p.pool.copy_(pool0)         # every config is checked from the same states
                    calls, check = gdn_triton(p, cfg)
                    got = check()
                    e = max(rel(got[0], ref[0]), rel(got[1], ref[1]))
                    if not e < p.tol():
                        res.append((cfg, None, f"WRONG {e:.1e}"))
                        continue
                    runs[cfg] = calls
                except Exception as ex:
                    res.append((cfg, None, f"{type(ex).__name__}"))
            res += [(cfg, us, "") for cfg, us in interleaved_us(runs, max(5, replays // 2)).items()]
            ok = [r for r in res if r[1]]
            top = min(ok, key=lambda r: r[1]) if ok else None
            floor = p.floor_bytes / bw * 1e6
            cells = " ".join(f"{cfg_name(c)}{'*' if top and c == top else ''}:{t:.1f}" if t else f"{cfg_name(c)}:{n}"
                             for c, t, n in res)
            tag = f"{kind} {'fp32' if sd == torch.float32 else 'bf16'} {layout} B={B}" + (f" T={T}" if T else "")
            if not top:
                print(f"- {tag}: no config ran  [{cells}]", flush=True)
            else:
                print(f"- {tag}: best {cfg_name(top[0])} (BV/warps) {top[1]:.2f} us "
                      f"({100 * floor / top[1]:.0f}% of floor)  [{cells}]", flush=True)
                for c, t, n in res:
                    sweep_rows.append(dict(kind="sweep-" + kind, impl="gdn-triton", state="fp32" if sd == torch.float32
                                           else "bf16", layout=layout, B=B, T=T or 1, us=round(t, 2) if t else "",
                                           floor_us=round(floor, 2), pct_floor=round(100 * floor / t, 1) if t else "",
                                           cfg=str(c), note=n))
                bucket = (("mtp",) if T else ()) + (layout, "fp32" if sd == torch.float32 else "bf16",
                                                    D.nh_bucket(B * HV))
                best.setdefault(bucket, []).append({c: t for c, t, _ in ok} | {"_best": top[1]})
            del p
            torch.cuda.empty_cache()
        rows += sweep_rows
        model = L.model_of(info.name)
        tkey = f"{info.arch}:{model}" if model else info.arch     # rows for this GPU model (decode.table_key_of)
        print("\n# CONFIGS entries for gdn/common/triton/decode.py (table key %s):" % tkey)
        print("CONFIGS.update({")
        for bucket, runs in best.items():
            # the config with the least summed slowdown over the runs in this bucket (T values for MTP)
            cands = set.intersection(*[set(k for k in r if k != "_best") for r in runs])
            if not cands:
                continue
            pick_cfg = min(cands, key=lambda c: sum(r[c] / r["_best"] for r in runs))
            print(f"    ({tkey!r}, {bucket!r}): {pick_cfg!r},")
        print("})")
        print(f"\n# total: {time.time() - t_start:.0f} s")

    if args.out and rows:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()) + ["device", "arch", "copy_bw_tbs", "date"])
            w.writeheader()
            for r in rows:
                w.writerow(r | dict(device=info.name, arch=info.arch, copy_bw_tbs=round(bw / 1e12, 3),
                                    date=str(datetime.date.today())))
        print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
