"""The numerics half of the correctness matrix: every registered implementation that can run here,
against the fp32 reference, on fresh random example inputs.

Each check poisons the unused slots of every pool with NaN and requires them bit-identical afterwards,
poisons outputs, and compares outputs and updated slots by ||x - ref|| / ||ref|| with the tolerances of
spec/ops.md. Used by `python -m gdn check` and tests/matrix.
"""
from __future__ import annotations

import inspect

import torch

from gdn.common import examples, probe, registry

POOLS = ("state", "conv_state", "intermediate_states")


def tolerance(opts: dict) -> float:
    """spec/ops.md: fp32 everything 1e-5; bf16/fp16 inputs 5e-3; bf16 state 1e-2."""
    if opts.get("state_dtype", torch.float32) == torch.bfloat16:
        return 1e-2
    if opts.get("dtype", torch.bfloat16) != torch.float32:
        return 5e-3
    return 1e-5


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    den = ref.norm().item()
    num = (x - ref).norm().item()
    return num / den if den > 0 else num


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _clone(v):
    return v.clone() if isinstance(v, torch.Tensor) else v


def check(op: str, backend: str, device="cpu", **opts) -> dict:
    """Run `backend` and the reference on one example; return {'err': float, 'ok': bool, 'detail': str}."""
    from gdn import ops
    fn = getattr(ops, op)
    args, kwargs = examples.example(op, device, **opts)
    bound = inspect.signature(fn).bind(*args, **kwargs).arguments
    used = {}
    for name in POOLS:
        pool = bound.get(name)
        if pool is None:
            continue
        mask = torch.ones(pool.shape[0], dtype=torch.bool)
        idx = bound["state_indices"].long().cpu()
        if name == "intermediate_states":     # row i (or intermediate_indices[i]) of live sequences
            rows = torch.arange(idx.numel())
            inter_idx = bound.get("intermediate_indices")
            dst = rows if inter_idx is None else inter_idx.long().cpu()
            idx = torch.where(idx >= 0, dst, -1)
        mask[idx[idx >= 0]] = False
        pool[mask.to(pool.device)] = float("nan")     # unused slots: poisoned, must stay bit-identical
        used[name] = ~mask
    before = {n: bound[n].clone() for n in used}
    ref_in = {n: _clone(v) for n, v in bound.items()}
    got_in = {n: _clone(v) for n, v in bound.items()}
    ref_out = fn(**ref_in, backend="reference")
    got_out = fn(**got_in, backend=backend)
    tol = tolerance(opts)
    errs, problems = [], []
    outs = [(f"out{i}", g, r) for i, (g, r) in enumerate(zip(*(
        (o if isinstance(o, tuple) else (o,)) for o in (got_out, ref_out))))] if ref_out is not None else []
    for name, g, r in outs:
        if g.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
            # fp8 codes may differ by one step where y/scale lands on a rounding boundary
            e = rel_l2(g.float(), r.float())
            errs.append(e)
            if e > 0.07:
                problems.append(f"{name} rel_l2 {e:.2e} > 7e-2 (fp8)")
            continue
        e = rel_l2(g, r)
        errs.append(e)
        if not e <= tol:
            problems.append(f"{name} rel_l2 {e:.2e} > {tol:.0e}")
    for name, touched in used.items():
        g, r, b = got_in[name], ref_in[name], before[name]
        t = touched.to(g.device)
        if not torch.equal(_bits(g[~t]), _bits(b[~t])):
            problems.append(f"{name}: an unused slot changed")
        if t.any():
            e = rel_l2(g[t], r[t])
            errs.append(e)
            if not e <= tol:
                problems.append(f"{name} slots rel_l2 {e:.2e} > {tol:.0e}")
    err = max(errs) if errs else 0.0
    return {"err": err, "ok": not problems, "detail": "; ".join(problems)}


def runnable(op: str, device="cpu") -> list[str]:
    """Backends (other than the reference) that can run `op` on this device for its example inputs."""
    from gdn import ops
    args, kwargs = examples.example(op, device)
    rows = ops.explain(op, *args, **kwargs)
    return [r["backend"] for r in rows if r["backend"] != "reference"
            and not [x for x in r["reasons"] if not x.startswith("not the forced")]]


def run(device="cpu", ops_filter=None) -> list[dict]:
    """Every (op, backend runnable here, variant) -> result rows."""
    from gdn import ops
    ops.load_backends()
    rows = []
    for op in ops.OPS:
        if ops_filter and op not in ops_filter:
            continue
        for backend in runnable(op, device):
            impl = registry.get(op, backend)
            for opts in examples.variants(op):
                args, kwargs = examples.example(op, device, **opts)
                props = ops.capture(op, *args, **kwargs)[0]
                reasons = impl.not_supported_reasons(props, probe.device_info(device))
                label = ",".join(f"{k}={str(v).replace('torch.', '')}" for k, v in opts.items())
                if reasons:
                    rows.append(dict(op=op, backend=backend, variant=label, status="skipped",
                                     err=None, detail="; ".join(reasons)))
                    continue
                try:
                    r = check(op, backend, device, **opts)
                    rows.append(dict(op=op, backend=backend, variant=label,
                                     status="pass" if r["ok"] else "FAIL", err=r["err"], detail=r["detail"]))
                except Exception as e:
                    rows.append(dict(op=op, backend=backend, variant=label, status="ERROR", err=None,
                                     detail=f"{type(e).__name__}: {e}"[:300]))
    return rows
