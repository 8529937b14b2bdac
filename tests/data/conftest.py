"""Shared fixtures of the data tests: no network, synthetic MNIST-format directories."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from jmvae_cupy.data import write_idx


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a socket fails loudly: the data tests never touch the network."""

    def refuse(*args, **kwargs):
        raise RuntimeError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


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
    """Write the four standard full-MNIST files (``.gz`` names when ``gzip``) into ``directory``."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    directory.mkdir(parents=True, exist_ok=True)
    for name, a in zip(names, arrays):
        write_idx(directory / (name + (".gz" if gzip else "")), a, gzip=gzip)
    return directory
