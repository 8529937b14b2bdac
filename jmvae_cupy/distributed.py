"""Data-parallel training across processes / GPUs / machines (docs/distributed.md), and the
fused mean that it shares with gradient accumulation (``train --micro-batches K``).

``mpiexec -n P python -m jmvae_cupy.train mnist ... --distributed`` runs P ranks.  Each rank
draws the same global batch (identical data-RNG stream), keeps its contiguous shard of B/P rows,
computes the gradient of its local batch mean, and the gradients (plus the batch-norm running
statistics, the loss, the terms and a stop flag) are averaged across ranks in ONE collective on one
preallocated flat buffer per step (:class:`FlatBuffer`, :class:`StepMean`).  With equal shards the
mean over ranks of local means is the global mean, so every rank applies the single-process update
for batch B.  Only rank 0 writes files.

One process with ``--micro-batches K`` computes the same thing for K contiguous chunks of its batch,
one after the other, with the same arithmetic: :func:`mean_in_order_` adds the chunks' buffers left
to right and divides by K.  ``--ordered-reduce`` makes the ranks use that arithmetic too (an
all-gather of the buffer, then :func:`mean_in_order_` over the P rows in rank order), so P ranks
with ``--exact-noise --ordered-reduce`` are bit-identical to one process with ``--micro-batches P``.

The communicator (:class:`Comm`) hides the transport; everything above it is one code path:

* :class:`Comm`      one process (no-op; never used by a plain run);
* :class:`MpiComm`   mpi4py on host buffers (a device buffer is staged through the host);
* :class:`NcclComm`  NCCL (``cupy.cuda.nccl``) on device buffers, its unique id sent over MPI,
  MPI kept for objects, barriers and abort (checked on a GPU by tests/test_distributed.py's NCCL cases).

NumPy vs CuPy is decided here only, and cupy is reached only through
``backend.cupy_module()``.

Why one file of ~500 lines: its parts share one invariant -- every rank issues the same collectives,
in the same order, on buffers of the same layout -- which is checked by reading the communicators,
the fused buffer and :class:`DataParallel` that drives them together.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
import time
import zlib

import numpy as np

from .backend import asnumpy, cupy_module, get_array_module, is_gpu_array, select_device, to_device_async
from .rng import Rng


class DistributedError(RuntimeError):
    """A problem setting up or running data-parallel training (one-line message)."""


# ---------------------------------------------------------------------------- the shared arithmetic
def rows_of(a, part: int, parts: int):
    """Part ``part`` of ``parts`` contiguous equal parts of the rows of ``a`` (N, ...):
    rows [part N/parts, (part+1) N/parts).  A rank's shard, a micro-batch, a slice of the noise."""
    n = len(a) // parts
    return a[part * n:(part + 1) * n]


def mean_in_order_(out, rows):
    """In place: ``out`` <- (r_0 + r_1 + ... + r_{K-1}) / K, added strictly left to right, then divided.

    ``rows``: K arrays of ``out``'s shape, in order: the rows of a (K, n) array (an all-gather) or
    a generator (micro-batches, computed as they are asked for; ``out`` itself may come first).
    Floating-point addition is not associative, so the order fixes the bits: every caller of this
    function with the same rows gets the same result, whatever the transport.  Returns ``out``.
    """
    k = 0
    for k, r in enumerate(rows, 1):
        if k == 1:
            if r is not out:
                out[...] = r
        else:
            out += r
    if k == 0:
        raise ValueError("mean_in_order_: no rows")
    if k > 1:  # (K = 1, plain --distributed: no pass over the buffer to divide by 1)
        out /= k
    return out


# ---------------------------------------------------------------------------- communicators
class Comm:
    """One process: every collective is a no-op (P = 1)."""

    backend = "single"

    def __init__(self):
        self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1

    def allreduce_mean_(self, buf):
        """In place: ``buf`` <- mean over ranks of ``buf`` (a contiguous 1-D array).  Returns ``buf``.
        The transport adds the P buffers in an order of its choosing (a tree; it may depend on P and
        on the buffer's size): the result is the mean up to rounding."""
        return buf

    def allreduce_mean_ordered_(self, buf):
        """In place: ``buf`` <- ``mean_in_order_`` of the ranks' ``buf`` (n,) in rank order, the same
        bits on every rank and as one process adding P micro-batches.  One all-gather into a
        preallocated (P, n) buffer: P times the bytes received of an all-reduce's result."""
        return buf

    def broadcast_(self, buf, root: int = 0):
        """In place: ``buf`` <- rank ``root``'s ``buf``.  Returns ``buf``."""
        return buf

    def bcast_obj(self, obj, root: int = 0):
        """A picklable object from ``root`` to every rank."""
        return obj

    def allgather_obj(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1):
        """End the whole job now (every rank).  Never returns."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class MpiComm(Comm):
    """mpi4py, on host buffers.  A CuPy buffer is copied to the host and back (use NCCL on GPUs)."""

    backend = "mpi"

    def __init__(self, mpi_comm=None):
        from mpi4py import MPI  # noqa: PLC0415  (optional dependency: pip install -e ".[distributed]")

        self.MPI = MPI
        self.comm = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    def allreduce_mean_(self, buf):
        host = asnumpy(buf)  # the buffer itself on the CPU (no copy)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        host /= self.size
        if is_gpu_array(buf):
            buf.set(host)
        return buf

    def allreduce_mean_ordered_(self, buf):
        host = asnumpy(buf)
        gathered = _gather_buffer(self, host)  # (P, n), row r = rank r's buffer
        self.comm.Allgather(host, gathered)
        mean_in_order_(host, gathered)
        if is_gpu_array(buf):
            buf.set(host)
        return buf

    def broadcast_(self, buf, root: int = 0):
        host = asnumpy(buf)
        self.comm.Bcast(host, root=root)
        if is_gpu_array(buf):
            buf.set(host)
        return buf

    def bcast_obj(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def allgather_obj(self, obj) -> list:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1):
        sys.stdout.flush()
        sys.stderr.flush()
        # MPI_Abort makes mpiexec kill every rank at once; give its I/O forwarding a moment to pass
        # on the error line just written (under load it was sometimes lost).
        time.sleep(0.5)
        self.comm.Abort(code)
        os._exit(code)  # not reached


def nccl_module():
    """``cupy.cuda.nccl`` when cupy is installed and libnccl loads, else None."""
    cp = cupy_module()
    if cp is None:
        return None
    try:
        nccl = importlib.import_module(cp.__name__ + ".cuda.nccl")
    except Exception:
        return None
    return nccl if getattr(nccl, "available", False) else None


def _gather_buffer(comm, buf):
    """The (P, n) receive buffer of ``comm``'s all-gathers of ``buf`` (n,): allocated once, kept."""
    xp = get_array_module(buf)
    g = getattr(comm, "_gathered", None)
    if g is None or g.shape != (comm.size, buf.size) or g.dtype != buf.dtype or get_array_module(g) is not xp:
        g = comm._gathered = xp.empty((comm.size, buf.size), dtype=buf.dtype)
    return g


# the names NcclComm calls in cupy.cuda.nccl (tests/test_distributed.py checks they exist)
NCCL_NAMES = ("get_unique_id", "NcclCommunicator", "NCCL_SUM", "NCCL_FLOAT32", "NCCL_FLOAT64")
NCCL_COMM_METHODS = ("allReduce", "allGather", "broadcast", "abort")


class NcclComm(MpiComm):
    """NCCL all-reduce / broadcast on device (CuPy) buffers; MPI for setup, objects, barrier, abort.

    One GPU per rank: the device was chosen by :func:`init_distributed` (local rank) before this
    is built.  Built on cupy.cuda.nccl.NcclCommunicator; the NCCL cases of tests/test_distributed.py
    (GPU only, run by bench/gpu_acceptance.sh) check it.
    """

    backend = "nccl"

    def __init__(self, nccl, mpi_comm=None):
        super().__init__(mpi_comm)
        self.nccl, self.cp = nccl, cupy_module()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.comm.bcast(uid, root=0)
        self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def _args(self, buf):
        if not is_gpu_array(buf):
            raise DistributedError("the NCCL communicator needs device (CuPy) buffers")
        if not buf.flags.c_contiguous:
            raise DistributedError("the NCCL communicator needs contiguous buffers")
        return buf.data.ptr, buf.size, self._dtypes[np.dtype(buf.dtype)], self.cp.cuda.get_current_stream().ptr

    def allreduce_mean_(self, buf):
        ptr, n, dt, stream = self._args(buf)
        self.nccl_comm.allReduce(ptr, ptr, n, dt, self.nccl.NCCL_SUM, stream)
        buf /= self.size  # queued on the same stream: after the reduction
        return buf

    def allreduce_mean_ordered_(self, buf):
        ptr, n, dt, stream = self._args(buf)
        gathered = _gather_buffer(self, buf)  # (P, n) on the device
        self.nccl_comm.allGather(ptr, gathered.data.ptr, n, dt, stream)  # n elements from each rank
        mean_in_order_(buf, gathered)  # P - 1 element-wise kernels on the same stream
        return buf

    def broadcast_(self, buf, root: int = 0):
        ptr, n, dt, stream = self._args(buf)
        self.nccl_comm.broadcast(ptr, ptr, n, dt, root, stream)
        return buf

    def barrier(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()
        super().barrier()

    def abort(self, code: int = 1):
        try:
            self.nccl_comm.abort()
        except Exception:
            pass
        super().abort(code)


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def size_thread_pools(local_size: int, cores: int | None = None) -> str:
    """Give this rank its share of its node's cores: BLAS (through threadpoolctl) and Numba each get
    ``cores // local_size`` threads (at least 1), so that P ranks on a node run P x that many
    threads, not P x all the cores.  A thread count set in the environment (``THREAD_VARS``) wins:
    then nothing is changed.  Returns what was chosen, for the log."""
    import numba  # noqa: PLC0415  (the pools are sized before the first parallel kernel runs)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    user = [v for v in THREAD_VARS if os.environ.get(v)]
    if user:
        return f"threads as set in the environment ({', '.join(f'{v}={os.environ[v]}' for v in user)})"
    node_cores = cores or os.cpu_count() or 1
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else node_cores
    n = max(1, min(mine, node_cores // max(1, local_size)))
    threadpool_limits(limits=n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return (f"{n} BLAS / Numba thread{'s' if n > 1 else ''} per rank ({node_cores} cores, {local_size} ranks on "
            f"this node; set OMP_NUM_THREADS to override)")


def init_distributed(device=None) -> Comm:
    """The job's communicator, launched by mpiexec.  On a GPU, rank r of a node uses GPU
    ``local_rank % visible GPUs`` (with one visible GPU per rank via CUDA_VISIBLE_DEVICES: that one)."""
    try:
        mpi = MpiComm()
    except ImportError:
        raise DistributedError('--distributed needs mpi4py and an MPI: pip install -e ".[distributed]" '
                               "and launch with mpiexec -n P") from None
    cp = cupy_module()
    if cp is not None and (device or os.environ.get("JMVAE_DEVICE", "auto")).lower() != "cpu":
        try:  # choose this rank's GPU before anything creates a CUDA context
            n = cp.cuda.runtime.getDeviceCount()
            if n > 0:
                cp.cuda.runtime.setDevice(mpi.local_rank % n)
        except Exception:
            pass  # no usable GPU: select_device decides (auto -> CPU, gpu -> one-line error)
    xp = select_device(device)
    chosen = size_thread_pools(mpi.local_size)
    if mpi.rank == 0:
        print(f"distributed: {mpi.size} ranks; {chosen}", file=sys.stderr)
    if xp is np:
        return mpi
    nccl = nccl_module()
    if nccl is None:
        if mpi.rank == 0:
            print("warning: NCCL is not available (pip install nvidia-nccl-cu13): gradients go through the "
                  "host over MPI", file=sys.stderr)
        return mpi
    return NcclComm(nccl, mpi.comm)


# ---------------------------------------------------------------------------- the fused buffer
class FlatBuffer:
    """One preallocated contiguous 1-D buffer holding named arrays (e.g. gradients) followed by
    ``n_scalars`` scalars: ``pack`` copies into it, ``unpack`` returns reshaped views of it."""

    def __init__(self, shapes: dict, n_scalars: int, dtype, xp):
        self.names = sorted(shapes)
        sizes = [int(np.prod(shapes[k], dtype=np.int64)) for k in self.names]
        total = sum(sizes)
        self.buf = xp.zeros(total + n_scalars, dtype=dtype)
        self.views, off = {}, 0
        for k, n in zip(self.names, sizes):
            self.views[k] = self.buf[off:off + n].reshape(shapes[k])
            off += n
        self.scalars = self.buf[total:]

    def pack(self, arrays: dict, scalars=()):
        if set(arrays) != set(self.names):
            raise DistributedError(f"flat buffer: got arrays {sorted(arrays)}, expected {self.names}")
        for k in self.names:
            self.views[k][...] = arrays[k]
        for i, s in enumerate(scalars):
            self.scalars[i] = s
        return self.buf

    def unpack(self):
        """({name: view}, scalars as a host float64 array)."""
        return dict(self.views), np.asarray(asnumpy(self.scalars), dtype=np.float64)


STATE = "state/"  # the prefix of the running statistics' names in the step's buffer


class StepMean:
    """The mean of one training step's results over its *parts*, in one fused buffer.

    A part is one ``loss_and_grads`` call: one of this process's K micro-batches
    (``train --micro-batches K``) or its only batch, which with ``--distributed`` is the rank's shard.
    Each part gives ``(loss, terms, grads, state)``: the loss and terms (0-d), the gradients
    {name: array}, and the batch-norm running statistics {name: array} its forward left.  Layout of
    the buffer (:class:`FlatBuffer`, built at the first step, reused)::

        [ grads by name | "state/" + state by name | loss, terms by name, stop ]    (n,)

    The parts of this process are averaged with :func:`mean_in_order_` (part 0 packed into the
    buffer itself, each later one into a scratch buffer of the same layout and added), then the
    ranks with ONE collective on the same buffer: ``comm.allreduce_mean_`` or, ``ordered``,
    ``comm.allreduce_mean_ordered_`` (the same left-to-right arithmetic over ranks).
    """

    def __init__(self, comm: Comm | None = None, ordered: bool = False):
        self.comm, self.ordered = comm, ordered
        self.acc = self.scratch = None
        self.keys: list = []

    def _packed(self, parts, stop: float):
        """Each part packed into a buffer of the step's layout, in order (the generator of rows)."""
        for i, (loss, terms, grads, state) in enumerate(parts):
            arrays = {**grads, **{STATE + k: v for k, v in state.items()}}
            if self.acc is None:
                xp = get_array_module(*grads.values())
                self.keys = sorted(terms)
                self.acc = FlatBuffer({k: v.shape for k, v in arrays.items()}, len(self.keys) + 2,
                                      next(iter(grads.values())).dtype, xp)
            if sorted(terms) != self.keys:
                raise DistributedError(f"step buffer: got terms {sorted(terms)}, expected {self.keys}")
            if i > 0 and self.scratch is None:
                self.scratch = FlatBuffer({k: v.shape for k, v in self.acc.views.items()}, len(self.keys) + 2,
                                          self.acc.buf.dtype, get_array_module(self.acc.buf))
            yield (self.acc if i == 0 else self.scratch).pack(arrays, [loss] + [terms[k] for k in self.keys] + [stop])

    def __call__(self, parts, stop: bool = False):
        """``parts``: an iterable of ``(loss, terms, grads, state)``, one per part, in part order (a
        generator computes each part when its turn comes: one part's activations live at a time).
        ``stop``: this process asks to stop.  Returns ``(loss, terms, grads, state, stop_any)``: host
        floats, {name: float}, the mean gradients and running statistics as views of the buffer (valid
        until the next step), and whether any rank asked to stop."""
        rows = self._packed(parts, float(stop))
        first = next(rows)  # part 0, packed into self.acc (built now at the first step)
        mean_in_order_(self.acc.buf, itertools.chain([first], rows))
        if self.comm is not None:
            (self.comm.allreduce_mean_ordered_ if self.ordered else self.comm.allreduce_mean_)(self.acc.buf)
        views, s = self.acc.unpack()
        grads = {k: v for k, v in views.items() if not k.startswith(STATE)}
        state = {k[len(STATE):]: v for k, v in views.items() if k.startswith(STATE)}
        return s[0], {k: s[1 + i] for i, k in enumerate(self.keys)}, grads, state, bool(s[-1] > 0)


# ---------------------------------------------------------------------------- noise
class GlobalNoiseRng:
    """The noise of part ``rank`` of ``size`` equal parts of a batch, as one stream would draw it for
    the whole batch: each draw of shape (N, ...) draws (N * size, ...) from ``rng`` and keeps rows
    [rank N, (rank+1) N).  Used by --exact-noise (rank r of P, so that P ranks reproduce one process)
    and by --micro-batches (chunk k of K, the stream rewound to the step's start for each chunk).
    Costs ``size`` times the noise draws."""

    def __init__(self, rng: Rng, rank: int, size: int):
        self.rng, self.rank, self.size = rng, rank, size

    def _slice(self, a, xp):
        """This part's rows of the host draw ``a``, on ``xp``'s device without making the host wait
        (as ``Rng`` itself copies: backend.to_device_async)."""
        return to_device_async(rows_of(a, self.rank, self.size), xp)

    def normal(self, shape, dtype=np.float32, xp=np):
        shape = tuple(shape)
        return self._slice(self.rng.normal((shape[0] * self.size,) + shape[1:], dtype, np), xp)

    def uniform(self, shape, dtype=np.float32, xp=np):
        shape = tuple(shape)
        return self._slice(self.rng.uniform((shape[0] * self.size,) + shape[1:], dtype, np), xp)

    def get_state(self):
        return self.rng.get_state()

    def set_state(self, state):
        self.rng.set_state(state)


# ---------------------------------------------------------------------------- the trainer's helper
def _crc(arrays: dict, crc: int = 0) -> int:
    for k in sorted(arrays):
        crc = zlib.crc32(k.encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(asnumpy(arrays[k])).tobytes(), crc)
    return crc


class DataParallel:
    """What the Trainer does differently with P ranks (train/trainer.py calls it only when --distributed).

    exact_noise: every rank draws the global batch's noise and keeps its rows (:class:`GlobalNoiseRng`).
    ordered_reduce: the step's buffer is averaged with ``comm.allreduce_mean_ordered_`` (rank order).
    """

    def __init__(self, comm: Comm, exact_noise: bool = False, ordered_reduce: bool = False):
        self.comm, self.exact_noise, self.ordered_reduce = comm, exact_noise, ordered_reduce
        self.stop_agreed = False

    def noise_rng(self, seed: int):
        """Exact mode: the single-process stream, sliced.  Else a stream of (seed, rank): P ranks do
        NOT reproduce the noise of one process (same distribution, other draws)."""
        if self.exact_noise:
            return GlobalNoiseRng(Rng([seed, 2]), self.comm.rank, self.comm.size)
        return Rng([seed, 2, 1, self.comm.rank])

    def shard(self, a):
        """This rank's contiguous B/P rows of the global batch ``a``."""
        return rows_of(a, self.comm.rank, self.comm.size)

    def step_mean(self) -> StepMean:
        """The trainer's fused mean of a step over this rank's parts and then over the ranks."""
        return StepMean(self.comm, ordered=self.ordered_reduce)

    def agree_stop(self, stop_any: bool) -> bool:
        """Whether every rank stops at this step boundary: when any rank asked to (the flag was
        averaged in the step's buffer, so every rank holds the same value)."""
        self.stop_agreed = stop_any
        return stop_any

    def check_consistent(self, when: str, arrays: list, scalars: tuple) -> None:
        """A cheap checksum all-gather: the dicts of arrays (parameters, state; with --gan the
        discriminator's too) and the scalars (optimiser steps, the data-RNG state) must be identical
        on every rank (same seed; averaged updates and running statistics).  Raises on every rank
        if not."""
        crc = 0
        for d in arrays:
            crc = _crc(d, crc)
        crc = zlib.crc32(repr(scalars).encode(), crc)
        crcs = self.comm.allgather_obj(crc)
        if len(set(crcs)) > 1:
            raise DistributedError(f"{when}: parameters / state differ across ranks (checksums {crcs})")

    def checkpoint_meta(self, noise_state, meta: dict):
        """Collective: gather every rank's noise-RNG state ``noise_state``.  The meta to write on rank
        0, None elsewhere (other ranks write nothing)."""
        noise = self.comm.allgather_obj(noise_state)
        if self.comm.rank != 0:
            return None
        return {**meta, "noise_rng_ranks": noise}

    def noise_state(self, meta: dict):
        """This rank's noise-RNG state from a checkpoint's meta."""
        states = meta.get("noise_rng_ranks")
        if states is None or len(states) != self.comm.size:
            raise DistributedError("--resume: the checkpoint holds no noise-RNG state for "
                                   f"{self.comm.size} ranks")
        return states[self.comm.rank]
