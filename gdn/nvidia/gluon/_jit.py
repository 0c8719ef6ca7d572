"""Gluon device helpers shared by the prefill kernels (imported only when a kernel is launched or compiled)."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def row_sum(x, axis: gl.constexpr):
    """gl.sum with a Gluon combine function: gl.sum's own is a @triton.jit function, which TRITON_INTERPRET=1
    (set by the CPU test session) replaces, and an in-process CPU compile of these kernels then fails."""
    return gl.reduce(x, axis, _add)


@gluon.jit
def seq_of_slot(cu, N, s, CHUNK: gl.constexpr, BLOCK_N: gl.constexpr, num_warps: gl.constexpr):
    """Chunk slot s -> (n, t0, eos): sequence n, first token t0 of the chunk, end of the sequence (int64).
    The slot holds a chunk iff t0 < eos. Same rule as gdn/common/triton/prefill/_common.py: sequence n's
    first slot is cu[n] // CHUNK + n, so n is the number of sequences whose first slot is <= s, minus one.
    (Taking cu[n], cu[n + 1] out of the first load by max/min reductions instead of a second round trip was
    measured: no gain in the first kernel at 8x4096 or 1x4096, 64x512 0.484 -> 0.505 ms on an H100.)"""
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
    cnt = gl.to_tensor(0)
    for i in range(0, N, BLOCK_N):
        o = i + gl.arange(0, BLOCK_N, layout=lay)
        m = o < N
        first = gl.load(cu + o, mask=m, other=0).to(gl.int64) // CHUNK + o
        cnt += row_sum((m & (first <= s)).to(gl.int32), 0)
    n = cnt - 1
    bos = gl.load(cu + n).to(gl.int64)
    eos = gl.load(cu + n + 1).to(gl.int64)
    t0 = bos + (s - (bos // CHUNK + n)).to(gl.int64) * CHUNK
    return n, t0, eos


@gluon.jit
def exp2_ftz(x):
    """2^x by one MUFU.EX2 (ex2.approx.ftz.f32; -inf gives 0). gl.exp2 lowers to the non-ftz form, whose
    denormal handling adds a compare and two predicated multiplies per element."""
    return gl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def barrier_ring(n: gl.constexpr, count: gl.constexpr):
    """n mbarriers in shared memory ([n, 1]: a stage or ring slot's barrier is .index(i)), each initialised to
    expect `count` arrivals a phase."""
    bars = gl.allocate_shared_memory(gl.int64, [n, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(n):
        mbarrier.init(bars.index(i), count=count)
    return bars


@gluon.jit
def opaque_zero():
    """An int32 0 the compiler cannot see through (a non-pure inline asm): index math offset by it is not hoisted
    out of a loop around it and kept live across the loop body (a persistent or long-lived partition's registers)."""
    return gl.inline_asm_elementwise("mov.b32 $0, 0;", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def log2_ftz(x):
    """log2(x) by one MUFU.LG2 (lg2.approx.ftz.f32; 0 gives -inf). gl.log2 lowers to libdevice's software
    log2 (about fifteen FMAs an element)."""
    return gl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def inv_norm(x_smem, USE: gl.constexpr, layout: gl.constexpr):
    """rsqrt(sum(x^2) + 1e-6) per row of the 16-bit tile in x_smem, fp32 in SliceLayout(1, layout) (ones when
    not USE). The kernels keep q and k raw in shared memory (the MMA operands stay the exact inputs) and apply
    the l2 normalisation as row/column factors of the products."""
    if USE:
        x = x_smem.load(layout).to(gl.float32)
        r = gl.rsqrt(row_sum(x * x, 1) + 1e-6)
    else:
        r = gl.full([x_smem.shape[0]], 1.0, gl.float32, layout=gl.SliceLayout(1, layout))
    return r


@gluon.jit
def inv_norm_gram(gram, USE: gl.constexpr):
    """inv_norm's rows from the Gram matrix x x^T [64, 64] fp32 already in registers (an MMA accumulator, layout
    L): rsqrt(diag + 1e-6) in SliceLayout(1, L), a select-sum per row instead of reading x's tile again (the
    products of 16-bit values are exact in fp32; only the summation order differs)."""
    L: gl.constexpr = gram.type.layout
    r = gl.arange(0, gram.shape[0], layout=gl.SliceLayout(1, L))
    if USE:
        c = gl.arange(0, gram.shape[1], layout=gl.SliceLayout(0, L))
        out = gl.rsqrt(row_sum(gl.where(r[:, None] == c[None, :], gram, 0.0), 1) + 1e-6)
    else:
        out = gl.full([gram.shape[0]], 1.0, gl.float32, layout=gl.SliceLayout(1, L))
    return out


@gluon.jit
def zero_rows_past(x_smem, t0, eos, layout: gl.constexpr):
    """Zero the rows of a [64, D] TMA tile at or past token eos (tile row 0 is token t0), then make the stores
    visible to the async proxy (wgmma) of every warp. A tail chunk's tile holds the next sequence's rows or,
    past cu_seqlens[-1], whatever the buffer holds: their MMA weights are zero, but 0 * NaN is NaN."""
    x = x_smem.load(layout)
    rows = t0 + gl.arange(0, x_smem.shape[0], layout=gl.SliceLayout(1, layout))
    x_smem.store(gl.where((rows < eos)[:, None], x, gl.zeros_like(x)))
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def split16(x, DT: gl.constexpr):
    """fp32 x -> (hi, lo) in the 16-bit type DT, hi + lo = x to about 16 mantissa bits. For bf16, hi is x's
    top 16 bits (truncation) and only lo is converted: a rounding conversion of hi, needed again in fp32 for
    the remainder, compiles to single-element F2F instructions, whose narrow pipe bound the first kernel (ncu
    on an H100: 15% of its stall samples)."""
    if DT == gl.bfloat16:
        xb = x.to(gl.uint32, bitcast=True)
        hi = (xb >> 16).to(gl.uint16).to(gl.bfloat16, bitcast=True)
        lo = (x - (xb & 0xFFFF0000).to(gl.float32, bitcast=True)).to(DT)
    else:
        hi = x.to(DT)
        lo = (x - hi.to(gl.float32)).to(DT)
    return hi, lo


@gluon.jit
def split_mma(a, b_smem, acc, a_op: gl.constexpr, use_acc: gl.constexpr = True):
    """Issue acc + a @ b as two async wgmmas: the fp32 register tile a as its two 16-bit parts (split16) in the
    register-operand layout a_op, against the 16-bit shared tile b. The factor (a triangular inverse, attention
    scores) then loses nothing next to b's own rounding. Returns (acc, a_hi, a_lo): the parts, like b, must
    be deps of the wait that retires the MMAs."""
    hi, lo = split16(a, b_smem.dtype)
    a_hi = gl.convert_layout(hi, a_op)
    a_lo = gl.convert_layout(lo, a_op)
    acc = warpgroup_mma(a_hi, b_smem, acc, use_acc=use_acc, is_async=True)
    acc = warpgroup_mma(a_lo, b_smem, acc, is_async=True)
    return acc, a_hi, a_lo


@gluon.jit
def store_rows(acc, ptr, t0, eos, hv, v0, s_t, s_h, layout: gl.constexpr):
    """acc [64, D] (in `layout`) as rows t0.. (those before eos) of head hv, columns v0.. of ptr [T, H, *], by
    masked stores. The [64, D] offsets are made here, not kept across a caller's chunk loop (registers)."""
    r = gl.arange(0, acc.shape[0], layout=gl.SliceLayout(1, layout))
    cv = v0 + gl.arange(0, acc.shape[1], layout=gl.SliceLayout(0, layout))
    p = ptr + t0.to(gl.int64) * s_t + hv * s_h
    gl.store(p + r[:, None] * s_t + cv[None, :], acc.to(ptr.dtype.element_ty), mask=(t0 + r < eos)[:, None])


@gluon.jit
def store_tile(acc, tile_s, desc, ptr, t0, eos, hv, v0, s_t, s_h, D: gl.constexpr, layout: gl.constexpr):
    """A chunk's output tile acc [64, BD] (fp32) into rows t0.., columns hv * D + v0.. of ptr [T, H, D]: for a
    whole chunk by TMA store through the shared tile tile_s when desc (a [64, BD] view of ptr) is given, not
    waited for here (the caller waits before tile_s is written again); otherwise, and for a tail chunk (its
    rows past eos belong to the next sequence), by masked stores from `layout` (acc converted to it)."""
    # (desc is None tested on its own: a Python bool set under it is not a compile-time condition in Gluon)
    if desc is not None:
        if t0 + acc.shape[0] <= eos:
            tile_s.store(acc.to(desc.dtype))
            fence_async_shared()
            gl.thread_barrier()
            tma.async_copy_shared_to_global(desc, [t0.to(gl.int32), hv * D + v0], tile_s)
        else:
            store_rows(gl.convert_layout(acc.to(ptr.dtype.element_ty), layout), ptr, t0, eos, hv, v0, s_t, s_h,
                       layout)
    else:
        store_rows(gl.convert_layout(acc.to(ptr.dtype.element_ty), layout), ptr, t0, eos, hv, v0, s_t, s_h, layout)


# Programmatic dependent launch between prefill's two kernels (gdn/common/launch.py has the host side): the first
# kernel lets the pass be scheduled once all its CTAs have started, the pass waits for it before reading its output.
@gluon.jit
def gdc_launch_dependents():
    """griddepcontrol.launch_dependents: once every CTA of this grid has run it (or exited), the next kernel on
    the stream, if launched with programmatic stream serialization (launch_pdl), may start."""
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32, is_pure=False,
                              pack=1)


@gluon.jit
def gdc_wait():
    """griddepcontrol.wait: block until the previous kernel on the stream has completed and its writes are
    visible (a no-op for a kernel launched without launch_pdl)."""
    gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
