"""load_mnist: the embedded subset (checksums, classes, split), synthetic full-MNIST directories,
and the fixed binarisation of the test set."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from jmvae_cupy.data import (
    TEST_BINARIZE_SEED,
    DataError,
    MnistData,
    binarize,
    binarized_test_set,
    load_mnist,
    read_idx,
    write_idx,
)
from jmvae_cupy.data import mnist as mnist_module
from jmvae_cupy.rng import Rng

from .synthetic import MNIST_NAMES, synthetic_mnist, write_mnist_dir

# Values of jmvae_cupy/data/mnist10k/README.md, repeated here on purpose (not read from the library).
README_SHA256 = {
    "mnist10k-images-idx3-ubyte.gz": "898c41a45d8f204e06d79c99dfc4673c274db52e8197ecdbc314fe26119998c8",
    "mnist10k-labels-idx1-ubyte.gz": "4de3896cc3fb70bb0ceae6d673a77ddf2477c462b866944d392d0dc211f7cfd3",
}
README_CLASS_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


@pytest.fixture(scope="module")
def embedded():
    return load_mnist()


# ---------------------------------------------------------------------------------------------
# the embedded subset


def test_embedded_files_match_the_readme_checksums():
    for name, sha in README_SHA256.items():
        path = mnist_module.EMBEDDED_DIR / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
        assert mnist_module.EMBEDDED_FILES[name.split("-")[1]] == (name, sha)


def test_embedded_split_shapes_and_dtypes(embedded):
    d = embedded
    assert isinstance(d, MnistData)
    assert d.train_x.shape == (8000, 784) and d.train_y.shape == (8000,)
    assert d.test_x.shape == (2000, 784) and d.test_y.shape == (2000,)
    assert d.valid_x.shape == (0, 784) and d.valid_y.shape == (0,)
    assert d.train_x.dtype == np.uint8 and d.test_x.dtype == np.uint8
    assert d.train_y.dtype == np.int64 and d.test_y.dtype == np.int64
    assert d.train_x.max() == 255 and d.train_x.min() == 0
    assert "8000 train / 2000 test" in d.source
    assert "train=8000" in repr(d)


def test_embedded_class_counts(embedded):
    counts = np.bincount(np.concatenate([embedded.train_y, embedded.test_y]), minlength=10)
    assert counts.tolist() == README_CLASS_COUNTS
    # the rows are shuffled, so both parts hold every class in roughly the same proportion
    np.testing.assert_allclose(np.bincount(embedded.test_y) / 2000, np.array(README_CLASS_COUNTS) / 1e4,
                               atol=0.02)


def test_embedded_split_is_first_8000_then_last_2000(embedded):
    x = read_idx(mnist_module.EMBEDDED_DIR / "mnist10k-images-idx3-ubyte.gz").reshape(10000, 784)
    y = read_idx(mnist_module.EMBEDDED_DIR / "mnist10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(embedded.train_x, x[:8000])
    np.testing.assert_array_equal(embedded.test_x, x[8000:])
    np.testing.assert_array_equal(embedded.train_y, y[:8000])
    np.testing.assert_array_equal(embedded.test_y, y[8000:])


def test_embedded_corruption_is_detected(tmp_path, monkeypatch):
    for name in README_SHA256:
        shutil.copy(mnist_module.EMBEDDED_DIR / name, tmp_path / name)
    monkeypatch.setattr(mnist_module, "EMBEDDED_DIR", tmp_path)
    assert load_mnist().train_x.shape == (8000, 784)
    path = tmp_path / "mnist10k-labels-idx1-ubyte.gz"
    blob = bytearray(path.read_bytes())
    blob[100] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupted: sha256"):
        load_mnist()
    path.unlink()
    with pytest.raises(DataError, match="missing"):
        load_mnist()


# ---------------------------------------------------------------------------------------------
# binarisation of the test set: once, with a fixed seed


def test_binarized_test_set_is_fixed(embedded):
    b = binarized_test_set(embedded)
    assert b is binarized_test_set(embedded)  # the same array every time
    assert b.shape == (2000, 784) and b.dtype == np.float32 and not b.flags.writeable
    assert set(np.unique(b).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(b, binarize(embedded.test_x, Rng(TEST_BINARIZE_SEED)))
    # a fresh load gives the very same binary images (the seed is a constant)...
    np.testing.assert_array_equal(b, binarized_test_set(load_mnist()))
    # ... pinned here, so that a change of seed or of the sampling rule is noticed
    digest = hashlib.sha256(np.packbits(b.astype(np.uint8)).tobytes()).hexdigest()
    assert digest == "b90b92b0d631bc38ed53c2a04d0056e623b285abd78b38f0eafaeb000adb7fb1"
    assert TEST_BINARIZE_SEED == 20161107
    other = binarized_test_set(embedded, seed=1)
    assert not np.array_equal(other, b)
    b64 = binarized_test_set(embedded, dtype=np.float64)
    assert b64.dtype == np.float64
    np.testing.assert_array_equal(b64, b)


# ---------------------------------------------------------------------------------------------
# a full-MNIST directory, synthetic and small, in the real format


@pytest.mark.parametrize("gzip", [True, False])
def test_directory_split(tmp_path, gzip):
    arrays = synthetic_mnist(60, 10)
    d = load_mnist(write_mnist_dir(tmp_path, arrays, gzip=gzip))
    tr_x, tr_y, te_x, te_y = arrays
    assert (len(d.train_y), len(d.valid_y), len(d.test_y)) == (50, 10, 10)  # last 60 // 6 -> valid
    np.testing.assert_array_equal(d.train_x, tr_x[:50].reshape(50, 784))
    np.testing.assert_array_equal(d.valid_x, tr_x[50:].reshape(10, 784))
    np.testing.assert_array_equal(d.test_x, te_x.reshape(10, 784))
    np.testing.assert_array_equal(d.train_y, tr_y[:50])
    np.testing.assert_array_equal(d.valid_y, tr_y[50:])
    np.testing.assert_array_equal(d.test_y, te_y)
    assert d.train_y.dtype == np.int64
    assert "not the official checksums" in d.source and "50 train / 10 valid / 10 test" in d.source


def test_directory_with_60000_rows_gets_the_papers_split(tmp_path):
    tr_x = np.zeros((60000, 28, 28), np.uint8)
    tr_y = (np.arange(60000) % 10).astype(np.uint8)
    d = load_mnist(write_mnist_dir(tmp_path, (tr_x, tr_y, tr_x[:10000], tr_y[:10000])))
    assert (len(d.train_y), len(d.valid_y), len(d.test_y)) == (50000, 10000, 10000)
    np.testing.assert_array_equal(d.valid_y, tr_y[50000:])


def test_directory_gz_preferred_and_mixed_compression(tmp_path):
    arrays = synthetic_mnist(12, 3)
    write_mnist_dir(tmp_path, arrays, gzip=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", arrays[3][::-1])  # .gz wins over raw
    d = load_mnist(tmp_path)
    np.testing.assert_array_equal(d.test_y, arrays[3][::-1])


def test_directory_missing_files_are_all_named(tmp_path):
    write_mnist_dir(tmp_path, synthetic_mnist(12, 3))
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path)
    msg = str(info.value)
    assert "train-labels-idx1-ubyte[.gz]" in msg and "t10k-images-idx3-ubyte[.gz]" in msg
    assert "train-images" not in msg and "download mnist" in msg and "\n" not in msg
    with pytest.raises(DataError, match="not a directory"):
        load_mnist(tmp_path / "nowhere")


def test_directory_count_mismatch(tmp_path):
    tr_x, tr_y, te_x, te_y = synthetic_mnist(12, 3)
    write_mnist_dir(tmp_path, (tr_x, tr_y[:11], te_x, te_y))
    with pytest.raises(DataError, match="has 12 images but .* has 11 labels"):
        load_mnist(tmp_path)


def test_directory_wrong_image_size_and_too_few_rows(tmp_path):
    tr_x, tr_y, te_x, te_y = synthetic_mnist(12, 3)
    write_mnist_dir(tmp_path / "a", (tr_x[:, :27, :], tr_y, te_x, te_y))
    with pytest.raises(DataError, match="27x28, MNIST needs 28x28"):
        load_mnist(tmp_path / "a")
    write_mnist_dir(tmp_path / "b", (tr_x[:5], tr_y[:5], te_x, te_y))
    with pytest.raises(DataError, match="5 training rows, need at least 6"):
        load_mnist(tmp_path / "b")
    write_mnist_dir(tmp_path / "c", (tr_x, tr_y, te_x[:0], te_y[:0]))
    with pytest.raises(DataError, match="no test rows"):
        load_mnist(tmp_path / "c")


def test_directory_bad_file_is_named(tmp_path):
    write_mnist_dir(tmp_path, synthetic_mnist(12, 3))
    bad = tmp_path / (MNIST_NAMES[2] + ".gz")
    bad.write_bytes(b"<html>gateway timeout</html>")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: not an IDX file"):
        load_mnist(tmp_path)
    tr_x, tr_y, te_x, te_y = synthetic_mnist(12, 3)
    write_mnist_dir(tmp_path, (tr_x, np.full(12, 10, np.uint8), te_x, te_y))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: label 10 at index 0"):
        load_mnist(tmp_path)


def test_official_files_are_recognised(tmp_path, monkeypatch):
    # Pretend the synthetic files are the official ones by patching the checksum table.
    write_mnist_dir(tmp_path, synthetic_mnist(12, 3))
    table = {}
    for key, spec in mnist_module.MNIST_FILES.items():
        path = tmp_path / spec.name
        table[key] = spec._replace(size=path.stat().st_size,
                                   sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(mnist_module, "MNIST_FILES", table)
    assert load_mnist(tmp_path).source.startswith("official MNIST files")
