"""CelebA: the distributed folder -> one HDF5 file (``prepare``), and a streaming reader.

Source layout, as distributed (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)::

    SRC/img_align_celeba/000001.jpg ...     aligned faces, 178x218 JPEGs
    SRC/list_attr_celeba.txt                line 1: the count N; line 2: the 40 attribute names;
                                            then N rows "000001.jpg  -1  1 ... " (40 values, -1/1)
    SRC/list_eval_partition.txt             rows "000001.jpg 0" (0 train, 1 valid, 2 test);
                                            needed for ``--split official`` only

``prepare_celeba`` crops every image to its centred square (side min(W, H), offsets
((W - s) // 2, (H - s) // 2)), resizes it to ``size`` x ``size`` with Pillow's LANCZOS filter
(antialiased), and writes the HDF5 file described in docs/celeba.md:

* ``images``      uint8 (N, 3, S, S), channels first (the models' layout: no transpose later),
                  chunks of 256 images, gzip level 4;
* ``attributes``  int8 (N, 40), values -1 / 1;
* ``names``       the source file names (bytes, up to 64);
* ``train_idx``, ``test_idx``  int64, sorted row numbers;  ``partition`` int8 (official only);
* attributes (HDF5 attrs): ``format`` = "jmvae_cupy-celeba", ``version``, ``attr_names`` (40),
  ``image_size``, ``split`` ("paper": a random 90/10 split, seed ``split_seed``; "official":
  partitions 0 + 1 train, 2 test), ``resample`` = "LANCZOS", ``skipped`` and ``skipped_examples``.

Interrupting and re-running: the work goes into ``FILE.h5.partial``, whose ``done`` attribute
(rows of the attribute file dealt with) and ``n_stored`` are updated after every flushed chunk;
a re-run with the same sources and options continues from there (a Ctrl-C flushes the images
already decoded first), and the finished file is renamed atomically to ``FILE.h5``.

Malformed input raises :class:`DataError` with a one-line message.  Problems of the whole file
(a missing file, a non-numeric or absurd count, not 40 attribute names, a truncated or overlong
attribute file) always stop.  Problems of one image (a missing or unreadable JPEG, a short or long
row, a non-numeric or non +-1 value, an unsafe or duplicate name, no partition entry) are skipped
and counted (``on_error="skip"``, the default) or stop the run (``"stop"``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

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
MAX_ROWS = 10_000_000          # a count above this is not CelebA (202,599 images)
MAX_LINE = 4096                # longest line accepted in the text files
MAX_PIXELS = 4096 * 4096       # larger source images are rejected before decoding
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# ----------------------------------------------------------------------------------------------
# the text files


def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8", newline=None)
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from None


def _lines(f, path: Path):
    """(line number, stripped line) for every line, refusing overlong lines and bad encodings."""
    n = 0
    while True:
        try:
            ln = f.readline(MAX_LINE + 1)
        except UnicodeDecodeError:
            raise DataError(f"{path}: line {n + 1} is not UTF-8 text") from None
        if not ln:
            return
        n += 1
        if len(ln) > MAX_LINE and not ln.endswith("\n"):
            raise DataError(f"{path}: line {n} is longer than {MAX_LINE} characters")
        yield n, ln.strip()


def _check_name(name: str) -> str | None:
    if not _NAME.match(name) or name in (".", "..") or not name.lower().endswith(".jpg"):
        return f"unsafe or unexpected image name {name[:40]!r}"
    return None


def read_attr_file(path, on_row_error) -> tuple[list, list]:
    """Parse list_attr_celeba.txt.  Returns (attribute names, rows [(line, name, int8 array)]);
    a bad row is ``(line, None, message)``.

    ``on_row_error(message)`` is called for a bad row: it raises (stop), or returns (skip).
    """
    path = Path(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from None
    with _open_text(path) as f:
        lines = _lines(f, path)
        first = next(lines, None)
        if first is None or not first[1]:
            raise DataError(f"{path}: empty file (line 1 should be the number of images)")
        try:
            count = int(first[1])
        except ValueError:
            raise DataError(f"{path}: line 1 should be the number of images, got {first[1][:40]!r}") from None
        # a row is at least "a.jpg" + 40 * " 1" = 85 bytes: a count the file cannot hold is absurd
        if not 1 <= count <= MAX_ROWS or count * 85 > size:
            raise DataError(f"{path}: absurd image count {count} for a file of {size} bytes")
        second = next(lines, None)
        names = second[1].split() if second else []
        if len(names) != NUM_ATTRS or len(set(names)) != NUM_ATTRS:
            raise DataError(f"{path}: line 2 should hold the 40 distinct attribute names, got {len(names)}")
        rows, seen = [], set()
        for lineno, ln in lines:
            if not ln:
                continue
            if len(rows) >= count and not ln.startswith("#"):
                raise DataError(f"{path}: more rows than the count {count} on line 1 (line {lineno})")
            tok = ln.split()
            where = f"{path}:{lineno}"
            bad = _check_name(tok[0])
            if bad is None and tok[0] in seen:
                bad = f"duplicate image name {tok[0]!r}"
            if bad is None and len(tok) != NUM_ATTRS + 1:
                bad = f"{'short' if len(tok) < NUM_ATTRS + 1 else 'long'} attribute row: {len(tok) - 1} values, need 40"
            if bad is None:
                try:
                    vals = [int(t) for t in tok[1:]]
                except ValueError:
                    vals = None
                    bad = "non-numeric attribute value " + repr(next(t for t in tok[1:] if not _is_int(t))[:20])
                if vals is not None and any(v not in (-1, 1) for v in vals):
                    bad = f"attribute value {next(v for v in vals if v not in (-1, 1))} is not -1 or 1"
            if bad is not None:
                on_row_error(f"{where}: {bad}")
                rows.append((lineno, None, f"{where}: {bad}"))  # skipped when its turn comes
                continue
            seen.add(tok[0])
            rows.append((lineno, tok[0], np.array(vals, dtype=np.int8)))
        if len(rows) < count:
            raise DataError(f"{path}: truncated: {len(rows)} of {count} rows present")
    return names, rows


def _is_int(t: str) -> bool:
    try:
        int(t)
        return True
    except ValueError:
        return False


def read_partition_file(path, on_row_error) -> dict:
    """Parse list_eval_partition.txt: {name: 0 | 1 | 2}."""
    path = Path(path)
    out = {}
    with _open_text(path) as f:
        for lineno, ln in _lines(f, path):
            if not ln:
                continue
            if len(out) >= MAX_ROWS:
                raise DataError(f"{path}: more than {MAX_ROWS} rows")
            tok = ln.split()
            if len(tok) != 2 or tok[1] not in ("0", "1", "2") or _check_name(tok[0]):
                on_row_error(f"{path}:{lineno}: expected 'NAME.jpg 0|1|2', got {ln[:60]!r}")
                continue
            out[tok[0]] = int(tok[1])
    return out


# ----------------------------------------------------------------------------------------------
# images


def crop_resize(img, size: int):
    """A PIL image -> uint8 (3, size, size): the centred square, resized with LANCZOS."""
    from PIL import Image  # noqa: PLC0415

    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    sq = img.crop((left, top, left + s, top + s)).resize((size, size), Image.LANCZOS)
    return np.asarray(sq, dtype=np.uint8).transpose(2, 0, 1)


def _load_image(path: Path, size: int) -> np.ndarray:
    """Read, crop and resize one JPEG; DataError (one line) if it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise DataError(f"{path}: image of {img.size[0]}x{img.size[1]} pixels is too large")
            img.load()
            return crop_resize(img, size)
    except FileNotFoundError:
        raise DataError(f"{path}: missing image") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable JPEG ({' '.join(str(e).split())[:80]})") from None


# ----------------------------------------------------------------------------------------------
# prepare


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _h5():
    import h5py  # noqa: PLC0415

    return h5py


def prepare_celeba(src, out, split: str = "paper", on_error: str = "skip", size: int = 64,
                   progress: bool = True, chunk: int = CHUNK, log=print) -> dict:
    """Convert the CelebA folder ``src`` into the HDF5 file ``out`` (see the module docstring).

    Returns a summary dict: ``stored``, ``skipped``, ``train``, ``test``, ``path``, ``resumed_at``.
    Raises DataError (one line) for bad arguments or input (see the module docstring).
    """
    src, out = Path(src), Path(out)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose paper or official")
    if on_error not in ("skip", "stop"):
        raise DataError(f"unknown --on-error {on_error!r}: choose skip or stop")
    if size not in SIZES:
        raise DataError(f"--size must be one of {', '.join(map(str, SIZES))}, got {size}")
    if not src.is_dir():
        raise DataError(f"{src}: not a directory (expected the CelebA folder with img_align_celeba/)")
    img_dir = src / "img_align_celeba"
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: missing image folder")
    if out.exists():
        with CelebAData(out) as d:  # a finished file: validate, and leave it alone
            log(f"{out} is already complete ({d.n} images): nothing to do")
            return {"path": str(out), "stored": d.n, "skipped": d.skipped, "train": len(d.train_idx),
                    "test": len(d.test_idx), "resumed_at": None}

    skipped: list = []  # messages of the images skipped in this run

    def parse_error(msg):
        if on_error == "stop":
            raise DataError(msg + " (use --on-error skip to skip such images)")

    def row_error(msg):
        parse_error(msg)
        skipped.append(msg)

    attr_path = src / "list_attr_celeba.txt"
    names, rows = read_attr_file(attr_path, parse_error)
    part = None
    if split == "official":  # a malformed line there: its image is skipped as 'no entry'
        part = read_partition_file(src / "list_eval_partition.txt", parse_error)
    ident = {"source_sha256": _sha256(attr_path), "rows": len(rows), "image_size": size, "split": split,
             "on_error": on_error, "chunk": chunk}

    partial = Path(str(out) + ".partial")
    f = _open_partial(partial, ident, names, size, chunk, official=part is not None, log=log)
    try:
        done, stored = int(f.attrs["done"]), int(f.attrs["n_stored"])
        prior = json.loads(f.attrs["skipped_examples"])
        n_prior = int(f.attrs["skipped_total"])
        resumed_at = done or None
        if done:
            log(f"resuming {partial}: {done} of {len(rows)} rows done, {stored} images stored")
        buf_x, buf_w, buf_n, buf_p = [], [], [], []
        bar = None
        if progress:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(total=len(rows), initial=done, desc="celeba", unit="img", dynamic_ncols=True)

        def flush(upto):
            nonlocal stored
            k = len(buf_x)
            if k:
                for name, data in (("images", np.stack(buf_x)), ("attributes", np.stack(buf_w)),
                                   ("names", np.array(buf_n, dtype="S64"))) + (
                                       (("partition", np.array(buf_p, dtype=np.int8)),) if part is not None else ()):
                    ds = f[name]
                    ds.resize(stored + k, axis=0)
                    ds[stored:stored + k] = data
            stored += k
            f.attrs["n_stored"] = stored
            f.attrs["done"] = upto
            f.attrs["skipped_total"] = n_prior + len(skipped)
            f.attrs["skipped_examples"] = json.dumps((prior + skipped)[:100])
            f.flush()
            buf_x.clear(), buf_w.clear(), buf_n.clear(), buf_p.clear()

        i = done
        try:
            while i < len(rows):
                lineno, name, vals = rows[i]
                if name is None:
                    row_error(vals)
                else:
                    p = None
                    if part is not None:
                        p = part.get(name)
                        if p is None:
                            row_error(f"{attr_path}:{lineno}: {name} has no entry in list_eval_partition.txt")
                    if part is None or p is not None:
                        try:
                            x = _load_image(img_dir / name, size)
                        except DataError as e:
                            row_error(str(e))
                        else:
                            buf_x.append(x), buf_w.append(vals), buf_n.append(name.encode())
                            if p is not None:
                                buf_p.append(p)
                i += 1
                if bar is not None:
                    bar.update(1)
                if len(buf_x) >= chunk:
                    flush(i)
        except KeyboardInterrupt:
            flush(i)  # every image decoded so far is kept
            raise
        flush(i)
        if bar is not None:
            bar.close()
        if stored == 0:
            raise DataError(f"{src}: no usable image (every row was skipped)")
        train_idx, test_idx = _split(f, split, stored)
        f.create_dataset("train_idx", data=train_idx)
        f.create_dataset("test_idx", data=test_idx)
        f.attrs["complete"] = True
        total_skipped = int(f.attrs["skipped_total"])
    finally:
        f.close()
    os.replace(partial, out)
    if total_skipped:
        log(f"skipped {total_skipped} images (first: {(prior + skipped)[0]})")
    log(f"wrote {out}: {stored} images {size}x{size}, {len(train_idx)} train / {len(test_idx)} test ({split} split)")
    return {"path": str(out), "stored": stored, "skipped": total_skipped, "train": len(train_idx),
            "test": len(test_idx), "resumed_at": resumed_at}


def _split(f, split: str, n: int):
    if split == "official":
        p = f["partition"][:]
        return np.flatnonzero(p <= 1).astype(np.int64), np.flatnonzero(p == 2).astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = int(round(TEST_FRACTION * n))
    return np.sort(perm[n_test:]).astype(np.int64), np.sort(perm[:n_test]).astype(np.int64)


def _open_partial(partial: Path, ident: dict, names, size: int, chunk: int, official: bool, log):
    """Open FILE.h5.partial to continue it if it was made from the same sources and options,
    else (re)create it.  Datasets are cut back to ``n_stored`` (a crash between a resize and the
    attribute update leaves rows that were never counted)."""
    h5py = _h5()
    if partial.exists():
        try:
            f = h5py.File(partial, "r+")
            same = all(_attr_eq(f.attrs.get(k), v) for k, v in ident.items()) and not f.attrs.get("complete", False)
            if same:
                n = int(f.attrs["n_stored"])
                for name in ("images", "attributes", "names") + (("partition",) if official else ()):
                    f[name].resize(n, axis=0)
                return f
            f.close()
            log(f"{partial} was made from other sources or options: starting over")
        except (OSError, KeyError, ValueError):
            log(f"{partial} is unreadable (killed while writing?): starting over")
        partial.unlink()
    try:
        f = h5py.File(partial, "w")
    except OSError as e:
        raise DataError(f"{partial}: cannot write: {e}") from None
    f.attrs.update({k: v for k, v in ident.items()})
    f.attrs.update({"format": FORMAT, "version": VERSION, "attr_names": np.array(names, dtype="S64"),
                    "resample": "LANCZOS", "crop": "centred square", "split_seed": SPLIT_SEED,
                    "test_fraction": TEST_FRACTION, "done": 0, "n_stored": 0, "skipped_total": 0,
                    "skipped_examples": "[]", "complete": False})
    c = max(1, min(chunk, CHUNK))
    f.create_dataset("images", shape=(0, 3, size, size), maxshape=(None, 3, size, size), dtype=np.uint8,
                     chunks=(c, 3, size, size), compression="gzip", compression_opts=4)
    f.create_dataset("attributes", shape=(0, NUM_ATTRS), maxshape=(None, NUM_ATTRS), dtype=np.int8,
                     chunks=(max(c, 1024), NUM_ATTRS), compression="gzip")
    f.create_dataset("names", shape=(0,), maxshape=(None,), dtype="S64", chunks=(max(c, 1024),), compression="gzip")
    if official:
        f.create_dataset("partition", shape=(0,), maxshape=(None,), dtype=np.int8, chunks=(max(c, 1024),))
    f.flush()
    return f


def _attr_eq(a, b) -> bool:
    if a is None:
        return False
    if isinstance(a, bytes):
        a = a.decode()
    if isinstance(a, np.generic):
        a = a.item()
    return a == b


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
        h5py = _h5()
        self.path = Path(path)
        self.block = int(block)
        p = self.path
        try:
            self.f = h5py.File(p, "r")
        except FileNotFoundError:
            raise DataError(f"{p}: no such file (make it with: python -m jmvae_cupy.data prepare celeba SRC "
                            f"--out {p})") from None
        except OSError as e:
            raise DataError(f"{p}: not a readable HDF5 file ({' '.join(str(e).split())[:80]})") from None
        try:
            self._validate()
        except DataError:
            self.f.close()
            raise
        except _H5_ERRORS as e:  # a damaged file can fail inside h5py in many ways: name it, one line
            self.f.close()
            raise DataError(f"{p}: damaged HDF5 file ({type(e).__name__}: {' '.join(str(e).split())[:80]})") from None
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
        if names is None or len(names) != NUM_ATTRS:
            raise DataError(f"{p}: attr_names should list 40 names")
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
            raise DataError(f"{p}: no training images")
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
                                f"{' '.join(str(e).split())[:80]})") from None
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
