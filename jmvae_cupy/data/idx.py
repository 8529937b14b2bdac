"""Reading and writing the IDX format of MNIST, defensively.

The IDX format (LeCun et al.) is a big-endian header followed by a raw C-order payload::

    offset  size    content
    0       2       0x00 0x00                 (two zero bytes)
    2       1       dtype code                (0x08 = unsigned byte; the only one accepted here)
    3       1       ndim                      (1 for labels, 3 for images)
    4       4*ndim  the sizes, big-endian uint32 each (N, then rows, cols for images)
    4+4*ndim  prod(sizes)  the payload, one byte per element

so the first four bytes read as the big-endian "magic number" 0x00000801 = 2049 for a label file
(N,) and 0x00000803 = 2051 for an image file (N, rows, cols).  The files usually come gzipped;
this reader recognises gzip by its magic bytes ``1f 8b``, not by the file name.

What the reader checks, and why it is safe on hostile input:

* the two zero bytes, the dtype code 0x08 and the number of dimensions (1..255; the typed
  readers :func:`read_idx_images` and :func:`read_idx_labels` insist on 3 and 1);
* the payload size ``prod(sizes)`` against what the file can hold *before* reading it: exactly
  the file length minus the header for a raw file, and at most ``1032`` times the compressed
  length for a gzip file (1032:1 is the largest ratio deflate can reach).  Sizes are multiplied
  as Python integers, so no overflow; a header claiming 10^12 elements is rejected without
  allocating anything;
* the payload is then read in chunks of at most 1 MiB, so memory grows only with bytes that
  really arrive, and exactly ``prod(sizes)`` bytes must arrive: fewer is a truncated file, and
  any byte after them (raw trailing garbage, or a further gzip member with data) is rejected;
* gzip's own checks (CRC-32 and length trailer) run because the stream is read to its end;
* label files: every label lies in ``0 .. num_classes - 1``.

Every failure raises :class:`~jmvae_cupy.data.errors.DataError` with the file name in its
one-line message; nothing else escapes (a hypothesis fuzz test in ``tests/data`` checks this).
"""

from __future__ import annotations

import gzip as _gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..fsutil import temp_beside
from .errors import DataError

#: Magic number of an IDX label file: dtype 0x08 (uint8), 1 dimension.
LABELS_MAGIC = 0x00000801  # 2049
#: Magic number of an IDX image file: dtype 0x08 (uint8), 3 dimensions.
IMAGES_MAGIC = 0x00000803  # 2051
#: IDX dtype code of unsigned bytes, the only payload type this reader accepts.
UBYTE_CODE = 0x08

_GZIP_MAGIC = b"\x1f\x8b"
# Deflate emits at least ~2 bits per 258-byte match, so no gzip stream inflates by more than
# 1032:1; a header asking for more bytes than that cannot be honest.
_GZIP_MAX_RATIO = 1032
_CHUNK = 1 << 20  # read payloads in pieces of 1 MiB: memory follows the bytes that arrive
_MAX_DIM = 2**32 - 1  # a size field is a uint32

# Errors the gzip/zlib layer raises on a corrupted stream (BadGzipFile is an OSError).
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read any uint8 IDX file (gzip or raw) and return its array.

    Args:
        path: the file; gzip is detected from its first two bytes, whatever its name.

    Returns:
        ``np.ndarray`` of dtype uint8 and shape ``sizes`` from the header, e.g. (N, 28, 28)
        for MNIST images or (N,) for labels.  The array is writable and owns no file handle.

    Raises:
        DataError: missing/unreadable file, bad magic or dtype code, sizes inconsistent with the
            file length (truncated file, trailing bytes, absurd sizes), corrupted gzip stream.
    """
    return _read(Path(path), expect_ndim=None)


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX image file (magic 2051): uint8 array of shape (N, rows, cols)."""
    return _read(Path(path), expect_ndim=3)


def read_idx_labels(path: str | os.PathLike, num_classes: int = 10) -> np.ndarray:
    """Read an IDX label file (magic 2049): uint8 array of shape (N,), values in [0, num_classes).

    Raises:
        DataError: as :func:`read_idx`, or a label outside ``0 .. num_classes - 1``.
    """
    labels = _read(Path(path), expect_ndim=1)
    if labels.size and int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(
            f"{path}: label {int(labels[bad])} at index {bad} is outside 0..{num_classes - 1}"
        )
    return labels


def write_idx(path: str | os.PathLike, array, gzip: bool = True) -> Path:
    """Write ``array`` as an IDX file, atomically.

    The bytes go to a temporary file in the same directory, which is then renamed over ``path``
    with ``os.replace`` (atomic on POSIX and Windows): a reader never sees a half-written file,
    and a crash leaves the old file (if any) untouched.  Gzip output is deterministic (mtime 0,
    no embedded file name), so equal arrays give byte-identical files.

    Args:
        path: destination; the name is not used to decide whether to compress.
        array: uint8 array (or integers in 0..255) with 1..255 dimensions; MNIST uses (N,) for
            labels and (N, 28, 28) for images.
        gzip: compress with gzip (default) or write the raw IDX bytes.

    Returns:
        the destination as a ``Path``.

    Raises:
        DataError: the array cannot be stored as uint8 IDX (dtype, values, dimensions), or the
            destination cannot be written.
    """
    path = Path(path)
    a = np.asarray(array)
    if a.dtype != np.uint8:
        if a.dtype.kind not in "iub" or (a.size and (int(a.min()) < 0 or int(a.max()) > 255)):
            raise DataError(f"{path}: write_idx stores uint8 only; got dtype {a.dtype} with these values")
        a = a.astype(np.uint8)
    if not 1 <= a.ndim <= 255:
        raise DataError(f"{path}: write_idx needs 1..255 dimensions, got {a.ndim}")
    if any(s > _MAX_DIM for s in a.shape):
        raise DataError(f"{path}: a size in {a.shape} does not fit the uint32 size field")
    header = bytes([0, 0, UBYTE_CODE, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    payload = np.ascontiguousarray(a).tobytes()

    directory = path.parent
    try:
        fd, tmp_name = temp_beside(directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if gzip:
                with _gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as g:
                    g.write(header)
                    g.write(payload)
            else:
                f.write(header)
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except OSError as e:
        _remove_quietly(tmp_name)
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        _remove_quietly(tmp_name)
        raise
    return path


# ----------------------------------------------------------------------------------------------
# internals


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _read_exact(stream, n: int, path: Path, what: str) -> bytearray:
    """Read exactly ``n`` bytes from ``stream`` in chunks; DataError if the stream ends first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            raise DataError(f"{path}: truncated {what}: {len(buf)} of {n} bytes present")
        buf += chunk
    return buf


def _read(path: Path, expect_ndim: int | None) -> np.ndarray:
    """Open ``path`` (raw or gzip), then parse and validate it; see the module docstring."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise DataError(f"{path}: empty file")
            is_gzip = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            if not is_gzip:
                return _parse(f, path, expect_ndim, limit=size, exact=size)
            with _gzip.GzipFile(fileobj=f, mode="rb") as g:
                try:
                    return _parse(g, path, expect_ndim, limit=_GZIP_MAX_RATIO * size, exact=None)
                except EOFError:
                    raise DataError(f"{path}: truncated gzip stream (ends before its end marker)") from None
                except _GZIP_ERRORS as e:
                    raise DataError(f"{path}: corrupted gzip stream: {e}") from None
        except OSError as e:  # a read error of the file itself (gzip errors are converted above)
            raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _parse(stream, path: Path, expect_ndim: int | None, limit: int, exact: int | None) -> np.ndarray:
    """Parse an IDX byte stream.

    Args:
        stream: binary stream positioned at the first header byte (a raw file or a gzip reader).
        expect_ndim: required number of dimensions (3 images, 1 labels) or None for any.
        limit: the most bytes the file can possibly hold after decompression.
        exact: for raw files, the file length, which header + payload must equal exactly.
    """
    magic = _read_exact(stream, 4, path, "header")
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"{path}: not an IDX file: magic number 0x{bytes(magic).hex()} does not start with 0x0000"
        )
    if magic[2] != UBYTE_CODE:
        raise DataError(f"{path}: IDX dtype code 0x{magic[2]:02x} not supported (only 0x08, unsigned byte)")
    ndim = magic[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    if expect_ndim is not None and ndim != expect_ndim:
        want = IMAGES_MAGIC if expect_ndim == 3 else LABELS_MAGIC if expect_ndim == 1 else None
        got = int.from_bytes(magic, "big")
        want_txt = f" (magic {want})" if want is not None else ""
        raise DataError(
            f"{path}: magic number {got} means {ndim} dimension(s); expected {expect_ndim}{want_txt}"
        )
    shape = struct.unpack(f">{ndim}I", bytes(_read_exact(stream, 4 * ndim, path, "header")))
    header_len = 4 + 4 * ndim
    count = 1
    for s in shape:  # Python ints: no overflow, however large the claim
        count *= s
    if exact is not None and header_len + count != exact:
        if header_len + count > exact:
            raise DataError(
                f"{path}: truncated: header declares shape {shape} ({count} bytes of data) "
                f"but the file holds only {max(exact - header_len, 0)}"
            )
        raise DataError(
            f"{path}: {exact - header_len - count} trailing bytes after the {count} bytes of data "
            f"declared by shape {shape}"
        )
    if header_len + count > limit:
        raise DataError(
            f"{path}: header declares shape {shape} ({count} bytes), more than a "
            f"{limit // _GZIP_MAX_RATIO}-byte gzip file can hold"
        )
    payload = _read_exact(stream, count, path, f"data (shape {shape})")
    if stream.read(1):
        raise DataError(f"{path}: trailing bytes after the {count} bytes of data declared by shape {shape}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)
