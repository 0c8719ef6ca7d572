"""Gluon kernel body of chunk_state for Blackwell (sm_100a; launcher and contract: chunk_state.py). Compile-only:
no Blackwell GPU has run it; the registry's first-use self-check compares it with a validated implementation there."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.blackwell import (TensorMemoryLayout, allocate_tensor_memory,
                                                                 fence_async_shared, get_tmem_reg_layout, mbarrier,
                                                                 tcgen05_commit, tcgen05_mma, tma)

from gdn.nvidia.gluon._chunk_state_kernels import (_decays_tma, _initial_state, _load_chunk_g, _pass_of, _pool_ptrs,
                                                    pass_buffers, state_in, zero_pass)
from gdn.nvidia.gluon._jit import inv_norm, store_rows, zero_rows_past


@gluon.jit
def chunk_state_sm100(w_desc, k_desc, u_desc, g_desc, h_desc, state, state_indices, cu, has_init, v_new, vn_desc,
                      HV, G, NV, s_ps, s_ph, s_pk, s_pv, s_nt, s_nh,
                      V: gl.constexpr, L2NORM: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """chunk_state_sm90 on tcgen05 (same arguments): one CTA (one warpgroup) per (sequence, v-head, BV state
    columns). The fp32 state S [K, BV] stays in registers, in the layout of a [K, BV] tensor-memory load
    (one row per thread at K = 128); per chunk:
        h_s  <- S as 16-bit (B of w h; TMA-stored as h[s])
        vn    = u - w h                          (tcgen05 into tensor memory [64, BV])
        vs_s <- vn * rk * exp(g_last - g_cum)    (rows past the sequence end: 0)
        S     = exp(g_last) S + k^T vs           (tcgen05 into tensor memory [K, BV], added in registers)
    The update's product lands in its own tensor-memory tile and is added to S in registers, so no
    accumulator is written from registers. K <= 128: k^T vs is one MMA of M = K (the launcher declines 256).
    The w, k, u tiles and g_cum rows of the next STAGES-1 chunks are in flight by TMA meanwhile (one
    mbarrier per stage), as in the Hopper kernel; rows past a sequence's end are handled as there (k rows
    zeroed in shared memory, vs rows selected to zero, v_new rows not stored)."""
    BT: gl.constexpr = w_desc.block_type.shape[0]
    K: gl.constexpr = w_desc.block_type.shape[1]
    BV: gl.constexpr = u_desc.block_type.shape[1]
    DT: gl.constexpr = w_desc.dtype
    wh_tl: gl.constexpr = TensorMemoryLayout(block=(BT, BV), col_stride=1)
    kv_tl: gl.constexpr = TensorMemoryLayout(block=(K, BV), col_stride=1)
    reg_c: gl.constexpr = get_tmem_reg_layout(gl.float32, (BT, BV), wh_tl, num_warps)    # a chunk's [64, BV]
    reg_s: gl.constexpr = get_tmem_reg_layout(gl.float32, (K, BV), kv_tl, num_warps)     # the state's [K, BV]
    row: gl.constexpr = gl.SliceLayout(1, reg_c)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    g2: gl.constexpr = gl.BlockedLayout([1, 4], [32, 1], [num_warps, 1], [1, 0])         # g_cum's [64, 4] tiles

    n, hv, hk, v0, bos, eos, NC, slot = _pass_of(gl.program_id(0), cu, state_indices, HV, G, NV, BT, BV)
    s0 = bos // BT + n                          # the sequence's first chunk slot

    r = gl.arange(0, BT, layout=row)
    h_s = gl.allocate_shared_memory(DT, [K, BV], h_desc.layout)

    if slot < 0:
        zero_pass(h_s, h_desc, v_new, bos, eos, NC, s0, HV, hv, v0, s_nt, s_nh, BT, blk)
    else:
        w_s, k_s, u_s, g_s, vs_s, vn_s, bars = pass_buffers(w_desc, k_desc, u_desc, g_desc, vn_desc, bos, NC, hv, hk,
                                                            v0, K, V, STAGES)
        mma_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        bar_wh = mma_bars.index(0)
        bar_kv = mma_bars.index(1)
        mbarrier.init(bar_wh, count=1)
        mbarrier.init(bar_kv, count=1)
        wh_t = allocate_tensor_memory(gl.float32, [BT, BV], wh_tl)
        kv_t = allocate_tensor_memory(gl.float32, [K, BV], kv_tl)

        # initial state from the pool slot, while the tiles land
        S = _initial_state(state, slot, has_init, n, hv, v0, s_ps, s_ph, s_pk, s_pv, K, BV, reg_s)

        for c in range(0, NC):
            b = c % STAGES
            t0 = bos + c * BT

            state_in(S, h_s, bars.index(b), (c // STAGES) & 1)
            w_b = w_s.index(b)
            k_b = k_s.index(b)
            tcgen05_mma(w_b, h_s, wh_t, use_acc=False)
            tcgen05_commit(bar_wh)

            # Off the state's chain while w h runs. Every reader of the previous chunk's stage (its MMAs,
            # retired on bar_wh / bar_kv, and register loads of all warps) is past the barrier above: refill it
            # with the chunk STAGES-1 ahead.
            cp = c - 1 + STAGES
            bp = cp % STAGES
            _load_chunk_g(w_desc, k_desc, u_desc, g_desc, bars.index(bp), w_s.index(bp), k_s.index(bp),
                          u_s.index(bp), g_s.index(bp), bos + cp * BT, hv, hk, v0, (c > 0) & (cp < NC), K, V)
            tma.async_copy_shared_to_global(h_desc, [((s0 + c) * HV + hv) * K, v0], h_s)
            gc, g_last = _decays_tma(g_s.index(b), t0, eos, hv, row, g2)
            # tail rows of k, the key norms, u, the row factors
            valid = t0 + r < eos
            if t0 + BT > eos:
                zero_rows_past(k_b, t0, eos, blk)
            rk = gl.convert_layout(inv_norm(k_b, L2NORM, blk), row)      # (reg_c is a [64, BV] layout)
            uu = u_s.index(b).load(reg_c).to(gl.float32)
            fac = gl.where(valid, rk * gl.exp(g_last - gc), 0.0)
            mbarrier.wait(bar_wh, c & 1)

            vn = uu - wh_t.load(reg_c)
            vs = gl.where(valid[:, None], vn * fac[:, None], 0.0)
            vs_s.store(vs.to(DT))
            whole = t0 + BT <= eos
            if vn_desc is not None:
                if whole:
                    vn_s.store(vn.to(vn_desc.dtype))
                else:           # a tail chunk's rows past eos belong to the next sequence: masked stores
                    store_rows(vn, v_new, t0, eos, hv, v0, s_nt, s_nh, reg_c)
            else:
                store_rows(vn, v_new, t0, eos, hv, v0, s_nt, s_nh, reg_c)
            fence_async_shared()
            gl.thread_barrier()
            if vn_desc is not None:
                if whole:
                    tma.async_copy_shared_to_global(vn_desc, [t0, hv * V + v0], vn_s)
            tcgen05_mma(k_b.permute((1, 0)), vs_s, kv_t, use_acc=False)
            tcgen05_commit(bar_kv)
            mbarrier.wait(bar_kv, c & 1)
            S = S * gl.exp(g_last) + kv_t.load(reg_s)

        tma.store_wait(0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        mbarrier.invalidate(bar_wh)
        mbarrier.invalidate(bar_kv)
        # The slot is loaded again (see chunk_state_sm90: a CSE'd pointer tensor would be held through the loop).
        slot = gl.load(state_indices + n).to(gl.int64)
        gl.store(_pool_ptrs(state, slot, hv, v0, s_ps, s_ph, s_pk, s_pv, K, BV, reg_s),
                 S.to(state.dtype.element_ty))
