"""Gluon kernel body of chunk_output for Blackwell (sm_100a; launcher and contract: chunk_output.py). Compile-only:
no Blackwell GPU has run it; the registry's first-use self-check compares it with a validated implementation there."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.blackwell import (TensorMemoryLayout, allocate_tensor_memory,
                                                                 fence_async_shared, get_tmem_reg_layout, mbarrier,
                                                                 tcgen05_commit, tcgen05_mma)

from gdn.nvidia.gluon._chunk_output_kernels import load_output_tiles, output_rows, output_slot, output_tiles
from gdn.nvidia.gluon._chunk_wy_sm100 import staged_split
from gdn.nvidia.gluon._jit import inv_norm, zero_rows_past


@gluon.jit
def chunk_output_sm100(q_desc, k_desc, h_desc, v_desc, gcum, state_indices, cu, o, N, HV, G, NV, scale,
                       s_gt, s_gh, s_ot, s_oh, V: gl.constexpr, BLOCK_N: gl.constexpr, L2NORM: gl.constexpr,
                       num_warps: gl.constexpr):
    """chunk_output_sm90 on tcgen05: one CTA (one warpgroup) per (chunk slot, v-head, V block), the v-heads and
    V blocks of a slot adjacent in the flat grid (the G v-heads reading one q/k tile find it in L2).

    TMA brings q, k [64, K] (one barrier) and h [K, BV], v_new [64, BV] (another). q k^T and q h are issued
    as soon as their tiles land, into tensor memory (64 + BV columns: two CTAs per SM at BV = 128), and
    retire on one commit while the norms and decays are taken. q h goes to registers with its row factor;
    the masked scores (fp32) go to shared memory as two 16-bit parts and their product with v_new lands in
    q h's tensor memory, added in registers (no accumulator is written from registers):
        o = (q h) * (rq exp(g_cum)) + causal(q k^T * rq rk exp(gc_i - gc_j)) v_new"""
    BT: gl.constexpr = q_desc.block_type.shape[0]
    BV: gl.constexpr = v_desc.block_type.shape[1]
    DT: gl.constexpr = q_desc.dtype
    s_tl: gl.constexpr = TensorMemoryLayout(block=(BT, BT), col_stride=1)
    o_tl: gl.constexpr = TensorMemoryLayout(block=(BT, BV), col_stride=1)
    reg_s: gl.constexpr = get_tmem_reg_layout(gl.float32, (BT, BT), s_tl, num_warps)
    reg_o: gl.constexpr = get_tmem_reg_layout(gl.float32, (BT, BV), o_tl, num_warps)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BT], DT)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])   # 16-byte row vectors
    row_s: gl.constexpr = gl.SliceLayout(1, reg_s)
    col_s: gl.constexpr = gl.SliceLayout(0, reg_s)
    row_o: gl.constexpr = gl.SliceLayout(1, reg_o)

    s, hv, iv, n, t0, eos = output_slot(cu, N, HV, NV, BT, BLOCK_N, num_warps)
    if t0 < eos:
        o_ptrs, st_mask = output_rows(o, t0, eos, hv, iv, s_ot, s_oh, V, BT, BV, blk)
        if gl.load(state_indices + n) >= 0:
            q_smem, k_smem, h_smem, v_smem = output_tiles(q_desc, k_desc, h_desc, v_desc)
            p_s = gl.allocate_shared_memory(DT, [2, BT, BT], p_layout)            # the scores' hi, lo parts
            bars = gl.allocate_shared_memory(gl.int64, [4, 1], mbarrier.MBarrierLayout())
            bar_qk = bars.index(0)
            bar_hv = bars.index(1)
            bar_mma = bars.index(2)
            bar_pv = bars.index(3)
            load_output_tiles(q_desc, k_desc, h_desc, v_desc, q_smem, k_smem, h_smem, v_smem, bar_qk, bar_hv, t0, s,
                              hv, hv // G, iv, HV, V)
            mbarrier.init(bar_mma, count=1)
            mbarrier.init(bar_pv, count=1)
            s_t = allocate_tensor_memory(gl.float32, [BT, BT], s_tl)
            o_t = allocate_tensor_memory(gl.float32, [BT, BV], o_tl)

            # The decays are independent of the tiles: load them while TMA is in flight. Rows past the
            # sequence end read as 0 (their outputs are not stored; the mask below drops them anyway).
            r_s = gl.arange(0, BT, layout=row_s)
            c_s = gl.arange(0, BT, layout=col_s)
            gc_r = gl.load(gcum + (t0 + r_s) * s_gt + hv * s_gh, mask=t0 + r_s < eos, other=0.0)
            gc_c = gl.load(gcum + (t0 + c_s) * s_gt + hv * s_gh, mask=t0 + c_s < eos, other=0.0)
            r_o = gl.arange(0, BT, layout=row_o)
            gc_o = gl.load(gcum + (t0 + r_o) * s_gt + hv * s_gh, mask=t0 + r_o < eos, other=0.0)

            mbarrier.wait(bar_qk, 0)
            tcgen05_mma(q_smem, k_smem.permute((1, 0)), s_t, use_acc=False)
            mbarrier.wait(bar_hv, 0)
            tcgen05_mma(q_smem, h_smem, o_t, use_acc=False)
            tcgen05_commit(bar_mma)
            rq = inv_norm(q_smem, L2NORM, blk) * scale
            rk = inv_norm(k_smem, L2NORM, blk)
            if t0 + BT > eos:          # tail chunk: v_new rows past the end may be NaN garbage
                zero_rows_past(v_smem, t0, eos, blk)

            mbarrier.wait(bar_mma, 0)
            rows_ok = (t0 + r_s) < eos
            causal = (r_s[:, None] >= c_s[None, :]) & rows_ok[:, None]
            decay = gl.exp(gl.where(causal, gc_r[:, None] - gc_c[None, :], 0.0))
            rq_s = gl.convert_layout(rq, row_s)
            rk_s = gl.convert_layout(rk, col_s)
            sc = gl.where(causal, s_t.load(reg_s) * rq_s[:, None] * rk_s[None, :] * decay, 0.0)
            # q h with its row factor to registers: its tensor memory then takes the scores' product
            o_acc = o_t.load(reg_o) * (gl.convert_layout(rq, row_o) * gl.exp(gc_o))[:, None]
            # the fp32 scores as two 16-bit parts: their precision kept next to v_new's own
            staged_split(sc, p_s.index(0), p_s.index(1))
            fence_async_shared()
            gl.thread_barrier()
            tcgen05_mma(p_s.index(0), v_smem, o_t, use_acc=False)
            tcgen05_mma(p_s.index(1), v_smem, o_t)
            tcgen05_commit(bar_pv)
            mbarrier.wait(bar_pv, 0)
            o_acc = o_acc + o_t.load(reg_o)
            for i in gl.static_range(4):
                mbarrier.invalidate(bars.index(i))
            gl.store(o_ptrs, gl.convert_layout(o_acc.to(o.dtype.element_ty), blk), mask=st_mask)
        else:
            gl.store(o_ptrs, gl.zeros([BT, BV], o.dtype.element_ty, blk), mask=st_mask)
