"""torch.library registration: every gdn op is `torch.ops.gdn.<op>`, so torch.compile(fullgraph=True)
traces through it and CUDA graphs capture it.

Each op is defined in "out" form: outputs are pre-allocated by gdn/ops.py and passed in, pools and outputs
are declared mutated (`Tensor(a!)`), and the op returns nothing. The resolved backend name is an argument,
so dispatch happens once in Python (at trace time under torch.compile) and the op itself only looks up the
launcher. The fake implementation has nothing to do: no op returns a new tensor.
"""
from __future__ import annotations

import torch

from gdn.common import registry

# Positional args are passed positionally to the launcher; those after `*` by keyword (the kernel-level
# signature of gdn/common/reference.py). `str backend` is consumed here.
SCHEMAS = {
    "decode": "(Tensor q, Tensor k, Tensor v, Tensor a, Tensor b, Tensor A_log, Tensor dt_bias, Tensor(a!) state, "
              "Tensor state_indices, Tensor(b!) out, *, float scale, bool use_qk_l2norm, str state_layout, "
              "str backend) -> ()",
    "decode_mtp": "(Tensor q, Tensor k, Tensor v, Tensor a, Tensor b, Tensor A_log, Tensor dt_bias, Tensor(a!) state, "
                  "Tensor state_indices, Tensor(b!) out, Tensor(c!)? intermediate_states, "
                  "Tensor? intermediate_indices, Tensor? parent_indices, *, bool disable_state_update, float scale, "
                  "bool use_qk_l2norm, str state_layout, str backend) -> ()",
    "commit_accepted": "(Tensor(a!) state, Tensor state_indices, Tensor intermediate_states, "
                       "Tensor intermediate_indices, Tensor num_accepted, *, str state_layout, str backend) -> ()",
    "decode_packed": "(Tensor mixed_qkv, Tensor a, Tensor b, Tensor A_log, Tensor dt_bias, Tensor(a!) state, "
                     "Tensor state_indices, Tensor(b!) out, *, int num_k_heads, int head_k_dim, int head_v_dim, "
                     "float scale, bool use_qk_l2norm, str state_layout, str backend) -> ()",
    "prefill": "(Tensor q, Tensor k, Tensor v, Tensor(a!) state, Tensor state_indices, Tensor cu_seqlens, "
               "Tensor(b!) out, Tensor? g, Tensor? beta, Tensor? a, Tensor? b, Tensor? A_log, Tensor? dt_bias, "
               "Tensor? has_initial_state, *, float scale, bool use_qk_l2norm, str state_layout, "
               "str backend) -> ()",
    "chunk_cumsum": "(Tensor g, Tensor cu_seqlens, Tensor(a!) out, *, int chunk_size, str backend) -> ()",
    "causal_conv1d_update": "(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, Tensor state_indices, "
                            "Tensor(b!) out, *, str? activation, str backend) -> ()",
    "causal_conv1d": "(Tensor x, Tensor weight, Tensor? bias, Tensor cu_seqlens, Tensor(a!) conv_state, "
                     "Tensor state_indices, Tensor? has_initial_state, Tensor(b!) out, *, str? activation, "
                     "str backend) -> ()",
    "split_qkvzba": "(Tensor mixed_qkvz, Tensor mixed_ba, Tensor(a!) mixed_qkv, Tensor(b!) z, Tensor(c!) b, "
                    "Tensor(d!) a, *, int num_k_heads, int num_v_heads, int head_k_dim, int head_v_dim, "
                    "str layout, str backend) -> ()",
    "conv1d_update_split": "(Tensor mixed_qkvz, Tensor mixed_ba, Tensor(a!) conv_state, Tensor weight, Tensor? bias, "
                           "Tensor state_indices, Tensor(b!) mixed_qkv, Tensor(c!) z, Tensor(d!) b, Tensor(e!) a, *, "
                           "int num_k_heads, int num_v_heads, int head_k_dim, int head_v_dim, str layout, "
                           "str? activation, str backend) -> ()",
    "rms_norm_gated": "(Tensor x, Tensor z, Tensor weight, Tensor(a!) out, *, float eps, str backend) -> ()",
    "rms_norm_gated_fp8": "(Tensor x, Tensor z, Tensor weight, Tensor(a!) y, Tensor(b!) scales, *, float eps, "
                          "int group_size, float fp8_max, str backend) -> ()",
}

_lib = torch.library.Library("gdn", "DEF")


def _make(op: str):
    def impl(*args, backend: str, **kwargs):
        registry.get(op, backend).fn(*args, **kwargs)

    def fake(*args, backend: str, **kwargs):
        return None

    impl.__name__ = fake.__name__ = op
    return impl, fake


for _op, _schema in SCHEMAS.items():
    _lib.define(_op + _schema)
    _impl, _fake = _make(_op)
    _lib.impl(_op, _impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"gdn::{_op}", _fake, lib=_lib)


def call(op: str, *args, **kwargs) -> None:
    getattr(torch.ops.gdn, op)(*args, **kwargs)
