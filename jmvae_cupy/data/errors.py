"""The data package's exception types.

Every problem a user can cause with data (a missing, truncated, corrupted or mislabelled file, a
failed download, an argument that does not fit the data) raises :class:`DataError` with a
one-line message that names the file (or URL) and says what is wrong.  It subclasses
``ValueError`` so that generic ``except ValueError`` handlers still catch it; command-line entry
points print it as ``error: <message>`` and exit with status 2.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad data, or a data file/URL that cannot be used: the message is one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the command line's signal handler.  A KeyboardInterrupt, so every
    ``except KeyboardInterrupt`` that keeps the work done so far (``prepare`` flushes the images
    already decoded, ``download`` removes its half-written file) does the same for it; the command
    line reports it as ``error: terminated`` and exits with status 143 (128 + SIGTERM)."""
