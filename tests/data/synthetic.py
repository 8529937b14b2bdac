"""Small synthetic data written in the real on-disk formats (the full MNIST is never fetched)."""

from __future__ import annotations

import numpy as np

from jmvae_cupy.data import write_idx

#: The four standard full-MNIST file names, without ".gz": train images/labels, test images/labels.
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def synthetic_mnist(n_train: int = 60, n_test: int = 10, seed: int = 0):
    """Random grey images (N, 28, 28) uint8 and labels (N,) uint8 for a train and a test set."""
    g = np.random.default_rng(seed)
    return (
        g.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        g.integers(0, 10, n_train, dtype=np.uint8),
        g.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        g.integers(0, 10, n_test, dtype=np.uint8),
    )


def write_mnist_dir(directory, arrays, gzip: bool = True):
    """Write the four standard files (``.gz`` names when ``gzip``) into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, a in zip(MNIST_NAMES, arrays):
        write_idx(directory / (name + (".gz" if gzip else "")), a, gzip=gzip)
    return directory
