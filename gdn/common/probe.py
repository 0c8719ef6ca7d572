"""Hardware and software probe.

`device_info(device)` answers, for one torch device: vendor ("nvidia" | "amd" | "cpu"), arch
("sm_90", "sm_100", "gfx942", "gfx950", "cpu", ...), SM/CU count, L2 size, and the versions of the
packages gdn can use. Nothing runs at import time; results are cached per device. `GDN_ARCH` overrides
the detected arch (the vendor follows the arch), which is how compile-only archs are inspected on a
machine that lacks them.

`env(name)` reads gdn's environment variables once per process (the dispatch hot path reads several per
call, at ~1-2 us each through os.environ); `reload_env()` makes a changed environment count.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field

import torch

KNOWN_ARCHS = ("sm_80", "sm_90", "sm_100", "gfx942", "gfx950", "cpu")


def vendor_of(arch: str) -> str:
    if arch.startswith("sm_"):
        return "nvidia"
    if arch.startswith("gfx"):
        return "amd"
    return "cpu"


@dataclass(frozen=True)
class DeviceInfo:
    device_type: str          # "cuda" (NVIDIA and ROCm both) or "cpu": where tensors live
    vendor: str               # "nvidia" | "amd" | "cpu" (of `arch`, so GDN_ARCH can pretend)
    arch: str
    name: str
    multiprocessors: int      # SMs (NVIDIA) or CUs (AMD); CPU cores on cpu
    l2_bytes: int
    arch_overridden: bool = False
    versions: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def interpreter(self) -> bool:
        return interpreter_on()


_ENV: dict[str, str | None] = {}


def env(name: str) -> str | None:
    """os.environ.get(name), read on first use and then cached until `reload_env()`."""
    try:
        return _ENV[name]
    except KeyError:
        value = _ENV[name] = os.environ.get(name)
        return value


_ON_RELOAD: list = []       # caches derived from env() (e.g. launch.pdl_ok), cleared with it
_ON_DISPATCH: list = []     # told when a dispatch choice may change (launch.bump_version: call plans)


def reload_env() -> None:
    """Forget the cached reads of `env()` and what was derived from them: call after changing GDN_* /
    TRITON_INTERPRET in this process (registry.clear_cache() calls it)."""
    _ENV.clear()
    for clear in _ON_RELOAD:
        clear()
    dispatch_changed()


def dispatch_changed() -> None:
    """The environment or the registry changed: what was cached from a dispatch choice is stale."""
    for f in _ON_DISPATCH:
        f()


@contextlib.contextmanager
def env_switched(name: str, value: str):
    """os.environ[name] = value inside (the cached reads re-read), restored after: for benchmarks and tests
    that compare a launch choice made from the environment (GDN_PDL, GDN_DECODE_PREFETCH). Choices are made
    when a call runs, so warm-up and CUDA-graph capture of the calls to compare must happen inside."""
    saved = os.environ.get(name)
    os.environ[name] = value
    reload_env()
    try:
        yield
    finally:
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved
        reload_env()


def interpreter_on() -> bool:
    return env("TRITON_INTERPRET") not in (None, "", "0")


@functools.lru_cache(maxsize=None)
def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def unimportable(modules) -> list[str]:
    """`modules` that fail to import here, each as "name: error" (benchmarks' --require-peers: a peer bundle
    that did not load must stop a run before it times anything, not leave a table without peers)."""
    bad = []
    for mod in modules:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 (reported)
            bad.append(f"{mod}: {type(e).__name__}: {str(e)[:120]}")
    return bad


@functools.lru_cache(maxsize=None)
def gluon_available() -> bool:
    try:
        return importlib.util.find_spec("triton.experimental.gluon") is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=None)
def cutedsl_available() -> bool:
    try:
        return importlib.util.find_spec("cutlass") is not None and importlib.util.find_spec("cutlass.cute") is not None
    except (ImportError, ValueError):
        return False


def versions() -> dict:
    return {
        "torch": torch.__version__,
        "triton": package_version("triton") or package_version("pytorch-triton-rocm"),
        "gluon": gluon_available(),
        "nvidia-cutlass-dsl": package_version("nvidia-cutlass-dsl") or ("present" if cutedsl_available() else None),
        "fla-core": package_version("fla-core"),
        "flashinfer-python": package_version("flashinfer-python"),
        "triton_interpret": interpreter_on(),
    }


def _detect(device: torch.device) -> tuple[str, str, str, int, int]:
    if device.type == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(device)
        if torch.version.hip is not None:
            arch = p.gcnArchName.split(":")[0]
            return "cuda", arch, p.name, p.multi_processor_count, int(getattr(p, "L2_cache_size", 0))
        return "cuda", f"sm_{p.major}{p.minor}", p.name, p.multi_processor_count, int(getattr(p, "L2_cache_size", 0))
    return "cpu", "cpu", "cpu", os.cpu_count() or 1, 0


@functools.lru_cache(maxsize=None)
def _device_info(device_type: str, index: int | None, arch_env: str | None) -> DeviceInfo:
    dev = torch.device(device_type, index) if index is not None else torch.device(device_type)
    dtype_, arch, name, mp, l2 = _detect(dev)
    overridden = False
    if arch_env:
        arch, overridden = arch_env, arch_env != arch
    return DeviceInfo(dtype_, vendor_of(arch), arch, name, mp, l2, overridden, versions())


def hardware_arch(device: torch.device | str | None = None) -> str:
    """The device's own arch, GDN_ARCH ignored: what a kernel launched on it must be compiled for."""
    info = device_info(device)
    if not info.arch_overridden:
        return info.arch
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    return _device_info(device.type, device.index, None).arch


def device_info(device: torch.device | str | None = None) -> DeviceInfo:
    """DeviceInfo of `device` (default: the current CUDA device if any, else cpu)."""
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return _device_info(device.type, device.index, env("GDN_ARCH") or None)
