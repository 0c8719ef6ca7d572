"""Backend-neutral pieces: probe, registry, reference, validation, launch helpers, portable Triton."""
