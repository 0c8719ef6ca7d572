"""Portable Triton kernels (NVIDIA, AMD, and CPU via TRITON_INTERPRET=1). Each module registers its ops."""
from gdn.common._autoload import import_submodules
from gdn.common.triton import _interpreter

_interpreter.apply()

import_submodules(__name__, __path__)
