"""Checkpoints: one HDF5 file per save, written atomically, with a checksum of its contents.

Layout of ``ckpt-<epoch>-<step>.h5`` (format version 1; docs/checkpoint.md):

=================  =====================================================================
``/params/<name>``   every model parameter (model.params), dtype of the model
``/state/<name>``    batch-norm running statistics (model.state)
``/adam/m/<name>``   Adam first moments;  ``/adam/v/<name>`` second moments
``/<other>/<name>``  optional extra groups (``save(..., extra=)``), e.g. the GAN discriminator's
                     ``disc/params``, ``disc/state``, ``disc/adam/m``, ``disc/adam/v``; files
                     without them (every older checkpoint) load unchanged
root attributes      ``format`` (1), ``meta`` (JSON: epoch, step, config, RNG states, Adam
                     hyper-parameters and t, partial-epoch sums), ``sha256`` (see below)
=================  =====================================================================

``sha256`` hashes the meta JSON and then every dataset (name, dtype, shape, bytes) in sorted
order, so a flipped bit anywhere is detected on load.  Writing goes to a temporary file in the
same directory, is flushed and fsync'ed, then renamed over the final name (atomic on POSIX),
and the directory is fsync'ed: a crash leaves either the old set of checkpoints or the new one.
The newest ``KEEP`` checkpoints are kept; loading falls back to an older one if the newest is bad.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re

import h5py
import numpy as np

from .backend import asnumpy, to_device
from .fsutil import replacing

FORMAT = 1
KEEP = 2
_STANDARD = ("params", "state", "adam/m", "adam/v")
_NAME = re.compile(r"^ckpt-(\d{6})-(\d{6})\.h5$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupted, or from an incompatible run."""


def _digest(meta_json: str, groups: dict) -> str:
    h = hashlib.sha256(meta_json.encode())
    for gname in sorted(groups):
        for name in sorted(groups[gname]):
            a = np.ascontiguousarray(groups[gname][name])
            h.update(f"{gname}/{name}|{a.dtype.str}|{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt-{epoch:06d}-{step:06d}.h5"


def list_checkpoints(run_dir: str) -> list:
    """Checkpoint paths in ``run_dir``, newest first."""
    found = []
    for p in glob.glob(os.path.join(run_dir, "ckpt-*.h5")):
        m = _NAME.match(os.path.basename(p))
        if m:
            found.append(((int(m.group(1)), int(m.group(2))), p))
    return [p for _, p in sorted(found, reverse=True)]


def save(run_dir: str, epoch: int, step: int, meta: dict, params: dict, state: dict, adam_m: dict,
         adam_v: dict, extra: dict | None = None) -> str:
    """Write a checkpoint atomically; prune all but the newest KEEP.  Returns its path.

    extra: optional further groups, {group path: {name: array}} (e.g. "disc/params"); they are
    covered by the checksum and come back from :func:`load` under ``"extra"``."""
    groups = {"params": {k: asnumpy(v) for k, v in params.items()},
              "state": {k: asnumpy(v) for k, v in state.items()},
              "adam/m": {k: asnumpy(v) for k, v in adam_m.items()},
              "adam/v": {k: asnumpy(v) for k, v in adam_v.items()}}
    for gname, arrays in (extra or {}).items():
        if gname in groups:
            raise ValueError(f"extra checkpoint group {gname!r} clashes with a standard group")
        groups[gname] = {k: asnumpy(v) for k, v in arrays.items()}
    meta = dict(meta, epoch=int(epoch), step=int(step))
    meta_json = json.dumps(meta, sort_keys=True)
    final = os.path.join(run_dir, checkpoint_name(epoch, step))
    with replacing(final, prefix=".ckpt-") as fh:
        with h5py.File(fh, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["meta"] = meta_json
            f.attrs["sha256"] = _digest(meta_json, groups)
            for gname, arrays in groups.items():
                g = f.require_group(gname)
                for name, a in arrays.items():
                    g.create_dataset(name, data=a)
    _fsync_dir(run_dir)
    for old in list_checkpoints(run_dir)[KEEP:]:
        os.unlink(old)
    return final


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str) -> dict:
    """Read and verify one checkpoint: {"meta", "params", "state", "adam_m", "adam_v", "extra"} (host
    arrays; "extra" maps the path of every further group, e.g. "disc/params", to its arrays)."""
    name = os.path.basename(path)
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("format", -1)) != FORMAT:
                raise CheckpointError(f"checkpoint {name}: unknown format {f.attrs.get('format')!r}")
            meta_json = str(f.attrs["meta"])
            expected = str(f.attrs["sha256"])
            groups = {}
            for gname in _STANDARD:
                g = f[gname]
                groups[gname] = {k: g[k][()] for k in g.keys()}

            def visit(path, obj):  # extra groups: every dataset outside the standard groups
                gname, _, name = path.rpartition("/")
                if isinstance(obj, h5py.Dataset) and gname not in _STANDARD:
                    groups.setdefault(gname, {})[name] = obj[()]

            f.visititems(visit)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {name} is unreadable (truncated or corrupted): {e}") from None
    if _digest(meta_json, groups) != expected:
        raise CheckpointError(f"checkpoint {name} is corrupted: its checksum does not match its contents")
    return {"meta": json.loads(meta_json), "params": groups["params"], "state": groups["state"],
            "adam_m": groups["adam/m"], "adam_v": groups["adam/v"], "path": path,
            "extra": {g: a for g, a in groups.items() if g not in _STANDARD}}


def load_latest(run_dir: str, warn=print) -> dict:
    """The newest good checkpoint of ``run_dir``, falling back past bad ones (each named in a warning)."""
    paths = list_checkpoints(run_dir)
    if not paths:
        raise CheckpointError(f"no checkpoint to resume from in {run_dir}")
    errors = []
    for p in paths:
        try:
            return load(p)
        except CheckpointError as e:
            errors.append(str(e))
            warn(f"warning: {e}; trying an older checkpoint")
    raise CheckpointError("no good checkpoint in " + run_dir + ": " + "; ".join(errors))


def restore_arrays(target: dict, arrays: dict, xp, what: str) -> None:
    """Copy ``arrays`` into ``target`` (same names and shapes required) on namespace ``xp``."""
    if set(target) != set(arrays):
        missing = sorted(set(target) - set(arrays))[:3]
        extra = sorted(set(arrays) - set(target))[:3]
        raise CheckpointError(f"checkpoint {what} do not match the model (missing {missing}, unexpected {extra})")
    for k, a in arrays.items():
        if tuple(target[k].shape) != tuple(a.shape):
            raise CheckpointError(f"checkpoint {what} {k}: shape {a.shape}, the model has {target[k].shape}")
        target[k] = to_device(a, xp, target[k].dtype)
