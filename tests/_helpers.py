"""Comparison helpers shared by the kernel tests (tests/ is on sys.path through tests/conftest.py)."""
import importlib.util
import pathlib

import torch


def load_bench(name: str):
    """bench/bench_<name>.py as a module (bench/ is not a package), for tests of its pure helpers."""
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / f"bench_{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}_for_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rel(x, ref):
    """Relative L2 error of x against ref (float64); fails on any non-finite value in x."""
    x, ref = x.double(), ref.double()
    assert torch.isfinite(x).all(), "non-finite values"
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def bits_equal(x, y):
    """Bit-identical (NaN payloads included): for pool slots a kernel must not touch."""
    return torch.equal(x.contiguous().reshape(-1).view(torch.uint8), y.contiguous().reshape(-1).view(torch.uint8))


def unused_rows(t, used):
    """The rows of t (dim 0) not listed in `used`."""
    m = torch.ones(t.shape[0], dtype=torch.bool, device=t.device)
    m[used] = False
    return t[m]


def cutedsl_gpu_marks():
    """pytestmark of the CuTeDSL GPU test modules: gpu, and skipped without a CUDA GPU, without CuTeDSL, or
    under the Triton interpreter (they run compiled kernels)."""
    import os

    import pytest

    from gdn.common import probe
    return [
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        pytest.mark.skipif(not probe.cutedsl_available(), reason="nvidia-cutlass-dsl (CuTeDSL) is not importable"),
        pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                           reason="GPU tests run compiled kernels (unset TRITON_INTERPRET)"),
    ]
