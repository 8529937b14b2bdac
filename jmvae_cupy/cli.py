"""What every command line of the package does with an error: one line on stderr, an exit status.

``guarded(body, known, status=1)`` runs ``body()`` and turns (``describe`` says how)

* an exception of the command's own kinds (``known``: TrainError, DataError, ...) into
  ``error: <message>`` (the message folded onto one line) and ``status``;
* an OSError (disk full, permission denied, a directory where a file should be, ...) into
  ``error: <file>: <reason>`` and ``status``;
* a MemoryError (NumPy's "Unable to allocate 29.8 TiB ...", CuPy's OutOfMemoryError) into
  ``error: out of memory: <message>`` and ``status``;
* Ctrl-C (KeyboardInterrupt) into ``error: interrupted`` and 130, as a shell reports SIGINT;
* a reader that closed our standard output (``... | head``) into a quiet exit 0: the reader has
  what it wanted.

Anything else is a bug and keeps its traceback.  ``on_error`` (optional) runs before the message
on every handled path, e.g. to remove an output directory that was created and is still empty.
With ``JMVAE_TRACEBACK=1`` in the environment the traceback of a handled error is printed too,
above its line (an OSError may be a bug of ours as well as a full disk).
"""

from __future__ import annotations

import os
import sys
import traceback

INTERRUPTED = 130


def one_line(e: BaseException) -> str:
    """The exception's message with its line breaks folded into spaces."""
    return " ".join(str(e).split())


def os_error_message(e: OSError) -> str:
    """``<file>: <reason>`` for an OSError that names its file (``<reason>`` alone otherwise)."""
    reason = e.strerror or one_line(e) or type(e).__name__
    return f"{e.filename}: {reason}" if e.filename is not None else reason


def describe(e: BaseException, known: tuple = (), status: int = 1):
    """(message, exit status) for an error the command lines report in one line, or None (a bug)."""
    if isinstance(e, known):
        return one_line(e), status
    if isinstance(e, MemoryError):
        return f"out of memory: {one_line(e) or type(e).__name__}", status
    if isinstance(e, OSError):
        return os_error_message(e), status
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    return None


def show_traceback_if_asked(e: BaseException) -> None:
    """Print ``e``'s traceback to stderr when JMVAE_TRACEBACK is set (to 1, or anything but 0)."""
    if os.environ.get("JMVAE_TRACEBACK", "0") not in ("", "0"):
        traceback.print_exception(type(e), e, e.__traceback__)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush into the closed pipe cannot
    fail again (and print a message of its own)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (ValueError, OSError):  # (no real stdout: nothing left to flush into a pipe)
        pass
    os.close(devnull)


def guarded(body, known: tuple = (), status: int = 1, on_error=None) -> int:
    """Run ``body()`` (returning the exit status) with the package's one-line error handling."""
    try:
        return body()
    except BrokenPipeError as e:
        if e.filename is not None:  # a named file's pipe: an error like any other
            handled = describe(e, known, status)
        else:                       # the reader of our output has gone
            _silence_stdout()
            return 0
    except BaseException as e:
        handled = describe(e, known, status)
        if handled is None:  # a bug (or SystemExit): its traceback / exit as usual
            raise
        show_traceback_if_asked(e)
    if on_error is not None:
        on_error()
    print(f"error: {handled[0]}", file=sys.stderr)
    return handled[1]
