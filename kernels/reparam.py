"""Reparameterisation trick  z = mu + sqrt(var) * eps,  forward and backward, as fused kernels.

A sample of q(z) = N(mu, diag(var)) written as a differentiable function of (mu, var) and of
noise eps ~ N(0, I) that is passed in (randomness is an argument).  Shapes: N batch, D latent
features; every array is (N, D) and all share one dtype (float32 or float64).

Public API (dispatch on the array namespace: NumPy -> Numba CPU twin, CuPy -> Numba CUDA kernel
on CuPy's current stream):

* ``reparam_forward(mu, var, eps) -> z``
* ``reparam_backward(dz, var, eps) -> (dmu, dvar)``

and the plain-xp oracles ``reparam_forward_ref`` / ``reparam_backward_ref`` the tests compare
against.  Derivation of the backward: docs/derivations/reparameterisation.md.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numba

from jmvae_cupy.backend import get_array_module

from ._dispatch import checked_arrays, grid_2d, launch, numba_cuda

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def reparam_forward(mu, var, eps):
    """z = mu + sqrt(var) * eps, element-wise.

    mu:  (N, D) mean of q(z)
    var: (N, D) variance of q(z), > 0
    eps: (N, D) standard-normal noise
    Returns z: (N, D), a new array of the inputs' dtype, on the inputs' device.
    """
    xp, (mu, var, eps) = checked_arrays("reparam_forward", {"mu": mu, "var": var, "eps": eps})
    z = xp.empty_like(mu)
    launch(xp, _reparam_forward_cpu, _reparam_forward_cuda, (mu, var, eps, z))
    return z


def reparam_backward(dz, var, eps):
    """Gradients of the loss through z = mu + sqrt(var) * eps.

    dz:  (N, D) upstream gradient dL/dz
    var: (N, D) the variance the forward pass used
    eps: (N, D) the noise the forward pass used
    Returns (dmu, dvar), both (N, D) new arrays, with the closed form

        dmu  = dz
        dvar = dz * eps / (2 sqrt(var))

    (d sqrt(var) / d var = 1 / (2 sqrt(var)); the gradient grows like var^(-1/2) as var -> 0.)
    """
    xp, (dz, var, eps) = checked_arrays("reparam_backward", {"dz": dz, "var": var, "eps": eps})
    dmu = xp.empty_like(dz)
    dvar = xp.empty_like(dz)
    launch(xp, _reparam_backward_cpu, _reparam_backward_cuda, (dz, var, eps, dmu, dvar))
    return dmu, dvar


# --------------------------------------------------------------------------------------------
# Plain-xp reference (the oracle of the tests)
# --------------------------------------------------------------------------------------------


def reparam_forward_ref(mu, var, eps):
    """Reference forward in plain xp: z = mu + sqrt(var) * eps, all (N, D)."""
    xp = get_array_module(mu, var, eps)
    return mu + xp.sqrt(var) * eps


def reparam_backward_ref(dz, var, eps):
    """Reference backward in plain xp: (dmu, dvar) = (dz, dz * eps / (2 sqrt(var))), all (N, D)."""
    xp = get_array_module(dz, var, eps)
    return dz.copy(), dz * eps / (2 * xp.sqrt(var))


# --------------------------------------------------------------------------------------------
# Numba CPU twins (NumPy arrays).  error_model="numpy": a division by zero gives inf/nan as in
# IEEE arithmetic (and on the GPU) instead of raising ZeroDivisionError.  No fastmath.
# --------------------------------------------------------------------------------------------


# z = mu + sqrt(var) * eps
@numba.njit(cache=True, error_model="numpy")
def _reparam_forward_cpu(mu, var, eps, z):
    for n in range(z.shape[0]):
        for d in range(z.shape[1]):
            z[n, d] = mu[n, d] + math.sqrt(var[n, d]) * eps[n, d]


# dmu = dz,  dvar = dz * eps / (2 sqrt(var))
@numba.njit(cache=True, error_model="numpy")
def _reparam_backward_cpu(dz, var, eps, dmu, dvar):
    half = dz.dtype.type(0.5)  # a typed constant: a bare 0.5 would promote float32 to float64
    for n in range(dz.shape[0]):
        for d in range(dz.shape[1]):
            dmu[n, d] = dz[n, d]
            dvar[n, d] = half * dz[n, d] * eps[n, d] / math.sqrt(var[n, d])


# --------------------------------------------------------------------------------------------
# Numba CUDA kernels: plain functions here, turned into kernels by _cuda_kernels() on first use,
# so that numba.cuda is imported only then (see _dispatch.numba_cuda).  Each is compiled lazily,
# once per dtype, at its first launch.  They read `cuda` as a module global on purpose: the
# CUDA simulator swaps the module globals that hold numba.cuda for its fake (a closure would
# escape the swap).
# --------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by _cuda_kernels()


# z = mu + sqrt(var) * eps
def _forward_kernel(mu, var, eps, z):
    d, n = cuda.grid(2)  # one thread per element; x runs along D (coalesced)
    if n < z.shape[0] and d < z.shape[1]:
        z[n, d] = mu[n, d] + math.sqrt(var[n, d]) * eps[n, d]


# dmu = dz,  dvar = dz * eps / (2 sqrt(var))
def _backward_kernel(dz, var, eps, dmu, dvar):
    d, n = cuda.grid(2)
    if n < dz.shape[0] and d < dz.shape[1]:
        half = dz.dtype.type(0.5)
        dmu[n, d] = dz[n, d]
        dvar[n, d] = half * dz[n, d] * eps[n, d] / math.sqrt(var[n, d])


@functools.cache
def _cuda_kernels():
    """The CUDA kernels of this file, ``forward`` and ``backward`` (imports numba.cuda)."""
    global cuda
    cuda = numba_cuda()
    return SimpleNamespace(forward=cuda.jit(_forward_kernel), backward=cuda.jit(_backward_kernel))


def _cuda_signatures(float_type):
    """Numba signatures of the CUDA kernels for one float type (numba.float32 or numba.float64),
    as they are specialised for C-contiguous arrays; the PTX test compiles each of them."""
    m = float_type[:, ::1]
    return {"forward": (m, m, m, m), "backward": (m, m, m, m, m)}


def _reparam_forward_cuda(mu, var, eps, z, stream=0):
    """Launch the CUDA forward kernel, writing z = mu + sqrt(var) * eps in place; returns z.

    All (N, D).  Arrays are Numba device arrays (or objects with __cuda_array_interface__), or
    NumPy host arrays when the CUDA simulator is on.  One thread per element.
    """
    if z.size:
        blocks, threads = grid_2d(*z.shape)
        _cuda_kernels().forward[blocks, threads, stream](mu, var, eps, z)
    return z


def _reparam_backward_cuda(dz, var, eps, dmu, dvar, stream=0):
    """Launch the CUDA backward kernel, writing dmu and dvar (all (N, D)) in place; returns them."""
    if dz.size:
        blocks, threads = grid_2d(*dz.shape)
        _cuda_kernels().backward[blocks, threads, stream](dz, var, eps, dmu, dvar)
    return dmu, dvar
