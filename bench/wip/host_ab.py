"""Call plans on / off (GDN_CALL_PLANS): eager prefill wall time per call (bench_prefill's method: 10 back-to-back
calls between synchronisations, best of 5; and 200 calls), host enqueue time behind a sleep, and the GPU's busy
time and span over 20 back-to-back calls (profiler), interleaved rounds. GPU machine."""
import sys, os, time
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import bench_prefill as BP
from gdn.common import probe
cases = [[int(t)] * int(n) for n, t in (c.split("x") for c in os.environ.get("CASES", "1x4096,3x1000,1x32768").split(","))]
def wall(call, n):
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): call()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e6
def enqueue(call, n=40):
    torch.cuda._sleep(100_000_000); t = time.perf_counter()
    for _ in range(n): call()
    d = (time.perf_counter() - t) / n * 1e6; torch.cuda.synchronize(); return d
def gpu(call, n=20):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n): call()
        torch.cuda.synchronize()
    sp = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, cur = 0, None
    for s, e in sp:
        if cur is None or s > cur[1]:
            if cur: busy += cur[1] - cur[0]
            cur = [s, e]
        else: cur[1] = max(cur[1], e)
    busy += cur[1] - cur[0]
    return busy / n, (sp[-1][1] - sp[0][0]) / n
for L in cases:
    x = BP.make_inputs(L, 16, 32, 128, 128)
    call = BP.gdn_candidate(x, True)[0]
    res = {"on": [], "off": []}
    for rnd in range(3):
        for mode in ("on", "off"):
            with probe.env_switched("GDN_CALL_PLANS", "1" if mode == "on" else "0"):
                for _ in range(3): call()
                w10 = min(wall(call, 10) for _ in range(5)); w200 = min(wall(call, 200) for _ in range(2))
                e = sorted(enqueue(call) for _ in range(9))
                b, s = gpu(call) if os.environ.get("GPU_SPAN") == "1" else (float("nan"), float("nan"))
                res[mode].append((w10, w200, e[0], e[4], b, s))
    for mode, r in res.items():
        best = [min(v[i] for v in r) for i in range(6)]
        print(f"{len(L)}x{L[0]} plans {mode}: wall10 {best[0]:.1f} wall200 {best[1]:.1f} enqueue best {best[2]:.1f} median {min(v[3] for v in r):.1f} | gpu busy {best[4]:.1f} span {best[5]:.1f} us/call", flush=True)
