"""Winograd data transforms (kernels/winograd.py): the parallel Numba kernels against the plain-xp
references (bit for bit: both only add and subtract, in the same order), each transform against
its adjoint (<T a, b> = <a, T^T b>), strided input views, and the argument checks.  The layer-level
algebra is tested in tests/layers/test_winograd.py."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels.winograd import (
    wino_input,
    wino_input_adj,
    wino_input_adj_ref,
    wino_input_ref,
    wino_output,
    wino_output_adj,
    wino_output_adj_ref,
    wino_output_ref,
    wino_weight,
    wino_weight_adj,
    wino_weight_adj_ref,
    wino_weight_ref,
)

DTYPES = [np.float32, np.float64]
# (N, H, W, B): one tile, non-square, several tiles each way, many channels
SHAPES = [(1, 4, 4, 1), (2, 8, 12, 3), (3, 16, 8, 17)]


def _adjoint_gap(fa, a, gb, b):
    """|<f a, b> - <a, g b>| relative to the size of the terms (float64)."""
    lhs = float(np.vdot(fa.astype(np.float64), b))
    rhs = float(np.vdot(a.astype(np.float64), gb))
    return abs(lhs - rhs) / max(abs(lhs), float(np.abs(fa).sum() * np.abs(b).max()), 1e-300)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_input_transform_kernels_equal_the_references(rng, dtype, shape):
    N, H, W, B = shape
    x = rng.standard_normal(shape).astype(dtype)
    V = wino_input(x)
    assert V.shape == (9, N * (H // 4) * (W // 4), 4 * B) and V.flags.c_contiguous
    np.testing.assert_array_equal(V, wino_input_ref(x))
    dV = rng.standard_normal(V.shape).astype(dtype)
    dx = wino_input_adj(dV, N, H, W)
    assert dx.shape == shape
    np.testing.assert_array_equal(dx, wino_input_adj_ref(dV, N, H, W))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_transform_kernels_equal_the_references(rng, dtype, shape):
    N, H, W, _ = shape
    OH, OW, A = H // 2, W // 2, 5
    M = rng.standard_normal((9, N * (OH // 2) * (OW // 2), A)).astype(dtype)
    y = wino_output(M, N, OH, OW)
    assert y.shape == (N, OH, OW, A)
    np.testing.assert_array_equal(y, wino_output_ref(M, N, OH, OW))
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(wino_output_adj(dy), wino_output_adj_ref(dy))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("A, B", [(1, 1), (5, 3), (17, 8)])
def test_weight_transform_kernels_equal_the_references(rng, dtype, A, B):
    W = rng.standard_normal((A, B, 4, 4)).astype(dtype)
    Ut = wino_weight(W)
    assert Ut.shape == (9, A, 4 * B)
    np.testing.assert_array_equal(Ut, wino_weight_ref(W))
    dUt = rng.standard_normal(Ut.shape).astype(dtype)
    dW = wino_weight_adj(dUt, W.shape)
    assert dW.shape == W.shape and dW.flags.c_contiguous
    np.testing.assert_array_equal(dW, wino_weight_adj_ref(dUt, W.shape))
    assert _adjoint_gap(wino_weight(W.astype(np.float64)), W, wino_weight_adj(dUt.astype(np.float64), W.shape),
                        dUt) < 1e-13


def test_the_weight_transform_is_g_g_g_transpose_of_the_sub_kernels(rng):
    """Written out for one (output, input) channel pair: sub-kernel (r, q) holds taps
    (2a' + r, 2b' + q), and U = G g G^T with G = [[1, 0], [1, 1], [0, 1]]."""
    W = rng.standard_normal((1, 1, 4, 4))
    G = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    U = wino_weight(W).reshape(3, 3, 2, 2)  # (alpha, beta, r, q)
    for r in range(2):
        for q in range(2):
            g = W[0, 0, r::2, q::2]  # g[a', b'] = W[2a' + r, 2b' + q]
            np.testing.assert_allclose(U[:, :, r, q], G @ g @ G.T, rtol=0, atol=1e-15)


@pytest.mark.parametrize("shape", SHAPES)
def test_each_transform_is_the_adjoint_of_its_partner(rng, shape):
    N, H, W, B = shape
    x = rng.standard_normal(shape)
    dV = rng.standard_normal((9, N * (H // 4) * (W // 4), 4 * B))
    assert _adjoint_gap(wino_input(x), x, wino_input_adj(dV, N, H, W), dV) < 1e-13
    M = rng.standard_normal((9, N * (H // 4) * (W // 4), 3))
    dy = rng.standard_normal((N, H // 2, W // 2, 3))
    assert _adjoint_gap(wino_output(M, N, H // 2, W // 2), M, wino_output_adj(dy), dy) < 1e-13


def test_the_input_transform_is_b_transpose_d_b_of_the_zero_padded_space_to_depth_windows(rng):
    """One tile, one channel, written out: the window of tile (0, 0) is rows / columns -1, 1, 3 of
    x (phase 0) -- row -1 is padding -- and V = B^T d B with B^T = [[1, -1, 0], [0, 1, 0], [0, -1, 1]]."""
    x = rng.standard_normal((1, 4, 4, 1))
    xpad = np.pad(x[0, :, :, 0], 1)
    Bt = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 1.0]])
    V = wino_input(x).reshape(3, 3, 2, 2)  # (alpha, beta, r, q): one tile, one channel
    for r in range(2):
        for q in range(2):
            d = xpad[r::2, q::2][:3, :3]  # S[0..2, 0..2] of phase (r, q)
            np.testing.assert_allclose(V[:, :, r, q], Bt @ d @ Bt.T, rtol=0, atol=1e-15)


def test_strided_views_give_the_contiguous_result(rng):
    """The conv layers pass NCHW arrays seen as NHWC (channels-last memory, or C order)."""
    x = rng.standard_normal((2, 5, 8, 8))  # NCHW
    view = x.transpose(0, 2, 3, 1)  # NHWC view, not contiguous
    np.testing.assert_array_equal(wino_input(view), wino_input(np.ascontiguousarray(view)))
    dy = rng.standard_normal((2, 3, 4, 6)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(wino_output_adj(dy), wino_output_adj(np.ascontiguousarray(dy)))


@pytest.mark.parametrize("call, match", [
    (lambda: wino_input(np.zeros((1, 6, 8, 2))), "multiple of 4"),
    (lambda: wino_input(np.zeros((1, 8, 8), np.float32)), "4-D"),
    (lambda: wino_input(np.zeros((1, 8, 8, 2), np.int32)), "expected float32 or float64"),
    (lambda: wino_input([[0.0]]), "NumPy or CuPy array"),
    (lambda: wino_input_adj(np.zeros((9, 5, 8)), 1, 8, 8), r"expected \(9, 4, 4B\)"),
    (lambda: wino_output(np.zeros((9, 4, 3)), 1, 6, 4), "even sides"),
    (lambda: wino_output_adj(np.zeros((1, 3, 4, 2))), "must be even"),
    (lambda: wino_weight(np.zeros((2, 3, 3, 3))), r"expected \(A, B, 4, 4\)"),
    (lambda: wino_weight_adj(np.zeros((9, 2, 8)), (2, 3, 4, 4)), r"expected \(9, 2, 12\)"),
])
def test_bad_arguments_get_one_clear_error(call, match):
    with pytest.raises(KernelArgumentError, match=match):
        call()
