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
* ``progress`` int64 (3,) and ``skipped_log`` (100 messages): the ``.partial``'s bookkeeping;
* attributes (HDF5 attrs): ``format`` = "jmvae_cupy-celeba", ``version``, ``attr_names`` (40
  strings), ``image_size``, ``split`` ("paper": a random 90/10 split, seed ``split_seed``;
  "official": partitions 0 + 1 train, 2 test), ``resample`` = "LANCZOS", ``done``, ``n_stored``,
  ``skipped_total``, ``skipped_examples``; how it was made: ``source_sha256`` (the attribute
  file), ``partition_sha256`` (official), ``source_dir``, ``on_error``, ``chunk``.

Interrupting, failing and re-running: the work goes into ``FILE.h5.partial``, written through
:class:`_PartialFile`; ``FILE.h5.lock`` is locked from the first look at ``FILE.h5`` to its
rename (a second ``prepare`` on the same file stops).  Every ``chunk`` images (and on Ctrl-C or
SIGTERM, which take effect between rows and first store the images already decoded) the new rows are appended and
the file is flushed and fsynced; only then is the ``progress`` record [rows of the attribute file
dealt with, images stored, images skipped] (a small dataset rewritten in place) advanced and
flushed, so a re-run never counts a row that was not stored.  The file is created with HDF5's
"none" file-space strategy (freed space is never reused, so a failed flush cannot overwrite what
the last good one wrote).  The first failed write (disk full, quota, I/O error) stops the run
with one line, ``error: FILE.h5.partial: No space left on device: the N rows counted so far are
kept ...`` (DataError); nothing more is written, the ``.partial`` is put back exactly as its last
successful flush left it, and HDF5 never sees the failure (it hides some failures and can crash
after one).  A re-run with the same sources and options continues from the progress record
(after reading the counted rows back), and one with other sources or options starts the
``.partial`` over.  The finished file is read back (the reader's validation, and every row)
before it is renamed atomically to ``FILE.h5``; a file that fails is deleted, never presented as
written.

A finished ``FILE.h5`` is validated and left alone if it was made from the same attribute file
(``source_sha256``; and partition file, ``partition_sha256``, official split) with the same
``--size`` and ``--split`` (and not ``--on-error stop`` when it skipped images); otherwise the run
stops with one line naming each difference.  A split whose train or test part would be empty
(too few images for the paper split's 10%, no partition-2 or no partition-0/1 image) stops the
run, before the images are decoded when the text files already show it, and the reader refuses
such a file.  The text files may start with a UTF-8 byte-order mark.

Malformed input raises :class:`DataError` with a one-line message.  Problems of the whole file
(a missing file, a non-numeric or absurd count, not 40 attribute names, a truncated or overlong
attribute file) always stop.  Problems of one image (a missing or unreadable JPEG, a short or long
row, a non-numeric or non +-1 value, an unsafe or duplicate name, no partition entry) are skipped
and counted (``on_error="skip"``, the default) or stop the run (``"stop"``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from ..cli import one_line
from ..fsutil import try_lock
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
# the text files


def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8-sig", newline=None)  # (a byte-order mark is ignored)
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
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: missing image") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
        why = why.replace(repr(str(path)), "").replace(str(path), "").strip(" :") or type(e).__name__
        raise DataError(f"{path}: unreadable JPEG ({why[:80]})") from None


# ----------------------------------------------------------------------------------------------
# prepare


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    return h.hexdigest()


def _h5():
    import h5py  # noqa: PLC0415

    return h5py


def prepare_celeba(src, out, split: str = "paper", on_error: str = "skip", size: int = 64,
                   progress: bool = True, chunk: int = CHUNK, log=print) -> dict:
    """Convert the CelebA folder ``src`` into the HDF5 file ``out`` (see the module docstring).

    Returns a summary dict: ``stored``, ``skipped``, ``train``, ``test``, ``path``, ``resumed_at``.
    Raises DataError (one line) for bad arguments or input, a finished ``out`` made with other
    options or sources, an empty train or test split, and a failed write (see the module docstring).
    """
    src, out = Path(src), Path(out)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose paper or official")
    if on_error not in ("skip", "stop"):
        raise DataError(f"unknown --on-error {on_error!r}: choose skip or stop")
    if size not in SIZES:
        raise DataError(f"--size must be one of {', '.join(map(str, SIZES))}, got {size}")
    if int(chunk) < 1:
        raise DataError(f"--chunk must be at least 1, got {chunk}")
    if not src.is_dir():
        raise DataError(f"{src}: not a directory (expected the CelebA folder with img_align_celeba/)")
    img_dir = src / "img_align_celeba"
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: missing image folder")
    lock_path = Path(str(out) + ".lock")
    try:
        lock = try_lock(lock_path)
    except OSError as e:
        raise DataError(f"{out}: cannot write: {e.strerror or e}") from None
    if lock is None:
        raise DataError(f"{out}: another prepare is writing this file (wait for it to end)")
    try:  # (held from the first look at FILE.h5 to its rename: a second prepare waits for none of it)
        return _prepare_locked(src, out, img_dir, split, on_error, size, chunk, progress, log)
    finally:
        lock_path.unlink(missing_ok=True)  # (before the release: a process that opened it meanwhile
        lock.close()                       # then locks an unlinked file and finds FILE.h5 finished)


def _prepare_locked(src: Path, out: Path, img_dir: Path, split: str, on_error: str, size: int, chunk: int,
                    progress: bool, log) -> dict:
    """prepare_celeba's work, with the arguments checked and ``FILE.h5.lock`` held."""
    attr_path, part_path = src / "list_attr_celeba.txt", src / "list_eval_partition.txt"
    if out.exists():  # a finished file: validate it, check it was made this way, and leave it alone
        return _already_prepared(out, attr_path, part_path, size, split, on_error, log)

    pending: list = []  # messages of the images skipped since the last commit

    def parse_error(msg):
        if on_error == "stop":
            raise DataError(msg + " (use --on-error skip to skip such images)")

    def row_error(msg):
        parse_error(msg)
        pending.append(msg)

    names, rows = read_attr_file(attr_path, parse_error)
    part = None
    if split == "official":  # a malformed line there: its image is skipped as 'no entry'
        part = read_partition_file(part_path, parse_error)
    usable = [name for _, name, _ in rows if name is not None]
    _check_split_sizes(split, len(usable), None if part is None else [part.get(n) for n in usable],
                       attr_path if part is None else part_path)
    ident = {"layout": LAYOUT, "source_sha256": _sha256(attr_path), "rows": len(rows), "image_size": size,
             "split": split, "on_error": on_error, "chunk": int(chunk)}
    if part is not None:
        ident["partition_sha256"] = _sha256(part_path)

    partial = Path(str(out) + ".partial")
    w = _Partial(partial, official=part is not None, log=log)
    bar = None
    try:
        w.open(ident, names, size, int(chunk), len(rows), source_dir=src)
        resumed_at = w.done or None
        if w.done:
            log(f"resuming {partial}: {w.done} of {len(rows)} rows done, {w.stored} images stored")
        buf_x, buf_w, buf_n, buf_p = [], [], [], []
        if progress:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(total=len(rows), initial=w.done, desc="celeba", unit="img", dynamic_ncols=True)

        def commit(upto):
            data = {}
            if buf_x:
                data = {"images": np.stack(buf_x), "attributes": np.stack(buf_w),
                        "names": np.array(buf_n, dtype="S64")}
                if part is not None:
                    data["partition"] = np.array(buf_p, dtype=np.int8)
            skipped = list(pending)
            buf_x.clear(), buf_w.clear(), buf_n.clear(), buf_p.clear(), pending.clear()
            w.commit(data, upto, skipped)  # (a signal held during it is raised at its end: nothing twice)

        i = w.done
        try:
            while i < len(rows):
                # a Ctrl-C or SIGTERM takes effect at the end of the row: row i is buffered (or
                # skipped) and counted, or neither (between the two, commit(i) below would store
                # one image more than it counts, and a re-run would start the file over)
                with _signals_held():
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
                        commit(i)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every image decoded so far is kept
            commit(i)
            raise
        commit(i)
        if bar is not None:
            bar.close()
        if w.stored == 0:
            raise DataError(f"{src}: no usable image (every row was skipped)")
        train_idx, test_idx = w.finish(split, src)
    finally:
        if bar is not None:
            bar.close()
        w.close()
    _verify_finished(partial, official=part is not None)
    os.replace(partial, out)
    if w.skipped_total:
        log(f"skipped {w.skipped_total} images (first: {w.skipped_log[0]})")
    log(f"wrote {out}: {w.stored} images {size}x{size}, {len(train_idx)} train / {len(test_idx)} test "
        f"({split} split)")
    return {"path": str(out), "stored": w.stored, "skipped": w.skipped_total, "train": len(train_idx),
            "test": len(test_idx), "resumed_at": resumed_at}


def _already_prepared(out: Path, attr_path: Path, part_path: Path, size: int, split: str, on_error: str,
                      log) -> dict:
    """``out`` exists: validate it like the reader does, and refuse it (one line naming every
    difference) unless it was prepared from the same sources with the same options."""
    with CelebAData(out) as d:
        a, diffs = d.f.attrs, []
        if d.image_size != size:
            diffs.append(f"with --size {d.image_size}, not {size}")
        if d.split != split:
            diffs.append(f"with --split {d.split}, not {split}")
        recorded = _attr_str(a.get("source_sha256"))  # (files of every version record it)
        if recorded is not None and recorded != _sha256(attr_path):
            was = _attr_str(a.get("source_dir"))
            diffs.append(f"from another list_attr_celeba.txt{f' (in {was})' if was else ''}, not {attr_path}")
        recorded = _attr_str(a.get("partition_sha256"))  # (official files of older versions lack it)
        if split == "official" and d.split == "official" and recorded is not None \
                and recorded != _sha256(part_path):
            diffs.append(f"from another list_eval_partition.txt, not {part_path}")
        if on_error == "stop" and d.skipped:
            diffs.append(f"with --on-error skip ({d.skipped} images skipped), not stop")
        if diffs:
            raise DataError(f"{out} was prepared {'; '.join(diffs)}: choose another --out or delete it")
        log(f"{out} is already complete ({d.n} images): nothing to do")
        return {"path": str(out), "stored": d.n, "skipped": d.skipped, "train": len(d.train_idx),
                "test": len(d.test_idx), "resumed_at": None}


def _check_split_sizes(split: str, n: int, partitions, where: Path) -> None:
    """DataError unless ``n`` stored images (with these partitions, official split) give a
    non-empty train and test split; checked before the images are decoded and again after."""
    if split == "paper":
        if round(TEST_FRACTION * n) == 0:
            raise DataError(f"{where}: {n} usable images are too few for the paper split (its 10% test set "
                            f"would be empty; at least 6 are needed)")
        return
    if 2 not in partitions:
        raise DataError(f"{where}: none of the {n} usable images is in partition 2: the official split's "
                        f"test set would be empty")
    if 0 not in partitions and 1 not in partitions:
        raise DataError(f"{where}: none of the {n} usable images is in partition 0 or 1: the official "
                        f"split's training set would be empty")


def _split(f, split: str, n: int):
    if split == "official":
        p = f["partition"][:n]
        return np.flatnonzero(p <= 1).astype(np.int64), np.flatnonzero(p == 2).astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = int(round(TEST_FRACTION * n))
    return np.sort(perm[n_test:]).astype(np.int64), np.sort(perm[:n_test]).astype(np.int64)


def _check_rows(f, n: int, official: bool, step: int = 2048) -> None:
    """Read rows 0..n-1 of the per-image datasets back (images decompressed, a block at a time):
    DataError (without the file name) unless every row is a stored image: a safe name, attribute
    values -1 / 1, a partition 0..2."""
    sets = ("images", "attributes", "names") + (("partition",) if official else ())
    for name in sets:
        if name not in f or f[name].shape[0] < n:
            raise DataError(f"dataset {name!r} holds fewer than {n} rows")
    for a in range(0, n, step):
        b = min(n, a + step)
        try:
            f["images"][a:b]
            at, nm = f["attributes"][a:b], f["names"][a:b]
            pt = f["partition"][a:b] if official else None
        except _H5_ERRORS as e:
            raise DataError(f"rows {a}..{b - 1} do not read back ({type(e).__name__}: "
                            f"{one_line(e)[:80]})") from None
        if not np.all((at == 1) | (at == -1)):
            raise DataError(f"rows {a}..{b - 1}: attribute values other than -1 and 1")
        bad = next((j for j, s in enumerate(nm) if not _NAME.match(bytes(s).decode("ascii", "replace"))), None)
        if bad is not None:
            raise DataError(f"row {a + bad}: no valid image name")
        if pt is not None and not np.all((pt >= 0) & (pt <= 2)):
            raise DataError(f"rows {a}..{b - 1}: partition values other than 0, 1 and 2")


def _verify_finished(partial: Path, official: bool) -> None:
    """Read the finished ``.partial`` back as the reader does (and every row): only a file that
    passes is renamed to its final name.  One that fails is deleted (its content cannot be trusted)."""
    try:
        with CelebAData(partial) as d:
            try:
                _check_rows(d.f, d.n, official)
            except DataError as e:
                raise DataError(f"{partial}: {e}") from None
    except DataError as e:
        partial.unlink(missing_ok=True)
        raise DataError(f"the finished file does not read back, so it was deleted ({e}): run the command "
                        f"again") from None


def _attr_eq(a, b) -> bool:
    if a is None:
        return False
    if isinstance(a, bytes):
        a = a.decode()
    if isinstance(a, np.generic):
        a = a.item()
    return a == b


@contextlib.contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM while HDF5 writes: an exception raised inside HDF5's write callback
    would leave the file half-updated.  A signal that came meanwhile takes effect when the block
    ends (unless the block failed: its error is what is reported)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending, old = [], {}
    for s in (signal.SIGINT, signal.SIGTERM):
        old[s] = signal.getsignal(s)
        signal.signal(s, lambda signum, frame: pending.append(signum))
    ok = False
    try:
        yield
        ok = True
    finally:
        for s, h in old.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
        if ok and pending:
            h = old[pending[0]]
            if callable(h):
                h(pending[0], None)
            elif h != signal.SIG_IGN:
                signal.raise_signal(pending[0])


class _PartialFile:
    """``FILE.h5.partial`` as HDF5 sees it (h5py's file-object driver): positioned reads and
    writes on one descriptor, that never raise, and that can go back to the last flush.

    A failed write (disk full, quota, I/O error) cannot be reported through HDF5 safely: HDF5
    hides some (a chunk written while a dataset is closed gives only an 'Exception ignored'
    message), an exception raised in the driver's callback while h5py closes an object is left
    pending and later crashes the interpreter, and HDF5 itself can crash on a call after a failed
    one.  So the first failure is kept in ``error`` and every later write is dropped: HDF5 goes on
    believing it succeeded (none of its error paths is ever taken), and the writer, which checks
    ``error`` after each HDF5 call, stops.

    A flush that failed half-way can leave metadata on disk that points past what the file's
    superblock covers (an unreadable file).  So every successful ``flush`` (HDF5 calls it at the
    end of each flush of the file, when the file on disk is consistent) fsyncs and makes a
    checkpoint, and until the next one the bytes of the checkpoint that a write or a truncation
    replaces are kept in memory (HDF5 overwrites only small metadata blocks in place; new data
    goes past the end): on the first failure they are written back and the file is cut to its
    checkpoint size, so it is again exactly what the last successful flush left.
    """

    def __init__(self, path: Path):
        self.path, self.pos, self.error = path, 0, None
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
        try:
            self.checkpoint()
        except BaseException:
            os.close(self.fd)
            raise

    def checkpoint(self) -> None:
        """The file as it is now is what a failure goes back to."""
        self.size, self.undo = os.fstat(self.fd).st_size, []

    def _keep(self, start: int, end: int) -> None:
        """Remember the checkpoint's bytes start..end (a part of them) before they are replaced."""
        end = min(end, self.size)
        if start < end:
            self.undo.append((start, os.pread(self.fd, end - start, start)))

    def _failed(self, e: Exception) -> None:
        if self.error is not None:
            return
        why = getattr(e, "strerror", None) or one_line(e)[:120] or type(e).__name__
        self.error = OSError(getattr(e, "errno", None), why, str(self.path))
        try:  # back to the checkpoint: in-place writes (no new space needed), then the size
            for start, old in reversed(self.undo):
                _write_all(self.fd, memoryview(old), start)
            os.ftruncate(self.fd, self.size)
            os.fsync(self.fd)
        except OSError:
            pass  # the file stays as it is: a re-run reads its counted rows back before using them
        self.undo = []

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            try:
                offset += os.fstat(self.fd).st_size
            except OSError as e:
                self._failed(e)
        elif whence == os.SEEK_CUR:
            offset += self.pos
        self.pos = offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        try:
            if n is None or n < 0:
                n = max(0, os.fstat(self.fd).st_size - self.pos)
            while len(out) < n:
                b = os.pread(self.fd, n - len(out), self.pos + len(out))
                if not b:
                    break
                out += b
        except OSError as e:  # a short read: HDF5 reports it as its own error
            self._failed(e)
        self.pos += len(out)
        return bytes(out)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                self._keep(self.pos, self.pos + len(view))
                _write_all(self.fd, view, self.pos)
            except OSError as e:
                self._failed(e)
        self.pos += len(view)
        return len(view)

    def truncate(self, n: int | None = None) -> int:
        n = self.pos if n is None else n
        if self.error is None:
            try:
                self._keep(n, self.size)
                os.ftruncate(self.fd, n)
            except OSError as e:
                self._failed(e)
        return n

    def flush(self) -> None:
        if self.error is None:
            try:
                os.fsync(self.fd)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # (a file system that cannot sync)
                    self._failed(e)
                    return
            self.checkpoint()

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        if self.error is None:  # (HDF5 must not use the descriptor number once it is closed)
            self.error = OSError(errno.EBADF, "closed", str(self.path))


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class _Partial:
    """The ``.partial`` being written: HDF5 over a :class:`_PartialFile`, the datasets kept open
    (closing a dataset writes its cached chunks, where HDF5 cannot report a failure), progress
    committed only after the rows it counts are flushed (see the module docstring)."""

    def __init__(self, path: Path, official: bool, log):
        self.path, self.official, self.log = path, official, log
        self.pf = self.f = None
        self.ds: dict = {}
        self.done = self.stored = self.skipped_total = 0
        self.skipped_log: list = []
        self.rowsets = ("images", "attributes", "names") + (("partition",) if official else ())
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable

    def _unraisable(self, u):  # h5py reports failures while closing an object here: quiet once known
        if self.pf is None or self.pf.error is None:
            self._hook(u)

    def disk_error(self) -> DataError:
        e = self.pf.error
        advice = "free some space and " if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return DataError(f"{self.path}: {e.strerror}: the {self.done} rows counted so far are kept "
                         f"({advice}run the same command again to continue)")

    @contextlib.contextmanager
    def writing(self):
        """Around every HDF5 call that writes: signals held until it ends, and a failed write
        (wherever HDF5 noticed or hid it) turned into one DataError."""
        with _signals_held():
            try:
                yield
            except (OSError, RuntimeError) as e:  # h5py reporting a failure of HDF5: nothing more is written
                self.pf._failed(e)
                raise self.disk_error() from None
            except BaseException as e:
                if self.pf.error is not None and not isinstance(e, DataError):
                    raise self.disk_error() from None
                raise
            if self.pf.error is not None:
                raise self.disk_error()

    def open(self, ident: dict, names, size: int, chunk: int, n_rows: int, source_dir: Path):
        """Continue the ``.partial`` if it was made from the same sources and options and its
        counted rows read back intact, else start it over."""
        h5py = _h5()
        self.pf = _PartialFile(self.path)
        if os.fstat(self.pf.fd).st_size:
            try:
                with _signals_held():
                    self.f = h5py.File(self.pf, "r+")
                    why = self._resume(ident, n_rows)
            except (DataError, *_H5_ERRORS) as e:
                if self.pf.error is not None:
                    raise self.disk_error() from None
                why = f"is unreadable (killed while writing? {type(e).__name__}: {one_line(e)[:60]})"
            if why is None:
                return
            self.log(f"{self.path} {why}: starting over")
            self._close_h5()
            try:
                os.ftruncate(self.pf.fd, 0)
            except OSError as e:
                raise DataError(f"{self.path}: cannot write: {e.strerror or e}") from None
            self.pf.checkpoint()
        self.pf.pos = 0
        with self.writing():
            f = self.f = h5py.File(self.pf, "w", fs_strategy="none")  # freed space is never reused
            f.attrs.update(ident)
            f.attrs.update({"format": FORMAT, "version": VERSION, "attr_names": np.array(names, dtype="S64"),
                            "resample": "LANCZOS", "crop": "centred square", "split_seed": SPLIT_SEED,
                            "test_fraction": TEST_FRACTION, "source_dir": str(source_dir.resolve()),
                            "complete": False})
            c = max(1, min(chunk, CHUNK))
            f.create_dataset("images", shape=(0, 3, size, size), maxshape=(None, 3, size, size), dtype=np.uint8,
                             chunks=(c, 3, size, size), compression="gzip", compression_opts=4)
            f.create_dataset("attributes", shape=(0, NUM_ATTRS), maxshape=(None, NUM_ATTRS), dtype=np.int8,
                             chunks=(max(c, 1024), NUM_ATTRS), compression="gzip")
            f.create_dataset("names", shape=(0,), maxshape=(None,), dtype="S64", chunks=(max(c, 1024),),
                             compression="gzip")
            if self.official:
                f.create_dataset("partition", shape=(0,), maxshape=(None,), dtype=np.int8, chunks=(max(c, 1024),))
            # written in place (contiguous, allocated now): the progress record [done, n_stored,
            # skipped_total] and the first skipped-image messages
            f.create_dataset("progress", data=np.zeros(3, dtype=np.int64))
            f.create_dataset("skipped_log", data=np.zeros(MAX_SKIP_LOG, dtype=f"S{SKIP_LOG_LEN}"))
            f.flush()
        self.ds = {name: f[name] for name in self.rowsets + ("progress", "skipped_log")}

    def _resume(self, ident: dict, n_rows: int):
        """The reason the ``.partial`` open in ``self.f`` cannot be continued, or None (then it is
        cut back to its counted rows and ready to be appended to)."""
        f = self.f
        if not _attr_eq(f.attrs.get("layout"), LAYOUT):
            return "was written by another version of prepare"
        if not all(_attr_eq(f.attrs.get(k), v) for k, v in ident.items()):
            return "was made from other sources or options"
        done, stored, skipped = (int(v) for v in f["progress"][:3])
        if not (0 <= stored <= done <= n_rows and 0 <= skipped <= done):
            return f"has an inconsistent progress record ({done}, {stored}, {skipped})"
        try:
            _check_rows(f, stored, self.official)
        except DataError as e:
            return f"holds damaged rows ({e})"
        messages = [bytes(s).decode("utf-8", "replace") for s in f["skipped_log"][:min(skipped, MAX_SKIP_LOG)]]
        for name in self.rowsets:  # rows appended after the last commit were never counted
            f[name].resize(stored, axis=0)
        for name in ("train_idx", "test_idx"):  # (a finished file, never renamed)
            if name in f:
                del f[name]
        f.attrs["complete"] = False
        f.flush()
        if self.pf.error is not None:
            raise self.disk_error()
        self.done, self.stored, self.skipped_total, self.skipped_log = done, stored, skipped, messages
        self.ds = {name: f[name] for name in self.rowsets + ("progress", "skipped_log")}
        return None

    def commit(self, data: dict, upto: int, skipped: list) -> None:
        """Append the rows of ``data`` (dataset name -> array) and the messages of the images
        ``skipped`` since the last commit, flush them, and only then record that the first
        ``upto`` rows of the attribute file are dealt with."""
        k = len(data["images"]) if data else 0
        total = self.skipped_total + len(skipped)
        room = skipped[:max(0, MAX_SKIP_LOG - self.skipped_total)]
        with _signals_held():  # (a signal takes effect after both steps)
            with self.writing():
                for name, values in data.items():
                    ds = self.ds[name]
                    ds.resize(self.stored + k, axis=0)
                    ds[self.stored:self.stored + k] = values
                if room:
                    self.ds["skipped_log"][self.skipped_total:self.skipped_total + len(room)] = np.array(
                        [m.encode("utf-8", "replace")[:SKIP_LOG_LEN] for m in room], dtype=f"S{SKIP_LOG_LEN}")
                self.f.flush()  # the rows and messages are on disk ...
            with self.writing():
                self.ds["progress"][:] = np.array([upto, self.stored + k, total], dtype=np.int64)
                self.f.flush()  # ... before the progress record counts them
            self.done, self.stored, self.skipped_total = upto, self.stored + k, total
            self.skipped_log += room

    def finish(self, split: str, src: Path):
        """Write the split and the summary attributes, mark the file complete and close it;
        DataError if the train or the test split is empty.  Returns (train_idx, test_idx)."""
        f = self.f
        train_idx, test_idx = _split(f, split, self.stored)
        _check_split_sizes(split, self.stored,
                           None if split == "paper" else f["partition"][:self.stored].tolist(), src)
        with self.writing():
            f.create_dataset("train_idx", data=train_idx)
            f.create_dataset("test_idx", data=test_idx)
            f.attrs.update({"done": self.done, "n_stored": self.stored, "skipped_total": self.skipped_total,
                            "skipped_examples": json.dumps(self.skipped_log[:MAX_SKIP_LOG]), "complete": True})
            f.flush()
        self.close()
        return train_idx, test_idx

    def _close_h5(self) -> None:
        """Close the HDF5 file (after a failed write, the writes of the close are dropped: see
        :class:`_PartialFile`); raises the disk error if there was one."""
        f, self.f, self.ds = self.f, None, {}
        if f is None:
            return
        with _signals_held():
            try:
                f.close()
            except _H5_ERRORS as e:
                if self.pf.error is None:
                    raise DataError(f"{self.path}: cannot close ({type(e).__name__}: "
                                    f"{one_line(e)[:80]})") from None
        if self.pf.error is not None:
            raise self.disk_error()

    def close(self) -> None:
        """Close everything (idempotent); raises the disk error if closing hit it first."""
        try:
            if self.pf is not None:
                self._close_h5()
        finally:
            if self.pf is not None:
                self.pf.close()
            if sys.unraisablehook == self._unraisable:
                sys.unraisablehook = self._hook


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
