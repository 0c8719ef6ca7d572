"""Fixes for bugs of Triton 3.6's interpreter (TRITON_INTERPRET=1), applied in place when it is on.

They touch only the interpreter (CPU tests), never compiled kernels, and make it compute what the GPU
computes. Applied by gdn/common/triton/__init__.py before any kernel module is imported.
"""
from __future__ import annotations

import triton.language as tl

from gdn.common import probe

# Bugs of Triton 3.6's interpreter:
#  - a scalar (a 1-element numpy array) becomes a Python int through `int(arr)`, which numpy >= 2.3
#    rejects, so loops with run-time bounds fail; index through the array's single element instead;
#  - tl.dot on bfloat16 operands multiplies their raw uint16 storage; widen them to fp32 first (exact,
#    accumulation in fp32 as on the GPU);
#  - fp32 -> bf16 casts truncate; the GPU rounds to nearest even, and truncation's bias would make the
#    interpreter's bf16 numerics look worse than the hardware's.

def apply() -> None:
    if not probe.interpreter_on():
        return
    import numpy as np
    import triton.runtime.interpreter as interp
    if getattr(interp, "_gdn_shims", False):
        return
    if hasattr(interp, "_patch_lang_tensor"):
        orig_patch = interp._patch_lang_tensor

        def patch_lang_tensor(tensor, scope):
            orig_patch(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        interp._patch_lang_tensor = patch_lang_tensor
    builder = getattr(interp, "InterpreterBuilder", None)
    if builder is not None and hasattr(builder, "create_dot"):
        orig_dot = builder.create_dot

        def widen(x):
            if x.dtype == tl.bfloat16:
                return interp.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
            return x

        def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
            return orig_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

        builder.create_dot = create_dot
    if builder is not None and hasattr(builder, "cast_impl"):
        orig_cast = builder.cast_impl

        def cast_impl(self, src, dst_type):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                u = src.data.astype(np.float32).view(np.uint32).astype(np.uint64)
                r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
                r = np.where(np.isnan(src.data), np.uint16(0x7FC0), r)
                return interp.TensorHandle(r, dst_type.scalar)
            return orig_cast(self, src, dst_type)

        builder.cast_impl = cast_impl
    interp._gdn_shims = True

