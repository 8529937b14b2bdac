"""The run directory: created, locked and checked before a run (:func:`prepare_run_dir`), and
the files a run appends to or replaces (metrics.jsonl, config.json), each write made durable."""

from __future__ import annotations

import glob
import json
import os

from ..checkpoint import list_checkpoints
from ..fsutil import probe_writable, try_lock
from .errors import TrainError

LOCK_NAME = ".lock"  # in the run directory: held (flock) by the process training there


def lock_run_dir(out: str):
    """Hold ``out/.lock`` (an exclusive flock, released by the kernel when the process ends, however
    it ends) so that a second training process cannot write into the same run directory (it would
    delete the first one's checkpoint in progress as stale).  Returns the open lock file: keep it."""
    f = try_lock(os.path.join(out, LOCK_NAME))
    if f is None:
        with open(os.path.join(out, LOCK_NAME)) as held:
            holder = held.read().strip()
        raise TrainError(f"{out} is in use by another training process{f' (pid {holder})' if holder else ''}")
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def prepare_run_dir(out: str, resume: bool):
    """Create ``out`` if needed, check that it is writable, lock it (``lock_run_dir``), refuse a
    directory that holds a run unless ``resume``, and remove the temporary files of a process
    killed while writing.  Returns (the open lock file: keep it while training, whether this call
    created ``out``: decided by the mkdir itself, so that of two processes racing for a new
    directory only the one that made it, and then locked it, may remove it again on an error)."""
    if resume and not os.path.lexists(out):  # (a typo in a run name would otherwise train from scratch)
        raise TrainError(f"--resume: {out} does not exist, so there is no run to continue (leave out --resume "
                         "to start a new run there)")
    try:
        parent = os.path.dirname(os.path.abspath(out))
        os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(out)
            created = True
        except FileExistsError:
            created = False
    except OSError as e:
        raise TrainError(f"cannot create output directory {out}: {e.strerror}") from None
    if not os.path.isdir(out):
        raise TrainError(f"cannot create output directory {out}: it is a file")
    try:
        probe_writable(out)
    except OSError as e:
        raise TrainError(f"output directory {out} is not writable: {e.strerror}") from None
    lock = lock_run_dir(out)
    try:
        if not resume and (list_checkpoints(out) or os.path.exists(os.path.join(out, "metrics.jsonl"))):
            raise TrainError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        for stale in glob.glob(os.path.join(out, ".ckpt-*.tmp")) + glob.glob(os.path.join(out, ".tmp-*.tmp")):
            os.unlink(stale)  # left by a process killed while writing; never a complete file
    except BaseException:
        lock.close()
        raise
    return lock, created


def append_line(path: str, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def metrics_lines_up_to(path: str, epoch: int) -> list:
    """The lines of metrics.jsonl for epochs <= ``epoch``.  A line that is not an epoch's record (cut
    short by a crash, edited by hand, not UTF-8) is dropped."""
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for ln in f:
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if isinstance(rec, dict) and type(rec.get("epoch")) is int and rec["epoch"] <= epoch:
                kept.append(ln if ln.endswith("\n") else ln + "\n")
    return kept
