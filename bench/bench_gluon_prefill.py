"""Gluon prefill sub-ops (chunk_output, chunk_wy, chunk_state) against the Triton ones, kernel time on one GPU.

    python bench/bench_gluon_prefill.py [--cases 8x4096,1x32768] [--iters 50]

Qwen3-Next heads (H=16, HV=32, K=V=128), bf16 inputs, the sub-op's kernel-level inputs (h and v_new as
chunk_state leaves them, g_cum chunk-local). Each launcher is timed as a CUDA graph of one call (median of
--iters replays, CUDA events: kernel time without host overhead) and as --iters eager back-to-back calls
between two events (adds the host's descriptor/launch cost where it does not hide behind the GPU). The
Gluon output is checked against the Triton one first. GB/s counts the bytes each kernel must move at least
(chunk_output: q, k once, h, v_new, g_cum, out; chunk_wy: k, v, g_cum, beta, A, w, u; chunk_state: k, w,
u, g_cum, h, v_new, the pool slots read and written); the measured copy bandwidth is the roofline.
chunk_output's Gluon kernel is timed at both V blocks (BV=128, 64); chunk_state's Gluon kernel at its table's
config and a sweep of (BV, STAGES), the Triton one as the op (pointer kernel: no key-norm buffer) and as
prefill launches it ("triton tma": TMA kernel with the precomputed key norms).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gdn import ops  # noqa: E402
from gdn.common import probe, registry, timing  # noqa: E402
from gdn.common import reference as R  # noqa: E402
from gdn.common.triton.prefill import _common as PC  # noqa: E402

H, HV, K, V = 16, 32, 128, 128


def output_inputs(N, L, dev="cuda"):
    T = N * L
    cu = torch.arange(0, T + 1, L, dtype=torch.int32, device=dev)
    q = torch.randn(T, H, K, device=dev).bfloat16()
    k = torch.randn(T, H, K, device=dev).bfloat16()
    g, _ = R.gates(torch.randn(T, HV, device=dev), torch.randn(T, HV, device=dev),
                   torch.empty(HV, device=dev).uniform_(-4, -1), torch.zeros(HV, device=dev))
    g_cum = torch.empty(T, HV, device=dev)
    R.chunk_cumsum(g, cu, g_cum, chunk_size=64)
    v_new = torch.randn(T, HV, V, device=dev).bfloat16()
    h = (torch.randn(PC.num_slots(T, N), HV, K, V, device=dev) * 0.3).bfloat16()
    idx = torch.arange(N, dtype=torch.int32, device=dev)
    return (q, k, v_new, h, g_cum, idx, cu), dict(scale=K ** -0.5, use_qk_l2norm=True)


def wy_inputs(N, L, dev="cuda"):
    (q, k, v_new, h, g_cum, idx, cu), _ = output_inputs(N, L, dev)
    T = N * L
    beta = torch.rand(T, HV, device=dev)
    A = torch.randn(T, HV, 64, device=dev) * 0.1     # values do not matter for the time
    w = torch.empty(T, HV, K, device=dev, dtype=torch.bfloat16)
    u = torch.empty(T, HV, V, device=dev, dtype=torch.bfloat16)
    return (k, v_new, g_cum, beta, A, cu, w, u), dict(use_qk_l2norm=True)


def wy_bytes(args):
    k, v, g_cum, beta, A, _, w, u = args
    return k.nbytes + v.nbytes + g_cum.nbytes + beta.nbytes + A.nbytes + w.nbytes + u.nbytes


def output_bytes(args):
    q, k, v_new, h, g_cum = args[:5]
    return (q.nbytes + k.nbytes + h.nbytes + 2 * v_new.nbytes + g_cum.nbytes)   # out as large as v_new


def state_inputs(N, L, dev="cuda"):
    """chunk_state's inputs (w small enough that the 512-chunk recurrence stays finite), a pool of N slots
    ("vk", fp32) and the key norms prefill would pass the Triton TMA kernel."""
    (q, k, v_new, h, g_cum, idx, cu), _ = output_inputs(N, L, dev)
    T = N * L
    w = (torch.randn(T, HV, K, device=dev) * 0.01).bfloat16()
    u = torch.randn(T, HV, V, device=dev).bfloat16()
    pool = torch.randn(N, HV, V, K, device=dev) * 0.1
    rk = torch.rsqrt(k.float().pow(2).sum(-1) + 1e-6)
    return (k, w, u, g_cum, pool, idx, cu, None, h, v_new), rk


def state_bytes(args):
    k, w, u, g_cum, pool, _, _, _, h, v_new = args
    return k.nbytes + w.nbytes + u.nbytes + g_cum.nbytes + 2 * pool.nbytes + h.nbytes + v_new.nbytes


def eager_us(fn, iters):
    fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        fn()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) * 1e3 / iters


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="8x4096,1x32768")
    p.add_argument("--iters", type=int, default=50)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_gluon_prefill: needs a CUDA GPU")
    ops.load_backends()
    info = probe.device_info("cuda")
    v = probe.versions()
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  {torch.cuda.get_device_name()} ({info.arch})  "
          f"torch {torch.__version__}  triton {v.get('triton')}  cuda {torch.version.cuda}")
    bw = timing.copy_bandwidth()
    print(f"# copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    from gdn.nvidia.gluon import chunk_output as GO
    print(f"{'op':<13} {'case':<8} {'impl':<16} {'graph us':>9} {'eager us':>9} {'GB/s':>6} {'% copy':>6}  rel.err vs triton")
    for case in a.cases.split(","):
        N, L = map(int, case.split("x"))
        args, kw = output_inputs(N, L)
        T = N * L
        nbytes = output_bytes(args)
        outs = {}
        cands = [("triton", registry.get("chunk_output", "triton").fn, None)]
        for bv in (128, 64):
            cfg = dict(GO.config(info.arch, V), BV=bv)
            cands.append((f"gluon BV={bv}", GO.launch_output, cfg))
        for name, fn, cfg in cands:
            out = torch.empty(T, HV, V, device="cuda", dtype=torch.bfloat16)
            if cfg is None:
                call = lambda fn=fn, args=(*args, out): fn(*args, **kw)
            else:
                call = lambda fn=fn, args=(*args, out, kw["scale"], kw["use_qk_l2norm"], cfg): fn(*args)
            call()
            torch.cuda.synchronize()
            outs[name] = out
            err = timing.rel(out, outs["triton"])
            g_us = timing.graph_time_us([call], replays=a.iters)
            e_us = eager_us(call, a.iters)
            gbs = nbytes / (g_us * 1e-6) / 1e9
            print(f"{'chunk_output':<13} {case:<8} {name:<16} {g_us:>9.1f} {e_us:>9.1f} {gbs:>6.0f} "
                  f"{100 * gbs * 1e9 / bw:>5.0f}%  {err:.2e}")
        del outs
        args, kw = wy_inputs(N, L)
        nbytes = wy_bytes(args)
        res = {}
        for name in ("triton", "gluon"):
            fn = registry.get("chunk_wy", name).fn
            call = lambda fn=fn: fn(*args, **kw)
            call()
            torch.cuda.synchronize()
            res[name] = (args[6].clone(), args[7].clone())
            err = max(timing.rel(res[name][0], res["triton"][0]), timing.rel(res[name][1], res["triton"][1]))
            g_us = timing.graph_time_us([call], replays=a.iters)
            e_us = eager_us(call, a.iters)
            gbs = nbytes / (g_us * 1e-6) / 1e9
            print(f"{'chunk_wy':<13} {case:<8} {name:<16} {g_us:>9.1f} {e_us:>9.1f} {gbs:>6.0f} "
                  f"{100 * gbs * 1e9 / bw:>5.0f}%  {err:.2e}")
        del res
        torch.cuda.empty_cache()
        bench_state(N, L, info.arch, bw, a.iters, case)


def bench_state(N, L, arch, bw, iters, case):
    from gdn.common.triton.prefill import chunk_state as TS
    from gdn.nvidia.gluon import chunk_state as GS
    args, rk = state_inputs(N, L)
    pool0 = args[4].clone()
    nbytes = state_bytes(args)
    kw = dict(use_qk_l2norm=True, state_layout="vk")
    cands = [("triton", lambda: registry.get("chunk_state", "triton").fn(*args, **kw)),
             ("triton tma", lambda: TS.launch_state(*args, None, None, 1.0, True, "vk", TS.config(arch, N, HV), arch,
                                                    rk=rk))]
    table = GS.config(arch, N, HV, K, V)
    cands.append((f"gluon {table['BV']}/{table['STAGES']}", lambda: GS.chunk_state(*args, **kw)))
    for bv, st in ((64, 2), (64, 3), (32, 2), (32, 3), (16, 2), (16, 3)):
        if (bv, st) != (table["BV"], table["STAGES"]):
            cands.append((f"gluon {bv}/{st}", lambda cfg=dict(BV=bv, STAGES=st): GS.launch_state(
                *args, True, "vk", cfg)))
    ref = None
    for name, call in cands:
        args[4].copy_(pool0)
        call()
        torch.cuda.synchronize()
        got = (args[8].clone(), args[9].clone(), args[4].clone())      # h, v_new, final states
        ref = ref or got                   # the Triton op's result
        err = max(timing.rel(x, y) for x, y in zip(got, ref))
        g_us = timing.graph_time_us([call], replays=iters)
        e_us = eager_us(call, iters)
        gbs = nbytes / (g_us * 1e-6) / 1e9
        print(f"{'chunk_state':<13} {case:<8} {name:<16} {g_us:>9.1f} {e_us:>9.1f} {gbs:>6.0f} "
              f"{100 * gbs * 1e9 / bw:>5.0f}%  {err:.2e}")


if __name__ == "__main__":
    main()
