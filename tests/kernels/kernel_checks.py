"""Inputs and error bounds shared by the kernel tests (CPU twins here, CUDA kernels under the
simulator in a subprocess).

Error bounds are stated per element as  |actual - expected| <= tol * scale,  where ``scale`` is
the magnitude of the terms the kernel combined (so that a result that is small because of
cancellation is not held to a relative bound it cannot meet) and ``tol`` a few units of
roundoff of the dtype.  ``expected`` is always the plain-xp reference evaluated in float64 on
the very same (possibly float32) inputs: the closest thing to the exact answer.
"""

from __future__ import annotations

import numpy as np

DTYPES = (np.float32, np.float64)
VAR_MIN, VAR_MAX = 1e-6, 1e4  # the variance range the kernels promise to handle


def eps(dtype) -> float:
    """Unit roundoff (machine epsilon) of ``dtype``."""
    return float(np.finfo(dtype).eps)


def log_uniform(rng, shape, lo=VAR_MIN, hi=VAR_MAX, dtype=np.float64):
    """Positive numbers spread evenly in log scale over [lo, hi]; the first row holds lo and hi
    themselves (where the shape allows), so that every batch meets the extremes."""
    v = np.exp(rng.uniform(np.log(lo), np.log(hi), shape))
    if v.ndim == 2 and v.shape[1] >= 2:
        v[0, 0], v[0, 1] = lo, hi
    return v.astype(dtype)


def gaussians(rng, n, d, dtype, lo=VAR_MIN, hi=VAR_MAX):
    """Means off zero and variances log-uniform in [lo, hi]: dict of (n, d) arrays
    mu1, var1, mu2, var2 of ``dtype``."""
    return {
        "mu1": (rng.standard_normal((n, d)) * 2 + 0.5).astype(dtype),
        "var1": log_uniform(rng, (n, d), lo, hi, dtype),
        "mu2": (rng.standard_normal((n, d)) - 0.3).astype(dtype),
        # rows reversed: the extremes of var2 sit in the last row, facing random var1
        "var2": log_uniform(rng, (n, d), lo, hi, dtype)[::-1].copy(),
    }


def f64(*arrays):
    """The arrays cast to float64 (for the reference)."""
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def assert_within(actual, expected, scale, tol, what=""):
    """Assert |actual - expected| <= tol * scale element-wise; the message names the worst one."""
    actual, expected, scale = np.asarray(actual), np.asarray(expected), np.asarray(scale)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    err = np.abs(actual.astype(np.float64) - expected)
    ratio = err / np.maximum(tol * scale, np.finfo(np.float64).tiny)
    worst = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.size else ()
    assert not ratio.size or ratio[worst] <= 1.0, (
        f"{what}: error {err[worst]:.3e} at {worst} exceeds {tol:.1e} * scale {scale[worst]:.3e} "
        f"(actual {actual[worst]!r}, expected {expected[worst]!r})"
    )
