"""The Adam update of one parameter array as one fused pass (Kingma & Ba, 2014, Algorithm 1).

With the bias corrections folded into the step size and eps by ``jmvae_cupy.optim.Adam``
(``step_size = lr sqrt(1 - b2^t) / (1 - b1^t)``, ``eps_hat = eps sqrt(1 - b2^t)``), every
element does

    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    p <- p - step_size m / (sqrt(v) + eps_hat)

in place on p, m, v.  The plain-xp form takes ~10 passes over memory and 4 temporaries per
parameter; the fused kernel reads p, g, m, v once and writes p, m, v once.  Shapes: any; the
kernels see the arrays flattened to (P,) (C-contiguous views, no copy).

Public API (dispatch on the array namespace: NumPy -> Numba CPU twin, CuPy -> Numba CUDA kernel
on CuPy's current stream):

* ``adam_update(p, g, m, v, beta1, beta2, step_size, eps_hat)`` -> None (in place on p, m, v)

and the plain-xp oracle ``adam_update_ref`` (same signature), which is also what runs when p, m or
v is not C-contiguous or the dtypes differ (the fused kernel writes in place through flat views).

Rounding: scalars are cast to the arrays' dtype first and the operations run in the order of
the reference, in that dtype (no float64 detour in float32), so the CPU twin gives the same bits
as the reference; the CUDA kernel may contract a multiply-add into an FMA (last-bit differences).
Derivation: docs/derivations/adam.md.  Checked by tests/kernels/test_adam.py.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numba

from jmvae_cupy.backend import get_array_module

from ._dispatch import FLOAT_DTYPES, KernelArgumentError, launch, numba_cuda

# Threads per block of the 1-D CUDA kernel.
ADAM_THREADS = 256

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def adam_update(p, g, m, v, beta1: float, beta2: float, step_size: float, eps_hat: float) -> None:
    """One Adam update of p (any shape) with gradient g, in place on p and its moments m, v.

    p, g, m, v: arrays of one shape and namespace, float32 or float64; beta1, beta2: moment decays;
    step_size, eps_hat: lr and eps with the bias corrections folded in (see the module docstring).
    """
    xp = get_array_module(p, g, m, v)
    arrays = {"p": p, "g": g, "m": m, "v": v}
    for name, a in arrays.items():
        if not (hasattr(a, "dtype") and hasattr(a, "shape")):
            raise KernelArgumentError(f"adam_update: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
        if a.shape != p.shape:
            raise KernelArgumentError(f"adam_update: {name} has shape {a.shape}, p has {p.shape}")
        if get_array_module(a) is not xp:
            raise KernelArgumentError(f"adam_update: {name} lives on another device than p")
    fused = (
        p.dtype in FLOAT_DTYPES
        and g.dtype == m.dtype == v.dtype == p.dtype
        and all(a.flags.c_contiguous for a in (p, m, v))
    )
    if not fused:
        adam_update_ref(p, g, m, v, beta1, beta2, step_size, eps_hat)
        return
    t = p.dtype.type
    flat = [a.reshape(-1) for a in (p, xp.ascontiguousarray(g), m, v)]  # views (g copied only if strided)
    scalars = (t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(step_size), t(eps_hat))
    launch(xp, _adam_cpu, _adam_cuda, flat, scalars)


# --------------------------------------------------------------------------------------------
# Plain-xp reference (the oracle of the tests, and the fallback)
# --------------------------------------------------------------------------------------------


def adam_update_ref(p, g, m, v, beta1, beta2, step_size, eps_hat) -> None:
    """Reference in plain xp, in place on p, m, v (any shapes, any layouts)."""
    xp = get_array_module(p)
    m *= beta1
    m += (1.0 - beta1) * g  # m <- b1 m + (1 - b1) g
    v *= beta2
    v += (1.0 - beta2) * (g * g)  # v <- b2 v + (1 - b2) g^2
    p -= step_size * m / (xp.sqrt(v) + eps_hat)  # p <- p - lr m_hat / (sqrt(v_hat) + eps)


# --------------------------------------------------------------------------------------------
# Numba CPU twin (NumPy arrays), flat (P,) C-contiguous views; scalars already in the dtype.
# The operations run in the reference's order: same roundings, same bits.
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy")
def _adam_cpu(p, g, m, v, b1, omb1, b2, omb2, step_size, eps_hat):
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * b1 + omb1 * gi
        vi = v[i] * b2 + omb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (step_size * mi) / (math.sqrt(vi) + eps_hat)


# --------------------------------------------------------------------------------------------
# Numba CUDA kernel: a plain function here, made a kernel by _cuda_kernels() on first use (see
# kernels/reparam.py for why `cuda` is a module global).  One thread per element.
# --------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by _cuda_kernels()


def _update_kernel(p, g, m, v, b1, omb1, b2, omb2, step_size, eps_hat):
    i = cuda.grid(1)
    if i < p.shape[0]:
        gi = g[i]
        mi = m[i] * b1 + omb1 * gi
        vi = v[i] * b2 + omb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (step_size * mi) / (math.sqrt(vi) + eps_hat)


@functools.cache
def _cuda_kernels():
    """The CUDA kernel of this file, ``update`` (imports numba.cuda)."""
    global cuda
    cuda = numba_cuda()
    return SimpleNamespace(update=cuda.jit(_update_kernel))


def _cuda_signatures(float_type):
    """Numba signature of the CUDA kernel for one float type, C-contiguous 1-D arrays."""
    a = float_type[::1]
    return {"update": (a, a, a, a, *(float_type,) * 6)}


def _adam_cuda(p, g, m, v, b1, omb1, b2, omb2, step_size, eps_hat, stream=0):
    """Launch the CUDA kernel on flat (P,) arrays, updating p, m, v in place; returns p."""
    n = p.shape[0]
    if n:
        blocks = (n + ADAM_THREADS - 1) // ADAM_THREADS
        _cuda_kernels().update[blocks, ADAM_THREADS, stream](p, g, m, v, b1, omb1, b2, omb2, step_size, eps_hat)
    return p

