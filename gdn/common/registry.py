"""Registry of implementations and dispatch.

Every kernel registers an `Impl` record: data saying which op it computes, which archs it serves, what
inputs it accepts, what it needs installed, and where its numerics were checked on real hardware.
`select(op, props)` walks the candidates for the device's arch by priority and returns the first one
with no reasons against it (xformers' `not_supported_reasons` pattern). The choice is cached per input
signature, so the eager hot path is one dict lookup.

`props` is a flat dict the op builds from its inputs (see gdn/common/checks.py), e.g.
{"device": torch.device, "dtype": torch.bfloat16, "state_dtype": torch.float32, "layout": "vk",
 "K": 128, "V": 128, ...}. Only hashable values.

Environment (read once per process through probe.env; `clear_cache()` re-reads it):
  GDN_BACKEND=<name>        force a backend for every op it implements (others dispatch as usual)
  GDN_BACKEND_<OP>=<name>   force a backend for one op (strict: raises if it cannot run)
  GDN_DISABLE=<a,b>         exclude backends from automatic choice
  GDN_LOG_DISPATCH=1        log each choice (and fall-backs) once per signature
  GDN_SELFCHECK=0           do not self-check compile-only implementations on first use

Self-check (gdn/common/selfcheck.py): on a GPU arch missing from an implementation's `validated_on`, the
first selection of it for a signature runs it once on a small example against a trusted implementation;
if they disagree it is excluded for that signature (logged, shown by explain) and the next candidate is
selected, while a forced backend raises. The verdict is part of the cached choice, so later calls are
still one dict lookup. Inside torch.compile tracing or CUDA-graph capture no kernel may run: the check is
skipped (logged), the choice is not cached, and the next eager call checks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from packaging.requirements import Requirement
from packaging.version import Version

from gdn.common import probe, selfcheck

log = logging.getLogger("gdn.dispatch")

Props = dict
ReasonFn = Callable[[Props], "list[str]"]

# Backends that need a real GPU (they do not run under the Triton interpreter).
GPU_ONLY = ("cutedsl", "gluon")


@dataclass
class Impl:
    """One implementation of one op.

    fn: the launcher, called with the op's kernel-level arguments (gdn/ops.py documents them per op:
        outputs pre-allocated, defaults resolved). It writes outputs / pools in place and returns None.
    archs: archs served ("sm_90", "gfx942", "cpu", ...; "*" = any). The vendor follows from the arch.
    priority: higher is tried first.
    arch_priority: {arch: priority} where measurements on that arch rank this backend differently (a kernel
        slower than another one there); `priority` elsewhere.
    requires: pip requirement strings checked against installed versions ("triton>=3.6").
    dtypes / state_dtypes / layouts / head_dims: accepted values (None = any).
    check: extra `not_supported_reasons(props) -> list[str]`.
    validated_on: archs where the numerics ran on real hardware (the CPU interpreter is "cpu").
    interpretable: runs on CPU tensors under TRITON_INTERPRET=1.
    aot: `aot(arch) -> list[str]` compiles the kernels for `arch` without a GPU and returns what was
        built (gdn/common/aot.py); None when the backend has nothing to compile (reference).
    """

    op: str
    backend: str
    fn: Callable
    archs: tuple[str, ...]
    priority: int = 0
    arch_priority: dict | None = None
    requires: tuple[str, ...] = ()
    dtypes: frozenset | None = None
    state_dtypes: frozenset | None = None
    layouts: tuple[str, ...] | None = None
    head_dims: frozenset | None = None
    check: ReasonFn | None = None
    validated_on: tuple[str, ...] = ()
    interpretable: bool = False
    aot: Callable[[str], list] | None = None
    notes: str = ""
    name: str = field(init=False)

    def __post_init__(self):
        self.name = self.backend

    def priority_on(self, arch: str) -> int:
        return (self.arch_priority or {}).get(arch, self.priority)

    def serves(self, arch: str) -> bool:
        return "*" in self.archs or arch in self.archs

    def requirement_reasons(self) -> list[str]:
        out = []
        for r in self.requires:
            req = Requirement(r)
            have = probe.package_version(req.name)
            if have is None and req.name == "nvidia-cutlass-dsl" and probe.cutedsl_available():
                continue  # unpacked bundle without dist-info (the GPU host's offline install)
            if have is None:
                out.append(f"needs {r}, not installed")
            elif req.specifier and Version(have.split("+")[0]) not in req.specifier:
                out.append(f"needs {r}, found {have}")
        if self.backend == "gluon" and not probe.gluon_available():
            out.append("needs triton.experimental.gluon (triton >= 3.5)")
        return out

    def not_supported_reasons(self, props: Props, info: probe.DeviceInfo) -> list[str]:
        reasons = []
        on_cpu = info.device_type == "cpu"
        if not self.serves(info.arch) and not (on_cpu and self.interpretable):
            reasons.append(f"arch {info.arch} not served (serves {', '.join(self.archs)})")
        if on_cpu and self.backend != "reference":
            if self.backend in GPU_ONLY or not self.interpretable:
                reasons.append("needs a GPU (inputs are on cpu)")
            elif not probe.interpreter_on():
                reasons.append("inputs are on cpu and TRITON_INTERPRET is not 1")
        reasons += self.requirement_reasons()
        for key, allowed in (("dtype", self.dtypes), ("state_dtype", self.state_dtypes)):
            if allowed is not None and key in props and props[key] not in allowed:
                reasons.append(f"{key} {props[key]} not supported ({', '.join(sorted(map(str, allowed)))})")
        if self.layouts is not None and "layout" in props and props["layout"] not in self.layouts:
            reasons.append(f"state_layout {props['layout']!r} not supported ({', '.join(self.layouts)})")
        if self.head_dims is not None:
            for key in ("K", "V"):
                if key in props and props[key] not in self.head_dims:
                    reasons.append(f"head dim {key}={props[key]} not supported ({sorted(self.head_dims)})")
        if self.check is not None and not reasons:
            reasons += self.check(props)
        return reasons


_REGISTRY: dict[str, list[Impl]] = {}
_CACHE: dict[tuple, Impl] = {}
_LOGGED: set = set()


class NoBackendError(RuntimeError):
    """No registered implementation can run these inputs (or a forced one cannot)."""


def register(impl: Impl) -> Impl:
    impls = _REGISTRY.setdefault(impl.op, [])
    if any(i.backend == impl.backend for i in impls):
        raise ValueError(f"gdn: backend {impl.backend!r} registered twice for op {impl.op!r}")
    impls.append(impl)
    impls.sort(key=lambda i: -i.priority)
    _CACHE.clear()
    probe.dispatch_changed()
    return impl


def ops() -> list[str]:
    return sorted(_REGISTRY)


def impls(op: str) -> list[Impl]:
    if op not in _REGISTRY:
        raise KeyError(f"gdn: unknown op {op!r} (known: {', '.join(ops())})")
    return list(_REGISTRY[op])


def get(op: str, backend: str) -> Impl:
    for i in impls(op):
        if i.backend == backend:
            return i
    raise NoBackendError(f"gdn.{op}: no backend named {backend!r} (registered: {', '.join(i.backend for i in impls(op))})")


def _env_choice(op: str) -> tuple[str | None, bool]:
    """(forced backend, strict). GDN_BACKEND_<OP> is strict; GDN_BACKEND applies where registered."""
    per_op = probe.env("GDN_BACKEND_" + op.upper())
    if per_op:
        return per_op, True
    glob = probe.env("GDN_BACKEND")
    if glob and any(i.backend == glob for i in _REGISTRY.get(op, ())):
        return glob, True
    return None, False


def _ordered(op: str, info: probe.DeviceInfo) -> list[Impl]:
    cands = impls(op)
    if info.device_type == "cpu":
        # On CPU tensors the reference is the real backend; interpreted kernels are for testing.
        cands.sort(key=lambda i: (i.backend != "reference", -i.priority))
    else:
        cands.sort(key=lambda i: -i.priority_on(info.arch))
    return cands


def _describe(props: Props) -> str:
    return ", ".join(f"{k}={v}" for k, v in props.items())


def explain(op: str, props: Props, backend: str | None = None) -> list[dict]:
    """The dispatch table for these inputs: one row per candidate, in the order tried. `selfcheck` says
    whether a compile-only candidate passed its first-use self-check here, failed it (then it is
    unavailable, with that reason) or is still to be checked."""
    info = probe.device_info(props.get("device"))
    forced, _ = (backend, True) if backend else _env_choice(op)
    disabled = {d.strip() for d in (probe.env("GDN_DISABLE") or "").split(",") if d.strip()}
    rows, chosen = [], None
    for impl in _ordered(op, info):
        reasons = impl.not_supported_reasons(props, info)
        if forced and impl.backend != forced:
            reasons = reasons + [f"not the forced backend ({forced})"]
        elif not forced and impl.backend in disabled:
            reasons = reasons + ["disabled by GDN_DISABLE"]
        check = "" if reasons else selfcheck.status(impl, info, props)
        if check.startswith("excluded"):
            reasons = reasons + [check]
        status = "unavailable" if reasons else ("chosen" if chosen is None else "available")
        if status == "chosen":
            chosen = impl
        rows.append({"backend": impl.backend, "status": status, "priority": impl.priority_on(info.arch),
                     "reasons": reasons, "validated_on": impl.validated_on,
                     "validated_here": info.arch in impl.validated_on, "selfcheck": check})
    return rows


def select(op: str, props: Props, backend: str | None = None) -> Impl:
    forced, _ = (backend, True) if backend else _env_choice(op)
    key = (op, forced, probe.env("GDN_DISABLE"), probe.env("GDN_ARCH"), probe.interpreter_on(),
           probe.env("GDN_SELFCHECK"), tuple(props.items()))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    info = probe.device_info(props.get("device"))
    cacheable = True
    while True:     # each pass either settles or adds a failed self-check, which explain() then excludes
        rows = explain(op, props, backend)
        chosen = next((r for r in rows if r["status"] == "chosen"), None)
        if chosen is None:
            _raise_no_backend(op, props, info, forced, rows)
        impl = get(op, chosen["backend"])
        if not selfcheck.needed(impl, info) or selfcheck.cached(impl, info, props) is not None:
            break
        where = selfcheck.capturing()
        if where is not None:
            # Never run kernels while tracing or capturing: use it unchecked now, check on an eager call.
            cacheable = False
            if ("skipped", key) not in _LOGGED:
                _LOGGED.add(("skipped", key))
                log.warning("gdn.%s: self-check of %s (compile-only on %s) skipped during %s; it runs unchecked "
                            "here. Make one eager call with these inputs first to check it.", op, impl.backend,
                            info.arch, where)
            break
        if selfcheck.run(impl, props, info).ok is not False:
            break
    if probe.env("GDN_LOG_DISPATCH") not in (None, "", "0") and key not in _LOGGED:
        _LOGGED.add(key)
        skipped = [f"{r['backend']} ({'; '.join(r['reasons'])})" for r in rows
                   if r["status"] == "unavailable" and r["priority"] > impl.priority_on(info.arch)]
        log.warning("gdn.%s on %s -> %s%s", op, info.arch, impl.backend,
                    f"; skipped {', '.join(skipped)}" if skipped else "")
    if cacheable:
        _CACHE[key] = impl
    return impl


def _raise_no_backend(op: str, props: Props, info: probe.DeviceInfo, forced: str | None, rows: list[dict]):
    lines = [f"  {r['backend']}: {'; '.join(r['reasons'])}" for r in rows]
    if forced:
        mine = [(l, r) for l, r in zip(lines, rows) if r["backend"] == forced]
        if not mine:
            raise NoBackendError(f"gdn.{op}: forced backend {forced!r} is not registered for this op "
                                 f"(registered: {', '.join(r['backend'] for r in rows)})")
        line, row = mine[0]
        if row["selfcheck"].startswith("excluded"):
            raise NoBackendError(
                f"gdn.{op}: forced backend {forced!r} is compile-only on {info.arch} and failed its first-use "
                f"self-check for inputs ({_describe(props)}):\n{line}\nUnforce it to fall back to a checked "
                "backend, or set GDN_SELFCHECK=0 to use it unchecked.")
        raise NoBackendError(f"gdn.{op}: forced backend {forced!r} cannot run on {info.arch} for inputs "
                             f"({_describe(props)}):\n{line}")
    raise NoBackendError(f"gdn.{op}: no backend can run on {info.arch} for inputs ({_describe(props)}):\n"
                         + "\n".join(lines))


def clear_cache() -> None:
    """Forget cached choices, log-once marks and self-check verdicts, and re-read the environment (GDN_*
    variables are read once; call this after changing them in a running process)."""
    probe.reload_env()
    _CACHE.clear()
    _LOGGED.clear()
    selfcheck.clear()


def support_matrix(archs: Iterable[str] = probe.KNOWN_ARCHS) -> list[dict]:
    """op x backend x arch: 'validated' (numerics on real hardware), 'compile-only', 'interpreter' (CPU),
    'oracle' (the reference), or '' (not served)."""
    rows = []
    for op in ops():
        for impl in impls(op):
            row = {"op": op, "backend": impl.backend, "priority": impl.priority}
            for arch in archs:
                if not impl.serves(arch) and not (arch == "cpu" and impl.interpretable):
                    row[arch] = ""
                elif impl.backend == "reference":
                    row[arch] = "oracle"         # fp32 PyTorch: runs wherever torch does; it judges the others
                elif arch == "cpu":
                    row[arch] = "interpreter"
                elif arch in impl.validated_on or "*" in impl.validated_on:
                    row[arch] = "validated"
                else:
                    row[arch] = "compile-only"   # compiled by the AOT matrix in CI, never run on that arch
            rows.append(row)
    return rows


def dtypes(*names: str) -> frozenset:
    return frozenset(getattr(torch, n) for n in names)
