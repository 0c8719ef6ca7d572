"""ROCm decode path (wave64-tuned Triton), registered first for gfx942 and gfx950. Each module registers its ops."""
from gdn.common._autoload import import_submodules

# What `gdn info` says of every kernel here: no AMD GPU has been available to run them.
VALIDATION_NOTE = ("; numerics checked on an H100 (sm_90) running this same Triton source with the gfx942/gfx950 "
                   "config tables (tests/gpu/test_edge_ops_gpu.py); no AMD GPU was available, so gfx942/gfx950 "
                   "are compile-only")

import_submodules(__name__, __path__)
