"""The data sources of the Trainer: MNIST (the embedded subset or the full files), CelebA (the
prepared HDF5 file, streamed) and pairs of your own (data/paired.py); each gives ``arch``, ``name``,
``epoch(rng, batch_size)``, ``test_batches()`` and ``write_samples``."""

from __future__ import annotations

import os

import numpy as np

from ..backend import to_device
from ..data import binarize, binarized_test_set, iterate_batches, load_mnist, one_hot
from ..data.celeba import open_celeba
from ..data.paired import image_view, open_paired
from ..inference import x_from_w
from ..models.config import builtin_base, infer_config, model_record
from ..viz import save_grid
from .errors import TrainError


def training_rows(n: int, config: dict, noun: str) -> int:
    """How many of the ``n`` training rows a run uses (``--train-subset``, 0: all), or a one-line
    error when they make less than one batch (``noun``: digits, images)."""
    batch, subset = config["batch_size"], config["train_subset"]
    if subset and subset < batch:
        raise TrainError(f"--train-subset {subset} is smaller than one batch")
    kept = min(n, subset) if subset else n
    if kept < batch:
        raise TrainError(f"--batch-size {batch} is larger than the {kept} training {noun}")
    return kept


def subset_note(kept: int, n: int, noun: str) -> str:
    """What the log adds to a data source's name when --train-subset keeps ``kept`` of ``n`` rows."""
    return f"; training on the first {kept} {noun}" if kept < n else ""


class MnistSource:
    """MNIST for the Trainer: the training set re-binarised every epoch, the test set binarised once."""

    x_shape, w_dim = (784,), 10
    x_stats = {"min": 0.0, "max": 1.0, "binary": True, "one_hot": False}  # binarised digits
    w_stats = {"min": 0.0, "max": 1.0, "binary": True, "one_hot": True}   # one-hot labels

    def __init__(self, config: dict, dtype):
        self.dtype = dtype
        self.base = builtin_base("mnist", self.x_shape)
        self.data = load_mnist(config["data_dir"])
        n = training_rows(len(self.data.train_x), config, "digits")
        self.name = self.data.source + subset_note(n, len(self.data.train_x), "digits")
        self.data.train_x, self.data.train_y = self.data.train_x[:n], self.data.train_y[:n]
        self.test_x = binarized_test_set(self.data, dtype=self.dtype)
        self.test_w = one_hot(self.data.test_y, 10, self.dtype)

    def epoch(self, rng, batch_size):
        """(steps, batch(i) -> (x, w) host arrays), everything drawn from ``rng`` now."""
        x = binarize(self.data.train_x, rng, self.dtype)
        w = one_hot(self.data.train_y, 10, self.dtype)
        batches = iterate_batches(len(x), batch_size, rng)
        return len(batches), lambda i: (x[batches[i]], w[batches[i]])

    def test_batches(self, batch_size=500):
        for i in range(0, len(self.test_x), batch_size):
            yield self.test_x[i:i + batch_size], self.test_w[i:i + batch_size]

    def write_samples(self, model, path, rng):
        """A grid of images generated from the labels: column = label 0..9; row 0 uses the mean of
        q(z|w) (JMVAE-kl; for JMVAE / JMVAE-h the mean of q(z|x^,w) along the iterative sampling
        from zeros, K = 10), rows 1.. sample z."""
        rows = 8
        w = to_device(one_hot(np.tile(np.arange(10), rows), 10, self.dtype), model.xp)
        if hasattr(model, "generate"):  # cvae / cmma: z from the prior p(z) or p(z|w)
            imgs = model.generate(w, rng)
        else:
            mean_row = x_from_w(model, w[:10], rng, iterations=10, sample_z=False)
            imgs = model.xp.concatenate([mean_row, x_from_w(model, w[10:], rng, iterations=10, sample_z=True)])
        imgs = np.asarray(to_device(imgs, np)).reshape(rows, 10, 28, 28)
        save_grid(imgs, path, col_labels=[str(d) for d in range(10)])


class CelebASource:
    """CelebA for the Trainer, streamed from the prepared HDF5 file (images in [0, 1], attributes -1 / 1)."""

    x_stats = {"min": 0.0, "max": 1.0, "binary": False, "one_hot": False}  # images in [0, 1]
    w_stats = {"min": -1.0, "max": 1.0, "binary": False, "one_hot": False}  # attributes -1 / 1

    def __init__(self, config: dict, dtype):
        self.dtype = dtype
        self.data = open_celeba(config["data"])
        n = training_rows(len(self.data.train_idx), config, "images")
        self.name = (f"CelebA {self.data.path.name} ({len(self.data.train_idx)} train / {len(self.data.test_idx)} "
                     f"test){subset_note(n, len(self.data.train_idx), 'images')}")
        self.train_rows = self.data.train_idx[:n]
        s = self.data.image_size
        self.x_shape, self.w_dim = (3, s, s), len(self.data.attr_names)
        self.base = builtin_base("celeba", self.x_shape)

    def _xw(self, rows):
        return self.data.images(rows, self.dtype), self.data.attributes(rows, self.dtype)

    def epoch(self, rng, batch_size):
        batches = self.data.epoch_order(rng, batch_size, self.train_rows)
        return len(batches), lambda i: self._xw(batches[i])

    def test_batches(self, batch_size=100):
        t = self.data.test_idx
        for i in range(0, len(t), batch_size):
            yield self._xw(t[i:i + batch_size])

    def write_samples(self, model, path, rng, cols=8, rows=4):
        """Row 0: the first ``cols`` test faces; rows 1..: faces generated from their attributes
        (JMVAE-kl: z ~ q(z|w); JMVAE / JMVAE-h: iterative sampling from zeros, K = 10)."""
        t = self.data.test_idx[:cols] if len(self.data.test_idx) else self.data.train_idx[:cols]
        real, w = self._xw(t)
        w = to_device(np.tile(w, (rows, 1)), model.xp)
        if hasattr(model, "generate"):
            imgs = model.generate(w, rng)
        else:
            imgs = x_from_w(model, w, rng, iterations=10, sample_z=True)
        s = self.data.image_size
        imgs = np.concatenate([real[None], np.asarray(to_device(imgs, np)).reshape(rows, len(t), 3, s, s)])
        save_grid(imgs, path)


class PairedSource:
    """A paired file of your own (data/paired.py) for the Trainer, read into memory: its train rows in a
    fresh order every epoch, its test rows for the test terms and the sample PNG."""

    def __init__(self, config: dict, dtype):
        self.dtype = dtype
        self.data = d = open_paired(config["data"])
        n = training_rows(len(d.train_idx), config, "pairs")
        self.name = (f"{os.path.basename(d.path)} ({len(d.train_idx)} train / {len(d.test_idx)} test pairs)"
                     f"{subset_note(n, len(d.train_idx), 'pairs')}")
        self.train_rows = d.train_idx[:n]
        self.x_shape, self.w_dim, self.x_stats, self.w_stats = d.x_shape, d.w_dim, d.x_stats, d.w_stats
        self.base = infer_config(d.x_shape, d.w_dim, d.x_stats, d.w_stats)

    def epoch(self, rng, batch_size):
        batches = [self.train_rows[b] for b in iterate_batches(len(self.train_rows), batch_size, rng)]
        return len(batches), lambda i: self.data.rows(batches[i], self.dtype)

    def test_batches(self, batch_size=500):
        t = self.data.test_idx
        for i in range(0, len(t), batch_size):
            yield self.data.rows(t[i:i + batch_size], self.dtype)

    def write_samples(self, model, path, rng, cols=8, rows=3):
        """Images only (x of shape (C, H, W) with C = 1 or 3, or (H, W)): row 0 the first ``cols`` test
        x, rows 1..: x generated from their w, scaled like the data to [0, 1] (inference.x_from_w)."""

        view = image_view(self.x_shape)
        if view is None:
            return
        t = self.data.test_idx[:cols]
        real, w = self.data.rows(t, self.dtype)
        w = to_device(np.tile(w, (rows, 1)), model.xp)
        gen = model.generate(w, rng) if hasattr(model, "generate") else x_from_w(model, w, rng, iterations=10)
        lo, hi = self.x_stats["min"], self.x_stats["max"]
        imgs = np.concatenate([real[None], np.asarray(to_device(gen, np)).reshape((rows, len(t)) + self.x_shape)])
        save_grid(((imgs - lo) / ((hi - lo) or 1.0)).reshape(imgs.shape[:2] + view), path)


SOURCES = {"mnist": MnistSource, "celeba": CelebASource, "data": PairedSource}


def make_source(config: dict, dtype):
    """The Trainer's data: ``x_shape``, ``w_dim``, ``x_stats``, ``w_stats`` and ``base`` (the model config
    that fills what the run's leaves out), ``name``, ``epoch(rng, batch_size)``, ``test_batches()``,
    ``write_samples``."""
    return SOURCES[config["dataset"]](config, dtype)


def run_model_record(config: dict, source, user=None) -> dict:
    """The resolved model config of a run (models/config.py model_record): ``user`` (a checked --config, or
    None) over the data source's base, at the run's latent size and width scale."""
    return model_record(user, source.x_shape, source.w_dim, source.base, source.x_stats, source.w_stats,
                        latent=config["latent"], width=config.get("width_scale", 1.0))
