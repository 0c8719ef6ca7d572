"""Stall reasons and executed instructions of one address range (a partition's loop) of the warp-specialised
pass, from `ncu --page source --csv --print-source sass` output (bench/wip/pass_ncu.sh).
Usage: python ncu_loop_stalls.py src.csv 0xLOOP_START 0xLOOP_END (addresses as ncu prints them)."""
import csv, sys, re, collections
fn, lo, hi = sys.argv[1], int(sys.argv[2], 16), int(sys.argv[3], 16)
rows = list(csv.reader(open(fn)))
k = None; hdr = None; data = []
for r in rows:
    if len(r) >= 2 and r[0] == "Kernel Name": k = r[1]; continue
    if r and r[0] == "Address": hdr = r; continue
    if k and "chunk_state" in k and hdr and len(r) == len(hdr): data.append(dict(zip(hdr, r)))
sel = [d for d in data if lo <= int(d["Address"], 16) <= hi]
cols = [c for c in hdr if c.startswith("stall_") and "Not Issued" not in c]
agg = {c: sum(float(d[c] or 0) for d in sel) for c in cols}
tot = sum(agg.values())
print("samples", tot, "instr", sum(int(d["Instructions Executed"] or 0) for d in sel))
for c, v in sorted(agg.items(), key=lambda x: -x[1])[:8]: print(f"  {c:28s} {v:8.0f} {100*v/tot:5.1f}%")
top = sorted(sel, key=lambda d: -int(d["Warp Stall Sampling (All Samples)"] or 0))[:25]
for d in top:
    st = sorted(((c, float(d[c] or 0)) for c in cols), key=lambda x: -x[1])[:2]
    print(f"  {d['Address'][-5:]} {int(d['Warp Stall Sampling (All Samples)']):5d} ex {int(d['Instructions Executed']):8d} {d['Source'][:60]:60s} {st}")
