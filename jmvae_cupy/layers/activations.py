"""Elementwise activations: ReLU, softplus, sigmoid.  Any shape; y has the shape of x.

Derivation: docs/derivations/activations.md.  Checked by tests/layers/test_activations.py.
"""

from __future__ import annotations

from ..kernels.stable import sigmoid, softplus  # noqa: F401  (softplus(x), sigmoid(x): stable, any xp)


def relu_forward(x):
    """y = max(x, 0). Returns y and the cache (the mask x > 0)."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dy, mask):
    """Closed form: dx = dy * [x > 0] (the subgradient 0 at x = 0).

    dy, mask: the shape of x (any); returns dx of that shape."""
    return dy * mask


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
