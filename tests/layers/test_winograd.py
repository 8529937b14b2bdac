"""Winograd F(2x2, 2x2) convolution (layers/winograd.py, and conv / deconv with method="winograd"):
against the loop oracles and the im2col path, by finite differences, the weight transform
against its adjoint, and the "auto" rule.

Tolerances as tests/layers/strided_checks.py: the oracle to 1e-12 (float64: the same sums,
grouped another way), finite differences 1e-8; float32 against im2col to 1e-5 of the scale.
"""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.gradcheck import rel_error
from jmvae_cupy.layers.conv import (
    ConvShapeError,
    conv2d_backward,
    conv2d_backward_naive,
    conv2d_forward,
    conv2d_forward_naive,
    conv2d_param_grads,
)
from jmvae_cupy.layers.conv_fast import WinogradConvCache, WinogradDeconvCache, use_winograd
from jmvae_cupy.layers.deconv import (
    deconv2d_backward,
    deconv2d_backward_naive,
    deconv2d_forward,
    deconv2d_forward_naive,
)

from .strided_checks import TOL_ORACLE, check_against_oracle, check_by_finite_differences

# (N, C_in, H, W, C_out) of a 4x4 / stride-2 / pad-1 conv: one tile, non-square, few and many channels
CONV_CASES = [(1, 1, 4, 4, 1), (2, 3, 8, 12, 5), (2, 9, 16, 8, 4)]


def _with(method, fn):
    return lambda *a: fn(*a, method=method)


CONV_W = (_with("winograd", conv2d_forward), conv2d_backward)
DECONV_W = (_with("winograd", deconv2d_forward), deconv2d_backward)


def _conv_inputs(rng, N, C, H, W, Co):
    x = rng.standard_normal((N, C, H, W)) * 1.5 + 0.7
    return x, rng.standard_normal((Co, C, 4, 4)) * 0.5, rng.standard_normal(Co) + 0.3


def _deconv_inputs(rng, N, C, H, W, Co):
    """A deconv whose output is (H, W): its input is (H/2, W/2) with C_in = Co, its W (Co, C, 4, 4)."""
    x = rng.standard_normal((N, Co, H // 2, W // 2)) * 1.5 + 0.7
    return x, rng.standard_normal((Co, C, 4, 4)) * 0.5, rng.standard_normal(C) + 0.3


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_winograd_matches_the_loop_oracle(rng, case):
    x, Wt, b = _conv_inputs(rng, *case)
    _, cache = CONV_W[0](x, Wt, b, 2, 1)
    assert isinstance(cache, WinogradConvCache)  # the path under test did run
    check_against_oracle(rng, *CONV_W, conv2d_forward_naive, conv2d_backward_naive, x, Wt, b, 2, 1)


@pytest.mark.parametrize("case", CONV_CASES)
def test_deconv_winograd_matches_the_loop_oracle(rng, case):
    x, Wt, b = _deconv_inputs(rng, *case)
    assert isinstance(DECONV_W[0](x, Wt, b, 2, 1)[1], WinogradDeconvCache)
    check_against_oracle(rng, *DECONV_W, deconv2d_forward_naive, deconv2d_backward_naive, x, Wt, b, 2, 1)


@pytest.mark.parametrize("case", CONV_CASES[1:])
def test_winograd_backward_by_finite_differences(rng, case):
    check_by_finite_differences(rng, *CONV_W, *_conv_inputs(rng, *case), 2, 1)
    check_by_finite_differences(rng, *DECONV_W, *_deconv_inputs(rng, *case), 2, 1)


def test_fused_relu_and_the_parameter_half_match_im2col(rng):
    """relu=True (the CkR layers) and conv2d_param_grads (a first layer: no dx) on the Winograd path."""
    x, Wt, b = _conv_inputs(rng, 2, 6, 8, 8, 7)
    y_w, c_w = conv2d_forward(x, Wt, b, 2, 1, relu=True, method="winograd")
    y_i, c_i = conv2d_forward(x, Wt, b, 2, 1, relu=True, method="im2col")
    assert rel_error(y_w, y_i) < TOL_ORACLE and (y_w >= 0).all()
    dy = rng.standard_normal(y_w.shape)
    (dx_w, g_w), (dx_i, g_i) = conv2d_backward(dy, c_w), conv2d_backward(dy, c_i)
    for a, r in ((dx_w, dx_i), (g_w["W"], g_i["W"]), (g_w["b"], g_i["b"])):
        assert rel_error(a, r) < TOL_ORACLE
    g_p = conv2d_param_grads(dy, conv2d_forward(x, Wt, b, 2, 1, relu=True, method="winograd")[1])
    assert rel_error(g_p["W"], g_i["W"]) < TOL_ORACLE


def test_float32_agrees_with_im2col_to_rounding(rng):
    x, Wt, b = (a.astype(np.float32) for a in _conv_inputs(rng, 4, 32, 16, 16, 24))
    y_w, c_w = conv2d_forward(x, Wt, b, 2, 1, method="winograd")
    y_i, c_i = conv2d_forward(x, Wt, b, 2, 1, method="im2col")
    assert y_w.dtype == np.float32
    dy = rng.standard_normal(y_w.shape).astype(np.float32)
    (dx_w, g_w), (dx_i, g_i) = conv2d_backward(dy, c_w), conv2d_backward(dy, c_i)
    for a, r in ((y_w, y_i), (dx_w, dx_i), (g_w["W"], g_i["W"])):
        assert a.dtype == np.float32
        assert np.abs(a - r).max() <= 1e-5 * np.abs(r).max()


def test_deconv_backward_data_is_still_exactly_conv_forward(rng):
    """Both decide by the same correlation, so the identity of test_conv_transpose holds on Winograd too."""
    x, Wt, b = _deconv_inputs(rng, 2, 20, 16, 16, 24)  # large enough for "auto" to pick Winograd
    y, cache = deconv2d_forward(x, Wt, b, 2, 1)
    assert isinstance(cache, WinogradDeconvCache)
    dy = rng.standard_normal(y.shape)
    dx, _ = deconv2d_backward(dy, cache)
    np.testing.assert_array_equal(dx, conv2d_forward(dy, Wt, None, 2, 1)[0])


def test_the_auto_rule():
    """Winograd where it applies and pays: >= 16 channels both sides, input >= 8 x 8 (the CelebA
    32x32, 16x16 and 8x8 layers); im2col for the RGB layers, 4x4 inputs and other geometries."""
    s, p = (2, 2), (1, 1)
    assert use_winograd(32, 32, 4, 4, s, p, 64, 128) and use_winograd(16, 16, 4, 4, s, p, 128, 256)
    assert not use_winograd(64, 64, 4, 4, s, p, 3, 64)  # RGB
    assert use_winograd(8, 8, 4, 4, s, p, 256, 256)  # 8x8
    assert not use_winograd(4, 4, 4, 4, s, p, 256, 256)  # 4x4: one tile per image, not measured
    assert not use_winograd(30, 32, 4, 4, s, p, 64, 64)  # 30 is not a multiple of 4
    assert not use_winograd(32, 32, 3, 3, s, p, 64, 64) and not use_winograd(32, 32, 4, 4, (1, 1), p, 64, 64)
    assert not use_winograd(32, 32, 4, 4, s, p, 64, 128, method="im2col")
    assert use_winograd(8, 8, 4, 4, s, p, 3, 3, method="winograd")


@pytest.mark.parametrize("call, match", [
    (lambda: conv2d_forward(np.zeros((1, 2, 6, 8)), np.zeros((3, 2, 4, 4)), None, 2, 1, method="winograd"),
     "multiples of 4"),
    (lambda: conv2d_forward(np.zeros((1, 2, 8, 8)), np.zeros((3, 2, 3, 3)), None, 2, 1, method="winograd"),
     "4x4 kernel"),
    (lambda: deconv2d_forward(np.zeros((1, 2, 3, 4)), np.zeros((2, 3, 4, 4)), None, 2, 1, method="winograd"),
     "multiples of 4"),
    (lambda: conv2d_forward(np.zeros((1, 2, 8, 8)), np.zeros((3, 2, 4, 4)), None, 2, 1, method="fft"),
     "method must be one of"),
])
def test_a_method_that_cannot_run_gets_one_clear_error(call, match):
    with pytest.raises(ConvShapeError, match=match):
        call()
