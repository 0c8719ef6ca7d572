"""gdn prefill twice at the case in argv[1] (NxL), for ncu."""
import sys, os, torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import bench_prefill as BP
n, l = map(int, sys.argv[1].split("x"))
x = BP.make_inputs([l] * n, 16, 32, 128, 128)
g, reset, _ = BP.gdn_candidate(x, True)
for _ in range(2):
    g(); torch.cuda.synchronize()
print("done")
