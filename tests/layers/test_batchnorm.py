"""Batch norm, dense (N, C) and spatial (N, C, H, W), training and eval mode.

Finite differences in float64 with a random upstream gradient (an all-ones dy makes the true
training-mode dx zero, so a wrong backward would pass): tolerance 1e-7 (BN is smooth, but
the normalisation divides by a small std).  Running statistics are checked to 1e-12.
"""

import numpy as np
import pytest

from jmvae_cupy.gradcheck import check_gradients, dot, rel_error
from jmvae_cupy.layers.batchnorm import EPS, MOMENTUM, batchnorm_backward, batchnorm_forward, batchnorm_init

TOL_FD = 1e-7
SHAPES = [(6, 4), (3, 4, 3, 5)]  # dense; spatial with odd, non-square H, W


def _inputs(rng, shape):
    C = shape[1]
    x = rng.standard_normal(shape) * 2.0 + 3.0  # off zero mean and unit scale
    gamma = rng.standard_normal(C) + 1.5
    beta = rng.standard_normal(C)
    return x, gamma, beta


def _state(C, mean=0.0, var=1.0):
    return {"mean": np.full(C, mean), "var": np.full(C, var)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_gradients_by_finite_differences(rng, shape, train):
    x, gamma, beta = _inputs(rng, shape)
    C = shape[1]
    running = {"mean": rng.standard_normal(C) + 3.0, "var": rng.uniform(1.0, 4.0, C)}

    def fwd():
        # a fresh copy of the running statistics on every call: training mode updates them
        return batchnorm_forward(x, gamma, beta, {k: v.copy() for k, v in running.items()}, train)

    y, cache = fwd()
    dy = rng.standard_normal(y.shape)  # random upstream gradient
    dx, g = batchnorm_backward(dy, cache)
    errs = check_gradients(lambda: dot(fwd()[0], dy), {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, **g})
    assert max(errs.values()) < TOL_FD, errs
    assert dx.shape == x.shape and g["gamma"].shape == g["beta"].shape == (C,)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_fused_relu(rng, shape, train):
    """relu=True: y = max(BN(x), 0) with beta and the ReLU in one pass; the backward masks dy."""
    x, gamma, beta = _inputs(rng, shape)
    C = shape[1]
    y, cache = batchnorm_forward(x, gamma, beta, _state(C, 3.0, 2.0), train, relu=True)
    y0, cache0 = batchnorm_forward(x, gamma, beta, _state(C, 3.0, 2.0), train)
    np.testing.assert_array_equal(y, np.maximum(y0, 0))
    assert 0 < (y > 0).mean() < 1  # both sides of the kink are exercised
    dy = rng.standard_normal(y.shape)
    dx, g = batchnorm_backward(dy, cache)
    dx0, g0 = batchnorm_backward(dy * (y0 > 0), cache0)
    assert rel_error(dx, dx0) < 1e-12
    for k in g:
        assert rel_error(g[k], g0[k]) < 1e-12


@pytest.mark.parametrize("shape", SHAPES)
def test_training_mode_normalises_per_channel(rng, shape):
    x, _, _ = _inputs(rng, shape)
    C = shape[1]
    y, _ = batchnorm_forward(x, np.ones(C), np.zeros(C), _state(C), train=True)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-12)
    var = x.var(axis=axes)
    np.testing.assert_allclose(y.var(axis=axes), var / (var + EPS), rtol=1e-12)  # biased variance + eps


@pytest.mark.parametrize("shape", SHAPES)
def test_running_statistics_update_in_place(rng, shape):
    x, gamma, beta = _inputs(rng, shape)
    C = shape[1]
    state = _state(C, mean=0.5, var=2.0)
    mean_arr, var_arr = state["mean"], state["var"]
    batchnorm_forward(x, gamma, beta, state, train=True)
    assert state["mean"] is mean_arr and state["var"] is var_arr  # the model's arrays, updated in place
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    M = x.size // C
    mu, var_biased = x.mean(axis=axes), x.var(axis=axes)
    assert rel_error(mean_arr, (1 - MOMENTUM) * 0.5 + MOMENTUM * mu) < 1e-12
    unbiased = var_biased * M / (M - 1)
    assert rel_error(var_arr, (1 - MOMENTUM) * 2.0 + MOMENTUM * unbiased) < 1e-12


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_mode_uses_running_statistics(rng, shape):
    x, gamma, beta = _inputs(rng, shape)
    C = shape[1]
    state = {"mean": rng.standard_normal(C), "var": rng.uniform(0.5, 2.0, C)}
    before = {k: v.copy() for k, v in state.items()}
    y, _ = batchnorm_forward(x, gamma, beta, state, train=False)
    b = (slice(None),) + (None,) * (len(shape) - 2)  # broadcast (C,) over H, W
    want = gamma[b] * (x - state["mean"][b]) / np.sqrt(state["var"][b] + EPS) + beta[b]
    assert rel_error(y, want) < 1e-12
    for k in state:
        np.testing.assert_array_equal(state[k], before[k])


@pytest.mark.parametrize("train", [True, False])
def test_a_column_major_input_with_relu_gives_what_a_c_ordered_one_does(rng, train):
    """An (N, C) input that is not C-contiguous (here Fortran-ordered): the fused ReLU writes its
    output in place and needs C order; eval mode once raised on it instead of copying."""
    x, gamma, beta = _inputs(rng, (7, 5))
    state = {"mean": rng.standard_normal(5), "var": rng.uniform(0.5, 2.0, 5)}
    ys = [batchnorm_forward(a, gamma, beta, {k: v.copy() for k, v in state.items()}, train=train, relu=True)[0]
          for a in (x, np.asfortranarray(x))]
    np.testing.assert_array_equal(ys[0], ys[1])
    assert (ys[0] >= 0).all() and (ys[0] == 0).any() and (ys[0] > 0).any()


def test_two_pass_variance_survives_a_large_mean_in_float32(rng):
    """|mu| / std = 1e4: E[x^2] - E[x]^2 would lose every digit in float32; two passes do not."""
    x = (rng.standard_normal((256, 3)) + 1e4).astype(np.float32)
    params, state = batchnorm_init(3, np.float32, np)
    y, _ = batchnorm_forward(x, params["gamma"], params["beta"], state, train=True)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.astype(np.float64).std(axis=0), 1.0, rtol=1e-2)


def test_dtype_is_kept_and_init(rng):
    params, state = batchnorm_init(5, np.float32, np)
    np.testing.assert_array_equal(params["gamma"], 1.0)
    np.testing.assert_array_equal(params["beta"], 0.0)
    np.testing.assert_array_equal(state["var"], 1.0)
    x = rng.standard_normal((4, 5, 3, 2)).astype(np.float32)
    for train in (True, False):
        y, cache = batchnorm_forward(x, params["gamma"], params["beta"], state, train)
        dx, g = batchnorm_backward(rng.standard_normal(y.shape).astype(np.float32), cache)
        assert y.dtype == dx.dtype == g["gamma"].dtype == g["beta"].dtype == np.float32
        assert state["mean"].dtype == state["var"].dtype == np.float32


def test_training_dx_against_shifts_and_scales(rng):
    """y does not change when x is shifted per channel, so dx sums to zero per channel; scaling the
    deviations xc by (1 + t) changes y only through eps: d/dt y = gamma xhat eps / (var + eps), so
    <dx, xc>_c = gamma_c dgamma_c eps / (var_c + eps), for any dy."""
    x, gamma, beta = _inputs(rng, (5, 3, 2, 3))
    y, cache = batchnorm_forward(x, gamma, beta, _state(3), train=True)
    dx, g = batchnorm_backward(rng.standard_normal(y.shape), cache)
    np.testing.assert_allclose(dx.sum(axis=(0, 2, 3)), 0.0, atol=1e-12)
    xc = x - x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3))
    assert rel_error((dx * xc).sum(axis=(0, 2, 3)), gamma * g["gamma"] * EPS / (var + EPS)) < 1e-9


@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 1, 1)])
def test_a_one_row_batch_trains_and_blends_the_running_var_with_zero(rng, shape):
    """M = 1 value per channel: mu = x, the biased batch variance is 0, xhat = 0 so y = beta, and the
    unbiased estimate var M / (M - 1) is undefined: the convention (module docstring: "M = 1 keeps
    var") stores the batch variance, 0, so the running var is (1 - momentum) var0 + momentum * 0."""
    x, gamma, beta = _inputs(rng, shape)
    C = shape[1]
    state = _state(C, mean=0.5, var=2.0)
    y, cache = batchnorm_forward(x, gamma, beta, state, train=True)
    np.testing.assert_array_equal(y.reshape(C), beta)
    np.testing.assert_allclose(state["mean"], (1 - MOMENTUM) * 0.5 + MOMENTUM * x.reshape(C), rtol=1e-15)
    np.testing.assert_allclose(state["var"], (1 - MOMENTUM) * 2.0, rtol=1e-15)
    dx, g = batchnorm_backward(rng.standard_normal(shape), cache)
    np.testing.assert_array_equal(dx, 0.0)  # y does not depend on x when the batch has one row
    assert np.all(np.isfinite(g["gamma"])) and np.all(np.isfinite(g["beta"]))
