"""Eager prefill wall time per call, GDN_PDL on / off (and the host's enqueue time), interleaved. GPU machine."""
import sys, os, time
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import bench_prefill as BP
from gdn.common import probe
cases = [[int(t)] * int(n) for n, t in (c.split("x") for c in os.environ.get("CASES", "1x4096,3x1000,1x1000,8x4096").split(","))]
def wall(call, n):
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): call()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e6
def enqueue(call, n=40):
    torch.cuda._sleep(100_000_000); t = time.perf_counter()
    for _ in range(n): call()
    d = (time.perf_counter() - t) / n * 1e6; torch.cuda.synchronize(); return d
def graph_time(call):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2): call()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(10): call()
    g.replay(); torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = 1e9
    for _ in range(5):
        e0.record(); g.replay(); e1.record(); torch.cuda.synchronize(); best = min(best, e0.elapsed_time(e1) * 100)
    return best
for L in cases:
    x = BP.make_inputs(L, 16, 32, 128, 128)
    call = BP.gdn_candidate(x, True)[0]
    res = {}
    for rnd in range(3):
        for pdl in ("1", "0"):
            with probe.env_switched("GDN_PDL", pdl):
                for _ in range(3): call()
                r = (min(wall(call, 200) for _ in range(2)), min(wall(call, 10) for _ in range(5)), min(enqueue(call) for _ in range(5)), graph_time(call))
                res.setdefault(pdl, []).append(r)
    for pdl, r in res.items():
        print(f"{len(L)}x{L[0]} PDL={pdl}: wall200 {min(v[0] for v in r):.1f} wall10 {min(v[1] for v in r):.1f} enqueue {min(v[2] for v in r):.1f} graph {min(v[3] for v in r):.1f} us/call", flush=True)
