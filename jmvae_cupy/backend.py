"""The one place that chooses NumPy or CuPy.

Every other module receives arrays and asks ``get_array_module(a)`` which namespace
(``xp``) they live in; no module but this one imports cupy.  The choice of device:

* ``select_device("cpu")`` -> NumPy, ``select_device("gpu")`` -> CuPy (error if unusable),
* ``select_device("auto")`` (the default) -> CuPy when a CUDA device is usable, else NumPy,
* the environment variable ``JMVAE_DEVICE`` (cpu|gpu|auto) sets the default.

Precision: float32 by default, float64 on request (gradient checks, teaching).
"""

from __future__ import annotations

import os

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}
DEVICES = ("auto", "cpu", "gpu")


class BackendError(RuntimeError):
    """Raised when the requested device or dtype cannot be used."""


_cupy_module = None
_cupy_checked = False


def _import_cupy():
    """Import cupy once; return the module or None when it is not installed."""
    global _cupy_module, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: PLC0415  (the only cupy import in the library)

            _cupy_module = cupy
        except Exception:  # ImportError, or a broken CUDA install
            _cupy_module = None
    return _cupy_module


def cupy_module():
    """The cupy module if it imports (even without a GPU), else None."""
    return _import_cupy()


def gpu_available() -> bool:
    """True when CuPy imports and a CUDA device is usable."""
    cp = _import_cupy()
    if cp is None:
        return False
    try:
        return bool(cp.is_available())
    except Exception:
        return False


def select_device(device: str | None = None):
    """Return the array namespace (numpy or cupy) for ``device``.

    device: "cpu", "gpu" or "auto"; None reads ``JMVAE_DEVICE`` (default "auto").
    """
    if device is None:
        device = os.environ.get("JMVAE_DEVICE", "auto")
    device = device.lower()
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return np
    if gpu_available():
        return _import_cupy()
    if device == "gpu":
        raise BackendError("device 'gpu' requested but no usable CUDA device / CuPy install was found")
    return np


def device_name(xp) -> str:
    """A human-readable name of the device ``xp`` computes on."""
    if xp is np:
        return "cpu"
    dev = xp.cuda.Device()
    props = xp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"]
    return f"gpu:{dev.id} ({name.decode() if isinstance(name, bytes) else name})"


def get_dtype(name) -> np.dtype:
    """'float32' / 'float64' (or a numpy dtype) -> numpy dtype."""
    if isinstance(name, str):
        if name not in DTYPES:
            raise BackendError(f"unknown dtype {name!r}: choose float32 or float64")
        return np.dtype(DTYPES[name])
    dt = np.dtype(name)
    if dt not in (np.float32, np.float64):
        raise BackendError(f"unsupported dtype {dt}: choose float32 or float64")
    return dt


def get_array_module(*arrays):
    """numpy or cupy, whichever the arrays live in (numpy for host arrays and scalars)."""
    cp = _cupy_module if _cupy_checked else None
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    elif not _cupy_checked:
        for a in arrays:
            if type(a).__module__.startswith("cupy"):
                return _import_cupy()
    return np


def is_gpu_array(a) -> bool:
    return get_array_module(a) is not np


def asnumpy(a):
    """A host (NumPy) copy of ``a``; NumPy arrays are returned unchanged."""
    if is_gpu_array(a):
        return a.get()
    return np.asarray(a)


def to_device(a, xp, dtype=None):
    """``a`` as an array of namespace ``xp`` (copying to / from the GPU as needed)."""
    if xp is np:
        out = asnumpy(a)
        return out if dtype is None else out.astype(dtype, copy=False)
    return xp.asarray(a, dtype=dtype)


def synchronize(xp) -> None:
    """Wait for queued GPU work (no-op on the CPU). For timing only, never inside a step."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()
