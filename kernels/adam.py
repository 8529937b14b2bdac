"""The Adam update of one parameter array as one fused pass (Kingma & Ba, 2014, Algorithm 1).

With the bias corrections folded into the step size and eps by ``jmvae_cupy.optim.Adam``
(``step_size = lr sqrt(1 - b2^t) / (1 - b1^t)``, ``eps_hat = eps sqrt(1 - b2^t)``), every
element does

    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    p <- p - step_size m / (sqrt(v) + eps_hat)

in place on p, m, v, with numbers too small to matter flushed to 0 so that no operation meets a
subnormal number (below).  The plain-xp form takes ~10 passes over memory and 4 temporaries per
parameter; the fused kernel reads p, g, m, v once and writes p, m, v once.  Shapes: any; the
kernels see the arrays flattened to (P,) (C-contiguous views, no copy).

Public API (dispatch on the array namespace: NumPy -> Numba CPU twin, CuPy -> Numba CUDA kernel
on CuPy's current stream):

* ``adam_update(p, g, m, v, beta1, beta2, step_size, eps_hat, flush=True)`` -> None (in place on
  p, m, v)

and the plain-xp oracle ``adam_update_ref`` (same signature), which is also what runs when p, m or
v is not C-contiguous or the dtypes differ (the fused kernel writes in place through flat views).

The flush, and why: a parameter whose gradient is exactly 0 for a while (a dead ReLU unit, a pixel
that is 0 in every recent batch) gets m <- b1 m at every step, and m decays towards the
*subnormal* range (below finfo.tiny, 1.2e-38 in float32) over several hundred steps at b1 = 0.9.
x86 CPUs compute on subnormal operands and results through a microcode assist, about 100 times
slower per operation; and ``step_size * m`` turns subnormal long before m does (for
|m| < tiny / step_size).  Left alone, the update slows down several-fold as training goes on
(docs/performance.md, "Subnormal numbers in Adam"; ``python bench/micro.py subnormal``).  So, with
``flush=True`` (the default; eps below is the dtype's machine epsilon, not Adam's):

* a moment below ``moment_min = tiny / eps`` in magnitude is stored as 0 (9.9e-32 in float32):
  ``b m`` and ``step_size * m`` then stay normal for step sizes down to ~1e-7;
* a gradient below ``g_min = sqrt(2 tiny / (1 - b2))`` in magnitude counts as 0 (4.9e-18 in
  float32 at b2 = 0.999), so that ``(1 - b2) g^2`` is normal or 0.

What that changes: a flushed m skips updates of at most ``step_size * moment_min / eps_hat``
(~1e-25 in float32 with the default lr and eps), below half an ulp of any parameter larger than
~2e-18 in magnitude; a flushed v changes ``sqrt(v) + eps_hat`` by less than an ulp.  A gradient
below g_min moves m by less than (1 - b1) g_min; the one case that differs visibly is a parameter
whose gradients *all* stay below g_min: it does not move, where Algorithm 1, normalising by
sqrt(v), would step it by up to lr (with a v itself at the subnormal edge in float32).  NaN and
inf pass through (the comparisons are false for NaN).  ``flush=False`` runs Algorithm 1 as is.

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
import numpy as np

from jmvae_cupy.backend import get_array_module

from ._dispatch import FLOAT_DTYPES, KernelArgumentError, launch, numba_cuda

# Threads per block of the 1-D CUDA kernel.
ADAM_THREADS = 256

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def adam_update(p, g, m, v, beta1: float, beta2: float, step_size: float, eps_hat: float,
                flush: bool = True) -> None:
    """One Adam update of p (any shape) with gradient g, in place on p and its moments m, v.

    p, g, m, v: arrays of one shape and namespace, float32 or float64; beta1, beta2: moment decays;
    step_size, eps_hat: lr and eps with the bias corrections folded in (see the module docstring);
    flush: count gradients below g_min as 0 and store moments below moment_min as 0
    (``flush_thresholds``; the module docstring says why); False runs Algorithm 1 as is (slow on
    x86 once subnormal numbers appear).
    """
    xp = _checked_namespace(p, g, m, v)
    fused = (
        p.dtype in FLOAT_DTYPES
        and g.dtype == m.dtype == v.dtype == p.dtype
        and all(a.flags.c_contiguous for a in (p, m, v))
    )
    if not fused:
        adam_update_ref(p, g, m, v, beta1, beta2, step_size, eps_hat, flush)
        return
    flat = [a.reshape(-1) for a in (p, xp.ascontiguousarray(g), m, v)]  # views (g copied only if strided)
    launch(xp, _adam_cpu, _adam_cuda, flat, _kernel_scalars(p.dtype.type, beta1, beta2, step_size, eps_hat, flush))


def _checked_namespace(p, g, m, v):
    """NumPy or CuPy, after checking that p, g, m, v are arrays of one shape on one device."""
    if type(p) is type(g) is type(m) is type(v) and hasattr(p, "dtype") and p.shape == g.shape == m.shape == v.shape:
        return get_array_module(p)  # (the common case, checked in one line: one array type, one shape)
    xp = get_array_module(p, g, m, v)
    for name, a in {"p": p, "g": g, "m": m, "v": v}.items():
        if not (hasattr(a, "dtype") and hasattr(a, "shape")):
            raise KernelArgumentError(f"adam_update: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
        if a.shape != p.shape:
            raise KernelArgumentError(f"adam_update: {name} has shape {a.shape}, p has {p.shape}")
        if get_array_module(a) is not xp:
            raise KernelArgumentError(f"adam_update: {name} lives on another device than p")
    return xp


@functools.lru_cache(maxsize=8)
def _kernel_scalars(t, beta1, beta2, step_size, eps_hat, flush) -> tuple:
    """The kernels' scalar arguments in dtype ``t`` (cached: every array of an Adam step shares them)."""
    g_min, moment_min = flush_thresholds(t, beta2) if flush else (0, 0)  # (nothing is below 0)
    return (t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(step_size), t(eps_hat), t(g_min), t(moment_min))


def flush_thresholds(dtype, beta2: float) -> tuple:
    """(g_min, moment_min) of the flush for float ``dtype``: sqrt(2 tiny / (1 - beta2)) and
    tiny / eps, as Python floats (the module docstring derives them)."""
    fi = np.finfo(dtype)
    return math.sqrt(2.0 * float(fi.tiny) / (1.0 - beta2)), float(fi.tiny) / float(fi.eps)


# --------------------------------------------------------------------------------------------
# Plain-xp reference (the oracle of the tests, and the fallback)
# --------------------------------------------------------------------------------------------


def adam_update_ref(p, g, m, v, beta1, beta2, step_size, eps_hat, flush=True) -> None:
    """Reference in plain xp, in place on p, m, v (any shapes, any layouts)."""
    xp = get_array_module(p)
    if flush:  # (the module docstring says why)
        g_min, moment_min = (m.dtype.type(a) for a in flush_thresholds(m.dtype, beta2))
        g = xp.where(xp.abs(g) < g_min, 0, g)  # a copy: g is the caller's
    m *= beta1
    m += (1.0 - beta1) * g  # m <- b1 m + (1 - b1) g
    if flush:  # (where, not a masked assignment: CuPy would count the mask on the host)
        m[...] = xp.where(xp.abs(m) < moment_min, 0, m)  # +0
    v *= beta2
    v += (1.0 - beta2) * (g * g)  # v <- b2 v + (1 - b2) g^2
    if flush:
        v[...] = xp.where(v < moment_min, 0, v)  # (v >= 0)
    p -= step_size * m / (xp.sqrt(v) + eps_hat)  # p <- p - lr m_hat / (sqrt(v_hat) + eps)


# --------------------------------------------------------------------------------------------
# Numba CPU twin (NumPy arrays), flat (P,) C-contiguous views; scalars already in the dtype.
# The operations run in the reference's order: same roundings, same bits.
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy")
def _adam_cpu(p, g, m, v, b1, omb1, b2, omb2, step_size, eps_hat, g_min, moment_min):
    zero = b1 - b1  # +0 in the arrays' dtype (a literal 0.0 would turn the float32 loop float64)
    for i in range(p.shape[0]):
        gi = g[i]
        if abs(gi) < g_min:  # the flush (module docstring); thresholds 0: no flush
            gi = zero
        mi = m[i] * b1 + omb1 * gi
        if abs(mi) < moment_min:
            mi = zero
        vi = v[i] * b2 + omb2 * (gi * gi)
        if vi < moment_min:
            vi = zero
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (step_size * mi) / (math.sqrt(vi) + eps_hat)


# --------------------------------------------------------------------------------------------
# Numba CUDA kernel: a plain function here, made a kernel by _cuda_kernels() on first use (see
# kernels/reparam.py for why `cuda` is a module global).  One thread per element.
# --------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by _cuda_kernels()


def _update_kernel(p, g, m, v, b1, omb1, b2, omb2, step_size, eps_hat, g_min, moment_min):
    i = cuda.grid(1)
    if i < p.shape[0]:
        zero = b1 - b1
        gi = g[i]
        if abs(gi) < g_min:  # the flush, as the CPU twin (GPUs do not slow down on subnormals, but
            gi = zero  # the numbers must be the same on both devices)
        mi = m[i] * b1 + omb1 * gi
        if abs(mi) < moment_min:
            mi = zero
        vi = v[i] * b2 + omb2 * (gi * gi)
        if vi < moment_min:
            vi = zero
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
    return {"update": (a, a, a, a, *(float_type,) * 8)}


def _adam_cuda(p, g, m, v, b1, omb1, b2, omb2, step_size, eps_hat, g_min, moment_min, stream=0):
    """Launch the CUDA kernel on flat (P,) arrays, updating p, m, v in place; returns p."""
    n = p.shape[0]
    if n:
        blocks = (n + ADAM_THREADS - 1) // ADAM_THREADS
        _cuda_kernels().update[blocks, ADAM_THREADS, stream](p, g, m, v, b1, omb1, b2, omb2, step_size, eps_hat, g_min,
                                                             moment_min)
    return p

