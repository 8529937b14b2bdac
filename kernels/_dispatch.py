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

Launch grids.  CUDA allows at most 2**31 - 1 blocks along grid x, 65,535 along y and along z, and
1,024 threads per block (at most 1,024 along block x and y, 64 along z), on every compute
capability Numba supports; the CUDA simulator checks none of this, so the kernel tests alone
would not notice a grid that a GPU refuses.  The grids come from the helpers here:

* :func:`grid_2d`: one thread per element of an (n_rows, n_cols) array, columns on x, rows on y
  (8 rows per block): rows beyond 8 * 65,535 = 524,280 do not fit, so it is for kernels whose rows
  are a batch (no loop over rows in the kernel);
* :func:`strided_grid` / :func:`grid_2d_strided`: the large extents on y and z capped at
  ``GRID_YZ_CAP`` blocks; the kernel loops over the rest (a grid-stride loop,
  ``range(start, n, cuda.gridsize(k)[axis])``), so any size fits.  The tests lower
  ``GRID_YZ_CAP`` (a module constant, read at every launch) to make small simulator-sized arrays
  take several strides.

Both pass their result through :func:`check_launch`, which raises :class:`LaunchGridError` for a
grid or block beyond the limits (or an empty one), before anything reaches the driver.

Warnings.  numba-cuda warns (``NumbaPerformanceWarning: Grid size ... will likely result in GPU
under-utilization due to low occupancy``) at every launch of fewer than 128 blocks: many of ours
(the dense layers' bias + ReLU at small batches, the bias column sums, per-sample reductions),
which on a GPU run would print dozens of lines into the progress bar.  :func:`launch` switches
that one warning off for the duration of the package's own launches only
(:func:`low_occupancy_warnings_off`: numba's ``CUDA_LOW_OCCUPANCY_WARNINGS`` set to 0 and
restored, under a lock).  The user's setting (NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS) and warnings
filters are left alone, and so are the user's own kernels (but for one launched from another
thread during one of ours).  A warnings filter scoped to the launch was not used:
``warnings.catch_warnings`` resets every module's record of the warnings already shown, so a
warning meant to be shown once would come back after each of our launches.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

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

# CUDA's launch limits (all compute capabilities Numba supports): blocks per grid along x, y, z;
# threads per block along x, y, z, and in all.
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024

# The most blocks the strided grids put along y and z (the kernels loop over the rest).  The
# hardware limit; read at each launch, so that the tests can lower it (monkeypatch).
GRID_YZ_CAP = MAX_GRID[1]


class KernelArgumentError(ValueError):
    """Raised when a kernel gets arrays of the wrong shape, dtype or namespace."""


class LaunchGridError(ValueError):
    """Raised when a CUDA launch grid or block would exceed CUDA's limits (see the module docstring)."""


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


def _triple(dims, fill: int = 1):
    """A grid or block as a 3-tuple of ints: (x,), (x, y) or (x, y, z), missing ones = 1."""
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    if not 1 <= len(dims) <= 3:
        raise LaunchGridError(f"a launch grid or block has 1 to 3 dimensions, got {dims}")
    return tuple(int(d) for d in dims) + (fill,) * (3 - len(dims))


def check_launch(blocks, threads):
    """Return (blocks, threads) unchanged after checking them against CUDA's limits.

    blocks: blocks per grid, threads: threads per block, each an int or a 1- to 3-tuple.  Raises
    LaunchGridError, naming the axis and the limit, for a grid with more than 2**31 - 1 blocks
    along x or 65,535 along y or z, a block with more than 1,024 threads (1,024 along x or y, 64
    along z), or a zero extent (an empty array must not be launched at all).
    """
    grid, block = _triple(blocks), _triple(threads)
    for axis, n, limit in zip("xyz", grid, MAX_GRID):
        if not 1 <= n <= limit:
            raise LaunchGridError(f"CUDA launch grid {grid}: {n} blocks along {axis}, the limit is 1 .. {limit}")
    for axis, n, limit in zip("xyz", block, MAX_BLOCK):
        if not 1 <= n <= limit:
            raise LaunchGridError(f"CUDA launch block {block}: {n} threads along {axis}, the limit is 1 .. {limit}")
    if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
        raise LaunchGridError(f"CUDA launch block {block}: more than {MAX_THREADS_PER_BLOCK} threads per block")
    return blocks, threads


def grid_2d(n_rows: int, n_cols: int):
    """(blocks, threads) covering an (n_rows, n_cols) array with one thread per element: columns on
    grid x, rows on grid y, block BLOCK_2D (32 x 8).  No loop in the kernel, so rows are limited
    to 8 * 65,535 = 524,280 (LaunchGridError beyond): for rows that are a batch.  Arrays of any
    size: :func:`grid_2d_strided`."""
    bx, by = BLOCK_2D
    return check_launch(((n_cols + bx - 1) // bx, (n_rows + by - 1) // by), BLOCK_2D)


def strided_grid(extents, block):
    """(blocks, block) for a grid-stride kernel over ``extents`` threads along (x[, y[, z]]).

    x gets every block it needs (ceil(nx / bx), up to 2**31 - 1); y and z at most
    ``GRID_YZ_CAP`` blocks each, so the kernel must loop along y and z:
    ``for j in range(j0, ny, cuda.gridsize(k)[1])`` (and the same along z).
    """
    extents, block = tuple(extents), tuple(block)
    if len(extents) != len(block):
        raise LaunchGridError(f"extents {extents} and block {block} have different dimensions")
    cap = GRID_YZ_CAP
    blocks = tuple((n + b - 1) // b if axis == 0 else min((n + b - 1) // b, cap)
                   for axis, (n, b) in enumerate(zip(extents, block)))
    return check_launch(blocks, block)


def grid_2d_strided(n_rows: int, n_cols: int):
    """(blocks, threads) for an (n_rows, n_cols) array of any size: columns on grid x, rows on grid
    y capped at ``GRID_YZ_CAP`` blocks of 8 rows; the kernel loops over its rows with the stride
    ``cuda.gridsize(2)[1]``."""
    return strided_grid((n_cols, n_rows), BLOCK_2D)


# numba-cuda reads CUDA_LOW_OCCUPANCY_WARNINGS from its config module when a launch is configured
# (``kernel[blocks, threads, stream]``): numba.config, or numba.cuda.core.config where that is a
# module of its own.  The lock makes the save / set / restore atomic across threads.
_LOW_OCCUPANCY_LOCK = threading.RLock()


def _numba_cuda_configs():
    """The config modules the CUDA launcher may read CUDA_LOW_OCCUPANCY_WARNINGS from, each once."""
    candidates = (numba.config, getattr(sys.modules.get("numba.cuda.dispatcher"), "config", None),
                  sys.modules.get("numba.cuda.core.config"))
    configs = []
    for c in candidates:
        if c is not None and hasattr(c, "CUDA_LOW_OCCUPANCY_WARNINGS") and all(c is not k for k in configs):
            configs.append(c)
    return configs


@contextlib.contextmanager
def low_occupancy_warnings_off():
    """numba-cuda's low-occupancy warning off inside the block, the previous setting back after."""
    with _LOW_OCCUPANCY_LOCK:
        configs = _numba_cuda_configs()
        saved = [c.CUDA_LOW_OCCUPANCY_WARNINGS for c in configs]
        for c in configs:
            c.CUDA_LOW_OCCUPANCY_WARNINGS = 0
        try:
            yield
        finally:
            for c, value in zip(configs, saved):
                c.CUDA_LOW_OCCUPANCY_WARNINGS = value


def launch(xp, cpu_twin, cuda_launcher, arrays, scalars=(), cuda_scratch=()) -> None:
    """Run one kernel: ``cpu_twin(*arrays, *scalars)`` or
    ``cuda_launcher(*arrays, *scratch, *scalars, stream=)``.

    arrays: the inputs, then the outputs the kernel writes in place; scalars: flags after them;
    cuda_scratch: ``(shape, dtype)`` of work buffers only the CUDA kernel needs (per-block partial
    sums), allocated here with ``xp.empty`` from CuPy's pool on the CUDA path only.  They are
    released when this returns, while the kernel may still run: safe, because CuPy's pool hands a
    freed block only to later allocations on the same stream, which run after the kernel.

    NumPy arrays go to the Numba CPU twin.  CuPy arrays go to the CUDA launcher as zero-copy
    Numba views, queued on CuPy's current stream: no host round trip, no synchronisation.
    The stream comes through the CUDA Array Interface: CuPy (CAI v3, its default) exports its
    current stream with every array, and Numba attaches it to the view as ``.stream``.
    ``sync=False`` skips Numba's wait on that stream; none is needed, because the kernel runs
    on that very stream, after the work that produced its inputs (stream order).  (With
    CUPY_CUDA_ARRAY_INTERFACE_EXPORT_VERSION=2 no stream is exported and the kernel goes to the
    legacy default stream, which orders it after CuPy's blocking streams only.)  Numba uses the
    CUDA context CuPy has made current: the primary context of CuPy's current device.
    The launch runs inside :func:`low_occupancy_warnings_off` (see the module docstring).
    """
    if xp is np:
        cpu_twin(*arrays, *scalars)
        return
    cuda = numba_cuda()
    scratch = [xp.empty(shape, dtype=dtype) for shape, dtype in cuda_scratch]
    device_arrays = [cuda.as_cuda_array(a, sync=False) for a in (*arrays, *scratch)]
    stream = device_arrays[0].stream  # CuPy's current stream, as exported with the array
    with low_occupancy_warnings_off():
        cuda_launcher(*device_arrays, *scalars, stream=stream)
