"""Transposed convolution: against the loop oracle, by finite differences, and as conv's adjoint.

Tolerances as in test_conv.py: oracle 1e-12, finite differences 1e-8 (linear layer), exact
equality where the two layers run the very same primitive.
"""

import numpy as np
import pytest

from jmvae_cupy.gradcheck import rel_error
from jmvae_cupy.layers.conv import ConvShapeError, conv2d_forward
from jmvae_cupy.layers.deconv import (
    deconv2d_backward,
    deconv2d_backward_naive,
    deconv2d_forward,
    deconv2d_forward_naive,
    deconv2d_init,
)
from jmvae_cupy.rng import Rng

from .strided_checks import (
    TOL_ORACLE,
    check_against_oracle,
    check_by_finite_differences,
    check_oracle_by_finite_differences,
)

FAST = (deconv2d_forward, deconv2d_backward)  # the layer under test
ORACLE = (deconv2d_forward_naive, deconv2d_backward_naive)  # its loop oracle

# (N, C_in, H, W, C_out, K, stride, pad)
CASES = [
    (2, 3, 4, 5, 2, 4, 2, 1),  # the paper's geometry on a non-square input: 4x5 -> 8x10
    (2, 3, 3, 4, 4, 3, 2, 1),
    (1, 2, 5, 3, 3, 2, 1, 0),
    (2, 2, 3, 4, 2, 3, (2, 1), (1, 0)),
    (2, 2, 3, 3, 3, 4, 3, 2),
    (2, 3, 3, 4, 9, 4, 2, 1),  # C_out >= 8: col2im accumulates channels-last
]


def _inputs(rng, N, C, H, W, Co, K):
    x = rng.standard_normal((N, C, H, W)) * 1.5 - 0.6
    Wt = rng.standard_normal((C, Co, K, K)) * 0.5
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


def test_the_oracle_itself_by_finite_differences(rng):
    check_oracle_by_finite_differences(rng, *ORACLE, *_inputs(rng, 1, 2, 3, 4, 2, 3), 2, 1)


def test_backward_data_is_the_convolution(rng):
    """deconv backward-data == conv forward with the same W (read as (C_out', C_in', K, K))."""
    x, Wt, b = _inputs(rng, 2, 3, 4, 5, 2, 4)
    y, cache = deconv2d_forward(x, Wt, b, 2, 1)
    dy = rng.standard_normal(y.shape)
    dx, _ = deconv2d_backward(dy, cache)
    np.testing.assert_array_equal(dx, conv2d_forward(dy, Wt, None, 2, 1)[0])


def test_large_grid_subpixel_path_matches_the_oracle(rng):
    """16x17 input, 8 output channels: the forward takes the sub-pixel method (see conv.py)."""
    x, Wt, b = _inputs(rng, 1, 3, 16, 17, 8, 4)
    y, cache = deconv2d_forward(x, Wt, b, 2, 1)
    assert y.shape == (1, 8, 32, 34)
    assert rel_error(y, deconv2d_forward_naive(x, Wt, b, 2, 1)) < TOL_ORACLE


def test_decoder_sizes_double_in_float32():
    """4x4 stride 2 crop 1: 4 -> 8 -> 16 -> 32 -> 64, float32 throughout."""
    rng, x = Rng(0), np.ones((2, 6, 4, 4), np.float32)
    for c_in, c_out, size in ((6, 5, 8), (5, 4, 16), (4, 3, 32), (3, 3, 64)):
        p = deconv2d_init(rng, c_in, c_out, 4, 4, np.float32, np)
        x, cache = deconv2d_forward(x, p["W"], p["b"], 2, 1)
        assert x.shape == (2, c_out, size, size) and x.dtype == np.float32
    dx, g = deconv2d_backward(np.ones(x.shape, np.float32) * 0.5, cache)
    assert dx.dtype == g["W"].dtype == g["b"].dtype == np.float32
    assert p["W"].shape == (3, 3, 4, 4) and g["W"].flags.c_contiguous


def test_shape_errors(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    with pytest.raises(ConvShapeError, match="channels"):
        deconv2d_forward(x, rng.standard_normal((2, 4, 4, 4)))
    with pytest.raises(ConvShapeError, match="crops away"):
        deconv2d_forward(x[:, :, :1, :1], rng.standard_normal((3, 4, 2, 2)), None, 1, 1)
    with pytest.raises(ConvShapeError, match="b must"):
        deconv2d_forward(x, rng.standard_normal((3, 4, 4, 4)), np.zeros(3))
