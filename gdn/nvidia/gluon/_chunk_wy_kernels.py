"""Gluon kernel bodies of chunk_wy (launcher and contract: chunk_wy.py)."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma_wait

from gdn.nvidia.gluon._jit import inv_norm, seq_of_slot, split_mma, zero_rows_past


@gluon.jit
def wy_tiles(k_desc, v_desc, gcum, beta, A, t0, eos, hv, G, s_gt, s_gh, s_bt, s_bh, s_at, s_ah, blk: gl.constexpr):
    """Chunk t0's k [64, K] and v [64, V] tiles by TMA on a fresh mbarrier and, while they land, A [64, 64] fp32
    (rows and columns past the sequence end masked to zero) and its column factors beta and g_cum, in blk.
    Returns (k_smem, v_smem, bar, A, beta, g_cum); the caller waits on bar (phase 0) and invalidates it."""
    BT: gl.constexpr = k_desc.block_type.shape[0]
    K: gl.constexpr = k_desc.block_type.shape[1]
    V: gl.constexpr = v_desc.block_type.shape[1]
    tr = t0.to(gl.int32)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, v_desc.block_type.shape, v_desc.layout)
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [tr, (hv // G) * K], bar, k_smem)
    tma.async_copy_global_to_shared(v_desc, [tr, hv * V], bar, v_smem)
    r = gl.arange(0, BT, layout=gl.SliceLayout(1, blk))
    c = gl.arange(0, BT, layout=gl.SliceLayout(0, blk))
    r_ok = t0 + r < eos
    c_ok = t0 + c < eos
    Ai = gl.load(A + (t0 + r)[:, None] * s_at + hv * s_ah + c[None, :], mask=r_ok[:, None] & c_ok[None, :],
                 other=0.0).to(gl.float32)
    bc = gl.load(beta + (t0 + c) * s_bt + hv * s_bh, mask=c_ok, other=0.0).to(gl.float32)
    gc = gl.load(gcum + (t0 + c) * s_gt + hv * s_gh, mask=c_ok, other=0.0)
    return k_smem, v_smem, bar, Ai, bc, gc


@gluon.jit
def chunk_wy_sm90(k_desc, v_desc, gcum, beta, A, w, u, cu, N, HV, G, s_gt, s_gh, s_bt, s_bh, s_at, s_ah,
                  s_wt, s_wh, s_ut, s_uh, BLOCK_N: gl.constexpr, L2NORM: gl.constexpr, num_warps: gl.constexpr):
    """One CTA (one warpgroup) per (chunk slot, v-head), v-heads of a slot adjacent (the G v-heads of one k
    tile share it in L2). TMA brings k [64, K] and v [64, V] into NVMMA shared memory; A [64, 64] fp32 comes
    to registers with its per-token column factors folded in (beta exp(g_cum) / norm for w, beta for u),
    split into two 16-bit parts, and is wgmma's register operand against the shared k and v tiles.

    Every operand of an async wgmma (the shared tile and the register parts of A) is a dep of the wait that
    retires it: that keeps the tile live for the shared-memory allocator until then. Without it the
    allocator reused v's (k's) bytes as convert_layout scratch while the u (w) MMAs still read them, and
    garbage, sometimes NaN/Inf bit patterns, entered the products."""
    BT: gl.constexpr = k_desc.block_type.shape[0]
    K: gl.constexpr = k_desc.block_type.shape[1]
    V: gl.constexpr = v_desc.block_type.shape[1]
    mma_w: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, K, 16])
    mma_u: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, V, 16])
    a_w: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_w, k_width=2)
    a_u: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_u, k_width=2)
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
        r = gl.arange(0, BT, layout=row_b)
        r_ok = t0 + r < eos
        mbarrier.wait(bar, 0)
        mbarrier.invalidate(bar)
        if t0 + BT > eos:           # tail chunk: rows past the end may be NaN garbage
            zero_rows_past(k_smem, t0, eos, blk)
            zero_rows_past(v_smem, t0, eos, blk)
        u_acc, ua_hi, ua_lo = split_mma(Ai * bc[None, :], v_smem, gl.zeros([BT, V], gl.float32, mma_u), a_u, False)
        rk = gl.convert_layout(inv_norm(k_smem, L2NORM, blk), col_b)
        w_acc, wa_hi, wa_lo = split_mma(Ai * (bc * gl.exp(gc) * rk)[None, :], k_smem,
                                        gl.zeros([BT, K], gl.float32, mma_w), a_w, False)

        u_acc, _, _, _ = warpgroup_mma_wait(num_outstanding=2, deps=(u_acc, v_smem, ua_hi, ua_lo))
        o_v = gl.arange(0, V, layout=col_b)
        gl.store(u + (t0 + r)[:, None] * s_ut + hv * s_uh + o_v[None, :],
                 gl.convert_layout(u_acc.to(u.dtype.element_ty), blk), mask=r_ok[:, None])
        w_acc, _, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(w_acc, k_smem, wa_hi, wa_lo))
        o_k = gl.arange(0, K, layout=col_b)
        gl.store(w + (t0 + r)[:, None] * s_wt + hv * s_wh + o_k[None, :],
                 gl.convert_layout(w_acc.to(w.dtype.element_ty), blk), mask=r_ok[:, None])
