"""One decode step of one Gated DeltaNet layer: gdn's GatedDeltaNet vs HF transformers' own module.

Qwen3-Next-80B shapes by default (hidden 2048, H=16, HV=32, K=V=128, W=4), bf16 activations, fp32 state,
B in {1, 8, 64, 256}. Both sides run the whole layer (input projections -> conv -> recurrence -> gated
RMSNorm -> out_proj) on the same weights, replayed from a CUDA graph; HF uses whatever its module imports
(FLA's fused_recurrent and causal-conv1d when installed, its PyTorch fallback otherwise: the table says
which). Kernel launches per step are counted with torch.profiler on an eager step. The first step of each
size is also checked: both sides start from the same state and must agree.

    python bench/bench_layer.py [--batch 1 8 64 256] [--model qwen3_next|qwen3_5] [--tp 1]
                                [--state-dtype float32|bfloat16] [--iters 200] [--out results.csv]

Markdown table to stdout; --out writes the same rows as CSV.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import os
import sys
import time

import torch

try:
    import gdn  # noqa: F401
except ImportError:   # a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gdn.layers import GatedDeltaNet, GDNCache  # noqa: E402


def hf_module(model: str, hidden: int, H: int, HV: int, K: int, V: int, W: int):
    import transformers
    common = dict(hidden_size=hidden, linear_num_key_heads=H, linear_num_value_heads=HV, linear_key_head_dim=K,
                  linear_value_head_dim=V, linear_conv_kernel_dim=W, num_hidden_layers=1,
                  layer_types=["linear_attention"], vocab_size=32, num_attention_heads=2, num_key_value_heads=1)
    if model == "qwen3_next":
        from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet as cls
        cfg = transformers.Qwen3NextConfig(**common)
    else:
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet as cls
        cfg = transformers.Qwen3_5TextConfig(**common)
    return cfg, cls(cfg, 0)


def hf_paths() -> str:
    fla = importlib.util.find_spec("fla") is not None
    cc = importlib.util.find_spec("causal_conv1d") is not None
    return f"{'FLA' if fla else 'torch'} recurrence, {'causal-conv1d' if cc else 'torch'} conv"


def count_kernels(fn, dev) -> int | str:
    if dev.type != "cuda":
        return "n/a"
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)


def time_step(fn, iters: int, graph: bool, dev) -> tuple[float, str]:
    """Microseconds per step (CUDA-graph replay, or eager if capture fails / graph=False)."""
    if dev.type != "cuda":          # smoke-test path (--device cpu): wall clock, eager
        fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1e6 / iters, "eager (cpu)"
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    how = "eager"
    run = fn
    if graph:
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            run, how = g.replay, "graph"
        except Exception as e:  # noqa: BLE001
            how = f"eager (capture failed: {type(e).__name__})"
            torch.cuda.synchronize()
    for _ in range(10):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters, how


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def bench_size(hf, cfg, ours: GatedDeltaNet, B: int, args, dtype, state_dtype) -> dict:
    from transformers import DynamicCache
    dev = torch.device(args.device)
    hid = cfg.hidden_size
    torch.manual_seed(B)
    prompt = torch.randn(B, 8, hid, device=dev, dtype=dtype)
    x = torch.randn(B, 1, hid, device=dev, dtype=dtype)

    # HF: its DynamicCache, filled by an 8-token prefill (conv [B, D, W], state [B, HV, K, V])
    hf_cache = DynamicCache(config=cfg)
    with torch.no_grad():
        hf(prompt, cache_params=hf_cache)
    lay = hf_cache.layers[0]

    # gdn: static pools with the same contents, slot i = row i (or a random permutation with --shuffle)
    S = max(B, args.slots or B)
    cache = GDNCache.for_layers([ours], S, state_dtype=state_dtype, conv_dtype=dtype)
    idx = (torch.randperm(S, device=dev)[:B] if args.shuffle else torch.arange(B, device=dev)).to(torch.int32)
    conv_hf, st_hf = lay.conv_states[0], lay.recurrent_states[0]
    cache.conv_states[0][idx.long()] = conv_hf[..., 1:].to(dtype)
    st = st_hf.transpose(-1, -2) if cache.state_layout == "vk" else st_hf
    cache.ssm_states[0][idx.long()] = st.to(state_dtype)

    x2 = x.view(B, hid)
    with torch.no_grad():
        # correctness on the first step (from identical states)
        ref = hf(x, cache_params=hf_cache).view(B, hid)
        got = ours.decode(x2, cache, idx)
        err = rel_err(got, ref)

        def step_hf():
            return hf(x, cache_params=hf_cache)

        def step_gdn():
            return ours.decode(x2, cache, idx)

        row = {"B": B, "rel_err": f"{err:.2e}"}
        for name, fn in (("gdn", step_gdn), ("hf", step_hf)):
            us, how = time_step(fn, args.iters, not args.no_graph, dev)
            eager_us, _ = time_step(fn, max(args.iters // 4, 10), False, dev)
            row[f"{name}_us"] = round(us, 2)
            row[f"{name}_mode"] = how
            row[f"{name}_eager_us"] = round(eager_us, 2)
            row[f"{name}_kernels"] = count_kernels(fn, dev)
        row["speedup"] = round(row["hf_us"] / row["gdn_us"], 2)
    return row


def main():
    ap = argparse.ArgumentParser(description="GDN layer decode step: gdn vs HF transformers")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--model", choices=["qwen3_next", "qwen3_5"], default="qwen3_next")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, nargs=2, default=[16, 32], metavar=("H", "HV"))
    ap.add_argument("--head-dims", type=int, nargs=2, default=[128, 128], metavar=("K", "V"))
    ap.add_argument("--tp", type=int, default=1, help="per-rank shapes of this TP degree (heads / tp)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--slots", type=int, default=0, help="gdn pool size (default B; larger = colder pools)")
    ap.add_argument("--shuffle", action="store_true", help="random slot per row instead of slot i = row i")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--out", help="CSV file for the rows")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only smoke-tests the script")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_layer.py needs a CUDA/ROCm GPU (--device cpu only smoke-tests the script)")

    import transformers
    dtype, state_dtype = getattr(torch, args.dtype), getattr(torch, args.state_dtype)
    H, HV = (h // args.tp for h in args.heads)
    K, V = args.head_dims
    cfg, hf = hf_module(args.model, args.hidden, H, HV, K, V, 4)
    hf = hf.to(args.device, dtype).eval()
    with torch.no_grad():      # realistic gates (HF's init already has A in [0.01, 16])
        hf.dt_bias.normal_(0, 1)
    ours = GatedDeltaNet.from_hf(hf)          # the same Parameters
    if args.model == "qwen3_5":
        ours.fuse_projections()              # qkv|z and b|a as two GEMMs (the weights become views)

    rows = []
    for B in args.batch:
        t0 = time.time()
        rows.append(bench_size(hf, cfg, ours, B, args, dtype, state_dtype))
        print(f"# B={B} done in {time.time() - t0:.1f}s", file=sys.stderr)

    dev = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"## GDN layer decode step, {args.model} shapes hidden={args.hidden} H={H} HV={HV} K={K} V={V} "
          f"(TP={args.tp}), {args.dtype} activations, {args.state_dtype} state")
    print(f"{dev}; torch {torch.__version__}, transformers {transformers.__version__}, HF path: {hf_paths()}; "
          f"{datetime.date.today()}\n")
    cols = ["B", "gdn_us", "hf_us", "speedup", "gdn_kernels", "hf_kernels", "gdn_eager_us", "hf_eager_us",
            "gdn_mode", "hf_mode", "rel_err"]
    heads = ["B", "gdn us/step", "HF us/step", "speedup", "gdn kernels", "HF kernels", "gdn eager us",
             "HF eager us", "gdn timing", "HF timing", "rel err (step 1)"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.out:
        meta = dict(device=dev, torch=torch.__version__, transformers=transformers.__version__, hf_path=hf_paths(),
                    model=args.model, hidden=args.hidden, H=H, HV=HV, K=K, V=V, tp=args.tp, dtype=args.dtype,
                    state_dtype=args.state_dtype, date=str(datetime.date.today()))
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(meta) + cols)
            w.writeheader()
            for r in rows:
                w.writerow({**meta, **{c: r[c] for c in cols}})
        print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
