"""Shared launch helpers for Triton kernels.

Every Triton launcher in gdn launches through `launch(kernel, grid, *args, num_warps=..., num_stages=...,
**constexprs)` instead of `kernel[grid](...)`. In normal use that is the same call. Under `recording(arch)`
(used by gdn/common/aot.py) nothing runs: each launch is recorded with a signature derived from its
arguments, and the AOT matrix compiles exactly what the launcher would have launched for that arch,
with the config the launcher's table picks for it. Launchers must therefore work on `meta` tensors
(no data access on the host) and read the arch through `current_arch(device)`.

Programmatic dependent launch (PDL, NVIDIA sm_90+): `launch(..., pdl=True)` launches with Triton's
`launch_pdl` (the CUDA programmatic-stream-serialization attribute), so the kernel may be scheduled while
the previous kernel on the stream is still running. Such a kernel must take `PDL: tl.constexpr` (passed
True here too) and start with `pdl_prologue(PDL)` (gdn/common/triton/_pdl.py). Launchers ask `pdl_ok(arch)`.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass, field

import torch

from gdn.common import probe

_TL_DTYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.int16: "i16",
    torch.bool: "i1", torch.float8_e4m3fn: "fp8e4nv", torch.float8_e5m2: "fp8e5",
    torch.float8_e4m3fnuz: "fp8e4b8", torch.float8_e5m2fnuz: "fp8e5b16",
}


@dataclass
class Launch:
    kernel: object
    signature: dict
    constexprs: dict
    options: dict
    attrs: dict = field(default_factory=dict)     # ASTSource attrs: {(arg index,): [["tt.divisibility", 16]]}


_RECORD: contextvars.ContextVar[tuple[str, list] | None] = contextvars.ContextVar("gdn_record", default=None)


@contextlib.contextmanager
def recording(arch: str):
    """Record launches instead of running them, pretending the device is `arch`."""
    launches: list[Launch] = []
    token = _RECORD.set((arch, launches))
    try:
        yield launches
    finally:
        _RECORD.reset(token)


def is_recording() -> bool:
    """True inside `recording(arch)` (launchers then run on meta tensors and launch nothing)."""
    return _RECORD.get() is not None


def recording_arch() -> str | None:
    """The arch of the enclosing `recording(arch)`, or None outside one."""
    rec = _RECORD.get()
    return None if rec is None else rec[0]


def current_arch(device: torch.device) -> str:
    rec = _RECORD.get()
    if rec is not None:
        return rec[0]
    return probe.device_info(device).arch


def _arg_type(v) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + _TL_DTYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -(2**31) <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    if v is None:
        return "constexpr"
    raise TypeError(f"gdn.launch: cannot type argument {v!r}")


@functools.lru_cache(maxsize=None)
def pdl_ok(arch: str) -> bool:
    """Whether launchers use PDL on `arch`: NVIDIA sm_90 and newer, compiled kernels (not the interpreter:
    gdc_wait is inline PTX), unless GDN_PDL=0. The environment is read once per arch and process (decode's
    hot path); `probe.reload_env()` (or `pdl_ok.cache_clear()` after probe.reload_env) makes a changed GDN_PDL /
    TRITON_INTERPRET count."""
    if probe.env("GDN_PDL") == "0" or probe.interpreter_on() or not arch.startswith("sm_"):
        return False
    return arch[3:].isdigit() and int(arch[3:]) >= 90


probe._ON_RELOAD.append(pdl_ok.cache_clear)


def pdl_switched(on: bool):
    """Launches inside use PDL (where pdl_ok allows) or not (GDN_PDL; see probe.env_switched: warm-up and
    CUDA-graph capture of the calls to compare must both happen inside)."""
    return probe.env_switched("GDN_PDL", "1" if on else "0")


# PDL pays where a launch is latency bound (small grids). Past this many programs it does not, and with very
# many tiny programs it costs: H100, decode bf16 B=512 (524288 one-warp programs) 636 us with PDL vs 451 us
# without; B <= 64 (<= 16384 programs) gains 0.3-0.6 us per call (B=1 fp32: 3.84 -> 3.21 us).
PDL_MAX_PROGRAMS = 16384


def use_pdl(arch: str, grid) -> bool:
    """PDL for a launch of `grid` (a tuple of ints) on `arch`: pdl_ok and a small grid."""
    n = 1
    for g in grid:
        n *= g
    return n <= PDL_MAX_PROGRAMS and pdl_ok(arch)


def check_pdl(kernel, pdl: bool, constexprs: dict, who: str = "gdn.launch") -> None:
    """A launch with PDL (launch_pdl) needs the kernel's constexpr PDL=True, the switch of its gdc_wait: without
    the wait it would race the previous kernel on the stream. Shared by this launch and Gluon's (_common.launch)."""
    if pdl and constexprs.get("PDL") is not True:
        raise ValueError(f"{who}: pdl=True needs the constexpr PDL=True ({kernel.fn.__name__})")


def launch(kernel, grid, *args, num_warps: int = 4, num_stages: int = 2, pdl: bool = False, **constexprs) -> None:
    """kernel[grid](*args, ...) or, under `recording`, its record. pdl=True adds Triton's launch_pdl (the
    kernel must get PDL=True among `constexprs`: check_pdl)."""
    check_pdl(kernel, pdl, constexprs)
    rec = _RECORD.get()
    if rec is None:
        if pdl:
            constexprs["launch_pdl"] = True
        if not launch_compiled(kernel, grid, args, dict(num_warps=num_warps, num_stages=num_stages, **constexprs)):
            kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, **constexprs)
        return
    sig, cexp, attrs = specialized(kernel, rec[0], args)
    for name, v in constexprs.items():
        sig[name] = "constexpr"
        cexp[name] = v
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if pdl:
        options["launch_pdl"] = True      # a compile option: the launcher reads it from the kernel metadata
    rec[1].append(Launch(kernel, sig, cexp, options, attrs))


def launch_compiled(kernel, grid, args, kwargs: dict) -> bool:
    """`_launch_compiled`, and inside `call_recording()` the launch noted for a call plan (None where it took
    no launch plan: the JIT launched, or nothing did)."""
    rec = _CALLS.get()
    plan = _launch_compiled(kernel, grid, args, kwargs)
    if rec is not None:
        rec.append((plan, tuple(grid), args) if isinstance(plan, _Plan) else None)
    return plan is not False


def _launch_compiled(kernel, grid, args, kwargs: dict):
    """Launch `kernel` on the current stream with the binary its JIT already compiled for these arguments, as
    `kernel[grid](*args, **kwargs)` would, minus that call's per-launch bookkeeping. Returns False, launching
    nothing, where the JIT must take the call: nothing compiled for it yet (the JIT compiles, and checks the
    kernel's globals, on that first call), launch hooks installed (a profiler's), or a Triton other than the
    3.6 this follows. `args` may hold host TMA descriptors of a type given to `plan_arg_type` (Gluon's `Desc`),
    unbuilt: the JIT path builds them, a plan encodes them itself.

    Two levels. A *plan* (`_Plan`) is found by a key computed from the arguments in a few microseconds
    (`_plan_key`: per argument exactly what Triton's specialisation reads of it) and launches the C launcher
    directly, encoding TMA descriptors straight from their fields. Without one, the binary is looked up as the
    JIT does (its binder, ~20-45 us a launch on a serving host: ~5 us per TMA descriptor argument alone) and a
    plan made for next time. Returns the plan that launched, True where the binary was launched without one,
    False where nothing was."""
    if not _LAUNCH_COMPILED or not hasattr(kernel, "device_caches"):    # (the interpreter's kernels have none)
        return False
    from triton import knobs
    if _hooks_installed():
        return False
    dev = torch.cuda.current_device()
    debug = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    mode = knobs.compilation.instrumentation_mode
    key = _plan_key(kernel, dev, args, kwargs, debug, mode)
    try:
        plan = _PLANS.get(key) if key is not None else None
    except TypeError:       # an unhashable keyword argument: no plan
        key = plan = None
    if not plan:            # (None: not planned yet; False: these arguments take Triton's own launcher)
        caches = kernel.device_caches.get(dev)
        if caches is None:
            return False
        from triton.runtime.jit import compute_cache_key
        kernel_cache, key_cache, _, _, binder = caches
        built = [a.build() if type(a) in _TMA_TYPES else a for a in args]
        bound, specialization, options = binder(*built, **{**kwargs, "debug": debug, "instrumentation_mode": mode})
        compiled = kernel_cache.get(compute_cache_key(key_cache, specialization, options))
        if compiled is None or hasattr(compiled, "result"):
            return False
        if plan is None and key is not None:
            plan = _make_plan(kernel, compiled, args, list(bound.values())[len(args):]) or False
            if len(_PLANS) >= _MAX_PLANS:
                _PLANS.clear()
            _PLANS[key] = plan
        if not plan:
            g = (*grid, 1, 1)
            run = compiled.run          # (first: the property loads the module, which sets compiled.function)
            run(g[0], g[1], g[2], torch._C._cuda_getCurrentRawStream(dev), compiled.function,
                compiled.packed_metadata, None, None, None, *bound.values())    # no launch metadata: no hook reads it
            return True
    plan.launch(grid, args, torch._C._cuda_getCurrentRawStream(dev))
    return plan


# ---- launch plans -------------------------------------------------------------------------------------
# What Triton 3.6's specialisation (native_specialize_impl) reads of an argument, per type: a tensor's dtype and
# whether its address is 16-byte aligned (tt.divisibility), an int's equality to 1 (a constant), divisibility by
# 16 and width (i32, i64, u64), only the type of a float, bool or None. A key made of these is as fine as the
# JIT's, so a plan never launches a binary compiled for other arguments (tests/gpu/test_launch_gpu.py).
def _int_key(v: int):
    if -0x80000000 <= v < 0x80000000:           # (as _plan_key's inline case)
        return 1 if v == 1 else (3 if v % 16 == 0 else 2)
    return v % 16 == 0, 1 if -(2**63) <= v < 2**63 else 2


def _tensor_key(t: torch.Tensor):
    return t.dtype, t.data_ptr() % 16 == 0


_ARG_KEYS = {torch.Tensor: _tensor_key, torch.nn.Parameter: _tensor_key, int: _int_key,
             bool: lambda v: "u1", float: lambda v: "fp32", type(None): lambda v: None}
_TMA_TYPES: dict = {}           # host TMA descriptor type -> its key function (plan_arg_type)
_PLAN_KWARG_TYPES = (int, float, bool, str, type(None))
_PLANS: dict = {}
_MAX_PLANS = 4096


def plan_arg_type(cls, key) -> None:
    """Declare `cls` a host TMA descriptor argument for launch plans. Its instances have `base` (the tensor),
    `shape` (2 ints), `stride` (the row stride; unit column stride), `block` and `build()` (Triton's
    TensorDescriptor), and `key(d)` is what the kernel's specialisation reads of one (dtype and block)."""
    _TMA_TYPES[cls] = key
    _ARG_KEYS[cls] = key


def _plan_key(kernel, dev: int, args, kwargs: dict, debug, mode):
    """The plan key of a launch, or None where an argument's type has no key. The common types inline (an
    eager prefill keys ~55 arguments a call): an i32 int as 1 (the constant), 2 or 3 (divisible by 16)."""
    keys = []
    add = keys.append
    for a in args:
        t = type(a)
        if t is int and -0x80000000 <= a < 0x80000000:
            add(1 if a == 1 else (3 if a % 16 == 0 else 2))
        elif t is torch.Tensor:
            add((a.dtype, a.data_ptr() % 16 == 0))
        else:
            f = _ARG_KEYS.get(t)
            if f is None:
                return None
            add(f(a))
    # the kernel by identity (its __hash__ computes a cache key); the plan holds it, so the id stays its own
    return id(kernel), dev, tuple(keys), tuple(kwargs.items()), debug, mode


class _Plan:
    """One compiled binary's launch with the arguments laid out as its C launcher takes them: the positional
    arguments, TMA descriptors expanded to (CUtensorMap, shape, strides) and encoded per call (the address
    changes), then the constexpr tail fixed by the key (the keyword arguments)."""
    __slots__ = ("kernel", "c_launch", "function", "metadata", "coop", "pdl", "descs", "tail")

    def launch(self, grid, args, stream) -> None:
        a = [*args, *self.tail]
        for i, swizzle, elem_size, elem_type, block in self.descs:      # (descending positions)
            d = a[i]
            strides = (d.stride, 1)
            a[i:i + 1] = (_fill_tma(d.base.data_ptr(), swizzle, elem_size, elem_type, block, d.shape, strides, 0),
                          *d.shape, *strides)
        g = (*grid, 1, 1)
        self.c_launch(g[0], g[1], g[2], stream, self.function, self.coop, self.pdl, None, None, self.metadata,
                      None, None, None, *a)


_fill_tma = None


def _make_plan(kernel, compiled, args, tail: list) -> _Plan | None:
    """The plan of `compiled` for arguments like `args`, or None where one would not launch exactly as Triton's
    launcher does: scratch memory to allocate, a kernel without TMA metadata for its descriptors."""
    global _fill_tma
    run = compiled.run                  # (the property loads the module, which sets compiled.function)
    if (run.global_scratch_size or run.profile_scratch_size
            or any(isinstance(v, torch.Tensor) or not isinstance(v, _PLAN_KWARG_TYPES) for v in tail)):
        return None
    c_launch = run.launch
    descs = [i for i, a in enumerate(args) if type(a) in _TMA_TYPES]
    if descs:
        # Triton wraps the C launcher in a closure that encodes TensorDescriptor arguments (driver.py,
        # wrap_handle_tensordesc); the plan encodes them itself and calls the C launcher under it
        from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST
        from triton.runtime import driver
        metas = getattr(compiled.metadata, "tensordesc_meta", None)
        cells = dict(zip(c_launch.__code__.co_freevars, (c.cell_contents for c in c_launch.__closure__ or ())))
        if (not metas or len(metas) != len(descs) or "launcher" not in cells
                or any(m is None or m["fp4_padded"] for m in metas)):
            return None
        c_launch = cells["launcher"]
        _fill_tma = driver.active.utils.fill_tma_descriptor
        descs = [(i, m["swizzle"], m["elem_size"], TMA_DTYPE_DEVICE_TO_HOST[m["elem_type"]], list(m["block_size"]))
                 for i, m in zip(descs, metas)][::-1]
    plan = _Plan()
    plan.kernel = kernel            # (kept alive: the key has its id)
    plan.c_launch, plan.function, plan.metadata = c_launch, compiled.function, compiled.packed_metadata
    plan.coop, plan.pdl = run.launch_cooperative_grid, run.launch_pdl
    plan.descs, plan.tail = tuple(descs), tail
    return plan


# ---- call plans -------------------------------------------------------------------------------------
# A launcher call that only allocates buffers and launches kernels (prefill's sm_90 path: two Gluon kernels, four
# buffers) spends most of an eager call's host time deciding and building what it launches: ~130 of 180 us on an
# H100 host (bench/wip/host_split.py). A call plan is that call's launches, each through its launch plan, with
# every tensor argument named by position among the call's tensors (its inputs, then the buffers it allocated):
# the next call with the same `call_key` replays them with its own tensors. Only launches replay: a launcher that
# records must do nothing else to memory between its allocations and its launches (no .copy_(), no .zero_()).
_CALLS: contextvars.ContextVar[list | None] = contextvars.ContextVar("gdn_call_launches", default=None)
_VERSION = [0]      # bumped by anything that changes what a launcher decides: config tables, dispatch, environment


def bump_version() -> None:
    """Call plans made before this are not replayed (a config table, the registry or the environment changed)."""
    _VERSION[0] += 1


probe._ON_DISPATCH.append(bump_version)


class ConfigTable(dict):
    """A launch config table (`pick`'s): a change of its contents (a benchmark sweep, a test's monkeypatch)
    bumps the call-plan version, so no call plan made from the old contents is replayed. Replace an entry to change
    it: a value (a config dict) mutated in place is not seen."""

    def __setitem__(self, k, v):
        bump_version()
        super().__setitem__(k, v)

    def __delitem__(self, k):
        bump_version()
        super().__delitem__(k)

    def clear(self):
        bump_version()
        super().clear()

    def update(self, *a, **kw):
        bump_version()
        super().update(*a, **kw)

    def pop(self, *a):
        bump_version()
        return super().pop(*a)

    def setdefault(self, k, d=None):
        bump_version()
        return super().setdefault(k, d)

    def popitem(self):
        bump_version()
        return super().popitem()


@contextlib.contextmanager
def call_recording():
    """Note each launch (`launch_compiled`) for `CallPlan.make`."""
    rec: list = []
    token = _CALLS.set(rec)
    try:
        yield rec
    finally:
        _CALLS.reset(token)


def call_key(tensors, *extra):
    """What a launcher's decisions may read of a call: each tensor's shape, strides, dtype and 16-byte alignment
    (launch plans and TMA read it), None for an absent one, the current device, `extra` (the call's scalars)
    and the call-plan version. None (no plan) where the JIT must take the launches: Triton other than 3.6,
    launch hooks installed (a profiler's), Triton's debug or instrumentation on, a tensor not on a GPU; or under
    GDN_CALL_PLANS=0."""
    if not _LAUNCH_COMPILED or not tensors[0].is_cuda or probe.env("GDN_CALL_PLANS") == "0" or _hooks_installed():
        return None
    from triton import knobs
    if knobs.runtime.debug or knobs.compilation.instrumentation_mode:   # (a launch plan's key reads them)
        return None
    key = [_VERSION[0], torch.cuda.current_device(), *extra]
    add = key.append
    for t in tensors:
        if t is None:
            add(None)
        elif t.is_cuda:
            add((t.shape, t.stride(), t.dtype, t.data_ptr() % 16 == 0))
        else:
            return None
    return tuple(key)


def _hooks_installed() -> bool:
    """Launch hooks (a profiler's): every launch must go through the JIT, which calls them."""
    from triton import knobs
    return bool(knobs.runtime.launch_enter_hook.calls or knobs.runtime.launch_exit_hook.calls)


class CallPlan:
    """The launches of one launcher call (`call_recording`), replayable with another call's tensors: per launch
    its launch plan, grid and arguments, each a constant, a tensor named by its position in the call's tensors,
    or a TMA descriptor (`plan_arg_type`) of such a tensor, rebuilt on it."""
    __slots__ = ("launches", "buffers")

    @staticmethod
    def make(rec: list, tensors, buffers=None) -> "CallPlan | None":
        """The plan of the launches noted in `rec` (in order), with `tensors` the call's inputs then its buffers,
        and `buffers` a function that allocates the buffers again (on replay); None where a launch took no
        launch plan, none was noted, an input is passed twice, or a launch reads a tensor that is not among
        `tensors` (a copy the launcher made: replay would skip making it)."""
        if not rec or any(r is None for r in rec):
            return None
        pos = {}
        for i, t in enumerate(tensors):
            if t is not None:
                if id(t) in pos:
                    return None
                pos[id(t)] = i
        launches = []
        for plan, grid, args in rec:
            tmpl = []
            for a in args:
                if isinstance(a, torch.Tensor):
                    i = pos.get(id(a))
                    if i is None:
                        return None
                    tmpl.append((1, i, None))
                elif type(a) in _TMA_TYPES:
                    i = pos.get(id(a.base))
                    if i is None:
                        return None
                    tmpl.append((2, i, (type(a), a.shape, a.stride, a.block)))     # (not a: it holds its tensor)
                else:
                    tmpl.append((0, a, None))
            launches.append((plan, grid, tuple(tmpl)))
        cp = CallPlan()
        cp.launches, cp.buffers = tuple(launches), buffers
        return cp

    def replay(self, tensors) -> None:
        """Launch on the current stream, `tensors` the call's inputs then its buffers (as for `make`)."""
        stream = torch._C._cuda_getCurrentRawStream(torch.cuda.current_device())
        for plan, grid, tmpl in self.launches:
            args = [a if kind == 0 else (tensors[a] if kind == 1 else d[0](tensors[a], *d[1:])) for kind, a, d in tmpl]
            plan.launch(grid, args, stream)


def _launch_compiled_ok() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return triton.__version__.startswith("3.6.")


_LAUNCH_COMPILED = _launch_compiled_ok()


def _backend_class(arch: str):
    """Triton's compiler backend class for `arch` (its argument specialisation rules)."""
    if is_amd(arch):
        from triton.backends.amd.compiler import HIPBackend
        return HIPBackend
    from triton.backends.nvidia.compiler import CUDABackend
    return CUDABackend


def specialized(kernel, arch: str, args) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of a launch's positional args as Triton's JIT specialises them on `arch`:
    an int equal to 1 becomes the constant 1, ints divisible by 16 and 16-byte aligned pointers (meta tensors
    count as aligned, as real allocations are) get tt.divisibility 16. Recording them so, the AOT matrix
    compiles the variant the GPU runs (with aligned, vectorised loads), not a less specialised one."""
    sig, cexp, attrs = {}, {}, {}
    if not hasattr(kernel, "params"):       # TRITON_INTERPRET=1: an InterpretedFunction, typed plainly
        for name, v in zip(kernel.arg_names, args):
            sig[name] = _arg_type(v)
            if v is None:
                cexp[name] = None
        return sig, cexp, attrs
    from triton._C.libtriton import native_specialize_impl
    backend = _backend_class(arch)
    for i, (p, v) in enumerate(zip(kernel.params, args)):
        if p.annotation_type or isinstance(v, (bool, float)) or v is None:
            # typed as before: None is a constexpr, floats and bools get no specialisation from the JIT either
            # (no gdn kernel annotates a runtime parameter)
            sig[p.name] = _arg_type(v)
            if v is None:
                cexp[p.name] = None
            continue
        ty, attr = native_specialize_impl(backend, v, p.is_const, not p.do_not_specialize,
                                          not p.do_not_specialize_on_alignment)
        sig[p.name] = ty
        if ty == "constexpr":
            cexp[p.name] = attr
        elif isinstance(attr, str) and attr:
            attrs[(i,)] = backend.parse_attr(attr)
    return sig, cexp, attrs


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def is_amd(arch: str) -> bool:
    return arch.startswith("gfx")


def model_of(name: str) -> str | None:
    """GPU model token of a device name: "NVIDIA H200" -> "h200", "NVIDIA H100 80GB HBM3" -> "h100"."""
    parts = name.split()
    return parts[1].lower() if len(parts) > 1 and parts[0] in ("NVIDIA", "AMD") else None


def model_table_key(device: torch.device, arch: str, table_archs) -> str:
    """The key a per-arch config table is read with on `device`: "<arch>:<model>" (e.g. "sm_90:h200") where
    `table_archs` (the table's arch keys) has rows measured on that GPU model, else `arch`. One arch spans
    memory systems that want different tiles (an H200 moves 1.4x the bytes per second of an H100). Never a
    model key under GDN_ARCH (the arch is not the device's own) or off the GPU (meta tensors: AOT compiles)."""
    if device.type != "cuda":
        return arch
    info = probe.device_info(device)
    model = None if info.arch_overridden else model_of(info.name)
    tagged = f"{arch}:{model}"
    return tagged if model and tagged in set(table_archs) else arch


def pick(table: dict, arch: str, bucket, default):
    """Config from a table keyed by (arch, bucket), then (arch family, bucket), then bucket.

    Configs are chosen by table, never by autotuning: the decode/prefill kernels update pools in place,
    and an autotuner's repeated runs would corrupt them.
    """
    family = "amd" if is_amd(arch) else ("nvidia" if arch.startswith("sm_") else "cpu")
    for key in ((arch, bucket), (family, bucket), bucket):
        if key in table:
            return table[key]
    return default
