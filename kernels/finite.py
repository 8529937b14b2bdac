"""Whether every element of a set of arrays is finite: the training loop's guard against a NaN or
inf gradient, checked before each Adam update (jmvae_cupy/train/step.py, docs/reliability.md).

Public API:

* ``all_finite(arrays) -> bool``: True when no element of any of the arrays (an iterable of
  float32 / float64 NumPy or CuPy arrays, any shapes, NumPy scalars and Python floats too; host
  and device arrays may be mixed, as a host loss with device gradients) is NaN or +-inf.

NumPy: a Numba CPU kernel per array sums ``a * 0``: 0 when every element is finite, NaN as soon as
one is not (inf * 0 and NaN * 0 are NaN).  One read pass, vectorised: ``fastmath={"reassoc"}``
lets LLVM reorder the additions, which cannot change a sum of zeros, and allows nothing else
(folding ``x * 0`` to 0 would need the no-NaN / no-inf flags, which are not given).  The guard
this replaces summed the gradients themselves: the same single pass, at about half the speed, and
it took finite gradients whose sum overflows for non-finite ones.  CuPy: ``isfinite(a).all()``
per array, combined on the device, and one read of the answer on the host (after the host arrays
of the same call, if any, have passed on the CPU).

Plain-xp oracle: ``all_finite_ref``.  Checked by tests/kernels/test_finite.py.
"""

from __future__ import annotations

import numba
import numpy as np

from jmvae_cupy.backend import get_array_module

from ._dispatch import FLOAT_DTYPES, KernelArgumentError


def all_finite(arrays) -> bool:
    """True when every element of every array in ``arrays`` is finite (no NaN, no +-inf)."""
    host, device = [], []
    for a in arrays:
        if isinstance(a, float):  # a Python number (a loss or term a model returned as one)
            a = np.float64(a)
        if not (hasattr(a, "dtype") and hasattr(a, "shape")) or a.dtype not in FLOAT_DTYPES:
            what = a.dtype if hasattr(a, "dtype") else type(a).__name__
            raise KernelArgumentError(f"all_finite: expected float32 / float64 NumPy or CuPy arrays, got {what}")
        (host if get_array_module(a) is np else device).append(a)  # NumPy arrays and scalars on the host
    for a in host:
        flat = a.reshape(-1) if a.flags.c_contiguous else a.flatten()  # (a view; one copy of a strided array)
        if a.size and _zero_sum_cpu(flat, a.dtype.type(0)) != 0:
            return False  # (a NaN sum compares unequal to 0)
    if device:  # one host synchronisation for all the device arrays
        xp = get_array_module(*device)
        return bool(xp.stack([xp.isfinite(a).all() for a in device]).all())
    return True


def all_finite_ref(arrays) -> bool:
    """The oracle: ``isfinite`` element by element, in plain xp."""
    return all(bool(get_array_module(a).isfinite(a).all()) for a in arrays)


@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _zero_sum_cpu(a, zero):
    """sum_i a[i] * 0 over a flat (P,) array: 0 if every a[i] is finite, NaN otherwise."""
    acc = zero
    for i in range(a.shape[0]):
        acc += a[i] * zero
    return acc
