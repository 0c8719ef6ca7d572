"""Run Hugging Face Qwen3-Next / Qwen3.5 models on gdn kernels.

    from gdn.integrations.transformers import patch, unpatch
    patch(model)            # every Qwen3NextGatedDeltaNet / Qwen3_5GatedDeltaNet -> gdn-backed module
    model.generate(...)     # linear-attention layers now run gdn.ops
    unpatch(model)          # the original modules are back

The replacement (`HFGatedDeltaNet`) reuses the original module's submodules and Parameter objects, so
state-dict keys, dtype/device moves and weight updates are shared both ways.

HF cache bridge (transformers 5.x): the decoder layer passes its `Cache` (a DynamicCache built from the
config, one `LinearAttentionLayer` per linear-attention layer) as `cache_params`. HF keeps there, per layer,
`conv_states[0]` [B, D, W] (the last W conv inputs) and `recurrent_states[0]` [B, HV, K, V] fp32. The patched
module stores gdn's pools in those same slots instead: `conv_states[0]` [B, D, W-1] and `recurrent_states[0]`
[B, HV, V, K] ("vk", default) or [B, HV, K, V] ("kv"), with batch row b as slot b, and sets the layer's
`conv_kernel_size` to W-1 and `has_previous_state` as HF would. Since slots are batch rows, the cache's own
`reorder_cache` (beam search), `batch_select_indices`, `reset` and offloading keep working. A cache already
filled by the unpatched HF module (HF layout) is converted on first use. Past recording (assisted decoding's
rollback) is not supported. With state_layout="kv" and W-1 conv columns the pools stay readable by HF's own
module after `unpatch` (HF's conv code only reads the newest W-1 columns).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from gdn.layers import GatedDeltaNet, GDNLayerState

__all__ = ["patch", "unpatch", "is_patched", "HFGatedDeltaNet", "SUPPORTED_CLASSES"]

_ORIGINALS_ATTR = "_gdn_original_modules"


# HF classes whose forward is the recurrence gdn computes (checked against transformers 5.23's code)
SUPPORTED_CLASSES = ("Qwen3NextGatedDeltaNet", "Qwen3_5GatedDeltaNet", "Qwen3_5MoeGatedDeltaNet")


def _is_hf_gdn(module: nn.Module, classes) -> bool:
    return (type(module).__name__ in classes and not isinstance(module, GatedDeltaNet)
            and GatedDeltaNet.hf_projection_layout(module) is not None
            and getattr(module.norm, "activation", "silu") == "silu"
            and all(hasattr(module, n) for n in ("conv1d", "A_log", "dt_bias", "norm", "out_proj")))


class HFGatedDeltaNet(GatedDeltaNet):
    """A gdn `GatedDeltaNet` with HF's forward signature: forward(hidden_states [B, L, hidden], cache_params,
    attention_mask [B, L] or None, **kwargs) -> [B, L, hidden]."""

    state_dtype: torch.dtype = torch.float32
    layer_type: str = "linear_attention"

    def forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        if attention_mask is not None and attention_mask.dim() == 2:
            # same as HF: padded positions enter as zeros (a zero token leaves a zero state at zero)
            hidden_states = (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
        B, L, hid = hidden_states.shape
        cu = kwargs.get("cu_seq_lens_q")
        if cache_params is None:
            if cu is not None:   # padding-free packed batch: one row holding several sequences
                if B != 1:
                    raise ValueError("cu_seq_lens_q needs a batch of one packed row")
                return self.prefill(hidden_states.view(L, hid), None, cu_seqlens=cu).view(1, L, hid)
            return self.prefill(hidden_states)
        if cu is not None:
            raise NotImplementedError("gdn: packed sequences (cu_seq_lens_q) together with a cache")
        ls, had_state = self._bridge(cache_params, hidden_states)
        idx = self._arange(B, hidden_states.device)
        if L == 1 and had_state:
            return self.decode(hidden_states.view(B, hid), ls, idx).view(B, 1, hid)
        # first forward or a multi-token continuation: varlen prefill over the B rows, from the pools
        return self.prefill(hidden_states, ls, idx)

    def _bridge(self, cache, x: torch.Tensor) -> tuple[GDNLayerState, bool]:
        """The gdn pools stored in HF's cache layer for this layer (created / converted as needed)."""
        li = self.layer_idx
        layer = cache.layers[li] if li < len(cache.layers) else None
        if layer is None or not hasattr(layer, "recurrent_states") or not hasattr(layer, "conv_states"):
            raise TypeError(f"gdn: cache layer {li} is {type(layer).__name__}, not a linear-attention cache layer; "
                            "build the cache with the model's config (DynamicCache(config=model.config))")
        if getattr(layer, "record_past", False):
            raise NotImplementedError("gdn: linear-attention past recording (assisted-decoding rollback) is not "
                                      "supported by the gdn bridge")
        B = x.shape[0]
        W1 = self.conv_kernel_size - 1
        conv_shape = (B, self.conv_dim, W1)
        st_shape = (B, *self.state_shape())
        fmt = (self.state_layout, self.state_dtype)
        conv, st = layer.conv_states.get(0), layer.recurrent_states.get(0)
        had = bool(layer.has_previous_state.get(0, False))
        cur = getattr(layer, "_gdn_format", None)
        if had:
            if cur is None:       # filled by HF's own module: conv [B, D, W], state [B, HV, K, V]
                conv = conv[..., conv.shape[-1] - W1:]
                cur_layout = "kv"
            else:
                cur_layout = cur[0]
            if cur_layout != self.state_layout:
                st = st.transpose(-1, -2)
            conv = conv.to(x.dtype).contiguous()
            st = st.to(self.state_dtype).contiguous()
            if tuple(conv.shape) != conv_shape or tuple(st.shape) != st_shape:
                raise ValueError(f"gdn: cache layer {li} holds conv {tuple(conv.shape)} / state {tuple(st.shape)}, "
                                 f"expected {conv_shape} / {st_shape}")
        elif (cur == fmt and conv is not None and tuple(conv.shape) == conv_shape and conv.dtype == x.dtype
              and conv.device == x.device and st is not None and tuple(st.shape) == st_shape):
            conv.zero_()          # a reset cache: keep the (static) buffers
            st.zero_()
        else:
            conv = torch.zeros(conv_shape, dtype=x.dtype, device=x.device)
            st = torch.zeros(st_shape, dtype=self.state_dtype, device=x.device)
            if not torch.compiler.is_compiling():
                torch._dynamo.mark_static_address(conv)
                torch._dynamo.mark_static_address(st)
        if layer.conv_states.get(0) is not conv or layer.recurrent_states.get(0) is not st:
            layer.conv_states[0], layer.recurrent_states[0] = conv, st
            layer.is_conv_states_initialized[0] = layer.is_recurrent_states_initialized[0] = True
            layer.conv_kernel_size[0] = W1
            layer.device, layer.dtype = x.device, x.dtype
            layer._gdn_format = fmt
        layer.has_previous_state[0] = True
        return GDNLayerState(conv, st, self.state_layout), had


def patch(model: nn.Module, *, state_layout: str = "vk", state_dtype: torch.dtype = torch.float32,
          extra_classes: tuple[str, ...] = ()) -> nn.Module:
    """Swap every HF Qwen3-Next / Qwen3.5 GatedDeltaNet in `model` for a gdn-backed `HFGatedDeltaNet` on the
    same Parameters. state_layout / state_dtype: how recurrent states are kept in the HF cache.
    extra_classes: names of further HF classes with the same parameters and forward. Returns model."""
    classes = SUPPORTED_CLASSES + tuple(extra_classes)
    if state_layout not in ("vk", "kv"):
        raise ValueError(f"state_layout must be 'vk' or 'kv', got {state_layout!r}")
    originals = getattr(model, _ORIGINALS_ATTR, None)
    if originals is None:
        originals = {}
    for name, mod in list(model.named_modules()):
        if not _is_hf_gdn(mod, classes):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = HFGatedDeltaNet.from_hf(mod, state_layout=state_layout)
        new.state_dtype = state_dtype
        new.layer_type = getattr(mod, "layer_type", "linear_attention")
        new.train(mod.training)
        setattr(parent, child, new)
        originals[name] = mod
    # a plain dict in __dict__: the originals are not registered as submodules (no duplicate state-dict keys)
    model.__dict__[_ORIGINALS_ATTR] = originals
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Put the original HF modules back (they share their Parameters with the gdn modules)."""
    originals = model.__dict__.pop(_ORIGINALS_ATTR, None) or {}
    for name, mod in originals.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mod)
    return model


def is_patched(model: nn.Module) -> bool:
    return bool(model.__dict__.get(_ORIGINALS_ATTR))
