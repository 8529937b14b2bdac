"""2-D convolution (cross-correlation, as in every deep-learning library), NCHW.

    y[n, o, oh, ow] = b[o] + sum_{c, i, j} W[o, c, i, j] * xpad[n, c, sy*oh + i, sx*ow + j]

Shapes: x (N, C_in, H, W); W (C_out, C_in, KH, KW); b (C_out,) or None;
y (N, C_out, OH, OW) with OH = (H + 2ph - KH) // sy + 1, OW = (W + 2pw - KW) // sx + 1.
The paper's CkBR layers use KH = KW = 4, stride 2, pad 1: 64 -> 32 -> 16 -> 8 -> 4.

How it is computed: im2col gathers every window into a row of ``col`` (M = N*OH*OW rows,
K = KH*KW*C_in columns), after which the convolution is one GEMM, y = col @ Wm^T, run by BLAS
on a CPU and by cuBLAS on a GPU.  The backward pass is two more GEMMs and a col2im; conv
backward-data *is* a transposed convolution (deconv.py) and the two layers share the two
primitives below, :func:`correlate` and its adjoint :func:`correlate_transpose` (which, on
large grids, computes col2im(dY Wm) by a sub-pixel decomposition instead of a scatter).
The paper's 4x4 / stride-2 / pad-1 layers with 8x8 or larger inputs and >= 16 channels skip
im2col altogether: ``method="auto"`` runs them as Winograd F(2x2, 2x2) (layers/winograd.py,
9/16 of the GEMM work; :func:`use_winograd` decides, for conv and deconv alike).

Memory layout: the arithmetic runs channels-last (N, H, W, C), reached from NCHW by
``transpose(0, 2, 3, 1)``.  The outputs (y, dx) are NCHW-shaped *views* (channels-last memory,
or C order for fewer than 8 channels): correct NCHW arrays for every xp operation (elementwise
ops keep the layout, and the next conv then reads it without a copy); call
``xp.ascontiguousarray`` where C order is needed (a raw kernel, a file).
:class:`jmvae_cupy.nets.Net` returns C-ordered arrays.

Derivation: docs/derivations/conv.md.  Checked by tests/layers/test_conv.py.
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from ..kernels.bias_relu import bias_relu_backward, bias_relu_forward
from . import winograd
from .im2col import SMALL_C, col2im, conv_outsize, deconv_outsize, im2col, pair


class ConvShapeError(ValueError):
    """Shapes that a (transposed) convolution cannot combine."""


# ---------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The method: im2col + one GEMM, or Winograd F(2x2, 2x2) (layers/winograd.py)
# ---------------------------------------------------------------------------------------------

METHODS = ("auto", "im2col", "winograd")


class WinogradCache(NamedTuple):
    """What a Winograd layer keeps for its backward, in place of im2col's ``col``: the transformed
    correlation input V (9, T, 4B) -- or, in a deconv, the transformed correlation output dM
    (9, T, A) -- and the transformed kernel, stored transposed: Ut (9, A, 4B)."""

    data: object
    Ut: object


class ConvCache(NamedTuple):
    """What :func:`conv2d_forward` keeps for :func:`conv2d_backward`."""

    col: object        # im2col(x) (M, KH*KW*C_in), the input of the weight gradient; or a WinogradCache
    Wm: object         # the kernel as the GEMM matrix (C_out, KH*KW*C_in); None for Winograd
    x_shape: tuple     # (N, C_in, H, W)
    W_shape: tuple     # (C_out, C_in, KH, KW)
    stride: tuple      # (sy, sx)
    pad: tuple         # (ph, pw)
    has_bias: bool
    y_relu: object     # the fused ReLU's output rows (M, C_out) (its mask), or None without relu


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


# ---------------------------------------------------------------------------------------------
# The two primitives shared by conv and deconv
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
    """The adjoint of :func:`correlate` with respect to x, channels-last.

    y_rows: (N*OH*OW, A); Wm: (A, KH*KW*B); n_hw = (N, OH, OW); out_hw = (H, W).
    Returns x (N, H, W, B) = col2im(y_rows @ Wm).

    method: "scatter" computes exactly that (one GEMM + col2im); "subpixel" the same numbers
    without a scatter (:func:`correlate_transpose_subpixel`); "auto" picks "subpixel" where it
    was measured faster on a CPU: large grids (OH, OW >= 16) with B >= 8 channels, e.g. the
    paper's 16x16x128 -> 32x32x64 layer (subpixel 34 ms, scatter 47 ms at N = 64); smaller grids, or B = 3 (an
    RGB image), are faster with the scatter.
    """
    if method == "auto":
        method = "subpixel" if _subpixel_pays(n_hw, out_hw, Wm, kh, kw, stride, pad) else "scatter"
    if method == "subpixel":
        return correlate_transpose_subpixel(y_rows, Wm, n_hw, out_hw, kh, kw, stride, pad)
    sy, sx = stride
    ph, pw = pad
    N, OH, OW = n_hw
    B = Wm.shape[1] // (kh * kw)
    if B >= SMALL_C:
        col = y_rows @ Wm  # (M, KH*KW*B): the GEMM
        col = col.reshape(N, OH, OW, kh, kw, B)  # (N, OH, OW, KH, KW, B), a view
    else:  # few channels: col2im works channels-first, so let the GEMM write (i, j, b) planes
        col = Wm.T @ y_rows.T  # (KH*KW*B, M): the same GEMM, transposed
        col = col.reshape(kh, kw, B, N, OH, OW).transpose(3, 4, 5, 0, 1, 2)  # (N, OH, OW, KH, KW, B)
    return col2im(col, out_hw[0], out_hw[1], sy, sx, ph, pw)  # (N, H, W, B)


def _subpixel_pays(n_hw, out_hw, Wm, kh, kw, stride, pad) -> bool:
    """The "auto" rule of :func:`correlate_transpose` (see there)."""
    _, OH, OW = n_hw
    b = Wm.shape[1] // (kh * kw)  # output channels
    exact = out_hw == (deconv_outsize(OH, kh, stride[0], pad[0]), deconv_outsize(OW, kw, stride[1], pad[1]))
    return exact and min(OH, OW) >= 16 and b >= 8


def correlate_transpose_subpixel(y_rows, Wm, n_hw, out_hw, kh, kw, stride, pad):
    """:func:`correlate_transpose` as one stride-1 correlation and a pixel shuffle (no scatter).

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
# Convolution
# ---------------------------------------------------------------------------------------------


def _check(x, W, b, stride, pad):
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


def conv2d_forward(x, W, b=None, stride=1, pad=0, relu: bool = False, method: str = "auto"):
    """y = conv(x, W) + b, or with relu=True y = max(conv(x, W) + b, 0).

    x: (N, C_in, H, W); W: (C_out, C_in, KH, KW); b: (C_out,) or None (no bias);
    stride, pad: int or (sy, sx), (ph, pw) (zero padding).  relu=True (needs b): the bias and the
    ReLU run as one pass over the GEMM output (kernels/bias_relu.py), as the paper's CkR layers.
    method: "auto", "im2col" or "winograd" (:func:`use_winograd`).
    Returns y (N, C_out, OH, OW) -- an NCHW view of channels-last memory (C order below 8
    channels) -- and the :class:`ConvCache` that backward needs (a Winograd layer keeps a
    :class:`WinogradCache` (V, U) as its ``col`` and None as its ``Wm``).
    """
    stride, pad = pair(stride), pair(pad)
    _check(x, W, b, stride, pad)
    if relu and b is None:
        raise ConvShapeError("conv2d: relu=True fuses the bias and the ReLU, it needs a bias b")
    C_out, C_in, KH, KW = W.shape
    if use_winograd(x.shape[2], x.shape[3], KH, KW, stride, pad, C_in, C_out, method):
        U = winograd.weight_transform(W)  # (9, C_out, 4 C_in)
        y4, V = winograd.correlate(to_nhwc(x), U)  # (N, OH, OW, C_out), (9, T, 4 C_in)
        N, OH, OW = y4.shape[:3]
        y_rows, col, Wm = y4.reshape(N * OH * OW, C_out), WinogradCache(V, U), None
    else:
        Wm = weight_matrix(W)  # (C_out, KH*KW*C_in)
        y_rows, col, (N, OH, OW) = correlate(to_nhwc(x), Wm, KH, KW, stride, pad)  # (M, C_out)
    if relu:
        bias_relu_forward(y_rows, b)  # y_rows <- max(y_rows + b, 0), in place
    elif b is not None:
        y_rows += b
    y = to_nchw(y_rows.reshape(N, OH, OW, C_out))  # (N, C_out, OH, OW)
    return y, ConvCache(col, Wm, x.shape, W.shape, stride, pad, b is not None, y_rows if relu else None)


def conv2d_backward(dy, cache):
    """Closed form, with M = N*OH*OW rows dY (M, C_out) and col (M, KH*KW*C_in) = im2col(x):
    dW = dY^T col (C_out, C_in, KH, KW after reshaping); db = sum_rows dY (C_out,);
    dx = col2im(dY Wm) (N, C_in, H, W) -- a transposed convolution of dy with W.
    With the fused ReLU, dY is first masked: dY <- dY * [y > 0].

    Returns (dx, {"W": dW, "b": db}) ("b" only when the forward had a bias).
    """
    N, _, H, W = cache.x_shape
    _, _, KH, KW = cache.W_shape
    OH, OW = dy.shape[2:]
    dy_rows, grads, dM = _param_grads(dy, cache)  # (M, C_out)
    if dM is not None:  # Winograd: dx = B (dM U^T) B^T
        dx = winograd.correlate_transpose(dM, cache.col.Ut, N, H, W)  # (N, H, W, C_in)
    else:
        dx = correlate_transpose(dy_rows, cache.Wm, (N, OH, OW), (H, W), KH, KW, cache.stride,
                                 cache.pad)  # (N, H, W, C_in)
    return to_nchw(dx), grads


def conv2d_param_grads(dy, cache):
    """The parameter half of :func:`conv2d_backward`, {"W": dW, "b": db}: for a layer whose input
    is data (an image), dx is not wanted and its GEMM and col2im are skipped."""
    return _param_grads(dy, cache)[1]


def _param_grads(dy, cache):
    """dY (M, C_out) -- masked by the fused ReLU if any --, {"W": dY^T col, "b": sum_rows dY}, and
    for a Winograd layer dM = A dY A^T (9, T, C_out), which dx needs too (else None)."""
    col, W_shape, has_bias = cache.col, cache.W_shape, cache.has_bias
    dy_rows = to_rows(dy)  # (M, C_out)
    if cache.y_relu is not None:
        dy_rows, db = bias_relu_backward(dy_rows, cache.y_relu)  # dY [y > 0] and its column sums, one pass
    elif has_bias:
        db = dy_rows.sum(axis=0)  # (C_out,)
    dM = None
    if isinstance(col, WinogradCache):  # dW = G^T (V^T dM) G
        N, _, OH, OW = dy.shape
        dM = winograd.wino_output_adj(dy_rows.reshape(N, OH, OW, -1))
        grads = {"W": winograd.weight_grad(col.data, dM, W_shape)}
    else:
        grads = {"W": weight_from_matrix(dy_rows.T @ col, W_shape)}  # (C_out, C_in, KH, KW)
    if has_bias:
        grads["b"] = db
    return dy_rows, grads, dM


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


# ---------------------------------------------------------------------------------------------
# The oracle: slow, obviously correct, NCHW, written straight from the formula
# ---------------------------------------------------------------------------------------------


def _pad_nchw(x, ph, pw):
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    out[:, :, ph : ph + H, pw : pw + W] = x
    return out


def conv2d_forward_naive(x, W, b=None, stride=1, pad=0):
    """The test oracle of :func:`conv2d_forward`: a loop over output pixels. Returns y only."""
    xp = get_array_module(x)
    (sy, sx), (ph, pw) = pair(stride), pair(pad)
    N, _, H, Wd = x.shape
    C_out, _, KH, KW = W.shape
    OH, OW = conv_outsize(H, KH, sy, ph), conv_outsize(Wd, KW, sx, pw)
    xpad = _pad_nchw(x, ph, pw)
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
    xpad = _pad_nchw(x, ph, pw)
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
