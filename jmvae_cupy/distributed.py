"""Data-parallel training across processes / GPUs / machines (docs/distributed.md).

``mpiexec -n P python -m jmvae_cupy.train mnist ... --distributed`` runs P ranks.  Each rank
draws the same global batch (identical data-RNG stream), keeps its contiguous shard of B/P rows,
computes the gradient of its local batch mean, and the gradients (plus the loss, the terms and a
stop flag) are averaged across ranks in ONE all-reduce of one preallocated flat buffer per step
(:class:`FlatBuffer`).  With equal shards the mean over ranks of local means is the global mean, so
every rank applies the single-process update for batch B.  Only rank 0 writes files.

The communicator (:class:`Comm`) hides the transport; everything above it is one code path:

* :class:`Comm`      one process (no-op; never used by a plain run);
* :class:`MpiComm`   mpi4py on host buffers (a device buffer is staged through the host);
* :class:`NcclComm`  NCCL (``cupy.cuda.nccl``) on device buffers, its unique id sent over MPI,
  MPI kept for objects, barriers and abort.  UNTESTED ON HARDWARE (written from CuPy's API).

NumPy vs CuPy is decided here only, and cupy is reached only through
``backend.cupy_module()``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import zlib

import numpy as np

from .backend import asnumpy, cupy_module, get_array_module, is_gpu_array, select_device, to_device
from .rng import Rng

# test hook: the rank named here raises at its first training step (tests/test_distributed.py)
FAIL_RANK_ENV = "JMVAE_TEST_FAIL_RANK"


class DistributedError(RuntimeError):
    """A problem setting up or running data-parallel training (one-line message)."""


# ---------------------------------------------------------------------------- communicators
class Comm:
    """One process: every collective is a no-op (P = 1)."""

    backend = "single"

    def __init__(self):
        self.rank, self.size, self.local_rank = 0, 1, 0

    def allreduce_mean_(self, buf):
        """In place: ``buf`` <- mean over ranks of ``buf`` (a contiguous 1-D array).  Returns ``buf``."""
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
        self.local_rank = node.Get_rank()
        node.Free()

    def allreduce_mean_(self, buf):
        host = asnumpy(buf)  # the buffer itself on the CPU (no copy)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        host /= self.size
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


# the names NcclComm calls in cupy.cuda.nccl (tests/test_distributed.py checks they exist)
NCCL_NAMES = ("get_unique_id", "NcclCommunicator", "NCCL_SUM", "NCCL_FLOAT32", "NCCL_FLOAT64")
NCCL_COMM_METHODS = ("allReduce", "broadcast", "abort")


class NcclComm(MpiComm):
    """NCCL all-reduce / broadcast on device (CuPy) buffers; MPI for setup, objects, barrier, abort.

    One GPU per rank: the device was chosen by :func:`init_distributed` (local rank) before this
    is built.  UNTESTED ON HARDWARE: written from the CuPy API (cupy.cuda.nccl.NcclCommunicator).
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


# ---------------------------------------------------------------------------- noise
class GlobalNoiseRng:
    """Debug / test mode (--exact-noise): every rank draws the noise of the whole global batch from
    the single-process stream and keeps its rows, so P ranks reproduce one process exactly
    (up to summation order).  Costs P times the noise draws."""

    def __init__(self, rng: Rng, rank: int, size: int):
        self.rng, self.rank, self.size = rng, rank, size

    def _slice(self, a, shape, xp):
        n = shape[0]
        return to_device(a[self.rank * n:(self.rank + 1) * n], xp)

    def normal(self, shape, dtype=np.float32, xp=np):
        shape = tuple(shape)
        return self._slice(self.rng.normal((shape[0] * self.size,) + shape[1:], dtype, np), shape, xp)

    def uniform(self, shape, dtype=np.float32, xp=np):
        shape = tuple(shape)
        return self._slice(self.rng.uniform((shape[0] * self.size,) + shape[1:], dtype, np), shape, xp)

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
    """What the Trainer does differently with P ranks (train.py calls it only when --distributed)."""

    def __init__(self, comm: Comm, exact_noise: bool = False):
        self.comm, self.exact_noise = comm, exact_noise
        self.flat = None
        self.stop_agreed = False
        self._state_dirty = False
        fail = os.environ.get(FAIL_RANK_ENV)
        self._fail = fail is not None and fail.strip() == str(comm.rank)

    def noise_rng(self, seed: int):
        """Exact mode: the single-process stream, sliced.  Else a stream of (seed, rank): P ranks do
        NOT reproduce the noise of one process (same distribution, other draws)."""
        if self.exact_noise:
            return GlobalNoiseRng(Rng([seed, 2]), self.comm.rank, self.comm.size)
        return Rng([seed, 2, 1, self.comm.rank])

    def shard(self, a):
        """This rank's contiguous B/P rows of the global batch ``a``."""
        n = len(a) // self.comm.size
        return a[self.comm.rank * n:(self.comm.rank + 1) * n]

    def allreduce_step(self, trainer, loss, terms, grads):
        """Average gradients, loss and terms over ranks in one fused all-reduce; agree on stopping."""
        if self._fail:
            raise RuntimeError(f"injected failure ({FAIL_RANK_ENV}={self.comm.rank})")
        keys = sorted(terms)
        if self.flat is None:
            xp = get_array_module(*grads.values())
            self.flat = FlatBuffer({k: g.shape for k, g in grads.items()}, len(keys) + 2, trainer.dtype, xp)
        stop = 0.0 if trainer.stop_requested is None else 1.0
        self.flat.pack(grads, [loss] + [terms[k] for k in keys] + [stop])
        self.comm.allreduce_mean_(self.flat.buf)
        grads, s = self.flat.unpack()
        self.stop_agreed = bool(s[-1] > 0)
        if self.stop_agreed and trainer.stop_requested is None:
            trainer.stop_requested = "stop requested on another rank"
        self._state_dirty = True
        return s[0], {k: s[1 + i] for i, k in enumerate(keys)}, grads

    def sync_state(self, trainer):
        """Average the batch-norm running statistics over ranks (they differ: local batches)."""
        if not self._state_dirty or not trainer.model.state:
            return
        state = trainer.model.state
        flat = FlatBuffer({k: v.shape for k, v in state.items()}, 0, trainer.dtype, get_array_module(*state.values()))
        flat.pack(state)
        self.comm.allreduce_mean_(flat.buf)
        for k, v in flat.unpack()[0].items():
            state[k][...] = v
        self._state_dirty = False

    def check_consistent(self, trainer, when: str):
        """A cheap checksum all-gather: parameters, state, optimizer step and data-RNG state must be
        identical on every rank (same seed; averaged updates).  Raises on every rank if not."""
        crc = _crc(trainer.model.params)
        crc = _crc(trainer.model.state, crc)
        crc = zlib.crc32(repr((trainer.opt.t, trainer.data_rng.get_state())).encode(), crc)
        crcs = self.comm.allgather_obj(crc)
        if len(set(crcs)) > 1:
            raise DistributedError(f"{when}: parameters / state differ across ranks (checksums {crcs})")

    def epoch_end(self, trainer):
        self.sync_state(trainer)
        self.check_consistent(trainer, f"after epoch {trainer.epoch}")

    def checkpoint_meta(self, trainer, meta: dict):
        """Collective: sync the state, gather every rank's noise-RNG state.  The meta to write on
        rank 0, None elsewhere (other ranks write nothing)."""
        self.sync_state(trainer)
        noise = self.comm.allgather_obj(trainer.noise_rng.get_state())
        if self.comm.rank != 0:
            return None
        return {**meta, "noise_rng_ranks": noise}

    def restore_noise(self, trainer, meta: dict):
        states = meta.get("noise_rng_ranks")
        if states is None or len(states) != self.comm.size:
            raise DistributedError("--resume: the checkpoint holds no noise-RNG state for "
                                   f"{self.comm.size} ranks")
        trainer.noise_rng.set_state(states[self.comm.rank])
