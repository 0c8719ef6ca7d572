"""Static SASS of the head pass (CPU compile of chunk_state.py's ",head" example launches): instruction count and the
counts of the opcodes named, to compare a change in the kernel module (spill: tests/nvidia/test_gluon_compile.py).

    python bench/wip/head_sass.py [opcode ...]
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from gdn.nvidia.gluon import _common as C  # noqa: E402
from gdn.nvidia.gluon import chunk_state as GS  # noqa: E402

import triton  # noqa: E402

nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")
for name, launch in GS._fused_example_launches("sm_90"):
    if "head" not in name or "bfloat16" not in name:
        continue
    ck = C.compile_launch(launch, "sm_90")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(ck.asm["cubin"])
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True).stdout
    # (an instruction line: its address comment, an optional predicate, the opcode)
    ops = collections.Counter(m.group(1).split(".")[0]
                              for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass))
    print(name, "instructions", sum(ops.values()))
    for op in sys.argv[1:]:
        print("  ", op, ops.get(op, 0))
