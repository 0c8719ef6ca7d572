"""Prefill with the q, k norms in the kernels (use_qk_l2norm=True) against q, k normalised by the caller
(use_qk_l2norm=False): per-kernel GPU time, interleaved rounds in one process (the H200 side-by-side of
2026-11-24 had the latter 8% faster at 8x4096, the H100 one 2% slower).

    python bench/wip/l2_ab.py          (GPU; CASES=8x4096,...; ROUNDS=3)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_prefill as BP  # noqa: E402

H, HV, K, V = 16, 32, 128, 128
cases = os.environ.get("CASES", "8x4096,64x512,1x32768,1x4096")
print("| case | candidate | first kernel ms | state pass ms | GPU busy ms |")
print("|---|---|---|---|---|")
for _ in range(int(os.environ.get("ROUNDS", 3))):
    for case in cases.split(","):
        lengths = [int(case.split("x")[1])] * int(case.split("x")[0])
        x = BP.make_inputs(lengths, H, HV, K, V)
        for name, raw, pre in (("raw gates, l2 in", True, False), ("g beta, l2 in", False, False),
                               ("g beta, prenormed", False, True)):
            call, _, _ = BP.gdn_candidate(x, raw, pre)
            busy, per = BP.gpu_time(call, 10)
            prep = sum(v for k, v in per.items() if "prep" in k)
            state = sum(v for k, v in per.items() if "state" in k)
            print(f"| {case} | {name} | {prep:.3f} | {state:.3f} | {busy:.3f} |", flush=True)
