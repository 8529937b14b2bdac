"""Randomness, passed explicitly.

Every random draw in the library comes from an :class:`Rng` handed in as an argument, so the
same seed gives the same numbers (finite-difference checks of stochastic objectives, exact
resume after a crash).  The stream is NumPy's PCG64 on the host on every device: on a GPU the
draws are copied to the device (the noise of a step is small next to its GEMMs), which keeps a
run reproducible across devices and its state a small JSON-able dict for checkpoints.  The copy
goes through pinned memory on CuPy's current stream (``backend.to_device_async``), so a draw in
the middle of a step does not make the host wait for the GPU.
"""

from __future__ import annotations

import numpy as np

from .backend import to_device_async


class Rng:
    """A seeded random stream. ``normal``/``uniform`` return arrays of namespace ``xp``."""

    def __init__(self, seed: int | None = 0):
        self.gen = np.random.Generator(np.random.PCG64(seed))

    def normal(self, shape, dtype=np.float32, xp=np):
        """Standard normal draws, shape ``shape``, as ``xp`` array of ``dtype``."""
        a = self.gen.standard_normal(shape, dtype=np.float64).astype(dtype, copy=False)
        return a if xp is np else to_device_async(a, xp)

    def uniform(self, shape, dtype=np.float32, xp=np):
        """Uniform [0, 1) draws, shape ``shape``."""
        a = self.gen.random(shape, dtype=np.float64).astype(dtype, copy=False)
        return a if xp is np else to_device_async(a, xp)

    def permutation(self, n: int) -> np.ndarray:
        """A random permutation of range(n) (host array: used for indexing data)."""
        return self.gen.permutation(n)

    def integers(self, low, high=None, size=None):
        return self.gen.integers(low, high, size=size)

    def spawn(self, key: int) -> Rng:
        """An independent child stream (e.g. per rank), determined by this stream's seed and ``key``."""
        child = Rng.__new__(Rng)
        seed_seq = np.random.SeedSequence(entropy=int(self.gen.integers(0, 2**63)), spawn_key=(key,))
        child.gen = np.random.Generator(np.random.PCG64(seed_seq))
        return child

    def get_state(self) -> dict:
        """The stream's full state (JSON-serialisable), for checkpoints."""
        return self.gen.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore a state from :meth:`get_state`; the stream continues exactly."""
        self.gen.bit_generator.state = state
