"""Log-likelihoods: closed-form values, stability for logits of +-100, and float64 finite
differences of every backward (tolerance 1e-8) with a random upstream gradient."""

import math

import numpy as np
import pytest

from jmvae_cupy.distributions import (
    Bernoulli,
    Categorical,
    FixedVarGaussian,
    gaussian_loglik,
    gaussian_loglik_backward,
    gaussian_var_backward,
    gaussian_var_forward,
    standard_normal_loglik,
)
from jmvae_cupy.gradcheck import check_gradients, dot
from jmvae_cupy.kernels.reparam import (
    reparam_backward,
    reparam_backward_ref,
    reparam_forward,
    reparam_forward_ref,
)
from jmvae_cupy.rng import Rng

TOL = 1e-8


def test_bernoulli_value_and_gradient(rng):
    logits = rng.standard_normal((4, 6)) * 2
    x = (rng.random((4, 6)) < 0.5).astype(np.float64)
    ll, cache = Bernoulli.loglik(x, logits)
    p = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(ll, (x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1), rtol=1e-12)
    dll = rng.standard_normal(4)
    g = Bernoulli.loglik_backward(dll, cache)
    errs = check_gradients(lambda: dot(Bernoulli.loglik(x, logits)[0], dll), {"l": logits}, {"l": g})
    assert errs["l"] < TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bernoulli_extreme_logits(dtype):
    logits = np.array([[100.0, -100.0, 100.0, -100.0]], dtype=dtype)
    x = np.array([[1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ll, cache = Bernoulli.loglik(x, logits)
        g = Bernoulli.loglik_backward(np.ones(1, dtype), cache)
    np.testing.assert_allclose(ll, [-200.0], rtol=1e-6)  # two confident mistakes cost 100 nats each
    np.testing.assert_allclose(g, [[0.0, 0.0, -1.0, 1.0]], atol=1e-6)


def test_categorical_value_and_gradient(rng):
    logits = rng.standard_normal((5, 10)) * 3
    w = np.eye(10)[rng.integers(0, 10, 5)]
    ll, cache = Categorical.loglik(w, logits)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(ll, np.log((p * w).sum(1)), rtol=1e-12)
    dll = rng.standard_normal(5)
    errs = check_gradients(lambda: dot(Categorical.loglik(w, logits)[0], dll), {"l": logits},
                           {"l": Categorical.loglik_backward(dll, cache)})
    assert errs["l"] < TOL
    # soft (non one-hot) targets use the general closed form w - softmax(l) sum_k w_k
    w2 = rng.random((5, 10))
    _, cache = Categorical.loglik(w2, logits)
    errs = check_gradients(lambda: dot(Categorical.loglik(w2, logits)[0], dll), {"l": logits},
                           {"l": Categorical.loglik_backward(dll, cache)})
    assert errs["l"] < TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_categorical_extreme_logits(dtype):
    logits = np.array([[100.0, -100.0, 0.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ll, _ = Categorical.loglik(np.array([[0.0, 1.0, 0.0]], dtype), logits)
    np.testing.assert_allclose(ll, [-200.0], rtol=1e-6)


def test_fixed_gaussian_value_and_gradient(rng):
    d = FixedVarGaussian(var=1.0)
    x, mu = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    ll, cache = d.loglik(x, mu)
    np.testing.assert_allclose(ll, (-0.5 * (x - mu) ** 2 - 0.5 * math.log(2 * math.pi)).sum(1))
    dll = rng.standard_normal(3)
    errs = check_gradients(lambda: dot(d.loglik(x, mu)[0], dll), {"mu": mu}, {"mu": d.loglik_backward(dll, cache)})
    assert errs["mu"] < TOL
    d2 = FixedVarGaussian(var=0.3)
    _, cache = d2.loglik(x, mu)
    errs = check_gradients(lambda: dot(d2.loglik(x, mu)[0], dll), {"mu": mu}, {"mu": d2.loglik_backward(dll, cache)})
    assert errs["mu"] < TOL


def test_learned_gaussian_loglik_and_gradient(rng):
    x, mu = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    var = rng.random((4, 3)) + 0.2
    ll, cache = gaussian_loglik(x, mu, var)
    ref = (-0.5 * np.log(2 * np.pi * var) - (x - mu) ** 2 / (2 * var)).sum(1)
    np.testing.assert_allclose(ll, ref, rtol=1e-12)
    np.testing.assert_allclose(standard_normal_loglik(x), gaussian_loglik(x, 0 * x, 1 + 0 * x)[0])
    dll = rng.standard_normal(4)
    dx, dmu, dvar = gaussian_loglik_backward(dll, cache)
    errs = check_gradients(lambda: dot(gaussian_loglik(x, mu, var)[0], dll), {"x": x, "mu": mu, "var": var},
                           {"x": dx, "mu": dmu, "var": dvar})
    assert max(errs.values()) < TOL, errs


def test_variance_head(rng):
    a = rng.standard_normal((3, 4)) * 4
    dv = rng.standard_normal(a.shape)
    var, cache = gaussian_var_forward(a)
    assert np.all(var > 0)
    errs = check_gradients(lambda: dot(gaussian_var_forward(a)[0], dv), {"a": a},
                           {"a": gaussian_var_backward(dv, cache)})
    assert errs["a"] < TOL
    v32, _ = gaussian_var_forward(np.array([-200.0], np.float32))
    assert v32[0] > 0 and np.isfinite(np.log(v32[0]))


def test_samplers_follow_their_distributions():
    r = Rng(3)
    logits = np.tile(np.array([[0.0, np.log(3.0)]]), (20000, 1))
    xs = Bernoulli.sample(logits, r)
    np.testing.assert_allclose(xs.mean(0), [0.5, 0.75], atol=0.015)
    ws = Categorical.sample(np.tile(np.log([[0.2, 0.3, 0.5]]), (20000, 1)), r)
    assert np.all(ws.sum(1) == 1)
    np.testing.assert_allclose(ws.mean(0), [0.2, 0.3, 0.5], atol=0.015)


def test_fixed_gaussian_value_at_a_variance_other_than_one(rng):
    """ll_n = -0.5 sum_d [log(2 pi var) + (x - mu)^2 / var]: the normaliser depends on var too (at
    var = 1 a missing log var is invisible)."""
    x, mu = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    for var in (0.3, 2.5):
        ll, _ = FixedVarGaussian(var=var).loglik(x, mu)
        want = -0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var).sum(axis=1)
        np.testing.assert_allclose(ll, want, rtol=1e-13)
    # one worked number: D = 1, x = mu, var = 0.3: -0.5 log(0.6 pi)
    ll, _ = FixedVarGaussian(var=0.3).loglik(np.zeros((1, 1)), np.zeros((1, 1)))
    assert math.isclose(float(ll[0]), -0.5 * math.log(0.6 * math.pi), rel_tol=1e-14)


REPARAM_FORWARDS = [reparam_forward, reparam_forward_ref]


@pytest.mark.parametrize("forward", REPARAM_FORWARDS, ids=["dispatch", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reparameterisation_is_mu_plus_standard_deviation_times_eps(forward, dtype):
    """z = mu + sqrt(var) eps, by hand: var = 4, 0.25, 9, 1 have standard deviations 2, 0.5, 3, 1."""
    mu = np.array([[1.0, -2.0], [0.5, 3.0]], dtype)
    var = np.array([[4.0, 0.25], [9.0, 1.0]], dtype)
    eps = np.array([[0.5, -2.0], [-1.0, 0.75]], dtype)
    want = np.array([[1.0 + 2.0 * 0.5, -2.0 + 0.5 * -2.0], [0.5 + 3.0 * -1.0, 3.0 + 1.0 * 0.75]])
    z = forward(mu, var, eps)
    assert z.dtype == dtype
    np.testing.assert_array_equal(z, want.astype(dtype))
    # and on random values: the sample has standard deviation sqrt(var) around mu
    r = np.random.default_rng(5)
    mu, var, eps = r.standard_normal((6, 7)), r.uniform(0.05, 5.0, (6, 7)), r.standard_normal((6, 7))
    z = forward(mu.astype(dtype), var.astype(dtype), eps.astype(dtype))
    np.testing.assert_allclose(z, mu + np.sqrt(var) * eps, rtol=1e-5 if dtype == np.float32 else 1e-14,
                               atol=1e-5 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("backward", [reparam_backward, reparam_backward_ref], ids=["dispatch", "reference"])
def test_reparameterisation_backward_by_hand(backward):
    """dz/dmu = 1, dz/dvar = eps / (2 sqrt(var)): var = 4, eps = 0.5, dz = 3 -> dvar = 3 * 0.5 / 4."""
    dz = np.array([[3.0, -1.0]])
    var = np.array([[4.0, 0.25]])
    eps = np.array([[0.5, -2.0]])
    dmu, dvar = backward(dz, var, eps)
    np.testing.assert_array_equal(dmu, dz)
    np.testing.assert_allclose(dvar, [[3.0 * 0.5 / 4.0, -1.0 * -2.0 / 1.0]], rtol=1e-15)
