"""The head pass's query norms from its q tiles (scores warpgroup, as prefill runs it) against from prefill's first
kernel (Q Q^T's diagonal there, the first kernel then reads q; the pass takes an [64, 4] tile like the key norms),
and q, k normalised by the caller (no norms at all: the floor). Outputs of the first two compared, then per-kernel GPU
time, interleaved rounds in one process.

    python bench/wip/headnorm_ab.py          (GPU; CASES=8x4096,...; ROUNDS=3)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["GDN_CALL_PLANS"] = "0"

import bench_prefill as BP  # noqa: E402
from ab_rows import outputs, print_rows  # noqa: E402

from gdn.common.triton.prefill import prefill as PF  # noqa: E402

H, HV, K, V = 16, 32, 128, 128
_orig = PF._gluon_buffers
MODE = {"q_from_first": False}


def _bufs(T, H, HV, K, V, wdt, dev, a_path, ws_norms, persist=False, q_norms=True):
    return _orig(T, H, HV, K, V, wdt, dev, a_path, ws_norms, persist, MODE["q_from_first"])


PF._gluon_buffers = _bufs

x = BP.make_inputs([300, 64, 1, 777], H, HV, K, V, seed=3)
outs = outputs(x, {on: (lambda on=on: MODE.update(q_from_first=on)) for on in (False, True)})
o_ref, s_ref = BP.recurrence64(x, [300, 64, 1, 777])
for on in (False, True):
    print(f"q norms from {'first kernel' if on else 'q tiles'}: o {BP.rel(outs[on][0], o_ref):.3e} "
          f"st {BP.rel(outs[on][1], s_ref):.3e}", flush=True)


def variant(on, pre):
    def make(x):
        MODE["q_from_first"] = on
        return BP.gdn_candidate(x, not pre, pre)[0]
    return make


print_rows(os.environ.get("CASES", "8x4096,64x512,16x2048"),
           [("rq from q tiles", variant(False, False)), ("rq from first kernel", variant(True, False)),
            ("prenormed", variant(False, True))], int(os.environ.get("ROUNDS", 3)))
