"""Activations: finite differences in float64 (tolerance 1e-8) and stability at +-100."""

import numpy as np

from jmvae_cupy.gradcheck import check_gradients, dot
from jmvae_cupy.layers.activations import (
    relu_backward,
    relu_forward,
    sigmoid,
    sigmoid_backward,
    sigmoid_forward,
    softplus,
    softplus_backward,
    softplus_forward,
)

TOL = 1e-8


def _away_from_zero(rng, shape):
    x = rng.standard_normal(shape)
    return x + np.sign(x) * 0.1  # no entry within 0.1 of the ReLU kink (h = 1e-5)


def test_relu_gradient(rng):
    x = _away_from_zero(rng, (4, 6))
    dy = rng.standard_normal(x.shape)
    _, mask = relu_forward(x)
    dx = relu_backward(dy, mask)
    errs = check_gradients(lambda: dot(relu_forward(x)[0], dy), {"x": x}, {"x": dx})
    assert errs["x"] < TOL


def test_softplus_and_sigmoid_gradients(rng):
    x = rng.standard_normal((3, 5)) * 3
    dy = rng.standard_normal(x.shape)
    _, c = softplus_forward(x)
    errs = check_gradients(lambda: dot(softplus_forward(x)[0], dy), {"x": x}, {"x": softplus_backward(dy, c)})
    assert errs["x"] < TOL
    _, c = sigmoid_forward(x)
    errs = check_gradients(lambda: dot(sigmoid_forward(x)[0], dy), {"x": x}, {"x": sigmoid_backward(dy, c)})
    assert errs["x"] < TOL


def test_extreme_inputs_are_finite():
    for dtype in (np.float32, np.float64):
        x = np.array([-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0], dtype=dtype)
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            sp = softplus(x)
            sg = sigmoid(x)
        assert sp.dtype == dtype and sg.dtype == dtype
        assert np.all(np.isfinite(sp)) and np.all(np.isfinite(sg))
        np.testing.assert_allclose(sp[-2], 100.0)
        assert sp[1] > 0 or dtype == np.float32  # e^-100 is representable in float64
        np.testing.assert_allclose(sg[[0, -1]], [0.0, 1.0])
