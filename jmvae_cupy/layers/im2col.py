"""im2col / col2im: the gather and the scatter that turn a convolution into one GEMM.

Images here are **channels-last** (N, H, W, C): the C values of one pixel are contiguous, so
every copy below moves runs of C (or KW*C) numbers instead of single numbers. The conv layers
(conv.py, deconv.py) take NCHW arrays and look at them through ``x.transpose(0, 2, 3, 1)``,
which is free (a view) and costs nothing more when the array is already channels-last in memory.

A *column* array holds, for every output pixel (n, oh, ow), the KH*KW*C input numbers its
window sees, in the order (kh, kw, c):

    col[n, oh, ow, i, j, c] = xpad[n, sy*oh + i, sx*ow + j, c]          (im2col)

where xpad is x with ``ph`` / ``pw`` zeros on each side of H / W. Its adjoint sums every column
entry back onto the pixel it came from:

    x[n, h, w, c] = sum over (oh, i, ow, j) with sy*oh + i - ph = h, sx*ow + j - pw = w
                    of col[n, oh, ow, i, j, c]                           (col2im)

so <im2col(x), col> = <x, col2im(col)> for all x, col: the pair are each other's adjoint, which
is why conv backward-data is a transposed conv and vice versa (conv.py).

Both run on NumPy and CuPy alike (``xp`` comes from the input). No Python loop over samples or
pixels: im2col is one copy of a strided sliding-window view; col2im loops over the KH*KW taps,
adding one strided slice per tap (never ``add.at``, which is >10x slower).
Derivation: docs/derivations/conv.md.  Checked by tests/layers/test_conv.py.
"""

from __future__ import annotations

from ..backend import get_array_module, is_gpu_array
from ..kernels import im2col as _kernels

# Below this many channels, col2im accumulates channels-first (see col2im).
SMALL_C = 8

# On NumPy, arrays of at least this many column entries go to the parallel Numba kernels
# (kernels/im2col.py); below it the start of the parallel region costs more than it saves.
PARALLEL_MIN = 1 << 16


def _use_kernel(col_size: int, a) -> bool:
    """Whether im2col / col2im of a column array of ``col_size`` entries runs in kernels/im2col.py:
    on NumPy when it is large enough, on CuPy always (the CUDA kernels)."""
    return is_gpu_array(a) or col_size >= PARALLEL_MIN


def im2col(x, kh: int, kw: int, sy: int, sx: int, ph: int, pw: int):
    """col (N, OH, OW, KH, KW, C), a fresh C-ordered array: the windows of x (N, H, W, C).

    col[n, oh, ow, i, j, c] = xpad[n, sy*oh + i, sx*ow + j, c], as :func:`im2col_xp`, which is
    the plain-xp version; large arrays (and CuPy arrays) go to the parallel kernel of
    kernels/im2col.py, which gives the same numbers (a copy).
    """
    N, H, W, C = x.shape
    size = N * conv_outsize(H, kh, sy, ph) * conv_outsize(W, kw, sx, pw) * kh * kw * C
    if _use_kernel(size, x):
        return _kernels.im2col(x, kh, kw, sy, sx, ph, pw)
    return im2col_xp(x, kh, kw, sy, sx, ph, pw)


def col2im(col, h: int, w: int, sy: int, sx: int, ph: int, pw: int):
    """x (N, H, W, C): col (N, OH, OW, KH, KW, C) summed back onto the image, as :func:`col2im_xp`.

    Large arrays (and CuPy arrays) go to the parallel gather of kernels/im2col.py, which adds
    each pixel's terms in the order of col2im_xp (bit-identical results) and returns the same
    memory layout (channels-first for C < 8).
    """
    if not _use_kernel(col.size, col):
        return col2im_xp(col, h, w, sy, sx, ph, pw)
    xp = get_array_module(col)
    N, C = col.shape[0], col.shape[5]
    if C < SMALL_C:
        out = xp.empty((N, C, h, w), dtype=col.dtype).transpose(0, 2, 3, 1)
    else:
        out = xp.empty((N, h, w, C), dtype=col.dtype)
    return _kernels.col2im(col, h, w, sy, sx, ph, pw, out=out)


def pair(v) -> tuple[int, int]:
    """An int or a pair of ints as a pair: 2 -> (2, 2); (2, 1) -> (2, 1)."""
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def conv_outsize(size: int, k: int, s: int, p: int) -> int:
    """Output length of a convolution: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * p - k) // s + 1


def deconv_outsize(size: int, k: int, s: int, p: int) -> int:
    """Output length of a transposed convolution: s (size - 1) + k - 2p (the inverse of conv_outsize)."""
    return s * (size - 1) + k - 2 * p


def pad_nhwc(x, ph: int, pw: int):
    """x (N, H, W, C) with ph zero rows above and below and pw zero columns left and right."""
    if ph == 0 and pw == 0:
        return x
    xp = get_array_module(x)
    N, H, W, C = x.shape
    out = xp.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=x.dtype)
    out[:, ph : ph + H, pw : pw + W, :] = x
    return out


def im2col_xp(x, kh: int, kw: int, sy: int, sx: int, ph: int, pw: int):
    """Gather the windows of x (N, H, W, C) into col (N, OH, OW, KH, KW, C), a fresh C-ordered array.

    col[n, oh, ow, i, j, c] = xpad[n, sy*oh + i, sx*ow + j, c];
    OH = (H + 2ph - KH) // sy + 1, OW = (W + 2pw - KW) // sx + 1.
    ``col.reshape(N*OH*OW, KH*KW*C)`` is then the left factor of the convolution GEMM.
    """
    xp = get_array_module(x)
    xpad = pad_nhwc(x, ph, pw)  # (N, H+2ph, W+2pw, C)
    # A read-only view, no copy: win[n, a, b, c, i, j] = xpad[n, a + i, b + j, c] ...
    win = xp.lib.stride_tricks.sliding_window_view(xpad, (kh, kw), axis=(1, 2))
    # ... of which every sy-th row and sx-th column of windows, with (i, j) moved before c.
    win = win[:, ::sy, ::sx].transpose(0, 1, 2, 4, 5, 3)  # (N, OH, OW, KH, KW, C)
    # The one copy: its innermost runs are KW*C contiguous numbers of xpad.
    return xp.ascontiguousarray(win)


def _tap_range(i: int, n_out: int, size: int, s: int, p: int):
    """Which windows put their tap i inside an image of length ``size``.

    Window o puts its tap i on position s*o + i - p; the windows that land inside are
    o0 <= o < o1 with 0 <= s*o + i - p < size.  Returns (o0, o1, position of window o0).
    """
    o0 = max(0, -((i - p) // s))  # ceil((p - i) / s), at least 0
    o1 = min(n_out, (size - 1 + p - i) // s + 1)
    return o0, o1, s * o0 + i - p


def col2im_xp(col, h: int, w: int, sy: int, sx: int, ph: int, pw: int):
    """Scatter-add col (N, OH, OW, KH, KW, C) back onto an image (N, H, W, C); the adjoint of im2col.

    x[n, h, w, c] = sum of col[n, oh, ow, i, j, c] over sy*oh + i - ph = h, sx*ow + j - pw = w.
    Returns a fresh (N, H, W, C) array of dtype col.dtype (channels-last in memory, except for
    C < 8: see below).  Taps that fall on the padding are dropped (the adjoint of zero padding
    is cropping), so no padded buffer is needed.
    """
    xp = get_array_module(col)
    N, OH, OW, KH, KW, C = col.shape
    # Both operands are indexed (N, C, H, W) below, whatever their memory layout: NumPy runs its
    # innermost loop along the axis that both store closest together.  A channels-last canvas
    # gives runs of C numbers; for C < 8 (an RGB image) these are too short, and a
    # channels-first canvas gives runs along W instead (about 2x faster for C = 3).
    if C < SMALL_C:
        x = xp.zeros((N, C, h, w), dtype=col.dtype)
    else:
        x = xp.zeros((N, h, w, C), dtype=col.dtype).transpose(0, 3, 1, 2)
    src = col.transpose(0, 5, 1, 2, 3, 4)  # (N, C, OH, OW, KH, KW), a view
    for i in range(KH):
        oh0, oh1, h0 = _tap_range(i, OH, h, sy, ph)
        for j in range(KW):
            ow0, ow1, w0 = _tap_range(j, OW, w, sx, pw)
            if oh1 <= oh0 or ow1 <= ow0:
                continue  # this tap only ever sees padding
            # tap (i, j) of windows oh0..oh1-1, ow0..ow1-1 lands on rows h0, h0+sy, ... and
            # columns w0, w0+sx, ...: one strided slice of x, added in place
            rows = slice(h0, h0 + sy * (oh1 - oh0), sy)
            cols = slice(w0, w0 + sx * (ow1 - ow0), sx)
            x[:, :, rows, cols] += src[:, :, oh0:oh1, ow0:ow1, i, j]
    return x.transpose(0, 2, 3, 1)  # (N, H, W, C)
