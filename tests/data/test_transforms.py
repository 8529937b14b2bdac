"""binarize and one_hot."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.data import DataError, binarize, one_hot
from jmvae_cupy.rng import Rng


def test_binarize_is_deterministic_given_the_seed():
    grey = np.random.default_rng(0).integers(0, 256, (16, 784), dtype=np.uint8)
    a = binarize(grey, Rng(7))
    np.testing.assert_array_equal(a, binarize(grey, Rng(7)))
    assert not np.array_equal(a, binarize(grey, Rng(8)))
    r = Rng(7)  # a stream moves on: consecutive epochs get fresh samples
    assert not np.array_equal(binarize(grey, r), binarize(grey, r))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binarize_values_shape_dtype(dtype):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = binarize(grey, Rng(0), dtype=dtype)
    assert x.shape == (16, 16) and x.dtype == dtype
    assert set(np.unique(x).tolist()) <= {0.0, 1.0}


def test_binarize_probability_is_grey_over_255():
    # grey 0 never fires, 255 always; in between the frequency is grey / 255 (binomial
    # standard error at most 0.5 / sqrt(20000) = 0.0035; tolerance 0.015 is > 4 sigma).
    levels = np.array([0, 1, 64, 128, 200, 254, 255], dtype=np.uint8)
    grey = np.repeat(levels[None, :], 20000, axis=0)
    freq = binarize(grey, Rng(3), dtype=np.float64).mean(axis=0)
    assert freq[0] == 0.0 and freq[-1] == 1.0
    np.testing.assert_allclose(freq, levels / 255.0, atol=0.015)


def test_binarize_draws_in_c_order_independently_of_chunking(monkeypatch):
    from jmvae_cupy.data import transforms

    grey = np.random.default_rng(0).integers(0, 256, (40, 784), dtype=np.uint8)
    whole = binarize(grey, Rng(5))
    monkeypatch.setattr(transforms, "_CHUNK", 1000)  # 1000 does not divide 784 * 40
    np.testing.assert_array_equal(binarize(grey, Rng(5)), whole)
    r = Rng(5)
    blocks = np.concatenate([binarize(grey[:13], r), binarize(grey[13:], r)])
    np.testing.assert_array_equal(blocks, whole)


def test_binarize_rejects_non_uint8():
    with pytest.raises(DataError, match="uint8"):
        binarize(np.zeros((2, 3), np.float32), Rng(0))


def test_one_hot():
    w = one_hot(np.array([3, 0, 9]), 10)
    assert w.shape == (3, 10) and w.dtype == np.float32
    np.testing.assert_array_equal(w.argmax(1), [3, 0, 9])
    np.testing.assert_array_equal(w.sum(1), [1, 1, 1])
    assert one_hot(np.array([1], np.uint8), 4, dtype=np.float64).tolist() == [[0, 1, 0, 0]]
    assert one_hot(np.zeros(0, np.int64)).shape == (0, 10)


def test_one_hot_rejects_bad_labels():
    with pytest.raises(DataError, match="outside 0..9"):
        one_hot(np.array([0, 10]))
    with pytest.raises(DataError, match="outside 0..9"):
        one_hot(np.array([-1]))
    with pytest.raises(DataError, match="integer"):
        one_hot(np.array([0.0, 1.0]))
