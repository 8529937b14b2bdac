"""The training command's errors: each is one line on stderr."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A problem with the run's configuration or directory (one-line message)."""


class NonFiniteError(RuntimeError):
    """The objective or a gradient became NaN or infinite."""
