"""Reparameterisation kernels (kernels/reparam.py): the Numba CPU twin against the plain-xp
reference, and the backward pass against central differences.  The CUDA kernels run against the
same reference under the simulator, in a subprocess (test_cuda_kernels.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.gradcheck import check_gradients, dot, random_like
from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels.reparam import (
    reparam_backward,
    reparam_backward_ref,
    reparam_forward,
    reparam_forward_ref,
)
from jmvae_cupy.selftest.bounds import DTYPES, check_reparam_backward, check_reparam_forward, reparam_inputs

SHAPES = [(1, 1), (7, 37), (128, 64), (100, 128)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_cpu_twin_matches_reference(rng, dtype, shape):
    mu, var, noise, _ = reparam_inputs(rng, *shape, dtype)
    z = reparam_forward(mu, var, noise)
    assert z.dtype == dtype and z.shape == shape
    check_reparam_forward(z, mu, var, noise)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_cpu_twin_matches_reference(rng, dtype, shape):
    _, var, noise, dz = reparam_inputs(rng, *shape, dtype)
    dmu, dvar = reparam_backward(dz, var, noise)
    assert dmu.shape == dvar.shape == shape
    assert dmu is not dz  # a new array: adding into it must not change the upstream gradient
    check_reparam_backward(dmu, dvar, dz, var, noise)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_backward_matches_central_differences(rng, impl):
    """L = <z, dz> with a random dz; analytic gradients vs central differences, float64.

    Variances in [0.05, 5] keep var +- h positive; the tolerance 1e-7 is far above the
    O(h^2) + O(eps/h) error of the differences (~1e-9 at the smallest variances) and far
    below any real mistake."""
    forward, backward = {
        "kernel": (reparam_forward, reparam_backward),
        "reference": (reparam_forward_ref, reparam_backward_ref),
    }[impl]
    mu, var, noise, _ = reparam_inputs(rng, 5, 7, np.float64, lo=0.05, hi=5.0)
    dz = random_like(rng, mu)
    dmu, dvar = backward(dz, var, noise)
    errors = check_gradients(lambda: dot(forward(mu, var, noise), dz), {"mu": mu, "var": var}, {"mu": dmu, "var": dvar})
    assert max(errors.values()) < 1e-7, errors


def test_non_contiguous_inputs_give_the_same_result(rng):
    mu, var, noise, dz = reparam_inputs(rng, 6, 9, np.float64)
    fortran = [np.asfortranarray(a) for a in (mu, var, noise)]
    np.testing.assert_array_equal(reparam_forward(*fortran), reparam_forward(mu, var, noise))
    strided = [np.ascontiguousarray(np.repeat(a, 2, axis=1))[:, ::2] for a in (dz, var, noise)]
    for got, want in zip(reparam_backward(*strided), reparam_backward(dz, var, noise)):
        np.testing.assert_array_equal(got, want)


def test_empty_batch(rng):
    mu = np.zeros((0, 4), np.float32)
    assert reparam_forward(mu, mu + 1, mu).shape == (0, 4)
    dmu, dvar = reparam_backward(mu, mu + 1, mu)
    assert dmu.shape == dvar.shape == (0, 4)


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros((2, 3)), np.ones((2, 4)), np.zeros((2, 3))), "shape"),
        ((np.zeros((2, 3)), np.ones((2, 3), np.float32), np.zeros((2, 3))), "dtype"),
        ((np.zeros((2, 3), int), np.ones((2, 3), int), np.zeros((2, 3), int)), "float32 or float64"),
        ((np.zeros(3), np.ones(3), np.zeros(3)), "2-D"),
        (([[0.0]], np.ones((1, 1)), np.zeros((1, 1))), "must be a NumPy or CuPy array"),
    ],
)
def test_bad_arguments_raise(args, message):
    with pytest.raises(KernelArgumentError, match=message):
        reparam_forward(*args)
    with pytest.raises(KernelArgumentError, match=message):
        reparam_backward(*args)
