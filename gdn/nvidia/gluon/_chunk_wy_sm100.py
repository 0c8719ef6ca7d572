"""Gluon kernel body of chunk_wy for Blackwell (sm_100a; launcher and contract: chunk_wy.py). Compile-only: no
Blackwell GPU has run it; the registry's first-use self-check compares it with a validated implementation there."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.blackwell import (TensorMemoryLayout, allocate_tensor_memory,
                                                                 fence_async_shared, get_tmem_reg_layout, mbarrier,
                                                                 tcgen05_commit, tcgen05_mma)

from gdn.nvidia.gluon._chunk_wy_kernels import wy_tiles
from gdn.nvidia.gluon._jit import inv_norm, seq_of_slot, split16, zero_rows_past


@gluon.jit
def staged_split(x, hi_s, lo_s):
    """fp32 x as its two 16-bit parts (split16) into the shared tiles hi_s, lo_s: a register factor of the
    Hopper kernels, which tcgen05 reads from shared memory. The caller fences and syncs before the MMA."""
    hi, lo = split16(x, hi_s.dtype)
    hi_s.store(hi)
    lo_s.store(lo)


@gluon.jit
def chunk_wy_sm100(k_desc, v_desc, gcum, beta, A, w, u, cu, N, HV, G, s_gt, s_gh, s_bt, s_bh, s_at, s_ah,
                   s_wt, s_wh, s_ut, s_uh, BLOCK_N: gl.constexpr, L2NORM: gl.constexpr, num_warps: gl.constexpr):
    """chunk_wy_sm90 on tcgen05: one CTA (one warpgroup) per (chunk slot, v-head). TMA brings k [64, K] and
    v [64, V]; A [64, 64] with its per-token column factors folded in (beta exp(g_cum) / norm for w, beta
    for u) goes to shared memory as two 16-bit parts each (tcgen05's A operand is a shared tile, not
    registers), and four MMAs accumulate w and u in tensor memory (K + V <= 512 columns), retired together
    by one commit."""
    BT: gl.constexpr = k_desc.block_type.shape[0]
    K: gl.constexpr = k_desc.block_type.shape[1]
    V: gl.constexpr = v_desc.block_type.shape[1]
    DT: gl.constexpr = k_desc.dtype
    a_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BT], DT)
    u_tl: gl.constexpr = TensorMemoryLayout(block=(BT, V), col_stride=1)
    w_tl: gl.constexpr = TensorMemoryLayout(block=(BT, K), col_stride=1)
    u_reg: gl.constexpr = get_tmem_reg_layout(gl.float32, (BT, V), u_tl, num_warps)
    w_reg: gl.constexpr = get_tmem_reg_layout(gl.float32, (BT, K), w_tl, num_warps)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    row_b: gl.constexpr = gl.SliceLayout(1, blk)
    col_b: gl.constexpr = gl.SliceLayout(0, blk)

    pid = gl.program_id(0)
    s = pid // HV
    hv = pid % HV
    n, t0, eos = seq_of_slot(cu, N, s, BT, BLOCK_N, num_warps)
    if t0 < eos:
        k_smem, v_smem, bar, Ai, bc, gc = wy_tiles(k_desc, v_desc, gcum, beta, A, t0, eos, hv, G, s_gt, s_gh, s_bt,
                                                   s_bh, s_at, s_ah, blk)
        a_s = gl.allocate_shared_memory(DT, [4, BT, BT], a_layout)      # u's hi, lo, w's hi, lo
        done = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(done, count=1)
        r = gl.arange(0, BT, layout=row_b)
        r_ok = t0 + r < eos
        staged_split(Ai * bc[None, :], a_s.index(0), a_s.index(1))

        mbarrier.wait(bar, 0)
        if t0 + BT > eos:           # tail chunk: rows past the end may be NaN garbage
            zero_rows_past(k_smem, t0, eos, blk)
            zero_rows_past(v_smem, t0, eos, blk)
        rk = gl.convert_layout(inv_norm(k_smem, L2NORM, blk), col_b)
        staged_split(Ai * (bc * gl.exp(gc) * rk)[None, :], a_s.index(2), a_s.index(3))
        fence_async_shared()
        gl.thread_barrier()

        u_t = allocate_tensor_memory(gl.float32, [BT, V], u_tl)
        w_t = allocate_tensor_memory(gl.float32, [BT, K], w_tl)
        tcgen05_mma(a_s.index(0), v_smem, u_t, use_acc=False)
        tcgen05_mma(a_s.index(1), v_smem, u_t)
        tcgen05_mma(a_s.index(2), k_smem, w_t, use_acc=False)
        tcgen05_mma(a_s.index(3), k_smem, w_t)
        tcgen05_commit(done)
        mbarrier.wait(done, 0)
        mbarrier.invalidate(bar)
        mbarrier.invalidate(done)

        o_v = gl.arange(0, V, layout=col_b)
        gl.store(u + (t0 + r)[:, None] * s_ut + hv * s_uh + o_v[None, :],
                 gl.convert_layout(u_t.load(u_reg).to(u.dtype.element_ty), blk), mask=r_ok[:, None])
        o_k = gl.arange(0, K, layout=col_b)
        gl.store(w + (t0 + r)[:, None] * s_wt + hv * s_wh + o_k[None, :],
                 gl.convert_layout(w_t.load(w_reg).to(w.dtype.element_ty), blk), mask=r_ok[:, None])
