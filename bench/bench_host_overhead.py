"""Host (CPU) time per eager call of each public op, split into the wrapper (validation, dispatch, output
allocation: gdn/ops.py) and the launcher (the chosen Impl's fn).

    python bench/bench_host_overhead.py [--B 1] [--lengths 4096] [--noop] [op ...]

Qwen3-Next shapes (examples.example(size="qwen")). `call` times gdn.ops.<op>(...) in a loop without
synchronising: at small B the GPU finishes each kernel before the host issues the next, so this is host
time. `launcher` times the launcher alone with the arguments the wrapper would pass (ops.capture);
`wrapper` is the difference. --noop replaces every launcher by a no-op (wrapper cost only, also on CPU).
Pools are updated in place by every call; the values do not matter here.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gdn import ops  # noqa: E402
from gdn.common import examples, registry  # noqa: E402


def per_call_us(fn, n: int, device) -> float:
    """Best of 5 batches of n calls, in us per call."""
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("ops", nargs="*", default=list(ops.OPS))
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--lengths", default=None,
                   help="prefill / conv1d sequence lengths, comma separated (default: B of 64 tokens)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--noop", action="store_true", help="no-op launchers: the wrapper's cost alone")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ops.load_backends()
    if args.noop:
        for impls in registry._REGISTRY.values():
            for impl in impls:
                impl.fn = lambda *a, **k: None
    print(f"host us per eager call, B={args.B}, {device}{' (no-op launchers)' if args.noop else ''}")
    print(f"{'op':24s} {'backend':12s} {'call':>8s} {'launcher':>9s} {'wrapper':>8s}")
    for op in args.ops:
        lengths = tuple(int(x) for x in args.lengths.split(",")) if args.lengths else (64,) * args.B
        a, kw = examples.example(op, device, size="qwen", B=len(lengths) if args.lengths else args.B, lengths=lengths)
        props, la, lkw = ops.capture(op, *a, **kw)
        impl = registry.select(op, props)
        call = per_call_us(lambda: getattr(ops, op)(*a, **kw), args.n, device)
        launch = per_call_us(lambda: impl.fn(*la, **lkw), args.n, device)
        print(f"{op:24s} {impl.backend:12s} {call:8.1f} {launch:9.1f} {call - launch:8.1f}")


if __name__ == "__main__":
    main()
