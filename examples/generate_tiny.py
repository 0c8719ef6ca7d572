"""Build a tiny random Qwen3-Next model, generate with HF's own GatedDeltaNet, patch it onto gdn kernels,
generate again, and print both outputs.

    python examples/generate_tiny.py [--device cuda] [--dtype bfloat16] [--tokens 16]

On CPU gdn runs its fp32 reference backend; on a GPU the registry picks the fastest kernels.
"""
import argparse
import os
import sys
import time

import torch

try:
    import gdn  # noqa: F401
except ImportError:   # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from transformers import Qwen3NextConfig, Qwen3NextForCausalLM  # noqa: E402

from gdn.integrations.transformers import patch, unpatch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = Qwen3NextConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=32, linear_num_key_heads=2,
                          linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
                          num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                          shared_expert_intermediate_size=64, max_position_embeddings=512,
                          layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"])
    model = Qwen3NextForCausalLM(cfg).to(args.device, getattr(torch, args.dtype)).eval()
    ids = torch.randint(1, cfg.vocab_size, (args.batch, 10), device=args.device)
    gen = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, pad_token_id=0)

    with torch.no_grad():
        t0 = time.perf_counter()
        hf = model.generate(ids, **gen)
        t1 = time.perf_counter()
        patch(model)
        t2 = time.perf_counter()
        ours = model.generate(ids, **gen)
        t3 = time.perf_counter()
        unpatch(model)

    print(f"model: tiny Qwen3-Next ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{cfg.layer_types.count('linear_attention')} GatedDeltaNet layers) on {args.device} / {args.dtype}")
    print(f"HF transformers ({t1 - t0:.2f}s):\n{hf[:, ids.shape[1]:].tolist()}")
    print(f"gdn             ({t3 - t2:.2f}s):\n{ours[:, ids.shape[1]:].tolist()}")
    same = torch.equal(hf, ours)
    print("identical greedy tokens" if same else "tokens differ (expected only with low-precision dtypes)")


if __name__ == "__main__":
    main()
