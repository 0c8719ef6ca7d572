"""CuTeDSL kernels for Hopper and Blackwell. Each module registers its ops."""
from gdn.common._autoload import import_submodules

import_submodules(__name__, __path__)
