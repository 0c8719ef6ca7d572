"""GPU timing helpers shared by the benchmarks (bench/): measured copy bandwidth, CUDA-graph replay time,
relative error. Method: ../shared/device METHOD (events around the region, median of many replays)."""
from __future__ import annotations

import contextlib
import statistics
import time

import torch


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20, device="cuda") -> float:
    """Bytes/s of a large device-to-device copy, counting read + write (the roofline's denominator)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    warm_up(lambda: dst.copy_(src))
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        dst.copy_(src)
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e-3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(ts)


# Right after other heavy GPU work (a reference check, another implementation's run) a memory-bound kernel
# ran up to 16% slower for about 10 ms on an H100 (decode fp32 B=256: 430 us per call for the first replays,
# 371 from the 20th on; bf16 B=256: 221 for 15 replays, 191 after a 20 ms warm-up). Timed regions start
# after this much warm-up.
WARMUP_MS = 50.0


def warm_up(step, ms: float = WARMUP_MS):
    """Run step() (then synchronise) until `ms` milliseconds have passed, at least once."""
    t0 = time.perf_counter()
    while True:
        step()
        torch.cuda.synchronize()
        if (time.perf_counter() - t0) * 1e3 >= ms:
            return


def graph_time_us(calls, replays: int = 20, warm_ms: float = WARMUP_MS) -> float:
    """Median per-call time (us) of a CUDA graph holding `calls` (warmed up on a side stream first, then the
    graph replayed for `warm_ms` before the timed replays)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    warm_up(g.replay, warm_ms)
    ts = []
    for _ in range(replays):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e3)
    del g
    return statistics.median(ts) / len(calls)


def interleaved_us(runs: dict, replays: int, rounds: int = 3,
                   context=lambda key: contextlib.nullcontext()) -> dict:
    """{key: median per-call us} of each key's calls, all timed in `rounds` interleaved rounds (graph_time_us
    each time, inside context(key)): a kernel's time drifts by more than configs or implementations differ,
    so ones timed one after another can rank by when they ran (a row timed once, first after the checks, read
    212.6 us where the same kernel read 189.7 a row later: fp32 B=128, H100)."""
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, calls in runs.items():
            with context(key):
                times[key].append(graph_time_us(calls, replays))
    return {key: statistics.median(ts) for key, ts in times.items()}


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64; inf if x has a NaN or Inf."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def flushed_time_us(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median per-call time (us) of fn() with L2 cleared before every call (triton.testing.do_bench zeroes a
    256 MB buffer between calls): the cold-cache time of an op whose inputs a model would not leave in L2."""
    import triton.testing
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median") * 1e3
