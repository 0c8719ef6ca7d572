"""Where an eager prefill's host time goes (GPU machine): per-call microseconds of each stage, timed by
wrapping the stage functions (inclusive times; ~0.3 us wrapper cost each), calls enqueued behind a sleep."""
import sys, os, time, collections
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import bench_prefill as BP
from gdn import ops
from gdn.common import checks, registry, launch as L
from gdn.common.triton.prefill import prefill as TP, _common as PC
from gdn.nvidia.gluon import chunk_prep as GP, chunk_state as GS, _common as GC
L_ = [int(x) for x in os.environ.get("L", "4096").split(",")]
x = BP.make_inputs(L_, 16, 32, 128, 128)
call, reset, result = BP.gdn_candidate(x, True)
acc = collections.defaultdict(float)
def wrap(mod, name, label=None):
    f = getattr(mod, name); label = label or f"{mod.__name__.split('.')[-1]}.{name}"
    def w(*a, **k):
        t = time.perf_counter()
        try: return f(*a, **k)
        finally: acc[label] += time.perf_counter() - t
    setattr(mod, name, w)
def run(n=100):
    torch.cuda._sleep(200_000_000); t = time.perf_counter()
    for _ in range(n): call()
    d = time.perf_counter() - t; torch.cuda.synchronize(); return d / n * 1e6
for _ in range(5): call()
torch.cuda.synchronize()
base = min(run() for _ in range(7))
print(f"ops.prefill unwrapped: {base:.1f} us/call")
for mod, name in [(ops, "prefill"), (checks, "prefill"), (TP, "prefill"), (TP, "sub_op_impl"), (GS, "fused_config"),
                  (GP, "launch_prep"), (GS, "launch_state_output"), (GC, "launch"), (L, "launch_compiled"),
                  (L, "_plan_key"), (PC, "gcum_empty"), (GC, "head_matrix"), (GC, "tma_ready"), (GS, "pdl_pass"),
                  (registry, "select")]:
    wrap(mod, name)
# ops.prefill is looked up through the module in the bench; checks.prefill through checks in ops; etc.
for _ in range(3): call()
torch.cuda.synchronize(); acc.clear()
n = 0
for _ in range(7): run(); n += 100
for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
    print(f"{k:36s} {v / n * 1e6:8.1f} us/call")
# pieces in isolation
def tm(fn, n=2000):
    t = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t) / n * 1e6
T = x["q"].shape[0]
print(f"torch.empty((T,32,64) bf16): {tm(lambda: torch.empty((T, 32, 64), dtype=torch.bfloat16, device='cuda')):.2f} us")
print(f"t.data_ptr(): {tm(lambda: x['q'].data_ptr()):.3f} us; t.stride(): {tm(lambda: x['q'].stride()):.3f}; t.shape: {tm(lambda: x['q'].shape):.3f}; t.device: {tm(lambda: x['q'].device):.3f}; t.dtype: {tm(lambda: x['q'].dtype):.3f}")
print(f"torch.compiler.is_compiling(): {tm(lambda: torch.compiler.is_compiling()):.3f} us; current_stream raw: {tm(lambda: torch._C._cuda_getCurrentRawStream(0)):.3f}; current_device: {tm(lambda: torch.cuda.current_device()):.3f}")
