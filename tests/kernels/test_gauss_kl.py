"""Gaussian KL kernels (kernels/gauss_kl.py): the Numba CPU twin against the plain-xp reference,
the backward pass against central differences, and the numerical care of the forward.  The CUDA
kernels run against the same reference under the simulator, in a subprocess
(test_cuda_kernels.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.gradcheck import check_gradients, dot, random_like
from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels.gauss_kl import (
    gauss_kl_backward,
    gauss_kl_backward_ref,
    gauss_kl_forward,
    gauss_kl_forward_ref,
)
from jmvae_cupy.selftest.bounds import DTYPES, check_kl_backward, check_kl_forward, f64, gaussians, kl_args

SHAPES = [(1, 1), (7, 37), (128, 64), (100, 128), (3, 300)]


@pytest.mark.parametrize("prior", [False, True], ids=["general", "prior"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_cpu_twin_matches_reference(rng, shape, dtype, prior):
    args = kl_args(gaussians(rng, *shape, dtype), prior)
    kl = gauss_kl_forward(*args)
    assert kl.shape == shape[:1]
    check_kl_forward(kl, args)


@pytest.mark.parametrize("prior", [False, True], ids=["general", "prior"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_cpu_twin_matches_reference(rng, shape, dtype, prior):
    args = kl_args(gaussians(rng, *shape, dtype), prior)
    dkl = rng.standard_normal(shape[0]).astype(dtype)
    check_kl_backward(gauss_kl_backward(dkl, *args), dkl, args)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_forward_float32_is_accurate_when_q_is_close_to_p(rng, scale):
    """var1 = var2 (1 + 1e-3 z) around 1e-6, 1 or 1e4: the KL is ~1e-4 per sample, the
    difference of two small numbers.  The kernel's form (r - 1 - log r) + u^2/var2 with
    r = var1/var2 keeps a relative error ~1e-5 in float32; the textbook order
    log var2 - log var1 + (var1 + u^2)/var2 - 1 (the reference, run in float32) loses it."""
    n, d = 50, 128
    var2 = (scale * np.exp(rng.uniform(-0.1, 0.1, (n, d)))).astype(np.float32)
    var1 = (var2 * (1 + 1e-3 * rng.standard_normal((n, d)))).astype(np.float32)
    mu2 = rng.standard_normal((n, d)).astype(np.float32)
    mu1 = (mu2 + 1e-3 * np.sqrt(var2) * rng.standard_normal((n, d))).astype(np.float32)
    args = (mu1, var1, mu2, var2)
    expected = gauss_kl_forward_ref(*f64(*args))
    kernel_error = np.max(np.abs(gauss_kl_forward(*args) - expected) / expected)
    assert kernel_error < 1e-4
    if scale != 1.0:  # far from 1 the logs of the variances carry errors ~ eps |log var|
        textbook_error = np.max(np.abs(gauss_kl_forward_ref(*args) - expected) / expected)
        assert textbook_error > 100 * kernel_error


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("prior", [False, True], ids=["general", "prior"])
def test_backward_matches_central_differences(rng, impl, prior):
    """L = <kl, dkl> with a random dkl; analytic gradients vs central differences, float64.

    Variances in [0.1, 10] keep var +- h positive; the tolerance 1e-7 is far above the
    O(h^2) + O(eps/h) error of the differences (~1e-9 at the smallest variances) and far
    below any real mistake."""
    forward, backward = {
        "kernel": (gauss_kl_forward, gauss_kl_backward),
        "reference": (gauss_kl_forward_ref, gauss_kl_backward_ref),
    }[impl]
    g = gaussians(rng, 4, 6, np.float64, lo=0.1, hi=10.0)
    args = kl_args(g, prior)
    dkl = random_like(rng, args[0][:, 0])
    grads = backward(dkl, *args)
    names = ["mu1", "var1", "mu2", "var2"][: len(args)]
    errors = check_gradients(lambda: dot(forward(*args), dkl), dict(zip(names, args)), dict(zip(names, grads)))
    assert max(errors.values()) < 1e-7, errors


def test_prior_is_the_general_kl_against_zero_mean_unit_variance(rng):
    g = gaussians(rng, 5, 9, np.float64)
    zeros, ones = np.zeros_like(g["mu1"]), np.ones_like(g["var1"])
    dkl = rng.standard_normal(5)
    np.testing.assert_allclose(
        gauss_kl_forward(g["mu1"], g["var1"]), gauss_kl_forward(g["mu1"], g["var1"], zeros, ones), rtol=1e-14
    )
    prior = gauss_kl_backward(dkl, g["mu1"], g["var1"])
    general = gauss_kl_backward(dkl, g["mu1"], g["var1"], zeros, ones)
    for got, want in zip(prior[:2], general[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-14)


def test_kl_of_a_distribution_with_itself_is_zero(rng):
    g = gaussians(rng, 6, 33, np.float32)
    np.testing.assert_array_equal(gauss_kl_forward(g["mu1"], g["var1"], g["mu1"], g["var1"]), 0)


def test_empty_batch_and_zero_features():
    empty = np.zeros((0, 4), np.float32)
    assert gauss_kl_forward(empty, empty + 1).shape == (0,)
    assert gauss_kl_backward(np.zeros(0, np.float32), empty, empty + 1)[0].shape == (0, 4)
    no_features = np.zeros((3, 0))
    np.testing.assert_array_equal(gauss_kl_forward(no_features, no_features, no_features, no_features), 0)


def test_bad_arguments_raise():
    a = np.ones((2, 3))
    with pytest.raises(KernelArgumentError, match="both mu2 and var2"):
        gauss_kl_forward(a, a, a)
    with pytest.raises(KernelArgumentError, match="both mu2 and var2"):
        gauss_kl_backward(np.ones(2), a, a, None, a)
    with pytest.raises(KernelArgumentError, match="shape"):
        gauss_kl_forward(a, a, a, np.ones((3, 3)))
    with pytest.raises(KernelArgumentError, match="dkl has shape"):
        gauss_kl_backward(np.ones(3), a, a)
    with pytest.raises(KernelArgumentError, match="dtype"):
        gauss_kl_backward(np.ones(2, np.float32), a, a)
