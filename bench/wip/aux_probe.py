"""Probe: the head pass with the solve on chip. aux_probe.patch, applied to the head pass's kernel module
(gdn/nvidia/gluon/_chunk_state_head_kernels.py) in a temporary directory, makes its scores warpgroup also form K K^T
(beside q k^T), N and A' = (I + N)^-1 diag(beta) with prefill's first-kernel solve (_chunk_prep_kernels.py: the 16x16
blocks by forward substitution, then the 32 and 64 merges), into a shared A' ring the math warpgroups read instead of
A' by TMA (the loader brings a beta tile instead). prefill's first kernel still runs (g_cum and the key norms; its A'
is unused), so the head pass's time is what the on-chip solve costs it; prefill takes precomputed g, beta here.

    python bench/wip/aux_probe.py compile      (CPU: ptxas -v of the probe kernel)
    python bench/wip/aux_probe.py              (GPU: outputs of both against float64, then timings;
                                                CASES=8x4096,...  CHECK=0  ROUNDS=2)
    MREGS=184 SREGS=120   setmaxnreg of the math and scores warpgroups (default 192 / 104)
    AUXMODE=1             A' = N (K K^T and N only, no solve; wrong numbers)   AUXMODE=3: the 16x16 blocks only
    AUXMODE=4             A' = K K^T (no N)   AUXMODE=5: A' = P' (no K K^T: the A' tile's store alone)
    PRENORM=1             q, k normalised by the caller, use_qk_l2norm=False (FlashInfer's inputs and work)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ["GDN_CALL_PLANS"] = "0"    # (a call plan would replay the first launch, bypassing the patched launcher)
import torch  # noqa: E402

from gdn.nvidia.gluon import _common as C  # noqa: E402
from gdn.nvidia.gluon import chunk_state as GS  # noqa: E402
from gdn.common.triton.prefill import chunk_state as TS  # noqa: E402

SREGS = int(os.environ.get("SREGS", 104))
MREGS = int(os.environ.get("MREGS", 192))
AUXMODE = int(os.environ.get("AUXMODE", 0))   # (see the docstring)
PRENORM = os.environ.get("PRENORM", "0") == "1"
PROBE = {"beta": None}
_orig = GS._launch_head


def _launch_aux(k, w, u, q, g_cum, state, state_indices, cu_seqlens, has_initial_state, out, scale, use_qk_l2norm,
                state_layout, cfg, rk, rq, pdl):
    if PROBE["beta"] is None:
        return _orig(k, w, u, q, g_cum, state, state_indices, cu_seqlens, has_initial_state, out, scale,
                     use_qk_l2norm, state_layout, cfg, rk, rq, pdl)
    from _head_aux_kernels import chunk_state_output_headaux_sm90 as kern
    H, K = k.shape[1:]
    HV, V = u.shape[1], u.shape[2]
    o_desc = (C.head_matrix(out, C.BT, V // 2) if out.dtype == k.dtype and C.tma_ok(out) and out.shape[0] > 0
              else None)
    C.launch(kern, (max(cu_seqlens.shape[0] - 1, 0) * HV,),
             C.head_matrix(k, C.BT), C.head_matrix(q, C.BT), C.head_matrix(u, C.BT, V // 2), C.head_matrix(w, C.BT),
             GS.gcum_desc(g_cum), None if rk is None else GS.gcum_desc(rk), None if rq is None else GS.gcum_desc(rq),
             state, state_indices, cu_seqlens, has_initial_state, out, o_desc, HV, HV // H, float(scale),
             *TS.pool_strides(state, state_layout), *out.stride()[:2], GS.gcum_desc(PROBE["beta"]), V=V,
             L2NORM=bool(use_qk_l2norm), STAGES=cfg["STAGES"], RING=cfg["RING"], PDL=pdl, SREGS=SREGS, MREGS=MREGS,
             AUXMODE=AUXMODE, num_warps=4, maxnreg=128, pdl=pdl)


GS._launch_head = _launch_aux


def _build_module():
    """The patched kernel module in a temporary directory on sys.path (fails loudly where the patch no longer
    applies to the head kernel)."""
    import shutil
    import subprocess
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(here, "..", "..", "gdn", "nvidia", "gluon", "_chunk_state_head_kernels.py")
    d = tempfile.mkdtemp(prefix="gdn_aux_probe_")
    shutil.copy(src, os.path.join(d, "_chunk_state_head_kernels.py"))
    subprocess.run(["patch", "-s", "-d", d, "-p1", "-o", "_head_aux_kernels.py", "_chunk_state_head_kernels.py",
                    os.path.join(here, "aux_probe.patch")], check=True)
    sys.path.insert(0, d)


_build_module()

if len(sys.argv) > 1 and sys.argv[1] == "compile":
    import re
    from gdn.common import launch as L
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                    "tests", "nvidia"))
    from test_gluon_compile import _ptxas_info
    # the head pass's launch (Qwen3-Next heads, the norms from the first kernel) through the probe kernel
    T = 256
    with L.recording("sm_90"), C.recording() as rec:
        k = torch.empty(T, 16, 128, dtype=torch.bfloat16, device="meta")
        PROBE["beta"] = torch.empty(T, 32, dtype=torch.float32, device="meta")
        w = torch.empty(T, 32, 64, dtype=torch.bfloat16, device="meta")
        u = torch.empty(T, 32, 128, dtype=torch.bfloat16, device="meta")
        g = torch.empty(T, 32, dtype=torch.float32, device="meta")
        rk = torch.empty(T, 16, dtype=torch.float32, device="meta")
        pool = torch.empty(4, 32, 128, 128, dtype=torch.float32, device="meta")
        idx = torch.empty(4, dtype=torch.int32, device="meta")
        cu = torch.empty(5, dtype=torch.int32, device="meta")
        out = torch.empty_like(u)
        cfg = GS._FUSED[("sm_90", "head")]
        _launch_aux(k, w, u, k, g, pool, idx, cu, None, out, 0.1, True, "vk", cfg, rk, None, True)
    kern = C.compile_launch(rec[0], "sm_90")
    info = _ptxas_info(kern)
    print(info[-600:])
    ptx = kern.asm["ptx"]
    print("setmaxnreg", re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32 \t(\d+)", ptx))
    print("smem", kern.metadata.shared)
    sys.exit(0)

import bench_prefill as BP  # noqa: E402

H, HV, K, V = 16, 32, 128, 128


def prefill(x, aux):
    pool = x["pool"].clone()
    out = torch.full_like(x["v"], float("nan"))
    PROBE["beta"] = x["beta32"] if aux else None
    BP.ops.prefill(x["qp"], x["kp"], x["v"], pool, x["idx"], x["cu"], g=x["g"], beta=x["beta"], scale=x["scale"],
                   state_layout="vk", out=out, backend="triton", use_qk_l2norm=not PRENORM)
    torch.cuda.synchronize()
    return out, pool.transpose(-1, -2)


def prep(lengths):
    x = BP.make_inputs(lengths, H, HV, K, V, seed=3)
    x["beta32"] = x["beta"].float().contiguous()
    x["qp"], x["kp"] = (BP.l2normed(x["q"]), BP.l2normed(x["k"])) if PRENORM else (x["q"], x["k"])
    return x


if os.environ.get("CHECK", "1") == "1":
    for lengths in ((4096,), (1000, 64, 1, 777, 130), (512,) * 70):
        x = prep(list(lengths))
        o_ref, s_ref = BP.recurrence64(x, list(lengths))
        res = []
        for aux in (False, True):
            o, st = prefill(x, aux)
            res.append((o, st))
            print(f"check {len(lengths)} seqs aux={aux}: o {BP.rel(o, o_ref):.3e} state {BP.rel(st, s_ref):.3e}",
                  flush=True)
        print("  max |o diff|", (res[0][0].float() - res[1][0].float()).abs().max().item(),
              "state", (res[0][1] - res[1][1]).abs().max().item(), flush=True)

cases = os.environ.get("CASES", "8x4096,64x512,16x2048,1x32768")
print("| case | aux | first kernel ms | state pass ms | GPU busy ms |")
print("|---|---|---|---|---|")
for _ in range(int(os.environ.get("ROUNDS", 2))):
    for case in cases.split(","):
        lengths = [int(case.split("x")[1])] * int(case.split("x")[0])
        x = prep(lengths)
        pool = x["pool"].clone()
        out = torch.empty_like(x["v"])
        for aux in (False, True):
            def call():
                PROBE["beta"] = x["beta32"] if aux else None
                BP.ops.prefill(x["qp"], x["kp"], x["v"], pool, x["idx"], x["cu"], g=x["g"], beta=x["beta"],
                               scale=x["scale"], state_layout="vk", out=out, backend="triton",
                               use_qk_l2norm=not PRENORM)
            busy, per = BP.gpu_time(call, 10)
            prep_ms = sum(v for k, v in per.items() if "prep" in k)
            state = sum(v for k, v in per.items() if "state" in k)
            print(f"| {case} | {aux} | {prep_ms:.3f} | {state:.3f} | {busy:.3f} |", sorted(per), flush=True)
