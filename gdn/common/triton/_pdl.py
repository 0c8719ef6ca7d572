"""Programmatic dependent launch (PDL), device side: the prologue of a kernel that `launch(..., pdl=True)` runs.

With PDL (NVIDIA sm_90+) the kernel can start while the previous kernel on the stream is still running.
`griddepcontrol.wait` blocks until that kernel has finished and its writes are visible, so it comes before
the kernel's first global access, loads of indices included (we cannot know what the previous kernel
wrote, nor whether it still reads what we write). The one exception is a hint: the decode kernel reads its
slot index speculatively (L2 only) to prefetch its state tile into L2 before the wait, and reads both for
real after it (gdn/common/triton/decode.py `_prefetch_tile`). `griddepcontrol.launch_dependents` then lets the next
PDL kernel be scheduled as soon as all our CTAs have started; it still waits for us in its own prologue.
Both are inline PTX: with PDL False (AMD, the interpreter, sm_80, GDN_PDL=0) the code is not traced.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pdl_prologue(PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
