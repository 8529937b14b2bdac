"""Closed-form KL divergence between diagonal Gaussians, per sample, as fused kernels.

    KL(N(mu1, var1) || N(mu2, var2))
        = 0.5 * sum_d [log var2 - log var1 + (var1 + (mu1 - mu2)^2) / var2 - 1]

Shapes: N batch, D latent features; mu1, var1, mu2, var2 are (N, D), the KL is (N,), one value
per sample.  ``mu2 = var2 = None`` is the standard-normal prior N(0, I) (mu2 = 0, var2 = 1),
which skips reading two of the four inputs.

Public API (dispatch on the array namespace: NumPy -> Numba CPU twin, CuPy -> Numba CUDA kernel
on CuPy's current stream):

* ``gauss_kl_forward(mu1, var1, mu2=None, var2=None) -> kl``
* ``gauss_kl_backward(dkl, mu1, var1, mu2=None, var2=None) -> (dmu1, dvar1, dmu2, dvar2)``

and the plain-xp oracles ``gauss_kl_forward_ref`` / ``gauss_kl_backward_ref``.  Derivation and
the numerical analysis: docs/derivations/gaussian_kl.md.

Numerical care (float32 and float64, variances in [1e-6, 1e4]); the kernels compute

    kl = 0.5 * sum_d [(r - 1 - log r) + (mu1 - mu2)^2 / var2],     r = var1 / var2.

* Both parts are >= 0 for every d (x - 1 - log x >= 0), so the sum over d adds numbers of one
  sign and cannot cancel: its rounding error stays about D * eps relative to the KL.  The
  textbook order adds log var2 - log var1, (var1 + (mu1-mu2)^2)/var2 and -1, which have both
  signs and cancel when q is close to p.
* log r as log(var1 / var2), not log var1 - log var2: the ratio is rounded once, an error of
  about eps in log r, while each log of a variance carries an absolute error of about
  eps * |log var| (up to ~14 eps at var = 1e-6), which survives the subtraction.  Measured in
  float32 with var1 = var2 * (1 + 1e-3) near 1e4 or 1e-6 (KL ~ 1e-4): relative error 1e-5
  with the ratio, 5e-2 with the difference of logs.  The ratio is safe: for variances in
  [1e-6, 1e4] it lies in [1e-10, 1e10], far from float32 overflow and underflow.
* Accumulation is in the input dtype (typed constants: a bare 0.5 would promote float32 to
  float64 in Numba); the CUDA kernel sums with a tree, the CPU twin left to right.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numba

from jmvae_cupy.backend import get_array_module

from . import _cuda_reduce
from ._dispatch import KernelArgumentError, checked_arrays, grid_2d, launch, numba_cuda

# Threads per block of the forward kernel (one block per row).  A power of two, for the tree
# reduction; rows with D > KL_THREADS are covered by a strided loop.
KL_THREADS = 128

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def gauss_kl_forward(mu1, var1, mu2=None, var2=None):
    """KL(N(mu1, var1) || N(mu2, var2)) per sample, for diagonal Gaussians.

    mu1, var1: (N, D) mean and variance (> 0) of q
    mu2, var2: (N, D) mean and variance (> 0) of p, or both None for p = N(0, I)
    Returns kl: (N,), a new array of the inputs' dtype, on the inputs' device:

        kl[n] = 0.5 * sum_d [log var2 - log var1 + (var1 + (mu1 - mu2)^2) / var2 - 1]
    """
    prior = _is_prior("gauss_kl_forward", mu2, var2)
    if prior:
        mu2, var2 = mu1, var1  # placeholders: with prior=True the kernels never read them
    named = {"mu1": mu1, "var1": var1, "mu2": mu2, "var2": var2}
    xp, (mu1, var1, mu2, var2) = checked_arrays("gauss_kl_forward", named)
    kl = xp.empty(mu1.shape[0], dtype=mu1.dtype)
    launch(xp, _gauss_kl_forward_cpu, _gauss_kl_forward_cuda, (mu1, var1, mu2, var2, kl), (prior,))
    return kl


def gauss_kl_backward(dkl, mu1, var1, mu2=None, var2=None):
    """Gradients of the loss through kl = gauss_kl_forward(mu1, var1, mu2, var2).

    dkl: (N,) upstream gradient dL/dkl;  mu1, var1, mu2, var2 as in the forward.
    Returns (dmu1, dvar1, dmu2, dvar2), each (N, D), new arrays; dmu2 and dvar2 are None for
    the N(0, I) prior.  Closed form, with g = dkl[n] broadcast along D:

        dmu1  = g * (mu1 - mu2) / var2              dmu2 = -dmu1
        dvar1 = g * 0.5 * (1/var2 - 1/var1)
        dvar2 = g * 0.5 * (1/var2 - (var1 + (mu1 - mu2)^2) / var2^2)

    (prior: dmu1 = g * mu1, dvar1 = g * 0.5 * (1 - 1/var1)).
    """
    prior = _is_prior("gauss_kl_backward", mu2, var2)
    named = {"dkl": dkl, "mu1": mu1, "var1": var1}
    if not prior:
        named.update(mu2=mu2, var2=var2)
    xp, inputs = checked_arrays("gauss_kl_backward", named, row_vectors=("dkl",))
    mu1 = inputs[1]
    dmu1, dvar1 = xp.empty_like(mu1), xp.empty_like(mu1)
    if prior:
        launch(xp, _gauss_kl_prior_backward_cpu, _gauss_kl_prior_backward_cuda, (*inputs, dmu1, dvar1))
        return dmu1, dvar1, None, None
    dmu2, dvar2 = xp.empty_like(mu1), xp.empty_like(mu1)
    launch(xp, _gauss_kl_backward_cpu, _gauss_kl_backward_cuda, (*inputs, dmu1, dvar1, dmu2, dvar2))
    return dmu1, dvar1, dmu2, dvar2


def _is_prior(where, mu2, var2) -> bool:
    """True when p is the N(0, I) prior (mu2 and var2 both None)."""
    if (mu2 is None) != (var2 is None):
        raise KernelArgumentError(f"{where}: give both mu2 and var2, or neither (the N(0, I) prior)")
    return mu2 is None


# --------------------------------------------------------------------------------------------
# Plain-xp reference (the oracle of the tests): the textbook formulas, term by term
# --------------------------------------------------------------------------------------------


def gauss_kl_forward_ref(mu1, var1, mu2=None, var2=None):
    """Reference forward in plain xp, (N, D) inputs -> (N,):
    0.5 * sum_d [log var2 - log var1 + (var1 + (mu1 - mu2)^2) / var2 - 1]."""
    xp = get_array_module(mu1, var1)
    if mu2 is None:
        mu2, var2 = xp.zeros_like(mu1), xp.ones_like(var1)
    return 0.5 * xp.sum(xp.log(var2) - xp.log(var1) + (var1 + (mu1 - mu2) ** 2) / var2 - 1, axis=1)


def gauss_kl_backward_ref(dkl, mu1, var1, mu2=None, var2=None):
    """Reference backward in plain xp: (dmu1, dvar1, dmu2, dvar2), each (N, D), None for the
    prior's dmu2 and dvar2; the closed form of ``gauss_kl_backward``."""
    xp = get_array_module(mu1, var1)
    prior = mu2 is None
    if prior:
        mu2, var2 = xp.zeros_like(mu1), xp.ones_like(var1)
    g = dkl[:, None]  # (N, 1): broadcast along D
    dmu1 = g * (mu1 - mu2) / var2
    dvar1 = g * 0.5 * (1 / var2 - 1 / var1)
    if prior:
        return dmu1, dvar1, None, None
    dvar2 = g * 0.5 * (1 / var2 - (var1 + (mu1 - mu2) ** 2) / var2**2)
    return dmu1, dvar1, -dmu1, dvar2


# --------------------------------------------------------------------------------------------
# Numba CPU twins (NumPy arrays).  error_model="numpy": a division by zero gives inf/nan as in
# IEEE arithmetic (and on the GPU) instead of raising ZeroDivisionError.  No fastmath.
# --------------------------------------------------------------------------------------------


# kl[n] = 0.5 * sum_d [(r - 1 - log r) + (mu1 - mu2)^2 / var2],  r = var1 / var2  (prior: mu2=0, var2=1)
@numba.njit(cache=True, error_model="numpy")
def _gauss_kl_forward_cpu(mu1, var1, mu2, var2, kl, prior):
    zero, one, half = kl.dtype.type(0), kl.dtype.type(1), kl.dtype.type(0.5)
    for n in range(mu1.shape[0]):
        acc = zero
        for d in range(mu1.shape[1]):
            if prior:
                m2, v2 = zero, one
            else:
                m2, v2 = mu2[n, d], var2[n, d]
            r = var1[n, d] / v2
            u = mu1[n, d] - m2
            acc += (r - one - math.log(r)) + u * u / v2
        kl[n] = half * acc


# dmu1 = -dmu2 = g*u/var2,  dvar1 = g/2*(1/var2 - 1/var1),  dvar2 = g/2/var2*(1 - (var1 + u^2)/var2)
@numba.njit(cache=True, error_model="numpy")
def _gauss_kl_backward_cpu(dkl, mu1, var1, mu2, var2, dmu1, dvar1, dmu2, dvar2):
    one, half = dkl.dtype.type(1), dkl.dtype.type(0.5)
    for n in range(mu1.shape[0]):
        g = dkl[n]
        for d in range(mu1.shape[1]):
            inv2 = one / var2[n, d]
            u = mu1[n, d] - mu2[n, d]
            dmu1[n, d] = g * u * inv2
            dmu2[n, d] = -dmu1[n, d]
            dvar1[n, d] = half * g * (inv2 - one / var1[n, d])
            # 1/var2 - (var1 + u^2)/var2^2 as inv2 * (1 - s): never squares a small var2
            s = (var1[n, d] + u * u) * inv2
            dvar2[n, d] = half * g * inv2 * (one - s)


# dmu1 = g * mu1,  dvar1 = g/2 * (1 - 1/var1)
@numba.njit(cache=True, error_model="numpy")
def _gauss_kl_prior_backward_cpu(dkl, mu1, var1, dmu1, dvar1):
    one, half = dkl.dtype.type(1), dkl.dtype.type(0.5)
    for n in range(mu1.shape[0]):
        g = dkl[n]
        for d in range(mu1.shape[1]):
            dmu1[n, d] = g * mu1[n, d]
            dvar1[n, d] = half * g * (one - one / var1[n, d])


# --------------------------------------------------------------------------------------------
# Numba CUDA kernels: plain functions here, turned into kernels by _cuda_kernels() on first use,
# so that numba.cuda is imported only then (see _dispatch.numba_cuda).  Each is compiled lazily,
# once per dtype, at its first launch (`prior` is a runtime flag, not a specialisation).  They
# read `cuda` as a module global on purpose: the CUDA simulator swaps the module globals that
# hold numba.cuda for its fake (a closure would escape the swap).
# --------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by _cuda_kernels()
block_sum = None  # the device function of kernels/_cuda_reduce.py, bound by _cuda_kernels()


# kl[n] = 0.5 * sum_d [(r - 1 - log r) + (mu1 - mu2)^2 / var2],  r = var1 / var2  (prior: mu2=0, var2=1)
def _forward_kernel(mu1, var1, mu2, var2, kl, prior):
    # One block of KL_THREADS threads per row n.  Thread t sums the columns t, t + KL_THREADS, ...
    # into a private partial sum; the block then adds the partial sums in shared memory with a
    # tree (kernels/_cuda_reduce.py).
    n = cuda.blockIdx.x
    t = cuda.threadIdx.x
    zero, one, half = kl.dtype.type(0), kl.dtype.type(1), kl.dtype.type(0.5)
    partial = zero
    for d in range(t, mu1.shape[1], KL_THREADS):
        if prior:  # the same branch for the whole grid: no divergence
            m2, v2 = zero, one
        else:
            m2, v2 = mu2[n, d], var2[n, d]
        r = var1[n, d] / v2
        u = mu1[n, d] - m2
        partial += (r - one - math.log(r)) + u * u / v2

    total = block_sum(cuda.shared.array(KL_THREADS, kl.dtype), t, partial)
    if t == 0:
        kl[n] = half * total


# dmu1 = -dmu2 = g*u/var2,  dvar1 = g/2*(1/var2 - 1/var1),  dvar2 = g/2/var2*(1 - (var1 + u^2)/var2)
def _backward_kernel(dkl, mu1, var1, mu2, var2, dmu1, dvar1, dmu2, dvar2):
    d, n = cuda.grid(2)  # one thread per element; x runs along D (coalesced)
    if n < mu1.shape[0] and d < mu1.shape[1]:
        one, half = dkl.dtype.type(1), dkl.dtype.type(0.5)
        g = dkl[n]
        inv2 = one / var2[n, d]
        u = mu1[n, d] - mu2[n, d]
        dmu1[n, d] = g * u * inv2
        dmu2[n, d] = -g * u * inv2
        dvar1[n, d] = half * g * (inv2 - one / var1[n, d])
        s = (var1[n, d] + u * u) * inv2  # as in the CPU twin: never squares a small var2
        dvar2[n, d] = half * g * inv2 * (one - s)


# dmu1 = g * mu1,  dvar1 = g/2 * (1 - 1/var1)
def _prior_backward_kernel(dkl, mu1, var1, dmu1, dvar1):
    d, n = cuda.grid(2)
    if n < mu1.shape[0] and d < mu1.shape[1]:
        one, half = dkl.dtype.type(1), dkl.dtype.type(0.5)
        g = dkl[n]
        dmu1[n, d] = g * mu1[n, d]
        dvar1[n, d] = half * g * (one - one / var1[n, d])


@functools.cache
def _cuda_kernels():
    """The CUDA kernels of this file: ``forward``, ``backward``, ``prior_backward``
    (imports numba.cuda)."""
    global cuda, block_sum
    cuda = numba_cuda()
    block_sum = _cuda_reduce.block_sum()
    return SimpleNamespace(
        forward=cuda.jit(_forward_kernel),
        backward=cuda.jit(_backward_kernel),
        prior_backward=cuda.jit(_prior_backward_kernel),
    )


def _cuda_signatures(float_type):
    """Numba signatures of the CUDA kernels for one float type (numba.float32 or numba.float64),
    as they are specialised for C-contiguous arrays; the PTX test compiles each of them."""
    m, v = float_type[:, ::1], float_type[::1]
    return {
        "forward": (m, m, m, m, v, numba.boolean),
        "backward": (v, m, m, m, m, m, m, m, m),
        "prior_backward": (v, m, m, m, m),
    }


def _gauss_kl_forward_cuda(mu1, var1, mu2, var2, kl, prior=False, stream=0):
    """Launch the CUDA forward kernel, writing kl (N,) in place from (N, D) inputs; returns kl.

    prior=True is p = N(0, I): mu2 and var2 are then never read (pass any (N, D) arrays, e.g.
    mu1 and var1).  Arrays are Numba device arrays (or objects with __cuda_array_interface__),
    or NumPy host arrays when the CUDA simulator is on.  One block of KL_THREADS threads per row.
    """
    if kl.size:
        _cuda_kernels().forward[kl.shape[0], KL_THREADS, stream](mu1, var1, mu2, var2, kl, prior)
    return kl


def _gauss_kl_backward_cuda(dkl, mu1, var1, mu2, var2, dmu1, dvar1, dmu2, dvar2, stream=0):
    """Launch the CUDA backward kernel, writing the four (N, D) gradients in place from dkl (N,)
    and the (N, D) inputs; returns (dmu1, dvar1, dmu2, dvar2).  One thread per element."""
    if dmu1.size:
        blocks, threads = grid_2d(*dmu1.shape)
        _cuda_kernels().backward[blocks, threads, stream](dkl, mu1, var1, mu2, var2, dmu1, dvar1, dmu2, dvar2)
    return dmu1, dvar1, dmu2, dvar2


def _gauss_kl_prior_backward_cuda(dkl, mu1, var1, dmu1, dvar1, stream=0):
    """Launch the CUDA backward kernel of the N(0, I) prior, writing dmu1 and dvar1 (N, D) in
    place; returns (dmu1, dvar1).  One thread per element."""
    if dmu1.size:
        blocks, threads = grid_2d(*dmu1.shape)
        _cuda_kernels().prior_backward[blocks, threads, stream](dkl, mu1, var1, dmu1, dvar1)
    return dmu1, dvar1
