"""Probe: is FlashInfer 0.7.2's fused Hopper prefill paced by its auxiliary warpgroup? Times its kernel as shipped
and with parts of that warpgroup's per-chunk work cut from a scratch copy of its CuTeDSL source (wrong numbers,
timing only), each version in its own process (FlashInfer's compile cache is in memory).

    python bench/wip/fi_aux_probe.py            (GPU; needs the peers bundle; CASES=8x4096,64x512  ROUNDS=2)

Versions (each substitution must match exactly once, else the probe stops):
    shipped     as installed
    no_inv      the 64x64 inverse (CollectiveInverse().run: 8x8 blocks by shuffles, then three mma.sync merges in
                shared memory) not run: A' = strict_lower(N) + garbage diagonal
    no_inv_beta also without the inverse's reload, beta scaling and second store
"""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "bench", "wip"))
SRC = "gdn_kernels/delta_rule_dsl/delta_rule_sm90.py"
INV = "        CollectiveInverse().run(sKK_inv, NamedBarrier.KK_SYNC)\n"
BETA = "        if cutlass.const_expr(self.needs_beta or self.dtype != self.inverse_dtype):\n"
VERSIONS = {
    "shipped": [],
    "no_inv": [(INV, "        pass\n")],
    "no_inv_beta": [(INV, "        pass\n"), (BETA, "        if cutlass.const_expr(False):\n")],
}


def scratch_package(name, subs):
    """A copy of the installed flashinfer package with subs applied to its sm90 prefill kernel; returns the
    directory to put first on PYTHONPATH."""
    import flashinfer
    pkg = os.path.dirname(flashinfer.__file__)
    d = tempfile.mkdtemp(prefix=f"fi_{name}_")
    shutil.copytree(pkg, os.path.join(d, "flashinfer"), symlinks=True)
    from ab_rows import substitute_once
    path = os.path.join(d, "flashinfer", SRC)
    with open(path) as f:
        text = substitute_once(f.read(), subs, f"{name} ({SRC})")
    with open(path, "w") as f:
        f.write(text)
    return d


def child(name):
    import flashinfer
    import bench_prefill as BP
    assert flashinfer.__file__.startswith(tempfile.gettempdir()) or name == "shipped", flashinfer.__file__
    for case in os.environ.get("CASES", "8x4096,64x512").split(","):
        n, t = (int(s) for s in case.split("x"))
        x = BP.make_inputs([t] * n, 16, 32, 128, 128, seed=3)
        call, _, _ = BP.flashinfer_candidate(x)
        busy, per = BP.gpu_time(call, 10)
        print(f"| {case} | {name} | {busy:.3f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(sys.argv[1])
        sys.exit(0)
    dirs = {name: (None if not subs else scratch_package(name, subs)) for name, subs in VERSIONS.items()}
    print("| case | FlashInfer version | GPU busy ms |\n|---|---|---|", flush=True)
    for _ in range(int(os.environ.get("ROUNDS", 2))):
        for name, d in dirs.items():
            env = dict(os.environ)
            if d is not None:
                env["PYTHONPATH"] = d + os.pathsep + env.get("PYTHONPATH", "")
            subprocess.run([sys.executable, os.path.abspath(__file__), name], env=env, check=True)
