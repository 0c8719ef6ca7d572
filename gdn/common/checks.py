"""Input validation for the public ops. Every error names the op, the argument, what was expected and
what came. Each `<op>(...)` validates that op's inputs and returns its dispatch `props` (the hashable
summary the registry selects on: no batch sizes, so one cached choice serves every B).

Shapes are written with named dims, e.g. ("B", "H", "K"): the first tensor that shows a dim binds it,
later ones must agree, so a mismatch reads "argument 'k' expected shape [B=4, H=16, K=128], got [4, 8, 128]".

Eager calls repeat the same few signatures, so each op's validation is cached by the call's signature (see
`validator`): a repeated call costs a signature build and a dict lookup, plus the checks of values that can
change between calls (slot-index ranges, ...), which always run.
"""
from __future__ import annotations

import functools
import inspect

import torch

from gdn.common import probe

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
STATE_DTYPES = (torch.float32, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
LAYOUTS = ("vk", "kv")
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 224.0}   # fnuz: +-224 as aiter uses


class GDNInputError(ValueError):
    """Invalid argument to a gdn op."""


def fail(op: str, arg: str, expected: str, got) -> None:
    raise GDNInputError(f"gdn.{op}: argument '{arg}' expected {expected}, got {got}")


def _dname(d) -> str:
    return str(d).replace("torch.", "")


class Checker:
    """Validates the tensors of one call; binds named dims; checks a common device. Ends with `done`, which
    sets the call's `props`."""

    def __init__(self, op: str, device: torch.device):
        self.op, self.device, self.dims = op, device, {}
        self.value_checks: list[tuple] = []      # (fn, argument name, params): re-run on every cached call
        self.props: dict | None = None

    def values(self, fn, name: str, t, *params) -> None:
        """Check the values of argument `name` (tensor t) now with fn(op, name, t, *params), and again on
        every later call that hits the validation cache (values change between calls; shapes do not)."""
        fn(self.op, name, t, *params)
        self.value_checks.append((fn, name, params))

    def done(self, dtype, **extra) -> "Checker":
        self.props = {"device": self.device, "dtype": dtype, **extra}
        return self

    def tensor(self, name: str, t, shape, dtypes=None, optional=False):
        if t is None:
            if optional:
                return None
            fail(self.op, name, "a tensor", "None")
        if not isinstance(t, torch.Tensor):
            fail(self.op, name, "a torch.Tensor", type(t).__name__)
        if t.device != self.device:
            fail(self.op, name, f"a tensor on {self.device} (the device of the other inputs)", f"one on {t.device}")
        if dtypes is not None and t.dtype not in dtypes:
            fail(self.op, name, f"dtype in ({', '.join(map(_dname, dtypes))})", _dname(t.dtype))
        got = t.shape
        if len(got) == len(shape):
            dims = self.dims
            for d, n in zip(shape, got):
                if n != (dims.setdefault(d, n) if isinstance(d, str) else d):
                    break
            else:
                return t
        # Named dims are bound up to the mismatch, so the message shows what the earlier inputs fixed.
        want = (f"{d}={self.dims[d]}" if d in self.dims else d if isinstance(d, str) else str(d) for d in shape)
        fail(self.op, name, f"shape [{', '.join(want)}]", list(got))

    def index(self, name: str, t, length: str, upper: int | None = None, optional=False):
        t = self.tensor(name, t, (length,), INDEX_DTYPES, optional)
        if t is not None and upper is not None:
            self.values(check_index_range, name, t, upper)
        return t

    def state_pool(self, name: str, t, layout: str, K_dim="K", V_dim="V", dtypes=STATE_DTYPES, lead=("S",)):
        """A pool [*lead, HV, V, K] ("vk") or [*lead, HV, K, V] ("kv"); inner three dims contiguous."""
        inner = (V_dim, K_dim) if layout == "vk" else (K_dim, V_dim)
        t = self.tensor(name, t, (*lead, "HV", *inner), dtypes)
        n = t.dim()
        want = (t.shape[n - 2] * t.shape[n - 1], t.shape[n - 1], 1)
        got = tuple(t.stride()[n - 3:])
        if t.numel() and any(s != w for s, w, sz in zip(got, want, t.shape[n - 3:]) if sz > 1):
            fail(self.op, name, f"each slot's [HV, {inner[0]}, {inner[1]}] block contiguous (strides {want}); "
                 "any slot stride is fine", f"strides {tuple(t.stride())}")
        return t

    def out(self, name: str, t, shape, dtypes=None):
        if t is None:
            return None
        t = self.tensor(name, t, shape, dtypes)
        if not t.is_contiguous():
            fail(self.op, name, "a contiguous tensor", f"strides {tuple(t.stride())}")
        return t


def values_visible(t: torch.Tensor) -> bool:
    """Whether checking t's values is free: a CPU tensor, outside torch.compile tracing."""
    return t.is_cpu and not torch.compiler.is_compiling()


def _max(t: torch.Tensor) -> int:
    # A few elements (decode's slot indices) are faster through a Python list than a reduction kernel.
    return max(t.tolist()) if t.numel() <= 32 else int(t.max())


def check_index_range(op: str, name: str, t: torch.Tensor, upper: int) -> None:
    """Slot indices must be < pool size (negative = padding). Checked on CPU tensors always; on GPU only
    with GDN_CHECK_INDICES=1, since the check syncs the host (and cannot run inside a CUDA graph)."""
    if not t.numel() or torch.compiler.is_compiling():
        return
    if not t.is_cpu and (probe.env("GDN_CHECK_INDICES") in (None, "", "0")
                         or torch.cuda.is_current_stream_capturing()):
        return
    hi = _max(t)
    if hi >= upper:
        fail(op, name, f"slot indices < {upper} (the pool size; negative = padding)", f"max {hi}")


def _tree_parents(op: str, name: str, t: torch.Tensor, T: int) -> None:
    if values_visible(t):
        bad = (t >= torch.arange(T)) | (t < -1)
        if bool(bad.any()):
            fail(op, name, "parent_indices[:, t] in [-1, t) (a tree in topological order)", t.tolist())


def _accepted_counts(op: str, name: str, t: torch.Tensor, T: int) -> None:
    if values_visible(t) and t.numel() and _max(t) > T:
        fail(op, name, f"values in [0, T={T}]", f"max {_max(t)}")


def _offsets(op: str, name: str, t: torch.Tensor, T: int) -> None:
    if values_visible(t) and t.numel():
        if int(t[0]) != 0 or int(t[-1]) != T or bool((t[1:] < t[:-1]).any()):
            fail(op, name, f"non-decreasing offsets from 0 to T={T}", t.tolist())


def layout(op: str, state_layout) -> str:
    if state_layout not in LAYOUTS:
        fail(op, "state_layout", "'vk' ([S,HV,V,K], K contiguous) or 'kv' ([S,HV,K,V])", repr(state_layout))
    return state_layout


def gqa(op: str, H: int, HV: int) -> None:
    if H == 0 or HV % H:
        fail(op, "v", f"a v-head count HV divisible by the q/k head count H={H}", f"HV={HV}")


def scale(s, K: int) -> float:
    return float(K) ** -0.5 if s is None else float(s)


def activation(op: str, act):
    if act not in ("silu", None):
        fail(op, "activation", "'silu' or None", repr(act))
    return act


def _device(t) -> torch.device:
    if not isinstance(t, torch.Tensor):
        raise GDNInputError(f"gdn: expected a torch.Tensor as first input, got {type(t).__name__}")
    return t.device


VALIDATION_CACHE_SIZE = 256    # signatures kept per op; eager decode sees about one per batch size


def validator(*scalars: str, cache: bool = True):
    """Turn `check(*args) -> Checker` into the op's validation `(*args) -> (props, contiguous)`, cached by
    the call's signature: (shape, stride, dtype, device) of every tensor argument and the value of every
    other one. The structural checks depend on nothing else, so a hit skips them and re-runs only the value
    checks the first call registered (`Checker.values`). `contiguous` is True when every tensor argument is
    known to be contiguous (the op may skip its .contiguous() calls); False means not known.

    `scalars` name the arguments read by value (head counts, layouts): a call with a tensor there is
    checked in full and not cached. The full check runs on a miss, with `cache=False` (ops whose sizes
    change with every batch) and under torch.compile tracing (sizes may be symbolic; it runs once per
    trace). The returned props are shared between calls: do not mutate them."""
    def wrap(check):
        pos = {n: i for i, n in enumerate(inspect.signature(check).parameters)}
        scalar_pos = [pos[n] for n in scalars]
        entries: dict[tuple, tuple] = {}

        @functools.wraps(check)
        def validate(*args):
            if not cache or torch.compiler.is_compiling():
                return check(*args).props, False
            key = tuple([(x.shape, x.stride(), x.dtype, x.device) if isinstance(x, torch.Tensor) else x
                         for x in args])
            try:
                hit = entries.get(key)
            except TypeError:          # an unhashable argument (a list, a symbolic size): the check judges it
                return check(*args).props, False
            if hit is None:
                c = check(*args)
                if any(isinstance(args[i], torch.Tensor) for i in scalar_pos):
                    return c.props, False
                if len(entries) >= VALIDATION_CACHE_SIZE:
                    entries.clear()
                result = c.props, all(x.is_contiguous() for x in args if isinstance(x, torch.Tensor))
                entries[key] = result, [(fn, c.op, name, pos[name], p) for fn, name, p in c.value_checks]
                return result
            result, value_checks = hit
            for fn, op, name, i, params in value_checks:
                fn(op, name, args[i], *params)
            return result
        return validate
    return wrap


# ----------------------------------------------------------------------------------------------------
# per-op validation -> props

def _gates(c: Checker, a, b, A_log, dt_bias, lead):
    c.tensor("a", a, (*lead, "HV"), FLOATS)
    c.tensor("b", b, (*lead, "HV"), FLOATS)
    c.tensor("A_log", A_log, ("HV",), FLOATS)
    c.tensor("dt_bias", dt_bias, ("HV",), FLOATS)


@validator("state_layout")
def decode(q, k, v, a, b, A_log, dt_bias, state, state_indices, state_layout, out):
    op = "decode"
    c = Checker(op, _device(q))
    lay = layout(op, state_layout)
    c.tensor("q", q, ("B", "H", "K"), FLOATS)
    c.tensor("k", k, ("B", "H", "K"), (q.dtype,))
    c.tensor("v", v, ("B", "HV", "V"), (q.dtype,))
    gqa(op, c.dims["H"], c.dims["HV"])
    _gates(c, a, b, A_log, dt_bias, ("B",))
    c.state_pool("state", state, lay)
    c.index("state_indices", state_indices, "B", state.shape[0])
    c.out("out", out, ("B", "HV", "V"), FLOATS)
    d = c.dims
    return c.done(q.dtype, state_dtype=state.dtype, layout=lay, H=d["H"], HV=d["HV"], K=d["K"], V=d["V"])


@validator("disable_state_update", "state_layout")
def decode_mtp(q, k, v, a, b, A_log, dt_bias, state, state_indices, intermediate_states, intermediate_indices,
               parent_indices, disable_state_update, state_layout, out):
    op = "decode_mtp"
    c = Checker(op, _device(q))
    lay = layout(op, state_layout)
    c.tensor("q", q, ("B", "T", "H", "K"), FLOATS)
    c.tensor("k", k, ("B", "T", "H", "K"), (q.dtype,))
    c.tensor("v", v, ("B", "T", "HV", "V"), (q.dtype,))
    gqa(op, c.dims["H"], c.dims["HV"])
    _gates(c, a, b, A_log, dt_bias, ("B", "T"))
    c.state_pool("state", state, lay)
    c.index("state_indices", state_indices, "B", state.shape[0])
    if intermediate_states is not None:
        c.state_pool("intermediate_states", intermediate_states, lay, lead=("slots", "T"))
        c.index("intermediate_indices", intermediate_indices, "B", intermediate_states.shape[0], optional=True)
        if intermediate_indices is None and intermediate_states.shape[0] < c.dims["B"]:
            fail(op, "intermediate_states", f"at least B={c.dims['B']} rows when intermediate_indices is None",
                 list(intermediate_states.shape))
    elif intermediate_indices is not None:
        fail(op, "intermediate_indices", "None when intermediate_states is None", "a tensor")
    if parent_indices is not None:
        c.tensor("parent_indices", parent_indices, ("B", "T"), INDEX_DTYPES)
        c.values(_tree_parents, "parent_indices", parent_indices, c.dims["T"])
    c.out("out", out, ("B", "T", "HV", "V"), FLOATS)
    d = c.dims
    return c.done(q.dtype, state_dtype=state.dtype, layout=lay, H=d["H"], HV=d["HV"], K=d["K"], V=d["V"],
                  T=d["T"], intermediate=intermediate_states is not None,
                  inter_dtype=None if intermediate_states is None else intermediate_states.dtype,
                  tree=parent_indices is not None, update=not disable_state_update)


@validator("state_layout")
def commit_accepted(state, state_indices, intermediate_states, intermediate_indices, num_accepted, state_layout):
    op = "commit_accepted"
    c = Checker(op, _device(state))
    lay = layout(op, state_layout)
    c.state_pool("state", state, lay)
    c.state_pool("intermediate_states", intermediate_states, lay, lead=("slots", "T"))
    c.index("state_indices", state_indices, "B", state.shape[0])
    c.index("intermediate_indices", intermediate_indices, "B", intermediate_states.shape[0])
    c.tensor("num_accepted", num_accepted, ("B",), INDEX_DTYPES)
    c.values(_accepted_counts, "num_accepted", num_accepted, c.dims["T"])
    d = c.dims
    return c.done(intermediate_states.dtype, state_dtype=state.dtype, layout=lay, HV=d["HV"], K=d["K"],
                  V=d["V"], T=d["T"])


@validator("num_k_heads", "head_k_dim", "head_v_dim", "state_layout")
def decode_packed(mixed_qkv, a, b, A_log, dt_bias, state, state_indices, num_k_heads, head_k_dim, head_v_dim,
                  state_layout, out):
    op = "decode_packed"
    c = Checker(op, _device(mixed_qkv))
    lay = layout(op, state_layout)
    H, K, V = int(num_k_heads), int(head_k_dim), int(head_v_dim)
    c.tensor("mixed_qkv", mixed_qkv, ("B", "W"), FLOATS)
    rest = mixed_qkv.shape[1] - 2 * H * K
    if rest <= 0 or rest % V:
        fail(op, "mixed_qkv", f"width 2*H*K + HV*V with H={H}, K={K}, V={V}", f"width {mixed_qkv.shape[1]}")
    HV = rest // V
    gqa(op, H, HV)
    c.dims.update(HV=HV, K=K, V=V)
    _gates(c, a, b, A_log, dt_bias, ("B",))
    c.state_pool("state", state, lay)
    c.index("state_indices", state_indices, "B", state.shape[0])
    c.out("out", out, ("B", "HV", "V"), FLOATS)
    return c.done(mixed_qkv.dtype, state_dtype=state.dtype, layout=lay, H=H, HV=HV, K=K, V=V)


def _cu_seqlens(c: Checker, cu, T: int) -> int:
    c.tensor("cu_seqlens", cu, ("N+1",), INDEX_DTYPES)
    c.values(_offsets, "cu_seqlens", cu, T)
    return cu.shape[0] - 1


# Cached like decode's: T and N change between batches, but an engine's padded token counts (piecewise CUDA graphs)
# and a benchmark's repeated calls repeat them, and a hit saves ~20 us of an eager call's ~110 (H100 host) against
# ~7 us for the key on a miss
@validator("state_layout")
def prefill(q, k, v, state, state_indices, cu_seqlens, g, beta, a, b, A_log, dt_bias, has_initial_state,
            state_layout, out):
    op = "prefill"
    c = Checker(op, _device(q))
    lay = layout(op, state_layout)
    c.tensor("q", q, ("T", "H", "K"), FLOATS)
    c.tensor("k", k, ("T", "H", "K"), (q.dtype,))
    c.tensor("v", v, ("T", "HV", "V"), (q.dtype,))
    gqa(op, c.dims["H"], c.dims["HV"])
    raw = [x is not None for x in (a, b, A_log, dt_bias)]
    pre = [x is not None for x in (g, beta)]
    if any(raw) and any(pre):
        fail(op, "g/beta", "either (g, beta) precomputed or (a, b, A_log, dt_bias) raw, not both", "both")
    if all(pre):
        c.tensor("g", g, ("T", "HV"), FLOATS)
        c.tensor("beta", beta, ("T", "HV"), FLOATS)
    elif all(raw):
        _gates(c, a, b, A_log, dt_bias, ("T",))
    else:
        missing = [n for n, x in zip(("a", "b", "A_log", "dt_bias", "g", "beta"), raw + pre) if not x]
        fail(op, "gates", "(g, beta) or (a, b, A_log, dt_bias), all of one set", f"missing {missing}")
    N = _cu_seqlens(c, cu_seqlens, c.dims["T"])
    c.dims["N"] = N
    c.state_pool("state", state, lay)
    c.index("state_indices", state_indices, "N", state.shape[0])
    c.tensor("has_initial_state", has_initial_state, ("N",), (torch.bool,), optional=True)
    c.out("out", out, ("T", "HV", "V"), FLOATS)
    d = c.dims
    return c.done(q.dtype, state_dtype=state.dtype, layout=lay, H=d["H"], HV=d["HV"], K=d["K"], V=d["V"],
                  gates="precomputed" if all(pre) else "raw")


@validator("chunk_size", cache=False)     # T changes with every batch
def chunk_cumsum(g, cu_seqlens, chunk_size, out):
    op = "chunk_cumsum"
    c = Checker(op, _device(g))
    c.tensor("g", g, ("T", "HV"), FLOATS)
    _cu_seqlens(c, cu_seqlens, c.dims["T"])
    if chunk_size not in (16, 32, 64, 128):
        fail(op, "chunk_size", "one of 16, 32, 64, 128", chunk_size)
    c.out("out", out, ("T", "HV"), (torch.float32,))
    return c.done(g.dtype, HV=c.dims["HV"], chunk_size=chunk_size)


def _conv_pool(c: Checker, conv_state, weight, bias):
    c.tensor("weight", weight, ("D", "W"), FLOATS)
    if not 2 <= c.dims["W"] <= 4:
        fail(c.op, "weight", "width W in 2..4", c.dims["W"])
    c.tensor("bias", bias, ("D",), FLOATS, optional=True)
    c.tensor("conv_state", conv_state, ("S", "D", c.dims["W"] - 1), FLOATS)
    if conv_state.stride(-1) != 1 or conv_state.stride(-2) != conv_state.shape[-1]:
        fail(c.op, "conv_state", "each slot's [D, W-1] block contiguous (any slot stride)",
             f"strides {tuple(conv_state.stride())}")


@validator("act")
def causal_conv1d_update(x, conv_state, weight, bias, state_indices, act, out):
    op = "causal_conv1d_update"
    c = Checker(op, _device(x))
    c.tensor("x", x, ("B", "D"), FLOATS)
    _conv_pool(c, conv_state, weight, bias)
    c.index("state_indices", state_indices, "B", conv_state.shape[0])
    c.out("out", out, ("B", "D"), FLOATS)
    return c.done(x.dtype, state_dtype=conv_state.dtype, D=c.dims["D"], W=c.dims["W"],
                  activation=activation(op, act), bias=bias is not None)


@validator("act", cache=False)            # T and N change with every batch
def causal_conv1d(x, weight, bias, cu_seqlens, conv_state, state_indices, has_initial_state, act, out):
    op = "causal_conv1d"
    c = Checker(op, _device(x))
    c.tensor("x", x, ("T", "D"), FLOATS)
    _conv_pool(c, conv_state, weight, bias)
    c.dims["N"] = _cu_seqlens(c, cu_seqlens, c.dims["T"])
    c.index("state_indices", state_indices, "N", conv_state.shape[0])
    c.tensor("has_initial_state", has_initial_state, ("N",), (torch.bool,), optional=True)
    c.out("out", out, ("T", "D"), FLOATS)
    return c.done(x.dtype, state_dtype=conv_state.dtype, D=c.dims["D"], W=c.dims["W"],
                  activation=activation(op, act), bias=bias is not None)


def _split(op, c: Checker, mixed_qkvz, mixed_ba, H, HV, K, V, lay):
    if lay not in ("interleaved", "contiguous"):
        fail(op, "layout", "'interleaved' (Qwen3-Next) or 'contiguous' (Qwen3.5)", repr(lay))
    gqa(op, H, HV)
    c.tensor("mixed_qkvz", mixed_qkvz, ("T", 2 * H * K + 2 * HV * V), FLOATS)
    c.tensor("mixed_ba", mixed_ba, ("T", 2 * HV), FLOATS)
    return {"H": H, "HV": HV, "K": K, "V": V, "split_layout": lay}


@validator("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim", "lay")
def split_qkvzba(mixed_qkvz, mixed_ba, num_k_heads, num_v_heads, head_k_dim, head_v_dim, lay):
    op = "split_qkvzba"
    c = Checker(op, _device(mixed_qkvz))
    dims = _split(op, c, mixed_qkvz, mixed_ba, int(num_k_heads), int(num_v_heads), int(head_k_dim),
                  int(head_v_dim), lay)
    return c.done(mixed_qkvz.dtype, **dims)


@validator("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim", "lay", "act")
def conv1d_update_split(mixed_qkvz, mixed_ba, conv_state, weight, bias, state_indices, num_k_heads, num_v_heads,
                        head_k_dim, head_v_dim, lay, act):
    op = "conv1d_update_split"
    c = Checker(op, _device(mixed_qkvz))
    H, HV, K, V = int(num_k_heads), int(num_v_heads), int(head_k_dim), int(head_v_dim)
    dims = _split(op, c, mixed_qkvz, mixed_ba, H, HV, K, V, lay)
    c.dims["D"] = 2 * H * K + HV * V
    c.dims["B"] = c.dims["T"]
    _conv_pool(c, conv_state, weight, bias)
    c.index("state_indices", state_indices, "B", conv_state.shape[0])
    return c.done(mixed_qkvz.dtype, state_dtype=conv_state.dtype, W=c.dims["W"],
                  activation=activation(op, act), bias=bias is not None, **dims)


def _rms_norm_gated(op, x, z, weight, eps, out) -> Checker:
    c = Checker(op, _device(x))
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        fail(op, "x", "a tensor [..., V]", x)
    lead = tuple(f"d{i}" for i in range(x.dim() - 1))
    c.tensor("x", x, (*lead, "V"), FLOATS)
    c.tensor("z", z, (*lead, "V"), FLOATS)
    c.tensor("weight", weight, ("V",), FLOATS)
    c.out("out", out, (*lead, "V"), FLOATS)
    if not float(eps) > 0:
        fail(op, "eps", "a positive float", eps)
    return c.done(x.dtype, V=c.dims["V"])


@validator("eps")
def rms_norm_gated(x, z, weight, eps, out):
    return _rms_norm_gated("rms_norm_gated", x, z, weight, eps, out)


@validator("eps", "group_size", "fp8_dtype")
def rms_norm_gated_fp8(x, z, weight, eps, group_size, fp8_dtype):
    op = "rms_norm_gated_fp8"
    c = _rms_norm_gated(op, x, z, weight, eps, None)
    V = c.props["V"]
    if group_size <= 0 or V % group_size:
        fail(op, "group_size", f"a positive divisor of the row length V={V}", group_size)
    if fp8_dtype not in FP8_MAX:
        fail(op, "fp8_dtype", "torch.float8_e4m3fn or torch.float8_e4m3fnuz", fp8_dtype)
    c.props.update(group_size=group_size, fp8_dtype=fp8_dtype)
    return c
