"""AMD ROCm backends."""
