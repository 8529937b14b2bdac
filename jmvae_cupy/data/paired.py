"""Paired data sets of your own: one HDF5 (``.h5``) or NumPy (``.npz``) file of pairs (x, w).

Keys (docs/data.md, "Your own paired data"):

* ``x``        (N, ...)  the first modality, any per-row shape: vectors (N, D_x), images (N, C, H, W), ...
* ``w``        (N, D)    the second modality, a vector per row;
* ``split``    (N,)      optional: "train" or "test" per row (str or bytes); without it a fixed-seed
                         90/10 split (SPLIT_SEED: the same rows on every machine);
* ``w_names``  (D,)      optional: a name per w feature (str or bytes), e.g. the classes or attributes.

x and w hold numbers (bool, integers or floats), finite, with N >= 2 rows in both.  The whole
file is read into memory, as it is stored; a batch is converted to the model's dtype when it is
taken.  :func:`open_paired` refuses a bad file with a one-line :class:`DataError`; ``python -m
jmvae_cupy.data check FILE`` prints :meth:`PairedData.summary` or that line.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import h5py
import numpy as np

from .errors import DataError

KEYS = ("x", "w", "split", "w_names")
SPLIT_SEED = 0        # the default split's permutation: np.random.default_rng(SPLIT_SEED)
TEST_FRACTION = 0.1   # the default split's test share (at least one row)
HDF5_EXTS, NPZ_EXTS = (".h5", ".hdf5", ".hdf"), (".npz",)


@dataclass
class PairedData:
    """A checked paired file: ``x`` (N, ...), ``w`` (N, D) host arrays as stored; ``train_idx``,
    ``test_idx`` sorted int64 row numbers; ``w_names`` (D strings, or None); ``split_given``: the
    file has a ``split``; ``x_stats``, ``w_stats``: :func:`value_stats`."""

    path: str
    format: str
    x: np.ndarray
    w: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray
    w_names: list | None
    split_given: bool
    x_stats: dict
    w_stats: dict
    ignored: tuple = ()

    @property
    def x_shape(self) -> tuple:
        return tuple(self.x.shape[1:])

    @property
    def w_dim(self) -> int:
        return int(self.w.shape[1])

    def rows(self, idx, dtype):
        """(x, w) of the rows ``idx`` in ``dtype``: (len(idx), *x_shape), (len(idx), D)."""
        return self.x[idx].astype(dtype, copy=False), self.w[idx].astype(dtype, copy=False)

    def summary(self) -> str:
        """What ``python -m jmvae_cupy.data check`` prints: rows, shapes, values, split, names."""
        n = len(self.x)
        split = ("given" if self.split_given else
                 f"none in the file: a 90/10 split with seed {SPLIT_SEED}")
        lines = [f"{self.path}: {self.format}, {n} pairs",
                 f"  x  {describe_array(self.x, self.x_stats)}",
                 f"  w  {describe_array(self.w, self.w_stats)}",
                 f"  split  {len(self.train_idx)} train / {len(self.test_idx)} test ({split})"]
        if self.w_names is not None:
            shown = ", ".join(self.w_names[:8]) + (", ..." if len(self.w_names) > 8 else "")
            lines.append(f"  w_names  {shown}")
        if self.ignored:
            lines.append(f"  ignored keys  {', '.join(self.ignored)}")
        return "\n".join(lines)


def describe_array(a: np.ndarray, stats: dict) -> str:
    """One line: shape per row, dtype, range and what the values look like."""
    kind = "one-hot rows" if stats["one_hot"] else "values in {0, 1}" if stats["binary"] else \
        f"values in [{stats['min']:.4g}, {stats['max']:.4g}]"
    return f"{tuple(a.shape[1:])} per row, {a.dtype}, {kind}"


def image_view(x_shape) -> tuple | None:
    """How x of ``x_shape`` (one row) is drawn: (H, W) grey for (H, W) or (1, H, W), (3, H, W) colour, or
    None (not an image)."""
    if len(x_shape) == 2:
        return tuple(x_shape)
    if len(x_shape) == 3 and x_shape[0] in (1, 3):
        return tuple(x_shape[1:]) if x_shape[0] == 1 else tuple(x_shape)
    return None


def value_stats(a: np.ndarray) -> dict:
    """{"min", "max", "binary": every value is 0 or 1, "one_hot": (N, D) rows with D >= 2 of zeros and
    a single 1}: what a model config's defaults read (models/config.py infer_likelihood)."""
    lo, hi = float(a.min()), float(a.max())
    binary = bool(lo >= 0 and hi <= 1 and np.all((a == 0) | (a == 1)))
    one_hot = bool(binary and a.ndim == 2 and a.shape[1] >= 2 and np.all(a.sum(axis=1) == 1))
    return {"min": lo, "max": hi, "binary": binary, "one_hot": one_hot}


def _format(path: str) -> str:
    """"HDF5" or "npz", from the extension or, failing that, the first bytes."""
    ext = os.path.splitext(path)[1].lower()
    if ext in HDF5_EXTS:
        return "HDF5"
    if ext in NPZ_EXTS:
        return "npz"
    with open(path, "rb") as f:
        head = f.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        return "HDF5"
    if head[:4] == b"PK\x03\x04":
        return "npz"
    raise DataError(f"{path}: not a paired data file (an HDF5 .h5 or a NumPy .npz file)")


def _read_hdf5(path: str) -> tuple[dict, tuple]:

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0][:80]})") from None
    with f:
        out = {}
        for k in KEYS:
            if k not in f:
                continue
            if not isinstance(f[k], h5py.Dataset):
                raise DataError(f"{path}: {k} must be an array (an HDF5 dataset), not a group")
            try:
                out[k] = f[k][()]
            except (OSError, TypeError, ValueError) as e:
                raise DataError(f"{path}: {k} cannot be read ({str(e).splitlines()[0][:80]})") from None
        return out, tuple(sorted(k for k in f if k not in KEYS))


def _read_npz(path: str) -> tuple[dict, tuple]:
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            out = {}
            for k in KEYS:
                if k in names:
                    try:
                        out[k] = z[k]
                    except ValueError:  # an object array: it needs pickle, which a data file must not
                        raise DataError(f"{path}: {k} is an array of Python objects: store numbers (x, w) or "
                                        "strings (split, w_names)") from None
            return out, tuple(sorted(k for k in names if k not in KEYS))
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({str(e).splitlines()[0][:80]})") from None
    except ValueError as e:
        raise DataError(f"{path}: not a readable .npz file ({str(e).splitlines()[0][:80]})") from None


def _strings(path: str, key: str, a) -> list:
    """An array of str / bytes as a list of str (bytes as UTF-8)."""
    a = np.asarray(a)
    if a.dtype.kind not in "USO":
        raise DataError(f"{path}: {key} must hold strings (str or bytes), not {a.dtype}")
    out = []
    for v in a.reshape(-1):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}: {key} holds bytes that are not UTF-8 text") from None
        if not isinstance(v, str):
            raise DataError(f"{path}: {key} must hold strings (str or bytes), found {type(v).__name__}")
        out.append(str(v))
    return out


def _numbers(path: str, key: str, a, what: str) -> np.ndarray:
    """``a`` checked: numbers (bool, integer, float), at least one row, ``what`` shape, all finite."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path}: {key} has dtype {a.dtype}: it must hold numbers (bool, integers or floats)")
    if a.ndim < 2 or (key == "w" and a.ndim != 2):
        raise DataError(f"{path}: {key} must be {what}, got shape {a.shape}")
    if a.shape[0] == 0:
        raise DataError(f"{path}: {key} has no rows")
    if a.size == 0:
        raise DataError(f"{path}: {key} has no features (shape {a.shape})")
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a.reshape(len(a), -1))
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise DataError(f"{path}: {key} has {int(bad.sum())} NaN or infinite values (first in row {int(rows[0])})")
    return a


def default_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), sorted: a random TEST_FRACTION of the n rows (at least one) test,
    from np.random.default_rng(SPLIT_SEED), the rest train."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = max(1, int(round(n * TEST_FRACTION)))
    return np.sort(order[n_test:]).astype(np.int64), np.sort(order[:n_test]).astype(np.int64)


_last: dict = {}  # the last file opened: {(path, mtime_ns, size): PairedData} (train reads it twice)


def open_paired(path) -> PairedData:
    """Read and check a paired data file (module docstring); DataError (one line) if it is not valid.
    The last file read is kept while its modification time and size stay the same."""
    path = str(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a paired data file")
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    if key in _last:
        return _last[key]
    data = _open(path)
    _last.clear()
    _last[key] = data
    return data


def _open(path: str) -> PairedData:
    try:
        fmt = _format(path)
        arrays, ignored = (_read_hdf5 if fmt == "HDF5" else _read_npz)(path)
    except PermissionError as e:
        raise DataError(f"{path}: unreadable ({e.strerror})") from None
    for k in ("x", "w"):
        if k not in arrays:
            have = ", ".join(sorted(set(arrays) | set(ignored))) or "none"
            raise DataError(f"{path}: no {k!r} array (the file's keys: {have}; docs/data.md)")
    x = _numbers(path, "x", arrays["x"], "(N, ...) with a row per pair")
    w = _numbers(path, "w", arrays["w"], "(N, D): a vector per row")
    if len(x) != len(w):
        raise DataError(f"{path}: x has {len(x)} rows and w {len(w)}: row i of x pairs with row i of w")
    if len(x) < 2:
        raise DataError(f"{path}: {len(x)} pair: a train and a test part need at least 2")
    split_given = "split" in arrays
    if split_given:
        s = np.asarray(arrays["split"])
        if s.shape != (len(x),):
            raise DataError(f"{path}: split must be ({len(x)},), one \"train\" or \"test\" per row, got shape "
                            f"{s.shape}")
        s = np.array(_strings(path, "split", s))
        other = sorted(set(s.tolist()) - {"train", "test"})
        if other:
            raise DataError(f"{path}: split holds {other[0]!r}: every row must be \"train\" or \"test\"")
        train_idx, test_idx = np.flatnonzero(s == "train"), np.flatnonzero(s == "test")
        for name, idx in (("train", train_idx), ("test", test_idx)):
            if len(idx) == 0:
                raise DataError(f"{path}: split has no {name!r} rows (both parts must have at least one)")
    else:
        train_idx, test_idx = default_split(len(x))
    names = None
    if "w_names" in arrays:
        names = _strings(path, "w_names", arrays["w_names"])
        if np.asarray(arrays["w_names"]).shape != (w.shape[1],):
            raise DataError(f"{path}: w_names must be ({w.shape[1]},), a name per w feature, got shape "
                            f"{np.asarray(arrays['w_names']).shape}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup or "" in names:
            raise DataError(f"{path}: w_names must be distinct and non-empty ({dup[0]!r} repeats)" if dup else
                            f"{path}: w_names must be distinct and non-empty (an empty name)")
    return PairedData(path, fmt, x, w, train_idx.astype(np.int64), test_idx.astype(np.int64), names, split_given,
                      value_stats(x), value_stats(w), ignored)


def write_paired(path, x, w, split=None, w_names=None) -> None:
    """Write a paired data file (HDF5 for .h5 / .hdf5, else .npz): the arrays as given, strings as
    UTF-8 bytes in HDF5."""
    path = str(path)
    arrays = {"x": np.asarray(x), "w": np.asarray(w)}
    if split is not None:
        arrays["split"] = np.asarray(split)
    if w_names is not None:
        arrays["w_names"] = np.asarray(w_names)
    if os.path.splitext(path)[1].lower() in HDF5_EXTS:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=np.char.encode(v, "utf-8") if v.dtype.kind == "U" else v)
    else:
        np.savez(path, **arrays)
