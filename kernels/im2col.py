"""im2col and col2im (the gather and the scatter of a convolution GEMM) as parallel kernels.

Shapes (channels-last, as jmvae_cupy/layers/im2col.py): x (N, H, W, C), col (N, OH, OW, KH, KW, C),

    col[n, oh, ow, i, j, c] = x[n, sy*oh + i - ph, sx*ow + j - pw, c]   (0 off the image)   (im2col)
    x[n, h, w, c] = sum over sy*oh + i - ph = h, sx*ow + j - pw = w of col[n, oh, ow, i, j, c]  (col2im)

Public API (dispatch on the array namespace: NumPy -> Numba CPU twin, ``parallel=True`` over
the rows (n, oh) resp. (n, h); CuPy -> Numba CUDA kernel on CuPy's current stream):

* ``im2col(x, kh, kw, sy, sx, ph, pw) -> col``, a new C-contiguous array; the padding is a bounds
  check, no padded copy of x is made;
* ``col2im(col, h, w, sy, sx, ph, pw, out=None) -> x`` (N, H, W, C); ``out`` is an (N, H, W, C)
  array (a view of any layout, e.g. a channels-first canvas) that is overwritten.

col2im is written as a **gather per image pixel**: each pixel (n, h, w) visits the taps
i = 0..KH-1 that reach it, ``(h + ph - i) % sy == 0``, ``0 <= (h + ph - i) // sy < OH`` (the same for
j along w), so every output element has one writer (no races on the CPU, no atomics on the GPU),
and adds them in the order i, then j, starting from 0 -- the order of the plain-xp scatter of
layers/im2col.py, whose loop runs over the taps (i outer, j inner) adding one slice per tap.
The twin and the reference therefore agree bit for bit (the tests check equality); the CUDA
kernel adds in the same order, with additions only (nothing to fuse into an FMA), so it agrees
exactly too.

Inputs may be views of any layout (the conv layers pass NCHW arrays seen as NHWC): the kernels
are compiled for layout 'A' and index through the strides.  Plain-xp oracles: ``im2col_xp`` /
``col2im_xp`` of layers/im2col.py (the layer's own path where the kernels do not pay).
Derivation: docs/derivations/conv.md.  Checked by tests/kernels/test_im2col.py.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numba

from ._dispatch import KernelArgumentError, float_array_module, launch, numba_cuda

# Threads per block of the 1-D CUDA kernels (one thread per output element).
THREADS = 256

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _geometry(where, kh, kw, sy, sx, ph, pw):
    if min(kh, kw, sy, sx) < 1 or min(ph, pw) < 0:
        raise KernelArgumentError(f"{where}: kernel {kh}x{kw}, stride {sy}x{sx}, padding {ph}x{pw} is not a geometry")


def im2col(x, kh: int, kw: int, sy: int, sx: int, ph: int, pw: int):
    """col (N, OH, OW, KH, KW, C), a new C-contiguous array: the windows of x (N, H, W, C).

    OH = (H + 2ph - KH) // sy + 1, OW = (W + 2pw - KW) // sx + 1; entries off the image are 0.
    """
    xp = float_array_module("im2col", x, 4)
    _geometry("im2col", kh, kw, sy, sx, ph, pw)
    N, H, W, C = x.shape
    OH, OW = (H + 2 * ph - kh) // sy + 1, (W + 2 * pw - kw) // sx + 1
    if OH < 1 or OW < 1:
        raise KernelArgumentError(f"im2col: a {kh}x{kw} window does not fit a {H}x{W} image padded by {ph}x{pw}")
    col = xp.empty((N, OH, OW, kh, kw, C), dtype=x.dtype)
    launch(xp, _im2col_cpu, _im2col_cuda, (x, col), (sy, sx, ph, pw))
    return col


def col2im(col, h: int, w: int, sy: int, sx: int, ph: int, pw: int, out=None):
    """x (N, h, w, C): col (N, OH, OW, KH, KW, C) summed back onto the image (the adjoint of im2col).

    out: an (N, h, w, C) array of col's dtype and namespace to write into (any layout; its old
    contents are ignored), or None for a new C-contiguous one.  Returns x.
    """
    xp = float_array_module("col2im", col, 6)
    _geometry("col2im", *col.shape[3:5], sy, sx, ph, pw)
    N, C = col.shape[0], col.shape[5]
    if out is None:
        out = xp.empty((N, h, w, C), dtype=col.dtype)
    elif out.shape != (N, h, w, C) or out.dtype != col.dtype:
        raise KernelArgumentError(f"col2im: out is {out.shape} {out.dtype}, expected {(N, h, w, C)} {col.dtype}")
    launch(xp, _col2im_cpu, _col2im_cuda, (col, out), (sy, sx, ph, pw))
    return out


# --------------------------------------------------------------------------------------------
# Numba CPU twins (NumPy arrays): prange over output rows; each row has exactly one writer.
# --------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _im2col_cpu(x, col, sy, sx, ph, pw):
    N, H, W, C = x.shape
    OH, OW, KH, KW = col.shape[1:5]
    zero = x.dtype.type(0)
    for r in numba.prange(N * OH):
        n = r // OH
        oh = r - n * OH
        for ow in range(OW):
            for i in range(KH):
                hh = sy * oh + i - ph
                inside_h = 0 <= hh < H
                for j in range(KW):
                    ww = sx * ow + j - pw
                    if inside_h and 0 <= ww < W:
                        for c in range(C):
                            col[n, oh, ow, i, j, c] = x[n, hh, ww, c]
                    else:
                        for c in range(C):
                            col[n, oh, ow, i, j, c] = zero


# Gather per pixel row (n, h): for each tap i that reaches row h, for each pixel w of the row,
# the taps j that reach it.  Per pixel the terms are added in the order (i, j) from 0.
@numba.njit(parallel=True, cache=True, error_model="numpy")
def _col2im_cpu(col, x, sy, sx, ph, pw):
    N, H, W, C = x.shape
    OH, OW, KH, KW = col.shape[1:5]
    zero = x.dtype.type(0)
    for r in numba.prange(N * H):
        n = r // H
        hh = r - n * H
        for ww in range(W):
            for c in range(C):
                x[n, hh, ww, c] = zero
        for i in range(KH):
            th = hh + ph - i  # = sy * oh
            if th < 0 or th % sy != 0 or th // sy >= OH:
                continue
            oh = th // sy
            for ww in range(W):
                for j in range(KW):
                    tw = ww + pw - j
                    if tw < 0 or tw % sx != 0 or tw // sx >= OW:
                        continue
                    ow = tw // sx
                    for c in range(C):
                        x[n, hh, ww, c] += col[n, oh, ow, i, j, c]


# --------------------------------------------------------------------------------------------
# Numba CUDA kernels (see kernels/reparam.py for why `cuda` is a module global).
# --------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by _cuda_kernels()


def _im2col_kernel(x, col, sy, sx, ph, pw):
    # one thread per col element, the flat C-order index (n, oh, ow, i, j, c): neighbouring
    # threads write neighbouring addresses (and read neighbouring c of one pixel)
    t = cuda.grid(1)
    N, OH, OW, KH, KW, C = col.shape
    if t < N * OH * OW * KH * KW * C:
        c = t % C
        q = t // C
        j = q % KW
        q //= KW
        i = q % KH
        q //= KH
        ow = q % OW
        q //= OW
        oh = q % OH
        n = q // OH
        hh = sy * oh + i - ph
        ww = sx * ow + j - pw
        if 0 <= hh < x.shape[1] and 0 <= ww < x.shape[2]:
            col[n, oh, ow, i, j, c] = x[n, hh, ww, c]
        else:
            col[n, oh, ow, i, j, c] = x.dtype.type(0)


def _col2im_kernel(col, x, sy, sx, ph, pw):
    # one thread per image element (n, h, w, c): a gather over the taps that reach it, added in
    # the order (i, j) as the CPU twin and the reference (no atomics, one writer per element)
    t = cuda.grid(1)
    N, H, W, C = x.shape
    OH, OW, KH, KW = col.shape[1], col.shape[2], col.shape[3], col.shape[4]
    if t < N * H * W * C:
        c = t % C
        q = t // C
        ww = q % W
        q //= W
        hh = q % H
        n = q // H
        acc = x.dtype.type(0)
        for i in range(KH):
            th = hh + ph - i
            if th >= 0 and th % sy == 0 and th // sy < OH:
                oh = th // sy
                for j in range(KW):
                    tw = ww + pw - j
                    if tw >= 0 and tw % sx == 0 and tw // sx < OW:
                        acc += col[n, oh, tw // sx, i, j, c]
        x[n, hh, ww, c] = acc


@functools.cache
def _cuda_kernels():
    """The CUDA kernels of this file, ``im2col`` and ``col2im`` (imports numba.cuda)."""
    global cuda
    cuda = numba_cuda()
    return SimpleNamespace(im2col=cuda.jit(_im2col_kernel), col2im=cuda.jit(_col2im_kernel))


def _cuda_signatures(float_type):
    """Numba signatures of the CUDA kernels for one float type (arrays of any layout)."""
    i = numba.int64
    a4, a6 = float_type[:, :, :, :], float_type[:, :, :, :, :, :]
    return {"im2col": (a4, a6, i, i, i, i), "col2im": (a6, a4, i, i, i, i)}


def _blocks(size):
    return (size + THREADS - 1) // THREADS


def _im2col_cuda(x, col, sy, sx, ph, pw, stream=0):
    """Launch the CUDA im2col: col (N, OH, OW, KH, KW, C) written from x; returns col."""
    if col.size:
        _cuda_kernels().im2col[_blocks(col.size), THREADS, stream](x, col, sy, sx, ph, pw)
    return col


def _col2im_cuda(col, x, sy, sx, ph, pw, stream=0):
    """Launch the CUDA col2im: x (N, H, W, C) written by the gather; returns x."""
    if x.size:
        _cuda_kernels().col2im[_blocks(x.size), THREADS, stream](col, x, sy, sx, ph, pw)
    return x
