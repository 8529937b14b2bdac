"""What every command line of the package does with an error: one line on stderr, an exit status.

``guarded(body, known, status=1)`` runs ``body()`` and turns

* an exception of the command's own kinds (``known``: TrainError, DataError, ...) into
  ``error: <message>`` (the message folded onto one line) and ``status``;
* an OSError (disk full, permission denied, a directory where a file should be, ...) into
  ``error: <file>: <reason>`` and ``status``;
* a MemoryError (NumPy's "Unable to allocate 29.8 TiB ...", CuPy's OutOfMemoryError) into
  ``error: out of memory: <message>`` and ``status``;
* Ctrl-C (KeyboardInterrupt) into ``error: interrupted`` and 130, as a shell reports SIGINT.

Anything else is a bug and keeps its traceback.  ``on_error`` (optional) runs before the message
on every handled path, e.g. to remove an output directory that was created and is still empty.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130


def one_line(e: BaseException) -> str:
    """The exception's message with its line breaks folded into spaces."""
    return " ".join(str(e).split())


def os_error_message(e: OSError) -> str:
    """``<file>: <reason>`` for an OSError that names its file (``<reason>`` alone otherwise)."""
    reason = e.strerror or one_line(e) or type(e).__name__
    return f"{e.filename}: {reason}" if e.filename is not None else reason


def guarded(body, known: tuple = (), status: int = 1, on_error=None) -> int:
    """Run ``body()`` (returning the exit status) with the package's one-line error handling."""
    try:
        return body()
    except known as e:
        message, code = one_line(e), status
    except MemoryError as e:  # (before OSError: neither is a subclass of the other, but be explicit)
        message, code = f"out of memory: {one_line(e) or type(e).__name__}", status
    except OSError as e:
        message, code = os_error_message(e), status
    except KeyboardInterrupt:
        message, code = "interrupted", INTERRUPTED
    if on_error is not None:
        on_error()
    print(f"error: {message}", file=sys.stderr)
    return code
