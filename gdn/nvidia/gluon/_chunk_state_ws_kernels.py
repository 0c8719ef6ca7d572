"""Gluon kernel body of the warp-specialised state pass with the output fused (launcher: chunk_state.py,
`launch_state_output` with cfg WS). Built for few (sequence, v-head) pairs (one long prompt), where the
state's chain bounds the pass and the output's work can run beside it instead of after it; with 64 state
columns per CTA it also beat the two-warpgroup pass on wide batches, and serves every batch on sm_90."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from gdn.nvidia.gluon._chunk_state_kernels import (G_TILE, _decays_tma, _initial_state, _load_chunk_g, _pass_of,
                                                    _pool_ptrs, norm_tiles, tile_col)
from gdn.nvidia.gluon._jit import (barrier_ring, exp2_ftz, gdc_wait, inv_norm, log2_ftz, row_sum, split_mma,
                                   store_rows, store_tile, zero_rows_past)

LOG2E: gl.constexpr = gl.constexpr(1.4426950408889634)
ITEM_RING: gl.constexpr = gl.constexpr(4)     # work items handed from the loader to the other partitions (PERSIST)


@gluon.jit
def _load_stage(w_desc, k_desc, u_desc, g_desc, q_desc, rk_desc, rq_desc, ready, w_s, k_s, u_s, g_s, q_s, rk_s, rq_s,
                b, t0, hv, hk, v0, K: gl.constexpr, V: gl.constexpr, VU: gl.constexpr = 0,
                NO_OUT: gl.constexpr = False):
    """TMA of the w, k, q [64, K], u [64, BV], g_cum [64, 4] and (with rk_desc, rq_desc) key- and query-norm
    [64, 4] tiles of the chunk starting at token t0 into stage b on ready[b]. VU: as _load_chunk's. q's tile
    is skipped where nothing reads it (NO_OUT with the query norms from rq_desc)."""
    LOAD_Q: gl.constexpr = not NO_OUT or rq_desc is None
    extra: gl.constexpr = ((q_desc.block_type.nbytes if LOAD_Q else 0)
                           + (0 if rk_desc is None else rk_desc.block_type.nbytes)
                           + (0 if rq_desc is None else rq_desc.block_type.nbytes))
    bar = ready.index(b)
    _load_chunk_g(w_desc, k_desc, u_desc, g_desc, bar, w_s.index(b), k_s.index(b), u_s.index(b), g_s.index(b), t0,
                  hv, hk, v0, True, K, V, extra, VU)
    if LOAD_Q:
        tma.async_copy_global_to_shared(q_desc, [t0, hk * K], bar, q_s.index(b))
    if rk_desc is not None:      # (16-byte column offsets, as g_cum's)
        tma.async_copy_global_to_shared(rk_desc, [t0, hk - hk % rk_desc.block_type.shape[1]], bar, rk_s.index(b))
    if rq_desc is not None:
        tma.async_copy_global_to_shared(rq_desc, [t0, hk - hk % rq_desc.block_type.shape[1]], bar, rq_s.index(b))


@gluon.jit
def _loader(w_desc, k_desc, u_desc, g_desc, q_desc, rk_desc, rq_desc, ready, empty, w_s, k_s, u_s, g_s, q_s, rk_s,
            rq_s, bos, NCL, hv, hk, v0, base, K: gl.constexpr, V: gl.constexpr, PDL: gl.constexpr,
            VU: gl.constexpr = 0, NO_OUT: gl.constexpr = False):
    """One warp: the tiles of the CTA's chunk number g = base + c (c: the chunk in its sequence; base: chunks
    of earlier work items, persistent pass) into stage g % STAGES once the chain and the output have released
    the chunk that held it (empty, two arrivals). PDL: first wait for the previous kernel (prefill's first
    kernel, which writes the A', g_cum and norm tiles)."""
    STAGES: gl.constexpr = w_s.shape[0]
    BT: gl.constexpr = w_s.shape[1]
    if PDL:
        gdc_wait()
    for c in range(0, NCL):
        g = base + c
        mbarrier.wait(empty.index(g % STAGES), ((g // STAGES) & 1) ^ 1)
        _load_stage(w_desc, k_desc, u_desc, g_desc, q_desc, rk_desc, rq_desc, ready, w_s, k_s, u_s, g_s, q_s, rk_s,
                    rq_s, g % STAGES, bos + c * BT, hv, hk, v0, K, V, VU, NO_OUT)


@gluon.jit
def _zero_tails(k_b, u_s, w_b, b, t0, eos, A_PATH: gl.constexpr, blk: gl.constexpr):
    """A tail chunk's rows past the sequence end zeroed in its k tile (the output partition's q k^T reads it too)
    and, on the A path, in its v (stage b of u_s) and A' tiles. They may be NaN (past cu_seqlens[-1]; A' is never
    stored there); zeroed, every row past the end comes out exactly 0 with its row factor zeroed, without a
    select on every element each chunk."""
    if t0 + k_b.shape[0] > eos:
        zero_rows_past(k_b, t0, eos, blk)
        if A_PATH:
            zero_rows_past(u_s.index(b), t0, eos, blk)
            zero_rows_past(w_b, t0, eos, blk)


@gluon.jit
def _chunk_norms(rk_b, rk_desc, rq_b, rq_desc, k_b, q_b, hk, L2NORM: gl.constexpr, mma: gl.constexpr):
    """The chunk's key and query norms in mma's rows: from the first kernel's [64, 4] tiles (rk_desc, rq_desc)
    or from the k and q tiles."""
    row: gl.constexpr = gl.SliceLayout(1, mma)
    if rk_desc is not None:
        rk = tile_col(rk_b, hk, row, G_TILE)
    else:
        rk = inv_norm(k_b, L2NORM, mma)
    if rq_desc is not None:
        rq = tile_col(rq_b, hk, row, G_TILE)
    else:
        rq = inv_norm(q_b, L2NORM, mma)
    return rk, rq


@gluon.jit
def _chain(ready, empty, h_ready, h_free, w_s, k_s, q_s, u_s, g_s, rk_s, rk_desc, rq_s, rq_desc, h_s, vk_s, vec_s, vs_s,
           xs_s, state, state_indices, has_init, scale, n, hv, hk, v0, bos, eos, NCL, slot, s_ps, s_ph, s_pk, s_pv,
           base, L2NORM: gl.constexpr, A_PATH: gl.constexpr, EARLY: gl.constexpr, RELEASE_LAST: gl.constexpr = False,
           VU: gl.constexpr = 0):
    """The default partition (one warpgroup): the state's chain as chunk_state_sm90's, minus its h and v_new
    stores. Per chunk it hands the output partition, through a RING-slot ring (h_ready / h_free), the state
    entering the chunk (h_s[j], 16-bit), v_new with the key norms applied (vk_s[j] = v_new * rk, rows past
    the sequence end zero), the chunk's g_cum and its query norms times the scale, both in log2 units (vec_s
    rows 2j, 2j + 1, fp32). The norms are taken here (from the first kernel's [T, H] tiles, or from the k and q
    tiles) so the output partition does no reduction over a tile. With EARLY at 32 columns the output partition
    binds the pair, not this one (H100, 2026-11-24 probes in chunk_state.py).
    A_PATH: w_s holds A' = A diag(beta) [64, 64] and u_s the v tile; v_new = A' (v - exp(g_cum) rk (k h)), two
    dependent MMAs (k h, then A' times the difference through xs_s) where w h was one.
    EARLY: the chunk's decays, norms and tail rows are taken between h's store and the barrier that publishes it
    (the first MMA then follows that barrier directly), and x has its own tile xs_s (no barrier between A' x and
    the hand-over stores); else they follow the barrier and xs_s is vs_s. chunk_state.py `_WS` has the
    measurements (it pays at 32 columns, not at 64).
    base: chunks the CTA walked for earlier work items (persistent pass): stages and ring slots go by the CTA's
    running chunk number base + c. RELEASE_LAST: release the last chunk's stage after the loop (a later work
    item's chunks reuse it; a one-item CTA never needs it back). VU > 0 (the segmented prefill's transition pass):
    the state starts from [0 | I] (state column VU + i is e_i), not from the pool."""
    STAGES: gl.constexpr = w_s.shape[0]
    RING: gl.constexpr = h_s.shape[0]
    BT: gl.constexpr = w_s.shape[1]
    K: gl.constexpr = k_s.shape[2]
    BV: gl.constexpr = u_s.shape[2]
    DT: gl.constexpr = w_s.dtype
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BV, 16])
    row: gl.constexpr = gl.SliceLayout(1, mma)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    g2: gl.constexpr = G_TILE
    r = gl.arange(0, BT, layout=row)
    S = gl.zeros([K, BV], gl.float32, mma)
    if VU > 0:
        kk = gl.arange(0, K, layout=gl.SliceLayout(1, mma))
        cc = v0 - VU + gl.arange(0, BV, layout=gl.SliceLayout(0, mma))
        S = (kk[:, None] == cc[None, :]).to(gl.float32)
    elif slot >= 0:
        S = _initial_state(state, slot, has_init, n, hv, v0, s_ps, s_ph, s_pk, s_pv, K, BV, mma)
    for c in range(0, NCL):
        g = base + c
        b = g % STAGES
        j = g % RING
        t0 = bos + c * BT
        h_j = h_s.index(j)
        w_b = w_s.index(b)
        k_b = k_s.index(b)
        # slot j is free once the output partition has retired chunk g - RING's MMAs on it
        mbarrier.wait(h_free.index(j), ((g // RING) & 1) ^ 1)
        h_j.store(S.to(DT))
        if EARLY:
            # the chunk's tiles, decays, norms and tail rows before the barrier that publishes h_j, so that the
            # first MMA on it goes out right after that barrier
            mbarrier.wait(ready.index(b), (g // STAGES) & 1)
            gc, g_last = _decays_tma(g_s.index(b), t0, eos, hv, row, g2)
            _zero_tails(k_b, u_s, w_b, b, t0, eos, A_PATH, blk)
            rk, rq = _chunk_norms(rk_s.index(b), rk_desc, rq_s.index(b), rq_desc, k_b, q_s.index(b), hk, L2NORM, mma)
            vec_s.index(2 * j + 1).store(log2_ftz(rq * scale))
            vec_s.index(2 * j).store(gc * LOG2E)
        fence_async_shared()
        gl.thread_barrier()
        # every warp is past chunk c - 1's last MMA wait: release its stage (w, k, u, g) on our side
        mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), pred=c > 0)
        if not EARLY:
            mbarrier.wait(ready.index(b), (g // STAGES) & 1)
            gc, g_last = _decays_tma(g_s.index(b), t0, eos, hv, row, g2)
            S = S * gl.exp(g_last)
        valid = t0 + r < eos
        if A_PATH:
            # k h reads the k tile: its tail rows (and v's and A''s) zeroed first
            if not EARLY:
                _zero_tails(k_b, u_s, w_b, b, t0, eos, A_PATH, blk)
            acc = warpgroup_mma(k_b, h_j, gl.zeros([BT, BV], gl.float32, mma), use_acc=False, is_async=True)
        else:
            acc = warpgroup_mma(w_b, h_j, gl.zeros([BT, BV], gl.float32, mma), use_acc=False, is_async=True)
            # in the shadow of w h: the k tail rows, the key and query norms (the query's for the output partition)
            if not EARLY:
                _zero_tails(k_b, u_s, w_b, b, t0, eos, A_PATH, blk)
        if EARLY:
            S = S * gl.exp(g_last)
        else:
            rk, rq = _chunk_norms(rk_s.index(b), rk_desc, rq_s.index(b), rq_desc, k_b, q_s.index(b), hk, L2NORM, mma)
            # (log2 units: the output partition folds the query norms into its decays' exponents)
            vec_s.index(2 * j + 1).store(log2_ftz(rq * scale))
        uu = u_s.index(b).load(mma).to(gl.float32)
        fac = gl.exp(g_last - gc)
        if not EARLY:
            vec_s.index(2 * j).store(gc * LOG2E)
        if A_PATH:
            acc, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(acc, k_b, h_j))
            # rows past the sequence end: v's and k's rows are 0 (zeroed above), so x's are 0 with the row factor
            # selected to 0 (rk there is whatever the norms buffer holds); xs_s is free here (the last MMA that
            # read it, A' x or, where it is vs_s, the state update, has retired)
            rk = gl.where(valid, rk, 0.0)
            x = uu - acc * (gl.exp(gc) * rk)[:, None]
            xs_s.store(x.to(DT))
            fence_async_shared()
            gl.thread_barrier()
            acc = warpgroup_mma(w_b, xs_s, gl.zeros([BT, BV], gl.float32, mma), use_acc=False, is_async=True)
            acc, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(acc, w_b, xs_s))
            # (A' rows past the sequence end are zeroed above, and rk is 0 there)
            vk = acc * rk[:, None]
            if not EARLY:
                gl.thread_barrier()     # every warp's A' x has read vs_s (= xs_s) before it is stored again below
        else:
            acc, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(acc, w_b, h_j))
            # rows past the sequence end selected to 0, not multiplied by it: their u and w rows may be NaN
            vk = gl.where(valid[:, None], (uu - acc) * rk[:, None], 0.0)
        vs_s.store((vk * fac[:, None]).to(DT))
        vk_s.index(j).store(vk.to(DT))
        fence_async_shared()
        gl.thread_barrier()
        # h_j, vk_s[j], vec_s[2j:2j+2] and the zeroed k tail rows are visible: the output may take chunk c
        mbarrier.arrive(h_ready.index(j))
        kt = k_b.permute((1, 0))
        S = warpgroup_mma(kt, vs_s, S, is_async=True)
        S, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(S, kt, vs_s))
    if RELEASE_LAST:
        gl.thread_barrier()     # every warp is past the last chunk's MMA waits
        mbarrier.arrive(empty.index((base + NCL - 1) % STAGES), pred=NCL > 0)
    if slot >= 0:
        # the slot loaded again (see chunk_state_sm90: the initial load's pointers would stay live)
        slot2 = gl.load(state_indices + n).to(gl.int64)
        gl.store(_pool_ptrs(state, slot2, hv, v0, s_ps, s_ph, s_pk, s_pv, K, BV, mma),
                 S.to(state.dtype.element_ty))


@gluon.jit
def _issue_qh_qk(ready, h_ready, q_s, k_s, h_s, c, pred, mma: gl.constexpr, mma_s: gl.constexpr):
    """Wait (when pred) for the tiles and hand-over of the CTA's chunk number c (its stage and ring slot), then
    issue q h [64, BV] and q k^T [64, 64] on them. Returns (q h, q k^T, and the operands the retiring wait must
    name)."""
    STAGES: gl.constexpr = q_s.shape[0]
    RING: gl.constexpr = h_s.shape[0]
    BT: gl.constexpr = q_s.shape[1]
    BV: gl.constexpr = h_s.shape[2]
    b = c % STAGES
    j = c % RING
    mbarrier.wait(h_ready.index(j), (c // RING) & 1, pred=pred)
    mbarrier.wait(ready.index(b), (c // STAGES) & 1, pred=pred)     # (the TMA'd tiles, seen by this partition)
    q_b = q_s.index(b)
    kt = k_s.index(b).permute((1, 0))
    h_j = h_s.index(j)
    acc = warpgroup_mma(q_b, h_j, gl.zeros([BT, BV], gl.float32, mma), use_acc=False, is_async=True)
    s_acc = warpgroup_mma(q_b, kt, gl.zeros([BT, BT], gl.float32, mma_s), use_acc=False, is_async=True)
    return acc, s_acc, q_b, kt, h_j


@gluon.jit
def _output(ready, empty, h_ready, h_free, k_s, q_s, h_s, vk_s, vec_s, o_s, o_desc, o, hv, v0, bos, eos, NC, slot,
            s_ot, s_oh, base, V: gl.constexpr, P_SPLIT: gl.constexpr, NO_OUT: gl.constexpr = False):
    """The output partition (one warpgroup): chunk_output's formula on the chain's hand-over, per chunk
        o = exp2(lg_i + lq_i) (q h) + causal(q k^T * exp2(lg_i + lq_i - lg_j)) (v_new * rk)
    (lg = g_cum log2 e, lq = log2(rq * scale): the row factor rides in the exponents, rk in the hand-over),
    then o's tile by TMA store (whole chunks) or masked stores: each score costs a subtraction, a select, an ex2
    and a multiply, and o none. Software-pipelined: the next chunk's q h and q k^T are issued before this chunk's
    scores are formed, so their latency hides behind that math, and a chunk's stage (q, k) is released as soon as those
    MMAs retire. Past the last chunk the issue repeats this chunk's (no later chunk refills its stage; the
    result is unused): no branch while a wgmma is in flight (ptxas would make the warps wait for it there,
    C7517). Rows past the sequence end are never stored, so their scores need no mask (their q rows may be
    garbage: a row's NaN stays in that row). A skipped sequence: zero rows. P_SPLIT: the decayed scores enter
    their product with v_new as hi + lo 16-bit parts (two MMAs), else rounded to 16 bits (one). base: as the
    chain's (stages and ring slots by the CTA's running chunk number). NO_OUT (the segmented prefill's
    transition pass, which keeps only final states): each hand-over is released as it comes, nothing computed."""
    STAGES: gl.constexpr = k_s.shape[0]
    RING: gl.constexpr = h_s.shape[0]
    BT: gl.constexpr = k_s.shape[1]
    BV: gl.constexpr = h_s.shape[2]
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BV, 16])
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BT, 16])
    row: gl.constexpr = gl.SliceLayout(1, mma)
    row_s: gl.constexpr = gl.SliceLayout(1, mma_s)
    col_s: gl.constexpr = gl.SliceLayout(0, mma_s)
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    if NO_OUT:
        if slot >= 0:
            for c in range(0, NC):
                g = base + c
                j = g % RING
                mbarrier.wait(h_ready.index(j), (g // RING) & 1)
                # the chain has taken chunk g's stage (it waited for its tiles before the hand-over)
                gl.thread_barrier()
                mbarrier.arrive(h_free.index(j))
                mbarrier.arrive(empty.index(g % STAGES))
    elif slot < 0:
        for c in range(0, NC):
            store_rows(gl.zeros([BT, BV], gl.float32, mma), o, bos + c * BT, eos, hv, v0, s_ot, s_oh, mma)
    elif NC > 0:
        tri = gl.arange(0, BT, layout=row_s)[:, None] >= gl.arange(0, BT, layout=col_s)[None, :]
        acc_o, s_acc, q_b, kt, h_j = _issue_qh_qk(ready, h_ready, q_s, k_s, h_s, base, True, mma, mma_s)
        acc_o, s_acc, _, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(acc_o, s_acc, q_b, kt, h_j))
        # chunk 0's q and k tiles are read: release its stage on our side (see the loop)
        gl.thread_barrier()
        mbarrier.arrive(empty.index(base % STAGES))
        for c in range(0, NC):
            g = base + c
            j = g % RING
            t0 = bos + c * BT
            nxt = c + 1 < NC
            acc_n, s_n, q_n, kt_n, h_n = _issue_qh_qk(ready, h_ready, q_s, k_s, h_s, gl.where(nxt, g + 1, g), nxt,
                                                      mma, mma_s)
            # this chunk's scores while those run; the row factor rq rides in the decays' row exponent (and in
            # exp(g_cum)'s), so o needs no multiply of its own
            gc = vec_s.index(2 * j)
            lrq = vec_s.index(2 * j + 1)
            decay = exp2_ftz(gl.where(tri, (gc.load(row_s) + lrq.load(row_s))[:, None] - gc.load(col_s)[None, :],
                                      float("-inf")))
            vk_j = vk_s.index(j)
            if P_SPLIT:
                acc_o, pa_hi, pa_lo = split_mma(s_acc * decay, vk_j,
                                                acc_o * exp2_ftz(gc.load(row) + lrq.load(row))[:, None], p_op)
            else:
                # the decayed scores rounded to v_new's 16-bit type, one MMA (pa_lo a stand-in dep; chunk_state.py
                # _WS has the measurements)
                pa_hi = gl.convert_layout((s_acc * decay).to(vk_j.dtype), p_op)
                pa_lo = pa_hi
                acc_o = warpgroup_mma(pa_hi, vk_j, acc_o * exp2_ftz(gc.load(row) + lrq.load(row))[:, None],
                                      is_async=True)
            acc_o, acc_n, s_n, _, _, _, _, _, _ = warpgroup_mma_wait(
                num_outstanding=0, deps=(acc_o, acc_n, s_n, vk_j, pa_hi, pa_lo, q_n, kt_n, h_n))
            # every warp is past its reads of ring slot j and of the next chunk's stage: the stage goes back to
            # the loader now, a chunk before this partition is done with the ring slot (with 3 stages the chain
            # waited for its tiles when stages were released after the whole chunk: 14% of its stall samples)
            gl.thread_barrier()
            mbarrier.arrive(h_free.index(j))
            mbarrier.arrive(empty.index((g + 1) % STAGES), pred=nxt)
            if o_desc is not None:
                tma.store_wait(0)       # the previous chunk's o_s has been read (store_tile's barrier orders it)
            store_tile(acc_o, o_s, o_desc, o, t0, eos, hv, v0, s_ot, s_oh, V, mma)
            acc_o = acc_n
            s_acc = s_n
        if o_desc is not None:
            tma.store_wait(0)


# Persistent pass (PERSIST): a grid of at most one CTA per SM whose CTAs take work items (sequence, v-head, state
# columns) from a queue, a global counter `work` (zero at launch) bumped by each CTA's loader warp, so long and short
# items balance as the hardware's CTA scheduler would balance one CTA per item. The loader hands each item to the
# chain and the output partitions through a small ring in shared memory (item_s, item_ready / item_free; an item
# >= n_items ends the CTA). Every partition counts the chunks it has walked, so stages and ring slots go by the CTA's
# running chunk number (`base` + the chunk's index in its sequence), and the next item's tiles, initial state and first
# chain step overlap the previous item's last chunks and output drain.

@gluon.jit
def _next_item(work, item_s, item_ready, item_free, i):
    """Loader: take the next work item from the queue into item ring slot i % depth for the other partitions."""
    ID: gl.constexpr = item_s.shape[0]
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    slot = i % ID
    mbarrier.wait(item_free.index(slot), ((i // ID) & 1) ^ 1)
    item = gl.atomic_add(work, 1)
    item_s.index(slot).store(gl.full([1], item, gl.int32, lay))
    mbarrier.arrive(item_ready.index(slot))
    return item


@gluon.jit
def _take_item(item_s, item_ready, item_free, i):
    """Chain or output partition: the work item the loader put in ring slot i % depth; the slot is released
    once every warp of the partition has read it."""
    ID: gl.constexpr = item_s.shape[0]
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    slot = i % ID
    mbarrier.wait(item_ready.index(slot), (i // ID) & 1)
    item = row_sum(item_s.index(slot).load(lay), 0)          # (the one element; gl.max breaks under the interpreter)
    gl.thread_barrier()
    mbarrier.arrive(item_free.index(slot))
    return item


@gluon.jit
def _chain_items(ready, empty, h_ready, h_free, w_s, k_s, q_s, u_s, g_s, rk_s, rk_desc, rq_s, rq_desc, h_s, vk_s,
                 vec_s, vs_s, xs_s, item_s, item_ready, item_free, state, state_indices, cu, has_init, scale, HV, G, NV,
                 n_items, s_ps, s_ph, s_pk, s_pv, L2NORM: gl.constexpr, A_PATH: gl.constexpr, EARLY: gl.constexpr,
                 VU: gl.constexpr = 0):
    """_chain over the work items the loader hands over (persistent pass)."""
    BT: gl.constexpr = w_s.shape[1]
    BV: gl.constexpr = u_s.shape[2]
    base = 0
    i = 0
    item = _take_item(item_s, item_ready, item_free, i)
    while item < n_items:
        n, hv, hk, v0, bos, eos, NC, slot = _pass_of(item, cu, state_indices, HV, G, NV, BT, BV)
        NCL = gl.where(slot < 0, 0, NC)
        _chain(ready, empty, h_ready, h_free, w_s, k_s, q_s, u_s, g_s, rk_s, rk_desc, rq_s, rq_desc, h_s, vk_s, vec_s,
               vs_s, xs_s, state, state_indices, has_init, scale, n, hv, hk, v0, bos, eos, NCL, slot, s_ps, s_ph,
               s_pk, s_pv, base, L2NORM, A_PATH, EARLY, True, VU)
        base += NCL
        i += 1
        item = _take_item(item_s, item_ready, item_free, i)


@gluon.jit
def _output_items(ready, empty, h_ready, h_free, k_s, q_s, h_s, vk_s, vec_s, o_s, o_desc, o, item_s, item_ready,
                  item_free, cu, state_indices, HV, G, NV, n_items, s_ot, s_oh, V: gl.constexpr, P_SPLIT: gl.constexpr,
                  NO_OUT: gl.constexpr = False):
    """_output over the work items the loader hands over (persistent pass)."""
    BT: gl.constexpr = k_s.shape[1]
    BV: gl.constexpr = h_s.shape[2]
    base = 0
    i = 0
    item = _take_item(item_s, item_ready, item_free, i)
    while item < n_items:
        n, hv, hk, v0, bos, eos, NC, slot = _pass_of(item, cu, state_indices, HV, G, NV, BT, BV)
        _output(ready, empty, h_ready, h_free, k_s, q_s, h_s, vk_s, vec_s, o_s, o_desc, o, hv, v0, bos, eos, NC, slot,
                s_ot, s_oh, base, V, P_SPLIT, NO_OUT)
        base += gl.where(slot < 0, 0, NC)
        i += 1
        item = _take_item(item_s, item_ready, item_free, i)


@gluon.jit
def _loader_items(w_desc, k_desc, u_desc, g_desc, q_desc, rk_desc, rq_desc, ready, empty, w_s, k_s, u_s, g_s, q_s,
                  rk_s, rq_s, item_s, item_ready, item_free, work, cu, state_indices, HV, G, NV, n_items,
                  K: gl.constexpr, V: gl.constexpr, PDL: gl.constexpr, VU: gl.constexpr = 0,
                  NO_OUT: gl.constexpr = False):
    """_loader over the work items it takes from the queue (persistent pass). PDL: first wait for the previous
    kernel (as _loader)."""
    BT: gl.constexpr = w_s.shape[1]
    BV: gl.constexpr = u_s.shape[2]
    if PDL:
        gdc_wait()
    base = 0
    i = 0
    item = _next_item(work, item_s, item_ready, item_free, i)
    while item < n_items:
        n, hv, hk, v0, bos, eos, NC, slot = _pass_of(item, cu, state_indices, HV, G, NV, BT, BV)
        NCL = gl.where(slot < 0, 0, NC)
        _loader(w_desc, k_desc, u_desc, g_desc, q_desc, rk_desc, rq_desc, ready, empty, w_s, k_s, u_s, g_s, q_s, rk_s,
                rq_s, bos, NCL, hv, hk, v0, base, K, V, False, VU, NO_OUT)
        base += NCL
        i += 1
        # (taken once this item's tiles are issued: taking it before them measured no better overall, and a CTA
        # then holds on to an item while a long one runs, which cost 2-4% at 16 sequences of 256-4096 tokens)
        item = _next_item(work, item_s, item_ready, item_free, i)


@gluon.jit
def chunk_state_output_ws_sm90(w_desc, k_desc, u_desc, g_desc, q_desc, rk_desc, rq_desc, state, state_indices, cu,
                               has_init, o, o_desc, HV, G, NV, scale, s_ps, s_ph, s_pk, s_pv, s_ot, s_oh, n_items, work,
                               V: gl.constexpr, L2NORM: gl.constexpr, STAGES: gl.constexpr, RING: gl.constexpr,
                               OUT_REGS: gl.constexpr, num_warps: gl.constexpr, P_SPLIT: gl.constexpr = True,
                               A_PATH: gl.constexpr = False, EARLY: gl.constexpr = False, PDL: gl.constexpr = False,
                               PERSIST: gl.constexpr = False, VU: gl.constexpr = 0,
                               NO_OUT: gl.constexpr = False):
    """chunk_state_output_sm90's result (o and the final state; no h, v_new) with the work split over three
    warp-specialised partitions (one warpgroup each) of one CTA per (sequence, v-head, BV state columns):
      - the chain (default partition): the state's dependency chain, two MMAs per chunk;
      - the output (OUT_REGS registers): q h, q k^T, the decayed scores times v_new, the store;
      - the loader (one warp): TMA of each chunk's w, k, q, u, g_cum tiles into a STAGES-deep ring.
    Where a narrow batch leaves the chain alone on an SM (its latency bounds the pass), the output's MMAs run
    beside it instead of in a second kernel that reads h and v_new back from memory (1x32768 tokens, bf16:
    1.6 GB written and read).
    mbarriers: per stage s, ready[s] (TMA bytes) and empty[s] (chain and output released it); per ring slot j,
    h_ready[j] / h_free[j] (the state entering a chunk, its v_new * rk, g_cum and query norms, chain ->
    output).

    rk_desc, rq_desc (or None): the key and query norms [T, H] as prefill's first kernel writes them, as [64, 4]
    TMA tiles on each stage; without them the chain takes them from the k and q tiles.

    PDL (launched with launch_pdl after prefill's first kernel, which triggers it at its start): the CTAs may be
    resident while that kernel's last CTAs run; the loader waits for it before its first TMA (everything this pass
    reads of that kernel comes through the loader; the initial states and the k, q, v tiles are not its), and every
    CTA waits for it before it completes, so that the stream sees both done when this one is.

    Tried (H100, 1x32768, this kernel alone): the norms of q and k taken by a four-warp loader partition as
    each chunk lands instead of by the chain: 1.075 ms against 0.73 (the loader then waits for the output's
    release before each refill, and the chain for its norms: its latency joined the chain's).

    PERSIST: a grid of at most one CTA per SM taking the n_items = N * HV * NV work items from the queue `work`
    (an int32 zero at launch; see _next_item); else one CTA per work item (grid n_items; `work` unused).

    The segmented prefill's transition pass (gdn/common/triton/prefill/segments.py): NO_OUT (no output; o and
    o_desc are not touched) with VU > 0 (u = v has heads VU wide while the state has V = VU + K columns; the
    columns past VU read zeros, and the state starts from [0 | I], not the pool: the pass leaves [U | T], the
    segment's affine map, in the pool's slot)."""
    BT: gl.constexpr = w_desc.block_type.shape[0]
    K: gl.constexpr = k_desc.block_type.shape[1]
    BV: gl.constexpr = u_desc.block_type.shape[1]
    DT: gl.constexpr = w_desc.dtype
    tile: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BV], DT)
    vec: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

    w_s = gl.allocate_shared_memory(DT, [STAGES] + w_desc.block_type.shape, w_desc.layout)
    k_s = gl.allocate_shared_memory(DT, [STAGES, BT, K], k_desc.layout)
    q_s = gl.allocate_shared_memory(DT, [STAGES, BT, K], q_desc.layout)
    u_s = gl.allocate_shared_memory(DT, [STAGES, BT, BV], u_desc.layout)
    g_s = gl.allocate_shared_memory(g_desc.dtype, [STAGES] + g_desc.block_type.shape, g_desc.layout)
    rk_s, rq_s = norm_tiles(rk_desc, rq_desc, STAGES, g_s)
    h_s = gl.allocate_shared_memory(DT, [RING, K, BV], gl.NVMMASharedLayout.get_default_for([K, BV], DT))
    vk_s = gl.allocate_shared_memory(DT, [RING, BT, BV], tile)
    vec_s = gl.allocate_shared_memory(gl.float32, [2 * RING, BT], vec)
    vs_s = gl.allocate_shared_memory(DT, [BT, BV], tile)
    xs_s = vs_s         # the A path's x gets its own tile with EARLY (see _chain)
    if EARLY and A_PATH:
        xs_s = gl.allocate_shared_memory(DT, [BT, BV], tile)
    o_s = vs_s          # placeholder when o goes out by plain stores
    if o_desc is not None:
        o_s = gl.allocate_shared_memory(o_desc.dtype, o_desc.block_type.shape, o_desc.layout)
    ready = barrier_ring(STAGES, 1)
    empty = barrier_ring(STAGES, 2)         # the chain and the output partition
    h_ready = barrier_ring(RING, 1)
    h_free = barrier_ring(RING, 1)

    if PERSIST:
        item_s = gl.allocate_shared_memory(gl.int32, [ITEM_RING, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        item_ready = barrier_ring(ITEM_RING, 1)
        item_free = barrier_ring(ITEM_RING, 2)      # the chain and the output partition
        gl.warp_specialize([
            (_chain_items, (ready, empty, h_ready, h_free, w_s, k_s, q_s, u_s, g_s, rk_s, rk_desc, rq_s, rq_desc, h_s,
                            vk_s, vec_s, vs_s, xs_s, item_s, item_ready, item_free, state, state_indices, cu, has_init,
                            scale, HV, G, NV, n_items, s_ps, s_ph, s_pk, s_pv, L2NORM, A_PATH, EARLY, VU)),
            (_output_items, (ready, empty, h_ready, h_free, k_s, q_s, h_s, vk_s, vec_s, o_s, o_desc, o, item_s,
                             item_ready, item_free, cu, state_indices, HV, G, NV, n_items, s_ot, s_oh, V, P_SPLIT,
                             NO_OUT)),
            (_loader_items, (w_desc, k_desc, u_desc, g_desc, q_desc, rk_desc, rq_desc, ready, empty, w_s, k_s, u_s,
                             g_s, q_s, rk_s, rq_s, item_s, item_ready, item_free, work, cu, state_indices, HV, G, NV,
                             n_items, K, V, PDL, VU, NO_OUT)),
        ], [4, 1], [OUT_REGS, 24])
    else:
        n, hv, hk, v0, bos, eos, NC, slot = _pass_of(gl.program_id(0), cu, state_indices, HV, G, NV, BT, BV)
        NCL = gl.where(slot < 0, 0, NC)         # chunks the loader and the chain walk (none for a skipped sequence)
        gl.warp_specialize([
            (_chain, (ready, empty, h_ready, h_free, w_s, k_s, q_s, u_s, g_s, rk_s, rk_desc, rq_s, rq_desc, h_s, vk_s,
                      vec_s, vs_s, xs_s, state, state_indices, has_init, scale, n, hv, hk, v0, bos, eos, NCL, slot,
                      s_ps, s_ph, s_pk, s_pv, 0, L2NORM, A_PATH, EARLY, False, VU)),
            (_output, (ready, empty, h_ready, h_free, k_s, q_s, h_s, vk_s, vec_s, o_s, o_desc, o, hv, v0, bos, eos,
                       NC, slot, s_ot, s_oh, 0, V, P_SPLIT, NO_OUT)),
            (_loader, (w_desc, k_desc, u_desc, g_desc, q_desc, rk_desc, rq_desc, ready, empty, w_s, k_s, u_s, g_s,
                       q_s, rk_s, rq_s, bos, NCL, hv, hk, v0, 0, K, V, PDL, VU, NO_OUT)),
        ], [4, 1], [OUT_REGS, 24])
    if PDL:
        gdc_wait()
