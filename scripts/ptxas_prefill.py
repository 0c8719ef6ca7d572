"""Registers and spills (ptxas -v, sm_90a) of the prefill kernels for the Qwen3-Next shape, per launch plan.
No GPU needed:  python scripts/ptxas_prefill.py [--N 8 --L 4096]

Kernels are compiled with the specialisation the JIT gives the real launch (16-byte aligned pointers,
integers divisible by 16, integers equal to 1 as constants); the AOT matrix compiles without it, and its
register counts are higher (unvectorised loads and stores)."""
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
    return f"{regs[0] if regs else '?'} regs, spill {spill[0] if spill else '?'} B"


def jit_compile(l, args):
    """Compile launch `l` as the JIT would for these argument values."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource
    sig, cexp, attrs = dict(l.signature), dict(l.constexprs), {}
    for i, (name, v) in enumerate(zip(l.kernel.arg_names, args)):
        if v is None or isinstance(v, (bool, float)):
            continue
        ty, spec = native_specialize_impl(CUDABackend, v, False, True, True)
        if ty == "constexpr":
            sig[name], cexp[name] = "constexpr", v
        elif spec == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(l.kernel, sig, cexp, attrs), target=GPUTarget(*aot.TARGETS["sm_90"]),
                          options=l.options)


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
    args = []
    record = launch.launch

    def capture(kernel, grid, *a, **kw):
        args.append(a)
        return record(kernel, grid, *a, **kw)

    launch.launch = capture
    with launch.recording("sm_90") as ls:
        P.prefill(q, k, v, pool, idx, cu, out, None, None, a_, b_, m(HV, dt=torch.float32), m(HV, dt=torch.float32),
                  None, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    launch.launch = record
    for l, la in zip(ls, args):
        c = jit_compile(l, la)
        opts = {k: v for k, v in l.options.items()}
        print(f"  {l.kernel.fn.__name__:24s} {opts} {usage(c.asm['ptx'])}, smem {c.metadata.shared} B")


if __name__ == "__main__":
    main()
