"""Layer-edge ops and the ROCm decode path on one GPU, against the unfused PyTorch sequence in the same run.

    python bench/bench_edge_ops.py [--rows 8192] [--out results.csv] [--sweep]

Qwen3-Next widths (H=16, HV=32, K=V=128, D = 8192, W=4), bf16 activations, T or B = --rows rows
(rms_norm_gated*: M = rows * HV rows of V; causal_conv1d: 8 sequences of rows/8 tokens; decode_packed:
B = --decode-batch, fp32 VK pool, since the unfused torch step needs ~10x the pool in temporaries).
Each time is gdn.common.timing.flushed_time_us (do_bench's median with a 256 MB buffer zeroed before every
call, so L2 starts cold); pools are indexed through a random slot permutation. Bytes are the ideal traffic
of the op (every input read once, every output written once, pools read and written); "% copy" relates the
achieved bytes/s to gdn.common.timing.copy_bandwidth (a 1 GiB device-to-device copy, read + write bytes)
measured in the same run.
Every gdn output is checked against gdn's fp32 reference before its time is printed. The decode front
end (conv1d_update_split) also reports how many kernels one call launches (torch.profiler), gdn vs torch.

`--sweep` first times a grid of configs of the four table-driven kernels (causal_conv1d_update,
conv1d_update_split, causal_conv1d, rms_norm_gated_fp8) at the same shapes (plus a small decode batch for
the two update ops), each config checked against the reference (outputs, padding rows, the whole pool bit
for bit) before it is timed, and prints the best entry per table bucket, ready to paste into the tables
(keyed by this GPU's arch). The main table then runs with those best configs patched in (this process
only; rows marked "sweep-best"). Configs compile in parallel worker processes first (Triton's disk cache);
`--sweep-workers 0` compiles in-line instead.

Without a GPU (`--small`, TRITON_INTERPRET=1 set by the script) it runs tiny widths and 64 rows under the Triton
interpreter with wall-clock times: a smoke test of the script, not a measurement.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import os
import statistics
import subprocess
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
from gdn.common import timing  # noqa: E402
from gdn.common.timing import rel  # noqa: E402
from gdn.common.triton._fp8 import fp8_mode, fp8_target  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
EPS = 1e-6


# ---------------------------------------------------------------------------------------------------
# measurement

def time_us(fn) -> float:
    """Median time of fn() in us, L2 flushed before each call; wall clock of 3 calls without a GPU."""
    fn()
    if GPU:
        return timing.flushed_time_us(fn)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def copy_bandwidth() -> float:
    """Copy bytes/s (read + write): gdn.common.timing's on a GPU, a 16 MB host copy without one."""
    if GPU:
        return timing.copy_bandwidth()
    src = torch.randn(1 << 22)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (time_us(lambda: dst.copy_(src)) * 1e-6)


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
        self._dims(rows, decode_batch, small)
        self.arch = L.current_arch(torch.device(DEV))
        self.bw = copy_bandwidth()
        self.rows, self.checks = [], []
        self.tuned = {}          # op -> note for rows whose table was patched by --sweep

    def _dims(self, rows: int, decode_batch: int, small: bool):
        d = dict(H=2, HV=4, K=16, V=16, W=4) if small else dict(H=16, HV=32, K=128, V=128, W=4)
        self.dims = d
        self.H, self.HV, self.K, self.V, self.W = d["H"], d["HV"], d["K"], d["V"], d["W"]
        self.D = 2 * self.H * self.K + self.HV * self.V
        self.DZ = 2 * self.H * self.K + 2 * self.HV * self.V
        self.T, self.B = rows, decode_batch
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
                     "ROCm kernel, default config" if be == "amd-triton"
                     else self.tuned.get("causal_conv1d_update", ""))

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
        note += self.tuned.get("conv1d_update_split", "")
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
                 f"1 launch, varlen ({N} seqs)" + self.tuned.get("causal_conv1d", ""))

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
                if be == "triton":
                    mode = fp8_mode(q, self.arch, fmax)[1]
                    note = {0: "hardware cvt", 1: "software fp8 rounding", 2: "fnuz via hardware e4m3fn cvt"}[mode]
                else:
                    note = "software fp8 rounding" if fp8_target(q, self.arch)[1] else "hardware cvt"
                self.add(f"rms_norm_gated_fp8 ({tag})", be, M, nbytes, t, t_ref, note + self.tuned.get(
                    "rms_norm_gated_fp8" if be == "triton" else "", ""))

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


# ---------------------------------------------------------------------------------------------------
# --sweep: config grids of the table-driven kernels

SWEEP_MODULES = {op: f"gdn.common.triton.{op}" for op in
                 ("causal_conv1d_update", "conv1d_update_split", "causal_conv1d", "rms_norm_gated_fp8")}


def _flat4_grid(pairs, flat=True):
    """(ROWS, BLOCK_D or None, num_warps) triples -> update-kernel configs."""
    out = []
    for r, d, w in pairs:
        c = dict(ROWS=r, num_warps=w, FLAT=flat)
        if d is not None:
            c["BLOCK_D"] = d
        out.append(c)
    return out


def sweep_grids(small: bool):
    """[(op, bucket, shape, configs)]: every config of one (op, bucket) runs on the same inputs. With FLAT and
    W = 4 a thread holds 8 or 16 channels (ROWS * BLOCK_D / (32 * num_warps)); per-column configs besides."""
    if small:
        upd = _flat4_grid([(1, 16, 1), (2, 32, 2)]) + _flat4_grid([(2, 16, 1)], flat=False)
        return [("causal_conv1d_update", ("small", "narrow"), dict(B=6), upd),
                ("conv1d_update_split", "small", dict(B=6), _flat4_grid([(2, None, 1), (1, None, 1)]) +
                 _flat4_grid([(2, None, 1)], flat=False)),
                ("causal_conv1d", None, {}, [dict(BLOCK_T=t, CHUNK=c, BLOCK_D=d, num_warps=w)
                                            for t, c, d, w in ((8, 4, 16, 1), (8, 8, 32, 2))]),
                ("rms_norm_gated_fp8", "grouped", dict(fp8="e4m3fn"), [dict(elems=e, num_warps=w)
                                                                      for e, w in ((64, 1), (256, 2))]),
                ("rms_norm_gated_fp8", "grouped", dict(fp8="e4m3fnuz"), [dict(elems=256, num_warps=2)])]
    upd_large = _flat4_grid([(1, 512, 1), (1, 512, 2), (1, 1024, 2), (1, 1024, 4), (1, 2048, 4), (1, 2048, 8),
                             (2, 256, 1), (2, 256, 2), (2, 512, 2), (2, 512, 4), (2, 1024, 4), (2, 1024, 8),
                             (4, 256, 2), (4, 256, 4), (4, 512, 4), (4, 512, 8), (8, 256, 4), (8, 256, 8)])
    upd_large += _flat4_grid([(1, 1024, 4), (1, 1024, 8), (2, 512, 4), (2, 1024, 8), (4, 256, 4), (4, 512, 8)],
                             flat=False)
    upd_small = _flat4_grid([(1, 256, 1), (1, 512, 1), (1, 512, 2), (2, 256, 1), (2, 256, 2), (1, 1024, 4)])
    split_large = _flat4_grid([(2, None, 1), (4, None, 1), (4, None, 2), (8, None, 2), (8, None, 4),
                               (16, None, 4), (16, None, 8)])
    split_large += _flat4_grid([(1, None, 4), (2, None, 4), (4, None, 4), (8, None, 8)], flat=False)
    split_small = _flat4_grid([(1, None, 1), (2, None, 1), (4, None, 2), (8, None, 4)])
    # causal_conv1d: channels per thread BLOCK_D / (32 * num_warps) (8: 16-byte rows, more registers per thread;
    # 2-4: narrower rows, more resident warps); CHUNK rows in flight per thread; BLOCK_T == CHUNK issues a
    # block's loads at once (no loop), longer blocks re-read fewer halo rows and weights
    conv = [dict(BLOCK_T=t, CHUNK=c, BLOCK_D=d, num_warps=w)
            for t, c, d, w in ((64, 4, 512, 2), (64, 4, 256, 1), (128, 4, 512, 2), (64, 8, 256, 1), (64, 8, 512, 2),
                               (32, 8, 256, 1), (8, 8, 256, 1), (16, 8, 256, 1), (16, 16, 256, 1), (16, 16, 512, 2),
                               (32, 16, 256, 1), (64, 16, 256, 1),                       # 8 channels per thread
                               (16, 16, 256, 2), (32, 16, 256, 2), (64, 16, 256, 2), (32, 32, 256, 2),
                               (16, 16, 512, 4), (8, 8, 128, 1),                          # 4
                               (32, 32, 256, 4), (16, 16, 256, 4), (64, 32, 256, 4), (32, 32, 128, 2),  # 2
                               # longer blocks: fewer re-read halo rows (3 of 64 at BLOCK_T = 64)
                               (128, 4, 256, 1), (128, 8, 256, 1), (256, 8, 256, 1), (128, 16, 256, 2),
                               (128, 8, 512, 2), (256, 16, 512, 2))]
    fp8 = [dict(elems=e, num_warps=w) for e, w in ((1024, 2), (1024, 4), (2048, 2), (2048, 4), (2048, 8),
                                                   (4096, 4), (4096, 8), (8192, 8))]
    return [("causal_conv1d_update", ("large", "wide"), {}, upd_large),
            ("causal_conv1d_update", ("small", "wide"), dict(B=32), upd_small),
            ("conv1d_update_split", "large", {}, split_large),
            ("conv1d_update_split", "small", dict(B=32), split_small),
            ("causal_conv1d", None, {}, conv),
            ("rms_norm_gated_fp8", "grouped", dict(fp8="e4m3fn"), fp8),
            ("rms_norm_gated_fp8", "grouped", dict(fp8="e4m3fnuz"), fp8)]


class SweepCase:
    """Inputs of one (op, shape) on `device`, and `run(cfg, check)`: the timed call (check False) or a call on
    fresh copies returning its error against the reference (check True; needs real tensors)."""

    def __init__(self, b: "Bench", op: str, shape: dict, device: str):
        self.b, self.op, self.dev = b, op, device
        getattr(self, "_" + op)(**shape)

    def rand(self, *shape, dtype=torch.bfloat16, scale=1.0):
        if self.dev == "meta":
            return torch.empty(*shape, dtype=dtype, device="meta")
        return (torch.randn(*shape, device=self.dev) * scale).to(dtype)

    def slots(self, S, n, pad=False):
        if self.dev == "meta":
            return torch.empty(n, dtype=torch.int32, device="meta")
        idx = torch.randperm(S, device=self.dev)[:n].to(torch.int32)
        if pad:
            idx = idx.clone()
            idx[::16] = -1
        return idx

    def fn(self):
        return getattr(importlib.import_module(SWEEP_MODULES[self.op]), self.op)

    # ---- the ops

    def _causal_conv1d_update(self, B=None):
        b = self.b
        B = B or b.T
        S = max(B, b.T) + 64
        D, W = b.D, b.W
        self.pool, self.w, self.bias = self.rand(S, D, W - 1), self.rand(D, W, scale=0.5), self.rand(D)
        self.x, self.out = self.rand(B, D), self.rand(B, D)
        self.idx, self.idx_chk = self.slots(S, B), self.slots(S, B, pad=True)
        self.nbytes = 2 * (2 * B * D + 2 * B * D * (W - 1) + D * W + D) + 4 * B
        self.rows = B
        if self.dev != "meta":
            self.pool0 = self.pool.clone()                     # the timed calls update self.pool
            self.ref_pool, self.ref_out = self.pool.clone(), torch.empty_like(self.out)
            R.causal_conv1d_update(self.x, self.ref_pool, self.w, self.bias, self.idx_chk, self.ref_out,
                                   activation="silu")

    def _conv1d_update_split(self, B=None):
        b = self.b
        B = B or b.T
        S = max(B, b.T) + 64
        D, W, HV, V = b.D, b.W, b.HV, b.V
        self.pool, self.w, self.bias = self.rand(S, D, W - 1), self.rand(D, W, scale=0.5), self.rand(D)
        self.qkvz, self.ba = self.rand(B, b.DZ), self.rand(B, 2 * HV)
        self.outs = (self.rand(B, D), self.rand(B, HV, V), self.rand(B, HV), self.rand(B, HV))
        self.idx, self.idx_chk = self.slots(S, B), self.slots(S, B, pad=True)
        self.kw = dict(b.split_kw, activation="silu")
        self.nbytes = (2 * B * (b.DZ + 2 * HV) + 2 * B * (D + HV * V + 2 * HV)
                       + 2 * (2 * B * D * (W - 1) + D * W + D) + 4 * B)
        self.rows = B
        if self.dev != "meta":
            self.pool0 = self.pool.clone()
            self.ref_pool = self.pool.clone()
            self.ref_outs = tuple(torch.empty_like(o) for o in self.outs)
            R.conv1d_update_split(self.qkvz, self.ba, self.ref_pool, self.w, self.bias, self.idx_chk, *self.ref_outs,
                                  **self.kw)

    def _causal_conv1d(self, N=8):
        b = self.b
        D, W = b.D, b.W
        T = (b.T // N) * N
        S = N + 64
        self.pool, self.w, self.bias = self.rand(S, D, W - 1), self.rand(D, W, scale=0.5), self.rand(D)
        self.x, self.out = self.rand(T, D), self.rand(T, D)
        self.idx = self.slots(S, N)
        self.nbytes = 2 * (2 * T * D + 2 * N * D * (W - 1) + D * W + D)
        self.rows = T
        # check: varlen with zero-length and short sequences, a padding slot, mixed initial states
        lengths = [0, 1, 2, 3, T // 3, 0, T // 5, 5]
        if sum(lengths) > T:
            lengths = [0, 1, 2, 3]
        lengths.append(T - sum(lengths))
        self.idx_chk = self.slots(S, len(lengths))
        if self.dev == "meta":
            self.cu = torch.empty(N + 1, dtype=torch.int32, device="meta")
            self.cu_chk = torch.empty(len(lengths) + 1, dtype=torch.int32, device="meta")
            self.init = torch.empty(len(lengths), dtype=torch.bool, device="meta")
            return
        self.cu = torch.arange(0, T + 1, T // N, dtype=torch.int32, device=self.dev)
        self.cu_chk = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=self.dev)
        self.idx_chk[len(lengths) // 2] = -1
        self.init = torch.tensor([i % 4 != 1 for i in range(len(lengths))], device=self.dev)
        self.pool0 = self.pool.clone()
        self.ref_pool, self.ref_out = self.pool.clone(), torch.empty_like(self.out)
        R.causal_conv1d(self.x, self.w, self.bias, self.cu_chk, self.ref_pool, self.idx_chk, self.init, self.ref_out,
                        activation="silu")

    def _rms_norm_gated_fp8(self, fp8="e4m3fn"):
        b = self.b
        M, V = b.T * b.HV, b.V
        self.gs = min(128, V)
        self.fp8 = torch.float8_e4m3fn if fp8 == "e4m3fn" else torch.float8_e4m3fnuz
        self.fmax = 448.0 if fp8 == "e4m3fn" else 224.0
        self.x, self.z, self.wn = self.rand(M, V, scale=3.0), self.rand(M, V), self.rand(V)
        self.y = torch.empty(M, V, dtype=self.fp8, device=self.dev)
        self.s = torch.empty(M, V // self.gs, device=self.dev)
        self.nbytes = 2 * 2 * M * V + 2 * V + M * V + 4 * M * (V // self.gs)
        self.rows = M
        if self.dev != "meta":
            self.ref_y, self.ref_s = torch.empty_like(self.y), torch.empty_like(self.s)
            R.rms_norm_gated_fp8(self.x, self.z, self.wn, self.ref_y, self.ref_s, eps=EPS, group_size=self.gs,
                                 fp8_max=self.fmax)

    def run(self, cfg, check=False):
        fn = self.fn()
        if self.op == "causal_conv1d_update":
            if not check:
                return fn(self.x, self.pool, self.w, self.bias, self.idx, self.out, activation="silu", config=cfg)
            pool, out = self.pool0.clone(), torch.full_like(self.out, float("nan"))
            fn(self.x, pool, self.w, self.bias, self.idx_chk, out, activation="silu", config=cfg)
            live = self.idx_chk >= 0
            if not (out[~live] == 0).all() or not torch.equal(pool.view(torch.int16), self.ref_pool.view(torch.int16)):
                return float("inf")
            return rel(out[live], self.ref_out[live])
        if self.op == "conv1d_update_split":
            if not check:
                return fn(self.qkvz, self.ba, self.pool, self.w, self.bias, self.idx, *self.outs, **self.kw, config=cfg)
            pool = self.pool0.clone()
            outs = tuple(torch.full_like(o, float("nan")) for o in self.outs)
            fn(self.qkvz, self.ba, pool, self.w, self.bias, self.idx_chk, *outs, **self.kw, config=cfg)
            live = self.idx_chk >= 0
            same = all(torch.equal(o, r) for o, r in zip(outs[1:], self.ref_outs[1:]))
            if not same or not (outs[0][~live] == 0).all() or not torch.equal(pool.view(torch.int16),
                                                                               self.ref_pool.view(torch.int16)):
                return float("inf")
            return rel(outs[0][live], self.ref_outs[0][live])
        if self.op == "causal_conv1d":
            if not check:
                return fn(self.x, self.w, self.bias, self.cu, self.pool, self.idx, None, self.out, activation="silu",
                          config=cfg)
            pool, out = self.pool0.clone(), torch.full_like(self.out, float("nan"))
            fn(self.x, self.w, self.bias, self.cu_chk, pool, self.idx_chk, self.init, out, activation="silu",
               config=cfg)
            if not torch.equal(pool.view(torch.int16), self.ref_pool.view(torch.int16)):
                return float("inf")
            return rel(out, self.ref_out)
        # rms_norm_gated_fp8
        if not check:
            return fn(self.x, self.z, self.wn, self.y, self.s, eps=EPS, group_size=self.gs, fp8_max=self.fmax,
                      config=cfg)
        self.y.view(torch.uint8).fill_(0x7F)
        self.s.fill_(float("nan"))
        fn(self.x, self.z, self.wn, self.y, self.s, eps=EPS, group_size=self.gs, fp8_max=self.fmax, config=cfg)
        off = (self.y.view(torch.uint8) != self.ref_y.view(torch.uint8)).float().mean().item()
        return max(rel(self.s, self.ref_s), off)


def sweep_time_us(fn) -> float:
    """Median us with L2 flushed before each call, shorter than the main table's (many configs)."""
    fn()
    if GPU:
        return timing.flushed_time_us(fn, warmup=5, rep=25)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def table_config(op, arch, bucket):
    mod = importlib.import_module(SWEEP_MODULES[op])
    return L.pick(mod._CONFIGS, arch, bucket, mod._DEFAULT)


SWEEP_OPS = None      # --sweep-ops: only these ops' grids (None: all)


def selected_grids(small: bool):
    return [g for g in sweep_grids(small) if SWEEP_OPS is None or g[0] in SWEEP_OPS]


def sweep_jobs(small):
    jobs = []
    for op, bucket, shape, cfgs in selected_grids(small):
        for cfg in cfgs:
            jobs.append((op, bucket, shape, cfg))
    return jobs


def precompile_worker(spec: str, rows: int, arch: str) -> int:
    """Compile (Triton warmup, meta tensors, nothing runs) every sweep job i with i % n == k: fills Triton's disk
    cache for the sweeping process. Best effort: errors are printed and skipped."""
    k, n = (int(v) for v in spec.split("/"))

    def warm(kernel, grid, *args, num_warps=4, num_stages=2, **cx):
        kernel.warmup(*args, grid=grid, num_warps=num_warps, num_stages=num_stages, **cx)

    L.launch = warm
    L.current_arch = lambda device: arch
    b = Bench.__new__(Bench)
    Bench._dims(b, rows, 0, False)
    done = 0
    cases = {}
    for i, (op, bucket, shape, cfg) in enumerate(sweep_jobs(False)):
        if i % n != k:
            continue
        key = (op, repr(shape))
        try:
            if key not in cases:
                cases[key] = SweepCase(b, op, shape, "meta")
            case = cases[key]
            fn = case.fn()
            # the timed call and the check call (other shapes for causal_conv1d's varlen check)
            if op == "causal_conv1d":
                fn(case.x, case.w, case.bias, case.cu, case.pool, case.idx, None, case.out, activation="silu",
                   config=cfg)
                fn(case.x, case.w, case.bias, case.cu_chk, case.pool, case.idx_chk, case.init, case.out,
                   activation="silu", config=cfg)
            else:
                case.run(cfg, check=False)
            done += 1
        except Exception as e:  # noqa: BLE001  (the sweeping process compiles it again and reports)
            print(f"# precompile {op} {cfg}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"# precompile worker {k}/{n}: {done} configs", file=sys.stderr)
    return 0


def precompile(rows: int, arch: str, workers: int) -> None:
    if workers <= 0 or not GPU:
        return
    t0 = time.time()
    only = ["--sweep-ops", ",".join(sorted(SWEEP_OPS))] if SWEEP_OPS else []
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--rows", str(rows), "--precompile-worker",
                               f"{k}/{workers}", "--arch", arch, *only]) for k in range(workers)]
    for pr in procs:
        try:
            pr.wait(timeout=max(1.0, 240 - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            pr.kill()
    print(f"# sweep: precompiled in {workers} processes, {time.time() - t0:.0f} s", flush=True)


def run_sweep(bench: "Bench", small: bool, workers: int) -> dict:
    """Times every config; returns {(op, bucket): best config}; prints the ranking and the table entries."""
    arch = bench.arch
    precompile(bench.T, arch, workers)
    t0 = time.time()
    results = {}
    cases = {}
    for op, bucket, shape, cfgs in selected_grids(small):
        key = (op, repr(shape))
        if key not in cases:
            cases.clear()
            if GPU:
                torch.cuda.empty_cache()
            cases[key] = SweepCase(bench, op, shape, DEV)
        case = cases[key]
        cur = table_config(op, arch, bucket)
        if cur not in cfgs:
            cfgs = [cur] + list(cfgs)
        res = []
        for cfg in cfgs:
            try:
                err = case.run(cfg, check=True)
                if not err < (1e-3 if op == "rms_norm_gated_fp8" else 5e-3):
                    res.append((float("inf"), cfg, f"FAILED check (err {err:.2e})"))
                    continue
                t = sweep_time_us(lambda: case.run(cfg))
                res.append((t, cfg, f"err {err:.1e}"))
            except Exception as e:  # noqa: BLE001  (one bad config must not sink the sweep)
                res.append((float("inf"), cfg, f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:120]}"))
        res.sort(key=lambda r: r[0])
        label = f"{op} {bucket} {shape or ''}".strip()
        print(f"\n## sweep {label}: {case.rows} rows, {case.nbytes / 1e6:.1f} MB ideal; {len(res)} configs")
        for i, (t, cfg, note) in enumerate(res):
            if i >= 6 and t != float("inf") and cfg != cur:
                continue
            pct = 100 * case.nbytes / (t * 1e-6) / bench.bw if t != float("inf") else 0.0
            tag = " <- table now" if cfg == cur else ""
            print(f"  {t:9.2f} us {pct:6.1f}% copy  {cfg}  ({note}){tag}")
        results.setdefault((op, bucket), []).append((shape, res, case.nbytes, cur))
    print(f"\n# sweep: {time.time() - t0:.0f} s. Best configs on {arch} (paste into the _CONFIGS tables):")
    best = {}
    for (op, bucket), runs in results.items():
        # one table entry per bucket: the config with the least summed time over the bucket's shapes
        # (rms_norm_gated_fp8: both fp8 formats)
        total = {}
        for shape, res, nbytes, cur in runs:
            for t, cfg, _ in res:
                total[repr(cfg)] = (total.get(repr(cfg), (0.0, cfg))[0] + t, cfg)
        t_sum, cfg_best = min(total.values(), key=lambda v: v[0])
        if t_sum == float("inf"):
            print(f"# {op} {bucket}: no config passed")
            continue
        notes = []
        for shape, res, nbytes, cur in runs:
            t = next(t for t, c, _ in res if c == cfg_best)
            t_cur = next(t for t, c, _ in res if c == cur)
            notes.append(f"{(shape.get('fp8', '') + ' ') if 'fp8' in shape else ''}{t:.1f} us "
                         f"{100 * nbytes / (t * 1e-6) / bench.bw:.1f}% copy (table now {t_cur:.1f} us)")
        best[(op, bucket)] = cfg_best
        print(f"{SWEEP_MODULES[op].replace('.', '/')}.py: ({arch!r}, {bucket!r}): {cfg_best},   # {'; '.join(notes)}")
    return best


def apply_best(bench: "Bench", best: dict) -> None:
    """Patch the tables of this process with the sweep's best configs (for the main table that follows)."""
    for (op, bucket), cfg in best.items():
        importlib.import_module(SWEEP_MODULES[op])._CONFIGS[(bench.arch, bucket)] = cfg
        bench.tuned[op] = "; sweep-best config"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, help="T or B of every edge op (default 8192; 64 with --small)")
    p.add_argument("--decode-batch", type=int, help="B of decode_packed (default 1024; 16 with --small)")
    p.add_argument("--small", action="store_true", help="tiny widths (CPU smoke test)")
    p.add_argument("--out", help="write the rows as CSV")
    p.add_argument("--sweep", action="store_true", help="time config grids first, then the table with the best")
    p.add_argument("--sweep-ops", help="comma-separated ops whose grids --sweep times (default: all four)")
    p.add_argument("--sweep-workers", type=int, default=min(12, max(0, (os.cpu_count() or 2) - 2)),
                   help="processes that precompile the sweep's configs (0: compile in-line)")
    p.add_argument("--precompile-worker", help=argparse.SUPPRESS)
    p.add_argument("--arch", help=argparse.SUPPRESS)
    a = p.parse_args()
    global SWEEP_OPS
    SWEEP_OPS = set(a.sweep_ops.split(",")) if a.sweep_ops else None
    if a.rows is None:
        a.rows = 64 if a.small else 8192
    if a.decode_batch is None:
        a.decode_batch = 16 if a.small else 1024
    if a.precompile_worker:
        return precompile_worker(a.precompile_worker, a.rows, a.arch)
    torch.manual_seed(0)
    bench = Bench(a.rows, a.decode_batch, a.small)
    if a.sweep:
        apply_best(bench, run_sweep(bench, a.small, a.sweep_workers))
        torch.manual_seed(0)
    for op in ("split_qkvzba", "causal_conv1d_update", "conv1d_update_split", "causal_conv1d", "rms_norm_gated",
               "rms_norm_gated_fp8", "decode_packed"):
        getattr(bench, op)()
        if GPU:
            torch.cuda.empty_cache()
    bench.report(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
