"""Download the full MNIST, verified, resumable, with nothing but urllib.

Used by ``python -m jmvae_cupy.data download mnist --out DIR``; never run by the tests (they
serve synthetic files from a local ``file://`` directory with a patched checksum table).

For each of the four files (:data:`jmvae_cupy.data.mnist.MNIST_FILES`):

1. if ``DIR/<name>`` exists with the right size and digests it is kept (so an interrupted run
   resumes where it stopped, file by file);
2. otherwise each mirror of :data:`MNIST_MIRRORS` is tried in turn: the bytes stream into a
   temporary file ``DIR/.<name>.XXXX.part`` while sha256 and md5 are computed, the size is
   capped at the expected size, and only a file whose size and digests all match is renamed
   (``os.replace``, atomic) to ``DIR/<name>``; a failed or mismatching attempt deletes its
   temporary file;
3. if every mirror fails, :class:`~jmvae_cupy.data.errors.DataError` says, in one line, which
   URL failed how.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from tqdm import tqdm

from ..fsutil import temp_beside
from .errors import DataError
from .mnist import MNIST_FILES, FileSpec, file_digest

#: Mirrors of the MNIST files, tried in order (the site of LeCun et al. no longer serves them
#: reliably).  Each is a prefix to which the file name is appended.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_CHUNK = 1 << 16


def verify_file(path: Path, spec: FileSpec) -> str | None:
    """None when ``path`` matches ``spec`` (size, sha256, md5, where given), else the reason."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size {size} bytes, expected {spec.size}"
    for algorithm in ("sha256", "md5"):
        want = getattr(spec, algorithm)
        if want is not None:
            got = file_digest(path, algorithm)
            if got != want.lower():
                return f"{algorithm} {got}, expected {want}"
    return None


def download_mnist(
    out_dir: str | os.PathLike,
    mirrors: Iterable[str] = MNIST_MIRRORS,
    files: Mapping[str, FileSpec] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    opener: Callable = urllib.request.urlopen,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download (or find already present) the full-MNIST files into ``out_dir``.

    Args:
        out_dir: destination directory, created if needed.
        mirrors: URL prefixes tried in order (``file://`` works too: that is how tests run).
        files: the files to fetch, ``{key: FileSpec}``; None means :data:`MNIST_FILES`.  Each
            spec needs at least one of sha256/md5.
        progress: show a tqdm progress bar per file (on stderr).
        timeout: seconds a connection may stall.
        opener: ``urlopen``-like callable ``opener(url, timeout=...)`` returning a readable
            context manager (replace it to test without a network).
        log: where one-line status messages go (default: stderr).

    Returns:
        the paths of the verified files, in the order of ``files``.

    Raises:
        DataError: the directory cannot be created, a spec has no digest, or a file could not
            be fetched from any mirror (the message lists each URL and its failure).
    """
    out = Path(out_dir)
    files = MNIST_FILES if files is None else files
    mirrors = tuple(mirrors)
    if not mirrors:
        raise DataError("download: no mirror URL given")
    if log is None:
        def log(msg: str) -> None:
            print(msg, file=sys.stderr)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the output directory: {e.strerror or e}") from None

    paths = []
    for spec in files.values():
        if spec.sha256 is None and spec.md5 is None:
            raise DataError(f"download: no checksum known for {spec.name}: refusing to download unverified")
        dest = out / spec.name
        if dest.is_file():
            reason = verify_file(dest, spec)
            if reason is None:
                log(f"{dest}: already present, checksum ok")
                paths.append(dest)
                continue
            log(f"{dest}: present but {reason}; downloading again")
        failures = []
        for mirror in mirrors:
            url = mirror if mirror.endswith("/") else mirror + "/"
            url += spec.name
            reason = _fetch(url, dest, spec, progress, timeout, opener)
            if reason is None:
                log(f"{dest}: downloaded from {url}, checksum ok")
                break
            failures.append(f"{url}: {reason}")
            log(f"{url}: {reason}")
        else:
            raise DataError(f"could not download {spec.name}: " + "; ".join(failures))
        paths.append(dest)
    return paths


def _describe(e: BaseException) -> str:
    """A short one-line description of a network/IO failure."""
    reason = getattr(e, "reason", None)  # URLError wraps the real cause in .reason
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if reason is not None:
        return str(getattr(reason, "strerror", None) or reason)
    return str(getattr(e, "strerror", None) or e) or type(e).__name__


def _fetch(url: str, dest: Path, spec: FileSpec, progress: bool, timeout: float, opener) -> str | None:
    """Fetch ``url`` to ``dest`` through a temporary file; None on success, else the reason."""
    try:
        fd, tmp = temp_beside(dest.parent, prefix=f".{spec.name}.", suffix=".part")
    except OSError as e:
        raise DataError(f"{dest.parent}: cannot write: {e.strerror or e}") from None
    try:
        sha256 = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        n = 0
        with os.fdopen(fd, "wb") as f:
            try:
                with opener(url, timeout=timeout) as response:
                    total = spec.size or getattr(response, "length", None)
                    with tqdm(total=total, unit="B", unit_scale=True, desc=spec.name,
                              disable=not progress, leave=False) as bar:
                        while True:
                            chunk = response.read(_CHUNK)
                            if not chunk:
                                break
                            n += len(chunk)
                            if spec.size is not None and n > spec.size:
                                return f"more than the expected {spec.size} bytes"
                            f.write(chunk)
                            sha256.update(chunk)
                            md5.update(chunk)
                            bar.update(len(chunk))
            except (OSError, http.client.HTTPException, ValueError) as e:
                return _describe(e)
        if spec.size is not None and n != spec.size:
            return f"got {n} bytes, expected {spec.size}"
        for name, h in (("sha256", sha256), ("md5", md5)):
            want = getattr(spec, name)
            if want is not None and h.hexdigest() != want.lower():
                return f"{name} mismatch (got {h.hexdigest()}, expected {want})"
        try:
            os.replace(tmp, dest)
        except OSError as e:
            raise DataError(f"{dest}: cannot write: {e.strerror or e}") from None
        tmp = None
        return None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
