"""The block-wide sum shared by the CUDA kernels that reduce a row per block (kernels/gauss_kl.py,
kernels/bernoulli.py): one device function, compiled into each kernel that calls it.

``block_sum()`` returns it as a Numba CUDA device function (importing numba.cuda on first use,
never at import time: see ``_dispatch.numba_cuda``).  Like the kernels, the plain function reads
``cuda`` as a module global, so that the CUDA simulator can swap in its fake module.
"""

from __future__ import annotations

import functools

from ._dispatch import numba_cuda

cuda = None  # numba.cuda, bound by block_sum()


def _block_sum(sums, t, partial):
    """The sum of every thread's ``partial`` over one block; every thread gets it.

    sums: a shared array with one slot per thread of the block (a power of two); t: the thread's
    index, cuda.threadIdx.x.  A tree: log2(block size) halving steps, each followed by a barrier,
    so every thread of the block must make the call.
    """
    sums[t] = partial
    cuda.syncthreads()
    stride = sums.shape[0] // 2
    while stride > 0:
        if t < stride:
            sums[t] += sums[t + stride]
        cuda.syncthreads()
        stride //= 2
    return sums[0]


@functools.cache
def block_sum():
    """``_block_sum`` as a CUDA device function."""
    global cuda
    cuda = numba_cuda()
    return cuda.jit(device=True)(_block_sum)
