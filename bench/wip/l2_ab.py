"""Prefill with the q, k norms in the kernels (use_qk_l2norm=True) against q, k normalised by the caller
(use_qk_l2norm=False): per-kernel GPU time, interleaved rounds in one process (the H200 side-by-side of
2026-11-24 had the latter 8% faster at 8x4096, the H100 one 2% slower).

    python bench/wip/l2_ab.py          (GPU; CASES=8x4096,...; ROUNDS=3)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_prefill as BP  # noqa: E402

from ab_rows import print_rows  # noqa: E402

print_rows(os.environ.get("CASES", "8x4096,64x512,1x32768,1x4096"),
           [(name, lambda x, raw=raw, pre=pre: BP.gdn_candidate(x, raw, pre)[0])
            for name, raw, pre in (("raw gates, l2 in", True, False), ("g beta, l2 in", False, False),
                                   ("g beta, prenormed", False, True))],
           int(os.environ.get("ROUNDS", 3)))
