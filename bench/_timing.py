"""Timing harness shared by the benchmarks: each side (ours, torch, the GEMM floor, ...) runs in a
worker process of its own, and the driver times the sides in alternating blocks.

Why processes: in one process the sides disturb each other through the allocator.  After torch
had run a few steps, glibc returned our per-step arrays to the kernel on every free, and our
MNIST step took ~2,800 minor page faults (ru_minflt) and ~25 % longer, against 0 faults alone
(``python bench/micro.py heap``; docs/performance.md).  Every worker also sets glibc to keep
freed memory (jmvae_cupy/hostmem.py), as ``python -m jmvae_cupy.train`` does, so no side's time
depends on the luck of its heap's layout.

Why blocks: on a shared machine a change of load then hits neighbouring blocks of every side
alike; the waiting workers sleep on their pipe.

Protocol (one JSON line per message on the worker's stdout): the worker says
``{"ready": info}`` once built, answers ``block WARMUP N`` with ``{"times": [N seconds]}``
(WARMUP untimed steps, then N timed ones, each followed by ``sync()``), and ``quit`` with
``{"rss_mb": peak RSS, ...extra}``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")


def require_installed() -> None:
    """Exit with one line when jmvae_cupy is not installed in this Python: the library's kernels
    are the package ``jmvae_cupy.kernels`` only once installed (``pip install -e .``), and a
    worker started without them would die with a traceback in the middle of a run."""
    import importlib.util

    try:
        found = importlib.util.find_spec("jmvae_cupy.kernels") is not None
    except ImportError:
        found = False
    if not found:
        print(f"error: jmvae_cupy is not installed in this Python ({sys.executable}): run the README's "
              "setup (python -m venv .venv && . .venv/bin/activate && pip install -e \".[test]\")", file=sys.stderr)
        sys.exit(2)


def check_counts(parser, args, **minimums) -> None:
    """A one-line usage error (``parser.error``: exit 2) for a count flag below its minimum, e.g.
    ``check_counts(p, args, steps=1, warmup=0)``; a list flag (nargs) is checked element by element,
    and a flag left at None (its default: "as found") passes."""
    for name, least in minimums.items():
        value = getattr(args, name)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v < least:
                parser.error(f"--{name.replace('_', '-')} must be at least {least}, got {v}")


# The environment variables that size the thread pools of NumPy's BLAS, torch (OpenMP / MKL) and
# Numba; read when those libraries load, so set them before a worker starts.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def thread_env(threads: int) -> dict:
    """{variable: str(threads)} for every pool in THREAD_VARS (one thread count on every side)."""
    return {var: str(threads) for var in THREAD_VARS}


def maxrss_mb() -> float:
    """Peak resident memory of this process in MB (ru_maxrss)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def time_block(step, sync, warmup: int, n: int) -> list[float]:
    """Wall times of ``n`` calls of ``step()`` (each followed by ``sync()``) after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def serve(build) -> int:
    """The worker's loop.  ``build()`` -> (step, sync, info); step None: unavailable (info says why).
    ``info["quit_extra"]``, if given, is a callable whose dict is added to the ``quit`` answer."""
    sys.path.insert(0, ROOT)
    from jmvae_cupy.hostmem import keep_freed_memory

    keep_freed_memory()
    step, sync, info = build()
    extra = info.pop("quit_extra", None)
    print(json.dumps({"ready": info}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "block":
            print(json.dumps({"times": time_block(step, sync, int(cmd[1]), int(cmd[2]))}), flush=True)
        elif cmd and cmd[0] == "quit":
            print(json.dumps({"rss_mb": maxrss_mb(), **(extra() if extra else {})}), flush=True)
            return 0
    return 0


class Worker:
    """The driver's handle on one worker: ``python SCRIPT --serve ARGS...`` running :func:`serve`."""

    def __init__(self, name: str, script: str, args: list):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(script), "--serve", *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=os.environ.copy())
        self.info = self._read()["ready"]

    @property
    def available(self) -> bool:
        return "unavailable" not in self.info

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench worker {self.name!r} died (exit {self.proc.wait()})")
        return json.loads(line)

    def request(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        """Stop the worker: {"rss_mb": its peak RSS, ...}; {} if it is already gone."""
        if self.proc.poll() is not None:
            return {}
        try:
            mem = self.request("quit")
        except (RuntimeError, BrokenPipeError):
            mem = {}
        self.proc.wait()
        return mem


def block_sizes(repeat: int, blocks: int) -> list:
    """``repeat`` timed steps split over ``blocks`` blocks as evenly as they go (3 over 2: [2, 1]);
    every block times at least one step, so fewer steps than blocks time one per block (and a
    note on stderr says how many were timed)."""
    sizes = [max(1, repeat // blocks + (i < repeat % blocks)) for i in range(blocks)]
    if sum(sizes) != repeat:
        print(f"note: timing {sum(sizes)} steps per side, one in each of the {blocks} blocks "
              f"(--steps {repeat} is fewer than --blocks {blocks})", file=sys.stderr)
    return sizes


def alternate(workers: dict, warmup: int, repeat: int, blocks: int):
    """Time every worker ({name: Worker or anything with ``request``}) in ``blocks`` alternating
    blocks, ``repeat`` steps in all (:func:`block_sizes`), each block after ``warmup`` untimed ones.

    Returns ({name: [seconds]}, {name: [median of each block]}): compare two sides block by block
    (:func:`block_ratio`) to cancel a change of load between blocks."""
    times = {name: [] for name in workers}
    block_medians = {name: [] for name in workers}
    for n in block_sizes(repeat, blocks):
        for name, wk in workers.items():
            t = wk.request(f"block {warmup} {n}")["times"]
            times[name] += t
            block_medians[name].append(statistics.median(t))
    return times, block_medians


def block_ratio(block_medians: dict, num: str, den: str) -> float:
    """Median over blocks of (num's block median / den's block median)."""
    return statistics.median(a / b for a, b in zip(block_medians[num], block_medians[den]))


class Local:
    """A step of the driver's own process, answering blocks like a :class:`Worker` (for profiling)."""

    def __init__(self, step, sync=lambda: None):
        self.step, self.sync = step, sync

    def request(self, cmd: str) -> dict:
        _, warmup, n = cmd.split()
        return {"times": time_block(self.step, self.sync, int(warmup), int(n))}
