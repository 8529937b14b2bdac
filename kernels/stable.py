"""softplus and sigmoid in plain xp (NumPy or CuPy, any shape and dtype), each computed stably:
the activations of layers/activations.py and the reference of the fused Bernoulli kernel
(kernels/bernoulli.py) share them."""

from __future__ import annotations

from jmvae_cupy.backend import get_array_module


def softplus(x):
    """softplus(x) = log(1 + e^x), computed stably as max(x, 0) + log1p(e^{-|x|})
    (no overflow for x = +100, no loss of precision for x = -100)."""
    xp = get_array_module(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def sigmoid(x):
    """sigmoid(x) = 1 / (1 + e^{-x}), computed stably: e^{-|x|} never overflows.

    x >= 0: 1 / (1 + e^{-x});  x < 0: e^{x} / (1 + e^{x}).
    """
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
