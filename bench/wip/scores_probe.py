"""Where the head pass's scores warpgroup spends its chunk (it sets the pass's pace on an H200): timing probes that
each cut one piece of its work (wrong numbers), written from _chunk_state_head_kernels.py by text substitution as
bench/wip/_var_<name>.py and timed against the module by module_ab.py (EXTRA) in one process.

    python bench/wip/scores_probe.py            (GPU; CASES, ROUNDS as module_ab.py)

The rows "old" and "new" are module_ab's (git HEAD's module and the working tree's; on the GPU machine, which has no
.git, copy the module to bench/wip/_old_module.py first).
H200, 2026-11-24: bench/results/prefill_h200_2026-11-24_probes.md.
"""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "bench", "wip"))
from ab_rows import scratch_module  # noqa: E402

SRC = os.path.join(ROOT, "gdn", "nvidia", "gluon", "_chunk_state_head_kernels.py")
PROBES = {
    # the query norms from q's tile (ldmatrix, conversions, FMAs, two shuffles)
    "no_rq": [("rq = gl.convert_layout(inv_norm(q_b, L2NORM, rows_k), row)",
               "rq = gl.full([BT], 1.0, gl.float32, row)")],
    # the column exponent's row -> column layout conversion (a shared round trip and two barriers)
    "no_col": [("e_col = gl.convert_layout(log2_ftz(rk) - lg, col)", "e_col = gl.zeros([BT], gl.float32, col)")],
    # the decays' ex2 over the [64, 64] tile
    "no_ex2": [("p = gl.where(tri, s * exp2_ftz(gl.where(tri, e_row[:, None] + e_col[None, :], 0.0)), 0.0)",
                "p = gl.where(tri, s, 0.0)")],
    # the q k^T product itself (scores from zeros)
    "no_qk": [("s = warpgroup_mma(q_b, kt, gl.zeros([BT, BT], gl.float32, mma), use_acc=False, is_async=True)",
               "s = gl.zeros([BT, BT], gl.float32, mma)"),
              ("s, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(s, q_b, kt))", "")],
    # the per-token vectors' four stores (their exps and g_last then dead; the ring slot's wait stays)
    "no_vec": [("""        vec_s.index(NVEC * j).store(a)
        vec_s.index(NVEC * j + 1).store(rkf)
        vec_s.index(NVEC * j + 2).store(cfo)
        vec_s.index(NVEC * j + 3).store(eg)
""", "")],
}
os.environ["EXTRA"] = ",".join(f"{name}={scratch_module(SRC, name, subs)}" for name, subs in PROBES.items())
sys.argv = [os.path.join(ROOT, "bench", "wip", "module_ab.py")]
runpy.run_path(sys.argv[0], run_name="__main__")
