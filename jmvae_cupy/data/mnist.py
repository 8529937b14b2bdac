"""MNIST for JMVAE: the embedded 10,000-digit subset, or the full set from its IDX files.

The two modalities of the paper's MNIST experiment are the image x (784 pixels, binarised, a
Bernoulli likelihood) and the label w (one-hot over 10 classes, a categorical likelihood).
This module loads grey levels and labels; :func:`~jmvae_cupy.data.transforms.binarize` and
:func:`~jmvae_cupy.data.transforms.one_hot` turn them into x and w.

Two sources (``load_mnist``):

* ``data_dir=None``: the embedded subset ``jmvae_cupy/data/mnist10k/`` (the first 10,000 digits
  of the MNIST training set, rows already shuffled so that classes interleave).  Fixed split:
  rows 0..7999 train, rows 8000..9999 test, no validation rows.  Checksums are verified on every
  load (a few milliseconds).
* ``data_dir=DIR``: the four standard files of the full MNIST in ``DIR`` (gzipped or not, as
  ``python -m jmvae_cupy.data download mnist --out DIR`` leaves them).  The paper's split: the
  first 50,000 training digits train, the last 10,000 validation, the 10,000 t10k digits test.
  For a training file of another length N (small synthetic files in tests, a subset) the same
  rule generalises: the last ``N // 6`` rows are validation (60,000 // 6 = 10,000).

Test-set binarisation (:func:`binarized_test_set`) happens once, with the fixed seed
:data:`TEST_BINARIZE_SEED`, so that every model is evaluated on the same binary test images.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..rng import Rng
from .errors import DataError
from .idx import read_idx_images, read_idx_labels
from .transforms import binarize

#: Number of classes of the label modality w.
NUM_CLASSES = 10
#: Image side; an image is flattened to IMAGE_SIZE * IMAGE_SIZE = 784 features.
IMAGE_SIZE = 28
#: Seed of the one binarisation of the test set (the arXiv date of the JMVAE paper, 2016-11-07).
TEST_BINARIZE_SEED = 20161107

#: Where the embedded subset lives, and the sha256 of its files (also in its README).
EMBEDDED_DIR = Path(__file__).resolve().parent / "mnist10k"
EMBEDDED_FILES = {
    "images": ("mnist10k-images-idx3-ubyte.gz", "898c41a45d8f204e06d79c99dfc4673c274db52e8197ecdbc314fe26119998c8"),
    "labels": ("mnist10k-labels-idx1-ubyte.gz", "4de3896cc3fb70bb0ceae6d673a77ddf2477c462b866944d392d0dc211f7cfd3"),
}
#: The embedded subset's fixed split: the first 8,000 rows train, the last 2,000 test.
EMBEDDED_TRAIN = 8000


class FileSpec(NamedTuple):
    """A file with known size and digests (hex strings; None where unknown)."""

    name: str
    size: int | None
    sha256: str | None
    md5: str | None


#: The four files of the full MNIST as distributed by LeCun et al. and its mirrors, with their
#: well-known sizes, sha256 and md5 (the md5 values are torchvision's).  Used to verify downloads
#: and to tell, in ``MnistData.source``, whether a directory holds the official files.
MNIST_FILES = {
    "train_images": FileSpec(
        "train-images-idx3-ubyte.gz", 9912422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    "train_labels": FileSpec(
        "train-labels-idx1-ubyte.gz", 28881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "d53e105ee54ea40749a09fcbcd1e9432",
    ),
    "test_images": FileSpec(
        "t10k-images-idx3-ubyte.gz", 1648877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "9fb629c4189551a2d022fa330f9573f3",
    ),
    "test_labels": FileSpec(
        "t10k-labels-idx1-ubyte.gz", 4542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
}
#: A training file must have at least this many rows (so that validation gets at least one).
MIN_TRAIN_ROWS = 6


@dataclass(eq=False)
class MnistData:
    """MNIST grey levels and labels, split.  Build it with :func:`load_mnist`.

    Attributes:
        train_x: (N_train, 784) uint8 grey levels 0..255, row-major 28x28 images.
        train_y: (N_train,) int64 labels 0..9.
        valid_x: (N_valid, 784) uint8; 0 rows for the embedded subset.
        valid_y: (N_valid,) int64.
        test_x: (N_test, 784) uint8.
        test_y: (N_test,) int64.
        source: one line saying where the data came from and how it was split (for logs and
            result files).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    _binarized_test: dict = field(default_factory=dict, init=False, repr=False)

    def __repr__(self) -> str:
        return (
            f"MnistData(train={len(self.train_y)}, valid={len(self.valid_y)}, "
            f"test={len(self.test_y)}, source={self.source!r})"
        )


def load_mnist(data_dir: str | os.PathLike | None = None) -> MnistData:
    """Load MNIST grey levels and labels, split as the module docstring describes.

    Args:
        data_dir: None for the embedded 10,000-digit subset (8,000 train / 2,000 test), or a
            directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each with or without
            ``.gz`` (the ``.gz`` file wins when both exist).

    Returns:
        :class:`MnistData` with uint8 images of shape (N, 784) and int64 labels of shape (N,).

    Raises:
        DataError: files missing (all missing ones are named), unreadable or invalid, images
            not 28x28, image and label counts that differ, too few training rows.
    """
    if data_dir is None:
        return _load_embedded()
    return _load_directory(Path(data_dir))


def binarized_test_set(data: MnistData, seed: int = TEST_BINARIZE_SEED, dtype=np.float32) -> np.ndarray:
    """The test images binarised once: x ~ Bernoulli(pixel / 255) drawn from ``Rng(seed)``.

    The result is cached on ``data`` and marked read-only, so every call (and every model
    evaluated on this ``data``) sees the very same binary images; a new ``load_mnist`` with the
    same files gives the same values again, because the seed is fixed.

    Returns:
        (N_test, 784) array of ``dtype`` with values in {0, 1}.
    """
    key = (int(seed), np.dtype(dtype).str)
    cached = data._binarized_test.get(key)
    if cached is None:
        cached = binarize(data.test_x, Rng(seed), dtype=dtype)
        cached.flags.writeable = False
        data._binarized_test[key] = cached
    return cached


# ----------------------------------------------------------------------------------------------
# internals


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB pieces (algorithm: "sha256" or "md5")."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _flatten(images: np.ndarray, path: Path) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 784); DataError for another image size."""
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{path}: images are {images.shape[1]}x{images.shape[2]}, MNIST needs {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    return images.reshape(images.shape[0], IMAGE_SIZE * IMAGE_SIZE)


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file and its label file; check that they agree in length."""
    x = _flatten(read_idx_images(images_path), images_path)
    y = read_idx_labels(labels_path, NUM_CLASSES).astype(np.int64)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images_path} has {x.shape[0]} images but {labels_path} has {y.shape[0]} labels")
    return x, y


def _load_embedded() -> MnistData:
    paths = {}
    for kind, (name, sha256) in EMBEDDED_FILES.items():
        path = EMBEDDED_DIR / name
        if not path.is_file():
            raise DataError(f"{path}: embedded MNIST file missing (broken install?)")
        got = file_digest(path, "sha256")
        if got != sha256:
            raise DataError(f"{path}: embedded MNIST file corrupted: sha256 {got}, expected {sha256}")
        paths[kind] = path
    x, y = _read_pair(paths["images"], paths["labels"])
    n_train = EMBEDDED_TRAIN
    n_test = x.shape[0] - n_train
    empty_x = np.zeros((0, IMAGE_SIZE * IMAGE_SIZE), dtype=np.uint8)
    return MnistData(
        train_x=x[:n_train], train_y=y[:n_train],
        valid_x=empty_x, valid_y=np.zeros((0,), dtype=np.int64),
        test_x=x[n_train:], test_y=y[n_train:],
        source=f"embedded mnist10k (first 10000 MNIST training digits): {n_train} train / {n_test} test",
    )


def _find(data_dir: Path, gz_name: str) -> Path | None:
    """``name.gz`` if present, else ``name`` (uncompressed), else None."""
    for candidate in (data_dir / gz_name, data_dir / gz_name[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def _is_official(path: Path, spec: FileSpec) -> bool:
    """True when ``path`` is byte for byte the official gzip file (size first: cheap)."""
    return (
        path.name == spec.name
        and path.stat().st_size == spec.size
        and file_digest(path, "sha256") == spec.sha256
    )


def _load_directory(data_dir: Path) -> MnistData:
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory (get MNIST with: python -m jmvae_cupy.data download "
                        f"mnist --out {data_dir})")
    found = {kind: _find(data_dir, spec.name) for kind, spec in MNIST_FILES.items()}
    missing = [MNIST_FILES[k].name[: -len(".gz")] + "[.gz]" for k, p in found.items() if p is None]
    if missing:
        raise DataError(
            f"{data_dir}: missing MNIST file(s) {', '.join(missing)} (get them with: "
            f"python -m jmvae_cupy.data download mnist --out {data_dir})"
        )
    train_x, train_y = _read_pair(found["train_images"], found["train_labels"])
    test_x, test_y = _read_pair(found["test_images"], found["test_labels"])
    n = train_x.shape[0]
    if n < MIN_TRAIN_ROWS:
        raise DataError(f"{found['train_images']}: {n} training rows, need at least {MIN_TRAIN_ROWS}")
    if test_x.shape[0] == 0:
        raise DataError(f"{found['test_images']}: no test rows")
    n_valid = n // 6  # 60,000 -> 10,000: the paper's 50,000 / 10,000 split
    n_train = n - n_valid
    official = all(_is_official(found[k], MNIST_FILES[k]) for k in MNIST_FILES)
    origin = "official MNIST files" if official else "MNIST-format files (not the official checksums)"
    return MnistData(
        train_x=train_x[:n_train], train_y=train_y[:n_train],
        valid_x=train_x[n_train:], valid_y=train_y[n_train:],
        test_x=test_x, test_y=test_y,
        source=f"{origin} in {data_dir}: {n_train} train / {n_valid} valid / {test_x.shape[0]} test",
    )
