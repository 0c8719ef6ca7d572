"""Gated DeltaNet token mixer on gdn kernels: the layer, its state cache, tensor parallelism.

`GatedDeltaNet` holds the parameters of a Qwen3-Next or Qwen3.5 linear-attention layer under Hugging Face's
names (`in_proj_qkvz` / `in_proj_ba`, or `in_proj_qkv` / `in_proj_z` / `in_proj_b` / `in_proj_a`, then
`conv1d`, `dt_bias`, `A_log`, `norm`, `out_proj`), so a checkpoint's state dict loads unchanged. Its compute
calls `gdn.ops` only (plus the projections' GEMMs): three modes over a slot-indexed cache,

    prefill  packed varlen tokens [T, hidden] + cu_seqlens [N+1] + state_indices [N]
    decode   one token per sequence [B, hidden] + state_indices [B]
    verify   T draft tokens per sequence [B, T, hidden] (MTP / speculative decoding): the pools stay
             untouched, the state after every token goes to the cache's intermediate buffers, and
             `GDNCache.commit` later keeps the accepted prefix.

`GDNCache` holds per layer a conv pool [S+1, D, W-1] (W-1 newest inputs, oldest first; row S is a scratch
row, never allocated) and a state pool [S, HV, V, K] ("vk", default) or [S, HV, K, V] ("kv"), fp32 or bf16.
A negative slot index (PAD_SLOT_ID) marks padding: nothing is read or written and the row's output is zero.
Decode and verify do no host synchronisation and allocate only their outputs (CUDA-graph capturable when the
ops are).

Tensor parallelism: `GatedDeltaNet(..., process_group=pg)` keeps heads [r*H/tp, (r+1)*H/tp) (and their v
heads) on rank r: the input projections and conv are column-parallel, `out_proj` is row-parallel and its
output is all-reduced. A full (unsharded) state dict loads into a sharded layer: each rank slices its part.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GatedDeltaNet", "GDNCache", "GDNLayerState", "PAD_SLOT_ID"]

PAD_SLOT_ID = -1

_LAYOUT_ALIASES = {"interleaved": "interleaved", "qwen3_next": "interleaved", "qwen3-next": "interleaved",
                   "contiguous": "contiguous", "qwen3_5": "contiguous", "qwen3.5": "contiguous"}

_OPS = None


def _ops():
    """gdn.ops, imported on first use (importing gdn.layers stays cheap and never probes hardware)."""
    global _OPS
    if _OPS is None:
        import gdn.ops as ops
        _OPS = ops
    return _OPS


# ---------------------------------------------------------------------------------------------------
# state


@dataclass
class GDNLayerState:
    """One layer's view of a cache: the pools the ops update in place.

    conv         [S', D, W-1] conv windows (S' >= S; rows past the allocated slots are scratch)
    state        [S, HV, V, K] ("vk") or [S, HV, K, V] ("kv")
    inter_state  [R, T, HV, ...] (pool layout) states after each verified draft token, or None
    inter_conv   [R+1, T, D, W-1] conv windows after each draft token (row R is scratch), or None
    """

    conv: torch.Tensor
    state: torch.Tensor
    state_layout: str = "vk"
    inter_state: torch.Tensor | None = None
    inter_conv: torch.Tensor | None = None


class GDNCache:
    """Static conv and recurrent-state pools for a stack of GDN layers, addressed by slot.

    Args:
        layer_ids: the layers' keys (their `layer_idx`), or an int n for keys 0..n-1.
        max_slots: S, the number of sequences that can hold state at once.
        conv_dim, conv_kernel_size: D = 2*H*K + HV*V (per rank) and W.
        num_v_heads, head_k_dim, head_v_dim: HV (per rank), K, V.
        state_dtype: torch.float32 or torch.bfloat16 (compute is fp32 either way).
        conv_dtype: dtype of the conv windows (the activations' dtype).
        state_layout: "vk" (default, K contiguous) or "kv".
        max_draft_tokens, max_verify_batch: size the MTP intermediate buffers (0 = no verify mode).

    Slots are handed out by `allocate` and returned by `release` (host-side bookkeeping, outside the
    decode loop). Padding rows use PAD_SLOT_ID.
    """

    def __init__(self, layer_ids: int | Iterable[int], max_slots: int, *, conv_dim: int, conv_kernel_size: int,
                 num_v_heads: int, head_k_dim: int, head_v_dim: int, state_dtype: torch.dtype = torch.float32,
                 conv_dtype: torch.dtype = torch.float32, state_layout: str = "vk", device=None,
                 max_draft_tokens: int = 0, max_verify_batch: int | None = None):
        if state_layout not in ("vk", "kv"):
            raise ValueError(f"state_layout must be 'vk' or 'kv', got {state_layout!r}")
        if state_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"state_dtype must be torch.float32 or torch.bfloat16, got {state_dtype}")
        ids = list(range(layer_ids)) if isinstance(layer_ids, int) else list(layer_ids)
        self.layer_ids = ids
        self._index = {lid: i for i, lid in enumerate(ids)}
        self.max_slots = S = int(max_slots)
        self.conv_dim, self.conv_kernel_size = conv_dim, conv_kernel_size
        self.num_v_heads, self.head_k_dim, self.head_v_dim = num_v_heads, head_k_dim, head_v_dim
        self.state_dtype, self.conv_dtype, self.state_layout = state_dtype, conv_dtype, state_layout
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        hv_shape = (num_v_heads, head_v_dim, head_k_dim) if state_layout == "vk" else (num_v_heads, head_k_dim,
                                                                                         head_v_dim)
        W1 = conv_kernel_size - 1
        kw = dict(device=self.device)
        self.conv_states = [torch.zeros(S + 1, conv_dim, W1, dtype=conv_dtype, **kw) for _ in ids]
        self.ssm_states = [torch.zeros(S, *hv_shape, dtype=state_dtype, **kw) for _ in ids]
        self.max_draft_tokens = int(max_draft_tokens)
        self.max_verify_batch = int(max_verify_batch if max_verify_batch is not None else S)
        if self.max_draft_tokens > 0:
            R, T = self.max_verify_batch, self.max_draft_tokens
            self.inter_states = [torch.zeros(R, T, *hv_shape, dtype=state_dtype, **kw) for _ in ids]
            self.inter_convs = [torch.zeros(R + 1, T, conv_dim, W1, dtype=conv_dtype, **kw) for _ in ids]
        else:
            self.inter_states = self.inter_convs = None
        self._free = list(range(S - 1, -1, -1))   # pop() hands out the lowest free slot first
        self._used: set[int] = set()

    @classmethod
    def for_layers(cls, layers: Sequence["GatedDeltaNet"], max_slots: int, **kwargs) -> "GDNCache":
        """A cache sized for these layers (keys = their layer_idx, or 0..n-1 when unset)."""
        first = layers[0]
        for lay in layers[1:]:
            if lay.state_shape() != first.state_shape() or lay.conv_dim != first.conv_dim:
                raise ValueError("GDNCache.for_layers: layers differ in shape; build one cache per shape")
        ids = [lay.layer_idx if lay.layer_idx is not None else i for i, lay in enumerate(layers)]
        p = next(first.parameters())
        kwargs.setdefault("device", p.device)
        kwargs.setdefault("conv_dtype", p.dtype)
        return cls(ids, max_slots, conv_dim=first.conv_dim, conv_kernel_size=first.conv_kernel_size,
                   num_v_heads=first.local_num_v_heads, head_k_dim=first.head_k_dim, head_v_dim=first.head_v_dim,
                   **kwargs)

    # slots -------------------------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int = 1, *, zero: bool = True) -> torch.Tensor:
        """n free slots as an int32 tensor on the cache's device (zeroed in every layer unless zero=False)."""
        if n > len(self._free):
            raise RuntimeError(f"GDNCache: {n} slots requested, {len(self._free)} free of {self.max_slots}")
        slots = [self._free.pop() for _ in range(n)]
        self._used.update(slots)
        idx = torch.tensor(slots, dtype=torch.int32, device=self.device)
        if zero:
            self.reset(idx)
        return idx

    def release(self, slots) -> None:
        """Give slots back (a tensor or list; negative entries are ignored)."""
        vals = slots.tolist() if isinstance(slots, torch.Tensor) else list(slots)
        for s in vals:
            if s < 0:
                continue
            if s not in self._used:
                raise ValueError(f"GDNCache.release: slot {s} is not allocated")
            self._used.remove(s)
            self._free.append(s)
        self._free.sort(reverse=True)

    def reset(self, slots: torch.Tensor | None = None) -> None:
        """Zero the given slots (all when None) in every layer."""
        for conv, st in zip(self.conv_states, self.ssm_states):
            if slots is None:
                conv.zero_()
                st.zero_()
            else:
                idx = slots.to(self.device, torch.long)
                idx = idx[idx >= 0]
                conv.index_fill_(0, idx, 0)
                st.index_fill_(0, idx, 0)

    # per layer ---------------------------------------------------------------------------------------

    def layer(self, layer_id: int) -> GDNLayerState:
        i = self._index[layer_id]
        return GDNLayerState(self.conv_states[i], self.ssm_states[i], self.state_layout,
                             None if self.inter_states is None else self.inter_states[i],
                             None if self.inter_convs is None else self.inter_convs[i])

    # MTP ---------------------------------------------------------------------------------------------

    def commit(self, state_indices: torch.Tensor, num_accepted: torch.Tensor,
               intermediate_indices: torch.Tensor | None = None) -> None:
        """After `verify`: pool[state_indices[i]] = state after draft token num_accepted[i] - 1, in every layer.

        intermediate_indices default to 0..B-1 (what `verify` used by default). num_accepted[i] == 0 or a
        negative index leaves the slot unchanged. No host synchronisation.
        """
        if self.inter_states is None:
            raise RuntimeError("GDNCache.commit: the cache has no intermediate buffers (max_draft_tokens=0)")
        pool_dev = self.ssm_states[0].device
        for name, t in (("state_indices", state_indices), ("num_accepted", num_accepted),
                        ("intermediate_indices", intermediate_indices)):
            if t is not None and t.device != pool_dev:
                raise ValueError(f"GDNCache.commit: argument '{name}' expected on the cache's device {pool_dev}, "
                                 f"got {t.device}")
        B = state_indices.shape[0]
        if intermediate_indices is None:
            intermediate_indices = torch.arange(B, device=state_indices.device, dtype=state_indices.dtype)
        idx = state_indices.long()
        iidx = intermediate_indices.long()
        n = num_accepted.long()
        ok = (idx >= 0) & (iidx >= 0) & (n > 0)
        dst = torch.where(ok, idx, torch.full_like(idx, self.max_slots))        # the conv scratch row
        src_row, src_t = iidx.clamp(min=0), (n - 1).clamp(min=0)
        ops = _ops()
        for i in range(len(self.layer_ids)):
            ops.commit_accepted(self.ssm_states[i], state_indices, self.inter_states[i], intermediate_indices,
                                num_accepted, state_layout=self.state_layout)
            self.conv_states[i].index_copy_(0, dst, self.inter_convs[i][src_row, src_t])


# ---------------------------------------------------------------------------------------------------
# tensor-parallel sharding of full (unsharded) parameters


def _shard_pieces(w: torch.Tensor, pieces: Sequence[int], dim: int, rank: int, tp: int) -> torch.Tensor:
    """Concatenate, over consecutive pieces of w along dim, each piece's rank-th 1/tp block."""
    out, off = [], 0
    for size in pieces:
        blk = size // tp
        out.append(w.narrow(dim, off + rank * blk, blk))
        off += size
    return torch.cat(out, dim) if len(out) > 1 else out[0].clone()


class _GatedRMSNorm(nn.Module):
    """Holds the gated RMSNorm weight under HF's name (`norm.weight`); the layer calls gdn.ops.rms_norm_gated."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.variance_epsilon = eps

    def forward(self, x, z):
        return _ops().rms_norm_gated(x, z, self.weight, eps=self.variance_epsilon)


# ---------------------------------------------------------------------------------------------------
# the layer


class GatedDeltaNet(nn.Module):
    """Qwen3-Next / Qwen3.5 Gated DeltaNet layer on gdn kernels.

    Args:
        hidden_size: model width.
        num_k_heads, num_v_heads, head_k_dim, head_v_dim: H, HV, K, V of the full (unsharded) layer.
        conv_kernel_size: W.
        projection_layout: "interleaved" (Qwen3-Next: in_proj_qkvz, in_proj_ba, grouped per q/k head) or
            "contiguous" (Qwen3.5: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a).
        rms_norm_eps: eps of the gated RMSNorm.
        activation: conv activation ("silu").
        layer_idx: key of this layer's pools in a GDNCache.
        process_group: shard heads over this group (tensor parallelism); None = unsharded.
        state_layout: layout of stateless prefill scratch pools (cache-backed calls use the cache's).
    """

    def __init__(self, hidden_size: int, num_k_heads: int, num_v_heads: int, head_k_dim: int, head_v_dim: int, *,
                 conv_kernel_size: int = 4, projection_layout: str = "interleaved", rms_norm_eps: float = 1e-6,
                 activation: str = "silu", layer_idx: int | None = None, use_qk_l2norm: bool = True,
                 process_group=None, state_layout: str = "vk", device=None, dtype=None):
        super().__init__()
        if projection_layout not in _LAYOUT_ALIASES:
            raise ValueError(f"projection_layout must be one of {sorted(_LAYOUT_ALIASES)}, got {projection_layout!r}")
        if num_v_heads % num_k_heads:
            raise ValueError(f"num_v_heads ({num_v_heads}) must be a multiple of num_k_heads ({num_k_heads})")
        self.projection_layout = _LAYOUT_ALIASES[projection_layout]
        self.hidden_size = hidden_size
        self.num_k_heads, self.num_v_heads = num_k_heads, num_v_heads
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.conv_kernel_size = conv_kernel_size
        self.layer_norm_epsilon = rms_norm_eps
        self.activation = activation
        self.layer_idx = layer_idx
        self.use_qk_l2norm = use_qk_l2norm
        self.state_layout = state_layout
        self.fp8_out_proj: Callable | None = None   # (y_fp8 [T, HV*V], scales [T, HV*V // g]) -> [T, hidden]

        self.process_group = process_group
        if process_group is not None:
            import torch.distributed as dist
            self.tp_size, self.tp_rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        else:
            self.tp_size, self.tp_rank = 1, 0
        tp = self.tp_size
        if num_k_heads % tp:
            raise ValueError(f"num_k_heads ({num_k_heads}) must be divisible by the TP size ({tp})")
        H, HV = num_k_heads // tp, num_v_heads // tp
        self.local_num_k_heads, self.local_num_v_heads = H, HV
        self.key_dim = H * head_k_dim
        self.value_dim = HV * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim

        fk = dict(device=device, dtype=dtype)
        if self.projection_layout == "interleaved":
            self.in_proj_qkvz = nn.Linear(hidden_size, 2 * self.key_dim + 2 * self.value_dim, bias=False, **fk)
            self.in_proj_ba = nn.Linear(hidden_size, 2 * HV, bias=False, **fk)
        else:
            self.in_proj_qkv = nn.Linear(hidden_size, self.conv_dim, bias=False, **fk)
            self.in_proj_z = nn.Linear(hidden_size, self.value_dim, bias=False, **fk)
            self.in_proj_b = nn.Linear(hidden_size, HV, bias=False, **fk)
            self.in_proj_a = nn.Linear(hidden_size, HV, bias=False, **fk)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel_size, groups=self.conv_dim, bias=False,
                                padding=conv_kernel_size - 1, **fk)
        self.dt_bias = nn.Parameter(torch.ones(HV, **fk))
        A = torch.empty(HV, device=device, dtype=torch.float32).uniform_(1, 16)
        self.A_log = nn.Parameter(torch.log(A).to(dtype) if dtype is not None else torch.log(A))
        self.norm = _GatedRMSNorm(head_v_dim, eps=rms_norm_eps, **fk)
        self.out_proj = nn.Linear(self.value_dim, hidden_size, bias=False, **fk)
        self._fused = None   # Qwen3.5: (W_qkvz, W_ba) after fuse_projections()
        self._arange_cache: dict = {}

    # construction ------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config, layer_idx: int | None = None, **kwargs) -> "GatedDeltaNet":
        """From a HF Qwen3NextConfig / Qwen3_5TextConfig (or anything with the same linear_* fields)."""
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        layout = kwargs.pop("projection_layout", None)
        if layout is None:
            mt = getattr(cfg, "model_type", "") or ""
            layout = "interleaved" if "next" in mt else "contiguous"
        return cls(cfg.hidden_size, cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                   cfg.linear_value_head_dim, conv_kernel_size=cfg.linear_conv_kernel_dim, projection_layout=layout,
                   rms_norm_eps=cfg.rms_norm_eps, activation=getattr(cfg, "hidden_act", "silu"), layer_idx=layer_idx,
                   **kwargs)

    @staticmethod
    def hf_projection_layout(module: nn.Module) -> str | None:
        """"interleaved" / "contiguous" for a HF Qwen3-Next / Qwen3.5 GatedDeltaNet module, else None."""
        if all(hasattr(module, n) for n in ("in_proj_qkvz", "in_proj_ba")):
            return "interleaved"
        if all(hasattr(module, n) for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")):
            return "contiguous"
        return None

    @classmethod
    def from_hf(cls, module: nn.Module, *, process_group=None, share_parameters: bool = True,
                **kwargs) -> "GatedDeltaNet":
        """A gdn layer on the weights of a HF Qwen3NextGatedDeltaNet / Qwen3_5GatedDeltaNet.

        Unsharded with share_parameters=True, the new layer reuses the HF module's submodules and Parameter
        objects (no copy); otherwise (or with a process_group) it copies, slicing this rank's shard.
        """
        layout = cls.hf_projection_layout(module)
        if layout is None:
            raise TypeError(f"{type(module).__name__} is not a Qwen3-Next / Qwen3.5 GatedDeltaNet module")
        w = module.conv1d.weight
        args = (module.hidden_size, module.num_k_heads, module.num_v_heads, module.head_k_dim, module.head_v_dim)
        kw = dict(conv_kernel_size=module.conv_kernel_size, projection_layout=layout,
                  rms_norm_eps=getattr(module.norm, "variance_epsilon", getattr(module, "layer_norm_epsilon", 1e-6)),
                  activation=getattr(module, "activation", "silu"), layer_idx=getattr(module, "layer_idx", None))
        kw.update(kwargs)
        if share_parameters and process_group is None:
            new = cls(*args, device="meta", dtype=w.dtype, **kw)
            names = (["in_proj_qkvz", "in_proj_ba"] if layout == "interleaved"
                     else ["in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"])
            for n in names + ["conv1d", "norm", "out_proj"]:
                setattr(new, n, getattr(module, n))
            new.dt_bias, new.A_log = module.dt_bias, module.A_log
            return new
        new = cls(*args, process_group=process_group, device=w.device, dtype=w.dtype, **kw)
        new.load_state_dict(module.state_dict())
        return new

    def _shard_spec(self) -> dict:
        """param name -> (full shape, fn(full) -> this rank's shard)."""
        H, HV, K, V, tp, r = self.num_k_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim, self.tp_size, \
            self.tp_rank
        hid = self.hidden_size
        qkv = [H * K, H * K, HV * V]
        rows = lambda pieces: (lambda w: _shard_pieces(w, pieces, 0, r, tp))   # noqa: E731
        spec = {
            "conv1d.weight": ((sum(qkv), 1, self.conv_kernel_size), rows(qkv)),
            "conv1d.bias": ((sum(qkv),), rows(qkv)),
            "dt_bias": ((HV,), rows([HV])),
            "A_log": ((HV,), rows([HV])),
            "out_proj.weight": ((hid, HV * V), lambda w: _shard_pieces(w, [HV * V], 1, r, tp)),
        }
        if self.projection_layout == "interleaved":
            n_qkvz = 2 * H * K + 2 * HV * V
            spec["in_proj_qkvz.weight"] = ((n_qkvz, hid), rows([n_qkvz]))   # per-head groups: one block
            spec["in_proj_ba.weight"] = ((2 * HV, hid), rows([2 * HV]))
        else:
            spec["in_proj_qkv.weight"] = ((sum(qkv), hid), rows(qkv))
            spec["in_proj_z.weight"] = ((HV * V, hid), rows([HV * V]))
            spec["in_proj_b.weight"] = ((HV, hid), rows([HV]))
            spec["in_proj_a.weight"] = ((HV, hid), rows([HV]))
        return spec

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Sharded layer given a full checkpoint: slice this rank's part of every sharded parameter. Children
        # load from `state_dict` after this hook, so they see the slices.
        if self.tp_size > 1:
            for name, (full, fn) in self._shard_spec().items():
                key = prefix + name
                t = state_dict.get(key)
                if t is not None and tuple(t.shape) == tuple(full):
                    state_dict[key] = fn(t)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fuse_projections(self) -> None:
        """Qwen3.5: run the four input projections as two GEMMs (qkv|z and b|a).

        The HF-named weights become views into the fused weights (no extra memory; state_dict and
        load_state_dict keep working in place). Call again after moving the layer (`.to()`) or replacing
        its Parameters. A no-op for Qwen3-Next, whose checkpoint is already fused.
        """
        if self.projection_layout != "contiguous":
            return
        with torch.no_grad():
            qkv, z, b, a = (self.in_proj_qkv.weight, self.in_proj_z.weight, self.in_proj_b.weight,
                            self.in_proj_a.weight)
            w1 = torch.cat([qkv, z], 0)
            w2 = torch.cat([b, a], 0)
        n1, n2 = qkv.shape[0], b.shape[0]
        self.in_proj_qkv.weight = nn.Parameter(w1[:n1], requires_grad=qkv.requires_grad)
        self.in_proj_z.weight = nn.Parameter(w1[n1:], requires_grad=z.requires_grad)
        self.in_proj_b.weight = nn.Parameter(w2[:n2], requires_grad=b.requires_grad)
        self.in_proj_a.weight = nn.Parameter(w2[n2:], requires_grad=a.requires_grad)
        self._fused = (w1, w2)

    def _fused_weights(self):
        if self._fused is None:
            return None
        w1, w2 = self._fused
        # still the storage the HF-named parameters live in (else the layer was moved / reassigned)
        if (self.in_proj_qkv.weight.data_ptr() != w1.data_ptr()
                or self.in_proj_b.weight.data_ptr() != w2.data_ptr()):
            self._fused = None
            return None
        return w1, w2

    def state_shape(self, state_layout: str | None = None) -> tuple[int, int, int]:
        HV, K, V = self.local_num_v_heads, self.head_k_dim, self.head_v_dim
        return (HV, V, K) if (state_layout or self.state_layout) == "vk" else (HV, K, V)

    def extra_repr(self) -> str:
        s = (f"hidden={self.hidden_size}, H={self.num_k_heads}, HV={self.num_v_heads}, K={self.head_k_dim}, "
             f"V={self.head_v_dim}, W={self.conv_kernel_size}, layout={self.projection_layout}")
        if self.tp_size > 1:
            s += f", tp={self.tp_rank}/{self.tp_size}"
        return s

    # pieces ------------------------------------------------------------------------------------------

    def _arange(self, n: int, device, dtype=torch.int32) -> torch.Tensor:
        key = (n, device, dtype)
        t = self._arange_cache.get(key)
        if t is None:
            t = self._arange_cache[key] = torch.arange(n, device=device, dtype=dtype)
        return t

    @property
    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight.squeeze(1)   # [D, W], a view

    def _split_kw(self) -> dict:
        return dict(num_k_heads=self.local_num_k_heads, num_v_heads=self.local_num_v_heads,
                    head_k_dim=self.head_k_dim, head_v_dim=self.head_v_dim)

    def _projections(self, x: torch.Tensor):
        """x [T, hidden] -> ("split", mixed_qkvz, mixed_ba) or ("direct", mixed_qkv, z, b, a)."""
        if self.projection_layout == "interleaved":
            return "split", self.in_proj_qkvz(x), self.in_proj_ba(x)
        fused = self._fused_weights()
        if fused is not None:
            return "split", F.linear(x, fused[0]), F.linear(x, fused[1])
        T = x.shape[0]
        z = self.in_proj_z(x).view(T, self.local_num_v_heads, self.head_v_dim)
        return "direct", self.in_proj_qkv(x), z, self.in_proj_b(x), self.in_proj_a(x)

    def _front(self, x: torch.Tensor):
        """x [T, hidden] -> conv input mixed_qkv [T, D], z [T, HV, V], b [T, HV], a [T, HV]."""
        p = self._projections(x)
        if p[0] == "direct":
            return p[1:]
        return _ops().split_qkvzba(p[1], p[2], layout=self.projection_layout, **self._split_kw())

    def _qkv_views(self, mixed_qkv: torch.Tensor):
        """[..., D] -> q, k [..., H, K], v [..., HV, V] (views)."""
        kd = self.key_dim
        q = mixed_qkv[..., :kd].unflatten(-1, (self.local_num_k_heads, self.head_k_dim))
        k = mixed_qkv[..., kd:2 * kd].unflatten(-1, (self.local_num_k_heads, self.head_k_dim))
        v = mixed_qkv[..., 2 * kd:].unflatten(-1, (self.local_num_v_heads, self.head_v_dim))
        return q, k, v

    def _back(self, o: torch.Tensor, z: torch.Tensor, out_dtype: torch.dtype, fp8: bool) -> torch.Tensor:
        """o, z [..., HV, V] -> gated RMSNorm -> out_proj (-> all-reduce): [..., hidden]."""
        lead = o.shape[:-2]
        V = self.head_v_dim
        o2, z2 = o.reshape(-1, V), z.reshape(-1, V)
        ops = _ops()
        if fp8:
            g = min(128, V)
            y8, s = ops.rms_norm_gated_fp8(o2, z2, self.norm.weight, eps=self.layer_norm_epsilon, group_size=g)
            T = o2.shape[0] // self.local_num_v_heads
            y8, s = y8.reshape(T, self.value_dim), s.reshape(T, -1)
            if self.fp8_out_proj is not None:
                out = self.fp8_out_proj(y8, s)
            else:   # no FP8 GEMM plugged in: dequantise (correct, not fast)
                y = (y8.float().unflatten(-1, (-1, g)) * s[..., None]).flatten(-2)
                out = self.out_proj(y.to(out_dtype))
        else:
            y = ops.rms_norm_gated(o2, z2, self.norm.weight, eps=self.layer_norm_epsilon, out_dtype=out_dtype)
            out = self.out_proj(y.view(-1, self.value_dim))
        if self.tp_size > 1:
            import torch.distributed as dist
            dist.all_reduce(out, group=self.process_group)
        return out.view(*lead, self.hidden_size)

    def _layer_state(self, cache) -> GDNLayerState:
        if isinstance(cache, GDNLayerState):
            return cache
        if isinstance(cache, GDNCache):
            return cache.layer(self.layer_idx if self.layer_idx is not None else cache.layer_ids[0])
        raise TypeError(f"cache must be a GDNCache or GDNLayerState, got {type(cache).__name__}")

    # modes -------------------------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, cache=None, state_indices: torch.Tensor | None = None, *,
                mode: str | None = None, cu_seqlens: torch.Tensor | None = None,
                has_initial_state: torch.Tensor | None = None, intermediate_indices: torch.Tensor | None = None,
                parent_indices: torch.Tensor | None = None, update_state: bool = False,
                fp8: bool = False) -> torch.Tensor:
        """mode "prefill" (default when cu_seqlens is given, or hidden_states is [B, L, hidden] without a cache),
        "decode" (default for [B, hidden]) or "verify" ([B, T, hidden] draft tokens). See the methods."""
        if mode is None:
            if cu_seqlens is not None or cache is None:
                mode = "prefill"
            elif hidden_states.dim() == 2:
                mode = "decode"
            else:
                raise ValueError("GatedDeltaNet: [B, T, hidden] input with a cache is ambiguous; pass "
                                 "mode='prefill' or mode='verify'")
        if mode == "prefill":
            return self.prefill(hidden_states, cache, state_indices, cu_seqlens=cu_seqlens,
                                has_initial_state=has_initial_state, fp8=fp8)
        if mode == "decode":
            return self.decode(hidden_states, cache, state_indices, fp8=fp8)
        if mode == "verify":
            return self.verify(hidden_states, cache, state_indices, intermediate_indices=intermediate_indices,
                               parent_indices=parent_indices, update_state=update_state, fp8=fp8)
        raise ValueError(f"mode must be 'prefill', 'decode' or 'verify', got {mode!r}")

    def prefill(self, hidden_states: torch.Tensor, cache=None, state_indices: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None, has_initial_state: torch.Tensor | None = None,
                fp8: bool = False) -> torch.Tensor:
        """Packed varlen prefill: hidden_states [T, hidden] with cu_seqlens [N+1] (or a dense [B, L, hidden]
        batch), state_indices [N]. Reads each sequence's conv window and state from its slot (zeros where
        has_initial_state is False) and writes the final ones back. Without a cache the layer runs from zero
        state and keeps nothing. Returns [T, hidden] (or [B, L, hidden])."""
        shape = hidden_states.shape
        x = hidden_states
        if x.dim() == 3:
            if cu_seqlens is not None:
                raise ValueError("prefill: give either a dense [B, L, hidden] batch or packed [T, hidden] + cu_seqlens")
            B, L = shape[:2]
            x = x.reshape(B * L, shape[2])
            cu_seqlens = torch.arange(0, B * L + 1, L, device=x.device, dtype=torch.int32)
        elif cu_seqlens is None:
            cu_seqlens = torch.tensor([0, x.shape[0]], device=x.device, dtype=torch.int32)
        N = cu_seqlens.shape[0] - 1
        if cache is None:
            ls = self.scratch_state(N, x.device, conv_dtype=x.dtype)
            state_indices = self._arange(N, x.device)
            has_initial_state = None
        else:
            ls = self._layer_state(cache)
            if state_indices is None:
                raise ValueError("prefill with a cache needs state_indices")
        ops = _ops()
        mixed_qkv, z, b, a = self._front(x)
        mixed_qkv = ops.causal_conv1d(mixed_qkv, self._conv_weight, self.conv1d.bias, cu_seqlens=cu_seqlens,
                                      conv_state=ls.conv, state_indices=state_indices,
                                      has_initial_state=has_initial_state, activation=self.activation)
        q, k, v = self._qkv_views(mixed_qkv)
        o = ops.prefill(q, k, v, ls.state, state_indices, cu_seqlens, a=a, b=b, A_log=self.A_log,
                        dt_bias=self.dt_bias, has_initial_state=has_initial_state, use_qk_l2norm=self.use_qk_l2norm,
                        state_layout=ls.state_layout)
        return self._back(o, z, x.dtype, fp8).view(*shape[:-1], self.hidden_size)

    def decode(self, hidden_states: torch.Tensor, cache, state_indices: torch.Tensor, *,
               fp8: bool = False) -> torch.Tensor:
        """One token per sequence: hidden_states [B, hidden], state_indices [B] (PAD_SLOT_ID rows give zeros
        before out_proj). No host sync; the pools are updated in place. Returns [B, hidden]."""
        ls = self._layer_state(cache)
        ops = _ops()
        x = hidden_states
        p = self._projections(x)
        if p[0] == "split":
            mixed_qkv, z, b, a = ops.conv1d_update_split(p[1], p[2], ls.conv, self._conv_weight, self.conv1d.bias,
                                                         state_indices=state_indices, layout=self.projection_layout,
                                                         activation=self.activation, **self._split_kw())
        else:
            _, raw, z, b, a = p
            mixed_qkv = ops.causal_conv1d_update(raw, ls.conv, self._conv_weight, self.conv1d.bias,
                                                 state_indices=state_indices, activation=self.activation)
        o = ops.decode_packed(mixed_qkv, a, b, self.A_log, self.dt_bias, ls.state, state_indices,
                              num_k_heads=self.local_num_k_heads, head_k_dim=self.head_k_dim,
                              head_v_dim=self.head_v_dim, use_qk_l2norm=self.use_qk_l2norm,
                              state_layout=ls.state_layout)
        return self._back(o, z, x.dtype, fp8)

    def verify(self, hidden_states: torch.Tensor, cache, state_indices: torch.Tensor, *,
               intermediate_indices: torch.Tensor | None = None, parent_indices: torch.Tensor | None = None,
               update_state: bool = False, fp8: bool = False) -> torch.Tensor:
        """MTP / speculative verify: hidden_states [B, T, hidden], T draft tokens per sequence.

        The pools are left untouched; the conv window and recurrent state after every draft token go to the
        cache's intermediate buffers at rows intermediate_indices (default 0..B-1; negative skips), for
        `GDNCache.commit` to keep the accepted prefix. parent_indices [B, T] (tree verify): token t
        continues from token parent[t] (-1: from the pool). update_state=True (chain only) instead writes
        the state after the last token to the pools, as T decode steps would. Returns [B, T, hidden].
        """
        ls = self._layer_state(cache)
        ops = _ops()
        B, T, hid = hidden_states.shape
        dev = hidden_states.device
        if update_state and parent_indices is not None:
            raise ValueError("verify: update_state=True is for chains; tree verify (parent_indices) must commit")
        if not update_state and ls.inter_state is None:
            raise ValueError("verify: the cache has no intermediate buffers (GDNCache(max_draft_tokens=...))")
        if ls.inter_state is not None and T > ls.inter_state.shape[1]:
            raise ValueError(f"verify: {T} draft tokens > the cache's max_draft_tokens {ls.inter_state.shape[1]}")
        x = hidden_states.reshape(B * T, hid)
        raw, z, b, a = self._front(x)
        raw = raw.view(B, T, -1)

        rows = self._arange(B, dev, torch.long)
        idx = state_indices.long()
        valid = idx >= 0
        inter_idx = None
        if ls.inter_state is not None or ls.inter_conv is not None:
            inter_idx = rows if intermediate_indices is None else intermediate_indices.long()
        if ls.inter_conv is not None:
            scratch_row = ls.inter_conv.shape[0] - 1
            conv_dst = torch.where(valid & (inter_idx >= 0), inter_idx, torch.full_like(inter_idx, scratch_row))
        if update_state:
            win, win_idx = ls.conv, state_indices              # the pool itself evolves token by token
        else:
            win = ls.conv.index_select(0, idx.clamp(min=0))    # private copy of each row's window
            win_idx = torch.where(valid, rows, torch.full_like(rows, PAD_SLOT_ID))
        hist = [win] if parent_indices is not None else None  # hist[p + 1] = window after token p
        outs = []
        for t in range(T):
            if hist is not None:                               # a fresh copy: the window after the parent
                win = torch.stack(hist)[parent_indices[:, t].long() + 1, rows]
            outs.append(ops.causal_conv1d_update(raw[:, t], win, self._conv_weight, self.conv1d.bias,
                                                 state_indices=win_idx, activation=self.activation))
            if hist is not None:
                hist.append(win)
            if ls.inter_conv is not None:
                cur = win.index_select(0, idx.clamp(min=0)) if update_state else win
                ls.inter_conv[:, t].index_copy_(0, conv_dst, cur)
        mixed_qkv = torch.stack(outs, 1)                        # [B, T, D]
        q, k, v = self._qkv_views(mixed_qkv)
        HV = self.local_num_v_heads
        o = ops.decode_mtp(q, k, v, a.view(B, T, HV), b.view(B, T, HV), self.A_log, self.dt_bias, ls.state,
                           state_indices, intermediate_states=ls.inter_state,
                           intermediate_indices=None if inter_idx is None else inter_idx.to(state_indices.dtype),
                           parent_indices=parent_indices, disable_state_update=not update_state,
                           use_qk_l2norm=self.use_qk_l2norm, state_layout=ls.state_layout)
        return self._back(o, z.view(B, T, HV, self.head_v_dim), hidden_states.dtype, fp8)

    def scratch_state(self, n: int, device, conv_dtype=torch.float32, state_dtype=torch.float32) -> GDNLayerState:
        """Zeroed pools for n sequences (stateless prefill)."""
        return GDNLayerState(torch.zeros(n, self.conv_dim, self.conv_kernel_size - 1, device=device, dtype=conv_dtype),
                             torch.zeros(n, *self.state_shape(), device=device, dtype=state_dtype), self.state_layout)
