"""The warp-specialised state pass persistent (PERSIST: one CTA per SM walking work items) against one CTA per work
item: outputs and final states compared bitwise (the math per item is the same; only the schedule differs), then
per-kernel GPU time of the prefill, both ways, at a fixed token count split into more and shorter sequences.

    python bench/wip/persist_ab.py            (GPU; CASES=4x8192,...; ROUNDS=2)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_prefill as BP  # noqa: E402
import torch  # noqa: E402

from gdn.common import probe  # noqa: E402
from gdn.nvidia.gluon import chunk_state as GS  # noqa: E402

H, HV, K, V = 16, 32, 128, 128
ARCH = probe.device_info(BP.DEV).arch
SAVED = {k: dict(v) for k, v in GS._FUSED.items()}


def set_persist(on: bool):
    for key, cfg in SAVED.items():
        GS._FUSED[key] = dict(cfg, PERSIST=on)


def run(lengths, slots=None, init=None):
    """(o, pool) of one prefill call with the current table."""
    x = BP.make_inputs(lengths, H, HV, K, V, seed=1)
    if slots is not None:
        x["idx"] = torch.tensor(slots, dtype=torch.int32, device=BP.DEV)
    pool = x["pool"].clone()
    out = torch.full_like(x["v"], float("nan"))
    BP.ops.prefill(x["q"], x["k"], x["v"], pool, x["idx"], x["cu"], a=x["a"], b=x["b"], A_log=x["A_log"],
                   dt_bias=x["dt_bias"], scale=x["scale"], state_layout="vk", out=out, backend="triton",
                   has_initial_state=init)
    torch.cuda.synchronize()
    return out, pool


# correctness: varlen with tails, an empty sequence, a padding slot (-1), both buckets (narrow: <= 32 pairs)
CHECKS = [((70, 5, 0, 130), (2, 0, -1, 1), None), ((1000,), None, None), ((64, 128, 1, 4096, 33), None, None),
          (tuple([300] * 40), None, None), ((512,) * 64, None, "half")]
ok = True
for lengths, slots, init in CHECKS:
    hi = None
    if init == "half":
        hi = torch.arange(len(lengths), device=BP.DEV) % 2 == 0
    set_persist(False)
    o0, p0 = run(list(lengths), slots, hi)
    set_persist(True)
    o1, p1 = run(list(lengths), slots, hi)
    same = torch.equal(torch.nan_to_num(o0, nan=7.0), torch.nan_to_num(o1, nan=7.0)) and torch.equal(p0, p1)
    ok &= same
    print(f"check {len(lengths)} seqs {lengths[:5]}{'...' if len(lengths) > 5 else ''}: bitwise equal {same}",
          flush=True)
print("ALL EQUAL" if ok else "MISMATCH", flush=True)

# skewed batches (a static schedule of work items balances them worse than the hardware's CTA scheduler):
# one long prompt among short ones, and lengths drawn uniformly
MIXED = {"1x4096+63x448": [4096] + [448] * 63, "2x8192+32x512": [8192] * 2 + [512] * 32,
         "64xU64-1024": torch.randint(64, 1025, (64,), generator=torch.Generator().manual_seed(0)).tolist(),
         "16xU256-4096": torch.randint(256, 4097, (16,), generator=torch.Generator().manual_seed(1)).tolist()}
# PERSIST: False (one CTA per item) or True (at most one CTA per SM taking items from the queue)
MODES = [eval(m) for m in os.environ.get("MODES", "False,True").split(",")]
cases = os.environ.get("CASES", "1x32768,4x8192,8x4096,16x2048,32x1024,64x512,128x256,1x4096," + ",".join(MIXED))
print("| case | persist | first kernel ms | state pass ms | GPU busy ms |")
print("|---|---|---|---|---|")
for _ in range(int(os.environ.get("ROUNDS", 2))):
    for case in cases.split(","):
        lengths = MIXED[case] if case in MIXED else [int(case.split("x")[1])] * int(case.split("x")[0])
        x = BP.make_inputs(lengths, H, HV, K, V)
        for on in MODES:
            set_persist(on)
            call, _, _ = BP.gdn_candidate(x, True)
            busy, per = BP.gpu_time(call, 10)
            prep = sum(v for k, v in per.items() if "prep" in k)
            state = sum(v for k, v in per.items() if "state" in k)
            print(f"| {case} | {on} | {prep:.3f} | {state:.3f} | {busy:.3f} |", flush=True)
set_persist(False)
