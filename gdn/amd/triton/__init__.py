"""ROCm decode path (wave64-tuned Triton), registered first for gfx942 and gfx950. Each module registers its ops."""
from gdn.common._autoload import import_submodules

import_submodules(__name__, __path__)
