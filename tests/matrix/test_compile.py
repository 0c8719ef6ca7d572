"""Compile half of the matrix: every registered GPU kernel compiled for every arch it declares, without a
GPU (Triton/Gluon through triton.compile with a GPUTarget; CuTeDSL through cute.compile). The compile runs
in a child process without TRITON_INTERPRET (the interpreter replaces @triton.jit at decoration time)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import record
from gdn.common import aot, registry

CASES = [pytest.param(op, impl.backend, arch, id=f"{op}-{impl.backend}-{arch}")
         for op in registry.ops() for impl in registry.impls(op) if impl.backend != "reference"
         for arch in aot.GPU_ARCHS if impl.serves(arch)]


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "gdn.common.aot", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=3000)
    if not out.exists():
        pytest.fail(f"AOT matrix did not run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {(r["op"], r["backend"], r["arch"]): r for r in json.loads(out.read_text())}


def test_every_gpu_impl_is_in_the_matrix():
    assert CASES, "no GPU implementation registered: the compile matrix would be empty"


@pytest.mark.parametrize("op,backend,arch", CASES)
def test_compiles(compiled, op, backend, arch):
    row = compiled.get((op, backend, arch))
    assert row is not None, f"{op}/{backend} was not compiled for {arch}"
    assert row["status"] == "compiled", row["detail"]
    assert row["kernels"] > 0, f"{op}/{backend} on {arch}: no kernel was compiled (no variant supported?)"
    record(op, arch, f"compiled ({backend})")
