"""Gluon kernel body of chunk_state (launcher and contract: chunk_state.py)."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from gdn.nvidia.gluon._jit import barrier_ring, inv_norm, row_sum, split_mma, store_rows, store_tile, zero_rows_past


# The layout g_cum's (and the key norms') [64, 4] fp32 tiles are read in by a warpgroup: the 4 columns in
# registers, the rows where the wgmma accumulator layouts' row slices have them (`tile_col`).
G_TILE: gl.constexpr = gl.constexpr(gl.DistributedLinearLayout(
    reg_bases=[[0, 1], [0, 2], [8, 0]], lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
    warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 4]))


@gluon.jit
def _load_chunk(w_desc, k_desc, u_desc, bar, w_buf, k_buf, u_buf, t0, hv, hk, v0, pred,
                K: gl.constexpr, V: gl.constexpr, EXTRA: gl.constexpr = 0, VU: gl.constexpr = 0):
    """TMA of one chunk's w [64, K], k [64, K], u [64, BV] tiles onto one mbarrier (nothing when not pred);
    EXTRA: bytes of further tiles the caller puts on the same barrier. (w's tile may be narrower than K: the
    warp-specialised pass's A' [64, 64] tiles take its place there.) VU > 0: u's heads are VU columns wide
    (fewer than the state's V); a state column block at or past VU reads zeros (a box past u's last column:
    TMA fills it with zeros and still counts its bytes), as the segmented prefill's transition pass needs."""
    nbytes: gl.constexpr = w_desc.block_type.nbytes + k_desc.block_type.nbytes + u_desc.block_type.nbytes + EXTRA
    mbarrier.expect(bar, nbytes, pred=pred)
    tma.async_copy_global_to_shared(w_desc, [t0, hv * w_desc.block_type.shape[1]], bar, w_buf, pred=pred)
    tma.async_copy_global_to_shared(k_desc, [t0, hk * K], bar, k_buf, pred=pred)
    if VU > 0:
        u_col = gl.where(v0 < VU, hv * VU + v0, 1 << 30)
    else:
        u_col = hv * V + v0
    tma.async_copy_global_to_shared(u_desc, [t0, u_col], bar, u_buf, pred=pred)


@gluon.jit
def _decays(gcum, t0, eos, hv, s_gt, s_gh, BT: gl.constexpr, row: gl.constexpr):
    """g_cum of the chunk starting at t0 (rows past eos read 0) and of its last token, by plain loads (the
    fused pass issues them a chunk ahead); 0 for the prefetch past a sequence's last chunk (never used)."""
    r = gl.arange(0, BT, layout=row)
    gc = gl.load(gcum + (t0 + r) * s_gt + hv * s_gh, mask=t0 + r < eos, other=0.0)
    last = gl.minimum(eos, t0 + BT) - 1
    return gc, gl.load(gcum + last * s_gt + hv * s_gh, mask=t0 < eos, other=0.0)


@gluon.jit
def _load_chunk_g(w_desc, k_desc, u_desc, g_desc, bar, w_buf, k_buf, u_buf, g_buf, t0, hv, hk, v0, pred,
                  K: gl.constexpr, V: gl.constexpr, EXTRA: gl.constexpr = 0, VU: gl.constexpr = 0):
    """_load_chunk plus the chunk's g_cum rows [64, 4], all on one mbarrier (EXTRA: as _load_chunk's). The
    g_cum tile starts at column hv - hv % 4: TMA faults on an innermost coordinate that is not a multiple of
    16 bytes (illegal instruction, seen on an H100)."""
    _load_chunk(w_desc, k_desc, u_desc, bar, w_buf, k_buf, u_buf, t0, hv, hk, v0, pred, K, V,
                g_desc.block_type.nbytes + EXTRA, VU)
    tma.async_copy_global_to_shared(g_desc, [t0, hv - hv % g_desc.block_type.shape[1]], bar, g_buf, pred=pred)


@gluon.jit
def norm_tiles(rk_desc, rq_desc, STAGES: gl.constexpr, placeholder):
    """The key- and query-norm tile rings ([STAGES, 64, 4] fp32, one per descriptor given) of a warp-specialised
    pass; `placeholder` (any shared buffer) stands in for a ring whose descriptor is None."""
    rk_s = placeholder
    rq_s = placeholder
    if rk_desc is not None:
        rk_s = gl.allocate_shared_memory(rk_desc.dtype, [STAGES] + rk_desc.block_type.shape, rk_desc.layout)
    if rq_desc is not None:
        rq_s = gl.allocate_shared_memory(rq_desc.dtype, [STAGES] + rq_desc.block_type.shape, rq_desc.layout)
    return rk_s, rq_s


@gluon.jit
def tile_col(buf, col, row: gl.constexpr, g2: gl.constexpr):
    """Column col % W of a landed [64, W] fp32 tile (W = 4: one 16-byte TMA box of a [T, heads] matrix) as a
    [64] vector in `row`, read in g2 (a [64, W] layout whose rows sit where `row` has them, all W columns
    in one thread: the conversion to `row` moves nothing)."""
    W: gl.constexpr = buf.shape[1]
    mine = (gl.arange(0, W, layout=gl.SliceLayout(0, g2)) == col % W)[None, :]
    return gl.convert_layout(row_sum(gl.where(mine, buf.load(g2), 0.0), 1), row)


@gluon.jit
def _decays_tma(g_buf, t0, eos, hv, row: gl.constexpr, g2: gl.constexpr):
    """g_cum of the chunk starting at t0 (rows past eos: 0) and of its last token, from the chunk's landed
    g_cum tile g_buf [64, 4] (column hv % 4 is this head), read in g2: a [64, 4] layout whose rows sit where
    `row` has them, all 4 columns in one thread. The last token's: a whole chunk's row 63 read by every
    thread; a tail chunk's (once per sequence) picked out of the rows across warps.
    By TMA rather than by plain loads a chunk ahead: a fence.proxy.async (before each MMA on a freshly
    stored shared tile) compiles to MEMBAR.ALL.CTA, which waits for every load in flight, so the loads'
    latency sat on the state's chain (ncu on an H100, 1x32768: 27% of the plain pass's stall samples)."""
    BT: gl.constexpr = g_buf.shape[0]
    W: gl.constexpr = g_buf.shape[1]
    gc = tile_col(g_buf, hv, row, g2)
    r = gl.arange(0, BT, layout=row)
    gc = gl.where(t0 + r < eos, gc, 0.0)
    if t0 + BT <= eos:
        lay: gl.constexpr = gl.BlockedLayout([W, W], [32, 1], [gl.num_warps(), 1], [1, 0])
        rows = gl.arange(0, W, layout=gl.SliceLayout(1, lay))[:, None]
        cols = gl.arange(0, W, layout=gl.SliceLayout(0, lay))[None, :]
        tile = g_buf.slice(BT - W, W, dim=0).load(lay)
        g_last = row_sum(row_sum(gl.where((rows == W - 1) & (cols == hv % W), tile, 0.0), 1), 0)
    else:
        g_last = row_sum(gl.where(r == eos - 1 - t0, gc, 0.0), 0)
    return gc, g_last


@gluon.jit
def _pool_ptrs(state, slot, hv, v0, s_ps, s_ph, s_pk, s_pv, K: gl.constexpr, BV: gl.constexpr,
               layout: gl.constexpr):
    """Pointers of the pool slot's [K, BV] block (KV order; the strides give the layout)."""
    rk = gl.arange(0, K, layout=gl.SliceLayout(1, layout))
    cv = v0 + gl.arange(0, BV, layout=gl.SliceLayout(0, layout))
    return state + slot * s_ps + hv * s_ph + rk[:, None] * s_pk + cv[None, :] * s_pv


@gluon.jit
def _pass_of(pid, cu, state_indices, HV, G, NV, BT: gl.constexpr, BV: gl.constexpr):
    """Program id -> the (sequence n, v-head hv, its k head hk, first state column v0) it walks, the
    sequence's token range [bos, eos) (int32: TMA coordinates), its chunk count and pool slot (int64).
    The V blocks of a head are adjacent in the grid (they read the same w and k tiles: L2 hits)."""
    iv = pid % NV
    hv = (pid // NV) % HV
    n = pid // (NV * HV)
    bos = gl.load(cu + n)
    eos = gl.load(cu + n + 1)
    slot = gl.load(state_indices + n).to(gl.int64)
    return n, hv, hv // G, iv * BV, bos, eos, (eos - bos + BT - 1) // BT, slot


@gluon.jit
def _initial_state(state, slot, has_init, n, hv, v0, s_ps, s_ph, s_pk, s_pv, K: gl.constexpr, BV: gl.constexpr,
                   layout: gl.constexpr):
    """The fp32 state [K, BV] (KV form) a pass starts from: the pool slot's block in either layout, zeros
    where has_initial_state says so."""
    S = gl.zeros([K, BV], gl.float32, layout)
    start = True
    if has_init is not None:
        start = gl.load(has_init + n) != 0
    if start:
        S = gl.load(_pool_ptrs(state, slot, hv, v0, s_ps, s_ph, s_pk, s_pv, K, BV, layout)).to(gl.float32)
    return S


@gluon.jit
def state_in(S, h_s, bar, phase):
    """The state entering a chunk into h_s (16-bit, an MMA operand and the TMA source of h[s]) once the previous
    chunk's TMA stores (h, v_new) have read h_s and v_new's tile, made visible to the async proxy of every warp;
    then wait for the chunk's tiles (bar, phase)."""
    tma.store_wait(0)
    h_s.store(S.to(h_s.dtype))
    fence_async_shared()
    gl.thread_barrier()
    mbarrier.wait(bar, phase)


@gluon.jit
def zero_pass(h_s, h_desc, v_new, bos, eos, NC, s0, HV, hv, v0, s_nt, s_nh, BT: gl.constexpr, layout: gl.constexpr):
    """The plain pass of a padding sequence (pool untouched): its h slots and v_new rows zero."""
    K: gl.constexpr = h_s.shape[0]
    BV: gl.constexpr = h_s.shape[1]
    h_s.store(gl.zeros([K, BV], h_s.dtype, layout))
    fence_async_shared()
    gl.thread_barrier()
    for c in range(0, NC):
        tma.async_copy_shared_to_global(h_desc, [((s0 + c) * HV + hv) * K, v0], h_s)
        store_rows(gl.zeros([BT, BV], gl.float32, layout), v_new, bos + c * BT, eos, hv, v0, s_nt, s_nh, layout)
    tma.store_wait(0)


@gluon.jit
def pass_buffers(w_desc, k_desc, u_desc, g_desc, vn_desc, bos, NC, hv, hk, v0, K: gl.constexpr, V: gl.constexpr,
                 STAGES: gl.constexpr):
    """The plain pass's shared tiles: STAGES stages of w, k [64, K], u [64, BV] and g_cum [64, 4], each on its
    own mbarrier, the first STAGES chunks' TMA issued; vs [64, BV] (an MMA operand); v_new's TMA-store tile
    (vs again, as a placeholder, without vn_desc). Returns (w_s, k_s, u_s, g_s, vs_s, vn_s, bars)."""
    BT: gl.constexpr = w_desc.block_type.shape[0]
    BV: gl.constexpr = u_desc.block_type.shape[1]
    DT: gl.constexpr = w_desc.dtype
    w_s = gl.allocate_shared_memory(DT, [STAGES, BT, K], w_desc.layout)
    k_s = gl.allocate_shared_memory(DT, [STAGES, BT, K], k_desc.layout)
    u_s = gl.allocate_shared_memory(u_desc.dtype, [STAGES, BT, BV], u_desc.layout)
    g_s = gl.allocate_shared_memory(g_desc.dtype, [STAGES] + g_desc.block_type.shape, g_desc.layout)
    vs_s = gl.allocate_shared_memory(DT, [BT, BV], gl.NVMMASharedLayout.get_default_for([BT, BV], DT))
    vn_s = vs_s
    if vn_desc is not None:
        vn_s = gl.allocate_shared_memory(vn_desc.dtype, vn_desc.block_type.shape, vn_desc.layout)
    bars = barrier_ring(STAGES, 1)
    for i in gl.static_range(STAGES):
        _load_chunk_g(w_desc, k_desc, u_desc, g_desc, bars.index(i), w_s.index(i), k_s.index(i), u_s.index(i),
                      g_s.index(i), bos + i * BT, hv, hk, v0, i < NC, K, V)
    return w_s, k_s, u_s, g_s, vs_s, vn_s, bars


@gluon.jit
def chunk_state_sm90(w_desc, k_desc, u_desc, g_desc, h_desc, state, state_indices, cu, has_init, v_new, vn_desc,
                     HV, G, NV, s_ps, s_ph, s_pk, s_pv, s_nt, s_nh,
                     V: gl.constexpr, L2NORM: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """One CTA (one warpgroup) per (sequence, v-head, BV state columns), V blocks of a head adjacent (they
    read the same w and k tiles: L2 hits). The fp32 state S [K, BV] stays in registers in the wgmma
    accumulator layout for the whole sequence; per chunk:
        h_s  <- S as 16-bit (B of w h; TMA-stored as h[s])
        vn    = u - w h                          (wgmma, w from shared memory)
        vs_s <- vn * rk * exp(g_last - g_cum)    (rows past the sequence end: 0)
        S     = exp(g_last) S + k^T vs           (wgmma, A = the k tile through a transposed view)
    The w, k, u tiles and g_cum rows of the next STAGES-1 chunks are in flight by TMA meanwhile (one
    mbarrier per stage): the state's dependency chain waits on nothing but its own two MMAs.

    Tiles are described on the host over the whole [T, heads * dim] matrices, so a tail chunk's tiles hold
    the next sequence's rows or, past cu_seqlens[-1], whatever the buffer holds (TMA zero-fills only past
    T). Their v_new rows are not stored and their vs rows are selected to zero; the k rows are zeroed in
    shared memory (0 * NaN in the MMA would be NaN).

    (Tried: the key norms rk written by prefill's first kernel and loaded here as [64, 4] TMA tiles instead of
    inv_norm on the k tile, which is 30% of this kernel's instructions: slower on an H100, 1x32768 0.577 ->
    0.601 ms. inv_norm runs in the shadow of the w h MMA; the extra tile and its layout conversion sit on
    the chain.)
    vn_desc (or None): v_new as a TMA view [T, HV * V] with [64, BV] tiles. A whole chunk's v_new then leaves
    by TMA store from a shared tile written next to vs (one fence for both). Plain stores of it (tail chunks,
    or without vn_desc) are still in flight at the next chunk's fence.proxy.async, whose MEMBAR.ALL.CTA
    waits for them: ncu put 14% of this kernel's stall samples there at 1x32768 (H100).

    Every operand of an async wgmma is a dep of the wait that retires it (see chunk_output_sm90)."""
    BT: gl.constexpr = w_desc.block_type.shape[0]
    K: gl.constexpr = w_desc.block_type.shape[1]
    BV: gl.constexpr = u_desc.block_type.shape[1]
    DT: gl.constexpr = w_desc.dtype
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BV, 16])
    row: gl.constexpr = gl.SliceLayout(1, mma)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    g2: gl.constexpr = G_TILE

    n, hv, hk, v0, bos, eos, NC, slot = _pass_of(gl.program_id(0), cu, state_indices, HV, G, NV, BT, BV)
    s0 = bos // BT + n                          # the sequence's first chunk slot

    r = gl.arange(0, BT, layout=row)
    h_s = gl.allocate_shared_memory(DT, [K, BV], h_desc.layout)

    if slot < 0:
        zero_pass(h_s, h_desc, v_new, bos, eos, NC, s0, HV, hv, v0, s_nt, s_nh, BT, blk)
    else:
        w_s, k_s, u_s, g_s, vs_s, vn_s, bars = pass_buffers(w_desc, k_desc, u_desc, g_desc, vn_desc, bos, NC, hv, hk,
                                                            v0, K, V, STAGES)

        # initial state from the pool slot, while the tiles land
        S = _initial_state(state, slot, has_init, n, hv, v0, s_ps, s_ph, s_pk, s_pv, K, BV, mma)

        for c in range(0, NC):
            b = c % STAGES
            t0 = bos + c * BT

            state_in(S, h_s, bars.index(b), (c // STAGES) & 1)
            # the decay applied before w h is issued: S touched while an MMA is in flight makes ptxas wait for it
            gc, g_last = _decays_tma(g_s.index(b), t0, eos, hv, row, g2)
            S = S * gl.exp(g_last)
            w_b = w_s.index(b)
            k_b = k_s.index(b)
            acc = warpgroup_mma(w_b, h_s, gl.zeros([BT, BV], gl.float32, mma), use_acc=False, is_async=True)

            # Off the state's chain while w h runs. Every reader of the previous chunk's stage (MMAs and
            # register loads of all warps) is past the barrier above: refill it with the chunk STAGES-1
            # ahead. (The compiler puts barriers between the TMA issues; here they overlap the MMA.)
            cp = c - 1 + STAGES
            bp = cp % STAGES
            _load_chunk_g(w_desc, k_desc, u_desc, g_desc, bars.index(bp), w_s.index(bp), k_s.index(bp),
                          u_s.index(bp), g_s.index(bp), bos + cp * BT, hv, hk, v0, (c > 0) & (cp < NC), K, V)
            tma.async_copy_shared_to_global(h_desc, [((s0 + c) * HV + hv) * K, v0], h_s)
            # tail rows of k, the key norms, u, the row factors
            valid = t0 + r < eos
            if t0 + BT > eos:
                zero_rows_past(k_b, t0, eos, blk)
            rk = inv_norm(k_b, L2NORM, mma)
            uu = u_s.index(b).load(mma).to(gl.float32)
            fac = gl.where(valid, rk * gl.exp(g_last - gc), 0.0)
            acc, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(acc, w_b, h_s))

            vn = uu - acc
            vs = gl.where(valid[:, None], vn * fac[:, None], 0.0)
            vs_s.store(vs.to(DT))
            # (branches stay before the MMA issue: ptxas injects a wgmma wait at control flow while one is
            # in flight)
            if vn_desc is not None:
                whole = t0 + BT <= eos
                if whole:
                    vn_s.store(vn.to(vn_desc.dtype))
                else:           # a tail chunk's rows past eos belong to the next sequence: masked stores
                    store_rows(vn, v_new, t0, eos, hv, v0, s_nt, s_nh, mma)
            fence_async_shared()
            gl.thread_barrier()
            if vn_desc is not None:
                if whole:
                    tma.async_copy_shared_to_global(vn_desc, [t0, hv * V + v0], vn_s)
            kt = k_b.permute((1, 0))
            S = warpgroup_mma(kt, vs_s, S, is_async=True)
            if vn_desc is None:
                store_rows(vn, v_new, t0, eos, hv, v0, s_nt, s_nh, mma)
            S, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(S, kt, vs_s))

        tma.store_wait(0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        # The slot is loaded again: the same pointer tensor as the initial load would be merged with it
        # (CSE) and held in registers through the loop (2 x K x BV / 128 of them per thread, spilled).
        slot = gl.load(state_indices + n).to(gl.int64)
        gl.store(_pool_ptrs(state, slot, hv, v0, s_ps, s_ph, s_pk, s_pv, K, BV, mma), S.to(state.dtype.element_ty))


@gluon.jit
def _load_chunk_q(w_desc, k_desc, u_desc, q_desc, bar, w_buf, k_buf, u_buf, q_buf, t0, hv, hk, v0, pred,
                  K: gl.constexpr, V: gl.constexpr):
    """_load_chunk plus the chunk's q [64, K] tile, all on one mbarrier."""
    _load_chunk(w_desc, k_desc, u_desc, bar, w_buf, k_buf, u_buf, t0, hv, hk, v0, pred, K, V,
                q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [t0, hk * K], bar, q_buf, pred=pred)


@gluon.jit
def chunk_state_output_sm90(w_desc, k_desc, u_desc, q_desc, gcum, state, state_indices, cu, has_init, o, o_desc,
                            HV, G, NV, scale, s_gt, s_gh, s_ps, s_ph, s_pk, s_pv, s_ot, s_oh,
                            V: gl.constexpr, L2NORM: gl.constexpr, STAGES: gl.constexpr,
                            num_warps: gl.constexpr):
    """chunk_state_sm90 with chunk_output's formula evaluated in the same pass: per chunk the state entering
    it is multiplied into q as well as w, so neither h nor v_new goes to memory (at 8x4096 tokens, bf16,
    they are 0.8 GB written and read again). Per chunk, with h_s the state as 16-bit in shared memory:
        vn    = u - w h                                   (wgmma, the state's chain)
        S     = exp(g_last) S + k^T (vn * rk * exp(g_last - g_cum))            (wgmma, the state's chain)
        o     = (q * rq * exp(g_cum)) h + causal(q k^T * rq rk exp(gc_i - gc_j)) vn    (off the chain)
    q h and q k^T are issued next to w h and retire after the state's update is issued; the scores go in
    as two 16-bit parts (as chunk_output_sm90).

    num_warps = 4 (one warpgroup) or 8: two warpgroups split the BV state columns (and the score columns)
    and share the w, k, q tiles, so 8 warps carry twice the columns on the same shared tiles. The scores'
    register operand is converted to the full-row layout each warpgroup needs.

    The decays come by plain loads a chunk ahead (`_decays`), not by TMA as in chunk_state_sm90: measured on
    an H100 (8x4096), the TMA'd g_cum tiles made this kernel 0.654 vs 0.614 ms (ptxas spilled 68 bytes);
    here the loads land under a chunk body four times as long.

    The norms of q and k are taken from the shared tiles each chunk: measured on an H100 (8x4096, BV=128,
    8 warps) that beats loading prefill's [T, H] norm buffers a chunk ahead (0.633 vs 0.682 ms; the
    prefetched rows cost registers and ptxas spills more).

    o_desc (or None): o as a TMA view [T, HV * V] with [64, BV] tiles, for whole chunks' output by TMA store.

    Rows past the sequence end: k rows zeroed in shared memory (chunk_state_sm90), vn rows selected to 0
    before they become an MMA operand (the tile may hold NaN garbage), o rows not stored."""
    BT: gl.constexpr = w_desc.block_type.shape[0]
    K: gl.constexpr = w_desc.block_type.shape[1]
    BV: gl.constexpr = u_desc.block_type.shape[1]
    DT: gl.constexpr = w_desc.dtype
    WN: gl.constexpr = num_warps // 4
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, WN],
                                                  instr_shape=[16, BV // WN, 16])
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, WN],
                                                    instr_shape=[16, BT // WN, 16])
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    row: gl.constexpr = gl.SliceLayout(1, mma)
    row_s: gl.constexpr = gl.SliceLayout(1, mma_s)
    col_s: gl.constexpr = gl.SliceLayout(0, mma_s)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    vs_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BV], DT)

    n, hv, hk, v0, bos, eos, NC, slot = _pass_of(gl.program_id(0), cu, state_indices, HV, G, NV, BT, BV)

    r = gl.arange(0, BT, layout=row)

    if slot < 0:
        # padding sequence: pool untouched, its output rows zero
        for c in range(0, NC):
            store_rows(gl.zeros([BT, BV], gl.float32, mma), o, bos + c * BT, eos, hv, v0, s_ot, s_oh, mma)
    else:
        w_s = gl.allocate_shared_memory(DT, [STAGES, BT, K], w_desc.layout)
        k_s = gl.allocate_shared_memory(DT, [STAGES, BT, K], k_desc.layout)
        q_s = gl.allocate_shared_memory(DT, [STAGES, BT, K], q_desc.layout)
        u_s = gl.allocate_shared_memory(u_desc.dtype, [STAGES, BT, BV], u_desc.layout)
        h_s = gl.allocate_shared_memory(DT, [K, BV], gl.NVMMASharedLayout.get_default_for([K, BV], DT))
        vs_s = gl.allocate_shared_memory(DT, [BT, BV], vs_layout)
        vn_s = gl.allocate_shared_memory(DT, [BT, BV], vs_layout)
        o_s = vn_s          # placeholder when o goes out by plain stores
        if o_desc is not None:
            o_s = gl.allocate_shared_memory(o_desc.dtype, o_desc.block_type.shape, o_desc.layout)
        bars = barrier_ring(STAGES, 1)
        for i in gl.static_range(STAGES):
            _load_chunk_q(w_desc, k_desc, u_desc, q_desc, bars.index(i), w_s.index(i), k_s.index(i),
                          u_s.index(i), q_s.index(i), bos + i * BT, hv, hk, v0, i < NC, K, V)

        S = _initial_state(state, slot, has_init, n, hv, v0, s_ps, s_ph, s_pk, s_pv, K, BV, mma)
        gc_n, gl_n = _decays(gcum, bos.to(gl.int64), eos, hv, s_gt, s_gh, BT, row)
        r_s = gl.arange(0, BT, layout=row_s)
        c_s = gl.arange(0, BT, layout=col_s)
        tri = r_s[:, None] >= c_s[None, :]

        for c in range(0, NC):
            b = c % STAGES
            t0 = bos + c * BT
            t0l = t0.to(gl.int64)
            gc = gc_n
            g_last = gl_n
            gc_n, gl_n = _decays(gcum, t0l + BT, eos, hv, s_gt, s_gh, BT, row)

            if o_desc is not None:
                tma.store_wait(0)       # the previous chunk's o_s has been read (the barrier below orders it)
            h_s.store(S.to(DT))
            S = S * gl.exp(g_last)
            fence_async_shared()
            gl.thread_barrier()
            mbarrier.wait(bars.index(b), (c // STAGES) & 1)
            w_b = w_s.index(b)
            k_b = k_s.index(b)
            q_b = q_s.index(b)
            acc = warpgroup_mma(w_b, h_s, gl.zeros([BT, BV], gl.float32, mma), use_acc=False, is_async=True)
            acc_o = warpgroup_mma(q_b, h_s, gl.zeros([BT, BV], gl.float32, mma), use_acc=False, is_async=True)

            cp = c - 1 + STAGES
            bp = cp % STAGES
            _load_chunk_q(w_desc, k_desc, u_desc, q_desc, bars.index(bp), w_s.index(bp), k_s.index(bp),
                          u_s.index(bp), q_s.index(bp), bos + cp * BT, hv, hk, v0, (c > 0) & (cp < NC), K, V)
            valid = t0 + r < eos
            if t0 + BT > eos:
                zero_rows_past(k_b, t0, eos, blk)
            kt = k_b.permute((1, 0))
            s_acc = warpgroup_mma(q_b, kt, gl.zeros([BT, BT], gl.float32, mma_s), use_acc=False, is_async=True)
            rk = inv_norm(k_b, L2NORM, mma)
            rq = inv_norm(q_b, L2NORM, mma) * scale
            uu = u_s.index(b).load(mma).to(gl.float32)
            fac = gl.where(valid, rk * gl.exp(g_last - gc), 0.0)
            acc, _, _ = warpgroup_mma_wait(num_outstanding=2, deps=(acc, w_b, h_s))

            vn = gl.where(valid[:, None], uu - acc, 0.0)
            vs_s.store((vn * fac[:, None]).to(DT))
            vn_s.store(vn.to(DT))
            fence_async_shared()
            gl.thread_barrier()
            S = warpgroup_mma(kt, vs_s, S, is_async=True)

            # the output, while the state's update runs
            acc_o, s_acc, _, _, _ = warpgroup_mma_wait(num_outstanding=1, deps=(acc_o, s_acc, q_b, kt, h_s))
            ok_s = (t0 + r_s) < eos
            causal = tri & ok_s[:, None]
            gc_r = gl.convert_layout(gc, row_s)
            gc_c = gl.convert_layout(gc, col_s)
            decay = gl.exp(gl.where(causal, gc_r[:, None] - gc_c[None, :], 0.0))
            sc = gl.where(causal, s_acc * gl.convert_layout(rq, row_s)[:, None]
                          * gl.convert_layout(rk, col_s)[None, :] * decay, 0.0)
            acc_o, pa_hi, pa_lo = split_mma(sc, vn_s, acc_o * (rq * gl.exp(gc))[:, None], p_op)
            S, _, _ = warpgroup_mma_wait(num_outstanding=2, deps=(S, kt, vs_s))
            acc_o, _, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(acc_o, vn_s, pa_hi, pa_lo))
            store_tile(acc_o, o_s, o_desc, o, t0, eos, hv, v0, s_ot, s_oh, V, mma)

        if o_desc is not None:
            tma.store_wait(0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        slot = gl.load(state_indices + n).to(gl.int64)
        gl.store(_pool_ptrs(state, slot, hv, v0, s_ps, s_ph, s_pk, s_pv, K, BV, mma), S.to(state.dtype.element_ty))
