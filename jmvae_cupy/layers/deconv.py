"""2-D transposed convolution ("deconvolution"), NCHW: the adjoint of conv2d with respect to x.

Every input pixel stamps its kernel, weighted by its channels, onto the output; overlapping
stamps add up, and ``pad`` rows / columns are cropped from each border of the result:

    ypad[n, o, sy*h + i, sx*w + j] += sum_c x[n, c, h, w] * W[c, o, i, j]
    y = ypad[:, :, ph : ph + OH, pw : pw + OW] + b

Shapes: x (N, C_in, H, W); W (C_in, C_out, KH, KW); b (C_out,) or None;
y (N, C_out, OH, OW) with OH = sy (H - 1) + KH - 2ph, OW = sx (W - 1) + KW - 2pw (there is
no output padding: the inverse of the conv output size when the conv divides evenly).
The paper's DCkBR layers use 4x4, stride 2, padding ("crop") 1: 4 -> 8 -> 16 -> 32 -> 64.

Shared machinery (conv.py): the forward is ``correlate_transpose`` (GEMM + col2im), exactly
conv backward-data; the backward-data is ``correlate`` (im2col + GEMM), exactly conv forward.
The Winograd route of the paper's 4x4 / stride-2 / pad-1 layers is in conv_fast.py, chosen by
the rule of the conv with the same kernel.  Outputs are NCHW-shaped views of channels-last
memory, as in conv.py.

Derivation: docs/derivations/deconv.md.  Checked by tests/layers/test_conv_transpose.py.
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from . import conv_fast as fast
from .conv import correlate, correlate_transpose
from .im2col import deconv_outsize, pair
from .layout import (
    ConvShapeError,
    pad_nchw,
    to_nchw,
    to_nhwc,
    to_rows,
    weight_from_matrix,
    weight_matrix,
)


class DeconvCache(NamedTuple):
    """What :func:`deconv2d_forward` keeps for :func:`deconv2d_backward` (the im2col route; a
    Winograd layer keeps a conv_fast.WinogradDeconvCache)."""

    x_rows: object     # the input pixels as rows (N*H*W, C_in), for the weight gradient
    Wm: object         # the kernel as the GEMM matrix (C_in, KH*KW*C_out)
    x_shape: tuple     # (N, C_in, H, W)
    W_shape: tuple     # (C_in, C_out, KH, KW)
    stride: tuple      # (sy, sx)
    pad: tuple         # (ph, pw)
    has_bias: bool


def _check(x, W, b, stride, pad):
    if x.ndim != 4 or W.ndim != 4:
        raise ConvShapeError(
            f"deconv2d needs x (N, C, H, W) and W (C_in, C_out, KH, KW), got {x.shape}, {W.shape}"
        )
    if x.shape[1] != W.shape[0]:
        raise ConvShapeError(f"deconv2d: x has {x.shape[1]} channels but W expects C_in = {W.shape[0]}")
    if b is not None and b.shape != (W.shape[1],):
        raise ConvShapeError(f"deconv2d: b must have shape ({W.shape[1]},), got {b.shape}")
    (sy, sx), (ph, pw) = stride, pad
    KH, KW = W.shape[2:]
    if deconv_outsize(x.shape[2], KH, sy, ph) < 1 or deconv_outsize(x.shape[3], KW, sx, pw) < 1:
        raise ConvShapeError(f"deconv2d: padding {pad} crops away the whole output")


def deconv2d_forward(x, W, b=None, stride=1, pad=0, method: str = "auto"):
    """y = conv_transpose(x, W) + b.

    x: (N, C_in, H, W); W: (C_in, C_out, KH, KW); b: (C_out,) or None;
    stride, pad: int or (sy, sx), (ph, pw) (pad = rows / columns cropped from each border).
    method: "auto", "im2col" or "winograd", decided for the correlation y -> x that this layer
    is the adjoint of (conv_fast.use_winograd: the conv with this kernel decides alike).
    Returns y (N, C_out, OH, OW) -- an NCHW view of channels-last memory (C order below 8
    channels) -- and the cache that backward needs: a :class:`DeconvCache`, or a
    conv_fast.WinogradDeconvCache from the Winograd route.
    """
    stride, pad = pair(stride), pair(pad)
    _check(x, W, b, stride, pad)
    N, C_in, H, Wd = x.shape
    _, C_out, KH, KW = W.shape
    OH, OW = deconv_outsize(H, KH, stride[0], pad[0]), deconv_outsize(Wd, KW, stride[1], pad[1])
    if fast.use_winograd(OH, OW, KH, KW, stride, pad, C_out, C_in, method):
        return fast.deconv2d_forward_winograd(x, W, b)
    x_rows = to_rows(x)  # (N*H*W, C_in)
    Wm = weight_matrix(W)  # (C_in, KH*KW*C_out)
    y = correlate_transpose(x_rows, Wm, (N, H, Wd), (OH, OW), KH, KW, stride, pad)  # (N, OH, OW, C_out)
    if b is not None:
        y += b
    return to_nchw(y), DeconvCache(x_rows, Wm, x.shape, W.shape, stride, pad, b is not None)


def deconv2d_backward(dy, cache):
    """Closed form, with X (N*H*W, C_in) the input pixels as rows and dcol = im2col(dy)
    (N*H*W, KH*KW*C_out):  dx = dcol Wm^T (N, C_in, H, W) -- a convolution of dy with W;
    dW = X^T dcol (C_in, C_out, KH, KW after reshaping); db = sum_{n,h,w} dy (C_out,).

    Returns (dx, {"W": dW, "b": db}) ("b" only when the forward had a bias).
    """
    if isinstance(cache, fast.WinogradDeconvCache):
        return fast.deconv2d_backward_winograd(dy, cache)
    N, C_in, H, Wd = cache.x_shape
    _, _, KH, KW = cache.W_shape
    dx_rows, dcol, _ = correlate(to_nhwc(dy), cache.Wm, KH, KW, cache.stride, cache.pad)  # (N*H*W, C_in), (N*H*W, K)
    grads = {"W": weight_from_matrix(cache.x_rows.T @ dcol, cache.W_shape)}  # (C_in, C_out, KH, KW)
    if cache.has_bias:
        grads["b"] = dy.sum(axis=(0, 2, 3))  # (C_out,)
    return to_nchw(dx_rows.reshape(N, H, Wd, C_in)), grads


def deconv2d_init(rng, c_in: int, c_out: int, kh: int, kw: int, dtype, xp, bias: bool = True):
    """Glorot-uniform W (C_in, C_out, KH, KW) and zero b (C_out,), as Lasagne does:
    limit = sqrt(6 / ((C_in + C_out) * KH * KW)). ``bias=False``: no "b" (before batch norm).
    """
    limit = (6.0 / ((c_in + c_out) * kh * kw)) ** 0.5
    W = (rng.uniform((c_in, c_out, kh, kw), dtype, xp) * 2.0 - 1.0) * limit
    params = {"W": W.astype(dtype, copy=False)}
    if bias:
        params["b"] = xp.zeros((c_out,), dtype=dtype)
    return params


# ---------------------------------------------------------------------------------------------
# The oracle: slow, obviously correct, NCHW, written straight from the stamping formula
# ---------------------------------------------------------------------------------------------


def deconv2d_forward_naive(x, W, b=None, stride=1, pad=0):
    """The test oracle of :func:`deconv2d_forward`: a loop over input pixels. Returns y only."""
    xp = get_array_module(x)
    (sy, sx), (ph, pw) = pair(stride), pair(pad)
    N, _, H, Wd = x.shape
    _, C_out, KH, KW = W.shape
    OH, OW = deconv_outsize(H, KH, sy, ph), deconv_outsize(Wd, KW, sx, pw)
    ypad = xp.zeros((N, C_out, sy * (H - 1) + KH, sx * (Wd - 1) + KW), dtype=x.dtype)
    for h in range(H):
        for w in range(Wd):
            stamp = xp.tensordot(x[:, :, h, w], W, axes=([1], [0]))  # (N, C_out, KH, KW)
            ypad[:, :, sy * h : sy * h + KH, sx * w : sx * w + KW] += stamp
    y = ypad[:, :, ph : ph + OH, pw : pw + OW]
    if b is not None:
        y = y + b.reshape(1, C_out, 1, 1)
    return y


def deconv2d_backward_naive(dy, x, W, stride=1, pad=0):
    """The test oracle of :func:`deconv2d_backward`: each input pixel collects the gradient of
    the stamp it made. Returns (dx, {"W": dW, "b": db})."""
    xp = get_array_module(x)
    (sy, sx), (ph, pw) = pair(stride), pair(pad)
    _, _, H, Wd = x.shape
    _, _, KH, KW = W.shape
    # dy padded back to the uncropped canvas (the crop's adjoint is zero padding)
    full_h, full_w = sy * (H - 1) + KH, sx * (Wd - 1) + KW
    dypad = pad_nchw(dy, ph, pw)[:, :, :full_h, :full_w]
    dx = xp.zeros_like(x)
    dW = xp.zeros_like(W)
    for h in range(H):
        for w in range(Wd):
            g = dypad[:, :, sy * h : sy * h + KH, sx * w : sx * w + KW]  # (N, C_out, KH, KW)
            dx[:, :, h, w] = xp.tensordot(g, W, axes=([1, 2, 3], [1, 2, 3]))  # (N, C_in)
            dW += xp.tensordot(x[:, :, h, w], g, axes=([0], [0]))  # (C_in, C_out, KH, KW)
    return dx, {"W": dW, "b": dy.sum(axis=(0, 2, 3))}
