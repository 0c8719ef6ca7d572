"""The head pass (chunk_state.py cfg HEAD: one CTA per (sequence, v-head), S^T in two math warpgroups, the scores
once per head) against the table's warp-specialised pass: errors of both against the float64 recurrence on contract
corners (varlen tails, an empty sequence, a padding slot, has_initial_state, the kv layout, a bf16 pool), then
per-kernel GPU time of the prefill, both ways.

    python bench/wip/head_ab.py          (GPU; CASES=8x4096,...; ROUNDS=2; CHECK=0 to skip the checks)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_prefill as BP  # noqa: E402
import torch  # noqa: E402

from gdn.nvidia.gluon import chunk_state as GS  # noqa: E402

H, HV, K, V = 16, 32, 128, 128
KEY = ("sm_90", "head")
HEAD = dict(GS._FUSED[KEY], STAGES=int(os.environ.get("STAGES", GS._FUSED[KEY]["STAGES"])),
            RING=int(os.environ.get("RING", GS._FUSED[KEY]["RING"])))


def set_head(on: bool):
    """The table's head entry (with STAGES / RING from the environment) or none (the warp-specialised wide entry)."""
    if on:
        GS._FUSED[KEY] = dict(HEAD)
    else:
        GS._FUSED.pop(KEY, None)


def run(x, lengths, slots=None, init=None, layout="vk", pool_dtype=torch.float32, nh=HV):
    """(o, final states KV form) of one prefill call with the current table."""
    pool = x["pool"].clone().to(pool_dtype)
    if layout == "kv":
        pool = pool.transpose(-1, -2).contiguous()
    idx = x["idx"] if slots is None else torch.tensor(slots, dtype=torch.int32, device=BP.DEV)
    out = torch.full_like(x["v"], float("nan"))
    BP.ops.prefill(x["q"], x["k"], x["v"], pool, idx, x["cu"], a=x["a"], b=x["b"], A_log=x["A_log"],
                   dt_bias=x["dt_bias"], scale=x["scale"], state_layout=layout, out=out, backend="triton",
                   has_initial_state=None if init is None else init.bool())
    torch.cuda.synchronize()
    st = pool.float() if layout == "kv" else pool.float().transpose(-1, -2)
    return out, st


def check(lengths, slots=None, init=None, layout="vk", pool_dtype=torch.float32):
    x = BP.make_inputs(list(lengths), H, HV, K, V, seed=3)
    ref_x = dict(x)
    if slots is not None:       # the reference starts sequence n from its slot's state
        ref_x["pool"] = x["pool"][torch.tensor([max(s, 0) for s in slots], device=BP.DEV)]
    if init is not None:
        ref_x["pool"] = ref_x["pool"] * init[:, None, None, None]
    o_ref, s_ref = BP.recurrence64(ref_x, list(lengths))
    res = {}
    for on in (False, True):
        set_head(on)
        o, st = run(x, lengths, slots, init, layout, pool_dtype)
        live = [n for n in range(len(lengths)) if slots is None or slots[n] >= 0]
        rows = torch.cat([torch.arange(x["cu"][n], x["cu"][n + 1], device=BP.DEV) for n in live]) if live else None
        eo = BP.rel(o[rows], o_ref[rows]) if rows is not None and rows.numel() else 0.0
        pad_ok = True
        for n in range(len(lengths)):
            if slots is not None and slots[n] < 0:
                pad_ok &= bool((o[x["cu"][n]:x["cu"][n + 1]] == 0).all())
        sl = [slots[n] if slots is not None else n for n in live]
        es = BP.rel(st[sl], s_ref[live]) if live else 0.0
        untouched = True
        if slots is not None:
            used = set(s for s in slots if s >= 0)
            for s in range(st.shape[0]):
                if s not in used:
                    base = x["pool"][s].transpose(-1, -2).to(pool_dtype).float()
                    untouched &= bool(torch.equal(st[s], base))
        res[on] = (eo, es, pad_ok, untouched)
    ok = res[True][0] < 1.2 * res[False][0] + 1e-4 and res[True][1] < 1.2 * res[False][1] + 1e-4 and \
        res[True][2] and res[True][3]
    print(f"check {lengths[:6]} slots={slots} init={'mix' if init is not None else None} {layout} "
          f"{str(pool_dtype)[6:]}: ws o {res[False][0]:.3e} st {res[False][1]:.3e} | head o {res[True][0]:.3e} "
          f"st {res[True][1]:.3e} pad {res[True][2]} untouched {res[True][3]} -> {'OK' if ok else 'BAD'}", flush=True)
    return ok


if os.environ.get("CHECK", "1") == "1":
    ok = True
    ok &= check((4096,))
    ok &= check((70, 5, 0, 130), slots=(2, 0, -1, 1))
    ok &= check((70, 5, 0, 130), slots=(3, 0, -1, 1), layout="kv", pool_dtype=torch.bfloat16)
    ok &= check((300, 64, 1, 777), init=torch.tensor([1.0, 0.0, 1.0, 0.0], device=BP.DEV))
    # more CTAs than SMs: varied lengths, an empty sequence, padding slots
    ln = [(i * 97) % 400 for i in range(80)]
    ok &= check(ln, slots=[-1 if i % 9 == 4 else i for i in range(80)])
    print("ALL OK" if ok else "SOME BAD", flush=True)

cases = os.environ.get("CASES", "8x4096,64x512,4x8192,1x4096,1x32768")
print("| case | pass | first kernel ms | state pass ms | GPU busy ms |")
print("|---|---|---|---|---|")
for _ in range(int(os.environ.get("ROUNDS", 2))):
    for case in cases.split(","):
        lengths = [int(case.split("x")[1])] * int(case.split("x")[0])
        x = BP.make_inputs(lengths, H, HV, K, V)
        for on in (False, True):
            set_head(on)
            call, _, _ = BP.gdn_candidate(x, True)
            busy, per = BP.gpu_time(call, 10)
            prep = sum(v for k, v in per.items() if "prep" in k)
            state = sum(v for k, v in per.items() if "state" in k)
            print(f"| {case} | {'head' if on else 'ws'} | {prep:.3f} | {state:.3f} | {busy:.3f} |", flush=True)
