"""Fully connected layer:  y = x W + b.

Shapes: x (N, D_in), W (D_in, D_out), b (D_out,), y (N, D_out).
Derivation: docs/derivations/dense.md.  Checked by tests/layers/test_dense.py.
"""

from __future__ import annotations


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


def dense_init(rng, d_in: int, d_out: int, dtype, xp):
    """Glorot-uniform W (D_in, D_out) and zero b (D_out,), as Lasagne (the paper's library) does."""
    limit = (6.0 / (d_in + d_out)) ** 0.5
    W = (rng.uniform((d_in, d_out), dtype, xp) * 2.0 - 1.0) * limit
    b = xp.zeros((d_out,), dtype=dtype)
    return {"W": W.astype(dtype, copy=False), "b": b}
