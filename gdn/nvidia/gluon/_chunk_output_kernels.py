"""Gluon kernel bodies of chunk_output (launcher and contract: chunk_output.py)."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from gdn.nvidia.gluon._jit import inv_norm, seq_of_slot, split_mma, zero_rows_past


@gluon.jit
def output_slot(cu, N, HV, NV, BT: gl.constexpr, BLOCK_N: gl.constexpr, num_warps: gl.constexpr):
    """Program id -> (chunk slot s, v-head hv, V block iv, sequence n, first token t0, sequence end eos): the
    v-heads and V blocks of a slot adjacent in the flat grid. The slot holds a chunk iff t0 < eos."""
    pid = gl.program_id(0)
    per_slot = HV * NV
    s = pid // per_slot
    n, t0, eos = seq_of_slot(cu, N, s, BT, BLOCK_N, num_warps)
    return s, (pid % per_slot) // NV, pid % NV, n, t0, eos


@gluon.jit
def output_rows(o, t0, eos, hv, iv, s_ot, s_oh, V: gl.constexpr, BT: gl.constexpr, BV: gl.constexpr,
                blk: gl.constexpr):
    """Pointers [64, BV] of the chunk's output block (v-head hv, columns iv * BV..) and the store mask (rows
    before eos, columns below V), in blk."""
    r_st = gl.arange(0, BT, layout=gl.SliceLayout(1, blk))
    c_st = iv * BV + gl.arange(0, BV, layout=gl.SliceLayout(0, blk))
    st_rows = t0 + r_st
    return (o + st_rows[:, None] * s_ot + hv * s_oh + c_st[None, :],
            (st_rows < eos)[:, None] & (c_st < V)[None, :])


@gluon.jit
def output_tiles(q_desc, k_desc, h_desc, v_desc):
    """Shared tiles for the chunk's q, k [64, K], h [K, BV] and v_new [64, BV] (NVMMA layouts)."""
    DT: gl.constexpr = q_desc.dtype
    return (gl.allocate_shared_memory(DT, q_desc.block_type.shape, q_desc.layout),
            gl.allocate_shared_memory(DT, k_desc.block_type.shape, k_desc.layout),
            gl.allocate_shared_memory(DT, h_desc.block_type.shape, h_desc.layout),
            gl.allocate_shared_memory(DT, v_desc.block_type.shape, v_desc.layout))


@gluon.jit
def load_output_tiles(q_desc, k_desc, h_desc, v_desc, q_smem, k_smem, h_smem, v_smem, bar_qk, bar_hv, t0, s, hv,
                      hk, iv, HV, V: gl.constexpr):
    """Initialise bar_qk and bar_hv, and TMA q, k (k head hk) onto the first, h (slot s, v-head hv, V block iv)
    and v_new onto the second."""
    K: gl.constexpr = q_desc.block_type.shape[1]
    BV: gl.constexpr = v_desc.block_type.shape[1]
    tr = t0.to(gl.int32)
    mbarrier.init(bar_qk, count=1)
    mbarrier.init(bar_hv, count=1)
    mbarrier.expect(bar_qk, q_desc.block_type.nbytes + k_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [tr, hk * K], bar_qk, q_smem)
    tma.async_copy_global_to_shared(k_desc, [tr, hk * K], bar_qk, k_smem)
    mbarrier.expect(bar_hv, h_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(h_desc, [(s * HV + hv) * K, iv * BV], bar_hv, h_smem)
    tma.async_copy_global_to_shared(v_desc, [tr, hv * V + iv * BV], bar_hv, v_smem)


@gluon.jit
def chunk_output_sm90(q_desc, k_desc, h_desc, v_desc, gcum, state_indices, cu, o, N, HV, G, NV, scale,
                      s_gt, s_gh, s_ot, s_oh, V: gl.constexpr, BLOCK_N: gl.constexpr, L2NORM: gl.constexpr,
                      num_warps: gl.constexpr):
    """One CTA (one warpgroup) per (chunk slot, v-head, V block); the flat grid runs the v-heads and V blocks
    of a slot next to each other, so the G v-heads reading one q/k tile find it in L2.

    TMA brings q, k [64, K] (one barrier) and h [K, BV], v_new [64, BV] (another) into NVMMA-swizzled shared
    memory; wgmma computes q k^T and q h from shared memory while the norms are taken, then the masked
    scores (fp32, split into two 16-bit parts) times v_new from registers.

    Every operand of an async wgmma (shared tiles, the transposed k view, the register score parts) is a dep
    of the wait that retires it: the shared-memory allocator sees a buffer live only until its last use, and
    without that it handed h's bytes to the rq/rk layout conversions while q h was still reading them."""
    BT: gl.constexpr = q_desc.block_type.shape[0]
    BV: gl.constexpr = v_desc.block_type.shape[1]
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BT, 16])
    mma_o: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BV, 16])
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_o, k_width=2)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])   # 16-byte row vectors
    row_s: gl.constexpr = gl.SliceLayout(1, mma_s)
    col_s: gl.constexpr = gl.SliceLayout(0, mma_s)
    row_o: gl.constexpr = gl.SliceLayout(1, mma_o)

    s, hv, iv, n, t0, eos = output_slot(cu, N, HV, NV, BT, BLOCK_N, num_warps)
    if t0 < eos:
        o_ptrs, st_mask = output_rows(o, t0, eos, hv, iv, s_ot, s_oh, V, BT, BV, blk)
        if gl.load(state_indices + n) >= 0:
            q_smem, k_smem, h_smem, v_smem = output_tiles(q_desc, k_desc, h_desc, v_desc)
            bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
            bar_qk = bars.index(0)
            bar_hv = bars.index(1)
            load_output_tiles(q_desc, k_desc, h_desc, v_desc, q_smem, k_smem, h_smem, v_smem, bar_qk, bar_hv, t0, s,
                              hv, hv // G, iv, HV, V)

            # The decays are independent of the tiles: load them while TMA is in flight. Rows past the
            # sequence end read as 0 (their outputs are not stored; the mask below drops them anyway).
            r_s = gl.arange(0, BT, layout=row_s)
            c_s = gl.arange(0, BT, layout=col_s)
            gc_r = gl.load(gcum + (t0 + r_s) * s_gt + hv * s_gh, mask=t0 + r_s < eos, other=0.0)
            gc_c = gl.load(gcum + (t0 + c_s) * s_gt + hv * s_gh, mask=t0 + c_s < eos, other=0.0)
            r_o = gl.arange(0, BT, layout=row_o)
            gc_o = gl.load(gcum + (t0 + r_o) * s_gt + hv * s_gh, mask=t0 + r_o < eos, other=0.0)

            mbarrier.wait(bar_qk, 0)
            kt_smem = k_smem.permute((1, 0))
            s_acc = warpgroup_mma(q_smem, kt_smem, gl.zeros([BT, BT], gl.float32, mma_s), use_acc=False,
                                  is_async=True)
            rq = inv_norm(q_smem, L2NORM, blk) * scale
            rk = inv_norm(k_smem, L2NORM, blk)
            mbarrier.wait(bar_hv, 0)
            o_acc = warpgroup_mma(q_smem, h_smem, gl.zeros([BT, BV], gl.float32, mma_o), use_acc=False,
                                  is_async=True)

            if t0 + BT > eos:          # tail chunk: v_new rows past the end may be NaN garbage
                zero_rows_past(v_smem, t0, eos, blk)

            s_acc, _, _ = warpgroup_mma_wait(num_outstanding=1, deps=(s_acc, q_smem, kt_smem))
            rows_ok = (t0 + r_s) < eos
            causal = (r_s[:, None] >= c_s[None, :]) & rows_ok[:, None]
            decay = gl.exp(gl.where(causal, gc_r[:, None] - gc_c[None, :], 0.0))
            rq_s = gl.convert_layout(rq, row_s)
            rk_s = gl.convert_layout(rk, col_s)
            sc = gl.where(causal, s_acc * rq_s[:, None] * rk_s[None, :] * decay, 0.0)

            o_acc, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(o_acc, q_smem, h_smem))
            o_acc = o_acc * (gl.convert_layout(rq, row_o) * gl.exp(gc_o))[:, None]
            # the fp32 scores as two 16-bit parts: their precision kept next to v_new's own
            o_acc, pa_hi, pa_lo = split_mma(sc, v_smem, o_acc, p_op)
            o_acc, _, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(o_acc, v_smem, pa_hi, pa_lo))
            mbarrier.invalidate(bar_qk)
            mbarrier.invalidate(bar_hv)
            gl.store(o_ptrs, gl.convert_layout(o_acc.to(o.dtype.element_ty), blk), mask=st_mask)
        else:
            gl.store(o_ptrs, gl.zeros([BT, BV], o.dtype.element_ty, blk), mask=st_mask)
