"""gdn.layers: GatedDeltaNet against HF's modules, its prefill / decode / verify modes against each other,
the cache (slots, padding, MTP commit, state dtype and layout). CPU, fp32, the reference backend."""
import pytest
import torch

from gdn.layers import GatedDeltaNet, GDNCache, GDNLayerState, PAD_SLOT_ID

HID, H, HV, K, V, W = 32, 2, 4, 16, 8, 4         # K != V: a layout mix-up cannot hide


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def make_layer(layout="interleaved", seed=0, **kw):
    torch.manual_seed(seed)
    lay = GatedDeltaNet(HID, H, HV, K, V, conv_kernel_size=W, projection_layout=layout, layer_idx=0, **kw)
    with torch.no_grad():
        for p in lay.parameters():
            p.normal_(0, 0.3)
        lay.A_log.uniform_(-2, 1)
        lay.dt_bias.normal_(0, 1)
        lay.norm.weight.uniform_(0.5, 1.5)
    return lay.eval()


def make_cache(lay, S=8, **kw):
    return GDNCache.for_layers([lay], S, **kw)


LAYOUTS = ["interleaved", "contiguous"]


# ---------------------------------------------------------------------------------------------------
# against HF's own modules

def _hf_module(layout):
    transformers = pytest.importorskip("transformers")
    common = dict(hidden_size=HID, linear_num_key_heads=H, linear_num_value_heads=HV, linear_key_head_dim=K,
                  linear_value_head_dim=V, linear_conv_kernel_dim=W, num_hidden_layers=1,
                  layer_types=["linear_attention"], vocab_size=16, num_attention_heads=2, num_key_value_heads=1)
    if layout == "interleaved":
        from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet
        cfg = transformers.Qwen3NextConfig(**common)
        mod = Qwen3NextGatedDeltaNet(cfg, 0)
    else:
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet
        cfg = transformers.Qwen3_5TextConfig(**common)
        mod = Qwen3_5GatedDeltaNet(cfg, 0)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_(0, 0.3)
        mod.A_log.uniform_(-2, 1)
        mod.norm.weight.uniform_(0.5, 1.5)
    return cfg, mod.eval()


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_state_dict_loads_and_matches_hf(layout):
    from transformers import DynamicCache
    cfg, hf = _hf_module(layout)
    lay = GatedDeltaNet.from_config(cfg, layer_idx=0)
    assert lay.projection_layout == layout
    assert set(lay.state_dict()) == set(hf.state_dict())
    lay.load_state_dict(hf.state_dict(), strict=True)
    shared = GatedDeltaNet.from_hf(hf)
    assert shared.in_proj_qkvz.weight is hf.in_proj_qkvz.weight if layout == "interleaved" else \
        shared.in_proj_qkv.weight is hf.in_proj_qkv.weight
    x = torch.randn(2, 11, HID)
    ref = hf(x)
    assert rel(lay(x), ref) < 1e-5
    assert rel(shared(x), ref) < 1e-5

    # prefill + 4 decode steps through HF's cache vs the gdn cache
    hc = DynamicCache(config=cfg)
    cache = make_cache(lay, S=4)
    slots = cache.allocate(2)
    steps = torch.randn(4, 2, 1, HID)
    hf_out = [hf(x, cache_params=hc)] + [hf(s, cache_params=hc) for s in steps]
    out = [lay.prefill(x, cache, slots)] + [lay.decode(s[:, 0], cache, slots)[:, None] for s in steps]
    for a, b in zip(out, hf_out):
        assert rel(a, b) < 1e-5
    # HF keeps [B, HV, K, V]; gdn "vk" keeps [S, HV, V, K]
    st = hc.layers[0].recurrent_states[0]
    assert rel(cache.ssm_states[0][slots.long()].transpose(-1, -2), st) < 1e-5
    assert rel(cache.conv_states[0][slots.long()], hc.layers[0].conv_states[0][..., 1:]) < 1e-6


# ---------------------------------------------------------------------------------------------------
# modes against each other

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("state_layout", ["vk", "kv"])
@torch.no_grad()
def test_varlen_prefill_then_decode_matches_full_prefill(layout, state_layout):
    lay = make_layer(layout)
    cache = make_cache(lay, S=6, state_layout=state_layout)
    lens = [5, 0, 9, 1]
    N, steps = len(lens), 3
    seqs = [torch.randn(n + steps, HID) for n in lens]
    slots = cache.allocate(N)
    slots = slots.flip(0)          # slot order need not follow the batch order
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    x = torch.cat([s[:n] for s, n in zip(seqs, lens)])
    out = lay.prefill(x, cache, slots, cu_seqlens=cu, has_initial_state=torch.zeros(N, dtype=torch.bool))
    dec = [lay.decode(torch.stack([s[n + t] for s, n in zip(seqs, lens)]), cache, slots) for t in range(steps)]
    for i, (s, n) in enumerate(zip(seqs, lens)):
        full = lay.prefill(s)                                  # stateless, whole stream at once
        assert rel(out[cu[i]:cu[i + 1]], full[:n]) < 1e-5 if n else True
        got = torch.stack([d[i] for d in dec])
        assert rel(got, full[n:]) < 1e-5


@torch.no_grad()
def test_prefill_continues_from_cache():
    lay = make_layer()
    cache = make_cache(lay, S=2)
    slot = cache.allocate(1)
    x = torch.randn(20, HID)
    a = lay.prefill(x[:7], cache, slot)
    b = lay.prefill(x[7:], cache, slot)                       # has_initial_state=None: continue
    assert rel(torch.cat([a, b]), lay.prefill(x)) < 1e-5


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_decode_padding_rows(layout):
    lay = make_layer(layout)
    cache = make_cache(lay, S=4)
    slots = cache.allocate(3)
    lay.prefill(torch.randn(3, 4, HID), cache, slots)
    conv0, st0 = cache.conv_states[0].clone(), cache.ssm_states[0].clone()
    idx = torch.tensor([slots[0].item(), PAD_SLOT_ID, slots[2].item()], dtype=torch.int32)
    out = lay.decode(torch.randn(3, HID), cache, idx)
    assert torch.all(out[1] == 0)
    assert torch.equal(cache.conv_states[0][slots[1]], conv0[slots[1]])
    assert torch.equal(cache.ssm_states[0][slots[1]], st0[slots[1]])
    assert not torch.equal(cache.ssm_states[0][slots[0]], st0[slots[0]])
    assert torch.equal(cache.ssm_states[0][3], st0[3]) and torch.equal(cache.conv_states[0][4], conv0[4])


def _snapshot(cache):
    return [t.clone() for t in cache.conv_states + cache.ssm_states]


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_verify_commit_matches_decode(layout):
    lay = make_layer(layout)
    T, B = 4, 3
    cache = make_cache(lay, S=5, max_draft_tokens=T, max_verify_batch=B)
    slots = cache.allocate(B)
    lay.prefill(torch.randn(B, 6, HID), cache, slots)
    draft = torch.randn(B, T, HID)
    before = _snapshot(cache)

    out = lay.verify(draft, cache, slots)
    for a, b in zip(_snapshot(cache), before):                  # verify leaves the pools alone
        assert torch.equal(a, b)

    # oracle: decode the drafts one by one on a copy, remembering the pools after each step
    ref = make_cache(lay, S=5)
    for dst, src in zip(ref.conv_states + ref.ssm_states, before):
        dst.copy_(src)
    after, dec = [], []
    for t in range(T):
        dec.append(lay.decode(draft[:, t], ref, slots))
        after.append((ref.conv_states[0].clone(), ref.ssm_states[0].clone()))
    assert rel(out, torch.stack(dec, 1)) < 1e-5

    n_acc = torch.tensor([2, 0, 4], dtype=torch.int32)
    cache.commit(slots, n_acc)
    for i in range(B):
        s = slots[i].long()
        n = int(n_acc[i])
        want_conv = before[0][s] if n == 0 else after[n - 1][0][s]
        want_st = before[1][s] if n == 0 else after[n - 1][1][s]
        assert rel(cache.conv_states[0][s], want_conv) < 1e-6
        assert rel(cache.ssm_states[0][s], want_st) < 1e-5
    # untouched slots stay untouched (incl. the conv scratch row's neighbours)
    assert torch.equal(cache.ssm_states[0][3:], before[1][3:])


@torch.no_grad()
def test_verify_tree_and_update_state():
    lay = make_layer()
    T, B = 3, 2
    cache = make_cache(lay, S=4, max_draft_tokens=T, max_verify_batch=B)
    slots = cache.allocate(B)
    lay.prefill(torch.randn(B, 5, HID), cache, slots)
    before = _snapshot(cache)
    draft = torch.randn(B, T, HID)
    # token 2 continues from token 0 in both rows (token 1 is a sibling branch)
    parents = torch.tensor([[-1, 0, 0], [-1, 0, 0]], dtype=torch.int32)
    out = lay.verify(draft, cache, slots, parent_indices=parents)

    def run(path):
        ref = make_cache(lay, S=4)
        for dst, src in zip(ref.conv_states + ref.ssm_states, before):
            dst.copy_(src)
        return [lay.decode(draft[:, t], ref, slots) for t in path], ref
    (o0, o2), ref02 = run([0, 2])
    (_, o1), _ = run([0, 1])
    assert rel(out[:, 0], o0) < 1e-5 and rel(out[:, 1], o1) < 1e-5 and rel(out[:, 2], o2) < 1e-5
    before_commit = [t.clone() for t in cache.ssm_states + cache.conv_states]
    with pytest.raises(ValueError, match="argument 'num_accepted' expected on the cache's device"):
        cache.commit(slots, torch.tensor([3, 3], dtype=torch.int32, device="meta"))
    assert all(torch.equal(a, b) for a, b in zip(before_commit, cache.ssm_states + cache.conv_states))
    cache.commit(slots, torch.tensor([3, 3], dtype=torch.int32))   # accept node 2 (path 0 -> 2)
    assert rel(cache.ssm_states[0][slots.long()], ref02.ssm_states[0][slots.long()]) < 1e-5
    assert rel(cache.conv_states[0][slots.long()], ref02.conv_states[0][slots.long()]) < 1e-6

    # update_state=True: the same as T decode steps, pools included
    ref = make_cache(lay, S=4)
    for dst, src in zip(ref.conv_states + ref.ssm_states, _snapshot(cache)):
        dst.copy_(src)
    out = lay.verify(draft, cache, slots, update_state=True)
    dec = torch.stack([lay.decode(draft[:, t], ref, slots) for t in range(T)], 1)
    assert rel(out, dec) < 1e-5
    assert rel(cache.ssm_states[0], ref.ssm_states[0]) < 1e-5
    assert rel(cache.conv_states[0][:4], ref.conv_states[0][:4]) < 1e-6


@torch.no_grad()
def test_verify_padding_and_intermediate_rows():
    lay = make_layer()
    T = 2
    cache = make_cache(lay, S=4, max_draft_tokens=T, max_verify_batch=4)
    slots = cache.allocate(2)
    lay.prefill(torch.randn(2, 3, HID), cache, slots)
    before = _snapshot(cache)
    idx = torch.tensor([slots[0].item(), PAD_SLOT_ID, slots[1].item()], dtype=torch.int32)
    inter = torch.tensor([3, 0, 1], dtype=torch.int32)
    out = lay.verify(torch.randn(3, T, HID), cache, idx, intermediate_indices=inter)
    assert torch.all(out[1] == 0)
    cache.commit(idx, torch.tensor([1, 2, 2], dtype=torch.int32), intermediate_indices=inter)
    assert torch.equal(cache.inter_convs[0][0], torch.zeros_like(cache.inter_convs[0][0]))   # pad row: skipped
    assert not torch.equal(cache.ssm_states[0][slots[0]], before[1][slots[0]])
    assert not torch.equal(cache.conv_states[0][slots[1]], before[0][slots[1]])


# ---------------------------------------------------------------------------------------------------
# options

@torch.no_grad()
def test_bf16_state_and_fp8_output():
    lay = make_layer()
    x = torch.randn(2, 7, HID)
    c32, c16 = make_cache(lay, S=2), make_cache(lay, S=2, state_dtype=torch.bfloat16)
    s = c32.allocate(2)
    c16.allocate(2)
    ref = [lay.prefill(x, c32, s)] + [lay.decode(x[:, i], c32, s) for i in range(4)]
    got = [lay.prefill(x, c16, s)] + [lay.decode(x[:, i], c16, s) for i in range(4)]
    assert c16.ssm_states[0].dtype == torch.bfloat16
    for a, b in zip(got, ref):
        assert rel(a, b) < 1e-2
    y8 = lay.prefill(x, fp8=True)
    assert rel(y8, lay.prefill(x)) < 6e-2
    seen = {}
    lay.fp8_out_proj = lambda q, sc: seen.setdefault("args", (q, sc)) and torch.zeros(q.shape[0], HID)
    lay.prefill(x, fp8=True)
    q, sc = seen["args"]
    assert q.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz) and q.shape == (14, HV * V)


@torch.no_grad()
def test_fuse_projections_qwen35():
    lay = make_layer("contiguous")
    x = torch.randn(3, 5, HID)
    ref_pref = lay.prefill(x)
    cache_a = make_cache(lay, S=3)
    s = cache_a.allocate(3)
    lay.prefill(x, cache_a, s)
    ref_dec = lay.decode(x[:, 0], cache_a, s)
    keys = set(lay.state_dict())
    lay.fuse_projections()
    assert lay._fused_weights() is not None and set(lay.state_dict()) == keys
    assert rel(lay.prefill(x), ref_pref) < 1e-6
    cache_b = make_cache(lay, S=3)
    cache_b.allocate(3)
    lay.prefill(x, cache_b, s)
    assert rel(lay.decode(x[:, 0], cache_b, s), ref_dec) < 1e-6
    # loading a state dict writes through to the fused weights
    other = make_layer("contiguous", seed=5)
    lay.load_state_dict(other.state_dict())
    assert torch.equal(lay._fused[0][: lay.conv_dim], other.in_proj_qkv.weight)
    assert rel(lay.prefill(x), other.prefill(x)) < 1e-6


def test_cache_slots():
    lay = make_layer()
    cache = make_cache(lay, S=3)
    a = cache.allocate(2)
    assert a.tolist() == [0, 1] and cache.num_free == 1
    with pytest.raises(RuntimeError):
        cache.allocate(2)
    cache.conv_states[0].fill_(1)
    cache.release(a[:1])
    b = cache.allocate(1)
    assert b.tolist() == [0] and torch.all(cache.conv_states[0][0] == 0) and torch.all(cache.conv_states[0][1] == 1)
    with pytest.raises(ValueError):
        cache.release([2])
    assert cache.conv_states[0].shape == (4, lay.conv_dim, W - 1)          # + the scratch row
    assert cache.ssm_states[0].shape == (3, HV, V, K)
    assert make_cache(lay, S=3, state_layout="kv").ssm_states[0].shape == (3, HV, K, V)
    assert isinstance(cache.layer(0), GDNLayerState)
