"""2-D convolution (cross-correlation, as in every deep-learning library), NCHW.

    y[n, o, oh, ow] = b[o] + sum_{c, i, j} W[o, c, i, j] * xpad[n, c, sy*oh + i, sx*ow + j]

Shapes: x (N, C_in, H, W); W (C_out, C_in, KH, KW); b (C_out,) or None;
y (N, C_out, OH, OW) with OH = (H + 2ph - KH) // sy + 1, OW = (W + 2pw - KW) // sx + 1.
The paper's CkBR layers use KH = KW = 4, stride 2, pad 1: 64 -> 32 -> 16 -> 8 -> 4.

How it is computed: im2col gathers every window into a row of ``col`` (M = N*OH*OW rows,
K = KH*KW*C_in columns), after which the convolution is one GEMM, y = col @ Wm^T, run by BLAS
on a CPU and by cuBLAS on a GPU.  The backward pass is two more GEMMs and a col2im; conv
backward-data *is* a transposed convolution (deconv.py) and the two layers share the two
primitives below, :func:`correlate` and its adjoint :func:`correlate_transpose`.  The loop
oracle, straight from the formula above, follows the layer.

Faster routes to the same numbers -- the fused bias + ReLU, a sub-pixel col2im, Winograd
F(2x2, 2x2) for the paper's 4x4 / stride-2 / pad-1 layers -- are in conv_fast.py, which also
holds the rules that choose them; this file calls those rules at the top of the layer.

Memory layout: the arithmetic runs channels-last (N, H, W, C), reached from NCHW by
``transpose(0, 2, 3, 1)`` (layout.py).  The outputs (y, dx) are NCHW-shaped *views*
(channels-last memory, or C order for fewer than 8 channels): correct NCHW arrays for every xp
operation (elementwise ops keep the layout, and the next conv then reads it without a copy);
call ``xp.ascontiguousarray`` where C order is needed (a raw kernel, a file).
:class:`jmvae_cupy.nets.Net` returns C-ordered arrays.

Derivation: docs/derivations/conv.md.  Checked by tests/layers/test_conv.py.
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from . import conv_fast as fast
from .im2col import SMALL_C, col2im, conv_outsize, im2col, pair
from .layout import (
    ConvShapeError,
    pad_nchw,
    to_nchw,
    to_nhwc,
    to_rows,
    weight_from_matrix,
    weight_matrix,
)

__all__ = ["ConvShapeError", "ConvCache", "correlate", "correlate_transpose", "conv2d_forward",
           "conv2d_backward", "conv2d_param_grads", "conv2d_forward_naive", "conv2d_backward_naive",
           "conv2d_init"]


# ---------------------------------------------------------------------------------------------
# The two primitives shared by conv and deconv: im2col + GEMM, and its adjoint
# ---------------------------------------------------------------------------------------------


def correlate(x, Wm, kh, kw, stride, pad):
    """The convolution as im2col + one GEMM, channels-last.

    x: (N, H, W, B) (a view is fine); Wm: (A, KH*KW*B) from :func:`weight_matrix`.
    Returns y_rows (N*OH*OW, A) with y_rows = col @ Wm^T, col (N*OH*OW, KH*KW*B) (kept by callers
    for the weight gradient), and (N, OH, OW).
    """
    sy, sx = stride
    ph, pw = pad
    col = im2col(x, kh, kw, sy, sx, ph, pw)  # (N, OH, OW, KH, KW, B)
    N, OH, OW = col.shape[:3]
    col = col.reshape(N * OH * OW, -1)  # (M, K), a view
    y_rows = col @ Wm.T  # (M, A): the GEMM
    return y_rows, col, (N, OH, OW)


def correlate_transpose(y_rows, Wm, n_hw, out_hw, kh, kw, stride, pad, method: str = "auto"):
    """The adjoint of :func:`correlate` with respect to x, channels-last: one GEMM and a col2im.

    y_rows: (N*OH*OW, A); Wm: (A, KH*KW*B); n_hw = (N, OH, OW); out_hw = (H, W).
    Returns x (N, H, W, B) = col2im(y_rows @ Wm).

    method: "scatter" computes exactly that; "subpixel" the same numbers without the scatter
    (conv_fast.correlate_transpose_subpixel); "auto" asks conv_fast.use_subpixel.
    """
    sy, sx = stride
    ph, pw = pad
    N, OH, OW = n_hw
    B = Wm.shape[1] // (kh * kw)
    if method == "auto":
        method = "subpixel" if fast.use_subpixel(n_hw, out_hw, B, kh, kw, stride, pad) else "scatter"
    if method == "subpixel":
        return fast.correlate_transpose_subpixel(y_rows, Wm, n_hw, out_hw, kh, kw, stride, pad)
    if B >= SMALL_C:
        col = y_rows @ Wm  # (M, KH*KW*B): the GEMM
        col = col.reshape(N, OH, OW, kh, kw, B)  # (N, OH, OW, KH, KW, B), a view
    else:  # few channels: col2im works channels-first, so let the GEMM write (i, j, b) planes
        col = Wm.T @ y_rows.T  # (KH*KW*B, M): the same GEMM, transposed
        col = col.reshape(kh, kw, B, N, OH, OW).transpose(3, 4, 5, 0, 1, 2)  # (N, OH, OW, KH, KW, B)
    return col2im(col, out_hw[0], out_hw[1], sy, sx, ph, pw)  # (N, H, W, B)


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------


class ConvCache(NamedTuple):
    """What :func:`conv2d_forward` keeps for :func:`conv2d_backward` (the im2col route; a
    Winograd layer keeps a conv_fast.WinogradConvCache)."""

    col: object        # im2col(x) (M, KH*KW*C_in), the input of the weight gradient
    Wm: object         # the kernel as the GEMM matrix (C_out, KH*KW*C_in)
    x_shape: tuple     # (N, C_in, H, W)
    W_shape: tuple     # (C_out, C_in, KH, KW)
    stride: tuple      # (sy, sx)
    pad: tuple         # (ph, pw)
    has_bias: bool
    y_relu: object     # the fused ReLU's output rows (M, C_out) (its mask), or None without relu


def _check(x, W, b, stride, pad, relu):
    if x.ndim != 4 or W.ndim != 4:
        raise ConvShapeError(f"conv2d needs x (N, C, H, W) and W (C_out, C_in, KH, KW), got {x.shape}, {W.shape}")
    if x.shape[1] != W.shape[1]:
        raise ConvShapeError(f"conv2d: x has {x.shape[1]} channels but W expects C_in = {W.shape[1]}")
    if b is not None and b.shape != (W.shape[0],):
        raise ConvShapeError(f"conv2d: b must have shape ({W.shape[0]},), got {b.shape}")
    (sy, sx), (ph, pw) = stride, pad
    KH, KW = W.shape[2:]
    if conv_outsize(x.shape[2], KH, sy, ph) < 1 or conv_outsize(x.shape[3], KW, sx, pw) < 1:
        raise ConvShapeError(f"conv2d: a {KH}x{KW} kernel does not fit a {x.shape[2]}x{x.shape[3]} input")
    if relu and b is None:
        raise ConvShapeError("conv2d: relu=True fuses the bias and the ReLU, it needs a bias b")


def conv2d_forward(x, W, b=None, stride=1, pad=0, relu: bool = False, method: str = "auto"):
    """y = conv(x, W) + b, or with relu=True y = max(conv(x, W) + b, 0).

    x: (N, C_in, H, W); W: (C_out, C_in, KH, KW); b: (C_out,) or None (no bias);
    stride, pad: int or (sy, sx), (ph, pw) (zero padding).  relu=True (needs b): the bias and the
    ReLU run as one pass over the GEMM output, as the paper's CkR layers (conv_fast.bias_forward).
    method: "auto", "im2col" or "winograd" (conv_fast.use_winograd).
    Returns y (N, C_out, OH, OW) -- an NCHW view of channels-last memory (C order below 8
    channels) -- and the cache that backward needs: a :class:`ConvCache`, or a
    conv_fast.WinogradConvCache from the Winograd route.
    """
    stride, pad = pair(stride), pair(pad)
    _check(x, W, b, stride, pad, relu)
    C_out, C_in, KH, KW = W.shape
    if fast.use_winograd(x.shape[2], x.shape[3], KH, KW, stride, pad, C_in, C_out, method):
        return fast.conv2d_forward_winograd(x, W, b, relu)
    Wm = weight_matrix(W)  # (C_out, KH*KW*C_in)
    y_rows, col, (N, OH, OW) = correlate(to_nhwc(x), Wm, KH, KW, stride, pad)  # (M, C_out)
    y_relu = fast.bias_forward(y_rows, b, relu)  # y_rows <- y_rows + b (then the ReLU), in place
    y = to_nchw(y_rows.reshape(N, OH, OW, C_out))  # (N, C_out, OH, OW)
    return y, ConvCache(col, Wm, x.shape, W.shape, stride, pad, b is not None, y_relu)


def conv2d_backward(dy, cache, need_dx: bool = True):
    """Closed form, with M = N*OH*OW rows dY (M, C_out) and col (M, KH*KW*C_in) = im2col(x):
    dW = dY^T col (C_out, C_in, KH, KW after reshaping); db = sum_rows dY (C_out,);
    dx = col2im(dY Wm) (N, C_in, H, W) -- a transposed convolution of dy with W.
    With the fused ReLU, dY is first masked: dY <- dY * [y > 0].

    Returns (dx, {"W": dW, "b": db}) ("b" only when the forward had a bias); dx is None when
    not need_dx.
    """
    if isinstance(cache, fast.WinogradConvCache):
        return fast.conv2d_backward_winograd(dy, cache, need_dx)
    N, _, H, W = cache.x_shape
    _, _, KH, KW = cache.W_shape
    OH, OW = dy.shape[2:]
    dy_rows, db = fast.bias_backward(to_rows(dy), cache.y_relu, cache.has_bias)  # (M, C_out), (C_out,)
    grads = {"W": weight_from_matrix(dy_rows.T @ cache.col, cache.W_shape)}  # (C_out, C_in, KH, KW)
    if db is not None:
        grads["b"] = db
    if not need_dx:
        return None, grads
    dx = correlate_transpose(dy_rows, cache.Wm, (N, OH, OW), (H, W), KH, KW, cache.stride, cache.pad)
    return to_nchw(dx), grads  # (N, C_in, H, W)


def conv2d_param_grads(dy, cache):
    """The parameter half of :func:`conv2d_backward`, {"W": dW, "b": db}: for a layer whose input
    is data (an image), dx is not wanted and its GEMM and col2im are skipped."""
    return conv2d_backward(dy, cache, need_dx=False)[1]


# ---------------------------------------------------------------------------------------------
# The oracle: slow, obviously correct, NCHW, written straight from the formula
# ---------------------------------------------------------------------------------------------


def conv2d_forward_naive(x, W, b=None, stride=1, pad=0):
    """The test oracle of :func:`conv2d_forward`: a loop over output pixels. Returns y only."""
    xp = get_array_module(x)
    (sy, sx), (ph, pw) = pair(stride), pair(pad)
    N, _, H, Wd = x.shape
    C_out, _, KH, KW = W.shape
    OH, OW = conv_outsize(H, KH, sy, ph), conv_outsize(Wd, KW, sx, pw)
    xpad = pad_nchw(x, ph, pw)
    y = xp.zeros((N, C_out, OH, OW), dtype=x.dtype)
    for oh in range(OH):
        for ow in range(OW):
            patch = xpad[:, :, sy * oh : sy * oh + KH, sx * ow : sx * ow + KW]  # (N, C_in, KH, KW)
            y[:, :, oh, ow] = xp.tensordot(patch, W, axes=([1, 2, 3], [1, 2, 3]))  # (N, C_out)
    if b is not None:
        y += b.reshape(1, C_out, 1, 1)
    return y


def conv2d_backward_naive(dy, x, W, stride=1, pad=0):
    """The test oracle of :func:`conv2d_backward`: every output pixel sends its gradient back to
    its window. Returns (dx, {"W": dW, "b": db})."""
    xp = get_array_module(x)
    (sy, sx), (ph, pw) = pair(stride), pair(pad)
    N, _, H, Wd = x.shape
    _, _, KH, KW = W.shape
    OH, OW = dy.shape[2:]
    xpad = pad_nchw(x, ph, pw)
    dxpad = xp.zeros_like(xpad)
    dW = xp.zeros_like(W)
    for oh in range(OH):
        for ow in range(OW):
            rows = slice(sy * oh, sy * oh + KH)
            cols = slice(sx * ow, sx * ow + KW)
            g = dy[:, :, oh, ow]  # (N, C_out)
            dW += xp.tensordot(g, xpad[:, :, rows, cols], axes=([0], [0]))  # (C_out, C_in, KH, KW)
            dxpad[:, :, rows, cols] += xp.tensordot(g, W, axes=([1], [0]))  # (N, C_in, KH, KW)
    dx = dxpad[:, :, ph : ph + H, pw : pw + Wd]
    return dx, {"W": dW, "b": dy.sum(axis=(0, 2, 3))}


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------


def conv2d_init(rng, c_in: int, c_out: int, kh: int, kw: int, dtype, xp, bias: bool = True):
    """Glorot-uniform W (C_out, C_in, KH, KW) and zero b (C_out,), as Lasagne does:
    limit = sqrt(6 / ((C_in + C_out) * KH * KW)). ``bias=False``: no "b" (a conv before batch norm).
    """
    limit = (6.0 / ((c_in + c_out) * kh * kw)) ** 0.5
    W = (rng.uniform((c_out, c_in, kh, kw), dtype, xp) * 2.0 - 1.0) * limit
    params = {"W": W.astype(dtype, copy=False)}
    if bias:
        params["b"] = xp.zeros((c_out,), dtype=dtype)
    return params
