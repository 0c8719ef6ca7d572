"""Compile registered GPU kernels for an arch without a GPU (the compile half of the matrix).

Triton and Gluon: the impl's launcher runs on `meta` example inputs under `launch.recording(arch)`; every
recorded launch is compiled with `triton.compile(ASTSource(...), target=GPUTarget(...))`, i.e. exactly the
kernels and configs the launcher would launch on that arch. CuTeDSL impls bring their own `Impl.aot`
(`cute.compile` under CUTE_DSL_ARCH).

Run in a process without TRITON_INTERPRET (the interpreter replaces @triton.jit at decoration time):
    python -m gdn.common.aot [--arch sm_90 ...] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import torch

from gdn.common import examples, launch, probe, registry

TARGETS = {
    "sm_80": ("cuda", 80, 32), "sm_90": ("cuda", 90, 32), "sm_100": ("cuda", 100, 32),
    "gfx942": ("hip", "gfx942", 64), "gfx950": ("hip", "gfx950", 64),
}
GPU_ARCHS = tuple(TARGETS)


def kernel_level_args(op: str, opts: dict):
    """(props, args, kwargs) the public op would hand a launcher, for meta example inputs."""
    from gdn import ops
    if op in examples.KERNEL_EXAMPLES:
        fn, _ = examples.KERNEL_EXAMPLES[op]
        args, kwargs = fn("meta", **opts)
        return None, args, kwargs
    args, kwargs = examples.example(op, "meta", **opts)
    return ops.capture(op, *args, **kwargs)


def op_variants(op: str) -> list[dict]:
    if op in examples.KERNEL_EXAMPLES:
        return examples.KERNEL_EXAMPLES[op][1]
    return examples.variants(op)


def _compile(l: launch.Launch, arch: str):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    src = ASTSource(l.kernel, l.signature, l.constexprs, l.attrs)
    return triton.compile(src, target=GPUTarget(*TARGETS[arch]), options=l.options)


def compile_impl(impl: registry.Impl, arch: str) -> list[str]:
    """Compile every kernel `impl` launches on `arch` (all variants); returns 'kernel[variant]' names.
    Variants the impl does not support (its own reasons) are skipped."""
    if impl.aot is not None:
        return impl.aot(arch)
    if impl.backend == "reference":
        return []
    info = probe.DeviceInfo("cuda", probe.vendor_of(arch), arch, arch, 1, 0)
    built = []
    for opts in op_variants(impl.op):
        props, args, kwargs = kernel_level_args(impl.op, opts)
        if props is not None:
            props = {**props, "device": torch.device("meta")}
            reasons = [r for r in impl.not_supported_reasons(props, info) if "TRITON_INTERPRET" not in r]
            if reasons:
                continue
        with launch.recording(arch) as launches:
            impl.fn(*args, **kwargs)
        if not launches:
            raise RuntimeError(f"{impl.op}/{impl.backend}: launcher recorded no launch for {opts}")
        for l in launches:
            _compile(l, arch)
            built.append(f"{l.kernel.fn.__name__}[{','.join(f'{k}={_short(v)}' for k, v in opts.items())}]")
    return built


def _short(v) -> str:
    return str(v).replace("torch.", "")


def run_matrix(archs=GPU_ARCHS, ops_filter=None) -> list[dict]:
    from gdn import ops
    ops.load_backends()
    rows = []
    for op in registry.ops():
        if ops_filter and op not in ops_filter:
            continue
        for impl in registry.impls(op):
            if impl.backend == "reference":
                continue
            for arch in archs:
                if not impl.serves(arch):
                    continue
                t0 = time.time()
                try:
                    built = compile_impl(impl, arch)
                    rows.append(dict(op=op, backend=impl.backend, arch=arch, status="compiled",
                                     kernels=len(built), detail=", ".join(sorted(set(built)))[:400],
                                     seconds=round(time.time() - t0, 2)))
                except Exception as e:  # report every failure, keep going
                    rows.append(dict(op=op, backend=impl.backend, arch=arch, status="FAILED", kernels=0,
                                     detail=f"{type(e).__name__}: {e}"[:2000] + "\n" + traceback.format_exc()[-1500:],
                                     seconds=round(time.time() - t0, 2)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", choices=GPU_ARCHS, help="arch(s) to compile for (default: all)")
    p.add_argument("--op", action="append", help="op(s) to compile (default: all)")
    p.add_argument("--json", help="write the rows as JSON to this path")
    a = p.parse_args(argv)
    if probe.interpreter_on():
        print("gdn.aot: unset TRITON_INTERPRET (the interpreter replaces @triton.jit kernels)", file=sys.stderr)
        return 2
    rows = run_matrix(tuple(a.arch or GPU_ARCHS), a.op)
    for r in rows:
        print(f"{r['op']:<22} {r['backend']:<11} {r['arch']:<7} {r['status']:<9} {r['kernels']:>3} kernels "
              f"{r['seconds']:>6}s  {r['detail'] if r['status'] != 'compiled' else ''}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if any(r["status"] != "compiled" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
