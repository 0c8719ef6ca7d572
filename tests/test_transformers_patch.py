"""gdn.integrations.transformers: tiny random Qwen3-Next / Qwen3.5 models generate the same greedy tokens
(and logits) patched as unpatched. fp32, built from configs (no download); on CPU, and on a GPU (marker gpu)
where the patched model runs gdn's Triton kernels."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from gdn.integrations.transformers import HFGatedDeltaNet, is_patched, patch, unpatch  # noqa: E402

NEW_TOKENS = 16
LAYER_TYPES = ["linear_attention", "linear_attention", "full_attention", "linear_attention"]
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
              linear_key_head_dim=16, linear_value_head_dim=8, linear_conv_kernel_dim=4, layer_types=LAYER_TYPES,
              max_position_embeddings=256)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def tiny_model(kind, dev="cpu"):
    torch.manual_seed(0)
    if kind == "qwen3_next":
        cfg = transformers.Qwen3NextConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=32, **COMMON)
        model = transformers.Qwen3NextForCausalLM(cfg)
    else:
        cfg = transformers.Qwen3_5TextConfig(**COMMON)
        model = transformers.Qwen3_5ForCausalLM(cfg)
    model = model.float().eval()
    with torch.no_grad():                     # scale A_log to realistic decays, randomise the norm weights
        for m in model.modules():
            if hasattr(m, "A_log") and hasattr(m, "dt_bias"):
                m.A_log.uniform_(-2, 1)
                m.dt_bias.normal_(0, 1)
                m.norm.weight.uniform_(0.5, 1.5)
    return model.to(dev)


def generate(model, ids, mask=None, **kw):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, return_dict_in_generate=True, output_logits=True, pad_token_id=0, **kw)


def check_same(ref, out, tol=1e-4):
    assert torch.equal(ref.sequences, out.sequences), (ref.sequences, out.sequences)
    for a, b in zip(ref.logits, out.logits):
        torch.testing.assert_close(b, a, atol=tol, rtol=tol)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("kind", ["qwen3_next", "qwen3_5"])
def test_generate_matches(kind, dev):
    model = tiny_model(kind, dev)
    ids = torch.randint(1, 128, (2, 9)).to(dev)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0                             # left padding in row 1
    ref = generate(model, ids, mask)
    keys = set(model.state_dict())
    n_hf = sum(type(m).__name__.endswith("GatedDeltaNet") for m in model.modules())

    patch(model)
    assert is_patched(model)
    swapped = [m for m in model.modules() if isinstance(m, HFGatedDeltaNet)]
    assert len(swapped) == n_hf == LAYER_TYPES.count("linear_attention")
    assert set(model.state_dict()) == keys      # same parameter names, nothing duplicated
    out = generate(model, ids, mask)
    check_same(ref, out)

    unpatch(model)
    assert not is_patched(model) and not any(isinstance(m, HFGatedDeltaNet) for m in model.modules())
    check_same(ref, generate(model, ids, mask), tol=1e-6)


@pytest.mark.parametrize("dev", DEVICES)
def test_shared_parameters_and_kv_layout(dev):
    model = tiny_model("qwen3_next", dev)
    orig = model.model.layers[0].linear_attn
    ids = torch.randint(1, 128, (1, 6)).to(dev)
    ref = generate(model, ids)
    patch(model, state_layout="kv")
    new = model.model.layers[0].linear_attn
    assert new.in_proj_qkvz.weight is orig.in_proj_qkvz.weight and new.A_log is orig.A_log
    check_same(ref, generate(model, ids))
    with torch.no_grad():                       # weight edits are seen by both
        orig.out_proj.weight.mul_(2)
    ref2 = generate(unpatch(model), ids)
    check_same(ref2, generate(patch(model), ids))


@pytest.mark.parametrize("dev", DEVICES)
@torch.no_grad()
def test_cache_bridge_converts_hf_cache_and_beam_search(dev):
    model = tiny_model("qwen3_next", dev)
    ids = torch.randint(1, 128, (2, 7)).to(dev)
    # prefill with HF's own modules (HF layout in the cache), then continue patched: the bridge converts
    cache_ref = transformers.DynamicCache(config=model.config)
    cache = transformers.DynamicCache(config=model.config)
    out_ref = model(ids, past_key_values=cache_ref, use_cache=True)
    model(ids, past_key_values=cache, use_cache=True)
    assert cache.layers[0].conv_states[0].shape[-1] == 4              # HF keeps W columns
    patch(model)
    tok = out_ref.logits[:, -1:].argmax(-1)
    for _ in range(3):
        a = unpatch(model)(tok, past_key_values=cache_ref, use_cache=True).logits
        b = patch(model)(tok, past_key_values=cache, use_cache=True).logits
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        tok = a[:, -1:].argmax(-1)
    lay = cache.layers[0]
    assert lay.conv_states[0].shape == (2, model.model.layers[0].linear_attn.conv_dim, 3)   # gdn keeps W-1
    assert lay.recurrent_states[0].shape == (2, 4, 8, 16)                                   # [B, HV, V, K]

    # beam search reorders the cache rows (slot = batch row)
    unpatch(model)
    ref = generate(model, ids[:1], num_beams=3)
    patch(model)
    out = generate(model, ids[:1], num_beams=3)
    assert torch.equal(ref.sequences, out.sequences)


@torch.no_grad()
def test_forward_without_cache():
    model = tiny_model("qwen3_5")
    ids = torch.randint(1, 128, (2, 12))
    ref = model(ids, use_cache=False).logits
    patch(model)
    torch.testing.assert_close(model(ids, use_cache=False).logits, ref, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_packed_sequences_without_cache():
    """Padding-free packing (cu_seq_lens_q, as HF passes for packed batches): sequences stay apart."""
    model = patch(tiny_model("qwen3_next"))
    lay = model.model.layers[0].linear_attn
    x = torch.randn(1, 12, 64)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    out = lay(x, cu_seq_lens_q=cu)
    torch.testing.assert_close(out, torch.cat([lay(x[:, :5]), lay(x[:, 5:])], 1), atol=1e-5, rtol=1e-5)
