"""gdn: Gated DeltaNet kernels for NVIDIA and AMD GPUs, one registry, one API (`gdn.ops`)."""
__version__ = "0.1.0"


def __getattr__(name):
    # `gdn.ops` loads lazily: importing gdn stays cheap and never probes hardware.
    if name in ("ops", "layers", "integrations"):
        import importlib
        return importlib.import_module(f"gdn.{name}")
    raise AttributeError(f"module 'gdn' has no attribute {name!r}")
