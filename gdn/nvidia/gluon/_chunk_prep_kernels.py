"""Gluon kernel body of prefill's first kernel on sm_90 (launcher and contract: chunk_prep.py)."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from gdn.nvidia.gluon._jit import (_add, exp2_ftz, gdc_launch_dependents, inv_norm_gram, log2_ftz, row_sum,
                                   seq_of_slot, split16, split_mma, zero_rows_past)


@gluon.jit
def _softplus(x):
    # The Gluon twin of gdn/common/triton/prefill/chunk_cumsum.py `softplus`: a Gluon kernel cannot call the
    # @triton.jit one, which TRITON_INTERPRET=1 (the CPU test session) replaces (see _jit.row_sum).
    # threshold 20 like the spec; log1p(e) = log(1 + e) * e / ((1 + e) - 1) stays accurate for tiny e
    e = gl.exp(gl.minimum(x, 20.0))
    u = 1.0 + e
    lp = gl.where(u == 1.0, e, gl.log(u) * (e / gl.where(u == 1.0, 1.0, u - 1.0)))
    return gl.where(x > 20.0, x, lp)


@gluon.jit
def _operands(x, y, y_hi_s, y_lo_s, a_op: gl.constexpr, SPLIT: gl.constexpr):
    """The 16-bit operands of x @ y for _mm and _bd_mm: y into its shared tiles (hi + lo parts with SPLIT,
    else rounded into y_hi_s), visible to every warp's wgmma; returns x as wgmma's A in registers (hi, lo;
    without SPLIT the rounded x twice, so both can be named as deps)."""
    DT: gl.constexpr = y_hi_s.dtype
    if SPLIT:
        y_hi, y_lo = split16(y, DT)
        y_hi_s.store(y_hi)
        y_lo_s.store(y_lo)
    else:
        y_hi_s.store(y.to(DT))
    fence_async_shared()
    gl.thread_barrier()
    if SPLIT:
        x_hi, x_lo = split16(x, DT)
        xa_hi = gl.convert_layout(x_hi, a_op)
        xa_lo = gl.convert_layout(x_lo, a_op)
    else:
        xa_hi = gl.convert_layout(x.to(DT), a_op)
        xa_lo = xa_hi
    return xa_hi, xa_lo


@gluon.jit
def _mm(x, y, y_hi_s, y_lo_s, a_op: gl.constexpr, acc_layout: gl.constexpr, K0: gl.constexpr = 0,
        SPLIT: gl.constexpr = True):
    """x @ y[K0:K0 + Kx] for fp32 x [64, Kx] (registers, wgmma's A) and y [64, N] (through the shared tiles
    y_hi_s / y_lo_s [64, N], wgmma's B): both as 16-bit hi + lo parts with the three significant products
    (hi hi + hi lo + lo hi), about 16-bit operands with fp32 accumulation; without SPLIT one product of the
    operands rounded to 16 bits (y_lo_s unused). Returns [64, N] in acc_layout.
    (A from shared memory as well measured slower on an H100: 0.98 vs 0.85 ms for the kernel at 8x4096.)
    No barrier after the MMAs: consecutive calls alternate between pairs of tiles, so a pair is written
    again only after the next call's barrier, which every warp reaches past its wait on this call's MMAs."""
    KX: gl.constexpr = x.shape[1]
    acc = gl.zeros([x.shape[0], y.shape[1]], gl.float32, acc_layout)
    xa_hi, xa_lo = _operands(x, y, y_hi_s, y_lo_s, a_op, SPLIT)
    b_hi = y_hi_s.slice(K0, KX, dim=0)
    b_lo = y_lo_s.slice(K0, KX, dim=0)
    acc = warpgroup_mma(xa_hi, b_hi, acc, use_acc=False, is_async=True)
    if SPLIT:
        acc = warpgroup_mma(xa_hi, b_lo, acc, is_async=True)
        acc = warpgroup_mma(xa_lo, b_hi, acc, is_async=True)
    acc, _, _, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(acc, b_hi, b_lo, xa_hi, xa_lo))
    return acc


@gluon.jit
def _blk(xa_hi, xa_lo, y_hi_s, y_lo_s, b: gl.constexpr, OFF: gl.constexpr, acc_layout: gl.constexpr,
         SPLIT: gl.constexpr):
    """Issue X @ Y_(b - OFF) (three async wgmmas of the hi + lo parts, one without SPLIT) for _bd_mm; zeros
    when b < OFF. Returns (acc, B operands hi, lo): the slices must be deps of the retiring wait."""
    BT: gl.constexpr = xa_hi.shape[0]
    W: gl.constexpr = y_hi_s.shape[1]
    acc = gl.zeros([BT, W], gl.float32, acc_layout)
    b_hi = y_hi_s.slice(0, W, dim=0)
    b_lo = y_lo_s.slice(0, W, dim=0)
    if b >= OFF:
        b_hi = y_hi_s.slice((b - OFF) * W, W, dim=0)
        b_lo = y_lo_s.slice((b - OFF) * W, W, dim=0)
        acc = warpgroup_mma(xa_hi, b_hi, acc, use_acc=False, is_async=True)
        if SPLIT:
            acc = warpgroup_mma(xa_hi, b_lo, acc, is_async=True)
            acc = warpgroup_mma(xa_lo, b_hi, acc, is_async=True)
    return acc, b_hi, b_lo


@gluon.jit
def _bd_mm(x, y, y_hi_s, y_lo_s, a_op: gl.constexpr, acc_layout: gl.constexpr, OFF: gl.constexpr = 0,
           SPLIT: gl.constexpr = True):
    """Products of 16x16 blocks kept as row-stacks: x, y [64, 16] hold blocks X_b, Y_b in rows 16b..16b+15;
    returns the row-stack of X_b @ Y_(b - OFF) (zero rows for b < OFF), with _mm's hi + lo precision.
    A block-diagonal [64, 64] x [64, 16] product as _mm computes it splits 32 values per thread, 24 of them
    zeros; here each warp's rows (one block) are the A operand against each 16-row slice of y's shared tile
    (four [64, 16] x [16, 16] products) and every row keeps the product with its own block's slice.
    SPLIT as _mm's.
    Same tile-pair alternation as _mm (no barrier after the MMAs)."""
    BT: gl.constexpr = x.shape[0]
    W: gl.constexpr = x.shape[1]
    gl.static_assert(BT == 4 * W)
    xa_hi, xa_lo = _operands(x, y, y_hi_s, y_lo_s, a_op, SPLIT)
    c0, h0, l0 = _blk(xa_hi, xa_lo, y_hi_s, y_lo_s, 0, OFF, acc_layout, SPLIT)
    c1, h1, l1 = _blk(xa_hi, xa_lo, y_hi_s, y_lo_s, 1, OFF, acc_layout, SPLIT)
    c2, h2, l2 = _blk(xa_hi, xa_lo, y_hi_s, y_lo_s, 2, OFF, acc_layout, SPLIT)
    c3, h3, l3 = _blk(xa_hi, xa_lo, y_hi_s, y_lo_s, 3, OFF, acc_layout, SPLIT)
    c0, c1, c2, c3 = warpgroup_mma_wait(num_outstanding=0, deps=(c0, c1, c2, c3, h0, l0, h1, l1, h2, l2, h3, l3,
                                                                 xa_hi, xa_lo))[:4]
    blk = gl.arange(0, BT, layout=gl.SliceLayout(1, acc_layout))[:, None] // W
    return gl.where(blk == 0, c0, gl.where(blk == 1, c1, gl.where(blk == 2, c2, c3)))


@gluon.jit
def _block_of_rows(r, W: gl.constexpr, OFF: gl.constexpr, BY_ROW: gl.constexpr):
    """The W-column block each row r of _cols / _place uses: r // W - OFF (BY_ROW), else OFF for all."""
    if BY_ROW:
        p = r // W - OFF
    else:
        p = r * 0 + OFF
    return p


@gluon.jit
def _cols(x, lay3: gl.constexpr, out: gl.constexpr, OFF: gl.constexpr, BY_ROW: gl.constexpr):
    """[64, 64] -> [64, W] (W = lay3's last dim): in row r, the W columns of column block p, where
    p = r // W - OFF (BY_ROW: a row-stack of the blocks OFF below the diagonal) or p = OFF. lay3 is the
    [64, 64 / W, W] view of the accumulator layout with the block axis on registers (the kernel's `blk3`,
    `half3`), so this and _place are register selections, no data exchange."""
    BT: gl.constexpr = x.shape[0]
    W: gl.constexpr = lay3.shape[2]
    NB: gl.constexpr = BT // W
    gl.static_assert(NB == 2 or NB == 4)
    gl.static_assert(BY_ROW or OFF < NB, "_cols: column block OFF past the tile")
    t = gl.convert_layout(gl.reshape(x, [BT, NB, W]), lay3)
    # the blocks as separate tensors (the block axis last, then split: register renames, no instruction), so
    # picking one costs at most a select per element (a masked sum over the block axis cost 4 FSEL + 3 FADD)
    t = gl.permute(t, (0, 2, 1))
    if NB == 4:
        lo, hi = gl.split(gl.reshape(t, [BT, W, 2, 2]))     # blocks (0, 2) and (1, 3)
        b0, b2 = gl.split(lo)
        b1, b3 = gl.split(hi)
    else:
        b0, b1 = gl.split(t)
        b2 = b0             # (never picked: a row's block r // W - OFF is below NB = 2, and OFF < NB above)
        b3 = b0
    if BY_ROW:
        p = _block_of_rows(gl.arange(0, BT, layout=gl.SliceLayout(1, b0.type.layout)), W, OFF, BY_ROW)[:, None]
        y = gl.where(p == 0, b0, gl.where(p == 1, b1, gl.where(p == 2, b2, gl.where(p == 3, b3, 0.0))))
    elif OFF == 0:
        y = b0
    elif OFF == 1:
        y = b1
    elif OFF == 2:
        y = b2
    else:
        y = b3
    return gl.convert_layout(y, out)


@gluon.jit
def _place(y, lay3: gl.constexpr, mma: gl.constexpr, OFF: gl.constexpr, BY_ROW: gl.constexpr):
    """The inverse of _cols: [64, W] -> [64, 64] (mma layout) holding y in those columns, zeros elsewhere."""
    BT: gl.constexpr = y.shape[0]
    W: gl.constexpr = lay3.shape[2]
    t = gl.expand_dims(gl.convert_layout(y, gl.SliceLayout(1, lay3)), 1)
    t = gl.broadcast(t, gl.full([BT, BT // W, W], 0.0, gl.float32, lay3))[0]
    x = gl.convert_layout(gl.reshape(t, [BT, BT]), mma)
    p = _block_of_rows(gl.arange(0, BT, layout=gl.SliceLayout(1, mma)), W, OFF, BY_ROW)
    c = gl.arange(0, BT, layout=gl.SliceLayout(0, mma))
    return gl.where(p[:, None] == (c[None, :] // W), x, 0.0)


@gluon.jit
def _tri_inv16(d_st, d_s, out: gl.constexpr):
    """(I + D)^-1 for the four strictly lower triangular 16x16 blocks D_b kept as the row-stack d_st [64, 16]
    (row 16b + i holds row i of D_b), by forward substitution in fp32 on the CUDA cores: X = I, then for
    j = 0..14 every row i > j takes X_i -= D_ij X_j. Each thread holds one column of one block's X in
    registers (the row axis is per-thread, so the row picks and the i > j masks fold away at compile time) and
    reads D's column j, the same for the whole block, from the shared tile d_s [64, 16] fp32 (broadcast
    loads). About 120 dependent FMAs per thread instead of the tensor-core doubling's six dependent
    products (each a split, a shared store, a barrier and three wgmmas). Returns the row-stack in `out`."""
    L3: gl.constexpr = gl.BlockedLayout([1, 16, 1], [2, 1, 16], [2, 1, 2], [2, 1, 0])
    d_s.store(d_st)
    gl.thread_barrier()
    d3 = d_s.reshape([4, 16, 16])
    i3 = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))[None, :, None]
    c3 = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))[None, None, :]
    b3 = gl.arange(0, 4, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))[:, None, None]
    X = gl.where((i3 == c3) & (b3 >= 0), 1.0, 0.0)      # I in every block ([4, 16, 16] by b3)
    for j in gl.static_range(15):
        dcol = d3.slice(j, 1, dim=2).load(L3)
        xj = row_sum(gl.where(i3 == j, X, 0.0), 1)
        X = gl.where(i3 > j, X - dcol * gl.expand_dims(xj, 1), X)
    return gl.convert_layout(gl.reshape(X, [4 * 16, 16]), out)


@gluon.jit
def _store_rows(acc, desc, ptr, t0, eos, hv, s_t, s_h, blk: gl.constexpr):
    """The [64, D] fp32 tile acc as rows t0.. of head hv of ptr [T, H, D] (16-bit): a whole chunk by TMA
    store through a shared tile (not waited for here), a tail chunk by masked stores (its rows past eos
    belong to the next sequence). The state passes' twin is _jit.store_tile; this kernel on it (its output
    tiles in the dead v and k tiles) measured 1.4% slower on an H100 (8x4096: 0.457 -> 0.464 ms), so it
    keeps its own. Its two tiles get distinct buffers today (compiled: shared offsets 16384 and 0, the v and k
    tiles'), which the in-flight TMA store of u needs; a change here must keep that."""
    BT: gl.constexpr = acc.shape[0]
    D: gl.constexpr = acc.shape[1]
    if t0 + BT <= eos:
        out = gl.allocate_shared_memory(desc.dtype, desc.block_type.shape, desc.layout)
        out.store(acc.to(desc.dtype))
        fence_async_shared()
        gl.thread_barrier()
        tma.async_copy_shared_to_global(desc, [t0.to(gl.int32), hv * D], out)
    else:
        rows = t0 + gl.arange(0, BT, layout=gl.SliceLayout(1, blk))
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, blk))
        gl.store(ptr + rows[:, None] * s_t + hv * s_h + cols[None, :],
                 gl.convert_layout(acc.to(ptr.dtype.element_ty), blk), mask=(rows < eos)[:, None])


@gluon.jit
def chunk_prep_sm90(k_desc, v_desc, w_desc, u_desc, a, b, A_log, dt_bias, g, beta, cu, gcum, w, u, o, rkn, q_desc, rqn,
                    N, T, HV, G, s_gt, s_gh, s_bt, s_bh, s_ct, s_ch, s_wt, s_wh, s_ut, s_uh, s_ot, s_oh, s_rt,
                    RAW: gl.constexpr, L2NORM: gl.constexpr, BLOCK_N: gl.constexpr, num_warps: gl.constexpr,
                    A_OUT: gl.constexpr = False, SOLVE_SPLIT: gl.constexpr = True, TRIGGER: gl.constexpr = False):
    """One CTA (one warpgroup) per (chunk slot, v-head), the v-heads of a slot adjacent (the G v-heads of one
    k tile find it in L2). As the Triton `_prep_kernel` (gdn/common/triton/prefill/prefill.py) without the
    norm buffers:
        gates (raw a, b, A_log, dt_bias or precomputed g, beta), chunk-local cumsum -> g_cum
        A = (I + strict_lower(beta_i rk_i rk_j k_i.k_j exp(gc_i - gc_j)))^-1
        w = A (beta exp(g_cum) rk k),  u = A (beta v)
    and zero output rows past cu_seqlens[-1]; with rkn (else None) also the key norms rk into rkn [T, H] fp32
    (row stride s_rt), rows before the sequence end only; with rqn (and q_desc, q's [64, K] TMA view) the query
    norms likewise into rqn [T, H] (same row stride), for the warp-specialised state pass, whose chain otherwise
    reads a q tile into registers each chunk in every one of its G x V / BV CTAs per k head.
    A_OUT: instead of w and u, A' = A diag(beta) [64, 64] per chunk into w (through w_desc, [T, HV, 64]), for
    the state pass that forms v_new = A' (v - exp(g_cum) rk (k h)) itself (v is then not read here, u and
    u_desc are unused): 8 KB a chunk and v-head written instead of w and u's 32 (K = V = 128).

    k, v arrive by TMA; K K^T is a wgmma on the shared k tile. The solve inverts growing diagonal blocks:
    the 16x16 ones by forward substitution in fp32 (`_tri_inv16`), then 32x32 and 64x64 by
    (I + X E)^-1 X = X - X E X (E the block below the diagonal, (X E)^2 = 0). Each of those products is three
    wgmmas of 16-bit hi + lo parts (SOLVE_SPLIT; else one wgmma of the operands rounded to 16 bits, chunk_prep.py
    has the measurements) and only touches the blocks that can be non-zero: the 16x16 blocks stay
    row-stacks [64, 16] and are multiplied block by block (`_bd_mm`, four [64, 16] x [16, 16] products), the
    last two are [64, 32] x [32, 32] (`_mm`). (On an H100 at 8x4096, two CTAs per SM, with the 16x16 blocks
    still inverted by doubling on the tensor cores: 565 us; 625 with the block products as block-diagonal
    [64, 64] x [64, 16] ones, 672 with dense merge products and 747 with all ten products dense [64, 64] x
    [64, 64]; A operands from shared memory and issuing independent products together were slower with the
    dense products. Three CTAs per SM (chunk_prep.py MAXNREG): 458 us; the substitution then: 415 us.) w and u
    as chunk_wy_sm90 from registers against the shared k and v tiles (u's factor as hi + lo parts, w's in 16
    bits), u stored before w's accumulator.
    Rows past the sequence end: k and v rows zeroed in shared memory, their gates 0, not stored."""
    if TRIGGER:
        # the state pass is launched with PDL: it may be scheduled once every CTA of this grid has started (it
        # waits for this grid's completion before its first read of A', g_cum and the norms)
        gdc_launch_dependents()
    BT: gl.constexpr = k_desc.block_type.shape[0]
    K: gl.constexpr = k_desc.block_type.shape[1]
    V: gl.constexpr = v_desc.block_type.shape[1]
    DT: gl.constexpr = k_desc.dtype
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BT, 16])
    mma_w: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, K, 16])
    mma_u: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, V, 16])
    a_w: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_w, k_width=2)
    a_u: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_u, k_width=2)
    # The solve works on 16- and 32-column blocks: [64, 16] and [64, 32] accumulators, and [64, 64/W, W] views
    # of a [64, 64] accumulator-layout tile (NVMMADistributedLayout v3 bases, 4 warps along rows) with the
    # block axis on registers, so selecting and placing blocks (_cols, _place) needs no data exchange.
    gl.static_assert(num_warps == 4 and BT == 64)
    mma_q: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, 16, 16])
    mma_h: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, 32, 16])
    a_q: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_q, k_width=2)
    a_h: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_h, k_width=2)
    blk3: gl.constexpr = gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1], [8, 0, 0], [0, 0, 8], [0, 1, 0], [0, 2, 0]],
        lane_bases=[[0, 0, 2], [0, 0, 4], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[16, 0, 0], [32, 0, 0]], block_bases=[], shape=[BT, 4, 16])
    half3: gl.constexpr = gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1], [8, 0, 0], [0, 0, 8], [0, 0, 16], [0, 1, 0]],
        lane_bases=[[0, 0, 2], [0, 0, 4], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[16, 0, 0], [32, 0, 0]], block_bases=[], shape=[BT, 2, 32])
    row: gl.constexpr = gl.SliceLayout(1, mma_s)
    col: gl.constexpr = gl.SliceLayout(0, mma_s)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    row_b: gl.constexpr = gl.SliceLayout(1, blk)
    col_b: gl.constexpr = gl.SliceLayout(0, blk)
    lin: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])

    pid = gl.program_id(0)
    s = pid // HV
    hv = pid % HV
    rb = gl.arange(0, BT, layout=row_b)
    o_v = gl.arange(0, V, layout=col_b)

    # rows past the last sequence (unused token budget) get zero output: only the slots reaching past it
    end = gl.load(cu + N).to(gl.int64)
    if s.to(gl.int64) * BT + BT > end:
        tail = s.to(gl.int64) * BT + rb
        gl.store(o + tail[:, None] * s_ot + hv * s_oh + o_v[None, :], gl.zeros([BT, V], o.dtype.element_ty, blk),
                 mask=((tail >= end) & (tail < T))[:, None])

    n, t0, eos = seq_of_slot(cu, N, s, BT, BLOCK_N, num_warps)
    if t0 < eos:
        tr = t0.to(gl.int32)
        k_smem = gl.allocate_shared_memory(DT, k_desc.block_type.shape, k_desc.layout)
        if A_OUT:
            v_smem = k_smem         # (v is not read)
        else:
            v_smem = gl.allocate_shared_memory(DT, v_desc.block_type.shape, v_desc.layout)
        # B operands (hi, lo) of the solve's products, [64, 16] and [64, 32], two pairs each used in turn (_mm)
        q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, 16], DT)
        zh = gl.allocate_shared_memory(DT, [2, BT, 16], q_layout)
        h_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, 32], DT)
        xh = gl.allocate_shared_memory(DT, [2, BT, 32], h_layout)
        # the lo parts only with SOLVE_SPLIT (12 KB: with A' out and the query's tile, they decide between four
        # CTAs per SM and three)
        zl = zh
        xl = xh
        if SOLVE_SPLIT:
            zl = gl.allocate_shared_memory(DT, [2, BT, 16], q_layout)
            xl = gl.allocate_shared_memory(DT, [2, BT, 32], h_layout)
        bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(bar, count=1)
        mbarrier.expect(bar, k_desc.block_type.nbytes + (0 if A_OUT else v_desc.block_type.nbytes))
        tma.async_copy_global_to_shared(k_desc, [tr, (hv // G) * K], bar, k_smem)
        if not A_OUT:
            tma.async_copy_global_to_shared(v_desc, [tr, hv * V], bar, v_smem)
        # the norms for the state pass are stored by one v-head of each k head, which for the query norms also
        # loads q's tile (its own barrier)
        k_lead = hv % G == 0
        if rqn is not None:
            q_smem = gl.allocate_shared_memory(DT, q_desc.block_type.shape, q_desc.layout)
            qbar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
            mbarrier.init(qbar, count=1)
            if k_lead:
                mbarrier.expect(qbar, q_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(q_desc, [tr, (hv // G) * K], qbar, q_smem)

        # gates and their chunk-local cumsum while TMA runs (rows past the end: 0), in a 1-D layout the scan
        # lowering supports, then moved to the MMA rows
        r = gl.arange(0, BT, layout=lin)
        ok = t0 + r < eos
        if RAW:
            x = gl.load(a + (t0 + r) * s_gt + hv * s_gh, mask=ok, other=0.0).to(gl.float32)
            gg = -gl.exp(gl.load(A_log + hv).to(gl.float32)) * _softplus(x + gl.load(dt_bias + hv).to(gl.float32))
            xb = gl.load(b + (t0 + r) * s_bt + hv * s_bh, mask=ok, other=0.0).to(gl.float32)
            bb = 1.0 / (1.0 + gl.exp(-xb))
        else:
            gg = gl.load(g + (t0 + r) * s_gt + hv * s_gh, mask=ok, other=0.0).to(gl.float32)
            bb = gl.load(beta + (t0 + r) * s_bt + hv * s_bh, mask=ok, other=0.0).to(gl.float32)
        gg = gl.where(ok, gg, 0.0)
        bb = gl.where(ok, bb, 0.0)
        gc = gl.associative_scan(gg, 0, _add)
        gl.store(gcum + (t0 + r) * s_ct + hv * s_ch, gc, mask=ok)
        # gc and bb reach the MMA's rows and columns, and the key norms (below) its columns, through one shared
        # round trip and one barrier (five convert_layouts took seven barriers)
        vec_s = gl.allocate_shared_memory(gl.float32, [3, BT], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        vec_s.index(0).store(gc)
        vec_s.index(1).store(bb)
        r = gl.arange(0, BT, layout=row)
        ok = t0 + r < eos

        if rqn is not None:
            if k_lead:
                # Q Q^T's diagonal (rows past the end: whatever q holds there, not stored), before K K^T is
                # issued: no wgmma in flight across this runtime branch
                mbarrier.wait(qbar, 0)
                qt = q_smem.permute((1, 0))
                qq = warpgroup_mma(q_smem, qt, gl.zeros([BT, BT], gl.float32, mma_s), use_acc=False, is_async=True)
                qq, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(qq, q_smem, qt))
                gl.store(rqn + (t0 + r) * s_rt + hv // G, inv_norm_gram(qq, L2NORM), mask=ok)
            mbarrier.invalidate(qbar)
        mbarrier.wait(bar, 0)
        mbarrier.invalidate(bar)
        if t0 + BT > eos:           # tail chunk: rows past the end may be NaN garbage
            zero_rows_past(k_smem, t0, eos, blk)
            if not A_OUT:
                zero_rows_past(v_smem, t0, eos, blk)
        kt = k_smem.permute((1, 0))
        kk = warpgroup_mma(k_smem, kt, gl.zeros([BT, BT], gl.float32, mma_s), use_acc=False, is_async=True)
        kk, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(kk, k_smem, kt))
        # the key norms from K K^T's diagonal, not the [64, K] tile read into registers again (inv_norm: ~64
        # shared loads and conversions and 64 FMAs a thread, in a kernel bound by instruction issue)
        rk = inv_norm_gram(kk, L2NORM)
        vec_s.index(2).store(rk)
        gl.thread_barrier()
        gc = vec_s.index(0).load(row)
        bb = vec_s.index(1).load(row)
        if rkn is not None:
            # the key norms for the state pass, by one v-head of each k head (a mask, not a branch)
            gl.store(rkn + (t0 + r) * s_rt + hv // G, rk, mask=ok & k_lead)

        c = gl.arange(0, BT, layout=col)
        gc_c = vec_s.index(0).load(col)
        rk_c = vec_s.index(2).load(col)
        # strictly lower only: a row past the sequence end has beta 0, so R = -inf and its N row is 0, and a
        # column past the end lies right of every valid row's diagonal (its C is finite: g_cum flat there and
        # rk = rsqrt(1e-6) on the zeroed k row), so masking rows and columns past the end changes no bit
        low = r[:, None] > c[None, :]
        # beta_i rk_i rk_j exp(gc_i - gc_j) as exp2(R_i + C_j): per element an add, a select, an ex2 and the
        # product with kk (rows with beta = 0 get R = -inf, so 0). Against three products, a subtraction and
        # gl.exp per element: this kernel 55.5 -> 51.7 us at 1x4096, 395 -> 377 at 8x4096, 389 -> 363 at
        # 1x32768 (H100, 2026-11-23, same process; outputs' error against float64 unchanged)
        LOG2E: gl.constexpr = 1.4426950408889634
        er = gc * LOG2E + log2_ftz(bb * rk)
        ec = log2_ftz(rk_c) - gc_c * LOG2E
        nm = kk * exp2_ftz(gl.where(low, er[:, None] + ec[None, :], float("-inf")))
        # A's per-token column factors for u and w, taken now: column vectors cost 16 registers each in
        # this layout, and gc_c, rk_c kept live across the solve pushed it past 168 registers
        bc = vec_s.index(1).load(col)
        wc = bc * gl.exp(gc_c) * rk_c

        # A = (I + N)^-1 on growing diagonal blocks. The 16x16 ones by forward substitution on the CUDA cores
        # (_tri_inv16), kept as row-stacks [64, 16] (row r holds its block's row: N's diagonal blocks are
        # _cols(nm, .., 0, True)). They were six dependent block products by doubling, (I + D)^-1 =
        # (I - D)(I + D^2)(I + D^4)(I + D^8), each a wgmma round trip: 2956 of a lone CTA's 13950 cycles (H100,
        # clock64 per phase); the substitution took this kernel from 62.2 to 57.0 us at 1x4096, 468.6 -> 415.1
        # at 8x4096, 449.4 -> 409.4 at 1x32768, 483.0 -> 455.1 at 64x512 (2026-11-23, same process), with the
        # outputs' error against the float64 recurrence unchanged.
        rq = gl.arange(0, BT, layout=gl.SliceLayout(1, mma_q))
        d_s = gl.allocate_shared_memory(gl.float32, [BT, 16], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        xi_st = _tri_inv16(_cols(nm, blk3, mma_q, 0, True), d_s, mma_q)
        # 32x32 blocks: with E1 = N's blocks (1,0) and (3,2), (xi E1)^2 = 0, so X32 = xi - xi E1 xi; as row-stacks
        # P_b = X_b E1_b, then P_b X_(b-1), placed one block below the diagonal
        odd = ((rq // 16) % 2) == 1
        e1_st = gl.where(odd[:, None], _cols(nm, blk3, mma_q, 1, True), 0.0)
        p_st = _bd_mm(xi_st, e1_st, zh.index(0), zl.index(0), a_q, mma_q, SPLIT=SOLVE_SPLIT)
        p_st = _bd_mm(p_st, xi_st, zh.index(1), zl.index(1), a_q, mma_q, OFF=1, SPLIT=SOLVE_SPLIT)
        x32 = _place(xi_st, blk3, mma_s, 0, True) - _place(p_st, blk3, mma_s, 1, True)
        # 64x64: with E2 = N[32:, :32], A = X32 - X32[:, 32:] E2 X32[:32, :32] in the lower-left quadrant:
        # two [64, 32] x [32, 32] MMAs (the upper rows of the first are zeros)
        q = _mm(_cols(x32, half3, mma_h, 1, False), _cols(nm, half3, mma_h, 0, False), xh.index(0), xl.index(0),
                a_h, mma_h, K0=32, SPLIT=SOLVE_SPLIT)
        q = _mm(q, _cols(x32, half3, mma_h, 0, False), xh.index(1), xl.index(1), a_h, mma_h, SPLIT=SOLVE_SPLIT)
        ai = x32 - _place(q, half3, mma_s, 0, False)

        if A_OUT:
            # A' = A diag(beta): rows past the sequence end are not stored (the state pass masks them)
            _store_rows(ai * bc[None, :], w_desc, w, t0, eos, hv, s_wt, s_wh, blk)
        else:
            # w and u (chunk_wy_sm90): A's per-token column factors folded in, against v and k; u's factor as
            # hi + lo parts, w's rounded to 16 bits (one MMA). w meets the state only through w h, whose h is
            # 16-bit already: on an H100 (2026-11-23, 1x4096 / 3x777 against the float64 recurrence) w's split
            # bought nothing (output error 3.40e-3 either way) and cost 1.3% at 1x4096 and 2.5% at 8x4096
            # (prefill 147.0 -> 145.1 us, 913.5 -> 890.8); u's split matters (without it 3.79e-3, state
            # 2.45e-3 -> 2.97e-3).
            u_acc, ua_hi, ua_lo = split_mma(ai * bc[None, :], v_smem, gl.zeros([BT, V], gl.float32, mma_u), a_u,
                                            False)
            u_acc, _, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(u_acc, v_smem, ua_hi, ua_lo))
            # u stored before w's accumulator goes live: one [64, 128] fp32 accumulator at a time (registers);
            # a whole chunk's u leaves by TMA while w's product runs
            _store_rows(u_acc, u_desc, u, t0, eos, hv, s_ut, s_uh, blk)
            wa = gl.convert_layout((ai * wc[None, :]).to(DT), a_w)
            w_acc = warpgroup_mma(wa, k_smem, gl.zeros([BT, K], gl.float32, mma_w), use_acc=False, is_async=True)
            w_acc, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(w_acc, k_smem, wa))
            _store_rows(w_acc, w_desc, w, t0, eos, hv, s_wt, s_wh, blk)
        tma.store_wait(0)
