"""The transforms of the Winograd convolution F(2x2, 2x2) on the sub-pixel (space-to-depth) view
of a 4x4, stride-2, pad-1 convolution -- four for the data, two for the weights -- as parallel
Numba CPU kernels and (the data ones) Numba CUDA kernels, with their plain-xp references (the
oracles of the tests).

The layer-level algebra (why these transforms compute the convolution, and the GEMMs between
them) is in jmvae_cupy/layers/winograd.py and docs/derivations/winograd.md.
Here only the data movement, channels-last, with B input and A output channels of the
correlation, T = N * TH * TW tiles of 2x2 outputs, TH = H / 4, TW = W / 4:

* ``wino_input(x) -> V`` (9, T, 4B): x (N, H, W, B) -> every tile's 3x3 window of the space-to-
  depth image S, transformed by B^T . B along both axes (rows: d0 - d1, d1, d2 - d1).
  S[n, i, j, (r, q, b)] = xpad[n, 2i + r, 2j + q, b], xpad = x zero-padded by 1; the window of
  tile (t, s) is S rows 2t .. 2t + 2, columns 2s .. 2s + 2.
  V[3 alpha + beta, (n, t, s), (r, q, b)].
* ``wino_input_adj(dV, h, w) -> dx`` (N, h, w, B): the adjoint of wino_input (B . B^T, the
  overlapping windows summed back, the padding dropped).
* ``wino_output(M, n, oh, ow) -> y`` (N, OH, OW, A): M (9, T, A) -> every tile's 2x2 outputs,
  A^T . A along both axes (rows: m0 + m1, m1 + m2).
* ``wino_output_adj(dy) -> dM`` (9, T, A): the adjoint of wino_output (rows: dy0, dy0 + dy1, dy1).
* ``wino_weight(W) -> Ut`` (9, A, 4B): W (A, B, 4, 4) -> G g G^T of the 2x2 sub-kernels, stored
  transposed (output channel first, as in W); G along one axis: (g0, g0 + g1, g1).
* ``wino_weight_adj(dUt, shape) -> dW`` (A, B, 4, 4): its adjoint (g0 <- u0 + u1, g1 <- u1 + u2).

Dispatch on the array namespace: NumPy -> the parallel Numba CPU kernels; CuPy -> Numba CUDA
kernels on CuPy's current stream, one thread per output element at a time (grid y and z capped
at CUDA's limit, the kernels striding over the rest: any batch size), for the four data transforms,
and the plain-xp references for the (small) weight transforms.  Every output element has one
writer (no races, no atomics); all kernels only add and subtract, in the order of the
references, so kernels and references agree exactly (the tests check equality, the CUDA kernels
under the simulator).  Inputs of any layout (the conv layers pass NCHW arrays seen as NHWC);
outputs C-contiguous.
Checked by tests/kernels/test_winograd.py, and the CUDA kernels by tests/kernels/cuda_sim_cases.py
and cuda_ptx_cases.py.

Why one file of ~600 lines: it holds six transforms, each in the three forms every kernel file
has (reference, CPU twin, CUDA kernel), and the CPU and CUDA kernels share the inline 3x3 / 2x2
helpers; kept together, like the other kernel files, so that a transform's three forms are read
side by side.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numba

from jmvae_cupy.backend import get_array_module, is_gpu_array

from ._dispatch import KernelArgumentError, float_array_module, launch, numba_cuda, strided_grid

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _tiles(where, h, w):
    if h % 4 or w % 4 or h < 4 or w < 4:
        raise KernelArgumentError(f"{where}: the image is {h}x{w}; F(2x2, 2x2) of a stride-2 conv needs "
                                  "both sides a positive multiple of 4")
    return h // 4, w // 4


def wino_input(x):
    """V (9, N*TH*TW, 4B) from x (N, H, W, B), H and W multiples of 4 (see the module docstring)."""
    xp = float_array_module("wino_input", x, 4)
    N, H, W, B = x.shape
    TH, TW = _tiles("wino_input", H, W)
    V = xp.empty((3, 3, N, TH, TW, 2, 2, B), dtype=x.dtype)
    launch(xp, _input_cpu, _input_cuda, (x, V))
    return V.reshape(9, N * TH * TW, 4 * B)


def wino_input_adj(dV, n: int, h: int, w: int):
    """dx (n, h, w, B) from dV (9, n*TH*TW, 4B): the adjoint of :func:`wino_input`."""
    xp = float_array_module("wino_input_adj", dV, 3)
    TH, TW = _tiles("wino_input_adj", h, w)
    if dV.shape[0] != 9 or dV.shape[1] != n * TH * TW or dV.shape[2] % 4:
        raise KernelArgumentError(f"wino_input_adj: dV is {dV.shape}, expected (9, {n * TH * TW}, 4B)")
    B = dV.shape[2] // 4
    dx = xp.empty((n, h, w, B), dtype=dV.dtype)
    launch(xp, _input_adj_cpu, _input_adj_cuda, (xp.ascontiguousarray(dV).reshape(3, 3, n, TH, TW, 2, 2, B), dx))
    return dx


def wino_output(M, n: int, oh: int, ow: int):
    """y (n, oh, ow, A) from M (9, n*(oh/2)*(ow/2), A): every tile's A^T . A (oh, ow even)."""
    xp = float_array_module("wino_output", M, 3)
    if oh % 2 or ow % 2 or M.shape[0] != 9 or M.shape[1] != n * (oh // 2) * (ow // 2):
        raise KernelArgumentError(f"wino_output: M is {M.shape}, expected (9, {n * (oh // 2) * (ow // 2)}, A) "
                                  f"for {oh}x{ow} outputs (even sides)")
    A = M.shape[2]
    y = xp.empty((n, oh, ow, A), dtype=M.dtype)
    launch(xp, _output_cpu, _output_cuda, (xp.ascontiguousarray(M).reshape(3, 3, n, oh // 2, ow // 2, A), y), (False,))
    return y


def wino_output_adj(dy):
    """dM (9, N*(OH/2)*(OW/2), A) from dy (N, OH, OW, A): the adjoint of :func:`wino_output`."""
    xp = float_array_module("wino_output_adj", dy, 4)
    N, OH, OW, A = dy.shape
    if OH % 2 or OW % 2:
        raise KernelArgumentError(f"wino_output_adj: {OH}x{OW} outputs, both sides must be even")
    dM = xp.empty((3, 3, N, OH // 2, OW // 2, A), dtype=dy.dtype)
    launch(xp, _output_cpu, _output_cuda, (dM, dy), (True,))
    return dM.reshape(9, N * (OH // 2) * (OW // 2), A)


def wino_weight(W):
    """Ut (9, A, 4B) from a kernel W (A, B, 4, 4): column (r, q, b) of Ut[3 alpha + beta] transforms
    the taps (2a' + r, 2b' + q) of input channel b (see the module docstring)."""
    xp = float_array_module("wino_weight", W, 4)
    if W.shape[2:] != (4, 4):
        raise KernelArgumentError(f"wino_weight: W is {W.shape}, expected (A, B, 4, 4)")
    if is_gpu_array(W):
        return wino_weight_ref(W)
    A, B = W.shape[:2]
    Ut = xp.empty((3, 3, A, 2, 2, B), dtype=W.dtype)
    _weight_cpu(W, Ut, False)
    return Ut.reshape(9, A, 4 * B)


def wino_weight_adj(dUt, W_shape):
    """dW (A, B, 4, 4) from dUt (9, A, 4B): the adjoint of :func:`wino_weight`."""
    xp = float_array_module("wino_weight_adj", dUt, 3)
    A, B = W_shape[:2]
    if dUt.shape != (9, A, 4 * B) or tuple(W_shape[2:]) != (4, 4):
        raise KernelArgumentError(f"wino_weight_adj: dUt is {dUt.shape}, expected (9, {A}, {4 * B}) for W {W_shape}")
    if is_gpu_array(dUt):
        return wino_weight_adj_ref(dUt, W_shape)
    dW = xp.empty((A, B, 4, 4), dtype=dUt.dtype)
    _weight_cpu(dW, xp.ascontiguousarray(dUt).reshape(3, 3, A, 2, 2, B), True)
    return dW


# --------------------------------------------------------------------------------------------
# Plain-xp references: strided slices of the padded, space-to-depth image
# --------------------------------------------------------------------------------------------


def _rows3(d0, d1, d2):
    """B^T along one axis: the 3 window rows d0, d1, d2 -> (d0 - d1, d1, d2 - d1)."""
    return (d0 - d1, d1, d2 - d1)


def wino_input_ref(x):
    xp = get_array_module(x)
    N, H, W, B = x.shape
    TH, TW = H // 4, W // 4
    xpad = xp.zeros((N, H + 2, W + 2, B), dtype=x.dtype)
    xpad[:, 1:H + 1, 1:W + 1] = x
    S = xpad.reshape(N, H // 2 + 1, 2, W // 2 + 1, 2, B)  # S[n, i, r, j, q, b]: a view
    V = xp.empty((3, 3, N, TH, TW, 2, 2, B), dtype=x.dtype)
    R = _rows3(*(S[:, u:u + 2 * TH:2] for u in range(3)))  # (N, TH, r, 2TW+1, q, B) each
    for a in range(3):
        cols = _rows3(*(R[a][:, :, :, v:v + 2 * TW:2] for v in range(3)))  # (N, TH, r, TW, q, B)
        for b in range(3):
            V[a, b] = cols[b].transpose(0, 1, 3, 2, 4, 5)
    return V.reshape(9, N * TH * TW, 4 * B)


def wino_input_adj_ref(dV, n, h, w):
    xp = get_array_module(dV)
    TH, TW = h // 4, w // 4
    B = dV.shape[2] // 4
    dV = dV.reshape(3, 3, n, TH, TW, 2, 2, B).transpose(0, 1, 2, 3, 5, 4, 6, 7)  # [a, b, n, t, r, s, q, c]
    dS = xp.zeros((n, h // 2 + 1, 2, w // 2 + 1, 2, B), dtype=dV.dtype)  # [n, i, r, j, q, c]

    def adj3(v0, v1, v2):  # the adjoint of _rows3: window rows u = 0, 1, 2
        return (v0, v1 - v0 - v2, v2)

    rows = [adj3(*(dV[a, b] for a in range(3))) for b in range(3)]  # rows[b][u]: (n, t, r, s, q, c)
    for u in range(3):
        win = adj3(rows[0][u], rows[1][u], rows[2][u])  # win[v]: (n, t, r, s, q, c)
        for v in range(3):
            dS[:, u:u + 2 * TH:2, :, v:v + 2 * TW:2] += win[v]
    return dS.reshape(n, h + 2, w + 2, B)[:, 1:h + 1, 1:w + 1].copy()


def wino_output_ref(M, n, oh, ow):
    xp = get_array_module(M)
    A = M.shape[2]
    TH, TW = oh // 2, ow // 2
    M = M.reshape(3, 3, n, TH, TW, A)
    y = xp.empty((n, TH, 2, TW, 2, A), dtype=M.dtype)
    for i, rows in enumerate((M[0] + M[1], M[1] + M[2])):  # A^T along the rows: (3, n, TH, TW, A)
        y[:, :, i, :, 0] = rows[0] + rows[1]
        y[:, :, i, :, 1] = rows[1] + rows[2]
    return y.reshape(n, oh, ow, A)


def wino_output_adj_ref(dy):
    xp = get_array_module(dy)
    N, OH, OW, A = dy.shape
    TH, TW = OH // 2, OW // 2
    t = dy.reshape(N, TH, 2, TW, 2, A)
    dM = xp.empty((3, 3, N, TH, TW, A), dtype=dy.dtype)
    for a, rows in enumerate((t[:, :, 0], t[:, :, 0] + t[:, :, 1], t[:, :, 1])):  # (N, TH, TW, 2, A)
        dM[a, 0] = rows[:, :, :, 0]
        dM[a, 1] = rows[:, :, :, 0] + rows[:, :, :, 1]
        dM[a, 2] = rows[:, :, :, 1]
    return dM.reshape(9, N * TH * TW, A)


def wino_weight_ref(W):
    xp = get_array_module(W)
    A, B = W.shape[:2]
    # [a, a', b', r, q, b]: W's taps split into (a', r) x (b', q); one pass, within each row a
    Wc = xp.ascontiguousarray(W.reshape(A, B, 2, 2, 2, 2).transpose(0, 2, 4, 3, 5, 1))
    rows = (Wc[:, 0], Wc[:, 0] + Wc[:, 1], Wc[:, 1])  # G along a': (g0, g0 + g1, g1), each [a, b', r, q, b]
    Ut = xp.empty((3, 3, A, 2, 2, B), dtype=W.dtype)
    for al in range(3):  # G along b'
        Ut[al, 0] = rows[al][:, 0]
        Ut[al, 1] = rows[al][:, 0] + rows[al][:, 1]
        Ut[al, 2] = rows[al][:, 1]
    return Ut.reshape(9, A, 4 * B)


def wino_weight_adj_ref(dUt, W_shape):
    xp = get_array_module(dUt)
    A, B = W_shape[:2]
    t = dUt.reshape(3, 3, A, 2, 2, B)
    dWc = xp.empty((A, 2, 2, 2, 2, B), dtype=dUt.dtype)  # [a, a', b', r, q, b]
    for ap, rows in enumerate((t[0] + t[1], t[1] + t[2])):  # along alpha -> a' = 0, 1: each [beta, a, r, q, b]
        dWc[:, ap, 0] = rows[0] + rows[1]  # along beta -> b' = 0, 1
        dWc[:, ap, 1] = rows[1] + rows[2]
    return xp.ascontiguousarray(dWc.transpose(0, 5, 1, 3, 2, 4)).reshape(A, B, 4, 4)  # [a, b, a', r, b', q]


# --------------------------------------------------------------------------------------------
# Numba CPU kernels: prange over (image, tile row) or (image, pixel row); inner loop along the
# channels (contiguous).  The arithmetic is the references', term for term.
# --------------------------------------------------------------------------------------------


@numba.njit(inline="always")
def _adj3(v0, v1, v2, u):
    """Component u of the adjoint of _rows3: (v0, v1 - v0 - v2, v2)[u]."""
    if u == 0:
        return v0
    if u == 1:
        return v1 - v0 - v2
    return v2


@numba.njit(inline="always")
def _adj3_rows(dV, b, n, t, s, r, q, c, u):
    """Component u of the adjoint along the rows (index a) of window column b of dV."""
    return _adj3(dV[0, b, n, t, s, r, q, c], dV[1, b, n, t, s, r, q, c], dV[2, b, n, t, s, r, q, c], u)


@numba.njit(inline="always")
def _load(x, n, hh, ww, c, inside, zero):
    return x[n, hh, ww, c] if inside else zero


@numba.njit(inline="always")
def _input_window(V, n, t, s, r, q, c, d00, d01, d02, d10, d11, d12, d20, d21, d22):
    """V[:, :, n, t, s, r, q, c] = B^T d B of one 3x3 window d (channel c)."""
    # rows: (d0 - d1, d1, d2 - d1), for each window column
    r00, r01, r02 = d00 - d10, d01 - d11, d02 - d12
    r20, r21, r22 = d20 - d10, d21 - d11, d22 - d12
    # columns, the same, for each row a
    V[0, 0, n, t, s, r, q, c] = r00 - r01
    V[0, 1, n, t, s, r, q, c] = r01
    V[0, 2, n, t, s, r, q, c] = r02 - r01
    V[1, 0, n, t, s, r, q, c] = d10 - d11
    V[1, 1, n, t, s, r, q, c] = d11
    V[1, 2, n, t, s, r, q, c] = d12 - d11
    V[2, 0, n, t, s, r, q, c] = r20 - r21
    V[2, 1, n, t, s, r, q, c] = r21
    V[2, 2, n, t, s, r, q, c] = r22 - r21


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _input_cpu(x, V):
    N, H, W, B = x.shape
    TH, TW = V.shape[3], V.shape[4]
    zero = x.dtype.type(0)
    for nt in numba.prange(N * TH):
        n = nt // TH
        t = nt - n * TH
        for s in range(TW):
            for r in range(2):
                h0, h1, h2 = 4 * t + r - 1, 4 * t + r + 1, 4 * t + r + 3  # window rows u = 0, 1, 2
                a0, a1, a2 = 0 <= h0 < H, 0 <= h1 < H, 0 <= h2 < H
                for q in range(2):
                    w0, w1, w2 = 4 * s + q - 1, 4 * s + q + 1, 4 * s + q + 3
                    b0, b1, b2 = 0 <= w0 < W, 0 <= w1 < W, 0 <= w2 < W
                    if a0 and a2 and b0 and b2:  # inside the image (most windows): no bounds checks
                        for c in range(B):
                            _input_window(V, n, t, s, r, q, c,
                                          x[n, h0, w0, c], x[n, h0, w1, c], x[n, h0, w2, c],
                                          x[n, h1, w0, c], x[n, h1, w1, c], x[n, h1, w2, c],
                                          x[n, h2, w0, c], x[n, h2, w1, c], x[n, h2, w2, c])
                    else:  # on the border: the padding's zeros
                        for c in range(B):
                            _input_window(V, n, t, s, r, q, c,
                                          _load(x, n, h0, w0, c, a0 and b0, zero),
                                          _load(x, n, h0, w1, c, a0 and b1, zero),
                                          _load(x, n, h0, w2, c, a0 and b2, zero),
                                          _load(x, n, h1, w0, c, a1 and b0, zero),
                                          _load(x, n, h1, w1, c, a1 and b1, zero),
                                          _load(x, n, h1, w2, c, a1 and b2, zero),
                                          _load(x, n, h2, w0, c, a2 and b0, zero),
                                          _load(x, n, h2, w1, c, a2 and b1, zero),
                                          _load(x, n, h2, w2, c, a2 and b2, zero))


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _input_adj_cpu(dV, dx):
    N, H, W, B = dx.shape
    TH, TW = dV.shape[3], dV.shape[4]
    for nh in numba.prange(N * H):
        n, h = nh // H, nh % H
        i, r = (h + 1) // 2, (h + 1) % 2  # S row i, phase r
        for w in range(W):
            j, q = (w + 1) // 2, (w + 1) % 2
            for c in range(B):
                dx[n, h, w, c] = 0  # (the sums below start from 0, as the reference's)
            # the windows that hold S[i, j]: (t, u) with 2t + u = i, (s, v) with 2s + v = j, in
            # the reference's order (u outer, v inner)
            for u in range(3):
                t2 = i - u
                if t2 < 0 or t2 % 2 != 0 or t2 // 2 >= TH:
                    continue
                t = t2 // 2
                for v in range(3):
                    s2 = j - v
                    if s2 < 0 or s2 % 2 != 0 or s2 // 2 >= TW:
                        continue
                    s = s2 // 2
                    for c in range(B):
                        # adj3 along the rows (index a) for each column b, then along the columns
                        k0 = _adj3_rows(dV, 0, n, t, s, r, q, c, u)
                        k1 = _adj3_rows(dV, 1, n, t, s, r, q, c, u)
                        k2 = _adj3_rows(dV, 2, n, t, s, r, q, c, u)
                        dx[n, h, w, c] += _adj3(k0, k1, k2, v)


# A^T = [[1, 1, 0], [0, 1, 1]] and G = [[1, 0], [1, 1], [0, 1]] = A: the output transform
# (A^T M A) and the weight adjoint (G^T dU G) are one 3x3 -> 2x2 contraction, the output adjoint
# (A dy A^T) and the weight transform (G g G^T) one 2x2 -> 3x3 expansion.


@numba.njit(inline="always")
def _contract(m00, m01, m02, m10, m11, m12, m20, m21, m22):
    """A^T m A of one 3x3 block m: the 2x2 block (y00, y01, y10, y11)."""
    p00, p01, p02 = m00 + m10, m01 + m11, m02 + m12  # rows: (m0 + m1, m1 + m2)
    p10, p11, p12 = m10 + m20, m11 + m21, m12 + m22
    return p00 + p01, p01 + p02, p10 + p11, p11 + p12  # columns, the same


@numba.njit(inline="always")
def _expand(y00, y01, y10, y11):
    """A y A^T of one 2x2 block y: the 3x3 block (m00, m01, ..., m22), row by row."""
    s0, s1 = y00 + y10, y01 + y11  # rows: (y0, y0 + y1, y1), per column
    return (y00, y00 + y01, y01,  # columns, the same
            s0, s0 + s1, s1,
            y10, y10 + y11, y11)


@numba.njit(inline="always")
def _output_tile(M, y, n, t, s, c):
    """y's 2x2 outputs of tile (n, t, s), channel c: A^T M A."""
    y00, y01, y10, y11 = _contract(M[0, 0, n, t, s, c], M[0, 1, n, t, s, c], M[0, 2, n, t, s, c],
                                   M[1, 0, n, t, s, c], M[1, 1, n, t, s, c], M[1, 2, n, t, s, c],
                                   M[2, 0, n, t, s, c], M[2, 1, n, t, s, c], M[2, 2, n, t, s, c])
    y[n, 2 * t, 2 * s, c] = y00
    y[n, 2 * t, 2 * s + 1, c] = y01
    y[n, 2 * t + 1, 2 * s, c] = y10
    y[n, 2 * t + 1, 2 * s + 1, c] = y11


@numba.njit(inline="always")
def _output_adj_tile(dy, dM, n, t, s, c):
    """dM (3x3) of tile (n, t, s), channel c, from dy's 2x2 outputs: A dy A^T."""
    m = _expand(dy[n, 2 * t, 2 * s, c], dy[n, 2 * t, 2 * s + 1, c],
                dy[n, 2 * t + 1, 2 * s, c], dy[n, 2 * t + 1, 2 * s + 1, c])
    for k in range(9):
        dM[k // 3, k % 3, n, t, s, c] = m[k]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _output_cpu(M, y, adjoint):
    """adjoint False: y (N, OH, OW, A) <- A^T M A; True: M (3, 3, N, TH, TW, A) <- A y A^T."""
    TH, TW, A = M.shape[3], M.shape[4], M.shape[5]
    N = y.shape[0]
    for nt in numba.prange(N * TH):
        n = nt // TH
        t = nt - n * TH
        for s in range(TW):
            for c in range(A):
                if adjoint:
                    _output_adj_tile(y, M, n, t, s, c)
                else:
                    _output_tile(M, y, n, t, s, c)


@numba.njit(inline="always")
def _weight_elem(W, Ut, a, r, q, b):
    """Ut[:, :, a, r, q, b] = G g G^T of sub-kernel (r, q): g[a', b'] = W[a, b, 2a' + r, 2b' + q]."""
    u = _expand(W[a, b, r, q], W[a, b, r, 2 + q], W[a, b, 2 + r, q], W[a, b, 2 + r, 2 + q])
    for k in range(9):
        Ut[k // 3, k % 3, a, r, q, b] = u[k]


@numba.njit(inline="always")
def _weight_adj_elem(W, Ut, a, r, q, b):
    """W[a, b, 2a' + r, 2b' + q] = (G^T dU G)[a', b'] of Ut[:, :, a, r, q, b] (here Ut holds dU)."""
    g00, g01, g10, g11 = _contract(Ut[0, 0, a, r, q, b], Ut[0, 1, a, r, q, b], Ut[0, 2, a, r, q, b],
                                   Ut[1, 0, a, r, q, b], Ut[1, 1, a, r, q, b], Ut[1, 2, a, r, q, b],
                                   Ut[2, 0, a, r, q, b], Ut[2, 1, a, r, q, b], Ut[2, 2, a, r, q, b])
    W[a, b, r, q] = g00
    W[a, b, r, 2 + q] = g01
    W[a, b, 2 + r, q] = g10
    W[a, b, 2 + r, 2 + q] = g11


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _weight_cpu(W, Ut, adjoint):
    """adjoint False: Ut (3, 3, A, 2, 2, B) <- G g G^T of W (A, B, 4, 4); True: W <- G^T Ut G."""
    A, B = W.shape[0], W.shape[1]
    for a in numba.prange(A):
        for r in range(2):
            for q in range(2):
                for b in range(B):
                    if adjoint:
                        _weight_adj_elem(W, Ut, a, r, q, b)
                    else:
                        _weight_elem(W, Ut, a, r, q, b)


# --------------------------------------------------------------------------------------------
# Numba CUDA kernels (see kernels/reparam.py for why `cuda` is a module global): one thread per
# output element at a time; the arithmetic is the references', term for term.
#
# Grid layout: blocks of 32 x 8 x 1 threads; x runs along the channels (contiguous addresses:
# coalesced), y along a pixel or tile index, z along the rest -- (al, be, n) for the 9 N
# transform planes, (n, h) for the image rows.  These extents grow with the batch: z = N * H
# (input_adj) and N * OH (output) pass CUDA's 65,535 blocks along z at N = 2,048 for a 32x32
# CelebA layer (N = 1,024 for a 64x64 image), z = 9 N (input, output_adj) at N = 7,282, and
# y = 4 TH TW, W, OW or TH TW grow with the image.  So y and z are capped
# (_dispatch.strided_grid, at most GRID_YZ_CAP blocks) and every kernel loops over its y and z
# indices with the grid's stride: any batch and image size fits, each element still has one
# writer.  x needs ceil(channels / 32) blocks, far below its limit of 2**31 - 1.
# --------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by _cuda_kernels()

# Threads per block of the 3-D CUDA grids: x runs along the channels (contiguous addresses).
BLOCK = (32, 8, 1)


def _input_kernel(x, V):
    # V[al, be, n, t, s, r, q, c] = (B^T d B)[al, be] of the window of tile (t, s), phase (r, q);
    # grid: x = c, y = (t, s, r, q), z = (al, be, n), y and z grid-strided
    c, y0, z0 = cuda.grid(3)
    _, sy, sz = cuda.gridsize(3)
    _, _, N, TH, TW, _, _, B = V.shape
    H, W = x.shape[1], x.shape[2]
    zero = x.dtype.type(0)
    if c < B:
        for z in range(z0, 9 * N, sz):
            al, be, n = z // (3 * N), (z // N) % 3, z % N
            for y in range(y0, TH * TW * 4, sy):
                t, s, r, q = y // (4 * TW), (y // 4) % TW, (y // 2) % 2, y % 2
                c0 = zero  # the window's columns v = 0, 1, 2, each transformed along the rows: component al
                c1 = zero
                c2 = zero
                for v in range(3):
                    ww = 4 * s + 2 * v + q - 1
                    d0 = zero
                    d1 = zero
                    d2 = zero
                    if 0 <= ww < W:
                        h0 = 4 * t + r - 1
                        if 0 <= h0 < H:
                            d0 = x[n, h0, ww, c]
                        if 0 <= h0 + 2 < H:
                            d1 = x[n, h0 + 2, ww, c]
                        if 0 <= h0 + 4 < H:
                            d2 = x[n, h0 + 4, ww, c]
                    rv = d0 - d1 if al == 0 else (d1 if al == 1 else d2 - d1)  # rows: (d0 - d1, d1, d2 - d1)
                    if v == 0:
                        c0 = rv
                    elif v == 1:
                        c1 = rv
                    else:
                        c2 = rv
                V[al, be, n, t, s, r, q, c] = c0 - c1 if be == 0 else (c1 if be == 1 else c2 - c1)  # columns


def _input_adj_kernel(dV, dx):
    # dx[n, h, w, c]: a gather over the (at most 2 x 2) windows that hold its S pixel, in the
    # order of the CPU kernel (window row u outer, column v inner); grid: x = c, y = w, z = (n, h),
    # y and z grid-strided
    c, w0, z0 = cuda.grid(3)
    _, sy, sz = cuda.gridsize(3)
    N, H, W, B = dx.shape
    TH, TW = dV.shape[3], dV.shape[4]
    if c < B:
        for z in range(z0, N * H, sz):
            n, h = z // H, z % H
            si, r = (h + 1) // 2, (h + 1) % 2
            for w in range(w0, W, sy):
                sj, q = (w + 1) // 2, (w + 1) % 2
                acc = dx.dtype.type(0)
                for u in range(3):
                    t2 = si - u
                    if t2 >= 0 and t2 % 2 == 0 and t2 // 2 < TH:
                        t = t2 // 2
                        for v in range(3):
                            s2 = sj - v
                            if s2 >= 0 and s2 % 2 == 0 and s2 // 2 < TW:
                                s = s2 // 2
                                # the adjoint (v0, v1 - v0 - v2, v2) along the rows for each column b ...
                                k0 = dV[0, 0, n, t, s, r, q, c]
                                k1 = dV[0, 1, n, t, s, r, q, c]
                                k2 = dV[0, 2, n, t, s, r, q, c]
                                if u == 1:
                                    k0 = dV[1, 0, n, t, s, r, q, c] - k0 - dV[2, 0, n, t, s, r, q, c]
                                    k1 = dV[1, 1, n, t, s, r, q, c] - k1 - dV[2, 1, n, t, s, r, q, c]
                                    k2 = dV[1, 2, n, t, s, r, q, c] - k2 - dV[2, 2, n, t, s, r, q, c]
                                elif u == 2:
                                    k0 = dV[2, 0, n, t, s, r, q, c]
                                    k1 = dV[2, 1, n, t, s, r, q, c]
                                    k2 = dV[2, 2, n, t, s, r, q, c]
                                # ... then along the columns
                                acc += k0 if v == 0 else (k1 - k0 - k2 if v == 1 else k2)
                dx[n, h, w, c] = acc


def _output_kernel(M, y):
    # y[n, 2t + i, 2s + j, c] = (A^T M A)[i, j]: rows (m_i + m_{i+1}), then columns the same;
    # grid: x = c, y = ow, z = (n, oh), y and z grid-strided
    c, ow0, z0 = cuda.grid(3)
    _, sy, sz = cuda.gridsize(3)
    N, OH, OW, A = y.shape
    if c < A:
        for z in range(z0, N * OH, sz):
            n, oh = z // OH, z % OH
            t, i = oh // 2, oh % 2
            for ow in range(ow0, OW, sy):
                s, j = ow // 2, ow % 2
                p0 = M[i, j, n, t, s, c] + M[i + 1, j, n, t, s, c]
                p1 = M[i, j + 1, n, t, s, c] + M[i + 1, j + 1, n, t, s, c]
                y[n, oh, ow, c] = p0 + p1


def _output_adj_kernel(dM, dy):
    # dM[al, be, n, t, s, c] = (A dy A^T)[al, be]: rows (y0, y0 + y1, y1), then columns the same;
    # grid: x = c, y = (t, s), z = (al, be, n), y and z grid-strided
    c, ts0, z0 = cuda.grid(3)
    _, sy, sz = cuda.gridsize(3)
    _, _, N, TH, TW, A = dM.shape
    if c < A:
        for z in range(z0, 9 * N, sz):
            al, be, n = z // (3 * N), (z // N) % 3, z % N
            for ts in range(ts0, TH * TW, sy):
                t, s = ts // TW, ts % TW
                y00 = dy[n, 2 * t, 2 * s, c]
                y01 = dy[n, 2 * t, 2 * s + 1, c]
                y10 = dy[n, 2 * t + 1, 2 * s, c]
                y11 = dy[n, 2 * t + 1, 2 * s + 1, c]
                q0 = y00 if al == 0 else (y00 + y10 if al == 1 else y10)  # column 0
                q1 = y01 if al == 0 else (y01 + y11 if al == 1 else y11)  # column 1
                dM[al, be, n, t, s, c] = q0 if be == 0 else (q0 + q1 if be == 1 else q1)


@functools.cache
def _cuda_kernels():
    """The CUDA kernels of this file (imports numba.cuda)."""
    global cuda
    cuda = numba_cuda()
    return SimpleNamespace(input=cuda.jit(_input_kernel), input_adj=cuda.jit(_input_adj_kernel),
                           output=cuda.jit(_output_kernel), output_adj=cuda.jit(_output_adj_kernel))


def _cuda_signatures(float_type):
    """Numba signatures of the CUDA kernels for one float type (arrays of any layout)."""
    a4, a6, a8 = float_type[:, :, :, :], float_type[:, :, :, :, :, :], float_type[:, :, :, :, :, :, :, :]
    return {"input": (a4, a8), "input_adj": (a8, a4), "output": (a6, a4), "output_adj": (a6, a4)}


def _grid(nx, ny, nz):
    """(blocks, BLOCK) covering an (nx, ny, nz) grid of threads, y and z capped at GRID_YZ_CAP
    blocks (the kernels stride over the rest); LaunchGridError if x is beyond CUDA's limit."""
    return strided_grid((nx, ny, nz), BLOCK)


def _input_cuda(x, V, stream=0):
    """Launch the input transform: V (3, 3, N, TH, TW, 2, 2, B) written from x; returns V."""
    _, _, N, TH, TW, _, _, B = V.shape
    if V.size:
        blocks, threads = _grid(B, TH * TW * 4, 9 * N)
        _cuda_kernels().input[blocks, threads, stream](x, V)
    return V


def _input_adj_cuda(dV, dx, stream=0):
    """Launch its adjoint: dx (N, H, W, B) gathered from dV (3, 3, N, TH, TW, 2, 2, B); returns dx."""
    N, H, W, B = dx.shape
    if dx.size:
        blocks, threads = _grid(B, W, N * H)
        _cuda_kernels().input_adj[blocks, threads, stream](dV, dx)
    return dx


def _output_cuda(M, y, adjoint, stream=0):
    """adjoint False: y (N, OH, OW, A) <- A^T M A; True: M (3, 3, N, TH, TW, A) <- A y A^T (as _output_cpu)."""
    N, OH, OW, A = y.shape
    if adjoint and M.size:
        blocks, threads = _grid(A, (OH // 2) * (OW // 2), 9 * N)
        _cuda_kernels().output_adj[blocks, threads, stream](M, y)
    elif not adjoint and y.size:
        blocks, threads = _grid(A, OW, N * OH)
        _cuda_kernels().output[blocks, threads, stream](M, y)
    return y
