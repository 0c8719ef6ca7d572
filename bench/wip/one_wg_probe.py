"""Feasibility probe for a fused head pass split over two CTAs a (sequence, v-head): the head pass with ONE math
warpgroup per CTA (64 state columns, grid 2 N HV; bench/wip/_var_one_wg.py, written here from
_chunk_state_head_kernels.py by text substitution) beside the same scores warpgroup and loader. Its time says what
an SM sustains when it hosts one math warpgroup and one auxiliary warpgroup (scores here; the solve on the partner
CTA in the design). Outputs are the head pass's (bitwise).
H200, 2026-11-24: bench/results/prefill_h200_2026-11-24_probes.md.

    python bench/wip/one_wg_probe.py compile     (CPU: ptxas spill and injected waits)
    python bench/wip/one_wg_probe.py             (GPU: outputs against the head pass, then per-kernel times)
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "bench", "wip"))
sys.path.insert(0, os.path.join(ROOT, "tests", "nvidia"))
os.environ["GDN_CALL_PLANS"] = "0"

from gdn.nvidia.gluon import _common as C  # noqa: E402
from gdn.nvidia.gluon import chunk_state as GS  # noqa: E402
from ab_rows import load_file, outputs, print_rows, scratch_module  # noqa: E402

# The scratch kernel, made from the kernel module by text substitution (each piece must match exactly once)
_SUBS = [
    ("rq_s, bos, NCL, hv, hk, K: gl.constexpr, V: gl.constexpr, PDL: gl.constexpr):",
     "rq_s, bos, NCL, hv, hk, v0, K: gl.constexpr, V: gl.constexpr, PDL: gl.constexpr):"),
    ("nbytes: gl.constexpr = (2 * k_desc.block_type.nbytes + 2 * v_desc.block_type.nbytes",
     "nbytes: gl.constexpr = (2 * k_desc.block_type.nbytes + v_desc.block_type.nbytes"),
    ("""        tma.async_copy_global_to_shared(v_desc, [t0, hv * V], bar, v_s.index(2 * b))
        tma.async_copy_global_to_shared(v_desc, [t0, hv * V + HALF], bar, v_s.index(2 * b + 1))""",
     "        tma.async_copy_global_to_shared(v_desc, [t0, hv * V + v0], bar, v_s.index(b))"),
    ("""            zero_rows_past(v_s.index(2 * b), t0, eos, blk)
            zero_rows_past(v_s.index(2 * b + 1), t0, eos, blk)""",
     "            zero_rows_past(v_s.index(b), t0, eos, blk)"),
    ("has_init, n, hv, bos, eos, NC, slot, s_ps, s_ph, s_pk, s_pv, s_ot, s_oh, W: gl.constexpr, V: gl.constexpr):",
     "has_init, n, hv, bos, eos, NC, slot, s_ps, s_ph, s_pk, s_pv, s_ot, s_oh, v0, V: gl.constexpr):"),
    ("""    v0 = W * BV
    o_w = o_s.index(W)""", "    o_w = o_s.index(0)"),
    ("vt = v_s.index(2 * b + W).permute((1, 0)).load(mma)", "vt = v_s.index(b).permute((1, 0)).load(mma)"),
    ("n, hv, hk, _, bos, eos, NC, slot = _pass_of(gl.program_id(0), cu, state_indices, HV, G, 1, BT, V)",
     "n, hv, hk, v0, bos, eos, NC, slot = _pass_of(gl.program_id(0), cu, state_indices, HV, G, 2, BT, V // 2)"),
    ("v_s = gl.allocate_shared_memory(DT, [2 * STAGES, BT, BV], v_desc.layout)",
     "v_s = gl.allocate_shared_memory(DT, [STAGES, BT, BV], v_desc.layout)"),
    ("empty = barrier_ring(STAGES, 3)", "empty = barrier_ring(STAGES, 2)"),
    ("p_free = barrier_ring(RING, 2)", "p_free = barrier_ring(RING, 1)"),
    (  # (the second math warpgroup's entry)
        """        (_math, (ready, empty, p_ready, p_free, k_s, q_s, v_s, a_s, p_s, vec_s, o_s, o_desc, o, state, \
state_indices,
                 has_init, n, hv, bos, eos, NC, slot, s_ps, s_ph, s_pk, s_pv, s_ot, s_oh, 1, V)),
""", ""),
    ("s_ps, s_ph, s_pk, s_pv, s_ot, s_oh, 0, V)),", "s_ps, s_ph, s_pk, s_pv, s_ot, s_oh, v0, V)),"),
    ("rk_s, rq_s, bos, NCL, hv, hk, K, V, PDL)),", "rk_s, rq_s, bos, NCL, hv, hk, v0, K, V, PDL)),"),
    ("], [4, 4, 1], [192, 104, 24])", "], [4, 1], [152, 24])"),
]
ONE = load_file("_var_one_wg", scratch_module(
    os.path.join(ROOT, "gdn", "nvidia", "gluon", "_chunk_state_head_kernels.py"), "one_wg", _SUBS))
_orig = GS._launch_head
MODE = {"one": False}


def _launch_one(k, w, u, q, g_cum, state, state_indices, cu_seqlens, has_initial_state, out, scale, use_qk_l2norm,
                state_layout, cfg, rk, rq, pdl):
    if not MODE["one"]:
        return _orig(k, w, u, q, g_cum, state, state_indices, cu_seqlens, has_initial_state, out, scale,
                     use_qk_l2norm, state_layout, cfg, rk, rq, pdl)
    H, K = k.shape[1:]
    HV, V = u.shape[1], u.shape[2]
    o_desc = C.head_matrix(out, C.BT, V // 2)
    C.launch(ONE.chunk_state_output_head_sm90, (max(cu_seqlens.shape[0] - 1, 0) * HV * 2,),
             C.head_matrix(k, C.BT), C.head_matrix(q, C.BT), C.head_matrix(u, C.BT, V // 2), C.head_matrix(w, C.BT),
             GS.gcum_desc(g_cum), None if rk is None else GS.gcum_desc(rk), None if rq is None else GS.gcum_desc(rq),
             state, state_indices, cu_seqlens, has_initial_state, out, o_desc, HV, HV // H, float(scale),
             *GS.TS.pool_strides(state, state_layout), *out.stride()[:2], V=V, L2NORM=bool(use_qk_l2norm),
             STAGES=cfg["STAGES"], RING=cfg["RING"], PDL=pdl, num_warps=4, maxnreg=168, pdl=pdl)


GS._launch_head = _launch_one

if sys.argv[1:] == ["compile"]:
    import test_gluon_compile as TG
    MODE["one"] = True
    for name, launch in GS._fused_example_launches("sm_90"):
        if ",head" in name and "bfloat16" in name:
            ck = C.compile_launch(launch, "sm_90")
            info = TG._ptxas_info(ck)
            print(name, "spill", TG._spill_bytes(info), "waits", TG._injected_waits(info))
    sys.exit(0)

import bench_prefill as BP  # noqa: E402
import torch  # noqa: E402

H, HV, K, V = 16, 32, 128, 128
x = BP.make_inputs([300, 64, 1, 777] * 20, H, HV, K, V, seed=3)
outs = outputs(x, {one: (lambda one=one: MODE.update(one=one)) for one in (False, True)})
print("one math warpgroup a CTA: outputs bitwise equal to the head pass:",
      all(torch.equal(a, b) for a, b in zip(outs[False], outs[True])), flush=True)


def variant(one):
    def make(x):
        MODE["one"] = one
        return BP.gdn_candidate(x, True)[0]
    return make


print_rows(os.environ.get("CASES", "8x4096,64x512,16x2048"), [("head pass", variant(False)),
                                                              ("one math WG a CTA", variant(True))],
           int(os.environ.get("ROUNDS", 2)))
