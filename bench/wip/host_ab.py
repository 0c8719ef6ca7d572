"""An eager prefill's host and wall time with a switch on / off (TOGGLE: GDN_CALL_PLANS, the default, or GDN_PDL),
interleaved rounds, on the GPU machine. Per case and setting: wall time per call of 200 and of 10 back-to-back calls
between synchronisations (bench_prefill's `wall_time`, best of 5; its own metric is the latter), host time per
call enqueued behind a sleep kernel (best and median), and the time per call of 10 calls replayed from a CUDA graph.
    CASES=1x4096,3x1000 TOGGLE=GDN_PDL python bench/wip/host_ab.py"""
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import bench_prefill as BP  # noqa: E402

from gdn.common import probe  # noqa: E402

TOGGLE = os.environ.get("TOGGLE", "GDN_CALL_PLANS")
CASES = [[int(t)] * int(n) for n, t in (c.split("x") for c in os.environ.get("CASES", "1x4096,3x1000").split(","))]


def enqueue(call, n=40):
    torch.cuda._sleep(100_000_000)
    t = time.perf_counter()
    for _ in range(n):
        call()
    d = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return d


def graph_time(call, n=10):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            call()
    g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        e0.record()
        g.replay()
        e1.record()
        torch.cuda.synchronize()
        best = min(best, e0.elapsed_time(e1) * 1e3 / n)
    return best


for L in CASES:
    x = BP.make_inputs(L, 16, 32, 128, 128)
    call = BP.gdn_candidate(x, True)[0]
    res = {"1": [], "0": []}
    for rnd in range(3):
        for setting in res:
            with probe.env_switched(TOGGLE, setting):
                for _ in range(3):
                    call()
                e = sorted(enqueue(call) for _ in range(9))
                # bench_prefill's wall metric (best of 5 runs of n back-to-back calls), n = 200 and its 10
                res[setting].append((BP.wall_time(call, 200) * 1e3, BP.wall_time(call, 10) * 1e3, e[0], e[4],
                                     graph_time(call)))
    for setting, r in res.items():
        b = [min(v[i] for v in r) for i in range(5)]
        print(f"{len(L)}x{L[0]} {TOGGLE}={setting}: wall200 {b[0]:.1f} wall10 {b[1]:.1f} host best {b[2]:.1f} "
              f"median {b[3]:.1f} graph {b[4]:.1f} us/call", flush=True)
