"""First-use self-check of compile-only implementations.

An implementation whose `validated_on` lacks the device's arch compiled for that arch in CI but never ran
there. The first time `registry.select` picks one for an input signature on a real GPU, it runs once on a
small example of the op (gdn/common/examples.py, with the call's dtypes, layouts and, where an example
size has them, head dims) next to a trusted implementation: the highest-priority one validated on this
arch, else the reference. Every tensor the launchers write is compared: outputs by rel-L2 with the
tolerances of spec/ops.md (outputs NaN-poisoned first, so a row left unwritten fails), pools by rel-L2
over the slots the trusted run changed, and slots it left alone must stay bit-identical.

The verdict is cached per (op, backend, arch, signature) for the process; registry.py excludes a failing
implementation for that signature and selects the next candidate (a forced backend raises instead).
Nothing runs inside torch.compile tracing or CUDA-graph capture: `capturing()` says so and registry.py
skips the check there. `GDN_SELFCHECK=0` turns the whole thing off.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch

from gdn.common import examples, matrix, probe

log = logging.getLogger("gdn.selfcheck")

FP8_TOL = 7e-2   # one fp8 step where y/scale lands on a rounding boundary (as in the correctness matrix)
_FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
_EXAMPLE_OPTS = ("dtype", "state_dtype", "layout", "split_layout", "fp8_dtype", "T")
_DIMS = ("H", "HV", "K", "V", "W")


@dataclass(frozen=True)
class Verdict:
    """ok: True passed, False failed (excluded), None could not be checked (runs unchecked)."""

    ok: bool | None
    arch: str
    against: str = ""        # backend of the trusted implementation
    err: float = 0.0         # max rel-L2 over compared tensors; inf for non-finite values or an exception
    detail: str = ""         # what failed, why no check was possible, or how the example differs

    def describe(self) -> str:
        if self.ok:
            extra = f"; {self.detail}" if self.detail else ""
            return f"self-check passed on {self.arch} against {self.against} (rel err {self.err:.0e}{extra})"
        if self.ok is False:
            return f"excluded: self-check failed on {self.arch} against {self.against}: {self.detail}"
        return f"not self-checked on {self.arch} ({self.detail}); runs unchecked"


_VERDICTS: dict[tuple, Verdict] = {}


def enabled() -> bool:
    return (probe.env("GDN_SELFCHECK") or "1").strip().lower() not in ("0", "false", "off")


def needed(impl, info: probe.DeviceInfo) -> bool:
    """Whether `impl` must pass a self-check before it serves on this device: a real GPU whose arch is not
    in its validated_on (CPU tensors run the reference or the interpreter, which the CPU tests cover), for
    an op with example inputs (every public op and every sub-op with a kernel-level example has them)."""
    from gdn import ops
    return (enabled() and info.device_type != "cpu" and info.arch != "cpu" and impl.backend != "reference"
            and info.arch not in impl.validated_on and "*" not in impl.validated_on
            and (impl.op in ops.OPS or impl.op in examples.KERNEL_EXAMPLES))


def _key(impl, info: probe.DeviceInfo, props: dict) -> tuple:
    return impl.op, impl.backend, info.arch, tuple(props.items())


def cached(impl, info: probe.DeviceInfo, props: dict) -> Verdict | None:
    return _VERDICTS.get(_key(impl, info, props))


def status(impl, info: probe.DeviceInfo, props: dict) -> str:
    """One line for explain(): the verdict, that a check is pending, or '' when none is needed."""
    if not needed(impl, info):
        return ""
    v = cached(impl, info, props)
    return v.describe() if v else f"compile-only on {info.arch}: self-checked on first call"


def capturing() -> str | None:
    """What forbids running kernels now (the check would be traced or captured), or None."""
    if torch.compiler.is_compiling():
        return "torch.compile tracing"
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return "CUDA-graph capture"
    return None


def clear() -> None:
    _VERDICTS.clear()


def run(impl, props: dict, info: probe.DeviceInfo) -> Verdict:
    """Check `impl` once for this signature (cached), log the outcome, return the verdict."""
    key = _key(impl, info, props)
    if key in _VERDICTS:
        return _VERDICTS[key]
    device = torch.device(props.get("device", "cpu"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(0)     # the caller's RNG stream is untouched; the example is reproducible
        v = _check(impl, props, info, device)
    _VERDICTS[key] = v
    what = f"gdn.{impl.op}: {impl.backend} is compile-only on {info.arch}"
    if v.ok:
        log.info("%s; %s", what, v.describe())
    elif v.ok is False:
        log.warning("%s and failed its first-use self-check against %s (%s); excluded for inputs (%s)",
                    what, v.against, v.detail, _signature(props))
    else:
        log.warning("%s; %s", what, v.describe())
    return v


def _signature(props: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in props.items())


def _check(impl, props: dict, info: probe.DeviceInfo, device: torch.device) -> Verdict:
    try:
        ex_props, args, kwargs, note = _example(impl.op, props, device)
    except Exception as e:       # an example that cannot be built says nothing about the kernel
        return Verdict(None, info.arch, detail=f"no example input: {type(e).__name__}: {e}"[:300])
    reasons = impl.not_supported_reasons(ex_props, info)
    if reasons:
        return Verdict(None, info.arch, detail=f"no example input it accepts: {'; '.join(reasons)}")
    trusted = _trusted(impl, ex_props, info)
    if trusted is None:
        return Verdict(None, info.arch, detail="no implementation validated on this arch to compare with")
    outputs = _output_names(impl.op)
    named = _named(impl.op, args, kwargs)
    for name, t in named.items():
        if name in outputs and isinstance(t, torch.Tensor):
            t.fill_(float("nan"))
    ref_a, ref_k = _clone(args), _clone(kwargs)
    got_a, got_k = _clone(args), _clone(kwargs)
    try:
        trusted.fn(*ref_a, **ref_k)
    except Exception as e:
        return Verdict(None, info.arch, trusted.backend, detail=f"{trusted.backend} raised {type(e).__name__}: {e}"[:300])
    try:
        impl.fn(*got_a, **got_k)
    except Exception as e:
        return Verdict(False, info.arch, trusted.backend, float("inf"), f"raised {type(e).__name__}: {e}"[:300])
    tol = matrix.tolerance(props)
    errs, problems = [], []
    for (name, before), r, g in zip(named.items(), _named(impl.op, ref_a, ref_k).values(),
                                    _named(impl.op, got_a, got_k).values()):
        if not isinstance(before, torch.Tensor) or not before.is_floating_point() or before.numel() == 0:
            continue
        t = FP8_TOL if before.dtype in _FP8 else tol
        if name in outputs:
            e = matrix.rel_l2(g.float(), r.float())
        else:                    # read, or updated in place: compare the rows (slots) the trusted run changed
            changed = ~_same_rows(r, before)
            stray = changed.logical_not() & ~_same_rows(g, before)
            if stray.any():
                problems.append(f"{name}: {int(stray.sum())} slot(s) changed that {trusted.backend} left untouched")
            if not changed.any():
                continue
            e = matrix.rel_l2(g[changed].float(), r[changed].float())
        errs.append(e)
        if not e <= t:
            problems.append(f"{name} rel err {e:.1e} > {t:.0e}")
    err = max(errs, default=0.0)
    if problems:
        return Verdict(False, info.arch, trusted.backend, err, "; ".join(problems))
    return Verdict(True, info.arch, trusted.backend, err, note)


def _example(op: str, props: dict, device: torch.device):
    """(props, args, kwargs, note): kernel-level example inputs for `op` shaped like the call's props.
    The note names the props the example could not match (e.g. head dims no example size has)."""
    from gdn import ops
    if op in examples.KERNEL_EXAMPLES:      # internal sub-ops: kernel-level examples take dims by name
        fn, _ = examples.KERNEL_EXAMPLES[op]
        params = inspect.signature(fn).parameters
        args, kwargs = fn(device, **{k: v for k, v in props.items() if k in params and k != "device"})
        return props, args, kwargs, ""
    opts = {k: props[k] for k in _EXAMPLE_OPTS if k in props}
    score = lambda dims: sum(props[k] == dims[k] for k in _DIMS if k in props)
    size = "qwen" if score(examples.QWEN3_NEXT) > score(examples.SMALL) else "small"
    args, kwargs = examples.example(op, device, size=size, **opts)
    bound = inspect.signature(getattr(ops, op)).bind(*args, **kwargs).arguments
    _match(op, bound, props)
    ex_props, kargs, kkw = ops.capture(op, **bound)
    diff = [k for k in props if ex_props.get(k) != props[k]]
    return ex_props, kargs, kkw, f"example differs from the call in {', '.join(diff)}" if diff else ""


def _match(op: str, bound: dict, props: dict) -> None:
    """Set the example's options that select a different code path to the call's (examples.py fixes them)."""
    if props.get("bias") is False:
        bound["bias"] = None
    for name in ("activation", "chunk_size"):
        if name in props:
            bound[name] = props[name]
    if op == "decode_mtp":
        bound["disable_state_update"] = not props["update"]
        if not props["intermediate"]:
            bound["intermediate_states"] = None
        if props["tree"]:        # a chain is a valid tree and takes the tree path
            B, T = bound["q"].shape[:2]
            bound["parent_indices"] = (torch.arange(T, device=bound["q"].device) - 1).repeat(B, 1).to(torch.int32)
    if op == "prefill" and props.get("gates") == "precomputed":
        from gdn.common import reference
        g, beta = reference.gates(*(bound.pop(n) for n in ("a", "b", "A_log", "dt_bias")))
        bound["g"], bound["beta"] = g.to(props["dtype"]), beta.to(props["dtype"])


def _trusted(impl, props: dict, info: probe.DeviceInfo):
    """The highest-priority other implementation validated on this arch that accepts `props` (in the
    registry's order for this arch: arch_priority counts)."""
    from gdn.common import registry
    for c in registry._ordered(impl.op, info):
        if c is not impl and (info.arch in c.validated_on or "*" in c.validated_on) \
                and not c.not_supported_reasons(props, info):
            return c
    return None


def _output_names(op: str) -> set[str]:
    """Arguments the launcher writes that are not pools (schema `Tensor(a!)`): poisoned before the runs."""
    from gdn.common import custom_ops
    if op not in custom_ops.SCHEMAS:
        return set()
    schema = getattr(torch.ops.gdn, op).default._schema
    return {a.name for a in schema.arguments
            if a.alias_info is not None and a.alias_info.is_write and a.name not in matrix.POOLS}


def _named(op: str, args, kwargs) -> dict:
    """Kernel-level arguments by schema name (positional ones as '#i' for ops without a schema)."""
    from gdn.common import custom_ops
    names = [a.name for a in getattr(torch.ops.gdn, op).default._schema.arguments] \
        if op in custom_ops.SCHEMAS else [f"#{i}" for i in range(len(args))]
    return {**dict(zip(names, args)), **kwargs}


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    return x


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row (slot) of dim 0: bit-identical."""
    bits = lambda t: t.contiguous().view(torch.uint8).reshape(t.shape[0], -1)
    return (bits(a) == bits(b)).all(dim=1)
