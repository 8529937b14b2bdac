"""iterate_batches: sizes, coverage, determinism, the dropped last batch."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.data import DataError, iterate_batches
from jmvae_cupy.rng import Rng


def test_drop_last_gives_full_batches_of_distinct_rows():
    batches = iterate_batches(103, 10, Rng(0))
    assert len(batches) == 10 and all(b.shape == (10,) and b.dtype == np.int64 for b in batches)
    rows = np.concatenate(batches)
    assert len(np.unique(rows)) == 100 and rows.min() >= 0 and rows.max() < 103


def test_keep_last_visits_every_row_once():
    batches = iterate_batches(103, 10, Rng(0), drop_last=False)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))


def test_no_shuffle_is_in_order_and_needs_no_rng():
    batches = iterate_batches(7, 3, None, shuffle=False, drop_last=False)
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert iterate_batches(0, 3, None, shuffle=False) == []


def test_shuffle_is_deterministic_and_drawn_at_call_time():
    a = iterate_batches(50, 5, Rng(1))
    b = iterate_batches(50, 5, Rng(1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    r1, r2 = Rng(1), Rng(1)
    iterate_batches(50, 5, r1)[:2]  # using only part of the epoch...
    iterate_batches(50, 5, r2)
    assert r1.get_state() == r2.get_state()  # ...leaves the stream where a full epoch does
    assert not np.array_equal(np.concatenate(iterate_batches(50, 5, r1)), np.arange(50))


def test_errors():
    with pytest.raises(DataError, match="batch_size >= 1"):
        iterate_batches(10, 0, Rng(0))
    with pytest.raises(DataError, match="no batch"):
        iterate_batches(5, 10, Rng(0))
    with pytest.raises(DataError, match="needs an rng"):
        iterate_batches(10, 2, None)
    assert len(iterate_batches(5, 10, Rng(0), drop_last=False)) == 1
