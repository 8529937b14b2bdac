"""Bernoulli log-likelihood kernel (kernels/bernoulli.py): the Numba CPU twin against the plain-xp
reference evaluated in float64, extreme logits, argument checks, and the residual as the gradient
(central differences).  The CUDA kernel runs against the same reference under the simulator, in a
subprocess (test_cuda_kernels.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.gradcheck import check_gradients, dot
from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels.bernoulli import bernoulli_loglik_forward, bernoulli_loglik_forward_ref
from jmvae_cupy.selftest.bounds import DTYPES, bernoulli_inputs, check_bernoulli

SHAPES = [(1, 1), (7, 37), (100, 784), (3, 300)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_twin_matches_reference(rng, dtype, shape):
    x, logits = bernoulli_inputs(rng, *shape, dtype)
    ll, r = bernoulli_loglik_forward(x, logits)
    assert ll.dtype == r.dtype == dtype and ll.shape == shape[:1] and r.shape == shape
    check_bernoulli(ll, r, x, logits)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits_are_finite(dtype):
    logits = np.array([[100.0, -100.0, 100.0, -100.0, 0.0]], dtype=dtype)
    x = np.array([[1.0, 0.0, 0.0, 1.0, 0.5]], dtype=dtype)
    ll, r = bernoulli_loglik_forward(x, logits)
    np.testing.assert_allclose(ll, [-200.0 - np.log(2.0)], rtol=1e-6)  # two confident mistakes: 100 nats each
    np.testing.assert_allclose(r, [[0.0, 0.0, -1.0, 1.0, 0.0]], atol=1e-6)


def test_residual_is_the_gradient(rng):
    """d/dl <ll, dll> = dll[:, None] * r, by central differences in float64 (tolerance 1e-8)."""
    x, logits = bernoulli_inputs(rng, 5, 9, np.float64)
    dll = rng.standard_normal(5)
    _, r = bernoulli_loglik_forward(x, logits)
    errors = check_gradients(lambda: dot(bernoulli_loglik_forward(x, logits)[0], dll), {"l": logits},
                             {"l": dll[:, None] * r})
    assert errors["l"] < 1e-8, errors


def test_reference_agrees_with_the_kernel_on_soft_targets(rng):
    x = rng.random((4, 11))  # x in [0, 1], not only {0, 1}
    logits = rng.standard_normal((4, 11)) * 3
    ll, r = bernoulli_loglik_forward(x, logits)
    ll_ref, r_ref = bernoulli_loglik_forward_ref(x, logits)
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-13)
    np.testing.assert_allclose(r, r_ref, rtol=1e-13, atol=1e-15)


def test_bad_arguments():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(KernelArgumentError, match="dtype"):
        bernoulli_loglik_forward(a, a.astype(np.float64))
    with pytest.raises(KernelArgumentError, match="shape"):
        bernoulli_loglik_forward(a, np.zeros((2, 4), np.float32))
    with pytest.raises(KernelArgumentError, match="2-D"):
        bernoulli_loglik_forward(a[0], a[0])
