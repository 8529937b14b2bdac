"""The bias-add + ReLU epilogue of a dense or conv layer, y = max(x W + b, 0), and its backward, as
fused kernels.  Shapes: M rows (N for a dense layer, N * H * W for a conv layer or a spatial batch
norm, channels last), D features; the GEMM output u = x W (M, D), b (D,), y and dy (M, D).

Public API (dispatch on the array namespace: NumPy -> Numba CPU twin, CuPy -> Numba CUDA kernels
on CuPy's current stream):

* ``bias_relu_forward(u, b) -> y``: y = max(u + b, 0), **in place on u** (u is the fresh GEMM
  output, owned by the caller); one pass instead of three (``u += b``, the mask ``u > 0``, the
  product ``u * mask``) and no temporaries;
* ``bias_relu_backward(dy, y) -> (du, db)``: du = dy * [y > 0] (M, D), a new array, and
  db = sum_m du (D,), in one pass over (dy, y) (on the GPU plus a small pass over per-block
  partial sums).

[y > 0] = [u + b > 0]: the output is the mask (the subgradient 0 at the kink, as
``layers.activations.relu_backward``).  Plain-xp oracles: ``bias_relu_forward_ref`` /
``bias_relu_backward_ref``.  Derivation: docs/derivations/dense.md (``dense_relu_backward``).

CUDA grids (details above the kernels): blocks of 32 x 8 threads, x along D, y along the rows;
grid y is capped (at most 65,535 blocks on any GPU) and the kernels loop over the rows beyond it,
so any M fits.  The backward's column sums are parallel over the rows as well (per-block partial
sums added in a fixed order by a second launch: deterministic run to run).
Checked by tests/kernels/test_bias_relu.py, the CUDA kernels by tests/kernels/cuda_sim_cases.py
(simulator) and cuda_ptx_cases.py (PTX), their grids by tests/kernels/test_launch_grids.py.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numba

from jmvae_cupy.backend import get_array_module

from . import _dispatch
from ._dispatch import BLOCK_2D, FLOAT_DTYPES, KernelArgumentError, check_launch, grid_2d_strided, launch, numba_cuda

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
    launch(xp, _bias_relu_backward_cpu, _bias_relu_backward_cuda, (dy, y, du, db),
           cuda_scratch=backward_scratch(*dy.shape, dy.dtype))
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
#
# Both use blocks of 32 x 8 threads: x along D (a warp reads 32 neighbouring columns of one row:
# coalesced), y along the rows.  The rows M are N for a dense layer but N * H * W for a conv
# layer or a spatial batch norm (M = 65,536 for a CelebA 32x32 layer at N = 64), so they never go
# one block row each on grid y (at most 65,535 blocks): the kernels loop over their rows with
# the grid's stride (grid-stride loop), and the launchers cap grid y (_dispatch.strided_grid).
#
# Backward, in two launches with no atomics, so that db is the same bits run to run:
#  1. grid (ceil(D / 32), P): block (bx, by) walks the rows by * 8 + ty, stepping 8 P, writes du
#     and keeps one running sum per thread; the block's 8 sums per column are added in
#     shared memory (in ty order) into part[by, d], the partial sum of its rows;
#  2. grid (ceil(D / 32), 1): db[d] = sum_p part[p, d], the same way (thread ty adds
#     p = ty, ty + 8, ..., then the 8 in ty order).
# P = row_blocks(M): about M / 128 (16 rows per thread), at most MAX_ROW_BLOCKS, so that a CelebA
# layer keeps the GPU busy (65,536 x 64: 2 x 512 blocks) and the partials stay small.  With
# P = 1 (the dense layers) launch 1 writes db itself and launch 2 is skipped.  The order of the
# additions depends on M only (not on the GPU or the run); it is not the CPU twin's row order,
# so the two agree to rounding (tree-like: better bounded than the serial sum).
# --------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by _cuda_kernels()

COLS, ROWS = BLOCK_2D  # threads per block along D (32) and along the rows (8)
ROWS_PER_THREAD = 16  # backward: rows each thread adds (when P is not capped)
MAX_ROW_BLOCKS = 1024  # backward: the most row blocks P (the partials are at most (1024, D))


def row_blocks(m: int) -> int:
    """P, the blocks along grid y of the backward for m rows: ceil(m / 128), between 1 and
    MAX_ROW_BLOCKS (and _dispatch.GRID_YZ_CAP)."""
    per_block = ROWS * ROWS_PER_THREAD
    return max(1, min((m + per_block - 1) // per_block, MAX_ROW_BLOCKS, _dispatch.GRID_YZ_CAP))


def backward_scratch(m: int, d: int, dtype):
    """The work buffers of the CUDA backward: ``[((P, d), dtype)]`` for the per-block partial sums,
    none when P = 1 (db is written directly)."""
    p = row_blocks(m)
    return [((p, d), dtype)] if p > 1 else []


def _forward_kernel(u, b):
    # grid-stride over the rows: grid y is capped (see above)
    d, n0 = cuda.grid(2)
    if d < u.shape[1]:
        zero = u.dtype.type(0)
        bd = b[d]
        for n in range(n0, u.shape[0], cuda.gridsize(2)[1]):
            u[n, d] = max(u[n, d] + bd, zero)


def _backward_partial_kernel(dy, y, du, part):
    # launch 1: du = dy [y > 0] and part[by, d] = the sum of du over the rows of block row by
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    d = cuda.blockIdx.x * COLS + tx
    zero = dy.dtype.type(0)
    acc = zero
    if d < du.shape[1]:
        for n in range(cuda.blockIdx.y * ROWS + ty, du.shape[0], cuda.gridDim.y * ROWS):
            g = dy[n, d] if y[n, d] > zero else zero
            du[n, d] = g
            acc += g
    sums = cuda.shared.array((ROWS, COLS), du.dtype)
    sums[ty, tx] = acc
    cuda.syncthreads()  # every thread reaches it (no early return above)
    if ty == 0 and d < du.shape[1]:
        total = sums[0, tx]
        for k in range(1, ROWS):
            total += sums[k, tx]
        part[cuda.blockIdx.y, d] = total


def _column_sum_kernel(part, db):
    # launch 2: db[d] = sum_p part[p, d], one block row (grid y = 1)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    d = cuda.blockIdx.x * COLS + tx
    acc = part.dtype.type(0)
    if d < db.shape[0]:
        for p in range(ty, part.shape[0], ROWS):
            acc += part[p, d]
    sums = cuda.shared.array((ROWS, COLS), db.dtype)
    sums[ty, tx] = acc
    cuda.syncthreads()
    if ty == 0 and d < db.shape[0]:
        total = sums[0, tx]
        for k in range(1, ROWS):
            total += sums[k, tx]
        db[d] = total


@functools.cache
def _cuda_kernels():
    """The CUDA kernels of this file, ``forward``, ``backward`` and ``column_sum`` (imports numba.cuda)."""
    global cuda
    cuda = numba_cuda()
    return SimpleNamespace(forward=cuda.jit(_forward_kernel), backward=cuda.jit(_backward_partial_kernel),
                           column_sum=cuda.jit(_column_sum_kernel))


def _cuda_signatures(float_type):
    """Numba signatures of the CUDA kernels for one float type, C-contiguous arrays."""
    m, v = float_type[:, ::1], float_type[::1]
    return {"forward": (m, v), "backward": (m, m, m, m), "column_sum": (m, v)}


def _bias_relu_forward_cuda(u, b, stream=0):
    """Launch the CUDA forward kernel: u (M, D) <- max(u + b, 0) in place; returns u.  Grid
    (ceil(D / 32), min(ceil(M / 8), GRID_YZ_CAP)), rows grid-strided: any M."""
    if u.size:
        blocks, threads = grid_2d_strided(*u.shape)
        _cuda_kernels().forward[blocks, threads, stream](u, b)
    return u


def _bias_relu_backward_cuda(dy, y, du, db, part=None, stream=0):
    """Launch the CUDA backward: du (M, D) and db (D,) written in place; returns them.

    part: (P, D) scratch for the per-block partial sums, P = its row count (backward_scratch(M, D)
    gives P = row_blocks(M)); None for P = 1, where launch 1 writes db directly.
    """
    M, D = du.shape
    if not D:
        return du, db
    kernels = _cuda_kernels()
    if part is None:
        part = db.reshape(1, D)
    elif part.shape[1] != D:
        raise KernelArgumentError(f"bias_relu backward: part is {part.shape}, expected (P, {D})")
    blocks, threads = check_launch(((D + COLS - 1) // COLS, part.shape[0]), BLOCK_2D)
    kernels.backward[blocks, threads, stream](dy, y, du, part)
    if part.shape[0] > 1:
        blocks, threads = check_launch(((D + COLS - 1) // COLS, 1), BLOCK_2D)
        kernels.column_sum[blocks, threads, stream](part, db)
    return du, db
