"""The bias-add + ReLU epilogue of a dense layer, y = max(x W + b, 0), and its backward, as fused
kernels.  Shapes: N batch, D features; the GEMM output u = x W (N, D), b (D,), y and dy (N, D).

Public API (dispatch on the array namespace: NumPy -> Numba CPU twin, CuPy -> Numba CUDA kernel
on CuPy's current stream):

* ``bias_relu_forward(u, b) -> y``: y = max(u + b, 0), **in place on u** (u is the fresh GEMM
  output, owned by the caller); one pass instead of three (``u += b``, the mask ``u > 0``, the
  product ``u * mask``) and no temporaries;
* ``bias_relu_backward(dy, y) -> (du, db)``: du = dy * [y > 0] (N, D), a new array, and
  db = sum_n du (D,), in one pass.

[y > 0] = [u + b > 0]: the output is the mask (the subgradient 0 at the kink, as
``layers.activations.relu_backward``).  Plain-xp oracles: ``bias_relu_forward_ref`` /
``bias_relu_backward_ref``.  Derivation: docs/derivations/dense.md (``dense_relu_backward``).
Checked by tests/kernels/test_bias_relu.py.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numba

from jmvae_cupy.backend import get_array_module

from ._dispatch import FLOAT_DTYPES, KernelArgumentError, grid_2d, launch, numba_cuda

# Threads per block of the 1-D CUDA backward kernel (one thread per column).
COLUMN_THREADS = 128

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check(where, a, row):
    """a (N, D) and row (D,): one namespace, one float dtype, C-contiguous a; returns xp."""
    xp = get_array_module(a, row)
    if a.ndim != 2 or row.ndim != 1 or row.shape[0] != a.shape[1]:
        raise KernelArgumentError(f"{where}: shapes {a.shape} and {row.shape} are not (N, D) and (D,)")
    if a.dtype not in FLOAT_DTYPES or row.dtype != a.dtype:
        raise KernelArgumentError(f"{where}: dtypes {a.dtype} and {row.dtype}, expected one of float32, float64")
    return xp


def bias_relu_forward(u, b):
    """y = max(u + b, 0), in place on u (N, D) (C-contiguous); b (D,).  Returns u."""
    xp = _check("bias_relu_forward", u, b)
    if not u.flags.c_contiguous:
        raise KernelArgumentError("bias_relu_forward: u must be C-contiguous (it is written in place)")
    launch(xp, _bias_relu_forward_cpu, _bias_relu_forward_cuda, (u, xp.ascontiguousarray(b)))
    return u


def bias_relu_backward(dy, y):
    """du = dy * [y > 0] (N, D) and db = sum_n du (D,), new arrays.  dy, y: (N, D)."""
    xp = get_array_module(dy, y)
    if dy.ndim != 2 or dy.shape != y.shape:
        raise KernelArgumentError(f"bias_relu_backward: dy {dy.shape} and y {y.shape} must be one (N, D) shape")
    if dy.dtype not in FLOAT_DTYPES or y.dtype != dy.dtype:
        raise KernelArgumentError(f"bias_relu_backward: dtypes {dy.dtype} and {y.dtype}, expected one float dtype")
    dy, y = xp.ascontiguousarray(dy), xp.ascontiguousarray(y)
    du = xp.empty_like(dy)
    db = xp.empty((dy.shape[1],), dtype=dy.dtype)
    launch(xp, _bias_relu_backward_cpu, _bias_relu_backward_cuda, (dy, y, du, db))
    return du, db


# --------------------------------------------------------------------------------------------
# Plain-xp references (the oracles of the tests)
# --------------------------------------------------------------------------------------------


def bias_relu_forward_ref(u, b):
    """Reference: max(u + b, 0) as a new array."""
    xp = get_array_module(u, b)
    return xp.maximum(u + b, 0)


def bias_relu_backward_ref(dy, y):
    """Reference: (dy * [y > 0], its column sums)."""
    du = dy * (y > 0)
    return du, du.sum(axis=0)


# --------------------------------------------------------------------------------------------
# Numba CPU twins (NumPy arrays): the inner loop runs along D (contiguous; LLVM vectorises it).
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy")
def _bias_relu_forward_cpu(u, b):
    zero = u.dtype.type(0)
    for n in range(u.shape[0]):
        for d in range(u.shape[1]):
            u[n, d] = max(u[n, d] + b[d], zero)


# du = dy [y > 0];  db[d] = sum_n du[n, d], rows added in order (as NumPy's sum over axis 0)
@numba.njit(cache=True, error_model="numpy")
def _bias_relu_backward_cpu(dy, y, du, db):
    zero = dy.dtype.type(0)
    for d in range(du.shape[1]):
        db[d] = zero
    for n in range(du.shape[0]):
        for d in range(du.shape[1]):
            g = dy[n, d] if y[n, d] > zero else zero
            du[n, d] = g
            db[d] += g


# --------------------------------------------------------------------------------------------
# Numba CUDA kernels (see kernels/reparam.py for why `cuda` is a module global).
# --------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by _cuda_kernels()


def _forward_kernel(u, b):
    d, n = cuda.grid(2)  # one thread per element; x runs along D (coalesced)
    if n < u.shape[0] and d < u.shape[1]:
        u[n, d] = max(u[n, d] + b[d], u.dtype.type(0))


def _backward_kernel(dy, y, du, db):
    d = cuda.grid(1)  # one thread per column, walking down the rows (neighbours read neighbours)
    if d < du.shape[1]:
        zero = dy.dtype.type(0)
        acc = zero
        for n in range(du.shape[0]):
            g = dy[n, d] if y[n, d] > zero else zero
            du[n, d] = g
            acc += g
        db[d] = acc


@functools.cache
def _cuda_kernels():
    """The CUDA kernels of this file, ``forward`` and ``backward`` (imports numba.cuda)."""
    global cuda
    cuda = numba_cuda()
    return SimpleNamespace(forward=cuda.jit(_forward_kernel), backward=cuda.jit(_backward_kernel))


def _cuda_signatures(float_type):
    """Numba signatures of the CUDA kernels for one float type, C-contiguous arrays."""
    m, v = float_type[:, ::1], float_type[::1]
    return {"forward": (m, v), "backward": (m, m, m, v)}


def _bias_relu_forward_cuda(u, b, stream=0):
    """Launch the CUDA forward kernel: u (N, D) <- max(u + b, 0) in place; returns u."""
    if u.size:
        blocks, threads = grid_2d(*u.shape)
        _cuda_kernels().forward[blocks, threads, stream](u, b)
    return u


def _bias_relu_backward_cuda(dy, y, du, db, stream=0):
    """Launch the CUDA backward kernel: du (N, D) and db (D,) written in place; returns them."""
    if db.size:
        blocks = (db.shape[0] + COLUMN_THREADS - 1) // COLUMN_THREADS
        _cuda_kernels().backward[blocks, COLUMN_THREADS, stream](dy, y, du, db)
    return du, db
