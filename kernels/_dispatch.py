"""What the kernel files share: argument checks, the lazy ``numba.cuda`` import, launch shapes,
and the one branch between NumPy (Numba CPU twin) and CuPy (Numba CUDA kernel).

Each kernel file (``reparam.py``, ``gauss_kl.py``) holds three versions of every kernel:

* ``*_ref``   plain xp code, obviously correct: the oracle the tests compare against;
* ``*_cpu``   a Numba CPU twin (``@numba.njit``), run on NumPy arrays;
* ``*_cuda``  the launcher of a Numba CUDA kernel (its body is the plain function ``_*_kernel``),
  run on CuPy arrays on CuPy's current stream (and, in the tests, on NumPy host arrays under
  the CUDA simulator).

The public functions check their arguments with :func:`checked_arrays`, allocate the outputs with
``xp.empty_like`` / ``xp.empty(..., dtype=)`` (same dtype, same device) and call :func:`launch`,
the only place where the NumPy and CuPy paths part.
"""

from __future__ import annotations

import os

import numba
import numpy as np

from jmvae_cupy.backend import get_array_module

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The parallel CPU twins (im2col.py, batchnorm.py) run between BLAS calls: Numba's OpenMP
# threading layer keeps its threads spinning after each parallel region, which on a 2-core machine
# takes the cores from the OpenBLAS GEMM that follows (measured: bench/conv.py slower with the
# twins than without them; a batch-norm kernel 100x slower on a loaded machine).  The "workqueue"
# layer's threads sleep at once.  Process-wide, and only where the user has not chosen a layer
# (NUMBA_THREADING_LAYER); every kernel file imports this one, before the first parallel launch.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# Threads per block of the element-wise kernels: x runs along D (neighbouring threads touch
# neighbouring addresses of a C-contiguous (N, D) array: coalesced loads), y along N.
BLOCK_2D = (32, 8)


class KernelArgumentError(ValueError):
    """Raised when a kernel gets arrays of the wrong shape, dtype or namespace."""


def numba_cuda():
    """The ``numba.cuda`` module, imported on first use.

    Never import ``numba.cuda`` at module level in ``kernels/``: the CUDA simulator is chosen by
    ``NUMBA_ENABLE_CUDASIM=1`` once, when ``numba.cuda`` is first imported in a process, so the
    import must wait until a CUDA kernel is really wanted (and the simulator tests run in a
    process of their own).
    """
    from numba import cuda  # noqa: PLC0415  (lazy on purpose, see the docstring)

    return cuda


def float_array_module(where: str, a, ndim: int):
    """The namespace (NumPy or CuPy) of ``a``, after checking it is an ndim-D float32 / float64
    array of one of them; a KernelArgumentError naming ``where`` otherwise."""
    if not (hasattr(a, "dtype") and hasattr(a, "shape")):
        raise KernelArgumentError(f"{where}: expected a NumPy or CuPy array, got {type(a).__name__}")
    if a.ndim != ndim:
        raise KernelArgumentError(f"{where}: expected a {ndim}-D array, got shape {a.shape}")
    if a.dtype not in FLOAT_DTYPES:
        raise KernelArgumentError(f"{where}: dtype {a.dtype}, expected float32 or float64")
    return get_array_module(a)


def checked_arrays(where: str, named: dict, row_vectors: tuple = ()):
    """Check the arguments of one kernel call; return ``(xp, [arrays...])`` in the order given.

    named: {name: array}; every array is (N, D), except those named in ``row_vectors``, which
    are (N,).  All must live in one namespace (NumPy or CuPy) and share one dtype, float32 or
    float64.  The arrays come back C-contiguous (no copy when they already are), so that each
    kernel is compiled for one memory layout only.
    """
    arrays = list(named.values())
    xp = get_array_module(*arrays)
    shape = None
    dtype = None
    for name, a in named.items():
        if not (hasattr(a, "dtype") and hasattr(a, "shape")):
            raise KernelArgumentError(f"{where}: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
        if get_array_module(a) is not xp:
            raise KernelArgumentError(f"{where}: {name} lives on another device than the other arguments")
        if a.dtype not in FLOAT_DTYPES:
            raise KernelArgumentError(f"{where}: {name} has dtype {a.dtype}, expected float32 or float64")
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            raise KernelArgumentError(f"{where}: {name} has dtype {a.dtype}, the others {dtype}")
        want_ndim = 1 if name in row_vectors else 2
        if a.ndim != want_ndim:
            raise KernelArgumentError(f"{where}: {name} must be {want_ndim}-D, got shape {a.shape}")
        if shape is None and want_ndim == 2:
            shape = a.shape
    for name, a in named.items():
        want = (shape[0],) if name in row_vectors else shape
        if shape is not None and a.shape != want:
            raise KernelArgumentError(f"{where}: {name} has shape {a.shape}, expected {want}")
    return xp, [xp.ascontiguousarray(a) for a in arrays]


def grid_2d(n_rows: int, n_cols: int):
    """(blocks, threads) covering an (n_rows, n_cols) array with one thread per element."""
    bx, by = BLOCK_2D
    return ((n_cols + bx - 1) // bx, (n_rows + by - 1) // by), BLOCK_2D


def launch(xp, cpu_twin, cuda_launcher, arrays, scalars=()) -> None:
    """Run one kernel: ``cpu_twin(*arrays, *scalars)`` or ``cuda_launcher(*arrays, *scalars, stream=)``.

    arrays: the inputs, then the outputs the kernel writes in place; scalars: flags after them.

    NumPy arrays go to the Numba CPU twin.  CuPy arrays go to the CUDA launcher as zero-copy
    Numba views, queued on CuPy's current stream: no host round trip, no synchronisation.
    The stream comes through the CUDA Array Interface: CuPy (CAI v3, its default) exports its
    current stream with every array, and Numba attaches it to the view as ``.stream``.
    ``sync=False`` skips Numba's wait on that stream; none is needed, because the kernel runs
    on that very stream, after the work that produced its inputs (stream order).  (With
    CUPY_CUDA_ARRAY_INTERFACE_EXPORT_VERSION=2 no stream is exported and the kernel goes to the
    legacy default stream, which orders it after CuPy's blocking streams only.)  Numba uses the
    CUDA context CuPy has made current: the primary context of CuPy's current device.
    """
    if xp is np:
        cpu_twin(*arrays, *scalars)
        return
    cuda = numba_cuda()
    device_arrays = [cuda.as_cuda_array(a, sync=False) for a in arrays]
    stream = device_arrays[0].stream  # CuPy's current stream, as exported with the array
    cuda_launcher(*device_arrays, *scalars, stream=stream)
