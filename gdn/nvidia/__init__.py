"""NVIDIA-only backends (CuTeDSL, Gluon)."""
