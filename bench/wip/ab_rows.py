"""The per-kernel timing table the wip A/B scripts print: prefill's first kernel, state pass and GPU busy time (ms) of
each variant, interleaved rounds over the cases in one process (bench_prefill.gpu_time: profiler time of 10 calls)."""
import importlib.util
import os

import bench_prefill as BP
import torch

H, HV, K, V = 16, 32, 128, 128


def print_rows(cases: str, variants, rounds: int):
    """cases "8x4096,64x512"; variants [(name, make_call(inputs) -> call)], each made and timed in turn per case."""
    print("| case | variant | first kernel ms | state pass ms | GPU busy ms |")
    print("|---|---|---|---|---|")
    for _ in range(rounds):
        for case in cases.split(","):
            n, length = (int(s) for s in case.split("x"))
            x = BP.make_inputs([length] * n, H, HV, K, V)
            for name, make_call in variants:
                busy, per = BP.gpu_time(make_call(x), 10)
                prep = sum(v for k, v in per.items() if "prep" in k)
                state = sum(v for k, v in per.items() if "state" in k)
                print(f"| {case} | {name} | {prep:.3f} | {state:.3f} | {busy:.3f} |", flush=True)


def outputs(x, variants: dict) -> dict:
    """{name: [o, state]} of one prefill call (raw gates) per variant; variants {name: select()}, select setting the
    variant's mode before its call is made."""
    out = {}
    for name, select in variants.items():
        select()
        call, _, res = BP.gdn_candidate(x, True)
        call()
        torch.cuda.synchronize()
        out[name] = [t.clone() for t in res()]
    return out


def load_file(name: str, path: str):
    """The Python module in file `path`, imported as `name` (not entered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def substitute_once(src: str, subs, name: str) -> str:
    """src with each (old, new) of subs applied, old matching exactly once (a probe must not silently miss the code
    it cuts); name labels the failure."""
    for a, b in subs:
        if src.count(a) != 1:
            raise SystemExit(f"{name}: {a!r} matches {src.count(a)} times")
        src = src.replace(a, b)
    return src


def scratch_module(src_path: str, name: str, subs) -> str:
    """Write bench/wip/_var_<name>.py (gitignored): the module at src_path with subs applied (substitute_once).
    Returns the file's path."""
    with open(src_path) as f:
        src = substitute_once(f.read(), subs, name)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"_var_{name}.py")
    with open(path, "w") as f:
        f.write(src)
    return path
