"""The segmented prefill (gdn/common/triton/prefill/segments.py) against the unsegmented one at tensor-parallel
head counts (Qwen3-Next: H = 16 / TP, HV = 32 / TP, K = V = 128): outputs and final states of each segment length
against the unsegmented path and a float64 recurrence, then prefill's GPU busy time and per-kernel times
(profiler), unsegmented and at each segment length.

    python bench/wip/segments_ab.py        (GPU; TPS=2,4,8; CASES=1x32768,1x8192,1x4096,2x16384;
                                            SEGS=0,512,1024,2048,4096; ROUNDS=1; CHECK=1)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_prefill as BP  # noqa: E402
import torch  # noqa: E402

from gdn.common.triton.prefill import segments as S  # noqa: E402

SAVED = dict(S._SEGMENTS)


def force(seg: int):
    """Every batch cut into segments of `seg` tokens (0: none)."""
    S._SEGMENTS.clear()
    if seg:
        S._SEGMENTS["any"] = dict(max_pairs=1 << 30, min_len=0, pairs=1 << 30, min_seg=seg)


def run(x, seg):
    force(seg)
    pool = x["pool"].clone()
    out = torch.full_like(x["v"], float("nan"))
    BP.ops.prefill(x["q"], x["k"], x["v"], pool, x["idx"], x["cu"], a=x["a"], b=x["b"], A_log=x["A_log"],
                   dt_bias=x["dt_bias"], scale=x["scale"], state_layout="vk", out=out, backend="triton")
    torch.cuda.synchronize()
    return out, pool


def rel(a, b):
    a, b = a.double(), b.double()
    return float("inf") if not torch.isfinite(a).all() else ((a - b).norm() / b.norm()).item()


TPS = [int(t) for t in os.environ.get("TPS", "2,4,8").split(",")]
CASES = os.environ.get("CASES", "1x32768,1x8192,1x4096,2x16384").split(",")
SEGS = [int(s) for s in os.environ.get("SEGS", "0,512,1024,2048,4096").split(",")]
if os.environ.get("CHECK", "1") == "1":
    for tp in TPS:
        H, HV = 16 // tp, 32 // tp
        for lengths in ([4096], [70, 1000, 0, 2100]):
            x = BP.make_inputs(lengths, H, HV, 128, 128, seed=2)
            ref_o, ref_s = BP.recurrence64(x, lengths)
            o0, p0 = run(x, 0)
            for seg in SEGS[1:] + [64, 128]:
                o1, p1 = run(x, seg)
                st = p1[x["idx"].long()].transpose(-1, -2)
                print(f"check TP={tp} {lengths} seg={seg}: o vs unsegmented {rel(o1, o0):.2e}, vs float64 "
                      f"{rel(o1, ref_o):.2e} (unsegmented {rel(o0, ref_o):.2e}); state vs float64 "
                      f"{rel(st, ref_s):.2e} (unsegmented {rel(p0[x['idx'].long()].transpose(-1, -2), ref_s):.2e})",
                      flush=True)
print("| TP | case | segment tokens | GPU busy ms | per kernel ms |")
print("|---|---|---|---|---|")
for _ in range(int(os.environ.get("ROUNDS", 1))):
    for tp in TPS:
        H, HV = 16 // tp, 32 // tp
        for case in CASES:
            n, t = case.split("x")
            x = BP.make_inputs([int(t)] * int(n), H, HV, 128, 128)
            for seg in SEGS:
                force(seg)
                call, _, _ = BP.gdn_candidate(x, True)
                busy, per = BP.gpu_time(call, 10)
                kern = ", ".join(f"{k[:28]} {v:.3f}" for k, v in per.items())
                print(f"| {tp} | {case} | {seg} | {busy:.3f} | {kern} |", flush=True)
S._SEGMENTS.clear()
S._SEGMENTS.update(SAVED)
