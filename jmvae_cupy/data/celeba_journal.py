"""The journaling writer of CelebA's ``.partial`` file (data/celeba_prepare.py): HDF5 writes through
:class:`_PartialFile` (every byte with os.pwrite, flushed and fsynced per commit, a failed write
stopping everything and putting the file back as its last commit left it), the commit protocol of
:class:`_Partial`, and signals held while HDF5 writes (:func:`_signals_held`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import threading
from pathlib import Path

import h5py
import numpy as np

from ..cli import one_line
from .celeba import (
    _H5_ERRORS,
    _NAME,
    CHUNK,
    FORMAT,
    LAYOUT,
    MAX_SKIP_LOG,
    NUM_ATTRS,
    SKIP_LOG_LEN,
    SPLIT_SEED,
    TEST_FRACTION,
    VERSION,
)
from .errors import DataError


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


def _attr_eq(a, b) -> bool:
    if a is None:
        return False
    if isinstance(a, bytes):
        a = a.decode()
    if isinstance(a, np.generic):
        a = a.item()
    return a == b
