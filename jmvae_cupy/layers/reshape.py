"""Flatten (N, C, H, W) -> (N, C*H*W) and its inverse, reshape (N, D) -> (N, C, H, W).

Both only re-index: y[n, (c*H + h)*W + w] = x[n, c, h, w] (C order, as every library flattens),
so the backward pass re-indexes dy the other way. Checked by tests/test_nets.py.
"""

from __future__ import annotations


def flatten_forward(x):
    """x (N, *shape) -> y (N, prod(shape)) in C order (a copy only when x is not C-ordered).
    Returns y and the cache (x.shape)."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dy, x_shape):
    """dx = dy reshaped to x's shape (N, *shape)."""
    return dy.reshape(x_shape)


def reshape_forward(x, shape):
    """x (N, *anything) -> y (N, *shape), same C-order numbers. Returns y and the cache (x.shape)."""
    return x.reshape((x.shape[0], *shape)), x.shape


def reshape_backward(dy, x_shape):
    """dx = dy reshaped to x's shape."""
    return dy.reshape(x_shape)
