"""Mini-batch index arrays for an epoch."""

from __future__ import annotations

import numpy as np

from .errors import DataError


def iterate_batches(n: int, batch_size: int, rng=None, shuffle: bool = True, drop_last: bool = True):
    """The row indices of one epoch's mini-batches.

    With ``shuffle`` the order is ``rng.permutation(n)``, drawn once, when this function is
    called (so the ``Rng`` state after the call does not depend on how many batches are used);
    without it the rows come in order 0..n-1 and ``rng`` may be None.

    The last partial batch (``n % batch_size`` rows) is dropped by default: every training step
    then sees exactly ``batch_size`` rows, which keeps batch-norm statistics and the gradient
    scale stable, and with a fresh permutation each epoch every row is still used equally often
    in expectation.  For evaluation pass ``drop_last=False`` (and usually ``shuffle=False``) to
    visit every row exactly once.

    Args:
        n: number of rows.
        batch_size: rows per batch, >= 1.
        rng: a :class:`jmvae_cupy.rng.Rng` (required when ``shuffle``).
        shuffle: permute the rows.
        drop_last: drop the final batch when it has fewer than ``batch_size`` rows.

    Returns:
        a list of int64 arrays, each (batch_size,) (the last one shorter when ``drop_last`` is
        False); ``len()`` is the number of steps in the epoch.

    Raises:
        DataError: ``batch_size < 1``, ``n < 0``, ``shuffle`` without ``rng``, or
            ``drop_last`` with ``0 < n < batch_size`` (the epoch would silently have no step).
    """
    n = int(n)
    batch_size = int(batch_size)
    if batch_size < 1 or n < 0:
        raise DataError(f"iterate_batches: need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if drop_last and 0 < n < batch_size:
        raise DataError(
            f"iterate_batches: batch_size {batch_size} exceeds the {n} rows and drop_last=True: no batch"
        )
    if shuffle:
        if rng is None:
            raise DataError("iterate_batches: shuffle=True needs an rng")
        order = np.asarray(rng.permutation(n), dtype=np.int64)
    else:
        order = np.arange(n, dtype=np.int64)
    stop = n - n % batch_size if drop_last else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]
