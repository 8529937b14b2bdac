"""Training-mode batch normalisation (+ optional ReLU) of rows x (M, C) per column c, forward and
backward, as fused multi-threaded passes on the CPU.  M = N (dense) or N*H*W (spatial: one row
per pixel, the channels-last view jmvae_cupy/layers/batchnorm.py hands over); C channels.

    mu = (1/M) sum_m x_m       var = (1/M) sum_m (x_m - mu)^2        inv_std = 1 / sqrt(var + eps)
    y = gamma inv_std (x - mu) + beta          (relu: y = max(that, 0))

    backward, with du = dy [y > 0] (relu) or dy, xhat = (x - mu) inv_std:
    dbeta = sum_m du_m      dgamma = inv_std sum_m du_m (x_m - mu)
    dx = gamma inv_std (du - dbeta / M - xhat dgamma / M)

Public API, for C-contiguous NumPy rows of one float dtype (:func:`applies`); the same passes in
plain xp, for CuPy (where each pass is already a parallel kernel) and as the oracle of the tests,
are the layer's own: ``bn_train_forward_xp`` / ``bn_train_backward_xp`` of jmvae_cupy/layers/batchnorm.py,
which chooses between the two (``train_forward`` / ``train_backward``):

* ``bn_train_forward(x, gamma, beta, eps, relu) -> (y, mu, var, inv_std)``: y (M, C) new; mu, var,
  inv_std (C,): the batch mean, the biased variance and 1 / sqrt(var + eps), in x's dtype;
* ``bn_train_backward(dy, x, y, mu, inv_std, gamma, relu) -> (dx, dgamma, dbeta)``: y is the
  forward's output (the ReLU mask; pass None when relu is False).

The plain-xp passes are ~6 over (M, C) forward and ~7 backward, each single-threaded; these
kernels do 3 forward (sum, squared deviations, output) and 2 backward (two sums, output), spread
over Numba's threads, and keep x instead of x - mu for the backward (no (M, C) temporary).

Determinism: the rows are cut into fixed blocks of ``ROW_BLOCK``; each block's column sums are
accumulated in float64 by one thread, and the block sums are added in block order, so the result
does not depend on the number of threads (and float32 sums carry no accumulation error worth the
name).  The plain-xp passes sum in x's dtype, so the two agree to rounding, not to the bit: the tests
(tests/kernels/test_batchnorm.py) compare them at 2e-5 relative in float32 and 1e-12 in float64.
Derivation: docs/derivations/batchnorm.md.
"""

from __future__ import annotations

import numba
import numpy as np

from jmvae_cupy.backend import get_array_module

from ._dispatch import FLOAT_DTYPES, KernelArgumentError

# rows per block of the parallel column sums (the unit of work of one thread at a time)
ROW_BLOCK = 256


def applies(*arrays) -> bool:
    """The Numba kernels apply: NumPy, one float dtype, C-contiguous (M, C) rows."""
    return (all(isinstance(a, np.ndarray) for a in arrays) and arrays[0].dtype in FLOAT_DTYPES
            and all(a.dtype == arrays[0].dtype for a in arrays)
            and all(a.flags.c_contiguous for a in arrays if a.ndim == 2))


def _check(where, x, vectors: dict):
    if x.ndim != 2:
        raise KernelArgumentError(f"{where}: x must be (M, C), got shape {x.shape}")
    for name, v in vectors.items():
        if v is not None and v.shape not in ((x.shape[1],), x.shape):
            raise KernelArgumentError(f"{where}: {name} has shape {v.shape}, x has {x.shape}")


def bn_train_forward(x, gamma, beta, eps: float, relu: bool):
    """x (M, C); gamma, beta (C,).  Returns y (M, C) new, and mu, var (biased), inv_std (C,)."""
    _check("bn_train_forward", x, {"gamma": gamma, "beta": beta})
    if not applies(x, gamma, beta):
        raise KernelArgumentError("bn_train_forward: the CPU kernels take C-contiguous NumPy rows of one float "
                                  "dtype (other arrays: layers/batchnorm.bn_train_forward_xp)")
    xp = get_array_module(x)  # NumPy here
    M, C = x.shape
    mu64 = _column_sums(x, xp.zeros(C), False) / M  # pass 1
    var64 = _column_sums(x, mu64, True) / M  # pass 2: two-pass variance, no cancellation
    inv64 = 1.0 / xp.sqrt(var64 + eps)
    mu, var, inv_std = (a.astype(x.dtype) for a in (mu64, var64, inv64))
    y = xp.empty_like(x)
    _normalise(x, mu, gamma * inv_std, beta, relu, x.dtype.type(0), y)  # pass 3
    return y, mu, var, inv_std


def bn_train_backward(dy, x, y, mu, inv_std, gamma, relu: bool):
    """dy, x (M, C), y (M, C) or None (not relu); mu, inv_std, gamma (C,).
    Returns dx (M, C), dgamma (C,), dbeta (C,)."""
    _check("bn_train_backward", x, {"dy": dy, "y": y, "mu": mu, "inv_std": inv_std, "gamma": gamma})
    if y is None:
        if relu:
            raise KernelArgumentError("bn_train_backward: relu needs the forward's output y")
        y = x  # not read
    if not applies(dy, x, y, mu, inv_std, gamma):
        raise KernelArgumentError("bn_train_backward: the CPU kernels take C-contiguous NumPy rows of one float "
                                  "dtype (other arrays: layers/batchnorm.bn_train_backward_xp)")
    M, C = x.shape
    t = x.dtype.type
    dbeta64, dxc64 = _backward_sums(dy, x, y, mu, relu, t(0))  # pass 1: sum du, sum du (x - mu)
    dgamma = (dxc64 * inv_std).astype(x.dtype)
    dbeta = dbeta64.astype(x.dtype)
    dx = get_array_module(x).empty_like(x)  # NumPy here
    _backward_dx(dy, x, y, mu, gamma * inv_std, dbeta / t(M), inv_std * dgamma / t(M), relu, t(0), dx)  # pass 2
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------------------------
# Numba CPU kernels: prange over blocks of ROW_BLOCK rows; inner loop along C (contiguous).
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy")
def _sum_blocks(part):
    """sum_b part[b] (nb, C) -> (C,), in block order: the same sums for any number of threads.
    (Scalar loops in a function of its own: an array expression such as ``out += part[b]`` in a
    parallel function would become a parallel region per block, ~100 us each.)"""
    nb, C = part.shape
    out = np.zeros(C)
    for b in range(nb):
        for c in range(C):
            out[c] += part[b, c]
    return out


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _column_sums(x, mu, squared):
    """sum_m x[m] (squared=False) or sum_m (x[m] - mu)^2, per column, in float64 (C,).
    (Every branch sits outside the inner loop along C, which LLVM then vectorises.)"""
    M, C = x.shape
    nb = (M + ROW_BLOCK - 1) // ROW_BLOCK
    part = np.zeros((nb, C))
    for b in numba.prange(nb):
        acc = part[b]
        for m in range(b * ROW_BLOCK, min(M, (b + 1) * ROW_BLOCK)):
            row = x[m]
            if squared:
                for c in range(C):
                    d = row[c] - mu[c]
                    acc[c] += d * d
            else:
                for c in range(C):
                    acc[c] += row[c]
    return _sum_blocks(part)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _normalise(x, mu, scale, beta, relu, zero, y):
    """y = scale (x - mu) + beta, then max(., 0) if relu (every argument in x's dtype)."""
    M, C = x.shape
    nb = (M + ROW_BLOCK - 1) // ROW_BLOCK
    for b in numba.prange(nb):
        for m in range(b * ROW_BLOCK, min(M, (b + 1) * ROW_BLOCK)):
            xr, yr = x[m], y[m]
            if relu:
                for c in range(C):
                    v = (xr[c] - mu[c]) * scale[c] + beta[c]
                    yr[c] = zero if v <= 0 else v  # max(v, 0); a NaN stays NaN, as in the reference
            else:
                for c in range(C):
                    yr[c] = (xr[c] - mu[c]) * scale[c] + beta[c]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _backward_sums(dy, x, y, mu, relu, zero):
    """(sum_m du_m, sum_m du_m (x_m - mu)) per column in float64, du = dy [y > 0] if relu else dy."""
    M, C = x.shape
    nb = (M + ROW_BLOCK - 1) // ROW_BLOCK
    pb = np.zeros((nb, C))
    pg = np.zeros((nb, C))
    for b in numba.prange(nb):
        ab, ag = pb[b], pg[b]
        for m in range(b * ROW_BLOCK, min(M, (b + 1) * ROW_BLOCK)):
            dyr, xr, yr = dy[m], x[m], y[m]
            if relu:
                for c in range(C):
                    d = dyr[c] if yr[c] > 0 else zero
                    ab[c] += d
                    ag[c] += d * (xr[c] - mu[c])
            else:
                for c in range(C):
                    d = dyr[c]
                    ab[c] += d
                    ag[c] += d * (xr[c] - mu[c])
    return _sum_blocks(pb), _sum_blocks(pg)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _backward_dx(dy, x, y, mu, scale, dbeta_m, k, relu, zero, dx):
    """dx = scale (du - dbeta / M - (x - mu) k), k = inv_std dgamma / M (all in x's dtype)."""
    M, C = x.shape
    nb = (M + ROW_BLOCK - 1) // ROW_BLOCK
    for b in numba.prange(nb):
        for m in range(b * ROW_BLOCK, min(M, (b + 1) * ROW_BLOCK)):
            dyr, xr, yr, dxr = dy[m], x[m], y[m], dx[m]
            if relu:
                for c in range(C):
                    d = dyr[c] if yr[c] > 0 else zero
                    dxr[c] = scale[c] * (d - dbeta_m[c] - (xr[c] - mu[c]) * k[c])
            else:
                for c in range(C):
                    dxr[c] = scale[c] * (dyr[c] - dbeta_m[c] - (xr[c] - mu[c]) * k[c])
