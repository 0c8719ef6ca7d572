"""Chunked prefill: gdn's Triton prefill against FLA 0.6 and FlashInfer 0.7.2 (when importable).

    python bench/bench_prefill.py [--cases 1x32768,8x4096,64x512,1x4096] [--out results.csv]
                                  [--iters 10] [--no-peers] [--no-check] [--sweep] [--in-process]

Qwen3-Next heads (H=16, HV=32, K=V=128; --tp T: one tensor-parallel rank's H=16/T, HV=32/T), bf16 q/k/v,
fp32 state (gdn: VK pool, FLA: KV initial states, FlashInfer: VK), every sequence starting from a state. Per call:
  - GPU time: the sum of the kernel times of one call (torch.profiler, averaged over --iters calls);
  - wall time: --iters back-to-back calls between two synchronisations, per call (host overhead and
    launch gaps included), the best of WALL_REPEATS such runs (one run swung with the host's jitter: in
    one H100 run FlashInfer's 1x4096 read 0.206 ms, in the next 0.387);
  - Mtok/s = tokens / time; per-kernel times of gdn's launches.
gdn is timed through the public op (`gdn.ops.prefill(..., backend="triton")`) with raw gates
(a, b, A_log, dt_bias: the serving path) and with precomputed (g, beta) like the peers.
Peers get their own conventions: FLA `chunk_gated_delta_rule(q, k, v, g, beta, ...)` with log-space g,
post-sigmoid beta, KV initial states, use_qk_l2norm_in_kernel=True (its l2norm is in its time);
FlashInfer `gdn_prefill.chunk_gated_delta_rule` with alpha = exp(g) (fp32), fp32 beta, VK states and q, k
l2-normalised by the caller (outside its time), and again with FLA's l2norm_fwd of q and k in its time (vLLM's
FlashInfer path normalises so before the call); gdn once more on FlashInfer's own inputs (q, k normalised
outside its time, use_qk_l2norm=False, g and beta): the same work as FlashInfer's row. Each candidate's output
and final states are checked against a float64 token-by-token recurrence on the GPU before its time is printed
(--no-check skips).

On a GPU every case runs in its own process (a CUDA fault poisons the process that hit it, never the other
cases); each process writes its rows as soon as they are measured and the table is printed from whatever
came back, with a FAILED row for a case (or candidate) that did not finish. Peers are measured before gdn
within a case. --in-process runs everything in this process instead.

--sweep times gdn's launch plans (output fused into the state pass or not, state-pass V split, warps,
stages; output-kernel V split) per case, for choosing the config tables in
gdn/common/triton/prefill/{prefill,chunk_state,chunk_output}.py; on sm_90 also the Gluon fused pass's
configs (gdn/nvidia/gluon/chunk_state.py `_FUSED`) against the plain Gluon pass + chunk_output.
Without a GPU (--small, TRITON_INTERPRET=1 set by the script) tiny shapes run under the interpreter:
a smoke test of the script, not a measurement.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")      # before any kernel module is imported

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gdn import ops  # noqa: E402
from gdn.common import probe  # noqa: E402
from gdn.common import reference as R  # noqa: E402
from gdn.common.timing import warm_up  # noqa: E402
from gdn.common.triton.prefill import chunk_output as CO  # noqa: E402
from gdn.common.triton.prefill import chunk_state as CS  # noqa: E402
from gdn.common.triton.prefill import prefill as P  # noqa: E402

GPU = torch.cuda.is_available()
DEV = torch.device("cuda" if GPU else "cpu")


# ---------------------------------------------------------------------------------------------------
# inputs and the float64 check

def make_inputs(lengths, H, HV, K, V, seed=0):
    torch.manual_seed(seed)
    N, T = len(lengths), sum(lengths)
    bf = torch.bfloat16
    x = dict(
        q=torch.randn(T, H, K, device=DEV).to(bf), k=torch.randn(T, H, K, device=DEV).to(bf),
        v=torch.randn(T, HV, V, device=DEV).to(bf),
        a=torch.randn(T, HV, device=DEV).to(bf), b=torch.randn(T, HV, device=DEV).to(bf),
        A_log=torch.empty(HV, device=DEV).uniform_(-4, -1), dt_bias=torch.empty(HV, device=DEV).uniform_(-1, 1),
        pool=torch.randn(N, HV, V, K, device=DEV) * 0.1,                 # VK, slot n = sequence n
        idx=torch.arange(N, dtype=torch.int32, device=DEV),
        cu=torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEV),
    )
    x["g"], x["beta"] = R.gates(x["a"], x["b"], x["A_log"], x["dt_bias"])
    x["scale"] = K ** -0.5
    return x


def recurrence64(x, lengths):
    """float64 recurrence, all sequences and heads at once, one token step at a time.
    Returns (o [T,HV,V], final states [N,HV,K,V] KV form)."""
    q, k, v, g, beta = x["q"], x["k"], x["v"], x["g"], x["beta"]
    HV, G = v.shape[1], v.shape[1] // q.shape[1]
    nrm = lambda t: t.double() / torch.sqrt((t.double() ** 2).sum(-1, keepdim=True) + 1e-6)
    qn, kn = (nrm(q) * x["scale"]).repeat_interleave(G, 1), nrm(k).repeat_interleave(G, 1)
    S = x["pool"].double().transpose(-1, -2).clone()
    starts = x["cu"][:-1].long()
    lens = torch.tensor(lengths, device=DEV)
    o = torch.zeros(q.shape[0], HV, v.shape[2], dtype=torch.float64, device=DEV)
    for t in range(max(lengths)):
        act = lens > t
        rows = torch.where(act, starts + t, torch.zeros_like(starts))
        a = act.double()[:, None, None, None]
        S1 = S * torch.exp(g[rows].double())[:, :, None, None]
        u = beta[rows].double()[..., None] * (v[rows].double() - torch.einsum("nhkv,nhk->nhv", S1, kn[rows]))
        S1 = S1 + kn[rows][..., :, None] * u[..., None, :]
        S = a * S1 + (1 - a) * S
        o[rows[act]] = torch.einsum("nhkv,nhk->nhv", S1, qn[rows])[act]
    return o, S


def rel(x, ref):
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------------
# candidates: name -> (setup() -> (call, result)) where result() gives (o [T,HV,V], states [N,HV,K,V] KV)

def l2normed(t):
    """t [T, H, D] scaled to unit rows in fp32 (eps 1e-6 as in the recurrence), rounded to t's dtype: what a
    caller hands a prefill that takes q and k already normalised."""
    return (t.float() * torch.rsqrt((t.float() ** 2).sum(-1, keepdim=True) + 1e-6)).to(t.dtype).contiguous()


def gdn_candidate(x, raw, prenormed=False):
    """prenormed: q and k normalised by the caller (outside the timed call) and use_qk_l2norm=False, with
    (g, beta): FlashInfer's inputs and work exactly."""
    pool = x["pool"].clone()
    out = torch.empty_like(x["v"])
    kw = dict(a=x["a"], b=x["b"], A_log=x["A_log"], dt_bias=x["dt_bias"]) if raw else dict(g=x["g"], beta=x["beta"])
    q, k = (l2normed(x["q"]), l2normed(x["k"])) if prenormed else (x["q"], x["k"])

    def call():
        ops.prefill(q, k, x["v"], pool, x["idx"], x["cu"], scale=x["scale"], state_layout="vk", out=out,
                    backend="triton", use_qk_l2norm=not prenormed, **kw)

    def reset():
        pool.copy_(x["pool"])

    return call, reset, lambda: (out, pool.transpose(-1, -2))


def fla_candidate(x, repeat_qk=False):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    G = x["v"].shape[1] // x["q"].shape[1]
    q, k = (x["q"].repeat_interleave(G, 1), x["k"].repeat_interleave(G, 1)) if repeat_qk else (x["q"], x["k"])
    h0 = x["pool"].transpose(-1, -2).contiguous()                        # FLA: [N, HV, K, V]
    cu = x["cu"].long()
    res = {}

    def call():
        res["o"], res["s"] = chunk_gated_delta_rule(
            q[None], k[None], x["v"][None], x["g"][None], x["beta"][None], scale=x["scale"], initial_state=h0,
            output_final_state=True, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)

    return call, lambda: None, lambda: (res["o"][0], res["s"])


PEER_MODULES = ("fla.ops.gated_delta_rule", "flashinfer.gdn_prefill")
# The same work two more ways: FlashInfer with the q, k normalisation a server runs before it (vLLM's path), and
# gdn on FlashInfer's own inputs (q, k normalised outside the timed call, use_qk_l2norm=False, g and beta).
FI_SERVING = "FlashInfer 0.7 + FLA l2norm (vLLM's path)"
GDN_PRENORMED = "gdn triton (g, beta; q, k normalised by the caller)"
NO_KERNEL_ROWS = ("gdn triton (g, beta)", GDN_PRENORMED, FI_SERVING)      # (kernels as in the rows above them)


def flashinfer_candidate(x, fla_l2norm=False):
    """FlashInfer takes q and k normalised (use_qk_l2norm_in_kernel=False): by the caller outside the timed call,
    or (fla_l2norm) inside it by FLA's l2norm_fwd, as vLLM's FlashInfer prefill path does before the call."""
    from flashinfer.gdn_prefill import chunk_gated_delta_rule
    if fla_l2norm:
        from fla.modules.l2norm import l2norm_fwd
        first = lambda r: r[0] if isinstance(r, tuple) else r             # (some FLA versions also return rstd)
        nrm = lambda t: first(l2norm_fwd(t)).contiguous()
    else:
        qn, kn = l2normed(x["q"]), l2normed(x["k"])
        nrm = None
    alpha = torch.exp(x["g"]).float().contiguous()
    beta = x["beta"].float().contiguous()
    h0 = x["pool"].contiguous()                                          # FlashInfer: [N, HV, V, K]
    cu = x["cu"].long()
    res = {}

    def call():
        q, k = (nrm(x["q"]), nrm(x["k"])) if nrm is not None else (qn, kn)
        res["o"], res["s"] = chunk_gated_delta_rule(
            q, k, x["v"], g=alpha, beta=beta, scale=x["scale"], initial_state=h0, output_final_state=True,
            cu_seqlens=cu, use_qk_l2norm_in_kernel=False)

    return call, lambda: None, lambda: (res["o"], res["s"].transpose(-1, -2))


# ---------------------------------------------------------------------------------------------------
# timing

def busy_time(intervals) -> float:
    """Total length of the union of (start, end) intervals: the time some kernel ran. Equals the sum of the
    kernel times when they do not overlap; counts once the time two kernels run side by side (a PDL overlap,
    or a kernel beside another on other SMs)."""
    total, cur = 0.0, None
    for s, e in sorted(intervals):
        if cur is None or s > cur[1]:
            total += 0.0 if cur is None else cur[1] - cur[0]
            cur = [s, e]
        else:
            cur[1] = max(cur[1], e)
    return total + (0.0 if cur is None else cur[1] - cur[0])


def gpu_time(call, iters):
    """(ms per call, {kernel name: ms per call}) from torch.profiler: the GPU's busy time (the union of the
    call's kernel intervals, `busy_time`; the sum of the kernel times where none overlap), and each kernel's
    own time (these may add up to more than the first where kernels overlap)."""
    if not GPU:
        return float("nan"), {}
    from torch.profiler import ProfilerActivity, profile
    warm_up(call)           # (gdn/common/timing.py: a kernel runs slow for ~10 ms after other heavy work)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    per, spans = {}, []
    for e in prof.events():
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            per[e.name] = per.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e3 / iters
            spans.append((e.time_range.start, e.time_range.end))
    return busy_time(spans) / 1e3 / iters, per


WALL_REPEATS = 5


def wall_time(call, iters):
    if GPU:
        warm_up(call)
    else:
        call()
    best = float("inf")
    for _ in range(WALL_REPEATS if GPU else 1):
        t0 = time.perf_counter()
        for _ in range(iters):
            call()
        if GPU:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) * 1e3 / iters)
    return best


# ---------------------------------------------------------------------------------------------------

def parse_case(s):
    n, t = s.lower().split("x")
    return int(n), int(t)


def _cuda_broken(e: BaseException) -> bool:
    """An error after which this process's CUDA context is unusable (sticky: illegal address, launch
    failure, device-side assert); the remaining candidates of the case are skipped, not mismeasured."""
    msg = str(e).lower()
    return GPU and any(m in msg for m in ("illegal memory access", "illegal address", "unspecified launch",
                                          "device-side assert", "misaligned address", "cuda error"))


def bench_case(name, lengths, dims, args, rows, kernel_rows, emit=lambda: None):
    """Measure every candidate of one case. Rows are appended (and `emit` called) as soon as each
    candidate finishes; a failure is a row too (impl "... FAILED: reason"), never an exception."""
    H, HV, K, V = dims
    T = sum(lengths)
    x = make_inputs(lengths, H, HV, K, V)
    ref = recurrence64(x, lengths) if args.check else None
    cands = []
    if args.peers and GPU:
        # FLA with GVA first; an FLA that rejects it (or reads v-head hv from another q/k head) gets q/k
        # repeated to HV heads. Peers go first: a fault in gdn cannot cost their numbers.
        cands += [[("FLA 0.6 chunk_gated_delta_rule", lambda: fla_candidate(x)),
                   ("FLA 0.6 chunk_gated_delta_rule (q/k repeated to HV)", lambda: fla_candidate(x, True))],
                  [("FlashInfer 0.7 gdn_prefill", lambda: flashinfer_candidate(x))],
                  [(FI_SERVING, lambda: flashinfer_candidate(x, fla_l2norm=True))]]
    cands += [[("gdn triton (raw gates)", lambda: gdn_candidate(x, True))],
              [("gdn triton (g, beta)", lambda: gdn_candidate(x, False))],
              [(GDN_PRENORMED, lambda: gdn_candidate(x, False, prenormed=True))]]
    fail = lambda cname, why: rows.append(dict(case=name, impl=f"{cname} FAILED: {why}"[:160], tokens=T))
    broken = None
    for alternatives in cands:
        if broken is not None:
            fail(alternatives[0][0], f"not run (CUDA context lost: {broken})")
            emit()
            continue
        for cname, make in alternatives:
            try:
                call, reset, result = make()
                call()
                if GPU:
                    torch.cuda.synchronize()
            except Exception as e:  # a peer missing or rejecting these inputs: report, keep going
                print(f"  {name}: {cname} unavailable: {type(e).__name__}: {str(e)[:300]}", flush=True)
                if _cuda_broken(e):
                    broken = f"{type(e).__name__}"
                    fail(cname, str(e)[:100])
                    emit()
                    break
                continue
            try:
                err_o = err_s = float("nan")
                if ref is not None:
                    reset()
                    call()
                    o, st = result()
                    err_o, err_s = rel(o, ref[0]), rel(st, ref[1])
                    if not (err_o < 2e-2 and err_s < 2e-2):
                        print(f"  {name}: {cname} does not match the float64 recurrence (o {err_o:.2e}, state "
                              f"{err_s:.2e}); not timed", flush=True)
                        rows.append(dict(case=name, impl=f"{cname} WRONG (not timed)", tokens=T, rel_l2_o=err_o,
                                         rel_l2_state=err_s))
                        emit()
                        continue                  # the next alternative, if any (FLA: q/k repeated)
                g_ms, per = gpu_time(call, args.iters)
                w_ms = wall_time(call, args.iters)
            except Exception as e:
                print(f"  {name}: {cname} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                fail(cname, f"{type(e).__name__}: {str(e)[:100]}")
                if _cuda_broken(e):
                    broken = type(e).__name__
                emit()
                break
            rows.append(dict(case=name, impl=cname, tokens=T, gpu_ms=g_ms,
                             gpu_mtok_s=T / g_ms / 1e3 if g_ms else float("nan"), wall_ms=w_ms,
                             wall_mtok_s=T / w_ms / 1e3, wall_over_gpu=w_ms / g_ms if g_ms else float("nan"),
                             rel_l2_o=err_o, rel_l2_state=err_s, kernels=len(per)))
            if cname not in NO_KERNEL_ROWS:
                for k, ms in sorted(per.items(), key=lambda kv: -kv[1]):
                    kernel_rows.append(dict(case=name, impl=cname, kernel=k[:90], ms=ms))
            emit()
            break


def add_vs_fla(rows):
    """vs_fla = FLA's GPU time / this row's, per case (FLA: the first FLA row of the case that was timed)."""
    fla = {}
    for r in rows:
        if r["impl"].startswith("FLA") and r.get("gpu_ms") and r["case"] not in fla:
            fla[r["case"]] = r["gpu_ms"]
    for r in rows:
        f, g = fla.get(r["case"]), r.get("gpu_ms")
        r["vs_fla"] = f / g if f and g else float("nan")


# No num_stages=1 for the state pass: Triton 3.6 miscompiles it on sm_90 (chunk_state.MIN_STAGES clamps it).
SWEEP_STATE = [dict(BV=16, num_warps=4, num_stages=2), dict(BV=32, num_warps=4, num_stages=2),
               dict(BV=32, num_warps=4, num_stages=3), dict(BV=32, num_warps=8, num_stages=2),
               dict(BV=64, num_warps=4, num_stages=2), dict(BV=64, num_warps=8, num_stages=2),
               dict(BV=64, num_warps=8, num_stages=3), dict(BV=32, num_warps=4, num_stages=2, TMA=False)]
SWEEP_OUT = [dict(BV=64, num_warps=4, num_stages=2), dict(BV=128, num_warps=8, num_stages=2),
             dict(BV=32, num_warps=4, num_stages=2)]


# Gluon's fused state + output pass (sm_90; gdn/nvidia/gluon/chunk_state.py `_FUSED`): None = the plain Gluon
# pass + Gluon chunk_output
SWEEP_GLUON_FUSED = [None, dict(BV=128, STAGES=2, num_warps=8), dict(BV=128, STAGES=2, num_warps=8, TMA_O=True),
                     dict(BV=64, STAGES=2, num_warps=8), dict(BV=32, STAGES=2, num_warps=4),
                     dict(BV=16, STAGES=2, num_warps=4)]


def time_plan(name, desc, row, T, call, reset, result, base, args, rows, emit, kernels_as_state=False) -> bool:
    """Run the launch plan now in the tables: check its output against the default plan's (`base`), time it
    and append `row` with the figures (or a FAILED row). kernels_as_state: the per-kernel times go into the
    row's "state" column. Returns False when the CUDA context is broken and the sweep must stop."""
    try:
        reset()
        call()
        err = rel(result()[0], base)
        g_ms, per = gpu_time(call, args.iters)
    except Exception as e:
        print(f"  sweep {name} {desc}: {type(e).__name__}: {str(e)[:200]}")
        rows.append({**row, "gpu_ms": f"FAILED: {type(e).__name__}"})
        emit()
        return not _cuda_broken(e)
    if kernels_as_state:
        row = {**row, "state": " ".join(f"{k}={v:.3f}" for k, v in per.items())}
    rows.append({**row, "gpu_ms": g_ms, "mtok_s": T / g_ms / 1e3 if g_ms else 0, "rel_vs_default": err})
    emit()
    return True


def sweep_gluon_fused(name, T, call, reset, result, base, args, rows, emit):
    """GPU time of prefill with each Gluon fused-pass config forced for every bucket (sm_90 only)."""
    from gdn.nvidia.gluon import chunk_state as GS
    saved = dict(GS._FUSED)
    arch = probe.device_info(DEV).arch
    try:
        for cfg in SWEEP_GLUON_FUSED:
            for bucket in ("narrow", "wide"):
                GS._FUSED[(arch, bucket)] = cfg
            label = "gluon plain + chunk_output" if cfg is None else f"gluon fused {cfg}"
            if not time_plan(name, label, dict(case=name, fuse=label, output="-"), T, call, reset, result, base,
                             args, rows, emit, kernels_as_state=True):
                break
    finally:
        GS._FUSED.clear(), GS._FUSED.update(saved)


def sweep_case(name, lengths, dims, args, rows, emit=lambda: None):
    """GPU time of gdn's launch plans for one case (tables patched in place, restored after)."""
    H, HV, K, V = dims
    T = sum(lengths)
    x = make_inputs(lengths, H, HV, K, V)
    call, reset, result = gdn_candidate(x, True)
    reset()
    call()
    base = result()[0].clone()
    saved = (dict(P._FUSE), dict(CS._CONFIGS), dict(CO._CONFIGS))
    plans = [(False, s, o) for s in SWEEP_STATE for o in SWEEP_OUT[:1]] + \
            [(False, SWEEP_STATE[2], o) for o in SWEEP_OUT[1:]] + \
            [(True, s, None) for s in SWEEP_STATE]
    try:
        for fuse, st, oc in plans:
            arch = probe.device_info(DEV).arch
            for bucket in ("narrow", "wide"):
                for key in (bucket, (arch, bucket), ("nvidia", bucket), ("amd", bucket)):
                    P._FUSE[key] = fuse
                    CS._CONFIGS[key] = st
            for bucket in ("big", "small"):
                for key in (bucket, (arch, bucket), ("nvidia", bucket), ("amd", bucket)):
                    if oc is not None:
                        CO._CONFIGS[key] = oc
            if not time_plan(name, f"fuse={fuse} state={st} out={oc}",
                             dict(case=name, fuse=fuse, state=st, output=oc if not fuse else "-"), T, call, reset,
                             result, base, args, rows, emit):
                break
    finally:
        P._FUSE.clear(), P._FUSE.update(saved[0])
        CS._CONFIGS.clear(), CS._CONFIGS.update(saved[1])
        CO._CONFIGS.clear(), CO._CONFIGS.update(saved[2])
    if GPU and P.sub_op_impl("chunk_state", x["q"], x["v"], x["pool"], "vk").backend == "gluon":
        sweep_gluon_fused(name, T, call, reset, result, base, args, rows, emit)


def fmt(v, nd=3):
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{nd}f}" if abs(v) >= 1e-2 else f"{v:.2e}"
    return str(v)


def run_isolated(case, argv, timeout):
    """One case in a child process; returns (rows, kernel_rows, sweep_rows) it wrote, plus a FAILED row when
    it did not finish (a crash, a CUDA fault, a timeout): whatever it measured before that is kept."""
    fd, path = tempfile.mkstemp(suffix=".json", prefix="bench_prefill_")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--cases", case, "--child-json", path]
    why = None
    try:
        r = subprocess.run(cmd, timeout=timeout)
        if r.returncode != 0:
            why = f"child exit {r.returncode}"
    except subprocess.TimeoutExpired:
        why = f"timeout after {timeout} s"
    try:
        with open(path) as f:
            got = json.load(f)
    except (OSError, ValueError):
        got = {}
    finally:
        os.unlink(path)
    rows, kernel_rows, sweep_rows = got.get("rows", []), got.get("kernel_rows", []), got.get("sweep_rows", [])
    if why is not None:
        print(f"  {case}: {why}; keeping the {len(rows) + len(sweep_rows)} rows it measured", flush=True)
        (sweep_rows if "--sweep" in argv else rows).append(
            dict(case=case, impl=f"(case did not finish: {why})", fuse=f"(case did not finish: {why})"))
    return rows, kernel_rows, sweep_rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="1x32768,8x4096,64x512,1x4096", help="NxL list: N sequences of L tokens")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", help="CSV file for the rows")
    p.add_argument("--no-peers", dest="peers", action="store_false")
    p.add_argument("--require-peers", action="store_true", help="stop at once if FLA or FlashInfer does not import")
    p.add_argument("--no-check", dest="check", action="store_false")
    p.add_argument("--sweep", action="store_true", help="time gdn's launch plans instead of the comparison")
    p.add_argument("--small", action="store_true", help="tiny heads (H=2, HV=4, K=V=32): interpreter smoke test")
    p.add_argument("--tp", type=int, default=1, help="one tensor-parallel rank's heads: H=16/TP, HV=32/TP")
    p.add_argument("--in-process", action="store_true", help="no child process per case")
    p.add_argument("--case-timeout", type=int, default=600, help="seconds per case (isolated runs)")
    p.add_argument("--deadline", type=float, help="seconds for all cases: later cases are cut short or skipped, "
                   "and the table is printed in time")
    p.add_argument("--child-json", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.require_peers and (bad := probe.unimportable(PEER_MODULES)):
        print("peers required but not importable:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 2
    dims = (2, 4, 32, 32) if a.small or not GPU else (16 // a.tp, 32 // a.tp, 128, 128)
    if not GPU:
        a.cases = "2x70,1x130" if a.cases == p.get_default("cases") else a.cases
        a.iters = 1
    rows, kernel_rows, sweep_rows = [], [], []
    if a.child_json:                       # one isolated case: write the rows as they come
        def emit():
            with open(a.child_json + ".tmp", "w") as f:
                json.dump(dict(rows=rows, kernel_rows=kernel_rows, sweep_rows=sweep_rows), f)
            os.replace(a.child_json + ".tmp", a.child_json)
        for c in a.cases.split(","):
            N, L_ = parse_case(c)
            if a.sweep:
                sweep_case(c, [L_] * N, dims, a, sweep_rows, emit)
            else:
                bench_case(c, [L_] * N, dims, a, rows, kernel_rows, emit)
        emit()
        return 0
    info = probe.device_info(DEV)
    print(f"# gdn prefill benchmark, {datetime.date.today()}, {info.name} ({info.arch}), torch {torch.__version__}, "
          f"triton {info.versions.get('triton')}, fla {info.versions.get('fla-core')}, flashinfer "
          f"{info.versions.get('flashinfer-python')}; H={dims[0]} HV={dims[1]} K={dims[2]} V={dims[3]}, bf16, "
          f"fp32 state\n", flush=True)
    isolate = GPU and not a.in_process
    passthrough = [f"--iters={a.iters}", f"--tp={a.tp}"] + [flag for flag, on in (("--no-peers", not a.peers),
                                                                  ("--no-check", not a.check),
                                                                  ("--sweep", a.sweep), ("--small", a.small)) if on]
    end = time.time() + a.deadline if a.deadline else None
    for c in a.cases.split(","):
        t0 = time.time()
        left = a.case_timeout if end is None else min(a.case_timeout, int(end - t0))
        if isolate and left < 10:
            print(f"  {c}: skipped (deadline)", flush=True)
            (sweep_rows if a.sweep else rows).append(dict(case=c, impl="(skipped: deadline)", fuse="(skipped)"))
            continue
        if isolate:
            r, k, sw = run_isolated(c, passthrough, left)
            rows += r
            kernel_rows += k
            sweep_rows += sw
        else:
            N, L_ = parse_case(c)
            try:
                if a.sweep:
                    sweep_case(c, [L_] * N, dims, a, sweep_rows)
                else:
                    bench_case(c, [L_] * N, dims, a, rows, kernel_rows)
            except Exception as e:  # keep the table: what was measured so far is printed below
                print(f"  {c}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                rows.append(dict(case=c, impl=f"(case failed: {type(e).__name__})"))
        print(f"  ({c} done in {time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    if a.sweep:
        cols = ["case", "fuse", "state", "output", "gpu_ms", "mtok_s", "rel_vs_default"]
        out_rows = sweep_rows
    else:
        add_vs_fla(rows)
        cols = ["case", "impl", "gpu_ms", "gpu_mtok_s", "wall_ms", "wall_mtok_s", "wall_over_gpu", "vs_fla",
                "rel_l2_o", "rel_l2_state", "kernels"]
        out_rows = rows
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in out_rows:
        print("| " + " | ".join(fmt(r.get(k, "")) for k in cols) + " |")
    if kernel_rows:
        print("\nper-kernel GPU time (gdn: raw gates)\n\n| case | impl | kernel | ms |\n|---|---|---|---|")
        for r in kernel_rows:
            print(f"| {r['case']} | {r.get('impl', '')} | {r['kernel']} | {fmt(r['ms'])} |")
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols + (["vs_fla"] if "vs_fla" not in cols else []),
                               extrasaction="ignore")
            w.writeheader()
            for r in out_rows:
                w.writerow(r)
            for r in kernel_rows:
                f.write(f"# kernel,{r['case']},{r.get('impl', '')},{r['kernel']},{r['ms']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
