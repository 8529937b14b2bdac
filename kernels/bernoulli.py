"""The Bernoulli log-likelihood from logits and the residual its gradient needs, in one fused pass.

For data x (N, D) in [0, 1] and logits l (N, D), per sample n (``distributions.Bernoulli``):

    ll_n = -sum_d [softplus(-l) x + softplus(l) (1 - x)] = -sum_d [log1p(e^{-|l|}) + max(l, 0) - l x]
    r_nd = x_nd - sigmoid(l_nd)          (d ll_n / d l_nd: the backward is dl = dll[:, None] * r)

(softplus(+-l) = max(+-l, 0) + log1p(e^{-|l|}), and max(-l, 0) x + max(l, 0) (1 - x) = max(l, 0) - l x.)
One e = exp(-|l|) per element serves the log-likelihood and sigmoid(l) = [l >= 0 ? 1 : e] / (1 + e):
the plain-xp form takes two softplus (two exp, two log1p), a sigmoid (a third exp) and ~12 passes
over (N, D) arrays; the CUDA kernel reads x and l once and writes r once, the CPU twin makes three
passes (see there).  Finite for logits of +-100
and beyond (e^{-|l|} never overflows).

Public API (dispatch on the array namespace: NumPy -> Numba CPU twin, CuPy -> Numba CUDA kernel
on CuPy's current stream):

* ``bernoulli_loglik_forward(x, logits) -> (ll (N,), r (N, D))``

and the plain-xp oracle ``bernoulli_loglik_forward_ref`` (same signature).  Accumulation is in the
input dtype (typed constants); the CPU twin sums left to right, the CUDA kernel with a tree.
Derivation: docs/derivations/distributions.md.  Checked by tests/kernels/test_bernoulli.py.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numba

from jmvae_cupy.backend import get_array_module

from . import _cuda_reduce
from ._dispatch import checked_arrays, launch, numba_cuda
from .stable import sigmoid, softplus

# Threads per block of the CUDA kernel (one block per row).  A power of two, for the tree
# reduction; rows with D > BERNOULLI_THREADS are covered by a strided loop.
BERNOULLI_THREADS = 128

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def bernoulli_loglik_forward(x, logits):
    """ll_n = -sum_d [softplus(-l) x + softplus(l) (1 - x)] and r = x - sigmoid(l).

    x: (N, D) data in [0, 1]; logits: (N, D), same dtype (float32 or float64) and device.
    Returns (ll (N,), r (N, D)), new arrays of the inputs' dtype, on the inputs' device.
    """
    xp, (x, logits) = checked_arrays("bernoulli_loglik_forward", {"x": x, "logits": logits})
    ll = xp.empty((x.shape[0],), dtype=x.dtype)
    r = xp.empty_like(x)
    launch(xp, _bernoulli_loglik_cpu, _bernoulli_loglik_cuda, (x, logits, ll, r))
    return ll, r


# --------------------------------------------------------------------------------------------
# Plain-xp reference (the oracle of the tests, and the fallback of distributions.Bernoulli)
# --------------------------------------------------------------------------------------------


def bernoulli_loglik_forward_ref(x, logits):
    """Reference in plain xp: (ll, r) as :func:`bernoulli_loglik_forward`, any namespace and dtype."""
    ll = -(softplus(-logits) * x + softplus(logits) * (1.0 - x)).sum(axis=1)
    return ll, x - sigmoid(logits)


# --------------------------------------------------------------------------------------------
# CPU twin (NumPy arrays).  Numba compiles math.exp / math.log1p to scalar libm calls (no SVML
# here: ~8 ns an element, slower than the whole plain-xp form), while NumPy's float ufuncs are
# SIMD.  So the twin takes e = exp(-|l|) (into r, as scratch) and log1p(e) from NumPy, two
# vectorised passes, and fuses the rest in one Numba pass that LLVM vectorises: the sum over d
# and r = x - sigmoid(l) (r[n, d] read as e, then overwritten).  error_model="numpy", no fastmath.
# --------------------------------------------------------------------------------------------


def _bernoulli_loglik_cpu(x, logits, ll, r):
    """ll (N,) and r (N, D) in place from x, logits (N, D), NumPy arrays."""
    xp = get_array_module(logits)  # NumPy
    xp.abs(logits, out=r)
    xp.negative(r, out=r)
    xp.exp(r, out=r)  # e = exp(-|l|) in (0, 1]: never overflows
    _bernoulli_combine_cpu(x, logits, xp.log1p(r), ll, r)


# ll[n] = -sum_d [log1p(e) + max(l, 0) - l x],  r = x - [l >= 0 ? 1 : e] / (1 + e),  e = r on entry
@numba.njit(cache=True, error_model="numpy")
def _bernoulli_combine_cpu(x, logits, log1p_e, ll, r):
    zero, one = ll.dtype.type(0), ll.dtype.type(1)
    for n in range(x.shape[0]):
        acc = zero
        for d in range(x.shape[1]):
            li = logits[n, d]
            xi = x[n, d]
            e = r[n, d]
            acc += log1p_e[n, d] + max(li, zero) - li * xi
            r[n, d] = xi - (one if li >= zero else e) / (one + e)
        ll[n] = -acc


# --------------------------------------------------------------------------------------------
# Numba CUDA kernel: a plain function here, made a kernel by _cuda_kernels() on first use (see
# kernels/reparam.py for why `cuda` is a module global).  One block per row, the tree reduction of
# kernels/_cuda_reduce.py.
# --------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by _cuda_kernels()
block_sum = None  # the device function of kernels/_cuda_reduce.py, bound by _cuda_kernels()


def _loglik_kernel(x, logits, ll, r):
    n = cuda.blockIdx.x
    t = cuda.threadIdx.x
    zero, one = ll.dtype.type(0), ll.dtype.type(1)
    partial = zero
    for d in range(t, x.shape[1], BERNOULLI_THREADS):
        li = logits[n, d]
        xi = x[n, d]
        e = math.exp(-abs(li))
        partial += math.log1p(e) + max(li, zero) - li * xi
        r[n, d] = xi - (one if li >= zero else e) / (one + e)

    total = block_sum(cuda.shared.array(BERNOULLI_THREADS, ll.dtype), t, partial)
    if t == 0:
        ll[n] = -total


@functools.cache
def _cuda_kernels():
    """The CUDA kernel of this file, ``loglik`` (imports numba.cuda)."""
    global cuda, block_sum
    cuda = numba_cuda()
    block_sum = _cuda_reduce.block_sum()
    return SimpleNamespace(loglik=cuda.jit(_loglik_kernel))


def _cuda_signatures(float_type):
    """Numba signature of the CUDA kernel for one float type, C-contiguous arrays."""
    m, v = float_type[:, ::1], float_type[::1]
    return {"loglik": (m, m, v, m)}


def _bernoulli_loglik_cuda(x, logits, ll, r, stream=0):
    """Launch the CUDA kernel: ll (N,) and r (N, D) written in place from x, logits (N, D)."""
    if ll.size:
        _cuda_kernels().loglik[ll.shape[0], BERNOULLI_THREADS, stream](x, logits, ll, r)
    return ll, r

