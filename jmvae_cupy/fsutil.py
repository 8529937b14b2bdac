"""Files that appear whole or not at all: the temporary file every atomic write starts from.

An atomic write creates a temporary file in the destination's directory (same file system, so
the final ``os.replace`` is an atomic rename), writes and fsyncs it, then renames it over the
destination.  ``tempfile.mkstemp`` creates its file with mode 0600, which would leave every
checkpoint, PNG and data file readable by its owner only; :func:`temp_beside` gives the file the
mode a plain ``open(path, "w")`` would (0666 less the process umask).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

try:
    import fcntl
except ImportError:  # (not POSIX: no locks)
    fcntl = None


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_beside(directory, prefix: str, suffix: str = ".tmp"):
    """A new temporary file in ``directory``: (open file descriptor, path), with the default mode."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    os.fchmod(fd, _default_mode())
    return fd, path


def probe_writable(directory, suffix: str = ".tmp") -> None:
    """Create and remove a temporary file in ``directory`` (what every atomic write there does
    first): raises the OSError an atomic write would meet, before any work is spent."""
    fd, path = temp_beside(directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    os.unlink(path)


def try_lock(path):
    """Open ``path`` (created if missing) and take an exclusive ``flock`` on it without waiting.

    Returns the open file (keep it: closing it, or the process ending however it ends, releases
    the lock), or None when another process holds the lock.  Where the file system has no locks
    (or the platform no ``fcntl``), the file is returned unlocked: the work goes on unguarded
    rather than not at all.  Raises the OSError of ``open`` (a missing or read-only directory)."""
    f = open(path, "a+")
    if fcntl is None:
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except OSError:
        pass  # (ENOLCK and the like: a file system without locks)
    return f


@contextlib.contextmanager
def replacing(path, suffix: str = ".tmp", prefix: str = ".tmp-"):
    """Write a new version of ``path`` atomically: yields a binary file open in a temporary file
    beside it; when the block ends without error the data is fsynced and the file renamed over
    ``path``, and on any error (Ctrl-C included) the temporary file is removed.

        with replacing("out.png", suffix=".png") as f:
            fig.savefig(f, format="png")
    """
    fd, tmp = temp_beside(os.path.dirname(os.path.abspath(path)), prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    """Replace the file ``path`` by ``text`` (UTF-8) atomically."""
    with replacing(path) as f:
        f.write(text.encode("utf-8"))


def write_json(path, obj) -> None:
    """``obj`` as indented JSON (sorted keys), written atomically."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True))
