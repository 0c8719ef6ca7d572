"""Per-kernel GPU time of gdn's prefill at a fixed token count split into more and shorter sequences, to see the
fixed cost per (sequence, v-head) CTA of the state pass (a CTA of the warp-specialised pass takes a whole SM, so
its prologue and drain are not overlapped by another CTA's chunks).

    python bench/wip/pass_fixed_cost.py            (GPU; TOKENS=32768 by default)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_prefill as BP  # noqa: E402

TOKENS = int(os.environ.get("TOKENS", 32768))
H, HV, K, V = 16, 32, 128, 128

print(f"# prefill per-kernel GPU time at {TOKENS} tokens, H={H} HV={HV} K={K} V={V}, raw gates (ms)")
print("| N x L | CTAs of the pass (BV=64) | chunks per CTA | first kernel | state pass | pass per CTA-wave (us) |")
print("|---|---|---|---|---|---|")
for n in (4, 8, 16, 32, 64, 128):
    L = TOKENS // n
    x = BP.make_inputs([L] * n, H, HV, K, V)
    call, _, _ = BP.gdn_candidate(x, True)
    _, per = BP.gpu_time(call, 10)
    prep = sum(v for k, v in per.items() if "prep" in k)
    state = sum(v for k, v in per.items() if "state" in k)
    ctas = n * HV * (V // 64)
    sms = BP.torch.cuda.get_device_properties(0).multi_processor_count
    waves = -(-ctas // sms)
    print(f"| {n}x{L} | {ctas} | {L // 64} | {prep:.3f} | {state:.3f} | {state / waves * 1e3:.1f} |", flush=True)
