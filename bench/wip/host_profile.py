"""Host-side profile of ops.prefill (raw gates) at 1x4096 on the GPU machine: enqueue time per call behind a
long sleep kernel, and cProfile of the Python path."""
import sys, os, time, cProfile, pstats
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import bench_prefill as BP
L = [int(x) for x in os.environ.get("L", "4096").split(",")]
x = BP.make_inputs(L, 16, 32, 128, 128)
call, reset, result = BP.gdn_candidate(x, True)
for _ in range(5): call()
torch.cuda.synchronize()
def enqueue(n=40):
    torch.cuda._sleep(100_000_000); t = time.perf_counter()
    for _ in range(n): call()
    d = (time.perf_counter() - t) / n * 1e6; torch.cuda.synchronize(); return d
r = sorted(enqueue() for _ in range(15)); print(f"host enqueue us/call best {r[0]:.1f} median {r[7]:.1f}")
def wall(n=10):
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): call()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e6
print("wall us/call (10 calls, best of 5):", f"{min(wall() for _ in range(5)):.1f}", " (200 calls):", f"{min(wall(200) for _ in range(3)):.1f}")
pr = cProfile.Profile()
torch.cuda._sleep(400_000_000)
pr.enable()
for _ in range(100): call()
pr.disable(); torch.cuda.synchronize()
st = pstats.Stats(pr); st.sort_stats("tottime").print_stats(30); st.sort_stats("cumtime").print_stats(45)
