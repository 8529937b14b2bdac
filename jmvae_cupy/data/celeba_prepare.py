"""CelebA: the distributed folder -> one HDF5 file (``prepare``; the reader: data/celeba.py).

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

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..cli import one_line
from ..fsutil import try_lock
from .celeba import (
    _NAME,
    CHUNK,
    LAYOUT,
    MAX_LINE,
    MAX_PIXELS,
    MAX_ROWS,
    NUM_ATTRS,
    SIZES,
    SPLITS,
    CelebAData,
    _attr_str,
)
from .celeba_journal import _check_rows, _check_split_sizes, _Partial, _signals_held
from .errors import DataError

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

    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    sq = img.crop((left, top, left + s, top + s)).resize((size, size), Image.LANCZOS)
    return np.asarray(sq, dtype=np.uint8).transpose(2, 0, 1)


def _load_image(path: Path, size: int) -> np.ndarray:
    """Read, crop and resize one JPEG; DataError (one line) if it is missing or unreadable."""

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


