"""Paired data files of your own (jmvae_cupy/data/paired.py) and ``python -m jmvae_cupy.data check``:
good files in both formats, the default split, and a table of malformed files, each refused with
one line (exit 2), never a traceback."""

import h5py
import numpy as np
import pytest

from jmvae_cupy.data import DataError
from jmvae_cupy.data.__main__ import main
from jmvae_cupy.data.paired import default_split, open_paired, write_paired

N = 20


def _pairs(r=None):
    r = r or np.random.default_rng(0)
    return (r.random((N, 5)) < 0.5).astype(np.uint8), np.eye(3)[r.integers(0, 3, N)]


@pytest.mark.parametrize("name", ["p.h5", "p.npz"])
def test_a_file_in_either_format_reads_back_with_its_split_and_names(tmp_path, name, capsys):
    x, w = _pairs()
    split = np.array(["train"] * 15 + ["test"] * 5)
    write_paired(tmp_path / name, x, w, split=split, w_names=["cat", "dog", "fox"])
    d = open_paired(tmp_path / name)
    assert np.array_equal(d.x, x) and np.array_equal(d.w, w) and d.w_names == ["cat", "dog", "fox"]
    assert d.train_idx.tolist() == list(range(15)) and d.test_idx.tolist() == list(range(15, 20))
    assert d.x_stats["binary"] and not d.x_stats["one_hot"] and d.w_stats["one_hot"]
    assert main(["check", str(tmp_path / name)]) == 0
    out = capsys.readouterr().out
    assert "20 pairs" in out and "15 train / 5 test (given)" in out and "cat, dog, fox" in out
    assert "x  bernoulli" in out and "w  categorical" in out  # the model train would infer


def test_without_a_split_a_fixed_seed_90_10_split(tmp_path):
    x, w = _pairs()
    write_paired(tmp_path / "p.npz", x, w)
    d = open_paired(tmp_path / "p.npz")
    train, test = default_split(N)
    assert np.array_equal(d.train_idx, train) and np.array_equal(d.test_idx, test)
    assert len(test) == 2 and sorted(train.tolist() + test.tolist()) == list(range(N))
    assert default_split(N)[1].tolist() == test.tolist()  # the same rows every time
    assert len(default_split(2)[1]) == 1  # at least one test row


def test_bytes_strings_of_hdf5_are_read_as_text(tmp_path):
    x, w = _pairs()
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["x"], f["w"] = x.astype(bool), w
        f["split"] = np.array([b"test"] * 4 + [b"train"] * 16)
        f["w_names"] = np.array([b"a", b"b", b"c"])
    d = open_paired(tmp_path / "p.h5")
    assert d.x.dtype == np.uint8 and len(d.test_idx) == 4 and d.w_names == ["a", "b", "c"]


def _h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if isinstance(v, str) and v == "group":
                f.create_group(k)
            else:
                f[k] = v
    return path


X, W = _pairs()
NAN = X.astype(np.float32)
NAN[7, 2] = np.nan

# (file contents -> what the one line says)
MALFORMED = [
    ("missing.h5", None, "no such file"),
    ("notes.txt", b"hello", "not a paired data file"),
    ("bad.h5", b"\x89HDF\r\n\x1a\n garbage", "not a readable HDF5 file"),
    ("bad.npz", b"PK\x03\x04 garbage", "not a readable .npz file"),
    ("no_w.npz", {"x": X}, "no 'w' array"),
    ("no_x.h5", {"w": W, "X": X}, "no 'x' array (the file's keys: X, w"),
    ("group.h5", {"x": "group", "w": W}, "x must be an array"),
    ("flat_x.npz", {"x": np.zeros(N), "w": W}, "x must be (N, ...)"),
    ("w3d.npz", {"x": X, "w": np.zeros((N, 3, 1))}, "w must be (N, D)"),
    ("rows.npz", {"x": X, "w": W[:-1]}, "x has 20 rows and w 19"),
    ("empty.npz", {"x": X[:0], "w": W[:0]}, "x has no rows"),
    ("nofeat.npz", {"x": np.zeros((N, 0)), "w": W}, "x has no features"),
    ("one.npz", {"x": X[:1], "w": W[:1]}, "1 pair: a train and a test part need at least 2"),
    ("nan.npz", {"x": NAN, "w": W}, "x has 1 NaN or infinite values (first in row 7)"),
    ("inf.h5", {"x": X, "w": np.where(W > 0, np.inf, 0)}, "w has 20 NaN or infinite values"),
    ("str.npz", {"x": X, "w": W.astype(str)}, "w has dtype <U32: it must hold numbers"),
    ("complex.npz", {"x": X + 1j, "w": W}, "x has dtype complex128"),
    ("object.npz", {"x": X, "w": np.array([[1, "a"]] * N, dtype=object)}, "w is an array of Python objects"),
    ("split_len.npz", {"x": X, "w": W, "split": np.array(["train"] * 19)}, "split must be (20,)"),
    ("split_val.npz", {"x": X, "w": W, "split": np.array(["train"] * 19 + ["valid"])}, "split holds 'valid'"),
    ("split_num.npz", {"x": X, "w": W, "split": np.zeros(N)}, "split must hold strings"),
    ("no_test.npz", {"x": X, "w": W, "split": np.array(["train"] * N)}, "split has no 'test' rows"),
    ("no_train.h5", {"x": X, "w": W, "split": np.array([b"test"] * N)}, "split has no 'train' rows"),
    ("names_len.npz", {"x": X, "w": W, "w_names": np.array(["a", "b"])}, "w_names must be (3,)"),
    ("names_dup.npz", {"x": X, "w": W, "w_names": np.array(["a", "b", "a"])}, "'a' repeats"),
    ("names_empty.npz", {"x": X, "w": W, "w_names": np.array(["a", "", "c"])}, "an empty name"),
]


@pytest.mark.parametrize("name, contents, msg", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_files_are_refused_with_one_line(tmp_path, capsys, name, contents, msg):
    path = tmp_path / name
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    elif isinstance(contents, dict) and name.endswith(".h5"):
        _h5(path, **contents)
    elif isinstance(contents, dict):
        np.savez(path, **contents)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    assert msg in err, err
    with pytest.raises(DataError):
        open_paired(path)


def test_a_directory_is_not_a_file(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
