"""Portable Triton chunked prefill: one sub-op per module (chunk_cumsum, chunk_kkt_solve, chunk_wy,
chunk_state, chunk_output) and `prefill`, which fuses them into two or three launches."""
from gdn.common._autoload import import_submodules

import_submodules(__name__, __path__)
