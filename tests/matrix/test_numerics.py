"""Numerics half of the matrix: every non-reference implementation that can run here (CPU: Triton under
the interpreter; GPU: everything for its arch) against the reference, for every kernel variant, on fresh
random inputs with poisoned unused slots. Cases are generated from the registry."""
import pytest
import torch

from conftest import HAS_GPU, record
from gdn import ops
from gdn.common import examples, matrix, probe, registry

DEVICE = torch.device("cuda") if HAS_GPU else torch.device("cpu")
ARCH = probe.device_info(DEVICE).arch
# Full Qwen3-Next head shapes on a GPU; small ones under the interpreter.
SIZE = dict(size="qwen", B=64, lengths=(300, 64, 0, 129)) if HAS_GPU else {}


def _cases():
    out = []
    for op in ops.OPS:
        for impl in registry.impls(op):
            if impl.backend == "reference":
                continue
            for opts in examples.variants(op):
                label = "-".join(str(v).replace("torch.", "") for v in opts.values())
                out.append(pytest.param(op, impl.backend, opts, id=f"{op}-{impl.backend}-{ARCH}-{label}"))
    return out


@pytest.mark.parametrize("op,backend,opts", _cases())
def test_matches_reference(op, backend, opts):
    impl = registry.get(op, backend)
    opts = {**opts, **SIZE}
    args, kwargs = examples.example(op, DEVICE, **opts)
    props = ops.capture(op, *args, **kwargs)[0]
    reasons = impl.not_supported_reasons(props, probe.device_info(DEVICE))
    if reasons:
        record(op, ARCH, f"skipped {backend}: {'; '.join(reasons)[:80]}")
        pytest.skip("; ".join(reasons))
    torch.manual_seed(hash((op, backend, str(opts))) % 2**31)
    r = matrix.check(op, backend, DEVICE, **opts)
    assert r["ok"], f"{op}/{backend} {opts}: {r['detail']} (max rel-L2 {r['err']:.2e})"
    record(op, ARCH, f"numerics ok ({backend})")
