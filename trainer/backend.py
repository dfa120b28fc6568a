"""Array backend: CuPy on a GPU when one is usable, NumPy otherwise.

Every layer is written against an ``xp`` module (``numpy`` or ``cupy``) so the
same code runs on both. This is the only module that imports cupy: the rest of
the trainer asks here for the module and for host copies, which keeps the CPU
install free of any CUDA dependency.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from datakit.errors import ConfigError

_cupy: ModuleType | None = None
_cupy_checked = False
_cupy_reason = ""


def _load_cupy() -> ModuleType | None:
    """Import cupy once and check that a CUDA device is visible."""
    global _cupy, _cupy_checked, _cupy_reason
    if _cupy_checked:
        return _cupy
    _cupy_checked = True
    try:
        import cupy  # noqa: PLC0415 - the only import of cupy in the project
    except Exception as err:  # ImportError, or a broken CUDA install raising at import
        _cupy_reason = f"CuPy is not importable ({type(err).__name__}: {err})"
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        _cupy_reason = f"CuPy sees no CUDA device ({type(err).__name__}: {err})"
        return None
    if count < 1:
        _cupy_reason = "CuPy sees no CUDA device"
        return None
    _cupy = cupy
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    return _load_cupy() is not None


def gpu_unavailable_reason() -> str:
    """Why the GPU backend cannot be used ('' when it can)."""
    _load_cupy()
    return _cupy_reason


def cupy_module() -> ModuleType:
    """The cupy module; raises ConfigError when no GPU is usable."""
    cp = _load_cupy()
    if cp is None:
        raise ConfigError(f"--device gpu was asked for but {_cupy_reason}; use --device cpu")
    return cp


def select(device: str = "auto", gpu_id: int = 0) -> ModuleType:
    """The array module for ``--device gpu|cpu|auto`` and ``--gpu ID``.

    ``auto`` takes the GPU when CuPy works and a device is visible, else NumPy.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"--device must be auto, cpu or gpu, not {device!r}")
    if device == "cpu":
        return np
    if device == "auto" and not gpu_available():
        return np
    cp = cupy_module()
    count = cp.cuda.runtime.getDeviceCount()
    if not 0 <= gpu_id < count:
        raise ConfigError(f"--gpu {gpu_id}: only {count} CUDA device(s) visible (ids 0..{count - 1})")
    cp.cuda.Device(gpu_id).use()
    return cp


def get_array_module(arr: Any) -> ModuleType:
    """numpy or cupy, whichever owns ``arr`` (Chainer's get_array_module)."""
    if isinstance(arr, np.ndarray) or _cupy is None:
        return np
    return _cupy.get_array_module(arr)


def to_host(arr: Any) -> np.ndarray:
    """A NumPy copy (or the array itself when it already lives on the host)."""
    if isinstance(arr, np.ndarray):
        return arr
    if _cupy is not None and isinstance(arr, _cupy.ndarray):
        return _cupy.asnumpy(arr)
    return np.asarray(arr)


def synchronize(xp: ModuleType) -> None:
    """Wait for queued device work (for timing); a no-op on NumPy."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def device_name(xp: ModuleType) -> str:
    """A short human name of where arrays live, for logs."""
    if xp is np:
        return "CPU (NumPy)"
    dev = xp.cuda.Device()
    try:
        props = xp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:
        name = "CUDA device"
    return f"GPU {dev.id} ({name}, CuPy)"
