"""Tensor parallelism: a GatedDeltaNet sharded over 2 processes matches the unsharded layer built from the
same weights, through a varlen prefill, decode steps and an MTP verify + commit: on CPU with gloo, and on 2
GPUs with NCCL (marker gpu; skipped with fewer than 2 GPUs), where the kernels are gdn's Triton ones."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gdn.layers import GatedDeltaNet, GDNCache

HID, H, HV, K, V, W = 32, 4, 8, 16, 8, 4
WORLD = 2


def _layer(layout, seed=0, **kw):
    torch.manual_seed(seed)
    lay = GatedDeltaNet(HID, H, HV, K, V, conv_kernel_size=W, projection_layout=layout, layer_idx=0, **kw)
    return lay


def _full_layer(layout, dev):
    lay = _layer(layout).to(dev)
    with torch.no_grad():
        for p in lay.parameters():
            p.normal_(0, 0.3)
        lay.A_log.uniform_(-2, 1)
        lay.norm.weight.uniform_(0.5, 1.5)
    return lay.eval()


def _run(lay, inputs):
    """prefill (varlen, 2 sequences) + 3 decode steps + a 2-token verify and commit; every output."""
    x, cu, steps, draft = inputs
    cache = GDNCache.for_layers([lay], 4, max_draft_tokens=2, max_verify_batch=2)
    slots = cache.allocate(2)
    outs = [lay.prefill(x, cache, slots, cu_seqlens=cu)]
    outs += [lay.decode(s, cache, slots) for s in steps]
    outs.append(lay.verify(draft, cache, slots))
    cache.commit(slots, torch.tensor([1, 2], dtype=torch.int32, device=x.device))
    outs.append(lay.decode(steps[0], cache, slots))
    return outs, cache


def _inputs(dev):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(13, HID, generator=g)
    cu = torch.tensor([0, 5, 13], dtype=torch.int32)
    steps = [torch.randn(2, HID, generator=g) for _ in range(3)]
    draft = torch.randn(2, 2, HID, generator=g)
    return x.to(dev), cu.to(dev), [s.to(dev) for s in steps], draft.to(dev)


def _worker(rank, init_file, errors, backend):
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    if backend == "nccl":
        dev = torch.device("cuda", rank)
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for layout in ("interleaved", "contiguous"):
            _check(rank, layout, dev)
    except Exception as e:  # noqa: BLE001
        errors.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: with torch 2.13's gloo it called std::terminate ("terminate called
    # without an active exception", SIGABRT) in about a third of the runs after every check had passed.
    os._exit(0)


def _check(rank, layout, dev):
    with torch.no_grad():
        full = _full_layer(layout, dev)
        ref, ref_cache = _run(full, _inputs(dev))
        shard = _layer(layout, process_group=dist.group.WORLD).to(dev).eval()
        shard.load_state_dict(full.state_dict())            # full checkpoint: each rank slices its part
        assert shard.local_num_v_heads == HV // WORLD and shard.conv_dim == full.conv_dim // WORLD
        got, cache = _run(shard, _inputs(dev))
        for i, (a, b) in enumerate(zip(got, ref)):
            err = ((a - b).norm() / b.norm()).item()
            assert err < 1e-5, f"{layout} rank {rank} output {i}: rel err {err}"
        # this rank's states are its heads' slice of the full ones
        hv = slice(rank * HV // WORLD, (rank + 1) * HV // WORLD)
        torch.testing.assert_close(cache.ssm_states[0], ref_cache.ssm_states[0][:, hv], rtol=1e-5, atol=1e-6)
        # from_hf-style copy-construction shards too
        again = GatedDeltaNet.from_hf(_HFLike(full), process_group=dist.group.WORLD)
        torch.testing.assert_close(again.out_proj.weight, shard.out_proj.weight)


class _HFLike(torch.nn.Module):
    """A HF-shaped module (same attribute names as Qwen3NextGatedDeltaNet / Qwen3_5GatedDeltaNet)."""

    def __init__(self, lay):
        super().__init__()
        for n, m in lay.named_children():
            setattr(self, n, m)
        self.dt_bias, self.A_log = lay.dt_bias, lay.A_log
        self.hidden_size, self.num_k_heads, self.num_v_heads = lay.hidden_size, lay.num_k_heads, lay.num_v_heads
        self.head_k_dim, self.head_v_dim, self.conv_kernel_size = lay.head_k_dim, lay.head_v_dim, lay.conv_kernel_size
        self.layer_idx, self.activation = lay.layer_idx, lay.activation


@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=pytest.mark.gpu)])
def test_tp2_matches_unsharded(tmp_path, backend):
    if backend == "nccl" and torch.cuda.device_count() < WORLD:
        pytest.skip(f"NCCL tensor parallelism needs {WORLD} GPUs, this host has {torch.cuda.device_count()}")
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    init_file = os.path.join(tmp_path, "store")
    try:
        mp.start_processes(_worker, args=(init_file, errors, backend), nprocs=WORLD, join=True,
                           start_method="spawn")
    except Exception as e:  # noqa: BLE001
        msgs = []
        while not errors.empty():
            msgs.append(errors.get())
        pytest.fail("\n".join(msgs) or str(e))


def test_shard_spec_covers_every_parameter():
    for layout in ("interleaved", "contiguous"):
        lay = _layer(layout)
        spec = lay._shard_spec()
        for name, p in lay.named_parameters():
            assert name in spec or name == "norm.weight", name
            if name in spec:
                assert tuple(spec[name][0]) == tuple(p.shape), name
