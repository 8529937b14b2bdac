"""Convolution (and im2col / col2im): against the loop oracle, by finite differences, by adjointness.

Tolerances: the fast path equals the oracle to 1e-12 (float64, the same sums in another order);
finite differences of a linear layer reach ~1e-10, checked at 1e-8; adjoint identities 1e-10.
"""

import numpy as np
import pytest

from jmvae_cupy.gradcheck import check_gradients, dot, rel_error
from jmvae_cupy.layers import conv_fast
from jmvae_cupy.layers.conv import (
    ConvShapeError,
    conv2d_backward,
    conv2d_backward_naive,
    conv2d_forward,
    conv2d_forward_naive,
    conv2d_init,
    conv2d_param_grads,
    correlate_transpose,
)
from jmvae_cupy.layers.conv_fast import use_subpixel
from jmvae_cupy.layers.deconv import deconv2d_forward
from jmvae_cupy.layers.im2col import col2im, conv_outsize, deconv_outsize, im2col
from jmvae_cupy.rng import Rng

from .strided_checks import (
    TOL_ORACLE,
    check_against_oracle,
    check_by_finite_differences,
    check_oracle_by_finite_differences,
)

TOL_ADJOINT = 1e-10

FAST = (conv2d_forward, conv2d_backward)  # the layer under test
ORACLE = (conv2d_forward_naive, conv2d_backward_naive)  # its loop oracle

# (N, C_in, H, W, C_out, K, stride, pad): odd, non-square, stride 2, the paper's 4x4/2/1, a
# floor-dividing size (H + 2p - K not a multiple of the stride), anisotropic stride and padding
CASES = [
    (2, 3, 7, 9, 4, 3, 2, 1),
    (2, 3, 8, 6, 5, 4, 2, 1),
    (1, 2, 5, 6, 3, 2, 1, 0),
    (2, 3, 9, 7, 2, 3, (2, 1), (0, 2)),
    (3, 2, 6, 5, 3, 3, 3, 2),
    (2, 9, 6, 7, 3, 4, 2, 1),  # C_in >= 8: col2im accumulates channels-last (C < 8: channels-first)
]


def _inputs(rng, N, C, H, W, Co, K):
    x = rng.standard_normal((N, C, H, W)) * 1.5 + 0.7  # off zero mean and unit scale
    Wt = rng.standard_normal((Co, C, K, K)) * 0.5
    b = rng.standard_normal(Co) + 0.3
    return x, Wt, b


@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_the_loop_oracle(rng, case):
    N, C, H, W, Co, K, s, p = case
    check_against_oracle(rng, *FAST, *ORACLE, *_inputs(rng, N, C, H, W, Co, K), s, p)


@pytest.mark.parametrize("case", CASES[:4])
def test_gradients_by_finite_differences(rng, case):
    N, C, H, W, Co, K, s, p = case
    check_by_finite_differences(rng, *FAST, *_inputs(rng, N, C, H, W, Co, K), s, p)


def test_fused_relu_and_parameter_gradients_only(rng):
    """relu=True: y = max(conv + b, 0) in one pass (kernels/bias_relu.py); its backward masks dy.
    conv2d_param_grads: the same dW, db without dx."""
    x, Wt, b = _inputs(rng, 2, 3, 7, 8, 4, 3)
    y, cache = conv2d_forward(x, Wt, b, 2, 1, relu=True)
    np.testing.assert_array_equal(y, np.maximum(conv2d_forward(x, Wt, b, 2, 1)[0], 0))
    dy = rng.standard_normal(y.shape)
    dx, g = conv2d_backward(dy, cache)
    dx_n, g_n = conv2d_backward_naive(dy * (y > 0), x, Wt, 2, 1)
    for a, n in ((dx, dx_n), (g["W"], g_n["W"]), (g["b"], g_n["b"])):
        assert rel_error(a, n) < TOL_ORACLE
    errs = check_gradients(
        lambda: dot(conv2d_forward(x, Wt, b, 2, 1, relu=True)[0], dy), {"W": Wt, "b": b}, g
    )  # (x is left out: the ReLU kinks make its finite differences noisier, and dx is checked above)
    assert max(errs.values()) < 1e-6, errs
    g_only = conv2d_param_grads(dy, cache)
    assert g_only.keys() == g.keys() and all(np.array_equal(g_only[k], g[k]) for k in g)
    with pytest.raises(ConvShapeError, match="needs a bias"):
        conv2d_forward(x, Wt, None, 2, 1, relu=True)


def test_the_oracle_itself_by_finite_differences(rng):
    check_oracle_by_finite_differences(rng, *ORACLE, *_inputs(rng, 1, 2, 5, 4, 2, 3), 2, 1)


def test_without_bias(rng):
    x, Wt, _ = _inputs(rng, 2, 3, 8, 8, 4, 4)
    y, cache = conv2d_forward(x, Wt, None, 2, 1)
    assert rel_error(y, conv2d_forward_naive(x, Wt, None, 2, 1)) < TOL_ORACLE
    _, g = conv2d_backward(rng.standard_normal(y.shape), cache)
    assert set(g) == {"W"}


def test_adjoint_identity_conv_and_transposed_conv(rng):
    """<conv(x), y> = <x, conv_T(y)>: deconv2d with the same W is the adjoint of conv2d."""
    for N, C, H, W, Co, K, s, p in [(2, 3, 8, 6, 5, 4, 2, 1), (2, 2, 7, 9, 3, 3, 2, 1), (1, 4, 5, 6, 3, 2, 1, 0)]:
        x, Wt, _ = _inputs(rng, N, C, H, W, Co, K)
        cx, _ = conv2d_forward(x, Wt, None, s, p)
        y = rng.standard_normal(cx.shape)
        cty, _ = deconv2d_forward(y, Wt, None, s, p)  # W (C_out, C_in, K, K) read as (C_in', C_out', K, K)
        assert cty.shape == x.shape
        lhs, rhs = dot(cx, y), dot(x, cty)
        assert abs(lhs - rhs) <= TOL_ADJOINT * abs(lhs), (lhs, rhs)


# (N, OH, OW, A, B, KH, KW, stride, pad): K a multiple of the stride or not, stride 1 and 3,
# crop 0 and crops wider than the stride
SUBPIXEL_CASES = [
    (2, 3, 4, 3, 2, 4, 4, (2, 2), (1, 1)),
    (2, 3, 5, 2, 9, 3, 3, (2, 2), (1, 1)),
    (1, 4, 3, 2, 2, 3, 3, (1, 1), (1, 1)),
    (2, 3, 3, 2, 2, 4, 4, (3, 3), (2, 2)),
    (1, 2, 3, 2, 2, 5, 5, (2, 2), (0, 0)),
    (2, 3, 4, 2, 3, 4, 3, (2, 1), (1, 0)),
    (1, 4, 3, 2, 2, 4, 4, (2, 2), (3, 3)),
]


@pytest.mark.parametrize("case", SUBPIXEL_CASES)
def test_subpixel_and_scatter_agree(rng, case):
    """correlate_transpose's two methods (GEMM + col2im; sub-pixel phases + pixel shuffle)."""
    N, OH, OW, A, B, kh, kw, s, p = case
    H, W = deconv_outsize(OH, kh, s[0], p[0]), deconv_outsize(OW, kw, s[1], p[1])
    y_rows = rng.standard_normal((N * OH * OW, A))
    Wm = rng.standard_normal((A, kh * kw * B))
    args = (y_rows, Wm, (N, OH, OW), (H, W), kh, kw, s, p)
    scatter = correlate_transpose(*args, method="scatter")
    assert scatter.shape == (N, H, W, B)
    assert rel_error(correlate_transpose(*args, method="subpixel"), scatter) < TOL_ORACLE


def test_large_grids_take_the_subpixel_path(rng, monkeypatch):
    """At 16x16 and 8+ channels "auto" takes the sub-pixel method (the backward does call it): still
    equal to the oracle."""
    x, Wt, b = _inputs(rng, 1, 8, 32, 34, 3, 4)
    y, cache = conv2d_forward(x, Wt, b, 2, 1)
    dy = rng.standard_normal(y.shape)
    assert use_subpixel((1, 16, 17), (32, 34), 8, 4, 4, (2, 2), (1, 1))
    calls = []
    real = conv_fast.correlate_transpose_subpixel
    monkeypatch.setattr(conv_fast, "correlate_transpose_subpixel", lambda *a: calls.append(1) or real(*a))
    dx, _ = conv2d_backward(dy, cache)
    assert calls == [1]
    assert rel_error(dx, conv2d_backward_naive(dy, x, Wt, 2, 1)[0]) < TOL_ORACLE


def test_backward_data_is_the_transposed_convolution(rng):
    x, Wt, b = _inputs(rng, 2, 3, 8, 6, 5, 4)
    y, cache = conv2d_forward(x, Wt, b, 2, 1)
    dy = rng.standard_normal(y.shape)
    dx, _ = conv2d_backward(dy, cache)
    np.testing.assert_array_equal(dx, deconv2d_forward(dy, Wt, None, 2, 1)[0])


# (N, H, W, C, K, stride, pad)
IM2COL_CASES = [
    (2, 7, 9, 3, 3, 2, 1),
    (1, 6, 5, 2, 4, 2, 1),
    (2, 5, 8, 2, 3, 3, 2),
    (1, 4, 4, 2, 4, 2, 3),
    (2, 5, 7, 9, 4, 2, 1),  # C >= 8: the channels-last canvas
]


@pytest.mark.parametrize("shape", IM2COL_CASES)
def test_im2col_col2im_adjoint(rng, shape):
    """<im2col(x), c> = <x, col2im(c)> on odd sizes, floor division and padding wider than the taps."""
    N, H, W, C, K, s, p = shape
    x = rng.standard_normal((N, H, W, C))
    col = im2col(x, K, K, s, s, p, p)
    OH, OW = conv_outsize(H, K, s, p), conv_outsize(W, K, s, p)
    assert col.shape == (N, OH, OW, K, K, C)
    c = rng.standard_normal(col.shape)
    back = col2im(c, H, W, s, s, p, p)
    assert back.shape == x.shape
    lhs, rhs = dot(col, c), dot(x, back)
    assert abs(lhs - rhs) <= TOL_ADJOINT * abs(lhs)


def test_paper_geometry_and_float32(rng):
    """4x4 stride 2 pad 1 halves the size: 64 -> 32; float32 in, float32 everywhere out."""
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    p = conv2d_init(Rng(0), 3, 8, 4, 4, np.float32, np)
    y, cache = conv2d_forward(x, p["W"], p["b"], 2, 1)
    assert y.shape == (2, 8, 32, 32) and y.dtype == np.float32
    dx, g = conv2d_backward(rng.standard_normal(y.shape).astype(np.float32), cache)
    assert dx.dtype == g["W"].dtype == g["b"].dtype == np.float32
    assert g["W"].flags.c_contiguous
    assert rel_error(y, conv2d_forward_naive(x, p["W"], p["b"], 2, 1)) < 1e-5


def test_init_scale_and_bias_switch():
    p = conv2d_init(Rng(0), 16, 32, 4, 4, np.float32, np)
    assert p["W"].shape == (32, 16, 4, 4) and p["b"].shape == (32,) and p["W"].dtype == np.float32
    assert np.abs(p["W"]).max() <= (6 / (48 * 16)) ** 0.5
    assert set(conv2d_init(Rng(0), 16, 32, 4, 4, np.float32, np, bias=False)) == {"W"}


def test_shape_errors(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    with pytest.raises(ConvShapeError, match="channels"):
        conv2d_forward(x, rng.standard_normal((4, 2, 3, 3)))
    with pytest.raises(ConvShapeError, match="does not fit"):
        conv2d_forward(x, rng.standard_normal((4, 3, 9, 9)))
    with pytest.raises(ConvShapeError, match="b must"):
        conv2d_forward(x, rng.standard_normal((4, 3, 3, 3)), np.zeros(3))
    with pytest.raises(ConvShapeError):
        conv2d_forward(x[0], rng.standard_normal((4, 3, 3, 3)))
