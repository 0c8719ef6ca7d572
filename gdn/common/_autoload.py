"""Import every module of a backend package so each registers its implementations."""
from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str, package_path) -> None:
    for mod in pkgutil.iter_modules(package_path):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{package_name}.{mod.name}")
