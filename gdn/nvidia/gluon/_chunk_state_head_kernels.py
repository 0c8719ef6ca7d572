"""Gluon kernel body of the head pass: the state pass with the output fused, one CTA per (sequence, v-head) owning
all V = 128 state columns, the state held transposed (launcher: chunk_state.py, `launch_state_output` with cfg HEAD).

Why: the warp-specialised pass (_chunk_state_ws_kernels.py) splits a head's columns over 2-4 CTAs, and each of them
forms the chunk's scores q k^T again; its chain also stores h and x to shared memory every chunk for MMAs that read
them back. Here two math warpgroups hold S^T [64, K] each (v columns 64w.., all K key rows) as their accumulator, so
every product of the chain takes its A operand from registers (FlashAttention-3 feeds P so):
    (k h)^T = S^T k^T,   v_new^T = x^T A'^T,   S^T <- exp(g_last) S^T + (v_new * rk * f)^T k,
    o^T = cfo * (S^T q^T) + v_new^T P'^T,
with k, k^T, q^T, A'^T and P'^T read from shared tiles (wgmma reads either major order of a 16-bit tile). A scores
warpgroup forms the chunk's decayed scores P' once per head, P'_ij = causal(q_i k_j) exp2(lg_i + lq_i - lg_j) rk_j
(lg = g_cum log2 e, lq = log2(rq scale)), and the per-token vectors the math needs (a = exp(gc) rk, rk f with
f = exp(g_last - gc), cfo = exp2(lg + lq), exp(g_last)); it also zeroes a tail chunk's rows past the sequence end in
the k, v and A' tiles before the math reads them. A loader warp brings each chunk's tiles by TMA.

Registers: 16 warps' worth (4 warpgroups: the loader warp counts as one) at 128 each, redistributed by setmaxnreg
to 192 + 192 for the math (S^T alone is 64 a thread; below ~184 ptxas serialises the wgmmas, note C7512), 104 for
the scores and 24 for the loader."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from gdn.nvidia.gluon._chunk_state_kernels import G_TILE, _decays_tma, _pass_of, norm_tiles, tile_col
from gdn.nvidia.gluon._jit import (barrier_ring, exp2_ftz, gdc_wait, inv_norm, log2_ftz, opaque_zero, row_sum,
                                   zero_rows_past)

LOG2E: gl.constexpr = gl.constexpr(1.4426950408889634)
NVEC: gl.constexpr = gl.constexpr(4)      # per-token vectors per ring slot: a, rk f, cfo, exp(g_last)


@gluon.jit
def _pool_ptrs_t(state, slot, hv, v0, s_ps, s_ph, s_pk, s_pv, BV: gl.constexpr, K: gl.constexpr,
                 layout: gl.constexpr):
    """Pointers of the pool slot's state columns v0.. as S^T [BV, K] (rows: v; the strides give the layout): a
    64-bit base and 32-bit offsets (64-bit ones for the whole tile would not fit beside S^T)."""
    rv = v0 + gl.arange(0, BV, layout=gl.SliceLayout(1, layout))
    ck = gl.arange(0, K, layout=gl.SliceLayout(0, layout))
    return (state + slot * s_ps + hv * s_ph) + (rv[:, None] * s_pv + ck[None, :] * s_pk)


@gluon.jit
def _loader(k_desc, q_desc, v_desc, a_desc, g_desc, rk_desc, rq_desc, ready, empty, k_s, q_s, v_s, a_s, g_s, rk_s,
            rq_s, bos, NCL, hv, hk, K: gl.constexpr, V: gl.constexpr, PDL: gl.constexpr):
    """One warp: chunk c's k, q [64, K], v [64, V] (as two [64, V / 2] tiles, one per math warpgroup), A' [64, 64],
    g_cum and norm [64, 4] tiles into stage c % STAGES once its three readers released it (empty). PDL: wait for
    prefill's first kernel (which writes A', g_cum and the norms) before the first TMA."""
    STAGES: gl.constexpr = k_s.shape[0]
    BT: gl.constexpr = k_s.shape[1]
    HALF: gl.constexpr = v_s.shape[2]
    nbytes: gl.constexpr = (2 * k_desc.block_type.nbytes + 2 * v_desc.block_type.nbytes + a_desc.block_type.nbytes
                            + g_desc.block_type.nbytes + (0 if rk_desc is None else rk_desc.block_type.nbytes)
                            + (0 if rq_desc is None else rq_desc.block_type.nbytes))
    if PDL:
        gdc_wait()
    for c in range(0, NCL):
        b = c % STAGES
        t0 = bos + c * BT
        mbarrier.wait(empty.index(b), ((c // STAGES) & 1) ^ 1)
        bar = ready.index(b)
        mbarrier.expect(bar, nbytes)
        tma.async_copy_global_to_shared(k_desc, [t0, hk * K], bar, k_s.index(b))
        tma.async_copy_global_to_shared(q_desc, [t0, hk * K], bar, q_s.index(b))
        tma.async_copy_global_to_shared(v_desc, [t0, hv * V], bar, v_s.index(2 * b))
        tma.async_copy_global_to_shared(v_desc, [t0, hv * V + HALF], bar, v_s.index(2 * b + 1))
        tma.async_copy_global_to_shared(a_desc, [t0, hv * BT], bar, a_s.index(b))
        # ([64, 4] fp32 boxes: 16-byte column offsets)
        tma.async_copy_global_to_shared(g_desc, [t0, hv - hv % 4], bar, g_s.index(b))
        if rk_desc is not None:
            tma.async_copy_global_to_shared(rk_desc, [t0, hk - hk % 4], bar, rk_s.index(b))
        if rq_desc is not None:
            tma.async_copy_global_to_shared(rq_desc, [t0, hk - hk % 4], bar, rq_s.index(b))


@gluon.jit
def _scores(ready, empty, p_ready, p_free, k_s, q_s, v_s, a_s, g_s, rk_s, rk_desc, rq_s, rq_desc, p_s, vec_s, scale,
            hv, hk, bos, eos, NCL, L2NORM: gl.constexpr):
    """The scores warpgroup, per chunk: a tail chunk's rows past eos zeroed in the k, v and A' tiles; P' [64, 64]
    (module docstring) into ring slot c % RING of p_s, and the per-token vectors into vec_s rows NVEC j..; then the
    slot is handed to both math warpgroups (p_ready) and the stage released on this side (its q tile is read only
    here)."""
    STAGES: gl.constexpr = k_s.shape[0]
    RING: gl.constexpr = p_s.shape[0]
    BT: gl.constexpr = k_s.shape[1]
    DT: gl.constexpr = k_s.dtype
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BT, 16])
    row: gl.constexpr = gl.SliceLayout(1, mma)
    col: gl.constexpr = gl.SliceLayout(0, mma)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    # q's tile read for its row norms in the layout of a [64, K] accumulator (ldmatrix): its rows sit on the threads
    # that hold them in `row`, so the sum is in-thread plus two shuffles and needs no shared round trip (a blocked
    # layout took 8 more shuffles and a barrier). This warpgroup's work sets the pace on an H200: this pass 0.332 ->
    # 0.328 ms at 8x4096, 0.425 -> 0.422 at 64x512 (H100: unchanged; 2026-11-24, bench/wip/module_ab.py); with
    # no norms at all (q, k normalised by the caller) it runs 0.293 there, 0.356 on the H100
    rows_k: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, q_s.shape[2], 16])
    r = gl.arange(0, BT, layout=row)
    tri = r[:, None] >= gl.arange(0, BT, layout=col)[None, :]
    for c in range(0, NCL):
        b = c % STAGES
        j = c % RING
        t0 = bos + c * BT
        k_b = k_s.index(b)
        q_b = q_s.index(b)
        mbarrier.wait(ready.index(b), (c // STAGES) & 1)
        if t0 + BT > eos:
            zero_rows_past(k_b, t0, eos, blk)
            zero_rows_past(v_s.index(2 * b), t0, eos, blk)
            zero_rows_past(v_s.index(2 * b + 1), t0, eos, blk)
            zero_rows_past(a_s.index(b), t0, eos, blk)
        kt = k_b.permute((1, 0))
        s = warpgroup_mma(q_b, kt, gl.zeros([BT, BT], gl.float32, mma), use_acc=False, is_async=True)
        # the chunk's vectors in the product's shadow
        gc, g_last = _decays_tma(g_s.index(b), t0, eos, hv, row, G_TILE)
        valid = t0 + r < eos
        # the norms from the first kernel's [64, 4] tiles, or from the k and q tiles (ones without L2NORM)
        if rk_desc is not None:
            rk = tile_col(rk_s.index(b), hk, row, G_TILE)
        else:
            rk = gl.convert_layout(inv_norm(k_b, L2NORM, blk), row)
        if rq_desc is not None:
            rq = tile_col(rq_s.index(b), hk, row, G_TILE)
        else:
            rq = gl.convert_layout(inv_norm(q_b, L2NORM, rows_k), row)
        rk = gl.where(valid, rk, 0.0)           # (rows past eos: whatever the norms buffer holds)
        lg = gc * LOG2E
        e_row = lg + log2_ftz(rq * scale)
        e_col = gl.convert_layout(log2_ftz(rk) - lg, col)
        a = gl.exp(gc) * rk
        rkf = rk * gl.exp(g_last - gc)
        cfo = exp2_ftz(e_row)
        eg = gl.full([BT], 1.0, gl.float32, row) * gl.exp(g_last)
        # ring slot j is free once both math warpgroups have retired chunk c - RING's products on it
        mbarrier.wait(p_free.index(j), ((c // RING) & 1) ^ 1)
        vec_s.index(NVEC * j).store(a)
        vec_s.index(NVEC * j + 1).store(rkf)
        vec_s.index(NVEC * j + 2).store(cfo)
        vec_s.index(NVEC * j + 3).store(eg)
        s, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(s, q_b, kt))
        # (a select, not a product: rows and columns past eos may be NaN or inf)
        p = gl.where(tri, s * exp2_ftz(gl.where(tri, e_row[:, None] + e_col[None, :], 0.0)), 0.0)
        p_s.index(j).store(p.to(DT))
        fence_async_shared()
        gl.thread_barrier()
        mbarrier.arrive(p_ready.index(j))
        mbarrier.arrive(empty.index(b))


@gluon.jit
def _math(ready, empty, p_ready, p_free, k_s, q_s, v_s, a_s, p_s, vec_s, o_s, o_desc, o, state, state_indices,
          has_init, n, hv, bos, eos, NC, slot, s_ps, s_ph, s_pk, s_pv, s_ot, s_oh, W: gl.constexpr, V: gl.constexpr):
    """Math warpgroup W: state columns v0 = W V / 2 .. of the (sequence, v-head), S^T [V / 2, K] in registers,
    four dependent steps a chunk on the chain (k h, A' x, the update) and the output beside them (module
    docstring). A skipped sequence (slot < 0): zero output rows, the pool untouched."""
    STAGES: gl.constexpr = k_s.shape[0]
    RING: gl.constexpr = p_s.shape[0]
    BT: gl.constexpr = k_s.shape[1]
    K: gl.constexpr = k_s.shape[2]
    BV: gl.constexpr = v_s.shape[2]
    DT: gl.constexpr = k_s.dtype
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BT, 16])
    mma_k: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, K, 16])
    op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    op_k: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_k, k_width=2)
    col: gl.constexpr = gl.SliceLayout(0, mma)
    one: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    v0 = W * BV
    o_w = o_s.index(W)
    if slot < 0:
        for c in range(0, NC):
            _store_ot(gl.zeros([BV, BT], gl.float32, mma), o_w, None, o, bos + c * BT, eos, hv, v0, s_ot, s_oh, V,
                      mma)
    else:
        S = gl.zeros([BV, K], gl.float32, mma_k)
        start = True
        if has_init is not None:
            start = gl.load(has_init + n) != 0
        if start:
            S = gl.load(_pool_ptrs_t(state, slot, hv, v0, s_ps, s_ph, s_pk, s_pv, BV, K, mma_k)).to(gl.float32)
        for c in range(0, NC):
            b = c % STAGES
            j = c % RING
            t0 = bos + c * BT
            k_b = k_s.index(b)
            kt = k_b.permute((1, 0))
            qt = q_s.index(b).permute((1, 0))
            at = a_s.index(b).permute((1, 0))
            pt = p_s.index(j).permute((1, 0))
            mbarrier.wait(ready.index(b), (c // STAGES) & 1)
            mbarrier.wait(p_ready.index(j), (c // RING) & 1)
            Sb = gl.convert_layout(S.to(DT), op)
            kh = warpgroup_mma(Sb, kt, gl.zeros([BV, BT], gl.float32, mma), use_acc=False, is_async=True)
            acc_o = warpgroup_mma(Sb, qt, gl.zeros([BV, BT], gl.float32, mma), use_acc=False, is_async=True)
            # both retired here: Sb's registers (an in-flight wgmma's operand) would not fit beside the rest, nor
            # v^T and the row factor a of k h loaded in their shadow
            kh, acc_o, _, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(kh, acc_o, Sb, kt, qt))
            vt = v_s.index(2 * b + W).permute((1, 0)).load(mma)
            a = vec_s.index(NVEC * j).load(col)
            xb = gl.convert_layout((vt.to(gl.float32) - kh * a[None, :]).to(DT), op)
            vn = warpgroup_mma(xb, at, gl.zeros([BV, BT], gl.float32, mma), use_acc=False, is_async=True)
            # in its shadow: the state's decay over the chunk
            eg = row_sum(vec_s.index(NVEC * j + 3).slice(0, 1).load(one), 0)
            S = S * eg
            vn, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(vn, xb, at))
            rkf = vec_s.index(NVEC * j + 1).load(col)
            ub = gl.convert_layout((vn * rkf[None, :]).to(DT), op_k)
            S = warpgroup_mma(ub, k_b, S, is_async=True)
            cfo = vec_s.index(NVEC * j + 2).load(col)
            nb = gl.convert_layout(vn.to(DT), op)
            acc_o = warpgroup_mma(nb, pt, acc_o * cfo[None, :], is_async=True)
            S, acc_o, _, _, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(S, acc_o, ub, k_b, nb, pt))
            # every warp of this warpgroup is past its reads of stage b and ring slot j
            gl.thread_barrier()
            mbarrier.arrive(empty.index(b))
            mbarrier.arrive(p_free.index(j))
            _store_ot(acc_o, o_w, o_desc, o, t0, eos, hv, v0, s_ot, s_oh, V, mma)
        if o_desc is not None:
            tma.store_wait(0)
        # offsets made after the loop (hoisted, the initial load's would be kept live across it and spilled)
        gl.store(_pool_ptrs_t(state, slot, hv, v0 + opaque_zero(), s_ps, s_ph, s_pk, s_pv, BV, K, mma_k),
                 S.to(state.dtype.element_ty))


@gluon.jit
def _store_ot(acc, o_w, o_desc, o, t0, eos, hv, v0, s_ot, s_oh, V: gl.constexpr, layout: gl.constexpr):
    """o^T [BV, 64] (fp32, in `layout`) as rows t0.. of o's head hv, columns v0..: a whole chunk by TMA store
    through the transposed view of o_w (the previous chunk's store waited for first), a tail chunk (its rows past
    eos belong to the next sequence) or no o_desc by masked stores."""
    if o_desc is not None:
        if t0 + acc.shape[1] <= eos:
            tma.store_wait(0)
            o_w.permute((1, 0)).store(acc.to(o_desc.dtype))
            fence_async_shared()
            gl.thread_barrier()
            tma.async_copy_shared_to_global(o_desc, [t0.to(gl.int32), hv * V + v0], o_w)
        else:
            _store_rows_t(acc, o, t0, eos, hv, v0, s_ot, s_oh, layout)
    else:
        _store_rows_t(acc, o, t0, eos, hv, v0, s_ot, s_oh, layout)


@gluon.jit
def _store_rows_t(acc, o, t0, eos, hv, v0, s_ot, s_oh, layout: gl.constexpr):
    """o^T [BV, 64] as the rows t0.. of o before eos (masked stores)."""
    z = opaque_zero()           # (the offsets made here, not hoisted out of the caller's loop and kept live)
    cv = v0 + z + gl.arange(0, acc.shape[0], layout=gl.SliceLayout(1, layout))
    rt = z + gl.arange(0, acc.shape[1], layout=gl.SliceLayout(0, layout))
    p = o + t0.to(gl.int64) * s_ot + hv * s_oh
    gl.store(p + rt[None, :] * s_ot + cv[:, None], acc.to(o.dtype.element_ty), mask=(t0 + rt < eos)[None, :])


@gluon.jit
def chunk_state_output_head_sm90(k_desc, q_desc, v_desc, a_desc, g_desc, rk_desc, rq_desc, state, state_indices, cu,
                                 has_init, o, o_desc, HV, G, scale, s_ps, s_ph, s_pk, s_pv, s_ot, s_oh,
                                 V: gl.constexpr, L2NORM: gl.constexpr, STAGES: gl.constexpr, RING: gl.constexpr,
                                 PDL: gl.constexpr = False):
    """o [T, HV, V] and the final states of the A path (A' [T, HV, 64] and v from prefill's first kernel), one CTA per
    (sequence, v-head): grid N * HV. rk_desc, rq_desc: the key and query norms [T, H] as prefill's first kernel
    writes them, or None: the scores warpgroup takes them from the k and q tiles (L2NORM; ones without it).
    mbarriers: per stage ready (TMA bytes) and empty (the scores and both math warpgroups released it); per ring slot
    p_ready (the scores warpgroup's P' and vectors) and p_free (both math warpgroups done with them).
    PDL: as the warp-specialised pass's (the loader waits for the first kernel; every CTA waits before it ends)."""
    BT: gl.constexpr = k_desc.block_type.shape[0]
    K: gl.constexpr = k_desc.block_type.shape[1]
    BV: gl.constexpr = v_desc.block_type.shape[1]
    DT: gl.constexpr = k_desc.dtype
    tile: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BT], DT)
    vec: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    k_s = gl.allocate_shared_memory(DT, [STAGES, BT, K], k_desc.layout)
    q_s = gl.allocate_shared_memory(DT, [STAGES, BT, K], q_desc.layout)
    v_s = gl.allocate_shared_memory(DT, [2 * STAGES, BT, BV], v_desc.layout)
    a_s = gl.allocate_shared_memory(DT, [STAGES, BT, BT], a_desc.layout)
    g_s = gl.allocate_shared_memory(g_desc.dtype, [STAGES] + g_desc.block_type.shape, g_desc.layout)
    rk_s, rq_s = norm_tiles(rk_desc, rq_desc, STAGES, g_s)
    p_s = gl.allocate_shared_memory(DT, [RING, BT, BT], tile)
    vec_s = gl.allocate_shared_memory(gl.float32, [NVEC * RING, BT], vec)
    o_s = p_s           # placeholder when o goes out by plain stores
    if o_desc is not None:
        o_s = gl.allocate_shared_memory(o_desc.dtype, [2] + o_desc.block_type.shape, o_desc.layout)
    ready = barrier_ring(STAGES, 1)
    empty = barrier_ring(STAGES, 3)         # the scores and both math warpgroups
    p_ready = barrier_ring(RING, 1)
    p_free = barrier_ring(RING, 2)          # both math warpgroups
    n, hv, hk, _, bos, eos, NC, slot = _pass_of(gl.program_id(0), cu, state_indices, HV, G, 1, BT, V)
    NCL = gl.where(slot < 0, 0, NC)         # chunks the loader and the scores walk (none for a skipped sequence)
    gl.warp_specialize([
        (_math, (ready, empty, p_ready, p_free, k_s, q_s, v_s, a_s, p_s, vec_s, o_s, o_desc, o, state, state_indices,
                 has_init, n, hv, bos, eos, NC, slot, s_ps, s_ph, s_pk, s_pv, s_ot, s_oh, 0, V)),
        (_math, (ready, empty, p_ready, p_free, k_s, q_s, v_s, a_s, p_s, vec_s, o_s, o_desc, o, state, state_indices,
                 has_init, n, hv, bos, eos, NC, slot, s_ps, s_ph, s_pk, s_pv, s_ot, s_oh, 1, V)),
        (_scores, (ready, empty, p_ready, p_free, k_s, q_s, v_s, a_s, g_s, rk_s, rk_desc, rq_s, rq_desc, p_s, vec_s,
                   scale, hv, hk, bos, eos, NCL, L2NORM)),
        (_loader, (k_desc, q_desc, v_desc, a_desc, g_desc, rk_desc, rq_desc, ready, empty, k_s, q_s, v_s, a_s, g_s,
                   rk_s, rq_s, bos, NCL, hv, hk, K, V, PDL)),
    ], [4, 4, 1], [192, 104, 24])
    if PDL:
        gdc_wait()
