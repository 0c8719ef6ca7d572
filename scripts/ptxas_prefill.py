"""Registers and spills (ptxas -v, sm_90a) of the prefill kernels for the Qwen3-Next shape, per launch plan.
No GPU needed:  python scripts/ptxas_prefill.py [--N 8 --L 4096]"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gdn.common import aot, launch  # noqa: E402
from gdn.common.triton.prefill import prefill as P  # noqa: E402
import triton  # noqa: E402

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def usage(ptx: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    r = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    regs = re.findall(r"Used (\d+) registers", r.stderr)
    spill = re.findall(r"(\d+) bytes spill stores", r.stderr)
    smem = re.findall(r"(\d+) bytes smem", r.stderr)
    return f"{regs[0] if regs else '?'} regs, spill {spill[0] if spill else '?'} B, smem {smem[0] if smem else '?'} B"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--N", type=int, default=8)
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--state", action="append", default=[], help="BV,num_warps,num_stages[,fuse] (repeatable)")
    a = ap.parse_args()
    from gdn.common.triton.prefill import chunk_state as CS
    for spec in a.state or [None]:
        if spec:
            bv, nw, ns, *fz = [int(x) for x in spec.split(",")]
            for key in ("narrow", "wide", ("nvidia", "narrow"), ("nvidia", "wide")):
                CS._CONFIGS[key] = dict(BV=bv, num_warps=nw, num_stages=ns)
            if fz:
                for key in ("narrow", "wide"):
                    P._FUSE[key] = bool(fz[0])
            print("state plan", spec)
        run(a)


def run(a):
    H, HV, K, V, T, N = 16, 32, 128, 128, a.N * a.L, a.N
    m = lambda *s, dt=torch.bfloat16: torch.empty(s, dtype=dt, device="meta")
    q, k, v = m(T, H, K), m(T, H, K), m(T, HV, V)
    pool = m(N, HV, V, K, dt=torch.float32)
    idx = m(N, dt=torch.int32)
    cu = m(N + 1, dt=torch.int32)
    out = m(T, HV, V)
    a_, b_ = m(T, HV), m(T, HV)
    with launch.recording("sm_90") as ls:
        P.prefill(q, k, v, pool, idx, cu, out, None, None, a_, b_, m(HV, dt=torch.float32), m(HV, dt=torch.float32),
                  None, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    for l in ls:
        c = aot._compile(l, "sm_90")
        opts = {k: v for k, v in l.options.items()}
        print(f"  {l.kernel.fn.__name__:24s} {opts} {usage(c.asm['ptx'])}")


if __name__ == "__main__":
    main()
