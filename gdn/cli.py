"""`python -m gdn info | check | demo | bench`.

info   device, packages, the support matrix (validated / compile-only / interpreter per arch), which
       implementations are compile-only here (self-checked on first use), and the dispatch table for this
       device: op x backend -> chosen / available / why not / self-check verdict.
check  the numerics half of the correctness matrix for what this machine can execute (on CPU the Triton
       kernels run under the interpreter), as a table; exit 1 on any failure.
demo   a Qwen3-Next-shaped decode and prefill step on the best backend here, checked against the
       reference, with timing.
bench  the benchmark runner: `gdn bench <name> [args]` runs bench/bench_<name>.py (decode, prefill, edge_ops, layer,
       gluon_prefill, cutedsl_decode).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _table(rows: list[dict], cols: list[str]) -> str:
    w = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in cols}
    line = "| " + " | ".join(c.ljust(w[c]) for c in cols) + " |"
    sep = "|" + "|".join("-" * (w[c] + 2) for c in cols) + "|"
    body = ["| " + " | ".join(str(r.get(c, "")).ljust(w[c]) for c in cols) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def _device():
    import torch
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def support_matrix_md() -> str:
    from gdn import ops
    from gdn.common import probe, registry
    ops.load_backends()
    return _table(registry.support_matrix(), ["op", "backend", *probe.KNOWN_ARCHS])


def selfcheck_summary(info) -> str:
    """Which public-op implementations serving this arch never ran on it, and what their first call does.
    (The prefill sub-op kernels that prefill picks through the registry are self-checked the same way.)"""
    from gdn import ops
    from gdn.common import registry, selfcheck
    if info.arch == "cpu":
        return ("Self-check: none on cpu (the reference and the interpreted Triton kernels are what the CPU tests "
                "check); on a GPU, compile-only implementations are self-checked on first use.")
    names = [f"{op}/{i.backend}" for op in ops.OPS for i in registry.impls(op)
             if i.serves(info.arch) and i.backend != "reference" and info.arch not in i.validated_on
             and "*" not in i.validated_on]
    if not names:
        return f"Self-check: every implementation serving {info.arch} was validated on it."
    head = f"Compile-only on {info.arch} (compiled in CI, never run on this arch): {', '.join(names)}.\n"
    if info.device_type == "cpu":
        return head + f"They are self-checked on first use on a real {info.arch} GPU (here the tensors are on CPU)."
    if not selfcheck.enabled():
        return head + "GDN_SELFCHECK=0: they run UNCHECKED."
    return head + ("Each is self-checked on its first call per input signature against the best implementation "
                   f"validated on {info.arch} (else the reference) and skipped, with a logged reason, if they "
                   "disagree (GDN_SELFCHECK=0 turns this off).")


def cmd_info(args) -> int:
    from gdn import ops
    from gdn.common import examples, probe, registry
    ops.load_backends()
    if args.matrix_md:
        print(support_matrix_md())
        return 0
    dev = _device()
    info = probe.device_info(dev)
    print(f"gdn {__import__('gdn').__version__} on {info.name} ({info.vendor}, arch {info.arch}"
          f"{', GDN_ARCH override' if info.arch_overridden else ''}), {info.multiprocessors} SMs/CUs, "
          f"L2 {info.l2_bytes >> 20} MiB")
    print("packages: " + ", ".join(f"{k}={v}" for k, v in info.versions.items()))
    print("\nSupport matrix (validated = numerics checked on real hardware; compile-only = compiled for the arch"
          " in CI, never run there; interpreter = runs on CPU under TRITON_INTERPRET=1):\n")
    print(support_matrix_md())
    print("\nNotes:")
    for op in registry.ops():
        for impl in registry.impls(op):
            if impl.backend != "reference" and impl.notes:
                print(f"  {op}/{impl.backend}: {impl.notes}")
    print(f"\n{selfcheck_summary(info)}")
    print(f"\nDispatch on this device ({dev}, arch {info.arch}) for Qwen3-Next-shaped inputs:\n")
    rows = []
    for op in ops.OPS:
        a, k = examples.example(op, "meta" if dev.type == "cuda" else dev, size="qwen")
        if dev.type == "cuda":
            a, k = examples.example(op, dev, size="qwen", B=2, lengths=(3, 2))
        for r in ops.explain(op, *a, **k):
            rows.append({"op": op, "backend": r["backend"], "status": r["status"],
                         "why not": "; ".join(x for x in r["reasons"] if x != r["selfcheck"]),
                         "self-check": r["selfcheck"]})
    checked = any(r["self-check"] for r in rows)
    print(_table(rows, ["op", "backend", "status", "why not", *(["self-check"] if checked else [])]))
    return 0


def cmd_check(args) -> int:
    dev = _device()
    if dev.type == "cpu" and not args.no_interpret:
        # Must be set before any Triton kernel module is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from gdn.common import matrix, probe
    t0 = time.time()
    rows = matrix.run(dev, args.op)
    for r in rows:
        r["err"] = "" if r["err"] is None else f"{r['err']:.1e}"
    info = probe.device_info(dev)
    print(f"gdn check on {info.name} (arch {info.arch}{', Triton interpreter' if probe.interpreter_on() else ''}),"
          f" {time.time() - t0:.0f}s\n")
    print(_table(rows, ["op", "backend", "variant", "status", "err", "detail"]))
    bad = [r for r in rows if r["status"] in ("FAIL", "ERROR")]
    ran = [r for r in rows if r["status"] == "pass"]
    print(f"\n{len(ran)} passed, {len(bad)} failed, {len(rows) - len(ran) - len(bad)} skipped")
    if not rows:
        print("note: only the reference backend can run here (it is the oracle, so nothing to compare)")
    return 1 if bad else 0


def cmd_demo(args) -> int:
    import torch

    from gdn import ops
    from gdn.common import examples, matrix, probe
    dev = _device()
    info = probe.device_info(dev)
    torch.manual_seed(0)
    print(f"gdn demo on {info.name} (arch {info.arch}); Qwen3-Next shape H=16 HV=32 K=V=128, bf16 inputs, "
          "fp32 VK state pool")
    B, lengths = (64, (512, 300, 212)) if dev.type == "cuda" else (8, (24, 9, 31))
    ok = True
    for op, kw in (("decode", dict(B=B)), ("prefill", dict(lengths=lengths))):
        a, k = examples.example(op, dev, size="qwen", **kw)
        rows = ops.explain(op, *a, **k)
        chosen = next(r for r in rows if r["status"] == "chosen")
        skipped = [f"{r['backend']}: {'; '.join(r['reasons'])}" for r in rows if r["status"] == "unavailable"]
        res = matrix.check(op, chosen["backend"], dev, size="qwen", **kw) if chosen["backend"] != "reference" \
            else None
        a2 = [x.clone() if isinstance(x, torch.Tensor) else x for x in a]
        k2 = {n: (x.clone() if isinstance(x, torch.Tensor) else x) for n, x in k.items()}
        getattr(ops, op)(*a2, **k2)                      # warm-up (compiles kernels)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        n = 20 if dev.type == "cuda" else 2
        t0 = time.perf_counter()
        for _ in range(n):
            getattr(ops, op)(*a2, **k2)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / n * 1e6
        what = f"B={B}" if op == "decode" else f"{sum(lengths)} tokens in {len(lengths)} sequences"
        print(f"\n{op} ({what}): backend {chosen['backend']}, {dt:.0f} us per call (wall, eager)")
        if res is not None:
            print(f"  vs reference: max rel-L2 {res['err']:.1e} -> {'OK' if res['ok'] else 'MISMATCH ' + res['detail']}")
            ok &= res["ok"]
        else:
            print("  the reference backend ran: it is the oracle (fp32 PyTorch).")
        if skipped:
            print("  faster backends not used here: " + " | ".join(skipped))
    return 0 if ok else 1


def cmd_bench(args) -> int:
    import runpy
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(here, "bench", f"bench_{args.name}.py")
    if not os.path.exists(script):
        avail = sorted(f[6:-3] for f in os.listdir(os.path.join(here, "bench")) if f.startswith("bench_")) \
            if os.path.isdir(os.path.join(here, "bench")) else []
        print(f"gdn bench: no benchmark {args.name!r} (have: {', '.join(avail) or 'none: run from a source checkout'})")
        return 2
    sys.argv = [script, *args.rest]
    runpy.run_path(script, run_name="__main__")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gdn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info", help="device, packages, support matrix and dispatch table")
    i.add_argument("--matrix-md", action="store_true", help="print only the support matrix (markdown)")
    c = sub.add_parser("check", help="correctness matrix for what this machine can run")
    c.add_argument("--op", action="append", help="only these ops")
    c.add_argument("--no-interpret", action="store_true", help="on CPU, do not run Triton under the interpreter")
    sub.add_parser("demo", help="a Qwen3-Next-shaped decode and prefill step, checked and timed")
    b = sub.add_parser("bench", help="run bench/bench_<name>.py")
    b.add_argument("name")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    return {"info": cmd_info, "check": cmd_check, "demo": cmd_demo, "bench": cmd_bench}[args.cmd](args)
