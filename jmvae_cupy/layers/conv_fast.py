"""The fast routes of conv.py and deconv.py: the same numbers as the im2col path, computed
another way, and the rules that choose them.  Read conv.py first.

- **Fused bias + ReLU** (``relu=True``, the paper's CkR layers): one pass over the GEMM output
  adds the bias and applies the ReLU, and one pass back masks dY and sums db
  (kernels/bias_relu.py), instead of three and two.
- **Sub-pixel transposed correlation**: col2im(dY Wm) as one stride-1 correlation and a pixel
  shuffle, without col2im's strided scatter (conv backward-data, deconv forward, large grids).
- **Winograd F(2x2, 2x2)** for the paper's 4x4 / stride-2 / pad-1 layers: 9/16 of the GEMM work
  and no im2col (layers/winograd.py, docs/derivations/winograd.md).  A Winograd layer keeps its
  own cache, :class:`WinogradConvCache` or :class:`WinogradDeconvCache`.

Which route runs is decided here, by :func:`use_winograd` and :func:`use_subpixel`, and nowhere
else; ``method="im2col"`` turns Winograd off for one call, and the tests hold every route to the
im2col path and the loop oracles (tests/layers/test_conv.py, test_winograd.py).
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from ..kernels.bias_relu import bias_relu_backward, bias_relu_forward
from . import winograd
from .im2col import deconv_outsize, im2col
from .layout import ConvShapeError, to_nchw, to_nhwc, to_rows

# ---------------------------------------------------------------------------------------------
# The rules: which route runs
# ---------------------------------------------------------------------------------------------

METHODS = ("auto", "im2col", "winograd")


def use_winograd(h: int, w: int, kh: int, kw: int, stride, pad, b_channels: int, a_channels: int,
                 method: str = "auto") -> bool:
    """Whether a correlation of an (h, w, B) input into A channels runs as Winograd F(2x2, 2x2).

    method "im2col": never; "winograd": always (a ConvShapeError where the geometry does not
    allow it: layers/winograd.applies); "auto": where it applies and was measured faster on a
    CPU (layers/winograd.pays: both channel counts >= 16 and the input at least 8 x 8: every
    CelebA conv and deconv but the RGB ones; python bench/micro.py winograd).
    A conv and the deconv with the same kernel decide alike (the deconv's correlation runs from
    its output to its input), so deconv backward-data is still exactly conv forward.
    """
    if method not in METHODS:
        raise ConvShapeError(f"conv method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "im2col":
        return False
    ok = winograd.applies(h, w, kh, kw, stride, pad)
    if method == "winograd":
        if not ok:
            raise ConvShapeError(f"winograd: needs a 4x4 kernel, stride 2, padding 1, sides multiples of 4; "
                                 f"got a {kh}x{kw} kernel, stride {tuple(stride)}, padding {tuple(pad)}, {h}x{w}")
        return True
    return ok and winograd.pays(h, w, b_channels, a_channels)


def use_subpixel(n_hw, out_hw, b_channels: int, kh: int, kw: int, stride, pad) -> bool:
    """Whether col2im(dY Wm) -- from an (N, OH, OW) grid to (H, W) with B channels -- runs as
    :func:`correlate_transpose_subpixel`: where the output is exactly the transposed-conv size
    and it was measured faster on a CPU, large grids (OH, OW >= 16) with B >= 8 channels, e.g.
    the paper's 16x16x128 -> 32x32x64 layer; smaller grids, or B = 3 (an RGB image), are faster
    with the scatter (python bench/micro.py subpixel; docs/derivations/deconv.md)."""
    _, OH, OW = n_hw
    exact = tuple(out_hw) == (deconv_outsize(OH, kh, stride[0], pad[0]), deconv_outsize(OW, kw, stride[1], pad[1]))
    return exact and min(OH, OW) >= 16 and b_channels >= 8


def is_winograd(cache) -> bool:
    """Whether a conv or deconv layer's cache comes from the Winograd route."""
    return isinstance(cache, (WinogradConvCache, WinogradDeconvCache))


# ---------------------------------------------------------------------------------------------
# The bias, with or without the fused ReLU
# ---------------------------------------------------------------------------------------------


def bias_forward(y_rows, b, relu: bool):
    """y_rows (M, C_out) <- y_rows + b, or with relu max(y_rows + b, 0) in one pass; in place.
    Returns the ReLU's output rows (they hold its mask [y > 0]) for :func:`bias_backward`, or None."""
    if relu:
        bias_relu_forward(y_rows, b)
        return y_rows
    if b is not None:
        y_rows += b
    return None


def bias_backward(dy_rows, y_relu, has_bias: bool):
    """dY (M, C_out) -> (dY [y > 0] -- the mask only after a fused ReLU --, db = sum_rows of that
    or None without a bias); after a ReLU, one pass does both."""
    if y_relu is not None:
        return bias_relu_backward(dy_rows, y_relu)
    return dy_rows, (dy_rows.sum(axis=0) if has_bias else None)


# ---------------------------------------------------------------------------------------------
# Sub-pixel transposed correlation
# ---------------------------------------------------------------------------------------------


def correlate_transpose_subpixel(y_rows, Wm, n_hw, out_hw, kh, kw, stride, pad):
    """conv.correlate_transpose -- x (N, H, W, B) = col2im(y_rows @ Wm) -- as one stride-1
    correlation and a pixel shuffle (no scatter).  y_rows (N*OH*OW, A); Wm (A, KH*KW*B).

    In one dimension, with stride s, crop p and Ks = ceil(K / s): output position u = s*t + r - p
    (its *phase* is r = (u + p) mod s) receives tap i only when i = r + s*a, from window t - a:

        x[s*t + r - p] = sum_{a < Ks} y[t - a] W[r + s*a]          (taps i >= K count as zero)

    so each of the s*s phases (r, q) is a stride-1 correlation of y with a Ks x Ks sub-kernel.
    All phases share one im2col of y (Ks x Ks windows, stride 1, Ks - 1 zeros of padding) and one
    GEMM with s*s*B columns; the phases are then interleaved ("pixel shuffle") into x. The GEMM
    does ~(OH + Ks - 1)^2 / OH^2 times the work of the scatter's, but the KH*KW strided
    read-modify-write passes of col2im are gone.  Needs H = s (OH - 1) + KH - 2p (no rows beyond
    the last window), as a transposed convolution always has.
    Derivation: docs/derivations/deconv.md.
    """
    xp = get_array_module(y_rows)
    (sy, sx), (ph, pw) = stride, pad
    N, OH, OW = n_hw
    H, W = out_hw
    if (H, W) != (deconv_outsize(OH, kh, sy, ph), deconv_outsize(OW, kw, sx, pw)):
        raise ConvShapeError(f"sub-pixel method: output {H}x{W} is not the transposed-conv size of {OH}x{OW}")
    A = Wm.shape[0]
    B = Wm.shape[1] // (kh * kw)
    ay, ax = -(-kh // sy), -(-kw // sx)  # sub-kernel size Ks = ceil(K / s), per axis
    # The sub-kernels as one matrix (ay*ax*A, sy*sx*B): row (e_y, e_x, a) is window element
    # (e_y, e_x) -- which sees y[t - (ay-1-e_y)] -- of input channel a; column (r, q, b) is
    # output channel b of phase (r, q); the entry is W[a, b, r + sy*(ay-1-e_y), q + sx*(ax-1-e_x)].
    Wk = xp.zeros((A, ay * sy, ax * sx, B), dtype=Wm.dtype)  # the kernel, zero-padded to s*A
    Wk[:, :kh, :kw, :] = Wm.reshape(A, kh, kw, B)
    Wk = Wk.reshape(A, ay, sy, ax, sx, B)[:, ::-1, :, ::-1]  # [a, e_y, r, e_x, q, b]
    Wsub = Wk.transpose(1, 3, 0, 2, 4, 5).reshape(ay * ax * A, sy * sx * B)  # a small copy
    col = im2col(y_rows.reshape(N, OH, OW, A), ay, ax, 1, 1, ay - 1, ax - 1)  # (N, TH, TW, ay, ax, A)
    TH, TW = col.shape[1:3]  # OH + ay - 1, OW + ax - 1 windows
    z = col.reshape(N * TH * TW, -1) @ Wsub  # (N*TH*TW, sy*sx*B): the GEMM
    z = z.reshape(N, TH, TW, sy, sx, B)  # z[n, t, u, r, q] is pixel (sy*t + r - ph, sx*u + q - pw)
    # pixel shuffle: phase (r, q) fills rows h0, h0+sy, ... and columns w0, w0+sx, ... of x
    x = xp.empty((N, H, W, B), dtype=z.dtype)
    for r in range(sy):
        h0 = (r - ph) % sy  # first row of phase r, from window t0
        t0, nt = (h0 + ph - r) // sy, len(range(h0, H, sy))
        for q in range(sx):
            w0 = (q - pw) % sx
            u0, nu = (w0 + pw - q) // sx, len(range(w0, W, sx))
            x[:, h0::sy, w0::sx, :] = z[:, t0 : t0 + nt, u0 : u0 + nu, r, q, :]
    return x


# ---------------------------------------------------------------------------------------------
# Winograd F(2x2, 2x2) layers (the products: layers/winograd.py)
# ---------------------------------------------------------------------------------------------


class WinogradConvCache(NamedTuple):
    """What :func:`conv2d_forward_winograd` keeps for :func:`conv2d_backward_winograd`."""

    V: object          # B^T d B, the input's tiles transformed (9, T, 4 C_in): the weight gradient's input
    Ut: object         # the kernel transformed, stored transposed (9, C_out, 4 C_in)
    x_shape: tuple     # (N, C_in, H, W)
    W_shape: tuple     # (C_out, C_in, 4, 4)
    has_bias: bool
    y_relu: object     # the fused ReLU's output rows (M, C_out) (its mask), or None without relu


def conv2d_forward_winograd(x, W, b=None, relu: bool = False):
    """conv.conv2d_forward of a 4x4 / stride-2 / pad-1 layer: y = A^T (V U) A + b (then the ReLU).
    x (N, C_in, H, W) -> y (N, C_out, H/2, W/2), an NCHW view of channels-last memory."""
    C_out = W.shape[0]
    Ut = winograd.weight_transform(W)  # (9, C_out, 4 C_in)
    y4, V = winograd.correlate(to_nhwc(x), Ut)  # (N, OH, OW, C_out), (9, T, 4 C_in)
    N, OH, OW = y4.shape[:3]
    y_rows = y4.reshape(N * OH * OW, C_out)  # (M, C_out), a view
    y_relu = bias_forward(y_rows, b, relu)
    return to_nchw(y4), WinogradConvCache(V, Ut, x.shape, W.shape, b is not None, y_relu)


def conv2d_backward_winograd(dy, cache: WinogradConvCache, need_dx: bool = True):
    """dM = A dY A^T (9, T, C_out); dW = G^T (V^T dM) G; db = sum_rows dY; dx = B (dM U^T) B^T.
    Returns (dx or None when not need_dx, {"W": dW, "b": db})."""
    N, _, H, W = cache.x_shape
    OH, OW = dy.shape[2:]
    dy_rows, db = bias_backward(to_rows(dy), cache.y_relu, cache.has_bias)  # (M, C_out)
    dM = winograd.wino_output_adj(dy_rows.reshape(N, OH, OW, -1))  # (9, T, C_out)
    grads = {"W": winograd.weight_grad(cache.V, dM, cache.W_shape)}
    if db is not None:
        grads["b"] = db
    if not need_dx:
        return None, grads
    return to_nchw(winograd.correlate_transpose(dM, cache.Ut, N, H, W)), grads  # (N, C_in, H, W)


class WinogradDeconvCache(NamedTuple):
    """What :func:`deconv2d_forward_winograd` keeps for :func:`deconv2d_backward_winograd`."""

    dM: object         # A x A^T, the input's tiles transformed (9, T, C_in): the weight gradient's input
    Ut: object         # the kernel transformed, stored transposed (9, C_in, 4 C_out)
    x_shape: tuple     # (N, C_in, H, W)
    W_shape: tuple     # (C_in, C_out, 4, 4)
    has_bias: bool


def deconv2d_forward_winograd(x, W, b=None):
    """deconv.deconv2d_forward of a 4x4 / stride-2 / pad-1 layer, the adjoint of the conv's
    correlation: y = B (dM U^T) B^T + b with dM = A x A^T.  x (N, C_in, H, W) -> y (N, C_out, 2H, 2W)."""
    N, _, H, Wd = x.shape
    Ut = winograd.weight_transform(W)  # (9, C_in, 4 C_out)
    dM = winograd.wino_output_adj(to_nhwc(x))  # (9, T, C_in)
    y = winograd.correlate_transpose(dM, Ut, N, 2 * H, 2 * Wd)  # (N, OH, OW, C_out)
    if b is not None:
        y += b
    return to_nchw(y), WinogradDeconvCache(dM, Ut, x.shape, W.shape, b is not None)


def deconv2d_backward_winograd(dy, cache: WinogradDeconvCache):
    """V = B^T dy B; dx = A^T (V U) A; dW = G^T (V^T dM) G; db = sum_{n,h,w} dy.
    Returns (dx (N, C_in, H, W), {"W": dW, "b": db})."""
    dx, V = winograd.correlate(to_nhwc(dy), cache.Ut)  # (N, H, W, C_in), (9, T, 4 C_out)
    grads = {"W": winograd.weight_grad(V, cache.dM, cache.W_shape)}
    if cache.has_bias:
        grads["b"] = dy.sum(axis=(0, 2, 3))  # (C_out,)
    return to_nchw(dx), grads
