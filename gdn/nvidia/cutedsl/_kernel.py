"""CuTeDSL kernel class of the decode family (decode, decode_packed, decode_mtp); imported lazily.

One CTA advances the gated delta rule for T tokens (T = 1 for decode) on one tile of one (sequence, v-head)
state and keeps the tile in registers, in fp32, from the first step to the last. The state's columns along V
evolve independently, so a CTA never talks to another one, and small batches split every state over many
CTAs (`Spec.tile`, from the table in _common.py).

  vk ([S, HV, V, K], K contiguous): a warp owns RW rows of V; LPR lanes cover one row of K with 16-byte
     vectors (KPL elements per lane), so both reductions over K are warp butterflies. fp32 K=128: one row
     per warp pass, 4 elements per lane; bf16: two rows per pass, 8 elements per lane.
  kv ([S, HV, K, V], V contiguous): a CTA owns BV columns of V; a thread owns RK rows of K x VEC columns
     (16-byte vectors); the reductions over K run in the thread, over lanes (butterfly), then over warps
     (shared memory).

Per step, fp32:  kh = h k;  qh = h q (the pre-decay tile);  u = beta (v - exp(g) kh);
                 o = exp(g) qh + u (k . q);  h = exp(g) h + k u^T
(o = h_new q; both reductions read the same tile, and the decay multiplies the two sums instead of the tile).
Offsets into the pools are int64; a negative slot index is padding (no state traffic, zero output). All of
a step's loads are issued before the first reduction, so the state tile is in flight while q and k are
normalised and the gates computed.

Tile options (the third element of `Spec.tile`, see _common.TILE_OPTS; without them the code is the one
the first GPU validation ran, PTX unchanged):
  "e"  the slot-index load, then q, k, v, the gates (and the intermediate index) go out before the kernel
       waits for the slot; the state loads follow as soon as it lands and the norms / gates are computed
       while the state is in flight. The norms sit before the `slot >= 0` branch on purpose: otherwise LLVM
       sinks the loads into the branch, behind the index load again.
  "s"  (vk, T = 1) the state tile stays in registers in the pool dtype; each row is widened, updated,
       stored and dropped on its own, so a bf16 tile costs half the registers per byte (16x4: 80 instead of
       123 registers) and larger tiles (more bytes in flight per thread) fit.

The host function takes raw device pointers and scalars (no DLPack on the hot path): B, the pool sizes and
the batch/step/slot strides are runtime values, so one compiled variant serves every batch size.

PDL (`Spec.pdl`, sm_90+): the kernel is launched with `use_pdl` (programmatic stream serialization) and may
start while the previous kernel on the stream still runs, so it waits (griddepcontrol.wait: that kernel
finished, its writes visible) before any global access that counts, the slot index included: we cannot
know what the previous kernel wrote nor whether it still reads the pool we write. Before the wait it only
takes a hint: the slot index read L2-only (it may be stale) and its state rows prefetched into L2
(`_prefetch_state`), so their DRAM latency overlaps the previous kernel. launch_dependents then lets the
next PDL kernel be scheduled once all our CTAs have started (it waits for us in its own prologue).
"""
from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64

from gdn.nvidia.cutedsl._common import split_tile

L2NORM_EPS = 1e-6
SOFTPLUS_THRESHOLD = 20.0

DTYPES = {"fp32": cutlass.Float32, "bf16": cutlass.BFloat16, "fp16": cutlass.Float16,
          "i32": cutlass.Int32, "i64": cutlass.Int64}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "i32": 4, "i64": 8}


def _butterfly(x, lo, hi=32):
    """Sum over the lanes that differ only in the bits lo..hi/2 of the lane index (all get the total)."""
    off = hi // 2
    while off >= lo:
        x = x + cute.arch.shuffle_sync_bfly(x, offset=off)
        off //= 2
    return x


def _softplus(x):
    e = cute.math.exp(cutlass.min(x, Float32(SOFTPLUS_THRESHOLD)))
    return Float32(cutlass.select_(x > Float32(SOFTPLUS_THRESHOLD), x, cute.math.log1p(e)))


class DecodeKernel:
    """One compiled variant of the decode family. `spec` (gdn.nvidia.cutedsl._common.Spec) fixes every
    compile-time choice; `cute.compile(DecodeKernel(spec), *placeholders)` builds it (_common.compile_spec)."""

    def __init__(self, spec):
        s = spec
        self.spec = s
        self.T, self.H, self.HV, self.K, self.V = s.T, s.H, s.HV, s.K, s.V
        self.G = s.HV // s.H
        self.vk = s.layout == "vk"
        self.sdt = DTYPES[s.state]
        self.idt = DTYPES[s.inter] if s.inter else self.sdt
        self.has_inter = s.inter is not None
        self.has_inter_idx = s.inter_idx is not None
        self.tree = s.parent is not None
        self.pdl = s.pdl
        # elements the host guarantees the pool strides / q,k,v row strides to be multiples of
        self.s_div = max(1, s.state_align // BYTES[s.state])
        self.i_div = max(1, s.inter_align // BYTES[s.inter or s.state])
        self.q_div = max(1, s.qkv_align // BYTES[s.qkv])
        vec = max(1, s.vec_bytes // BYTES[s.state])     # elements per state vector access
        tile_a, nw, opts = split_tile(s.tile)
        self.early = "e" in opts                        # loads independent of the slot index go out first
        self.stream = "s" in opts                       # rows widened, updated and stored one at a time
        self.prefetch = s.pdl and "n" not in opts        # the state's L2 prefetch before the PDL wait
        assert not self.stream or (self.vk and s.T == 1), ("streamed rows need vk and T = 1", s.tile, s.T)
        if self.vk:
            rw = tile_a
            self.LPR = min(32, max(1, s.K // vec))          # lanes per row of K
            self.KPL = s.K // self.LPR                      # K elements per lane
            self.RPP = 32 // self.LPR                       # rows per warp pass
            assert self.LPR * self.KPL == s.K and self.RPP * self.LPR == 32, (s.K, vec)
            assert rw % self.RPP == 0, (rw, self.RPP)
            self.RW, self.NW = rw, nw
            self.NROW, self.NCOL = rw // self.RPP, self.KPL   # register tile: rows x contiguous elements
            self.BV = rw * nw                               # rows of V per CTA
        else:
            bv = tile_a
            self.VEC = min(bv, vec)                         # columns per thread
            self.LV = bv // self.VEC                        # lanes along V
            assert self.LV <= 32 and 32 % self.LV == 0 and self.LV * self.VEC == bv, (bv, self.VEC)
            self.LKW = 32 // self.LV                        # lanes along K in a warp
            self.NW = nw
            assert s.K % (self.LKW * nw) == 0, (s.K, self.LKW, nw)
            self.RK = s.K // (self.LKW * nw)                # rows of K per thread
            self.BV = bv
            self.NROW, self.NCOL = self.RK, self.VEC
            self.KPN = max(1, s.K // 32)                    # q/k elements per lane for the norms
            assert self.KPN * 32 == s.K or s.K < 32, s.K
        assert s.V % self.BV == 0, (s.V, self.BV)
        self.NSPLIT = s.V // self.BV
        self.threads = 32 * self.NW
        # a tree step whose parent is an earlier step reads that state back from the intermediate buffer
        # only when the buffer is fp32 (exact); otherwise it recomputes it
        self.readback = self.tree and self.has_inter and s.inter == "fp32"

    # -----------------------------------------------------------------------------------------------
    # host side

    @cute.jit
    def __call__(self, p_q: cute.Pointer, p_k: cute.Pointer, p_v: cute.Pointer, p_a: cute.Pointer,
                 p_b: cute.Pointer, p_alog: cute.Pointer, p_dtb: cute.Pointer, p_s: cute.Pointer,
                 p_idx: cute.Pointer, p_o: cute.Pointer, p_i: cute.Pointer, p_ii: cute.Pointer,
                 p_par: cute.Pointer, B: Int32, S: Int32, SI: Int32, scale: Float32,
                 s_qb: Int64, s_qt: Int64, s_kb: Int64, s_kt: Int64, s_vb: Int64, s_vt: Int64,
                 s_ab: Int64, s_at: Int64, s_bb: Int64, s_bt: Int64,
                 s_ss: Int64, s_is: Int64, s_it: Int64, s_pb: Int64, stream: cuda.CUstream):
        T, H, HV, K, V = self.T, self.H, self.HV, self.K, self.V
        qd, sd = self.q_div, self.s_div
        s_qb, s_qt = cute.assume(s_qb, divby=qd), cute.assume(s_qt, divby=qd)
        s_kb, s_kt = cute.assume(s_kb, divby=qd), cute.assume(s_kt, divby=qd)
        s_vb, s_vt = cute.assume(s_vb, divby=qd), cute.assume(s_vt, divby=qd)
        s_ss = cute.assume(s_ss, divby=sd)
        s_is, s_it = cute.assume(s_is, divby=self.i_div), cute.assume(s_it, divby=self.i_div)
        inner = (V, K) if self.vk else (K, V)
        mQ = cute.make_tensor(p_q, cute.make_layout((B, T, H, K), stride=(s_qb, s_qt, K, 1)))
        mK = cute.make_tensor(p_k, cute.make_layout((B, T, H, K), stride=(s_kb, s_kt, K, 1)))
        mV = cute.make_tensor(p_v, cute.make_layout((B, T, HV, V), stride=(s_vb, s_vt, V, 1)))
        mA = cute.make_tensor(p_a, cute.make_layout((B, T, HV), stride=(s_ab, s_at, 1)))
        mB = cute.make_tensor(p_b, cute.make_layout((B, T, HV), stride=(s_bb, s_bt, 1)))
        mAlog = cute.make_tensor(p_alog, cute.make_layout((HV,)))
        mDtb = cute.make_tensor(p_dtb, cute.make_layout((HV,)))
        mS = cute.make_tensor(p_s, cute.make_layout((S, HV) + inner, stride=(s_ss, V * K, inner[1], 1)))
        mIdx = cute.make_tensor(p_idx, cute.make_layout((B,)))
        mO = cute.make_tensor(p_o, cute.make_layout((B, T, HV, V), stride=(T * HV * V, HV * V, V, 1)))
        mI = cute.make_tensor(p_i, cute.make_layout((SI, T, HV) + inner,
                                                    stride=(s_is, s_it, V * K, inner[1], 1)))
        mII = cute.make_tensor(p_ii, cute.make_layout((B,)))
        mP = cute.make_tensor(p_par, cute.make_layout((B, T), stride=(s_pb, 1)))
        self.kernel(mQ, mK, mV, mA, mB, mAlog, mDtb, mS, mIdx, mO, mI, mII, mP, scale).launch(
            grid=[self.grid_size(B), 1, 1], block=[self.threads, 1, 1], stream=stream, use_pdl=self.pdl)

    def grid_size(self, B):
        """CTAs of a launch for batch B (a DSL value on device, an int in the CPU bookkeeping tests)."""
        return B * (self.HV * self.NSPLIT)

    # -----------------------------------------------------------------------------------------------
    # device side

    def _coords(self):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        return self.coords(tidx, bidx)

    def coords(self, tidx, bidx):
        """Thread tidx of CTA bidx: (b, hv, h, and the layout's own coordinates). Plain integer arithmetic,
        so the CPU tests run it on Python ints to check that a grid covers every state element once."""
        warp = tidx // 32
        lane = tidx % 32
        split = bidx % self.NSPLIT
        bh = bidx // self.NSPLIT
        c = dict(hv=bh % self.HV, b=bh // self.HV, warp=warp, lane=lane)
        c["h"] = c["hv"] // self.G
        if self.vk:
            c["kq"] = lane % self.LPR                                       # K chunk of this lane
            c["row0"] = split * self.BV + warp * self.RW + lane // self.LPR  # register row r: row0 + r * RPP
            c["lead"] = c["kq"] == 0                                       # writes o of its rows
        else:
            c["kg"] = warp * self.LKW + lane // self.LV                    # K chunk (RK rows) of this thread
            c["vc"] = split * self.LV + lane % self.LV                     # V chunk (VEC columns)
            c["lead"] = tidx < self.LV                                     # warp 0, first K lanes: write o
        return c

    def tile_coord(self, r, c):
        """Register row r's (1, NCOL) block of the 2-D state view: (row, block of NCOL columns), i.e.
        elements [row, col * NCOL : (col + 1) * NCOL] of [V, K] (vk) or [K, V] (kv)."""
        if self.vk:
            return c["row0"] + r * self.RPP, c["kq"]
        return c["kg"] * self.RK + r, c["vc"]

    def out_coords(self, c):
        """The V positions whose outputs this thread holds (vk: one per register row; kv: VEC columns)."""
        if self.vk:
            return [c["row0"] + r * self.RPP for r in range(self.NROW)]
        return [c["vc"] * self.VEC + j for j in range(self.VEC)]

    def _tile(self, g2d, r, c):
        """The gmem (1, NCOL) tile of a 2-D state view that register row r holds."""
        return cute.local_tile(g2d, (1, self.NCOL), self.tile_coord(r, c))

    def _write_row(self, g2d, hr, r, c, dtype):
        w = cute.make_rmem_tensor((self.NCOL,), dtype)
        for i in range(self.NCOL):
            w[i] = dtype(hr[i])
        cute.autovec_copy(w, self._tile(g2d, r, c))

    def _write_tile(self, g2d, hs, c, dtype):
        for r in range(self.NROW):
            self._write_row(g2d, hs[r], r, c, dtype)

    def _norm_scales(self, ssq, skk, sqk, scale, lanes):
        """Reduce the partial sums over `lanes` lanes; (q factor, k factor, k.q of the normalised pair)."""
        ssq = _butterfly(ssq, 1, lanes)
        skk = _butterfly(skk, 1, lanes)
        sqk = _butterfly(sqk, 1, lanes)
        if cutlass.const_expr(self.spec.l2norm):
            rq = cute.math.rsqrt(ssq + Float32(L2NORM_EPS)) * scale
            rk = cute.math.rsqrt(skk + Float32(L2NORM_EPS))
        else:
            rq = scale
            rk = Float32(1.0)
        return rq, rk, sqk * rq * rk

    def _load(self, mQ, mK, mV, mA, mB, mAlog, mDtb, c, t):
        """Issue step t's loads for this thread (q, k of its K range; the norm pass's q, k for kv; v of its
        V range; a, b, A_log, dt_bias) and return the registers."""
        b, h, hv = c["b"], c["h"], c["hv"]
        gq, gk, gv = mQ[(b, t, h, None)], mK[(b, t, h, None)], mV[(b, t, hv, None)]
        n, chunk = (self.KPL, c["kq"]) if self.vk else (self.RK, c["kg"])
        rq = cute.make_rmem_tensor((n,), mQ.element_type)
        rk = cute.make_rmem_tensor((n,), mK.element_type)
        cute.autovec_copy(cute.local_tile(gq, (n,), (chunk,)), rq)
        cute.autovec_copy(cute.local_tile(gk, (n,), (chunk,)), rk)
        if self.vk:
            vraw = [mV[(b, t, hv, row)] for row in self.out_coords(c)]
            nq, nk = rq, rk
        else:
            rv = cute.make_rmem_tensor((self.VEC,), mV.element_type)
            cute.autovec_copy(cute.local_tile(gv, (self.VEC,), (c["vc"],)), rv)
            vraw = rv
            nq = cute.make_rmem_tensor((self.KPN,), mQ.element_type)
            nk = cute.make_rmem_tensor((self.KPN,), mK.element_type)
            cute.autovec_copy(cute.local_tile(gq, (self.KPN,), (c["lane"],)), nq)
            cute.autovec_copy(cute.local_tile(gk, (self.KPN,), (c["lane"],)), nk)
        gates = (mA[(b, t, hv)], mB[(b, t, hv)], mAlog[hv], mDtb[hv])
        return rq, rk, vraw, nq, nk, gates

    def _prep(self, raw, scale):
        """Step inputs from loaded registers: (q, k of this thread's K range, normalised, q scaled; k.q;
        v of its V range; exp(g); beta), fp32."""
        rq, rk, vraw, nq, nk, gates = raw
        n_norm = self.KPL if self.vk else self.KPN
        ssq = Float32(0.0)
        skk = Float32(0.0)
        sqk = Float32(0.0)
        for i in range(n_norm):
            x, y = Float32(nq[i]), Float32(nk[i])
            ssq = ssq + x * x
            skk = skk + y * y
            sqk = sqk + x * y
        fq, fk, kq_dot = self._norm_scales(ssq, skk, sqk, scale, self.LPR if self.vk else 32)
        a, bb, alog, dtb = (Float32(x) for x in gates)
        decay = cute.math.exp(-cute.math.exp(alog) * _softplus(a + dtb))
        beta = Float32(1.0) / (Float32(1.0) + cute.math.exp(-bb))
        n = self.KPL if self.vk else self.RK
        qv = [Float32(rq[i]) * fq for i in range(n)]
        kv = [Float32(rk[i]) * fk for i in range(n)]
        vv = [Float32(vraw[i]) for i in range(self.NROW if self.vk else self.VEC)]
        return qv, kv, kq_dot, vv, decay, beta

    def _step(self, hs, inp, sred):
        """Advance the register tile `hs` one step in place; returns this thread's outputs
        (vk: one per register row; kv: one per column)."""
        qv, kv, kq_dot, vv, decay, beta = inp
        if self.vk:
            return [self._step_row(hs[r], inp, r) for r in range(self.NROW)]
        pk = [Float32(0.0)] * self.VEC
        pq = [Float32(0.0)] * self.VEC
        for r in range(self.NROW):
            for j in range(self.VEC):
                pk[j] = pk[j] + hs[r][j] * kv[r]
                pq[j] = pq[j] + hs[r][j] * qv[r]
        pk = [_butterfly(x, self.LV) for x in pk]
        pq = [_butterfly(x, self.LV) for x in pq]
        if self.NW > 1:
            # partial sums of every warp through shared memory; lanes of one column group hold equal values
            # and write the same words. Two barriers: the buffer is reused by the next step.
            tidx, _, _ = cute.arch.thread_idx()
            w = tidx // 32
            col = (tidx % self.LV) * self.VEC
            for j in range(self.VEC):
                sred[(w, 0, col + j)] = pk[j]
                sred[(w, 1, col + j)] = pq[j]
            cute.arch.barrier()
            pk = [Float32(0.0)] * self.VEC
            pq = [Float32(0.0)] * self.VEC
            for ww in range(self.NW):
                for j in range(self.VEC):
                    pk[j] = pk[j] + sred[(ww, 0, col + j)]
                    pq[j] = pq[j] + sred[(ww, 1, col + j)]
            cute.arch.barrier()
        u = [beta * (vv[j] - pk[j] * decay) for j in range(self.VEC)]
        for r in range(self.NROW):
            for j in range(self.VEC):
                hs[r][j] = hs[r][j] * decay + kv[r] * u[j]
        return [pq[j] * decay + u[j] * kq_dot for j in range(self.VEC)]

    def _step_row(self, hr, inp, r):
        """vk: advance register row r (`hr`, fp32) one step in place; returns its output."""
        qv, kv, kq_dot, vv, decay, beta = inp
        pk = Float32(0.0)
        pq = Float32(0.0)
        for i in range(self.NCOL):
            pk = pk + hr[i] * kv[i]
            pq = pq + hr[i] * qv[i]
        pk = _butterfly(pk, 1, self.LPR) * decay
        pq = _butterfly(pq, 1, self.LPR) * decay
        u = beta * (vv[r] - pk)
        for i in range(self.NCOL):
            hr[i] = hr[i] * decay + kv[i] * u
        return pq + u * kq_dot

    @cute.jit
    def _store_out_row(self, mO, c, t, r, o):
        """vk: write register row r's output of step t (lead lanes only)."""
        if c["lead"]:
            mO[(c["b"], t, c["hv"], self.out_coords(c)[r])] = mO.element_type(o)

    @cute.jit
    def _store_out(self, mO, c, t, outs):
        """Write this thread's outputs of step t (lead threads only)."""
        if c["lead"]:
            if cutlass.const_expr(self.vk):
                rows = self.out_coords(c)
                for r in cutlass.range_constexpr(self.NROW):
                    mO[(c["b"], t, c["hv"], rows[r])] = mO.element_type(outs[r])
            else:
                w = cute.make_rmem_tensor((self.VEC,), mO.element_type)
                for j in cutlass.range_constexpr(self.VEC):
                    w[j] = mO.element_type(outs[j])
                cute.autovec_copy(w, cute.local_tile(mO[(c["b"], t, c["hv"], None)], (self.VEC,), (c["vc"],)))

    @cute.jit
    def _prefetch_state(self, mS, mIdx):
        """prefetch.global.L2 of the first element of each register row of this thread (a 16-byte vector:
        every 128-byte line of the tile is some thread's) at the guessed slot; nothing for a guess outside
        [0, pool size). L2 is coherent, so a line the previous kernel writes later is fetched again."""
        c = self._coords()
        guess = Int64(cute.arch.load(mIdx.iterator + c["b"], mIdx.element_type, cop="cg"))
        if guess >= 0 and guess < mS.shape[0]:
            gS = mS[(guess, c["hv"], None, None)]
            for r in cutlass.range_constexpr(self.NROW):
                cute.arch.prefetch(self._tile(gS, r, c).iterator, cache_level="L2")

    @cute.kernel
    def kernel(self, mQ: cute.Tensor, mK: cute.Tensor, mV: cute.Tensor, mA: cute.Tensor, mB: cute.Tensor,
               mAlog: cute.Tensor, mDtb: cute.Tensor, mS: cute.Tensor, mIdx: cute.Tensor, mO: cute.Tensor,
               mI: cute.Tensor, mII: cute.Tensor, mP: cute.Tensor, scale: Float32):
        T, NROW, NCOL = self.T, self.NROW, self.NCOL
        if cutlass.const_expr(self.pdl):
            # before any global access that counts (module docstring): a hint first, as the Triton decode's
            # _prefetch_tile: the slot index read speculatively (L2 only, it may be stale) and this thread's
            # state rows prefetched into L2, so their DRAM latency overlaps the previous kernel; then wait for
            # that kernel and let the next one be scheduled
            if cutlass.const_expr(self.prefetch):
                self._prefetch_state(mS, mIdx)
            cute.arch.griddepcontrol_wait()
            cute.arch.griddepcontrol_launch_dependents()
        c = self._coords()
        b, hv = c["b"], c["hv"]
        sred = None
        if cutlass.const_expr(not self.vk and self.NW > 1):
            smem = cutlass.memory.SmemAllocator()
            sred = smem.allocate_tensor(Float32, cute.make_layout((self.NW, 2, self.BV),
                                                                  stride=(2 * self.BV, self.BV, 1)), 16)
        hs = [cute.make_rmem_tensor((NCOL,), Float32) for _ in range(NROW)]
        h0 = [cute.make_rmem_tensor((NCOL,), Float32) for _ in range(NROW)] if self.tree else None
        slot = Int64(mIdx[b])
        pre = None
        inp_pre = None
        raw_pre = None
        dst_pre = Int64(b)
        if cutlass.const_expr(self.early):
            # Nothing but the state depends on the slot: q, k, v and the gates are loaded while the index
            # load is in flight, the state loads go out as soon as it lands, and the norms and gates are
            # computed (before the branch, so the compiler cannot sink the loads into it) while the state
            # is in flight.
            if cutlass.const_expr(self.has_inter_idx):
                dst_pre = Int64(mII[b])
            pre = self._load(mQ, mK, mV, mA, mB, mAlog, mDtb, c, 0)
            raw_pre = [cute.make_rmem_tensor((NCOL,), self.sdt) for _ in range(NROW)]
            if slot >= 0:
                gS_pre = mS[(slot, hv, None, None)]
                for r in cutlass.range_constexpr(NROW):
                    cute.autovec_copy(self._tile(gS_pre, r, c), raw_pre[r])
            inp_pre = self._prep(pre, scale)

        if slot >= 0:
            gS = mS[(slot, hv, None, None)]
            if cutlass.const_expr(self.early):
                raw = raw_pre
                nxt = pre
            else:
                raw = [cute.make_rmem_tensor((NCOL,), self.sdt) for _ in range(NROW)]
                for r in cutlass.range_constexpr(NROW):
                    cute.autovec_copy(self._tile(gS, r, c), raw[r])
            dst = dst_pre
            if cutlass.const_expr(self.has_inter_idx and not self.early):
                dst = Int64(mII[b])
            if cutlass.const_expr(not self.early):
                nxt = self._load(mQ, mK, mV, mA, mB, mAlog, mDtb, c, 0)
            if cutlass.const_expr(self.stream):
                # T = 1: one row at a time from the pool-dtype registers (only one widened row live)
                inp = inp_pre if cutlass.const_expr(self.early) else self._prep(nxt, scale)
                for r in cutlass.range_constexpr(NROW):
                    hr = cute.make_rmem_tensor((NCOL,), Float32)
                    for i in cutlass.range_constexpr(NCOL):
                        hr[i] = Float32(raw[r][i])
                    o = self._step_row(hr, inp, r)
                    self._store_out_row(mO, c, 0, r, o)
                    if cutlass.const_expr(self.has_inter):
                        if dst >= 0:
                            self._write_row(mI[(dst, 0, hv, None, None)], hr, r, c, self.idt)
                    if cutlass.const_expr(self.spec.update_state):
                        self._write_row(gS, hr, r, c, self.sdt)
            for t in cutlass.range_constexpr(0 if self.stream else T):
                cur = nxt
                if cutlass.const_expr(t + 1 < T):
                    # next step's loads go out before this step's reductions (software pipelining)
                    nxt = self._load(mQ, mK, mV, mA, mB, mAlog, mDtb, c, t + 1)
                if cutlass.const_expr(self.early and t == 0):
                    inp = inp_pre
                else:
                    inp = self._prep(cur, scale)
                if cutlass.const_expr(t == 0):
                    for r in cutlass.range_constexpr(NROW):
                        for i in cutlass.range_constexpr(NCOL):
                            hs[r][i] = Float32(raw[r][i])
                            if cutlass.const_expr(self.tree):
                                h0[r][i] = hs[r][i]
                if cutlass.const_expr(self.tree and t > 0):
                    self._tree_start(hs, h0, mQ, mK, mV, mA, mB, mAlog, mDtb, mI, mP, c, t, dst, scale, sred)
                outs = self._step(hs, inp, sred)
                self._store_out(mO, c, t, outs)
                if cutlass.const_expr(self.has_inter):
                    if dst >= 0:
                        self._write_tile(mI[(dst, t, hv, None, None)], hs, c, self.idt)
            if cutlass.const_expr(self.spec.update_state and not self.stream):
                self._write_tile(gS, hs, c, self.sdt)
        else:
            zeros = [Float32(0.0)] * (NROW if self.vk else self.VEC)
            for t in cutlass.range_constexpr(T):
                self._store_out(mO, c, t, zeros)

    @cute.jit
    def _tree_start(self, hs, h0, mQ, mK, mV, mA, mB, mAlog, mDtb, mI, mP, c, t, dst, scale, sred):
        """Make `hs` the state after step parent[t] (-1: the pool state) before step t (tree verify).
        parent[t] is uniform over the CTA, so every branch (and the barriers in it) is taken by all."""
        p = Int32(mP[(c["b"], t)])
        if p != t - 1:
            if p < 0:
                for r in cutlass.range_constexpr(self.NROW):
                    for i in cutlass.range_constexpr(self.NCOL):
                        hs[r][i] = h0[r][i]
            else:
                if cutlass.const_expr(self.readback):
                    if dst >= 0:
                        # this thread wrote exactly these elements at step p (same thread -> visible)
                        gI = mI[(dst, p, c["hv"], None, None)]
                        for r in cutlass.range_constexpr(self.NROW):
                            cute.autovec_copy(self._tile(gI, r, c), hs[r])
                    else:
                        self._replay(hs, h0, mQ, mK, mV, mA, mB, mAlog, mDtb, mP, c, t, p, scale, sred)
                else:
                    self._replay(hs, h0, mQ, mK, mV, mA, mB, mAlog, mDtb, mP, c, t, p, scale, sred)

    @cute.jit
    def _replay(self, hs, h0, mQ, mK, mV, mA, mB, mAlog, mDtb, mP, c, t, p, scale, sred):
        """Recompute the state after step p < t from the pool state along p's ancestor chain."""
        chain = Int32(0)
        s = p
        for _ in cutlass.range_constexpr(self.T):       # bounded walk: a malformed tree cannot hang
            if s >= 0:
                chain = chain | (Int32(1) << s)
                s = Int32(mP[(c["b"], s)])
        for r in cutlass.range_constexpr(self.NROW):
            for i in cutlass.range_constexpr(self.NCOL):
                hs[r][i] = h0[r][i]
        for j in cutlass.range(t, unroll=1):
            if (chain >> j) & 1 != 0:
                inp = self._prep(self._load(mQ, mK, mV, mA, mB, mAlog, mDtb, c, j), scale)
                self._step(hs, inp, sred)
