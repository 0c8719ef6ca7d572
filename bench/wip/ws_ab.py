"""A/B of the warp-specialised pass's variants (cfg keys set on chunk_state._FUSED, both buckets), one process:
CUDA-graph replay of the whole prefill (interleaved rounds, min), and profiler time per kernel.
Run from a package root (its gdn/ and bench/ are used). VARS="name:key=val;key=val,..."; CASES=1x32768,..."""
import sys, os
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import torch
from gdn.nvidia.gluon import chunk_state as CS
import bench_prefill as BP

base = {k: dict(v) for k, v in CS._FUSED.items()}
VARS = {}
for spec in os.environ.get("VARS", "base:").split(","):
    name, _, kv = spec.partition(":")
    VARS[name] = {a: int(b) for a, b in (x.split("=") for x in kv.split(";") if x)}
def use(name):
    for key in base:
        CS._FUSED[key] = dict(base[key], **VARS[name])

for case in os.environ.get("CASES", "1x32768,8x4096,64x512,1x4096").split(","):
    n, l = map(int, case.split("x"))
    L = [l] * n
    x = BP.make_inputs(L, 16, 32, 128, 128)
    names = list(VARS)
    alive, graphs = [], {}
    first = None
    for nm in names:
        use(nm)
        call, reset, result = BP.gdn_candidate(x, True)
        reset(); call(); torch.cuda.synchronize()
        o, st = result()
        if first is None:
            first = (o.clone(), st.clone())
        print(f"{case} {nm}: vs first o {BP.rel(o, first[0]):.2e} st {BP.rel(st, first[1]):.2e}", flush=True)
        alive.append((call, reset, result))
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2): call()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(5): call()
        graphs[nm] = g
    t = {nm: [] for nm in names}
    for _ in range(6):
        for nm in names:
            g = graphs[nm]
            g.replay(); torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record(); g.replay(); g.replay(); e1.record(); torch.cuda.synchronize()
            t[nm].append(e0.elapsed_time(e1) / 10 * 1e3)
    print(case, "us/prefill (graph):", "  ".join(f"{nm} {min(t[nm]):.1f}" for nm in names), flush=True)
    for nm, (call, _, _) in zip(names, alive):
        use(nm)
        busy, per = BP.gpu_time(call, 10)
        print(case, nm, f"busy {busy*1e3:.1f} us |", " ".join(f"{k[:26]} {v*1e3:.1f}" for k, v in per.items()), flush=True)
    del alive, graphs
    torch.cuda.empty_cache()
