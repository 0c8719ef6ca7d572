"""Pieces shared by the chunked-prefill kernels.

Chunk slots. Prefill works on 64-token chunks of each sequence. Sequence n's c-th chunk has the slot
`cu[n] // BT + n + c`; slots are distinct across sequences and all lie below `T // BT + N`, so a grid of
`T // BT + N` programs covers every chunk of any batch with that token budget, and a program finds its
chunk from cu_seqlens alone (`seq_of_slot`). No chunk table is built on the host, nothing is read back
(CUDA-graph capturable, traceable on meta tensors); slots that hold no chunk exit at once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gdn.common import launch as L

BT = 64                      # chunk size of the prefill pipeline
MAX_HEAD_DIM = 256           # K and V tiles sit in registers
ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950")
REQUIRES = ("triton>=3.6",)


def num_slots(T: int, N: int, bt: int = BT) -> int:
    return T // bt + N


def gcum_empty(T: int, HV: int, device):
    """An uninitialised g_cum [T, HV] fp32 whose rows are padded to 16 bytes (HV rounded up to 4): the Gluon
    plain state pass reads it by TMA, in [64, 4] tiles whose column offsets go by 16 bytes."""
    if HV % 4 == 0:
        return torch.empty((T, HV), dtype=torch.float32, device=device)    # (a view costs an eager call ~5 us)
    return torch.empty((T, -(-HV // 4) * 4), dtype=torch.float32, device=device)[:, :HV]


def block_n(N: int) -> int:
    """Width of the cu_seqlens scan in `seq_of_slot` (a loop covers larger N)."""
    return max(16, min(1024, L.next_pow2(max(N, 1))))


def block_dim(d: int) -> int:
    """Register tile width for a head dim (tl.dot needs >= 16)."""
    return max(16, L.next_pow2(d))


def dot_dtype(dtype: torch.dtype) -> torch.dtype:
    """Operand dtype of the chunk matmuls: the input's 16-bit type, fp32 for fp32 inputs."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def f32_precision(arch: str, dtype: torch.dtype) -> str:
    """tl.dot input_precision for fp32 x fp32 products. fp32 inputs: exact ("ieee"). 16-bit inputs: the
    fp32 matrices of the triangular solve go through the fast path the arch has (their result is rounded
    to 16 bits right after, so tf32 is below that rounding)."""
    if dtype == torch.float32 or arch == "cpu":
        return "ieee"
    if arch == "gfx950":
        return "bf16x3"          # CDNA4 has no xf32
    return "tf32"


def f32_exact_precision(arch: str) -> str:
    """tl.dot input_precision for fp32 products that must keep fp32 accuracy (the solve's small
    diagonal-block products): 3xTF32 on NVIDIA tensor cores, true fp32 ("ieee") elsewhere (AMD has
    fp32 MFMA; the interpreter computes in fp32)."""
    return "tf32x3" if arch.startswith("sm_") else "ieee"


def head_dim_reasons(props) -> list[str]:
    out = []
    for key in ("K", "V"):
        d = props.get(key)
        if d is not None and d > MAX_HEAD_DIM:
            out.append(f"{key}={d} > {MAX_HEAD_DIM} (tile must fit in registers)")
    return out


def last_dim_contiguous(t):
    return t if t is None or t.stride(-1) == 1 or t.numel() == 0 else t.contiguous()


# ---------------------------------------------------------------------------------------------------
# jit helpers

@triton.jit
def seq_of_slot(cu, N, s, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    """Chunk slot s -> (n, t0, eos): sequence n, first token t0 of the chunk, end of the sequence (int64).
    The slot holds a chunk iff t0 < eos."""
    cnt = 0
    for i in range(0, N, BLOCK_N):
        o = i + tl.arange(0, BLOCK_N)
        m = o < N
        first = tl.load(cu + o, mask=m, other=0).to(tl.int64) // CHUNK + o
        cnt += tl.sum((m & (first <= s)).to(tl.int32), axis=0)
    n = cnt - 1
    bos = tl.load(cu + n).to(tl.int64)
    eos = tl.load(cu + n + 1).to(tl.int64)
    t0 = bos + (s - (bos // CHUNK + n)).to(tl.int64) * CHUNK
    return n, t0, eos


@triton.jit
def inv_norm(x, USE: tl.constexpr):
    """Per-row factor of the spec's l2norm, rsqrt(sum(x^2) + 1e-6), of an fp32 tile (ones when not USE).
    Kernels keep q and k raw and apply this as a row/column scale of the products: the dot operands stay
    the exact 16-bit inputs, and the normalisation costs no rounding."""
    if USE:
        r = tl.rsqrt(tl.sum(x * x, axis=1) + 1e-6)
    else:
        r = tl.full((x.shape[0],), 1.0, tl.float32)
    return r


@triton.jit
def dot_split(a, b, PREC: tl.constexpr):
    """a [M, R] fp32 @ b [R, N] in the dot dtype. For 16-bit b, a goes in as two 16-bit parts (hi + lo,
    about 16 mantissa bits), so the fp32 factor (a triangular inverse, attention scores) loses nothing
    next to b's own rounding; plain tl.dot for fp32."""
    if b.dtype == tl.float32:
        return tl.dot(a, b, input_precision=PREC)
    hi = a.to(b.dtype)
    lo = (a - hi.to(tl.float32)).to(b.dtype)
    return tl.dot(lo, b, acc=tl.dot(hi, b))


# ---------------------------------------------------------------------------------------------------
# kernel-level example inputs of the internal sub-ops (the AOT matrix compiles them on `meta`)

def example_cu(lengths, device):
    if torch.device(device).type == "meta":
        return torch.empty(len(lengths) + 1, dtype=torch.int32, device=device)
    return torch.tensor([0, *torch.tensor(list(lengths)).cumsum(0).tolist()], dtype=torch.int32, device=device)


def example_tensor(device, *shape, dtype=torch.float32):
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.randn(shape, device=device).to(dtype)
