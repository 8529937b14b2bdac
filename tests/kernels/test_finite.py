"""all_finite (kernels/finite.py), the training loop's non-finite gradient guard: the Numba CPU
kernel against the plain-xp oracle, every kind of non-finite value at every position, finite
values whose sum overflows, layouts, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels.finite import all_finite, all_finite_ref
from jmvae_cupy.selftest.bounds import DTYPES

SHAPES = [(), (0,), (1,), (7, 37), (3, 4, 5), (513,)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_scalars_and_python_floats_count_as_arrays(rng, dtype):
    """A host loss (a NumPy scalar, as a batch mean or StepMean's float64 is, or a Python float) in
    the same call as arrays, as the trainer's guard passes it."""
    t = np.dtype(dtype).type
    arrays = [np.asarray(rng.standard_normal((3, 4)), dtype)]
    assert all_finite([t(1.5), *arrays]) and all_finite([np.float64(-2.0), *arrays])
    for bad in (np.nan, np.inf, -np.inf):
        assert not all_finite([t(bad), *arrays]) and not all_finite([*arrays, np.float64(bad)])
        assert not all_finite([*arrays, float(bad)])  # a Python float too
    assert all_finite([1.5, *arrays])


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_arrays_pass(rng, dtype):
    arrays = [np.asarray(rng.standard_normal(s) * 1e3, dtype) for s in SHAPES]
    assert all_finite(arrays) and all_finite_ref(arrays)
    assert all_finite([]) and all_finite(iter(arrays))  # any iterable, an empty one included


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_non_finite_element_anywhere_fails(rng, dtype, bad):
    arrays = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    for k, a in enumerate(arrays):
        for pos in sorted({0, a.size // 2, a.size - 1}) if a.size else ():
            broken = [b.copy() for b in arrays]
            broken[k].reshape(-1)[pos] = bad
            assert not all_finite(broken), (k, pos)
            assert not all_finite_ref(broken), (k, pos)


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_values_whose_sum_overflows_pass(dtype):
    """The guard this replaced summed the gradients: these would have stopped a run."""
    big = np.full(1000, np.finfo(dtype).max / 2, dtype)
    with np.errstate(over="ignore"):
        assert not np.isfinite(big.sum())
    assert all_finite([big, -big])


def test_strided_views_are_read_as_they_are(rng):
    a = rng.standard_normal((40, 30)).astype(np.float32)
    a[3, 7] = np.nan
    assert not all_finite([a.T]) and not all_finite([a[1::2, 1::3]])  # (3, 7) is in both views
    assert all_finite([a[::2, :]])  # row 3 is not


@pytest.mark.parametrize("arrays, message", [
    ([np.zeros(3, np.int64)], "int64"),
    ([[0.0, 1.0]], "list"),
])
def test_bad_arguments_raise(arrays, message):
    with pytest.raises(KernelArgumentError, match=message):
        all_finite(arrays)
