"""Layer-edge ops and the ROCm decode path on one GPU, against the unfused PyTorch sequence in the same run.

    python bench/bench_edge_ops.py [--rows 8192] [--out results.csv]

Qwen3-Next widths (H=16, HV=32, K=V=128, D = 8192, W=4), bf16 activations, T or B = --rows rows
(rms_norm_gated*: M = rows * HV rows of V; causal_conv1d: 8 sequences of rows/8 tokens; decode_packed:
B = --decode-batch, fp32 VK pool, since the unfused torch step needs ~10x the pool in temporaries).
Each time is triton.testing.do_bench's median, which zeroes a 256 MB buffer before every call, so L2
starts cold; pools are indexed through a random slot permutation. Bytes are the ideal traffic of the op
(every input read once, every output written once, pools read and written); "% copy" relates the
achieved bytes/s to a large device-to-device copy measured in the same run (read + write bytes).
Every gdn output is checked against gdn's fp32 reference before its time is printed. The decode front
end (conv1d_update_split) also reports how many kernels one call launches (torch.profiler), gdn vs torch.

Without a GPU (`--small`, TRITON_INTERPRET=1 set by the script) it runs tiny widths under the Triton
interpreter with wall-clock times: a smoke test of the script, not a measurement.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")      # before any kernel module is imported

import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gdn.amd.triton  # noqa: E402,F401  (registers amd-triton)
import gdn.common.triton  # noqa: E402,F401  (registers triton)
from gdn.common import launch as L  # noqa: E402
from gdn.common import reference as R  # noqa: E402
from gdn.common import registry  # noqa: E402
from gdn.common.triton._fp8 import fp8_target  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
EPS = 1e-6


# ---------------------------------------------------------------------------------------------------
# measurement

def time_us(fn) -> float:
    """Median time of fn() in us; L2 flushed before each call (do_bench's cache clearing)."""
    fn()
    if GPU:
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def copy_bandwidth(nbytes=1 << 30) -> float:
    """Bytes/s of a large device-to-device copy, counting read + write."""
    if not GPU:
        nbytes = 1 << 24
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=DEV).normal_()
    dst = torch.empty_like(src)
    return 2 * nbytes / (time_us(lambda: dst.copy_(src)) * 1e-6)


def kernels_per_call(fn):
    """CUDA kernels one call of fn launches (torch.profiler), or None where unavailable."""
    if not GPU:
        return None
    try:
        fn()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception as e:  # a profiler problem must not sink the benchmark
        print(f"# profiler unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def rel(x, ref) -> float:
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def impl(op, backend):
    try:
        return registry.get(op, backend).fn
    except registry.NoBackendError:
        return None


# ---------------------------------------------------------------------------------------------------
# unfused PyTorch sequences (what a model runs without fused kernels: HF Qwen3-Next / vLLM fallbacks)

def torch_split(qkvz, ba, dims):
    H, HV, K, V = dims["H"], dims["HV"], dims["K"], dims["V"]
    G, T = HV // H, qkvz.shape[0]
    q, k, v, z = torch.split(qkvz.view(T, H, 2 * K + 2 * G * V), [K, K, G * V, G * V], dim=-1)
    b, a = torch.split(ba.view(T, H, 2 * G), [G, G], dim=-1)
    mixed = torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], dim=-1)
    return mixed, z.reshape(T, HV, V), b.reshape(T, HV), a.reshape(T, HV)


def torch_conv_update(x, pool, w, bias, idx):
    win = torch.cat([pool[idx], x[:, :, None]], dim=-1)                        # gather, [B, D, W]
    y = F.silu(F.conv1d(win, w[:, None, :], bias, groups=w.shape[0])[..., 0])
    pool[idx] = win[:, :, 1:]
    return y


def torch_causal_conv1d(x, w, bias, pool, idx, N):
    T, D = x.shape
    Wd = w.shape[1]
    xs = torch.cat([pool[idx], x.view(N, T // N, D).transpose(1, 2)], dim=-1)  # [N, D, W-1+L]
    y = F.silu(F.conv1d(xs, w[:, None, :], bias, groups=D))
    pool[idx] = xs[:, :, -(Wd - 1):]
    return y.transpose(1, 2).reshape(T, D)


def torch_rms_gated(x, z, w):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)
    return w.float() * xf * F.silu(z.float())


def torch_rms_gated_fp8(x, z, w, gs, fmax, dtype):
    y = torch_rms_gated(x, z, w)
    grp = y.unflatten(-1, (-1, gs))
    s = torch.clamp(grp.abs().amax(-1) / fmax, min=1.0 / (fmax * 512.0))
    return torch.clamp(grp / s[..., None], -fmax, fmax).flatten(-2).to(dtype), s


# ---------------------------------------------------------------------------------------------------

class Bench:
    """Shapes, the result rows and the checks of one run."""

    def __init__(self, rows: int, decode_batch: int, small: bool):
        d = dict(H=2, HV=4, K=16, V=16, W=4) if small else dict(H=16, HV=32, K=128, V=128, W=4)
        self.dims = d
        self.H, self.HV, self.K, self.V, self.W = d["H"], d["HV"], d["K"], d["V"], d["W"]
        self.D = 2 * self.H * self.K + self.HV * self.V
        self.DZ = 2 * self.H * self.K + 2 * self.HV * self.V
        self.T, self.B = rows, decode_batch
        self.arch = L.current_arch(torch.device(DEV))
        self.bw = copy_bandwidth()
        self.rows, self.checks = [], []
        self.split_kw = dict(num_k_heads=self.H, num_v_heads=self.HV, head_k_dim=self.K, head_v_dim=self.V,
                             layout="interleaved")

    @staticmethod
    def rand(*shape, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*shape, device=DEV) * scale).to(dtype)

    def add(self, op, backend, n, nbytes, t_us, ref_us=None, note=""):
        gbps = nbytes / (t_us * 1e-6)
        self.rows.append(dict(op=op, impl=backend, rows=n, time_us=round(t_us, 2), MB=round(nbytes / 1e6, 1),
                              GBps=round(gbps / 1e9, 1), pct_copy=round(100 * gbps / self.bw, 1),
                              vs_torch=round(ref_us / t_us, 2) if ref_us else "", note=note))

    def check(self, label, err, tol):
        self.checks.append((label, err))
        if not err < tol:
            raise SystemExit(f"bench_edge_ops: {label} disagrees with the reference (rel {err:.2e} >= {tol})")

    def conv_inputs(self, S, n):
        """pool [S, D, W-1], n random distinct slots, weight, bias."""
        return (self.rand(S, self.D, self.W - 1), torch.randperm(S, device=DEV)[:n].to(torch.int32),
                self.rand(self.D, self.W, scale=0.5), self.rand(self.D))

    def split_outputs(self, n):
        bf = torch.bfloat16
        return (torch.empty(n, self.D, dtype=bf, device=DEV), torch.empty(n, self.HV, self.V, dtype=bf, device=DEV),
                torch.empty(n, self.HV, dtype=bf, device=DEV), torch.empty(n, self.HV, dtype=bf, device=DEV))

    # ---- ops

    def split_qkvzba(self):
        T, HV = self.T, self.HV
        qkvz, ba = self.rand(T, self.DZ), self.rand(T, 2 * HV)
        outs = self.split_outputs(T)
        nbytes = 2 * T * (self.DZ + 2 * HV) + 2 * T * (self.D + HV * self.V + 2 * HV)
        fn = impl("split_qkvzba", "triton")
        fn(qkvz, ba, *outs, **self.split_kw)
        same = all(torch.equal(o, r) for o, r in zip(outs, torch_split(qkvz, ba, self.dims)))
        self.check("split_qkvzba", 0.0 if same else float("inf"), 1.0)
        t_ref = time_us(lambda: torch_split(qkvz, ba, self.dims))
        self.add("split_qkvzba", "torch (HF split + cat)", T, nbytes, t_ref)
        self.add("split_qkvzba", "triton", T, nbytes, time_us(lambda: fn(qkvz, ba, *outs, **self.split_kw)), t_ref,
                 "1 launch")

    def causal_conv1d_update(self):
        T, D, W = self.T, self.D, self.W
        pool, idx, w, bias = self.conv_inputs(T + 64, T)
        x = self.rand(T, D)
        out = torch.empty(T, D, dtype=torch.bfloat16, device=DEV)
        nbytes = 2 * (2 * T * D + 2 * T * D * (W - 1) + D * W + D) + 4 * T
        il = idx.long()
        t_ref = time_us(lambda: torch_conv_update(x, pool, w, bias, il))
        self.add("causal_conv1d_update", "torch (gather + conv1d + scatter)", T, nbytes, t_ref)
        for be in ("triton", "amd-triton"):
            fn = impl("causal_conv1d_update", be)
            p_k, p_r = pool.clone(), pool.clone()
            ref = torch.empty_like(out)
            fn(x, p_k, w, bias, idx, out, activation="silu")
            R.causal_conv1d_update(x, p_r, w, bias, idx, ref, activation="silu")
            self.check(f"causal_conv1d_update/{be}", max(rel(out, ref), rel(p_k, p_r)), 5e-3)
            t = time_us(lambda: fn(x, pool, w, bias, idx, out, activation="silu"))
            self.add("causal_conv1d_update", be, T, nbytes, t, t_ref,
                     "ROCm kernel, default config" if be == "amd-triton" else "")

    def conv1d_update_split(self):
        """The decode front end: split + conv update, one launch; kernels per call from the profiler."""
        T, D, W, HV = self.T, self.D, self.W, self.HV
        pool, idx, w, bias = self.conv_inputs(T + 64, T)
        qkvz, ba = self.rand(T, self.DZ), self.rand(T, 2 * HV)
        outs = self.split_outputs(T)
        kw = dict(self.split_kw, activation="silu")
        nbytes = (2 * T * (self.DZ + 2 * HV) + 2 * T * (D + HV * self.V + 2 * HV)
                  + 2 * (2 * T * D * (W - 1) + D * W + D) + 4 * T)
        fn = impl("conv1d_update_split", "triton")
        il = idx.long()

        def torch_front():
            mixed, z, b_, a_ = torch_split(qkvz, ba, self.dims)
            return torch_conv_update(mixed, pool, w, bias, il), z, b_, a_

        p_k, p_r = pool.clone(), pool.clone()
        refs = tuple(torch.empty_like(o) for o in outs)
        fn(qkvz, ba, p_k, w, bias, idx, *outs, **kw)
        R.conv1d_update_split(qkvz, ba, p_r, w, bias, idx, *refs, **kw)
        self.check("conv1d_update_split", max([rel(o, r) for o, r in zip(outs, refs)] + [rel(p_k, p_r)]), 5e-3)
        n_torch = kernels_per_call(torch_front)
        n_gdn = kernels_per_call(lambda: fn(qkvz, ba, pool, w, bias, idx, *outs, **kw))
        with L.recording(self.arch if self.arch != "cpu" else "sm_90") as launches:
            fn(*(t.to("meta") for t in (qkvz, ba, pool, w, bias, idx, *outs)), **kw)
        t_ref = time_us(torch_front)
        self.add("conv1d_update_split", "torch (split + conv update)", T, nbytes, t_ref,
                 note=f"{n_torch} kernels" if n_torch is not None else "")
        note = f"{len(launches)} Triton launch" + (f"; {n_gdn} kernel in the profiler" if n_gdn is not None else "")
        self.add("conv1d_update_split", "triton", T, nbytes,
                 time_us(lambda: fn(qkvz, ba, pool, w, bias, idx, *outs, **kw)), t_ref, note)

    def causal_conv1d(self, N=8):
        """Prefill conv: N sequences of T/N tokens (equal lengths, so torch can batch them)."""
        D, W = self.D, self.W
        T = (self.T // N) * N
        pool, idx, w, bias = self.conv_inputs(N + 64, N)
        x = self.rand(T, D)
        cu = torch.arange(0, T + 1, T // N, dtype=torch.int32, device=DEV)
        out = torch.empty(T, D, dtype=torch.bfloat16, device=DEV)
        nbytes = 2 * (2 * T * D + 2 * N * D * (W - 1) + D * W + D)
        fn = impl("causal_conv1d", "triton")
        p_k, p_r = pool.clone(), pool.clone()
        ref = torch.empty_like(out)
        fn(x, w, bias, cu, p_k, idx, None, out, activation="silu")
        R.causal_conv1d(x, w, bias, cu, p_r, idx, None, ref, activation="silu")
        self.check("causal_conv1d", max(rel(out, ref), rel(p_k, p_r)), 5e-3)
        il = idx.long()
        t_ref = time_us(lambda: torch_causal_conv1d(x, w, bias, pool, il, N))
        self.add("causal_conv1d", "torch (conv1d, equal lengths)", T, nbytes, t_ref)
        self.add("causal_conv1d", "triton", T, nbytes,
                 time_us(lambda: fn(x, w, bias, cu, pool, idx, None, out, activation="silu")), t_ref,
                 f"2 launches, varlen ({N} seqs)")

    def rms_norm_gated(self):
        M, V = self.T * self.HV, self.V
        x, z, w = self.rand(M, V, scale=3.0), self.rand(M, V), self.rand(V)
        y = torch.empty(M, V, dtype=torch.bfloat16, device=DEV)
        nbytes = 2 * 3 * M * V + 2 * V
        t_ref = time_us(lambda: torch_rms_gated(x, z, w).to(torch.bfloat16))
        self.add("rms_norm_gated", "torch (HF RMSNormGated)", M, nbytes, t_ref)
        fn = impl("rms_norm_gated", "triton")
        ref = torch.empty_like(y)
        fn(x, z, w, y, eps=EPS)
        R.rms_norm_gated(x, z, w, ref, eps=EPS)
        self.check("rms_norm_gated", rel(y, ref), 5e-3)
        self.add("rms_norm_gated", "triton", M, nbytes, time_us(lambda: fn(x, z, w, y, eps=EPS)), t_ref)

    def rms_norm_gated_fp8(self):
        M, V = self.T * self.HV, self.V
        gs = min(128, V)
        x, z, w = self.rand(M, V, scale=3.0), self.rand(M, V), self.rand(V)
        for fp8, fmax in ((torch.float8_e4m3fn, 448.0), (torch.float8_e4m3fnuz, 224.0)):
            tag = "e4m3fn" if fp8 == torch.float8_e4m3fn else "e4m3fnuz"
            q = torch.empty(M, V, dtype=fp8, device=DEV)
            s = torch.empty(M, V // gs, device=DEV)
            nbytes = 2 * 2 * M * V + 2 * V + M * V + 4 * M * (V // gs)
            t_ref = time_us(lambda: torch_rms_gated_fp8(x, z, w, gs, fmax, fp8))
            self.add(f"rms_norm_gated_fp8 ({tag})", "torch (norm + group quant)", M, nbytes, t_ref)
            rq, rs = torch.empty_like(q), torch.empty_like(s)
            R.rms_norm_gated_fp8(x, z, w, rq, rs, eps=EPS, group_size=gs, fp8_max=fmax)
            for be in ("triton", "amd-triton"):
                fn = impl("rms_norm_gated_fp8", be)
                fn(x, z, w, q, s, eps=EPS, group_size=gs, fp8_max=fmax)
                off = (q.view(torch.uint8) != rq.view(torch.uint8)).float().mean().item()   # codes off the ref
                self.check(f"rms_norm_gated_fp8/{tag}/{be}", max(rel(s, rs), off), 1e-3)
                t = time_us(lambda: fn(x, z, w, q, s, eps=EPS, group_size=gs, fp8_max=fmax))
                soft = fp8_target(q, self.arch)[1]
                self.add(f"rms_norm_gated_fp8 ({tag})", be, M, nbytes, t, t_ref,
                         "software fp8 rounding" if soft else "hardware cvt")

    def decode_packed(self):
        """amd-triton (and the portable kernel where registered) vs the fp32 torch step; fp32 VK pool."""
        B, H, HV, K, V, D = self.B, self.H, self.HV, self.K, self.V, self.D
        S = B + 8
        mixed, a, b = self.rand(B, D), self.rand(B, HV), self.rand(B, HV)
        A_log = torch.empty(HV, device=DEV).uniform_(-4, -1)
        dt_bias = torch.empty(HV, device=DEV).uniform_(-1, 1)
        pool = self.rand(S, HV, V, K, dtype=torch.float32, scale=0.1)
        idx = torch.randperm(S, device=DEV)[:B].to(torch.int32)
        o = torch.empty(B, HV, V, dtype=torch.bfloat16, device=DEV)
        kw = dict(num_k_heads=H, head_k_dim=K, head_v_dim=V, scale=K ** -0.5, use_qk_l2norm=True, state_layout="vk")
        nbytes = 2 * 4 * B * HV * K * V + 2 * B * D + 2 * 2 * B * HV + 2 * B * HV * V + 4 * B
        t_ref = time_us(lambda: R.decode_packed(mixed, a, b, A_log, dt_bias, pool, idx, o, **kw))
        self.add("decode_packed (fp32 vk)", "torch (gdn reference)", B, nbytes, t_ref)
        for be in ("amd-triton", "triton"):
            fn = impl("decode_packed", be)
            if fn is None:
                continue
            p_k, p_r = pool.clone(), pool.clone()
            ref = torch.empty_like(o)
            fn(mixed, a, b, A_log, dt_bias, p_k, idx, o, **kw)
            R.decode_packed(mixed, a, b, A_log, dt_bias, p_r, idx, ref, **kw)
            self.check(f"decode_packed/{be}", max(rel(o, ref), rel(p_k, p_r)), 5e-3)
            p_k = p_r = None
            t = time_us(lambda: fn(mixed, a, b, A_log, dt_bias, pool, idx, o, **kw))
            self.add("decode_packed (fp32 vk)", be, B, nbytes, t, t_ref,
                     "ROCm kernel, default config" if be == "amd-triton" else "")

    # ---- report

    def report(self, out_csv=None):
        import triton
        name = torch.cuda.get_device_name() if GPU else "cpu (Triton interpreter, not a measurement)"
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        print(f"# gdn edge ops, {name} ({self.arch}), {stamp}; torch {torch.__version__}, triton {triton.__version__}")
        print(f"# H={self.H} HV={self.HV} K={self.K} V={self.V} W={self.W} D={self.D}, bf16 activations; copy "
              f"bandwidth {self.bw / 1e12:.2f} TB/s (read+write); L2 flushed before every call\n")
        cols = ["op", "impl", "rows", "time_us", "MB", "GBps", "pct_copy", "vs_torch", "note"]
        print("| op | impl | rows | time (us) | MB moved | GB/s | % copy | x torch | note |")
        print("|" + "---|" * len(cols))
        for r in self.rows:
            print("| " + " | ".join(str(r[c]) for c in cols) + " |")
        print("\n# checks vs the fp32 reference (rel. error; fp8: max of scale error and fraction of codes off): "
              + ", ".join(f"{label} {err:.1e}" for label, err in self.checks))
        if out_csv:
            with open(out_csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["device", "arch", "date"] + cols)
                w.writeheader()
                for r in self.rows:
                    w.writerow(dict(device=name, arch=self.arch, date=stamp, **r))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8192, help="T or B of every edge op (default 8192)")
    p.add_argument("--decode-batch", type=int, default=1024, help="B of decode_packed (default 1024)")
    p.add_argument("--small", action="store_true", help="tiny widths (CPU smoke test)")
    p.add_argument("--out", help="write the rows as CSV")
    a = p.parse_args()
    torch.manual_seed(0)
    bench = Bench(a.rows, a.decode_batch, a.small)
    for op in ("split_qkvzba", "causal_conv1d_update", "conv1d_update_split", "causal_conv1d", "rms_norm_gated",
               "rms_norm_gated_fp8", "decode_packed"):
        getattr(bench, op)()
        if GPU:
            torch.cuda.empty_cache()
    bench.report(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
