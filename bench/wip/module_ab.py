"""A kernel module at a git revision (OLD, default HEAD) against the working tree's: prefill's per-kernel GPU time,
interleaved rounds in one process, after comparing both versions' outputs (they should be bitwise equal unless the
change alters numerics). The launcher must import the kernel at call time (as chunk_state.py's do).

    MODULE=gdn.nvidia.gluon._chunk_state_head_kernels OLD=HEAD python bench/wip/module_ab.py
    (GPU; CASES=8x4096,...; ROUNDS=3). The GPU machine's copy has no .git: write the old version here first
    (git show HEAD:gdn/nvidia/gluon/_chunk_state_head_kernels.py > bench/wip/_old_module.py) and carry that file.
    EXTRA="name=path,..." times more versions of the module beside them (scratch files, e.g. scores_probe.py's).
"""
import importlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
os.environ["GDN_CALL_PLANS"] = "0"

import bench_prefill as BP  # noqa: E402
from ab_rows import load_file, outputs, print_rows  # noqa: E402
import torch  # noqa: E402

H, HV, K, V = 16, 32, 128, 128
MOD = os.environ.get("MODULE", "gdn.nvidia.gluon._chunk_state_head_kernels")
path = MOD.replace(".", "/") + ".py"
old_file = os.path.join(ROOT, "bench", "wip", "_old_module.py")
if os.path.isdir(os.path.join(ROOT, ".git")):     # (the GPU machine's copy has no .git: write it here first)
    old_src = subprocess.run(["git", "show", f"{os.environ.get('OLD', 'HEAD')}:{path}"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    with open(old_file, "w") as f:
        f.write(old_src)
VERS = {"old": load_file("_old_module", old_file), "new": importlib.import_module(MOD)}
# EXTRA="name=path,...": more versions of the module (scratch files beside it), timed with these two
for spec in filter(None, os.environ.get("EXTRA", "").split(",")):
    name, _, file = spec.partition("=")
    VERS[name] = load_file("_" + name, os.path.join(ROOT, file))


def use(which):
    sys.modules[MOD] = VERS[which]


x = BP.make_inputs([300, 64, 1, 777], H, HV, K, V, seed=3)
outs = outputs(x, {which: (lambda which=which: use(which)) for which in VERS})
o_ref, s_ref = BP.recurrence64(x, [300, 64, 1, 777])
for which in VERS:
    print(f"{which}: bitwise equal to old:", all(torch.equal(a, b) for a, b in zip(outs["old"], outs[which])),
          "| max |o| diff", (outs["old"][0].float() - outs[which][0].float()).abs().max().item(),
          f"| vs float64: o {BP.rel(outs[which][0], o_ref):.3e} st {BP.rel(outs[which][1], s_ref):.3e}", flush=True)


def variant(which):
    def make(x):
        use(which)
        return BP.gdn_candidate(x, True)[0]
    return make


print_rows(os.environ.get("CASES", "8x4096,64x512,16x2048"), [(w, variant(w)) for w in VERS],
           int(os.environ.get("ROUNDS", 3)))
