"""Host side shared by the Gluon kernels: requirements, TMA descriptors, launch (or record), AOT compile.

Nothing here imports Gluon at module import, so the op modules register their Impl records on any machine
(`gdn info` then says what is missing); kernel modules are imported on the first launch or compile.

TMA descriptors are built on the host (`triton.experimental.gluon.nvidia.hopper.TensorDescriptor`) and
passed by value as kernel parameters: no device-side descriptor workspace, CUDA-graph capturable. A tensor
`[rows, heads, dim]` with packed heads (stride(1) == dim) is described as the 2-D matrix
`[rows, heads * dim]`; a tile is then one head's `[block rows, dim]` slice at column `head * dim`.

AOT (the CPU compile matrix): `aot_compile(op, fn, arch)` runs the launcher on the op's `meta` example inputs
with launches recorded instead of run, and compiles each with `triton.compile(GluonASTSource(...),
target=GPUTarget(...))`, exactly as the launcher would launch it on that arch.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass

import torch

from gdn.common import aot, examples, probe
from gdn.common import launch as L

REQUIRES = ("triton>=3.6",)
HOPPER = ("sm_90",)
# The sub-op kernels (chunk_wy, chunk_state, chunk_output) are built for both: wgmma on sm_90, tcgen05 with
# tensor-memory accumulators on sm_100 (compile-only there: self-checked on first use). Prefill's first kernel
# and its fused passes are sm_90 only.
NVIDIA_ARCHS = ("sm_90", "sm_100")
BT = 64                                  # chunk size of the prefill pipeline (gdn/common/triton/prefill)
DTYPES = (torch.bfloat16, torch.float16)
HEAD_DIMS = frozenset({64, 128, 256})    # TMA box and wgmma N limits (<= 256), 16-byte rows

_GL_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def gl_dtype(dt: torch.dtype):
    from triton.experimental.gluon import language as gl
    return getattr(gl, _GL_DTYPES[dt])


@functools.lru_cache(maxsize=None)
def _nvmma_layout(block: tuple, dtype: torch.dtype):
    """The default NVMMA shared layout of a `block` tile (a pure function of its arguments, cached: building
    it took a quarter of prefill's host time per eager call, 11 descriptors a call)."""
    from triton.experimental.gluon import language as gl
    return gl.NVMMASharedLayout.get_default_for(list(block), gl_dtype(dtype))


@dataclass
class Desc:
    """A 2-D TMA view of `base`: `shape`, row stride `stride` (elements; unit column stride) and the
    `block` tile, in the default NVMMA shared layout for that tile (the layout wgmma reads)."""
    base: torch.Tensor
    shape: tuple
    stride: int
    block: tuple

    def layout(self):
        return _nvmma_layout(tuple(self.block), self.base.dtype)

    def signature(self) -> str:
        return f"tensordesc<{L._TL_DTYPES[self.base.dtype]}[{', '.join(map(str, self.block))}],{self.layout()!r}>"

    def build(self):
        """The TensorDescriptor kernel argument. Built without its constructor's checks: those cost ~10 us
        a descriptor on a serving host (11 a prefill call) and re-check what the launchers established with
        `tma_ok` (16-byte base and row stride, unit column stride) before making a Desc, and the launchers'
        substitutes for empty inputs (a TMA box needs rows).
        tests/nvidia/test_gluon_compile.py compares this with the checked constructor."""
        d = object.__new__(_tensor_descriptor())
        d.__dict__.update(base=self.base, shape=list(self.shape), strides=[self.stride, 1],
                          block_shape=list(self.block), layout=self.layout(), padding="zero")
        return d


# launch plans encode a Desc straight from its fields (no TensorDescriptor built); what the kernel's
# specialisation reads of one is its dtype and tile (the layout follows from them)
L.plan_arg_type(Desc, lambda d: (d.base.dtype, d.block))


@functools.lru_cache(maxsize=None)
def _tensor_descriptor():
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    return TensorDescriptor


def head_matrix(t: torch.Tensor, block_rows: int, block_cols: int | None = None) -> Desc:
    """[rows, heads, dim] with packed heads -> Desc of the [rows, heads * dim] matrix, tile
    [block_rows, block_cols or dim] (block_cols divides dim, so a tile never spans two heads)."""
    rows, heads, dim = t.shape
    return Desc(t, (rows, heads * dim), t.stride()[0], (block_rows, block_cols or dim))


def tma_ok(t: torch.Tensor) -> bool:
    """Whether TMA can address `t` [rows, heads, dim] through `head_matrix`: unit dim stride, packed heads
    (stride(1) == dim), 16-byte aligned base and row stride (any row stride otherwise, e.g. a view into a
    packed projection)."""
    rows, heads, dim = t.shape
    s_row, s_head, s_dim = t.stride()       # (one call: each t.stride(i) costs ~1 us on a serving host)
    es = t.element_size()
    return (s_dim == 1 and (s_head == dim or heads == 1) and s_row * es % 16 == 0 and dim * es % 16 == 0
            and (t.is_meta or t.data_ptr() % 16 == 0))


def tma_ready(t: torch.Tensor) -> torch.Tensor:
    """`t` [rows, heads, dim] as TMA reads it through `head_matrix` (`tma_ok`), else a contiguous copy."""
    return t if tma_ok(t) else t.contiguous()


# ---------------------------------------------------------------------------------------------------
# launch or record

_RECORD: contextvars.ContextVar[list | None] = contextvars.ContextVar("gdn_gluon_record", default=None)


@contextlib.contextmanager
def recording():
    launches: list[L.Launch] = []
    token = _RECORD.set(launches)
    try:
        yield launches
    finally:
        _RECORD.reset(token)


def launch(kernel, grid, *args, num_warps: int = 4, maxnreg: int | None = None, pdl: bool = False,
           **constexprs) -> None:
    """kernel[grid](*args) with `Desc` arguments turned into TMA descriptors; under `recording()` the
    launch is recorded (signature and constexprs) instead. maxnreg: ptxas's register cap (occupancy).
    pdl: launch with programmatic stream serialization (Triton's launch_pdl): the kernel may start once every CTA
    of the previous kernel on the stream has run griddepcontrol.launch_dependents, so it must wait (gdc_wait)
    before reading that kernel's results and before it completes: the kernel must get PDL=True among
    `constexprs` (the switch of its gdc_wait; L.check_pdl)."""
    L.check_pdl(kernel, pdl, constexprs, "gdn.launch (gluon)")
    rec = _RECORD.get()
    opts = dict(num_warps=num_warps) if maxnreg is None else dict(num_warps=num_warps, maxnreg=maxnreg)
    if pdl:
        opts["launch_pdl"] = True
    if rec is None:
        if not L.launch_compiled(kernel, grid, args, {**opts, **constexprs}):
            kernel[grid](*[a.build() if isinstance(a, Desc) else a for a in args], **opts, **constexprs)
        return
    # the JIT's specialisation of the plain arguments (L.specialized), the descriptors' own signatures
    sig, cexp, attrs = L.specialized(kernel, L.recording_arch() or "sm_90",
                                     [None if isinstance(v, Desc) else v for v in args])
    for name, v in zip(kernel.arg_names, args):
        if isinstance(v, Desc):
            sig[name] = v.signature()
            cexp.pop(name)
    if "num_warps" in kernel.arg_names:     # a kernel parameter as well as a compile option
        constexprs = {**constexprs, "num_warps": num_warps}
    for name, v in constexprs.items():
        sig[name], cexp[name] = "constexpr", v
    rec.append(L.Launch(kernel, sig, cexp, opts, attrs))


def compile_launch(l: L.Launch, arch: str):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    src = GluonASTSource(l.kernel, l.signature, l.constexprs, l.attrs)
    return triton.compile(src, target=GPUTarget(*aot.TARGETS[arch]), options=l.options)


def aot_compile(op: str, fn, arch: str, dtypes=DTYPES) -> list:
    """Compile every kernel `fn` launches on `arch` for the op's registered kernel-level examples (variants
    in dtypes this backend declines are skipped). Returns [(name, CompiledKernel)]."""
    ex, variants = examples.KERNEL_EXAMPLES[op]
    out = []
    for opts in variants:
        if opts.get("dtype", torch.bfloat16) not in dtypes:
            continue
        args, kwargs = ex("meta", **opts)
        with L.recording(arch), recording() as launches:
            fn(*args, **kwargs)
        if not launches:
            raise RuntimeError(f"{op}/gluon: launcher recorded no launch for {opts}")
        for l in launches:
            tag = ",".join(f"{k}={v}" for k, v in opts.items()).replace("torch.", "")
            name = f"{l.kernel.fn.__name__}[{tag}]"
            out.append((name, compile_launch(l, arch)))
    return out


def kernel_arch(device) -> str:
    """The arch whose kernel body a launcher builds (sm_90: wgmma, sm_100: tcgen05): the target being recorded
    for (AOT), else the GPU's own. GDN_ARCH pretends an arch for dispatch only: an sm_100 body compiled for an
    sm_90 GPU aborts the process in LLVM (no sm_90 lowering of tcgen05), so a pretend sm_100 on a Hopper runs the
    Hopper bodies (right answers, Hopper speed)."""
    return L.current_arch(device) if L.is_recording() else probe.hardware_arch(device)


def check_inputs(op: str, **tensors) -> None:
    """Clear errors for inputs the Gluon kernels decline (they dispatch elsewhere via the Impl's reasons)."""
    for name, t in tensors.items():
        if t.dtype not in DTYPES:
            raise TypeError(f"gdn.{op} (gluon): argument '{name}' must be bfloat16 or float16 (wgmma/tcgen05 "
                            f"operands), got {t.dtype}; use the triton backend for fp32")
        if t.shape[-1] not in HEAD_DIMS:
            raise ValueError(f"gdn.{op} (gluon): argument '{name}' head dim {t.shape[-1]} not supported "
                             f"({sorted(HEAD_DIMS)})")
