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


def cupyx_module():
    """CuPy's extras, ``cupyx`` (the selftest uses its synchronisation detection), if CuPy imports, else None."""
    if _import_cupy() is None:
        return None
    import cupyx  # noqa: PLC0415  (with cupy: imported here only)

    return cupyx


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


class _PinnedStaging:
    """Host -> device copies that do not make the host wait (GPU only).

    ``xp.asarray(host_array)`` copies from pageable memory, which blocks the host until the GPU
    has worked through everything queued before the copy.  Inside a training step (the noise of
    the reparameterisation, drawn on the host between the encoders and the decoders) that is a
    synchronisation point that stalls the CPU until the GPU catches up.  Here the array is first
    copied into a pinned (page-locked) host buffer, then copied to the device with
    ``ndarray.set(..., stream=)``: asynchronous, queued on CuPy's current stream, in stream order.

    The pinned buffer must not be reused before its copy has run: a ring of ``SLOTS`` buffers,
    each with the CUDA event recorded after its copy; a slot is reused only after its event (in
    practice long done: the copy was queued ``SLOTS`` draws earlier) and regrown when too small.
    Built on CuPy's ``cuda.alloc_pinned_memory``, ``ndarray.set(arr, stream)`` and ``Stream.record``;
    checked on a GPU by ``python -m jmvae_cupy.selftest --device gpu`` (its ``sync`` lines).
    """

    SLOTS = 8

    def __init__(self, cp):
        self.cp = cp
        self.slots = [None] * self.SLOTS  # [pinned memory, capacity in bytes, event or None]
        self.next = 0

    def copy(self, a):
        cp = self.cp
        a = np.ascontiguousarray(a)
        i, self.next = self.next, (self.next + 1) % self.SLOTS
        slot = self.slots[i]
        if slot is not None and slot[2] is not None:
            slot[2].synchronize()  # the copy that last used this buffer has run
        if slot is None or slot[1] < a.nbytes:
            slot = self.slots[i] = [cp.cuda.alloc_pinned_memory(max(a.nbytes, 1)), max(a.nbytes, 1), None]
        host = np.ndarray(a.shape, dtype=a.dtype, buffer=slot[0])  # a view of the pinned buffer
        host[...] = a
        out = cp.empty(a.shape, dtype=a.dtype)
        stream = cp.cuda.get_current_stream()
        out.set(host, stream=stream)  # asynchronous: pinned source, explicit stream
        slot[2] = stream.record()
        return out


_staging: dict = {}


def to_device_async(a, xp):
    """A host array ``a`` on ``xp``'s device without making the host wait for the GPU
    (:class:`_PinnedStaging`); on the CPU, ``a`` itself.  The result is ready in stream order."""
    if xp is np:
        return asnumpy(a)
    dev = xp.cuda.Device().id
    if dev not in _staging:
        _staging[dev] = _PinnedStaging(xp)
    return _staging[dev].copy(a)


def synchronize(xp) -> None:
    """Wait for queued GPU work (no-op on the CPU). For timing only, never inside a step."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()
