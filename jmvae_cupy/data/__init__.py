"""Data for jmvae_cupy: MNIST (embedded subset or full IDX files), IDX reading/writing, batching.

Public API::

    load_mnist(data_dir=None) -> MnistData        # embedded 8000/2000, or full 50000/10000/10000
    binarize(grey_uint8, rng, dtype)              # x ~ Bernoulli(grey / 255), every epoch
    binarized_test_set(data, seed=TEST_BINARIZE_SEED, dtype)   # once, fixed seed, cached
    one_hot(labels, num_classes=10, dtype)
    iterate_batches(n, batch_size, rng, shuffle=True, drop_last=True) -> list of index arrays
    read_idx / read_idx_images / read_idx_labels / write_idx
    download_mnist(out_dir, ...)                  # also: python -m jmvae_cupy.data download mnist --out DIR
    DataError                                     # every data problem, one-line message

See docs/data.md.
"""

from .batches import iterate_batches
from .download import MNIST_MIRRORS, download_mnist, verify_file
from .errors import DataError
from .idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_idx_images, read_idx_labels, write_idx
from .mnist import (
    MNIST_FILES,
    NUM_CLASSES,
    TEST_BINARIZE_SEED,
    FileSpec,
    MnistData,
    binarized_test_set,
    load_mnist,
)
from .transforms import binarize, one_hot

__all__ = [
    "DataError",
    "FileSpec",
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MnistData",
    "NUM_CLASSES",
    "TEST_BINARIZE_SEED",
    "binarize",
    "binarized_test_set",
    "download_mnist",
    "iterate_batches",
    "load_mnist",
    "one_hot",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "verify_file",
    "write_idx",
]
