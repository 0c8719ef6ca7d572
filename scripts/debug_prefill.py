"""Isolate GPU faults in the Triton prefill: every (case, plan) runs in its own process with
CUDA_LAUNCH_BLOCKING=1, so a fault in one cannot poison the others, and each prints one line.

    python scripts/debug_prefill.py [--cases 1x200,4x300,mixed6,...] [--plans default,unfused,fused,...]
                                    [--runs CASE:PLAN,...] [--sanitize CASE:PLAN] [--timeout 300]
                                    [--deadline SECONDS]

Cases (Qwen3-Next heads H=16, HV=32, K=V=128, bf16 q/k/v, fp32 VK pool, raw gates): "NxL" (N sequences of
L tokens) or a named mix (see CASES). Whenever N > 1 sequence 1 is padding (slot -1); the pool has N + 3
slots, unused ones NaN-poisoned (checked untouched); has_initial_state is a random mix. Mixes add
zero-length sequences and lengths that are not multiples of 64.
Plans: "default" (the shipping tables), or comma-free "+"-joined overrides applied to both size buckets:
"fuse" / "unfused", "BV32", "w4" (warps), "s1" / "s2" (stages): e.g. "unfused+s1", "fuse+s2+BV32".
Each run is judged against a float64 recurrence (gdn/common/reference_chunk.py: recurrence_f64).
--runs adds single CASE:PLAN runs; --sanitize runs one CASE:PLAN under compute-sanitizer memcheck (when the
tool is on PATH). --deadline bounds the whole script: runs that would start after it are reported as skipped,
and the summary line is always printed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {
    "mixed4": [300, 64, 0, 129],
    "mixed6": [700, 0, 64, 1, 300, 129],
    "mixed8": [1000, 0, 65, 1, 512, 129, 0, 2000],
    "var64": None,          # 64 sequences, ~16k tokens, a few zero-length, most not multiples of 64
}
DEFAULT_CASES = "1x200,1x4096,2x300,4x300,8x512,mixed6,mixed8,var64,64x512"
DEFAULT_PLANS = "default,unfused,fuse"


def lengths_of(case: str) -> list[int]:
    if case == "var64":
        import torch
        gen = torch.Generator().manual_seed(0)
        w = torch.rand(64, generator=gen) + 0.05
        w[[3, 17, 40]] = 0
        lens = (w / w.sum() * 16384).floor().long()
        lens[0] += 16384 - int(lens.sum())
        return lens.tolist()
    if case in CASES:
        return CASES[case]
    n, t = case.lower().split("x")
    return [int(t)] * int(n)


def apply_plan(plan: str) -> None:
    from gdn.common.triton.prefill import chunk_state as CS
    from gdn.common.triton.prefill import prefill as P
    if plan == "default":
        return
    cfg = None
    for part in plan.split("+"):
        if part in ("fuse", "unfused"):
            for key in list(P._FUSE) + ["narrow", "wide"]:
                P._FUSE[key] = part == "fuse"
            continue
        cfg = cfg or dict(BV=32, num_warps=4, num_stages=2)
        if part.startswith("BV"):
            cfg["BV"] = int(part[2:])
        elif part.startswith("w"):
            cfg["num_warps"] = int(part[1:])
        elif part.startswith("s"):
            cfg["num_stages"] = int(part[1:])
        else:
            raise SystemExit(f"unknown plan part {part!r}")
    if cfg is not None:
        for key in list(CS._CONFIGS):
            CS._CONFIGS[key] = dict(cfg)


def child(case: str, plan: str) -> int:
    import torch
    gpu = torch.cuda.is_available()
    if not gpu:                           # smoke test of this script: tiny heads under the interpreter
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from gdn.common import reference as R
    from gdn.common import registry
    from gdn.common.reference_chunk import recurrence_f64
    from gdn.common.triton.prefill import chunk_state as CS
    from gdn.common.triton.prefill import prefill as P
    from gdn.common import launch as L
    import gdn.common.triton.prefill  # noqa: F401  (registers the Triton prefill; no other backend needed)
    apply_plan(plan)
    torch.manual_seed(0)
    dev = torch.device("cuda" if gpu else "cpu")
    H, HV, K, V = (16, 32, 128, 128) if gpu else (2, 4, 16, 32)
    lengths = lengths_of(case)
    N, T = len(lengths), sum(lengths)
    bf = torch.bfloat16
    q, k = torch.randn(T, H, K, device=dev).to(bf), torch.randn(T, H, K, device=dev).to(bf)
    v = torch.randn(T, HV, V, device=dev).to(bf)
    a, b = torch.randn(T, HV, device=dev).to(bf), torch.randn(T, HV, device=dev).to(bf)
    A_log = torch.empty(HV, device=dev).uniform_(-4, -1)
    dt_bias = torch.empty(HV, device=dev).uniform_(-1, 1)
    S = N + 3
    pool = torch.randn(S, HV, V, K, device=dev) * 0.1
    idx = torch.randperm(S, device=dev)[:N].to(torch.int32)
    if N > 1:
        idx[1] = -1
    init = torch.rand(N, device=dev) > 0.3
    used = torch.zeros(S, dtype=torch.bool, device=dev)
    used[idx[idx >= 0].long()] = True
    pool[~used] = float("nan")
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    bucket = CS.bucket(N, HV)
    p = P.plan(L.current_arch(dev), N, HV, K, V)
    st = dict(p["state"])
    st["num_stages"] = max(st.get("num_stages", 2), CS.MIN_STAGES.get(L.current_arch(dev), 1))
    desc = f"bucket={bucket} fuse={p['fuse']} state={st}"
    p_tri, o_tri = pool.clone(), torch.full_like(v, float("nan"))
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    sync()
    t0 = time.perf_counter()
    registry.get("prefill", "triton").fn(q, k, v, p_tri, idx, cu, o_tri, None, None, a, b, A_log, dt_bias, init,
                                         scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
    sync()
    ms = (time.perf_counter() - t0) * 1e3
    g, beta = R.gates(a, b, A_log, dt_bias)
    o_ref, s_ref = recurrence_f64(q, k, v, g, beta, pool, idx, cu, init, scale=K ** -0.5, state_layout="vk")
    rel = lambda x, r: float("inf") if not torch.isfinite(x).all() else \
        ((x.double() - r).norm() / r.norm().clamp_min(1e-30)).item()
    e_o = rel(o_tri, o_ref)
    live = (idx >= 0).nonzero().flatten()
    e_s = rel(p_tri[idx[live].long()].transpose(-1, -2), s_ref[live])
    untouched = torch.equal(p_tri[~used].view(torch.uint8), pool[~used].view(torch.uint8))
    pad_zero = N < 2 or bool((o_tri[cu[1]:cu[2]] == 0).all())
    ok = e_o < 5e-3 and e_s < 5e-3 and untouched and pad_zero
    warm = float("nan")
    if gpu and ok:                        # warm GPU time per call (the pool keeps evolving: harmless)
        fn = registry.get("prefill", "triton").fn
        args = (q, k, v, p_tri, idx, cu, o_tri, None, None, a, b, A_log, dt_bias, init)
        kw = dict(scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
        fn(*args, **kw)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(10):
            fn(*args, **kw)
        e1.record()
        torch.cuda.synchronize()
        warm = e0.elapsed_time(e1) / 10
    print(f"RESULT {'ok' if ok else 'WRONG'} o_err={e_o:.2e} state_err={e_s:.2e} unused_untouched={untouched} "
          f"pad_rows_zero={pad_zero} ms_per_call={warm:.3f} T={T} ({desc}; first call {ms:.0f} ms)")
    return 0 if ok else 3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--plans", default=DEFAULT_PLANS)
    ap.add_argument("--runs", default="", help="extra CASE:PLAN runs, comma-separated")
    ap.add_argument("--sanitize", action="append", default=[], help="CASE:PLAN under compute-sanitizer")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per run")
    ap.add_argument("--deadline", type=float, default=None, help="seconds for the whole script")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "PLAN"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(*a.child)
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    runs = [(c, p, False) for c in a.cases.split(",") if c for p in a.plans.split(",") if p]
    runs += [(*r.split(":", 1), False) for r in a.runs.split(",") if r]
    runs += [(*s.split(":", 1), True) for s in a.sanitize]
    bad = 0
    end = time.time() + a.deadline if a.deadline else None
    for case, plan, san in runs:
        left = a.timeout if end is None else min(a.timeout, int(end - time.time()))
        if left < 5:
            print(f"{case:>8} {plan:<16} SKIPPED (deadline)", flush=True)
            bad += 1
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--child", case, plan]
        if san:
            tool = shutil.which("compute-sanitizer") or next(
                (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)
            if tool is None:
                print(f"{case:>8} {plan:<16} sanitize: compute-sanitizer not found")
                continue
            cmd = [tool, "--tool", "memcheck", "--show-backtrace", "no", "--print-limit", "5"] + cmd
        t0 = time.time()
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
            out, rc = (r.stdout + r.stderr).strip().splitlines(), r.returncode
        except subprocess.TimeoutExpired as e:
            raw = e.stdout or b""
            out, rc = ((raw.decode(errors="replace") if isinstance(raw, bytes) else raw) + "\nTIMEOUT").splitlines(), \
                f"timeout {left}s"
        res = [l for l in out if l.startswith("RESULT")]
        if san:
            keep = [l for l in out if "=========" in l and ("Invalid" in l or "at " in l or "Address" in l
                                                            or "ERROR SUMMARY" in l or "by thread" in l)][:12]
            line = " | ".join(keep) + (" | " + res[0] if res else "")
        elif res:
            line = res[0][7:]
        else:
            err = [l for l in out if "Error" in l or "error" in l][-2:]
            line = f"CRASH rc={rc}: " + " | ".join(err or out[-3:])[-500:]
        bad += not (res and res[0].startswith("RESULT ok"))
        tag = "sanitize " if san else ""
        print(f"{case:>8} {tag}{plan:<16} {line}  [{time.time() - t0:.0f}s]", flush=True)
    print(f"debug_prefill: {len(runs) - bad}/{len(runs)} ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
