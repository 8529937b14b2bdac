"""Dense layer: finite differences in float64, tolerance 1e-8 (the layer is linear)."""

import numpy as np

from jmvae_cupy.gradcheck import check_gradients, dot
from jmvae_cupy.layers.dense import dense_backward, dense_forward, dense_init
from jmvae_cupy.rng import Rng

TOL = 1e-8


def test_dense_gradients(rng):
    x = rng.standard_normal((5, 7)) + 0.3
    W = rng.standard_normal((7, 3))
    b = rng.standard_normal(3)
    dy = rng.standard_normal((5, 3))
    y, cache = dense_forward(x, W, b)
    np.testing.assert_allclose(y, x @ W + b)
    dx, g = dense_backward(dy, cache)
    errs = check_gradients(lambda: dot(dense_forward(x, W, b)[0], dy), {"x": x, "W": W, "b": b},
                           {"x": dx, "W": g["W"], "b": g["b"]})
    assert max(errs.values()) < TOL, errs


def test_dense_init_dtype_and_scale():
    p = dense_init(Rng(0), 100, 50, np.float32, np)
    assert p["W"].dtype == np.float32 and p["b"].dtype == np.float32
    assert p["W"].shape == (100, 50)
    assert np.abs(p["W"]).max() <= (6 / 150) ** 0.5
