"""CelebA's prepared HDF5 file: its format constants and the streaming reader (:class:`CelebAData`,
:func:`open_celeba`).  The file is made by ``python -m jmvae_cupy.data prepare celeba``
(data/celeba_prepare.py, which writes it through the journaling writer of data/celeba_journal.py);
the format is described in docs/celeba.md and in data/celeba_prepare.py."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from ..cli import one_line
from .errors import DataError

#: The 40 attribute names of list_attr_celeba.txt, in the file's order.
ATTR_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
NUM_ATTRS = 40
FORMAT = "jmvae_cupy-celeba"
VERSION = 1
SIZES = (32, 64)
SPLITS = ("paper", "official")
SPLIT_SEED = 20161107          # the paper split: a fixed-seed random 90 / 10 split
TEST_FRACTION = 0.1
CHUNK = 256                    # images per HDF5 chunk (and per flush)
LAYOUT = 2                     # how a .partial records progress: a .partial of another layout is started over
MAX_SKIP_LOG = 100             # skipped-image messages kept in the file
SKIP_LOG_LEN = 256             # bytes kept of each
MAX_ROWS = 10_000_000          # a count above this is not CelebA (202,599 images)
MAX_LINE = 4096                # longest line accepted in the text files
MAX_PIXELS = 4096 * 4096       # larger source images are rejected before decoding
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# ----------------------------------------------------------------------------------------------
# the reader


# What h5py raises on a damaged file (a corrupted header, chunk index or compressed chunk).
_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError)


class CelebAData:
    """A prepared CelebA HDF5 file, read lazily.

    Only the attributes (int8, 40 bytes an image) and the index arrays are held in memory; images
    are read a block of ``block`` rows at a time (the two most recent blocks are cached) and
    converted to floats batch by batch.

    Attributes: ``n``, ``image_size``, ``attr_names`` (list of 40), ``train_idx``, ``test_idx``
    (sorted int64 row numbers), ``split``, ``skipped``, ``path``.

    Values: images float in [0, 1] (pixel / 255), (N, 3, S, S); attributes float -1 / 1, (N, 40).
    """

    def __init__(self, path, block: int = 2048):
        self.path = Path(path)
        self.block = int(block)
        p = self.path
        try:
            self.f = h5py.File(p, "r")
        except FileNotFoundError:
            raise DataError(f"{p}: no such file (make it with: python -m jmvae_cupy.data prepare celeba SRC "
                            f"--out {p})") from None
        except OSError as e:
            raise DataError(f"{p}: not a readable HDF5 file ({one_line(e)[:80]})") from None
        try:
            self._validate()
        except DataError:
            self.f.close()
            raise
        except _H5_ERRORS as e:  # a damaged file can fail inside h5py in many ways: name it, one line
            self.f.close()
            raise DataError(f"{p}: damaged HDF5 file ({type(e).__name__}: {one_line(e)[:80]})") from None
        except BaseException:
            self.f.close()
            raise
        self._cache: dict = {}

    def _validate(self):
        f, p = self.f, self.path
        a = f.attrs
        if _attr_str(a.get("format")) != FORMAT:
            raise DataError(f"{p}: not a prepared CelebA file (format attribute {_attr_str(a.get('format'))!r})")
        if int(a.get("version", -1)) != VERSION:
            raise DataError(f"{p}: format version {a.get('version')} is not {VERSION}")
        if not bool(a.get("complete", False)):
            raise DataError(f"{p}: incomplete file: re-run prepare")
        for name in ("images", "attributes", "train_idx", "test_idx"):
            if name not in f:
                raise DataError(f"{p}: dataset {name!r} is missing")
        im, at = f["images"], f["attributes"]
        if (im.dtype != np.uint8 or im.ndim != 4 or im.shape[1] != 3 or im.shape[2] != im.shape[3]
                or im.shape[2] not in SIZES):
            raise DataError(f"{p}: images should be uint8 (N, 3, S, S) with S in {SIZES}, got {im.dtype} {im.shape}")
        self.n, self.image_size = int(im.shape[0]), int(im.shape[2])
        if at.dtype != np.int8 or at.shape != (self.n, NUM_ATTRS):
            raise DataError(f"{p}: attributes should be int8 ({self.n}, 40), got {at.dtype} {at.shape}")
        self.attrs_int8 = at[:]
        if not np.all((self.attrs_int8 == 1) | (self.attrs_int8 == -1)):
            raise DataError(f"{p}: attribute values other than -1 and 1")
        names = a.get("attr_names")
        if (not isinstance(names, np.ndarray) or names.shape != (NUM_ATTRS,)
                or not all(isinstance(s, (bytes, str)) and len(s) for s in names)):
            raise DataError(f"{p}: attr_names should list 40 names (strings)")
        self.attr_names = [_attr_str(s) for s in names]
        for name in ("train_idx", "test_idx"):
            ds = f[name]
            if ds.ndim != 1 or ds.dtype.kind not in "iu":
                raise DataError(f"{p}: {name} should be a 1-D integer array, got {ds.dtype} {ds.shape}")
            idx = ds[:].astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n or np.any(np.diff(idx) <= 0)):
                raise DataError(f"{p}: {name} should hold sorted distinct rows in 0..{self.n - 1}")
            setattr(self, name, idx)
        if len(np.intersect1d(self.train_idx, self.test_idx)):
            raise DataError(f"{p}: train_idx and test_idx overlap")
        if len(self.train_idx) == 0:
            raise DataError(f"{p}: no training images (train_idx is empty)")
        if len(self.test_idx) == 0:
            raise DataError(f"{p}: no test images (test_idx is empty)")
        self.split = _attr_str(a.get("split"))
        self.skipped = int(a.get("skipped_total", 0))

    # ---------------------------------------------------------------- reading
    def _block(self, b: int) -> np.ndarray:
        blk = self._cache.get(b)
        if blk is None:
            try:
                blk = self.f["images"][b * self.block:(b + 1) * self.block]
            except _H5_ERRORS as e:
                raise DataError(f"{self.path}: damaged image block {b} ({type(e).__name__}: "
                                f"{one_line(e)[:80]})") from None
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[b] = blk
        return blk

    def images_uint8(self, idx) -> np.ndarray:
        """uint8 (len(idx), 3, S, S) for any row numbers (read block by block)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), 3, self.image_size, self.image_size), dtype=np.uint8)
        blocks = idx // self.block
        for b in np.unique(blocks):
            sel = blocks == b
            out[sel] = self._block(int(b))[idx[sel] - b * self.block]
        return out

    def images(self, idx, dtype=np.float32) -> np.ndarray:
        """float (len(idx), 3, S, S) in [0, 1]."""
        dtype = np.dtype(dtype)
        return self.images_uint8(idx).astype(dtype) / dtype.type(255)

    def attributes(self, idx, dtype=np.float32) -> np.ndarray:
        """float (len(idx), 40) with values -1 / 1."""
        return self.attrs_int8[np.asarray(idx, dtype=np.int64)].astype(dtype)

    def epoch_order(self, rng, batch_size: int, rows=None) -> list:
        """One epoch's batches (lists of row numbers), drawn from ``rng`` (an Rng).

        Block shuffle: the blocks of ``block`` consecutive rows come in a random order and the
        rows of ``rows`` (default: train_idx) inside each block in a random order, so an epoch
        reads every block once.  The last partial batch is dropped.
        """
        rows = self.train_idx if rows is None else np.asarray(rows, dtype=np.int64)
        if len(rows) < batch_size:
            raise DataError(f"{self.path}: {len(rows)} training images are fewer than one batch of {batch_size}")
        nb = (self.n + self.block - 1) // self.block
        bounds = np.searchsorted(rows, np.arange(nb + 1) * self.block)
        parts = []
        for b in rng.permutation(nb):
            r = rows[bounds[b]:bounds[b + 1]]
            parts.append(r[rng.permutation(len(r))])
        order = np.concatenate(parts)
        stop = len(order) - len(order) % batch_size
        return [order[i:i + batch_size] for i in range(0, stop, batch_size)]

    def close(self):
        self._cache.clear()
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _attr_str(v) -> str | None:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.bytes_):
        return v.decode()
    return None if v is None else str(v)


def open_celeba(path, block: int = 2048) -> CelebAData:
    """Open a file made by ``python -m jmvae_cupy.data prepare celeba``; DataError if it is not valid."""
    return CelebAData(path, block=block)
