"""Elementwise activations: ReLU, softplus, sigmoid.  Any shape; y has the shape of x.

Derivation: docs/derivations/activations.md.  Checked by tests/layers/test_activations.py.
"""

from __future__ import annotations

from ..backend import get_array_module


def relu_forward(x):
    """y = max(x, 0). Returns y and the cache (the mask x > 0)."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dy, mask):
    """Closed form: dx = dy * [x > 0] (the subgradient 0 at x = 0).

    dy, mask: the shape of x (any); returns dx of that shape."""
    return dy * mask


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


def softplus_forward(x):
    """y = softplus(x). Returns y and the cache (x)."""
    return softplus(x), x


def softplus_backward(dy, x):
    """Closed form: d softplus(x)/dx = sigmoid(x), so dx = dy * sigmoid(x).

    dy, x: the shape of x (any); returns dx of that shape."""
    return dy * sigmoid(x)


def sigmoid_forward(x):
    """y = sigmoid(x). Returns y and the cache (y)."""
    y = sigmoid(x)
    return y, y


def sigmoid_backward(dy, y):
    """Closed form: d sigmoid(x)/dx = y (1 - y), so dx = dy * y * (1 - y).

    dy, y: the shape of x (any); returns dx of that shape."""
    return dy * y * (1.0 - y)
