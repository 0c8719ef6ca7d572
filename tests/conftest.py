"""Test set-up. On a machine without a GPU the Triton kernels run under the interpreter, which must be
switched on before any kernel module is imported; on a GPU host they run for real and the `gpu` tests run."""
import os

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from gdn import ops  # noqa: E402
from gdn.common import probe  # noqa: E402

ops.load_backends()

# op x arch -> list of "numerics ok (backend)" / "compiled (backend)" / "skipped: reason", filled by the
# matrix tests and written to tests/matrix/last_run.md at the end of the session.
MATRIX: dict = {}


def record(op: str, arch: str, text: str) -> None:
    MATRIX.setdefault((op, arch), []).append(text)


# Modules that compile Gluon kernels in this process. Without a GPU they run first: Triton 3.6's interpreter
# leaves triton.language patched after an interpreted kernel has called a @jit helper (tl.sum's combine
# function, ...), and a Gluon kernel compiled afterwards in the same process fails to build its IR
# ("'block_argument' object has no attribute 'get_element_ty'" on `ptr + scalar`, "_semantic argument must
# be provided" in gl.reduce). A warm kernel cache hid this; a clean machine's CI does not have one.
COMPILE_FIRST = ("tests/matrix/test_compile.py", "tests/nvidia/test_gluon_compile.py")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    items.sort(key=lambda item: not item.nodeid.startswith(COMPILE_FIRST))       # stable: order kept otherwise
    skip = pytest.mark.skip(reason="needs a GPU (run `make test-gpu` on the GPU host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_env():
    """gdn reads its environment variables once (probe.env); tests change them with monkeypatch, so each
    test starts and ends with a re-read (a test that changes one mid-way calls probe.reload_env())."""
    probe.reload_env()
    yield
    probe.reload_env()


@pytest.fixture
def device():
    return torch.device("cuda") if HAS_GPU else torch.device("cpu")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not MATRIX:
        return
    from gdn.common.probe import KNOWN_ARCHS
    arch_cols = [a for a in KNOWN_ARCHS if any(k[1] == a for k in MATRIX)]
    op_rows = sorted({k[0] for k in MATRIX})
    lines = ["# Correctness matrix, last run", "",
             f"torch {torch.__version__}, device {'cuda' if HAS_GPU else 'cpu (Triton interpreter)'}", "",
             "| op | " + " | ".join(arch_cols) + " |", "|---|" + "---|" * len(arch_cols)]
    for op in op_rows:
        cells = ["<br>".join(sorted(set(MATRIX.get((op, a), [])))) for a in arch_cols]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    path = os.path.join(os.path.dirname(__file__), "matrix", "last_run.md")
    with open(path, "w") as f:
        f.write(text)
    terminalreporter.write_sep("=", "correctness matrix (tests/matrix/last_run.md)")
    terminalreporter.write(text)
