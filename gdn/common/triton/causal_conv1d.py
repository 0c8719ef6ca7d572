"""causal_conv1d (portable Triton): depthwise causal conv over packed varlen tokens, prefill.

x [T, D] packed by cu_seqlens [N+1] (int32/int64, zero-length sequences legal); weight [D, W]; bias [D] or
None; conv pool [S, D, W-1] (oldest column first, any slot stride); state_indices [N] (negative = padding:
outputs 0, slot untouched); has_initial_state [N] bool or None (= all True); out [T, D].
Sequence n sees the window [init | x[cu[n]:cu[n+1]]] with init = pool[slot] where has_initial_state else 0;
afterwards its slot holds the last W-1 columns of that window (a short sequence keeps part of the old one).

One launch, grid (token blocks, D blocks), no host sync (the launcher never reads cu_seqlens). A program
walks the tokens of one BLOCK_D channel strip in order, the previous W-1 inputs in registers (each input
loaded and converted once; W-1 halo rows re-read per block), CHUNK rows loaded as separate row vectors with
the next chunk in flight (BLOCK_T == CHUNK: the whole block's loads are issued up front, no loop). A
sequence start resets the window to the initial one (pool slot, or zeros).
The state write-back needs every read of a sequence's initial window to happen before its slot is
overwritten. Only tokens within W-1 of a start read that window, so block edges move off them: program p
owns tokens [a(p), a(p+1)) with a(p) = p*BLOCK_T, pushed to start + W-1 (or the sequence end) where
p*BLOCK_T falls strictly inside the first W-1 tokens of a sequence (a block owns at most W-2 tokens of the
next one and stores outputs only for tokens it owns). Then one
program reads each initial window, and it writes the final states of the sequences starting in its range
(zero-length ones included; the last program those starting at T) after a block barrier.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn.common import launch as L
from gdn.common.registry import Impl, dtypes, register

PORTABLE_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")


@triton.jit
def _lower_bound(cu_ptr, t, N, STEPS: tl.constexpr):
    """Smallest n in [0, N] with cu[n] >= t (cu non-decreasing, N+1 entries; STEPS >= log2(N+1))."""
    lo = tl.full([], 0, tl.int32)
    hi = lo + N
    for _ in tl.static_range(STEPS):
        mid = (lo + hi) // 2
        v = tl.load(cu_ptr + mid).to(tl.int64)
        more = lo < hi
        hi = tl.where(more & (v >= t), mid, hi)
        lo = tl.where(more & (v < t), mid + 1, lo)
    return lo


@triton.jit
def _block_edge(cu_ptr, t, N, STEPS: tl.constexpr, W: tl.constexpr):
    """First token owned by the program whose nominal first token is t (< T): t, or start + W-1 (at most the
    sequence end) where t lies strictly inside the first W-1 tokens of its sequence. Also returns the
    sequence n of token t and its start and end."""
    n = _lower_bound(cu_ptr, t + 1, N, STEPS) - 1
    start = tl.load(cu_ptr + n).to(tl.int64)
    end = tl.load(cu_ptr + n + 1).to(tl.int64)
    pos = t - start
    return tl.where((pos > 0) & (pos < W - 1), tl.minimum(start + W - 1, end), t), n, start, end


@triton.jit
def _load_rows(xp, t, R: tl.constexpr, s_x, dm, hi):
    """Rows t .. t+R-1 of x (xp = x_ptr + channels), each a [BLOCK_D] vector; rows outside [0, hi) read 0."""
    rows = ()
    for i in tl.static_range(R):
        rows = rows + (tl.load(xp + (t + i) * s_x, mask=dm & (t + i >= 0) & (t + i < hi), other=0.0),)
    return rows


@triton.jit
def _walk(rows, t, c0, c1, c2, n, nxt, live, a, b, w0, w1, w2, w3, bv, d, dm, cu_ptr, idx_ptr, init_ptr,
          state_ptr, out_ptr, N, s_out, s_st0, s_st1, s_st2, W: tl.constexpr, SILU: tl.constexpr):
    """Token rows t, t+1, .. (the tuple `rows`, raw x values) of the rolling window: c0..c2 hold the previous
    W-1 inputs of the current sequence n (ending at nxt; live = its slot is not padding). Outputs are stored
    for tokens in [a, b). A token in [a, b) that starts a sequence resets the window to that sequence's
    initial one (zero-length sequences skipped)."""
    for i in tl.static_range(len(rows)):
        ti = t + i
        if (ti >= nxt) & (ti < b):
            while (nxt <= ti) & (n < N - 1):
                n += 1
                nxt = tl.load(cu_ptr + n + 1).to(tl.int64)
            slot = tl.load(idx_ptr + n).to(tl.int64)
            live = slot >= 0
            fp = live
            if init_ptr is not None:
                fp = fp & (tl.load(init_ptr + n) != 0)
            sp = state_ptr + tl.where(live, slot, 0) * s_st0 + d * s_st1
            c0 = tl.load(sp, mask=dm & fp, other=0.0).to(tl.float32)
            if W >= 3:
                c1 = tl.load(sp + s_st2, mask=dm & fp, other=0.0).to(tl.float32)
            if W >= 4:
                c2 = tl.load(sp + 2 * s_st2, mask=dm & fp, other=0.0).to(tl.float32)
        xr = rows[i].to(tl.float32)
        if W == 2:
            acc = bv + c0 * w0 + xr * w1
            c0 = xr
        elif W == 3:
            acc = bv + c0 * w0 + c1 * w1 + xr * w2
            c0 = c1
            c1 = xr
        else:
            acc = bv + c0 * w0 + c1 * w1 + c2 * w2 + xr * w3
            c0 = c1
            c1 = c2
            c2 = xr
        if SILU:
            acc = acc * tl.sigmoid(acc)
        acc = tl.where(live, acc, 0.0)
        tl.store(out_ptr + ti * s_out + d, acc.to(out_ptr.dtype.element_ty), mask=dm & (ti >= a) & (ti < b))
    return c0, c1, c2, n, nxt, live


@triton.jit
def _write_state(x_ptr, cu_ptr, state_ptr, idx_ptr, init_ptr, n, d, dm, s_x, s_st0, s_st1, s_st2,
                 W: tl.constexpr):
    """Final window of sequence n into its slot: new column c = the input row end - (W-1) + c where that
    lies in the sequence, else old column c + L (zero without an initial state)."""
    slot = tl.load(idx_ptr + n).to(tl.int64)
    if slot >= 0:
        start = tl.load(cu_ptr + n).to(tl.int64)
        end = tl.load(cu_ptr + n + 1).to(tl.int64)
        keep = slot >= 0
        if init_ptr is not None:
            keep = tl.load(init_ptr + n) != 0
        st = state_ptr + slot * s_st0 + d * s_st1
        # column c reads old column c + L > c (L >= 1) or, for L = 0, itself: never one already written
        for c in tl.static_range(W - 1):
            p = end - (W - 1) + c
            xv = tl.load(x_ptr + p * s_x + d, mask=dm & (p >= start), other=0.0).to(tl.float32)
            old = tl.load(st + (c + end - start) * s_st2, mask=dm & keep & (p < start), other=0.0).to(tl.float32)
            tl.store(st + c * s_st2, (xv + old).to(state_ptr.dtype.element_ty), mask=dm)


@triton.jit
def _causal_conv1d_kernel(x_ptr, w_ptr, bias_ptr, cu_ptr, state_ptr, idx_ptr, init_ptr, out_ptr, T, N, D,
                          s_x, s_out, s_st0, s_st1, s_st2, s_w0, s_w1,
                          W: tl.constexpr, SILU: tl.constexpr, STEPS: tl.constexpr,
                          BLOCK_T: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr):
    t0 = tl.program_id(0).to(tl.int64) * BLOCK_T
    t1 = t0 + BLOCK_T
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    xp = x_ptr + d
    # loads that need no sequence lookup go first: the W-1 halo rows before t0 and the first chunk
    halo = _load_rows(xp, t0 - (W - 1), W - 1, s_x, dm, T)
    cur = _load_rows(xp, t0, CHUNK, s_x, dm, T)
    w0 = tl.load(w_ptr + d * s_w0, mask=dm, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + d * s_w0 + s_w1, mask=dm, other=0.0).to(tl.float32)
    w2 = w1
    w3 = w1
    if W >= 3:
        w2 = tl.load(w_ptr + d * s_w0 + 2 * s_w1, mask=dm, other=0.0).to(tl.float32)
    if W >= 4:
        w3 = tl.load(w_ptr + d * s_w0 + 3 * s_w1, mask=dm, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        bv = tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)
    else:
        bv = tl.zeros([BLOCK_D], dtype=tl.float32)
    # owned tokens [a, b) and owned sequence starts [n_a, n_b) (the last program also owns starts at T)
    a, n, start, nxt = _block_edge(cu_ptr, t0, N, STEPS, W)
    a = tl.minimum(a, T)                    # T == 0: the single program owns no token
    b1, _n1, _s1, _e1 = _block_edge(cu_ptr, t1, N, STEPS, W)
    b = tl.where(t1 < T, b1, T)
    n_a = _lower_bound(cu_ptr, a, N, STEPS)
    n_b = tl.where(t1 < T, _lower_bound(cu_ptr, b, N, STEPS), N)
    slot = tl.load(idx_ptr + n).to(tl.int64)
    live = slot >= 0
    fp = live & (t0 == start)               # the initial window is read only by the program owning the start
    if init_ptr is not None:
        fp = fp & (tl.load(init_ptr + n) != 0)
    # the window before t0: x rows inside the sequence, else the initial window (columns 0..W-2 when
    # t0 == start; garbage otherwise, used only by tokens before a, which another program stores)
    sp = state_ptr + tl.where(live, slot, 0) * s_st0 + d * s_st1
    c0 = tl.where(t0 - (W - 1) >= start, halo[0].to(tl.float32),
                  tl.load(sp, mask=dm & fp, other=0.0).to(tl.float32))
    c1 = c0
    c2 = c0
    if W >= 3:
        c1 = tl.where(t0 - (W - 2) >= start, halo[1].to(tl.float32),
                      tl.load(sp + s_st2, mask=dm & fp, other=0.0).to(tl.float32))
    if W >= 4:
        c2 = tl.where(t0 - 1 >= start, halo[2].to(tl.float32),
                      tl.load(sp + 2 * s_st2, mask=dm & fp, other=0.0).to(tl.float32))
    if BLOCK_T == CHUNK:
        c0, c1, c2, n, nxt, live = _walk(cur, t0, c0, c1, c2, n, nxt, live, a, b, w0, w1, w2, w3, bv, d, dm,
                                         cu_ptr, idx_ptr, init_ptr, state_ptr, out_ptr, N, s_out, s_st0, s_st1,
                                         s_st2, W, SILU)
    else:
        for c in range(0, BLOCK_T, CHUNK):
            tc = t0 + c
            nxt_rows = _load_rows(xp, tc + CHUNK, CHUNK, s_x, dm, tl.minimum(t1, T))
            c0, c1, c2, n, nxt, live = _walk(cur, tc, c0, c1, c2, n, nxt, live, a, b, w0, w1, w2, w3, bv, d, dm,
                                             cu_ptr, idx_ptr, init_ptr, state_ptr, out_ptr, N, s_out, s_st0,
                                             s_st1, s_st2, W, SILU)
            cur = nxt_rows
    # tokens t1 .. b-1 (b > t1 only where t1 lies inside the first W-1 tokens of a sequence: no start there)
    tail = _load_rows(xp, t1, W - 2, s_x, dm, b)
    _walk(tail, t1, c0, c1, c2, n, nxt, live, a, b, w0, w1, w2, w3, bv, d, dm, cu_ptr, idx_ptr, init_ptr,
          state_ptr, out_ptr, N, s_out, s_st0, s_st1, s_st2, W, SILU)
    # final windows of the owned sequences, after every thread's reads of their initial windows
    tl.debug_barrier()
    for m in range(n_a, n_b):
        _write_state(x_ptr, cu_ptr, state_ptr, idx_ptr, init_ptr, m, d, dm, s_x, s_st0, s_st1, s_st2, W)


# (arch, bucket) -> config; bucket None (one shape class so far). BLOCK_T tokens x BLOCK_D channels per
# program, walked CHUNK rows at a time (BLOCK_T == CHUNK: no loop); BLOCK_D / (lanes * num_warps) channels
# per thread (8 = one 16-byte vector of bf16).
_CONFIGS = {
    # H100 sweep of the one-launch kernel, 2026-11-22 08:12 UTC (bench/bench_edge_ops.py --sweep --sweep-ops
    # causal_conv1d; T = 8192, D = 8192, 8 sequences): 110.8 us, 82.5% of copy. 256-token blocks re-read
    # 3 halo rows per 256 (BLOCK_T = 64: 115.1 us, 79.4%)
    ("sm_90", None): dict(BLOCK_T=256, CHUNK=8, BLOCK_D=256, num_warps=1),
    ("nvidia", None): dict(BLOCK_T=256, CHUNK=8, BLOCK_D=256, num_warps=1),
    ("amd", None): dict(BLOCK_T=64, CHUNK=4, BLOCK_D=512, num_warps=1),
}
_DEFAULT = dict(BLOCK_T=32, CHUNK=4, BLOCK_D=128, num_warps=1)


def causal_conv1d(x, weight, bias, cu_seqlens, conv_state, state_indices, has_initial_state, out, *, activation,
                  config=None):
    """`config` (a dict like the table's entries) overrides the table: for sweeps only."""
    T, D = x.shape
    W = weight.shape[1]
    N = state_indices.shape[0]
    if x.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError("gdn.causal_conv1d: x and out need unit column stride")
    if N == 0:
        return
    arch = L.current_arch(x.device)
    cfg = config or L.pick(_CONFIGS, arch, None, _DEFAULT)
    init = None if has_initial_state is None else has_initial_state.view(torch.uint8)
    block_t = max(4, min(cfg["BLOCK_T"], L.next_pow2(T)))   # >= W-1: a block owns at most W-2 tokens of the next
    chunk = min(cfg["CHUNK"], block_t)
    block_d = min(cfg["BLOCK_D"], L.next_pow2(D))
    lanes = 64 if L.is_amd(arch) else 32
    warps = max(1, min(cfg["num_warps"], block_d // lanes))  # no thread without a channel
    L.launch(_causal_conv1d_kernel, (max(1, L.cdiv(T, block_t)), L.cdiv(D, block_d)),
             x, weight, bias, cu_seqlens, conv_state, state_indices, init, out, T, N, D,
             x.stride(0), out.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
             weight.stride(0), weight.stride(1),
             num_warps=warps, num_stages=1, W=W, SILU=activation == "silu", STEPS=max(1, N.bit_length()),
             BLOCK_T=block_t, CHUNK=chunk, BLOCK_D=block_d)


def _reasons(props) -> list[str]:
    W = props.get("W")
    return [f"conv width W={W} outside 2..4"] if W is not None and not 2 <= W <= 4 else []


register(Impl(op="causal_conv1d", backend="triton", fn=causal_conv1d, archs=PORTABLE_ARCHS, priority=10,
              requires=("triton>=3.6",), dtypes=dtypes("bfloat16", "float16", "float32"),
              state_dtypes=dtypes("bfloat16", "float16", "float32"), check=_reasons, validated_on=("sm_90",),
              interpretable=True,
              notes="one launch (rolling window per channel strip, in-kernel sequence search, block edges "
                    "moved off sequence starts so one program reads and writes each state); no host sync"))
