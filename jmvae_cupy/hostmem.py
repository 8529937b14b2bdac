"""Host-memory policy of a training process: keep freed memory for the next step.

A training step allocates and frees the same arrays every time: on MNIST a few dozen of 0.1-2 MB
(activations, gradients), on CelebA im2col matrices of up to 67 MB.  With glibc's default policy
the heap's top is returned to the kernel when such an array is freed (``M_TRIM_THRESHOLD``), and
arrays above a threshold (at most 32 MiB) are mmap-ed afresh on every allocation
(``M_MMAP_THRESHOLD``; NumPy asks for transparent huge pages on them, which the kernel may compact
memory for on the first touch), so every step touches new pages.  Measured by
``python bench/micro.py heap`` (docs/performance.md): the MNIST JMVAE-kl step at batch 100, after
torch had run in the process, ~2,800 minor page faults per step and ~25 % slower, with 0 faults
alone (whether it happens depends on what the process allocated before); the CelebA encoder's
second im2col, 14 ms instead of 5-7 ms.  :func:`keep_freed_memory` removes the luck: no array is mmap-ed on its own
(``M_MMAP_MAX`` = 0; glibc still falls back to mmap if the heap cannot grow), and memory freed by
a step stays in the process, so the next step reuses it.

The cost: the process keeps its peak heap (it does not shrink after a large temporary).  That is
what a training run wants; a library must not decide it for its host process, so only the
command-line entry points (``python -m jmvae_cupy.train``, the benchmarks) call it.  No-op (False)
where the C library is not glibc; on a GPU the arrays live in CuPy's pool and this does not matter.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

TRIM_THRESHOLD = 1 << 30

_applied = None


def keep_freed_memory() -> bool:
    """Ask glibc to serve every array from the heap (no per-array mmap) and to keep freed memory
    (trim threshold 1 GiB).  Idempotent.  Returns True when applied, False when this is not glibc."""
    global _applied
    if _applied is None:
        _applied = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _applied = all(mallopt(param, value) for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    return _applied
