"""The segmented prefill's combine kernel alone (segments.py `_combine_kernel`, P - 1 steps for P segments):
per-launch GPU time and the entering states' error against a float64 combine, by config (BV, warps, stages,
fp32-exact or not), at P segments of one sequence, HV heads, K = V = 128.

    python bench/wip/combine_ab.py      (GPU; P=8,16,32; HV=4; VARIANTS="BV:num_warps:num_stages:exact,...")
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_prefill as BP  # noqa: E402
import torch  # noqa: E402

from gdn.common.triton.prefill import segments as S  # noqa: E402

HV, K, V = int(os.environ.get("HV", 4)), 128, 128
VARIANTS = os.environ.get("VARIANTS", "16:4:3:0,16:4:4:0,16:8:3:0,32:4:3:0,16:2:3:0,16:4:3:1")
dev = BP.DEV
for P in [int(p) for p in os.environ.get("P", "8,16,32").split(",")]:
    seg = 1024
    T = P * seg
    cu = torch.tensor([0, T], dtype=torch.int32, device=dev)
    idx = torch.tensor([1], dtype=torch.int32, device=dev)
    # transitions like the pass's: contractions near the identity (decay ~0.9 a segment), U of unit scale
    ext = torch.empty(P, HV, V + K, K, device=dev)
    q, _ = torch.linalg.qr(torch.randn(P, HV, K, K, device=dev, dtype=torch.float64))
    ext[:, :, V:] = (0.9 * q @ torch.diag_embed(torch.rand(P, HV, K, device=dev, dtype=torch.float64)) @
                     q.transpose(-1, -2)).float()
    ext[:, :, :V] = torch.randn(P, HV, V, K, device=dev)
    pool = torch.randn(2, HV, V, K, device=dev)
    x = pool[1].double()
    ref = []
    for p in range(P):
        ref.append(x)
        x = x @ ext[p, :, V:].double() + ext[p, :, :V].double()
    for var in VARIANTS.split(","):
        bv, nw, ns, exact = var.split(":")
        S.COMBINE["any"] = dict(BV=int(bv), num_warps=int(nw), num_stages=int(ns))
        xs = torch.empty(P, HV, V, K, device=dev)
        st = pool.clone()

        def call():
            st.copy_(pool)
            S.launch_combine(ext, xs, st, idx, None, cu, seg, "vk", "sm_90", exact=exact == "1")
        call()
        torch.cuda.synchronize()
        err_x = max(((xs[p].double() - ref[p]).norm() / ref[p].norm()).item() for p in range(P))
        busy, per = BP.gpu_time(call, 20)
        t = sum(v for k, v in per.items() if "combine" in k)
        print(f"P={P} {var}: combine {t * 1e3:.1f} us ({t * 1e3 / (P - 1):.2f} us a step), error of the entering "
              f"states {err_x:.1e}", flush=True)
