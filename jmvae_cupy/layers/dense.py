"""Fully connected layer:  y = x W + b.

Shapes: x (N, D_in), W (D_in, D_out), b (D_out,), y (N, D_out).
Derivation: docs/derivations/dense.md.  Checked by tests/layers/test_dense.py.
"""

from __future__ import annotations

from ..kernels.bias_relu import bias_relu_backward, bias_relu_forward


def dense_forward(x, W, b):
    """y = x @ W + b.

    x: (N, D_in); W: (D_in, D_out); b: (D_out,).
    Returns y (N, D_out) and the cache (x, W) that backward needs.
    """
    y = x @ W  # (N, D_out)
    y += b
    return y, (x, W)


def dense_backward(dy, cache):
    """Closed form: dx = dy W^T (N, D_in); dW = x^T dy (D_in, D_out); db = sum_n dy (D_out,).

    dy: (N, D_out) upstream gradient; cache: (x, W) from dense_forward.
    Returns (dx, {"W": dW, "b": db}).
    """
    x, W = cache
    dx = dy @ W.T  # (N, D_in)
    return dx, dense_param_grads(dy, cache)


def dense_param_grads(dy, cache):
    """The parameter half of :func:`dense_backward`: dW = x^T dy (D_in, D_out); db = sum_n dy (D_out,).

    For a layer whose input is data (no dx wanted): one GEMM fewer.  Returns {"W": dW, "b": db}.
    """
    x, _ = cache
    dW = x.T @ dy  # (D_in, D_out)
    db = dy.sum(axis=0)  # (D_out,)
    return {"W": dW, "b": db}


def dense_relu_forward(x, W, b):
    """y = max(x @ W + b, 0): a dense layer and its ReLU, the bias and the ReLU fused into one pass
    over the GEMM output (kernels/bias_relu.py), in place.

    x: (N, D_in); W: (D_in, D_out); b: (D_out,).
    Returns y (N, D_out) and the cache (x, W, y) that backward needs (y > 0 is the ReLU's mask).
    """
    y = bias_relu_forward(x @ W, b)  # (N, D_out)
    return y, (x, W, y)


def dense_relu_backward(dy, cache):
    """Closed form, with u = x W + b and the mask [u > 0] = [y > 0]:
    du = dy * [y > 0] (N, D_out); dx = du W^T (N, D_in); dW = x^T du (D_in, D_out); db = sum_n du (D_out,).

    dy: (N, D_out) upstream gradient; cache: (x, W, y) from dense_relu_forward.
    Returns (dx, {"W": dW, "b": db}).
    """
    _, W, _ = cache
    grads = dense_relu_param_grads(dy, cache)
    return grads.pop("du") @ W.T, grads


def dense_relu_param_grads(dy, cache):
    """The parameter half of :func:`dense_relu_backward` (no dx: the input is data), plus du.

    Returns {"W": dW, "b": db, "du": du}; the caller pops "du"."""
    x, _, y = cache
    du, db = bias_relu_backward(dy, y)  # du = dy [y > 0], db = sum_n du, one pass
    return {"W": x.T @ du, "b": db, "du": du}


def dense_init(rng, d_in: int, d_out: int, dtype, xp):
    """Glorot-uniform W (D_in, D_out) and zero b (D_out,), as Lasagne (the paper's library) does."""
    limit = (6.0 / (d_in + d_out)) ** 0.5
    W = (rng.uniform((d_in, d_out), dtype, xp) * 2.0 - 1.0) * limit
    b = xp.zeros((d_out,), dtype=dtype)
    return {"W": W.astype(dtype, copy=False), "b": b}
