"""The array layouts the conv layers move between, and their shape error.

The convolutions compute channels-last (N, H, W, C), where the C values of one pixel are
contiguous, and take and return NCHW arrays; the views below move between the two for free.  A
kernel becomes the matrix of one GEMM by :func:`weight_matrix`.  Used by conv.py, deconv.py and
conv_fast.py alike.
"""

from __future__ import annotations

from ..backend import get_array_module


class ConvShapeError(ValueError):
    """Shapes that a (transposed) convolution cannot combine."""


def to_nhwc(x):
    """(N, C, H, W) -> (N, H, W, C): a view, free."""
    return x.transpose(0, 2, 3, 1)


def to_nchw(x):
    """(N, H, W, C) -> (N, C, H, W): a view, free."""
    return x.transpose(0, 3, 1, 2)


def to_rows(x):
    """(N, C, H, W) -> (N*H*W, C): one row per pixel. Free when x is channels-last in memory."""
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def weight_matrix(W):
    """A kernel (A, B, KH, KW) as the GEMM matrix Wm (A, KH*KW*B), row a = W[a] in (kh, kw, b) order.

    For a conv W (C_out, C_in, KH, KW): Wm is (C_out, K); for a transposed conv W
    (C_in, C_out, KH, KW): Wm is (C_in, K).  A small copy (the weights, not the activations).
    """
    A, B, KH, KW = W.shape
    return W.transpose(0, 2, 3, 1).reshape(A, KH * KW * B)


def weight_from_matrix(Wm, shape):
    """Inverse of :func:`weight_matrix`: Wm (A, KH*KW*B) -> a C-ordered kernel (A, B, KH, KW)."""
    xp = get_array_module(Wm)
    A, B, KH, KW = shape
    return xp.ascontiguousarray(Wm.reshape(A, KH, KW, B).transpose(0, 3, 1, 2))


def pad_nchw(x, ph: int, pw: int):
    """x (N, C, H, W) with ph zero rows above and below and pw zero columns left and right."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    out[:, :, ph : ph + H, pw : pw + W] = x
    return out
