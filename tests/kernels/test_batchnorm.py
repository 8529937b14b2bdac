"""Fused batch-norm kernels (kernels/batchnorm.py): the multi-threaded Numba passes against the
layer's plain-xp passes (layers/batchnorm.py: the oracle, and the CuPy path), determinism across thread counts, edge
cases, argument checks.  Central differences through the layer: tests/layers/test_batchnorm.py
and the ``batchnorm`` gradcheck entries, which now run these kernels."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels.batchnorm import ROW_BLOCK, bn_train_backward, bn_train_forward
from jmvae_cupy.layers.batchnorm import bn_train_backward_xp as bn_train_backward_ref
from jmvae_cupy.layers.batchnorm import bn_train_forward_xp as bn_train_forward_ref

# rows: one partial block, exactly one block, several blocks with a ragged end
SHAPES = [(1, 3), (7, 37), (ROW_BLOCK, 5), (3 * ROW_BLOCK + 17, 64)]
# float32: the kernels sum in float64, the reference in float32 (pairwise): they agree to its rounding
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def _inputs(rng, M, C, dtype):
    x = (rng.standard_normal((M, C)) * 3.0 + 5.0).astype(dtype)  # |mu| > std: the two-pass case
    gamma = rng.standard_normal(C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal((M, C)).astype(dtype)
    return x, gamma, beta, dy


def _close(a, b, dtype):
    scale = max(float(np.max(np.abs(b))), 1e-30)
    return float(np.max(np.abs(a - b))) <= RTOL[dtype] * scale


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_passes_match_the_reference(rng, shape, dtype, relu):
    x, gamma, beta, dy = _inputs(rng, *shape, dtype)
    fwd = bn_train_forward(x, gamma, beta, 1e-4, relu)
    ref = bn_train_forward_ref(x, gamma, beta, 1e-4, relu)
    for name, a, b in zip(("y", "mu", "var", "inv_std"), fwd, ref):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert _close(a, b, dtype), name
    y = fwd[0] if relu else None
    bwd = bn_train_backward(dy, x, y, fwd[1], fwd[3], gamma, relu)
    bref = bn_train_backward_ref(dy, x, ref[0] if relu else None, ref[1], ref[3], gamma, relu)
    for name, a, b in zip(("dx", "dgamma", "dbeta"), bwd, bref):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert _close(a, b, dtype), name
    if relu:
        assert (fwd[0] >= 0).all()


@pytest.mark.parametrize("float_type", [np.float32, np.float64])
def test_the_comparison_catches_a_kernel_off_by_one_rounding_step(rng, monkeypatch, float_type):
    """The comparison above can fail: with the backward's first pass (sum du, sum du (x - mu)) off
    by a relative 2 RTOL, as a summation bug of that size would be, dgamma no longer matches."""
    from jmvae_cupy.kernels import batchnorm as K

    x, gamma, beta, dy = _inputs(rng, 300, 8, float_type)
    y, mu, var, inv_std = bn_train_forward(x, gamma, beta, 1e-4, True)
    ref = bn_train_backward_ref(dy, x, y, mu, inv_std, gamma, True)
    assert _close(bn_train_backward(dy, x, y, mu, inv_std, gamma, True)[1], ref[1], float_type)
    sums = K._backward_sums
    monkeypatch.setattr(K, "_backward_sums", lambda *a: tuple(s * (1 + 2 * RTOL[float_type]) for s in sums(*a)))
    assert not _close(bn_train_backward(dy, x, y, mu, inv_std, gamma, True)[1], ref[1], float_type)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one Numba thread: nothing to compare")
def test_results_do_not_depend_on_the_number_of_threads(rng):
    x, gamma, beta, dy = _inputs(rng, 5 * ROW_BLOCK + 3, 16, np.float32)
    before = numba.get_num_threads()
    outs = []
    try:
        for n in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(n)
            y, mu, var, inv_std = bn_train_forward(x, gamma, beta, 1e-4, True)
            outs.append((y, mu, var, *bn_train_backward(dy, x, y, mu, inv_std, gamma, True)))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(outs[0], outs[-1]):
        assert np.array_equal(a, b)


def test_batch_statistics_are_those_of_the_batch(rng):
    x, gamma, beta, _ = _inputs(rng, 1000, 6, np.float64)
    y, mu, var, inv_std = bn_train_forward(x, gamma, beta, 1e-4, False)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(var, x.var(axis=0), rtol=1e-12)  # biased
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(x.var(axis=0) + 1e-4), rtol=1e-12)
    np.testing.assert_allclose(y.mean(axis=0), beta, atol=1e-12)


def test_nan_propagates_as_in_the_reference(rng):
    x, gamma, beta, _ = _inputs(rng, 20, 3, np.float32)
    x[4, 1] = np.nan
    for relu in (False, True):
        y = bn_train_forward(x, gamma, beta, 1e-4, relu)[0]
        y_ref = bn_train_forward_ref(x, gamma, beta, 1e-4, relu)[0]
        assert np.array_equal(np.isnan(y), np.isnan(y_ref)) and np.isnan(y[:, 1]).all()


def test_odd_layouts_take_the_plain_xp_path(rng, monkeypatch):
    """The layer chooses: the fused kernels for C-contiguous NumPy rows, else its plain-xp passes
    (which the kernels refuse, one line)."""
    from jmvae_cupy.layers import batchnorm as L

    x, gamma, beta, dy = _inputs(rng, 40, 6, np.float64)
    xt = np.asfortranarray(x)  # not C-contiguous: the plain-xp passes run
    b = L.train_forward(x, gamma, beta, 1e-4, True)
    calls = []
    monkeypatch.setattr(L, "bn_train_forward_xp", lambda *a: calls.append(1) or bn_train_forward_ref(*a))
    a = L.train_forward(xt, gamma, beta, 1e-4, True)
    assert calls == [1]
    for u, v in zip(a, b):
        assert _close(u, v, np.float64)
    L.train_forward(x, gamma, beta, 1e-4, True)
    assert calls == [1]  # C-contiguous: the fused kernels
    with pytest.raises(KernelArgumentError, match="C-contiguous NumPy rows"):
        bn_train_forward(xt, gamma, beta, 1e-4, True)


def test_argument_errors(rng):
    x, gamma, beta, dy = _inputs(rng, 10, 4, np.float32)
    with pytest.raises(KernelArgumentError, match=r"x must be \(M, C\)"):
        bn_train_forward(x[None], gamma, beta, 1e-4, False)
    with pytest.raises(KernelArgumentError, match="gamma has shape"):
        bn_train_forward(x, gamma[:3], beta, 1e-4, False)
    y, mu, var, inv_std = bn_train_forward(x, gamma, beta, 1e-4, True)
    with pytest.raises(KernelArgumentError, match="relu needs the forward's output"):
        bn_train_backward(dy, x, None, mu, inv_std, gamma, True)
    with pytest.raises(KernelArgumentError, match="dy has shape"):
        bn_train_backward(dy[:5], x, y, mu, inv_std, gamma, True)
