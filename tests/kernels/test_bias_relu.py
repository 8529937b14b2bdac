"""Bias + ReLU epilogue kernels (kernels/bias_relu.py): the Numba CPU twins against the plain-xp
references, argument checks.  Central differences: the ``dense_relu`` gradcheck entry.  The CUDA
kernels run against the same references under the simulator (test_cuda_kernels.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels.bias_relu import (
    bias_relu_backward,
    bias_relu_backward_ref,
    bias_relu_forward,
    bias_relu_forward_ref,
)
from jmvae_cupy.selftest.bounds import DTYPES, bias_relu_inputs, check_bias_relu

SHAPES = [(1, 1), (7, 37), (100, 512), (3, 300)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_twins_match_reference(rng, dtype, shape):
    u, b, dy = bias_relu_inputs(rng, *shape, dtype)
    y = bias_relu_forward(u.copy(), b)
    du, db = bias_relu_backward(dy, y)
    assert y.dtype == du.dtype == db.dtype == dtype and db.shape == shape[1:]
    check_bias_relu(y, du, db, u, b, dy)


def test_forward_is_in_place_and_backward_allocates(rng):
    u, b, dy = bias_relu_inputs(rng, 4, 6, np.float32)
    y = bias_relu_forward(u, b)
    assert y is u
    du, _ = bias_relu_backward(dy, y)
    assert du is not dy and not np.shares_memory(du, dy)


def test_references_are_the_composition(rng):
    u, b, dy = bias_relu_inputs(rng, 5, 8, np.float64)
    y = bias_relu_forward_ref(u, b)
    np.testing.assert_array_equal(y, np.maximum(u + b, 0))
    du, db = bias_relu_backward_ref(dy, y)
    np.testing.assert_array_equal(du, dy * (u + b > 0))
    np.testing.assert_allclose(db, du.sum(0))


def test_bad_arguments():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(KernelArgumentError, match="shapes"):
        bias_relu_forward(a, np.zeros(4, np.float32))
    with pytest.raises(KernelArgumentError, match="dtypes"):
        bias_relu_forward(a, np.zeros(3, np.float64))
    with pytest.raises(KernelArgumentError, match="C-contiguous"):
        bias_relu_forward(np.zeros((3, 2), np.float32).T, np.zeros(3, np.float32))
    with pytest.raises(KernelArgumentError, match="shape"):
        bias_relu_backward(a, np.zeros((2, 4), np.float32))
    with pytest.raises(KernelArgumentError, match="dtypes"):
        bias_relu_backward(a, a.astype(np.float64))


def test_backward_asks_launch_for_the_cuda_partial_sums(monkeypatch):
    """On CuPy the backward needs a (P, D) buffer of per-block partial sums, P = ceil(M / 128):
    the public function asks launch() for it (allocated on the CUDA path only), none for P = 1."""
    from jmvae_cupy.kernels import bias_relu

    asked = []
    monkeypatch.setattr(bias_relu, "launch", lambda *args, cuda_scratch=(), **kw: asked.append(cuda_scratch))
    for m in (64, 1000):
        a = np.zeros((m, 3), np.float32)
        bias_relu_backward(a, a)
    assert asked == [[], [((8, 3), np.float32)]]
