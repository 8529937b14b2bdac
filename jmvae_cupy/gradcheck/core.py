"""Finite-difference gradient checking (float64, central differences).

The core of the gradient checks (jmvae_cupy/gradcheck/: this module, the registry of checks, their
index and the command).  The check of a backward pass, as the tests and ``python -m
jmvae_cupy.gradcheck`` run it:

1. pick float64 inputs off zero mean / unit scale and a *random* upstream gradient ``dy``
   (never all ones: a batch-norm bug hides behind ``sum()``);
2. the scalar whose gradient is checked is  L(inputs) = <f(inputs), dy>;
3. the analytic gradient of L comes from the backward pass under test;
4. the numerical one is  (L(x + h e_i) - L(x - h e_i)) / (2 h)  for every entry i, h = 1e-5;
5. report  max|a - n| / max(|a| + |n|)  (one number per input) against a tolerance.

The error of central differences is O(h^2) truncation plus O(eps/h) rounding, about 1e-10
relative in float64 with h = 1e-5; tolerances of 1e-6 leave room for kinks (ReLU) nearby.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..backend import get_array_module


def rel_error(a, n) -> float:
    """max|a - n| / max(|a| + |n|): 0 when both are all zero."""
    xp = get_array_module(a, n)
    denom = float(xp.max(xp.abs(a) + xp.abs(n))) if a.size else 0.0
    if denom == 0.0:
        return 0.0
    return float(xp.max(xp.abs(a - n))) / denom


def numerical_gradient_at(f: Callable[[], float], x, indices, h: float = 1e-5):
    """Central differences of the scalar ``f()`` w.r.t. the entries ``indices`` of ``x.reshape(-1)``.

    ``f`` reads ``x``, which is perturbed *in place* and restored.  Returns a float64 host array
    of len(indices).  Cost: 2 * len(indices) evaluations of ``f``.
    """
    flat = x.reshape(-1)  # a view: writes reach x
    out = np.empty(len(indices))
    for j, i in enumerate(indices):
        old = float(flat[i])
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        out[j] = (fp - fm) / (2.0 * h)
    return out


def numerical_gradient(f: Callable[[], float], x, h: float = 1e-5):
    """Central-difference gradient of the scalar function ``f()`` w.r.t. the array ``x``,
    which ``f`` reads and which is perturbed *in place* (restored afterwards).

    Returns an array shaped like ``x``.  Cost: 2 * x.size evaluations of ``f``.
    """
    xp = get_array_module(x)
    num = numerical_gradient_at(f, x, range(x.size), h)
    return xp.asarray(num, dtype=x.dtype).reshape(x.shape)


def check_gradients_sampled(loss: Callable[[], float], arrays: dict, grads: dict, entries: int, rng,
                            h: float = 1e-5) -> dict:
    """As :func:`check_gradients`, on ``entries`` random entries of each array (drawn from the NumPy
    generator ``rng``): for the conv models, whose tensors have thousands of entries.
    {name: relative error}; 0 when both the analytic and the numerical entries are all zero."""
    out = {}
    for name, x in arrays.items():
        idx = rng.choice(x.size, size=min(entries, x.size), replace=False)
        num = numerical_gradient_at(loss, x, idx, h)
        ana = np.asarray(grads[name], dtype=np.float64).reshape(-1)[idx]
        out[name] = 0.0 if not np.any(num) and not np.any(ana) else rel_error(ana, num)
    return out


def check_gradients(loss: Callable[[], float], arrays: dict, grads: dict, h: float = 1e-5) -> dict:
    """Compare analytic ``grads[name]`` with central differences of ``loss()`` w.r.t. ``arrays[name]``.

    ``loss`` must read the arrays in ``arrays`` (perturbed in place).  Returns
    {name: relative error}.
    """
    out = {}
    for name, x in arrays.items():
        num = numerical_gradient(loss, x, h)
        out[name] = rel_error(grads[name], num)
    return out


def random_like(rng: np.random.Generator, x, scale: float = 1.0, shift: float = 0.0):
    """A float64 random array shaped like ``x`` (used as upstream gradient: never all ones)."""
    return rng.standard_normal(x.shape) * scale + shift


def dot(a, b) -> float:
    """<a, b> as a Python float (the scalar L = <f(x), dy>)."""
    xp = get_array_module(a, b)
    return float(xp.sum(a * b))
