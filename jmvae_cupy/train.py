"""Train a JMVAE model:  python -m jmvae_cupy.train mnist --variant kl
(or ``celeba --variant kl --data celeba.h5``, a file made by ``python -m jmvae_cupy.data prepare celeba``;
or ``data --data PAIRS.h5 [--config MODEL.toml]``, pairs of your own: docs/data.md)

The model is described by a model config (jmvae_cupy/models/config.py): ``--config FILE``, or the
built-in one of mnist / celeba (jmvae_cupy/configs/), or for ``data`` the one inferred from the
file; keys a --config leaves out come from that default.  Options given on the command line
(--variant, --latent, --epochs, ...) override the config.

Writes into the run directory (``--out``, default ``runs/<dataset>-<variant>``):

* ``config.json``       the configuration of the run, with "model": its architecture, likelihoods and
  shapes in full (so evaluate and generate rebuild it from the run alone);
* ``metrics.jsonl``     one JSON line per epoch: train and test terms, beta, seconds;
* ``ckpt-EEEEEE-SSSSSS.h5``  checkpoints (the newest two; format in docs/checkpoint.md);
* ``samples-eEEEE.png`` images generated from each label 0-9 (a column per label); CelebA: row 0
  test faces, rows 1.. faces generated from their 40 attributes.

``--resume`` continues from the newest good checkpoint; on the CPU the result is bit-identical
to an uninterrupted run (the data order, the binarisation and the noise all come from RNG
streams whose states are checkpointed).  Ctrl-C / SIGTERM save a checkpoint at the next step
boundary and exit with code 130.  Every error a user can cause (and a full disk, an allocation
that fails, Ctrl-C before training starts) is one line on stderr, exit 1 (130 for Ctrl-C).  One
process at a time trains in a run directory (it holds ``.lock``).

``--micro-batches K`` runs each step's batch as K chunks of B/K rows, one after the other, and
averages them (gradient accumulation); ``mpiexec -n P ... --distributed`` splits it over P ranks.
Both go through ``distributed.StepMean`` (docs/distributed.md); without them a step is one
``loss_and_grads`` call on the whole batch.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import sys
import time
import traceback

import numpy as np

from .backend import BackendError, device_name, get_dtype, select_device, to_device
from .checkpoint import CheckpointError, list_checkpoints, load_latest, restore_arrays
from .checkpoint import save as save_checkpoint
from .cli import describe, show_traceback_if_asked
from .data import DataError, binarize, binarized_test_set, iterate_batches, load_mnist, one_hot
from .distributed import DataParallel, DistributedError, GlobalNoiseRng, StepMean, init_distributed, rows_of
from .fsutil import probe_writable, try_lock
from .hostmem import keep_freed_memory
from .inference import x_from_w
from .kernels.finite import all_finite
from .models import ModelError, build_model
from .models.config import arch_from_model, builtin_base, infer_config, model_record, read_config_file, train_defaults
from .nets import NetSpecError
from .optim import Adam
from .rng import Rng
from .viz import save_grid

# Settings that must agree between a run and the checkpoint it resumes from.
RESUME_KEYS = ("dataset", "variant", "batch_size", "lr", "warmup", "latent", "alpha", "seed", "dtype", "data_dir",
               "train_subset", "direction", "data", "width_scale", "gan", "gan_weight")
RESUME_KEYS += ("distributed",)  # {"ranks": P, "exact_noise": ..., ["ordered_reduce": True]}: --distributed only
RESUME_KEYS += ("micro_batches",)  # K: in runs with --micro-batches K > 1 only
RESUME_KEYS += ("h_top",)  # JMVAE-h's top layer: in runs with --h-top z1 only
RESUME_KEYS += ("model",)  # the resolved model config (compared when the checkpoint's config has one)


class TrainError(RuntimeError):
    """A problem with the run's configuration or directory (one-line message)."""


class NonFiniteError(RuntimeError):
    """The objective or a gradient became NaN or infinite."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jmvae_cupy.train", description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=["mnist", "celeba", "data"],
                   help="which dataset to train on (data: a paired file of your own, --data FILE; docs/data.md)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a model config (.toml or .json: likelihoods, networks, latent size, variant, "
                        "hyper-parameters; docs/data.md); keys it leaves out come from the built-in config "
                        "(mnist, celeba) or, for data, from the data")
    p.add_argument("--variant", default=None,
                   help="jmvae | kl | h | cvae | cmma (default: the config's, kl in the built-in ones)")
    p.add_argument("--direction", default=None, choices=["label2image", "image2label"],
                   help="the conditional direction of a cvae / cmma baseline (default label2image)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to train in total (default: the config's, 30 mnist, 50 celeba; paper: 2000 MNIST, "
                        "50 CelebA)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size (default: the config's, 100 mnist, 64 celeba; data: at most the training rows)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the config's, 1e-3 mnist, "
                   "1e-4 celeba)")
    p.add_argument("--warmup", type=float, default=None,
                   help="epochs over which the KL weight beta rises linearly from 0 to 1 "
                        "(default: the config's, 3 mnist, 20 celeba; paper: 200 MNIST, 20 CelebA)")
    p.add_argument("--latent", type=int, default=None,
                   help="size of z (default: the config's, 64 mnist, 128 celeba; 2 for latent-space plots)")
    p.add_argument("--h-top", choices=["chain", "z1"], default="chain",
                   help="JMVAE-h's top layer: q(z2|x,w) on a deterministic chain on the joint trunk (default), or "
                        "the appendix's literal q(z2|z1), z2 drawn from a sampled z1 (docs/results.md)")
    p.add_argument("--alpha", type=float, default=None,
                   help="JMVAE-kl weight of the two extra KL terms (default: the config's, 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and noise (default 0)")
    p.add_argument("--device", default=None, help="cpu | gpu | auto (default: $JMVAE_DEVICE or auto)")
    p.add_argument("--dtype", default="float32", help="float32 | float64 (default float32)")
    p.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<variant>; data: "
                   "runs/<file name>-<variant>)")
    p.add_argument("--data-dir", default=None, help="directory with the four full-MNIST IDX files "
                   "(default: the embedded 10,000-digit subset)")
    p.add_argument("--data", default=None, help="celeba: the HDF5 file made by "
                   "'python -m jmvae_cupy.data prepare celeba SRC --out FILE.h5'; data: the paired file (.h5 or "
                   ".npz with x, w, optional split and w_names; check it with python -m jmvae_cupy.data check FILE)")
    p.add_argument("--width-scale", type=float, default=1.0, help=argparse.SUPPRESS)  # celeba, data: narrower nets
    p.add_argument("--gan", action="store_true", help="celeba: VAE-GAN, the appendix's discriminator on p(x|z) "
                   "(docs/celeba.md)")
    p.add_argument("--gan-weight", type=float, default=None,
                   help="--gan: weight gamma of the generator term in the model's loss (default 1)")
    p.add_argument("--train-subset", type=int, default=0,
                   help="train on the first N training digits only (quick smoke runs; 0: all)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    p.add_argument("--sample-every", type=int, default=5,
                   help="write a PNG of generated digits every N epochs (default 5)")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also keep the checkpoint of every N-th epoch in RUN/snapshots/ (never pruned; for "
                        "evaluating a run along its training; 0: none)")
    p.add_argument("--checkpoint-steps", type=int, default=0,
                   help="also checkpoint every N steps inside an epoch (0: at epoch ends only)")
    p.add_argument("--on-nonfinite", choices=["stop", "skip"], default="stop",
                   help="a NaN/Inf objective or gradient stops the run (default) or skips the step")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the ranks of mpiexec -n P (docs/distributed.md)")
    p.add_argument("--exact-noise", action="store_true",
                   help="--distributed debug aid: every rank draws the whole batch's noise and keeps its "
                        "rows, so P ranks reproduce one process (default: noise streams per rank); with "
                        "--ordered-reduce bit for bit (the same as one process with --micro-batches P)")
    p.add_argument("--ordered-reduce", action="store_true",
                   help="--distributed: average the ranks' gradients in rank order (an all-gather, P times "
                        "the bytes of an all-reduce) instead of the all-reduce's own order")
    p.add_argument("--micro-batches", type=int, default=1,
                   help="gradient accumulation: each step's batch B runs as K chunks of B/K rows, one after "
                        "the other, and their gradients are averaged (less memory; batch norm sees B/K rows)")
    return p


def _base_config(args) -> dict:
    """The config that fills what --config leaves out: the built-in one of mnist / celeba, or the one
    inferred from the paired file (data), whose batch size is at most its training rows."""
    if args.dataset == "data":
        from .data.paired import open_paired  # noqa: PLC0415

        d = open_paired(args.data)
        base = infer_config(d.x_shape, d.w_dim, d.x_stats, d.w_stats)
        base["train"]["batch_size"] = min(base["train"]["batch_size"], len(d.train_idx))
        return base
    return builtin_base(args.dataset, (784,) if args.dataset == "mnist" else (3, 64, 64))


def config_from_args(args) -> dict:
    """The run's configuration from the command line: options over the model config over its base.
    "model_config" is the checked --config (None without one); the Trainer resolves it into "model"."""
    if args.dataset == "data" and not args.data:
        raise TrainError("data needs --data FILE (an .h5 or .npz file of pairs x, w: docs/data.md)")
    if args.dataset in ("mnist", "data") and args.gan:
        raise TrainError("--gan is for celeba")
    user = read_config_file(args.config) if args.config else None
    base = _base_config(args)
    defaults = train_defaults(user if user is not None else base, base)
    defaults["latent"] = (user or {}).get("latent") or base["latent"]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.variant not in ("jmvae", "kl", "h", "cvae", "cmma"):
        raise TrainError(f"unknown variant {args.variant!r}: choose jmvae, kl, h, cvae or cmma")
    if args.direction is not None and args.variant not in ("cvae", "cmma"):
        raise TrainError(f"--direction applies to cvae and cmma only, not {args.variant!r}")
    direction = (args.direction or "label2image") if args.variant in ("cvae", "cmma") else None
    for name, val, lo in (("epochs", args.epochs, 1), ("batch-size", args.batch_size, 1),
                          ("latent", args.latent, 1), ("sample-every", args.sample_every, 1),
                          ("checkpoint-steps", args.checkpoint_steps, 0),
                          ("snapshot-every", args.snapshot_every, 0), ("train-subset", args.train_subset, 0),
                          ("micro-batches", args.micro_batches, 1), ("seed", args.seed, 0)):
        if val < lo:
            raise TrainError(f"--{name} must be >= {lo}, got {val}")
    if args.batch_size % args.micro_batches:
        raise TrainError(f"--batch-size {args.batch_size} is not divisible by --micro-batches {args.micro_batches} "
                         "(each micro-batch takes B/K rows)")
    if not (args.lr > 0 and np.isfinite(args.lr)):
        raise TrainError(f"--lr must be a positive number, got {args.lr}")
    if not (args.warmup >= 0 and np.isfinite(args.warmup)):
        raise TrainError(f"--warmup must be >= 0, got {args.warmup}")
    if not (args.alpha >= 0 and np.isfinite(args.alpha)):  # (a negative weight rewards the KLs: no bound)
        raise TrainError(f"--alpha must be >= 0, got {args.alpha}")
    if args.h_top != "chain" and args.variant != "h":
        raise TrainError(f"--h-top applies to JMVAE-h (--variant h) only, not {args.variant!r}")
    if args.gan_weight is not None and not args.gan:
        raise TrainError("--gan-weight applies to --gan (celeba) only")
    get_dtype(args.dtype)
    extra = {}
    if args.dataset in ("celeba", "data"):
        if args.dataset == "celeba" and not args.data:
            raise TrainError("celeba needs --data FILE.h5 (made by: python -m jmvae_cupy.data prepare celeba SRC "
                             "--out FILE.h5)")
        if args.data_dir:
            raise TrainError(f"--data-dir is for mnist; {args.dataset} reads --data FILE")
        if not (args.width_scale > 0 and np.isfinite(args.width_scale)):
            raise TrainError(f"--width-scale must be positive, got {args.width_scale}")
        extra = {"data": os.path.abspath(args.data), "width_scale": args.width_scale}
        if args.gan:  # only then in the config: runs without the GAN keep their old configs
            args.gan_weight = 1.0 if args.gan_weight is None else args.gan_weight
            if not (args.gan_weight >= 0 and np.isfinite(args.gan_weight)):
                raise TrainError(f"--gan-weight must be >= 0, got {args.gan_weight}")
            extra.update(gan=True, gan_weight=args.gan_weight)
    elif args.data:
        raise TrainError("--data is for celeba and data; mnist reads --data-dir DIR")
    if args.micro_batches > 1:  # only then in the config (a config without it means 1)
        extra["micro_batches"] = args.micro_batches
    if args.h_top != "chain":  # only then in the config (a config without it means the chain)
        extra["h_top"] = args.h_top
    if args.config:  # the model config file the run was made with (its resolved content: "model")
        extra["config_file"] = os.path.abspath(args.config)
    return {**extra,
        "dataset": args.dataset, "variant": args.variant, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "warmup": args.warmup, "latent": args.latent, "alpha": args.alpha, "seed": args.seed,
        "dtype": args.dtype, "data_dir": os.path.abspath(args.data_dir) if args.data_dir else None,
        "train_subset": args.train_subset, "direction": direction, "model_config": user,
    }


def _short(v) -> str:
    """A setting in a one-line message: its repr, cut to 80 characters."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def beta_at(epoch_float: float, warmup: float) -> float:
    """Warm-up: beta rises linearly from 0 to 1 over the first ``warmup`` epochs (per step)."""
    return 1.0 if warmup <= 0 else min(1.0, epoch_float / warmup)


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
        for stale in glob.glob(os.path.join(out, ".ckpt-*.tmp")) + glob.glob(os.path.join(out, "*.json*.tmp")):
            os.unlink(stale)  # left by a process killed while writing; never a complete file
    except BaseException:
        lock.close()
        raise
    return lock, created


def _atomic_write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_line(path: str, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _metrics_lines_up_to(path: str, epoch: int) -> list:
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


def training_rows(n: int, config: dict, noun: str) -> int:
    """How many of the ``n`` training rows a run uses (``--train-subset``, 0: all), or a one-line
    error when they make less than one batch (``noun``: digits, images)."""
    batch, subset = config["batch_size"], config["train_subset"]
    if subset and subset < batch:
        raise TrainError(f"--train-subset {subset} is smaller than one batch")
    kept = min(n, subset) if subset else n
    if kept < batch:
        raise TrainError(f"--batch-size {batch} is larger than the {kept} training {noun}")
    return kept


def subset_note(kept: int, n: int, noun: str) -> str:
    """What the log adds to a data source's name when --train-subset keeps ``kept`` of ``n`` rows."""
    return f"; training on the first {kept} {noun}" if kept < n else ""


class MnistSource:
    """MNIST for the Trainer: the training set re-binarised every epoch, the test set binarised once."""

    x_shape, w_dim = (784,), 10
    x_stats = {"min": 0.0, "max": 1.0, "binary": True, "one_hot": False}  # binarised digits
    w_stats = {"min": 0.0, "max": 1.0, "binary": True, "one_hot": True}   # one-hot labels

    def __init__(self, config: dict, dtype):
        self.dtype = dtype
        self.base = builtin_base("mnist", self.x_shape)
        self.data = load_mnist(config["data_dir"])
        n = training_rows(len(self.data.train_x), config, "digits")
        self.name = self.data.source + subset_note(n, len(self.data.train_x), "digits")
        self.data.train_x, self.data.train_y = self.data.train_x[:n], self.data.train_y[:n]
        self.test_x = binarized_test_set(self.data, dtype=self.dtype)
        self.test_w = one_hot(self.data.test_y, 10, self.dtype)

    def epoch(self, rng, batch_size):
        """(steps, batch(i) -> (x, w) host arrays), everything drawn from ``rng`` now."""
        x = binarize(self.data.train_x, rng, self.dtype)
        w = one_hot(self.data.train_y, 10, self.dtype)
        batches = iterate_batches(len(x), batch_size, rng)
        return len(batches), lambda i: (x[batches[i]], w[batches[i]])

    def test_batches(self, batch_size=500):
        for i in range(0, len(self.test_x), batch_size):
            yield self.test_x[i:i + batch_size], self.test_w[i:i + batch_size]

    def write_samples(self, model, path, rng):
        """A grid of images generated from the labels: column = label 0..9; row 0 uses the mean of
        q(z|w) (JMVAE-kl; for JMVAE / JMVAE-h the mean of q(z|x^,w) along the iterative sampling
        from zeros, K = 10), rows 1.. sample z."""
        rows = 8
        w = to_device(one_hot(np.tile(np.arange(10), rows), 10, self.dtype), model.xp)
        if hasattr(model, "generate"):  # cvae / cmma: z from the prior p(z) or p(z|w)
            imgs = model.generate(w, rng)
        else:
            mean_row = x_from_w(model, w[:10], rng, iterations=10, sample_z=False)
            imgs = model.xp.concatenate([mean_row, x_from_w(model, w[10:], rng, iterations=10, sample_z=True)])
        imgs = np.asarray(to_device(imgs, np)).reshape(rows, 10, 28, 28)
        save_grid(imgs, path, col_labels=[str(d) for d in range(10)])


class CelebASource:
    """CelebA for the Trainer, streamed from the prepared HDF5 file (images in [0, 1], attributes -1 / 1)."""

    x_stats = {"min": 0.0, "max": 1.0, "binary": False, "one_hot": False}  # images in [0, 1]
    w_stats = {"min": -1.0, "max": 1.0, "binary": False, "one_hot": False}  # attributes -1 / 1

    def __init__(self, config: dict, dtype):
        from .data.celeba import open_celeba  # noqa: PLC0415

        self.dtype = dtype
        self.data = open_celeba(config["data"])
        n = training_rows(len(self.data.train_idx), config, "images")
        self.name = (f"CelebA {self.data.path.name} ({len(self.data.train_idx)} train / {len(self.data.test_idx)} "
                     f"test){subset_note(n, len(self.data.train_idx), 'images')}")
        self.train_rows = self.data.train_idx[:n]
        s = self.data.image_size
        self.x_shape, self.w_dim = (3, s, s), len(self.data.attr_names)
        self.base = builtin_base("celeba", self.x_shape)

    def _xw(self, rows):
        return self.data.images(rows, self.dtype), self.data.attributes(rows, self.dtype)

    def epoch(self, rng, batch_size):
        batches = self.data.epoch_order(rng, batch_size, self.train_rows)
        return len(batches), lambda i: self._xw(batches[i])

    def test_batches(self, batch_size=100):
        t = self.data.test_idx
        for i in range(0, len(t), batch_size):
            yield self._xw(t[i:i + batch_size])

    def write_samples(self, model, path, rng, cols=8, rows=4):
        """Row 0: the first ``cols`` test faces; rows 1..: faces generated from their attributes
        (JMVAE-kl: z ~ q(z|w); JMVAE / JMVAE-h: iterative sampling from zeros, K = 10)."""
        t = self.data.test_idx[:cols] if len(self.data.test_idx) else self.data.train_idx[:cols]
        real, w = self._xw(t)
        w = to_device(np.tile(w, (rows, 1)), model.xp)
        if hasattr(model, "generate"):
            imgs = model.generate(w, rng)
        else:
            imgs = x_from_w(model, w, rng, iterations=10, sample_z=True)
        s = self.data.image_size
        imgs = np.concatenate([real[None], np.asarray(to_device(imgs, np)).reshape(rows, len(t), 3, s, s)])
        save_grid(imgs, path)


class PairedSource:
    """A paired file of your own (data/paired.py) for the Trainer, read into memory: its train rows in a
    fresh order every epoch, its test rows for the test terms and the sample PNG."""

    def __init__(self, config: dict, dtype):
        from .data.paired import open_paired  # noqa: PLC0415

        self.dtype = dtype
        self.data = d = open_paired(config["data"])
        n = training_rows(len(d.train_idx), config, "pairs")
        self.name = (f"{os.path.basename(d.path)} ({len(d.train_idx)} train / {len(d.test_idx)} test pairs)"
                     f"{subset_note(n, len(d.train_idx), 'pairs')}")
        self.train_rows = d.train_idx[:n]
        self.x_shape, self.w_dim, self.x_stats, self.w_stats = d.x_shape, d.w_dim, d.x_stats, d.w_stats
        self.base = infer_config(d.x_shape, d.w_dim, d.x_stats, d.w_stats)

    def epoch(self, rng, batch_size):
        batches = [self.train_rows[b] for b in iterate_batches(len(self.train_rows), batch_size, rng)]
        return len(batches), lambda i: self.data.rows(batches[i], self.dtype)

    def test_batches(self, batch_size=500):
        t = self.data.test_idx
        for i in range(0, len(t), batch_size):
            yield self.data.rows(t[i:i + batch_size], self.dtype)

    def write_samples(self, model, path, rng, cols=8, rows=3):
        """Images only (x of shape (C, H, W) with C = 1 or 3, or (H, W)): row 0 the first ``cols`` test
        x, rows 1..: x generated from their w, scaled like the data to [0, 1] (inference.x_from_w)."""
        from .data.paired import image_view  # noqa: PLC0415

        view = image_view(self.x_shape)
        if view is None:
            return
        t = self.data.test_idx[:cols]
        real, w = self.data.rows(t, self.dtype)
        w = to_device(np.tile(w, (rows, 1)), model.xp)
        gen = model.generate(w, rng) if hasattr(model, "generate") else x_from_w(model, w, rng, iterations=10)
        lo, hi = self.x_stats["min"], self.x_stats["max"]
        imgs = np.concatenate([real[None], np.asarray(to_device(gen, np)).reshape((rows, len(t)) + self.x_shape)])
        save_grid(((imgs - lo) / ((hi - lo) or 1.0)).reshape(imgs.shape[:2] + view), path)


SOURCES = {"mnist": MnistSource, "celeba": CelebASource, "data": PairedSource}


def make_source(config: dict, dtype):
    """The Trainer's data: ``x_shape``, ``w_dim``, ``x_stats``, ``w_stats`` and ``base`` (the model config
    that fills what the run's leaves out), ``name``, ``epoch(rng, batch_size)``, ``test_batches()``,
    ``write_samples``."""
    return SOURCES[config["dataset"]](config, dtype)


def run_model_record(config: dict, source, user=None) -> dict:
    """The resolved model config of a run (models/config.py model_record): ``user`` (a checked --config, or
    None) over the data source's base, at the run's latent size and width scale."""
    return model_record(user, source.x_shape, source.w_dim, source.base, source.x_stats, source.w_stats,
                        latent=config["latent"], width=config.get("width_scale", 1.0))


class Trainer:
    """The training loop, its state, and its checkpoints (one object so that resume is exact)."""

    def __init__(self, config: dict, out: str, device=None, progress=True, on_nonfinite="stop",
                 sample_every=5, checkpoint_steps=0, log=print, dist=None, snapshot_every=0):
        self.out, self.log = out, log
        self.snapshot_every = snapshot_every
        self.progress, self.on_nonfinite = progress, on_nonfinite
        self.sample_every, self.checkpoint_steps = sample_every, checkpoint_steps
        self.xp = select_device(device)
        self.dtype = get_dtype(config["dtype"])
        self.source = make_source(config, self.dtype)
        # the run's config: "model_config" (the checked --config) resolved into "model", what config.json keeps
        user = config.get("model_config")
        self.config = config = {k: v for k, v in config.items() if k != "model_config"}
        config["model"] = run_model_record(config, self.source, user)
        self.model = build_model(arch_from_model(config["model"], config["dataset"]), config["variant"],
                                 seed=config["seed"], dtype=config["dtype"], xp=self.xp, alpha=config["alpha"],
                                 direction=config.get("direction"), h_top=config.get("h_top", "chain"))
        self.opt = Adam(lr=config["lr"])
        self.gan = None  # --gan: the discriminator, its Adam and the GAN terms (models/gan.py)
        if config.get("gan"):
            from .models.gan import VAEGAN  # noqa: PLC0415

            self.gan = VAEGAN(self.model, weight=config["gan_weight"], lr=config["lr"], seed=config["seed"])
        self.data_rng = Rng([config["seed"], 1])   # data order and binarisation
        self.noise_rng = Rng([config["seed"], 2])  # reparameterisation noise
        self.dist = dist  # --distributed: a distributed.DataParallel; None: one process
        self.is_writer = dist is None or dist.comm.rank == 0  # only rank 0 writes files
        if dist is not None:
            self.noise_rng = dist.noise_rng(config["seed"])
        self.micro_batches = int(config.get("micro_batches", 1))  # K: parts of this process's batch per step
        # the mean of a step over micro-batches and / or ranks (distributed.StepMean); None: the plain step
        self.step_mean = dist.step_mean() if dist is not None else StepMean() if self.micro_batches > 1 else None
        self.epoch, self.step = 0, 0
        self.epoch_data_state = None
        self.sums: dict = {}
        self.stop_requested = None

    # ---------------------------------------------------------------- checkpoints
    def save(self) -> str:
        meta = {"config": self.config, "data_rng_epoch_start": self.epoch_data_state,
                "data_rng": self.data_rng.get_state(), "noise_rng": self.noise_rng.get_state(),
                "adam": {k: v for k, v in self.opt.state_dict().items() if k not in ("m", "v")},
                "partial_sums": {k: float(v) for k, v in self.sums.items()}}
        if self.dist is not None:  # collective; rank 0 writes, the others return ""
            meta = self.dist.checkpoint_meta(self, meta)
            if meta is None:
                return ""
        extra = None
        if self.gan is not None:
            meta["disc_adam"], extra = self.gan.checkpoint_groups()
        return save_checkpoint(self.out, self.epoch, self.step, meta, self.model.params, self.model.state,
                               self.opt.m, self.opt.v, extra=extra)

    def keep_snapshot(self, path: str) -> None:
        """--snapshot-every N: the checkpoint ``path`` of an epoch divisible by N also goes to
        snapshots/ckpt-EEEEEE.h5 (a hard link where the file system has them, else a copy; atomic).
        Called after each epoch's checkpoint and once at start, so that a run killed between the
        two still gets its snapshot."""
        if not (self.snapshot_every and self.is_writer and path and self.epoch % self.snapshot_every == 0
                and self.epoch > 0 and self.step == 0):
            return
        sdir = os.path.join(self.out, "snapshots")
        final = os.path.join(sdir, f"ckpt-{self.epoch:06d}.h5")
        if os.path.exists(final):
            return
        os.makedirs(sdir, exist_ok=True)
        tmp = final + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, final)

    def restore(self) -> str:
        """Load the newest good checkpoint of the run directory; returns its path."""
        ck = load_latest(self.out, warn=self.log) if self.is_writer else None
        if self.dist is not None:  # rank 0 reads the file, every rank restores the same checkpoint
            ck = self.dist.comm.bcast_obj(ck)
        meta = ck["meta"]
        keys = [k for k in RESUME_KEYS if k != "model" or "model" in meta["config"]]  # (older runs: no "model")
        conflicts = [f"{k}: checkpoint {_short(meta['config'].get(k))} vs now {_short(self.config.get(k))}"
                     for k in keys if meta["config"].get(k) != self.config.get(k)]
        if conflicts:
            raise TrainError(f"--resume: the run in {self.out} was made with other settings ({'; '.join(conflicts)})")
        restore_arrays(self.model.params, ck["params"], self.xp, "parameters")
        restore_arrays(self.model.state, ck["state"], self.xp, "state")
        adam = dict(meta["adam"])
        adam["m"] = {k: to_device(v, self.xp) for k, v in ck["adam_m"].items()}
        adam["v"] = {k: to_device(v, self.xp) for k, v in ck["adam_v"].items()}
        self.opt.load_state_dict(adam)
        if self.gan is not None:
            self.gan.load_checkpoint(ck, self.xp)
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.data_rng.set_state(meta["data_rng"])
        self.noise_rng.set_state(meta["noise_rng"])
        if self.dist is not None:
            self.dist.restore_noise(self, meta)
        self.epoch_data_state = meta["data_rng_epoch_start"]
        self.sums = {k: v for k, v in meta["partial_sums"].items()}
        # keep the metrics of completed epochs only: the lines after the checkpoint are redone
        mpath = os.path.join(self.out, "metrics.jsonl")
        if self.is_writer and os.path.exists(mpath):
            _atomic_write_text(mpath, "".join(_metrics_lines_up_to(mpath, self.epoch)))
        self.log(f"resumed from {os.path.basename(ck['path'])} (epoch {self.epoch}, step {self.step})")
        return ck["path"]

    # ---------------------------------------------------------------- one epoch
    def _epoch_batches(self):
        """This epoch's (steps, batch(i) -> (x, w)), drawn by the data source from the epoch's data-RNG state."""
        if self.step == 0 or self.epoch_data_state is None:
            self.epoch_data_state = self.data_rng.get_state()
        else:  # resuming mid-epoch: redraw this epoch's data exactly as it was drawn
            self.data_rng.set_state(self.epoch_data_state)
        return self.source.epoch(self.data_rng, self.config["batch_size"])

    def _check_finite(self, loss, terms, grads):
        """Stop (NonFiniteError) before the update if the loss, a term or a gradient element is NaN
        or inf.  One pass over the gradients and, on a GPU, one host read: a single flag for all
        of them (kernels/finite.py; StepMean, when used, reads the averaged scalars besides); the
        culprits are looked up only on failure."""
        if all_finite([loss, *terms.values(), *grads.values()]):
            return
        if not all_finite([loss, *terms.values()]):
            bad = [k for k, v in terms.items() if not all_finite([v])]
            raise NonFiniteError(f"non-finite objective at epoch {self.epoch + 1}, step {self.step + 1} "
                                 f"(terms: {', '.join(bad) or 'loss'})")
        if not all_finite(grads.values()):
            bad = [k for k, g in grads.items() if not all_finite([g])]
            raise NonFiniteError(f"non-finite gradient at epoch {self.epoch + 1}, step {self.step + 1} "
                                 f"(parameters: {', '.join(bad[:5])})")

    # ---------------------------------------------------------------- one step's gradients
    def _part(self, x, w, rng, beta):
        """One ``loss_and_grads`` call on rows x (N, ...), w (N, w_dim), noise from ``rng``: (loss,
        terms, grads) with 0-d loss and terms; grads of the model's parameters and, with --gan, of the
        discriminator's ("disc.*"; the model's decoder gets gamma dL_G added)."""
        loss, terms, grads = self.model.loss_and_grads(x, w, rng, beta=beta)
        if self.gan is None:
            return loss, terms, grads
        loss, terms, dgrads = self.gan.step_grads(self.model, x, w, rng, loss, terms, grads)
        return loss, terms, {**grads, **dgrads}

    def _running_state(self) -> dict:
        """The batch-norm running statistics the forward passes update in place: {name: array}."""
        return {**self.model.state, **(self.gan.state if self.gan is not None else {})}

    def _micro_batches(self, x, w, beta, running):
        """The K parts of this process's batch, as ``StepMean`` wants them: chunk k is rows
        [k N/K, (k+1) N/K) with rows [k N/K, (k+1) N/K) of the noise the whole batch would get (the
        noise stream rewound to the step's start for every chunk: after the last one it stands where
        the un-chunked step leaves it), and every chunk's forward starts from the step's running
        statistics (so their mean is one update with the chunks' mean statistics: docs/distributed.md)."""
        K = self.micro_batches
        if K == 1:
            yield (*self._part(x, w, self.noise_rng, beta), running)
            return
        noise_start = self.noise_rng.get_state()
        state_start = {k: v.copy() for k, v in running.items()}
        for k in range(K):
            if k > 0:
                self.noise_rng.set_state(noise_start)
                for name, v in running.items():
                    v[...] = state_start[name]
            part = self._part(rows_of(x, k, K), rows_of(w, k, K), GlobalNoiseRng(self.noise_rng, k, K), beta)
            yield (*part, running)  # (packed by StepMean before the next chunk runs)

    def _step_grads(self, x, w, beta):
        """This step's (loss, terms, grads): of the batch, or the mean over its micro-batches and / or
        the ranks (one fused buffer; the running statistics are averaged in the same buffer)."""
        if self.step_mean is None:
            return self._part(x, w, self.noise_rng, beta)
        if self.dist is not None:
            self.dist.before_step()
        running = self._running_state()
        loss, terms, grads, state, stop_any = self.step_mean(self._micro_batches(x, w, beta, running),
                                                             stop=self.stop_requested is not None)
        for name, v in running.items():
            v[...] = state[name]
        if self.dist is not None:
            self.dist.after_step(self, stop_any)
        return loss, terms, grads

    def _stopping(self) -> bool:
        """Stop at this step boundary?  (--distributed: when the ranks agreed on it in the all-reduce.)"""
        return self.stop_requested is not None if self.dist is None else self.dist.stop_agreed

    def train_epoch(self):
        xp, cfg = self.xp, self.config
        steps, batch = self._epoch_batches()
        bar = None
        if self.progress:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(total=steps, initial=self.step, desc=f"epoch {self.epoch + 1}/{cfg['epochs']}",
                       leave=False, file=sys.stderr, dynamic_ncols=True)
        while self.step < steps:
            x, w = batch(self.step)
            if self.dist is not None:  # this rank's contiguous B/P rows of the global batch
                x, w = self.dist.shard(x), self.dist.shard(w)
            x, w = to_device(x, xp), to_device(w, xp)
            beta = beta_at(self.epoch + self.step / steps, cfg["warmup"])
            loss, terms, grads = self._step_grads(x, w, beta)
            try:
                self._check_finite(loss, terms, grads)
                dgrads = None if self.gan is None else {k: grads.pop(k) for k in self.gan.params}
                self.opt.step(self.model.params, grads)
                if dgrads is not None:  # VAE-GAN: the discriminator has its own Adam
                    self.gan.opt.step(self.gan.params, dgrads)
                for k, v in terms.items():
                    self.sums[k] = self.sums.get(k, 0.0) + v
                self.sums["loss"] = self.sums.get("loss", 0.0) + loss
            except NonFiniteError as e:
                if self.on_nonfinite == "stop":
                    raise
                self.log(f"warning: {e}; step skipped")
                self.sums["skipped"] = self.sums.get("skipped", 0.0) + 1
            self.step += 1
            if bar is not None:
                bar.update(1)
                if self.step % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss):.2f}", beta=f"{beta:.2f}")
            if self._stopping():
                break
            if self.checkpoint_steps and self.step % self.checkpoint_steps == 0 and self.step < steps:
                self.save()
        if bar is not None:
            bar.close()
        return steps

    def evaluate(self):
        """Test-set terms with beta = 1 (the bound), eval mode, noise from a fixed per-epoch stream."""
        xp = self.xp
        rng = Rng([self.config["seed"], 3, self.epoch])
        sums, n = {}, 0
        for x, w in self.source.test_batches():
            x, w = to_device(x, xp), to_device(w, xp)
            n += len(x)
            loss, terms, _ = self.model.loss_and_grads(x, w, rng, beta=1.0, train=False)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(x)
            sums["loss"] = sums.get("loss", 0.0) + float(loss) * len(x)
        return {k: v / n for k, v in sums.items()}

    def write_samples(self, path):
        """The data source's grid of images generated from labels / attributes."""
        if getattr(self.model, "direction", None) == "image2label":
            return  # a label model: no images to show
        if not self.is_writer:
            return
        self.source.write_samples(self.model, path, Rng([self.config["seed"], 4]))

    def run(self):
        cfg = self.config
        mpath = os.path.join(self.out, "metrics.jsonl")
        self.log(f"training {cfg['variant']} on {self.source.name} | device {device_name(self.xp)} | "
                 f"{sum(int(p.size) for p in self.model.params.values()):,} parameters | run dir {self.out}")
        if self.dist is not None:
            self.dist.check_consistent(self, "at start")  # same seed -> same parameters on every rank
        if self.epoch >= cfg["epochs"]:
            self.log(f"the run is complete ({self.epoch} of {cfg['epochs']} epochs): nothing to do "
                     "(a larger --epochs continues it)")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # (NumPy's warnings: the guard
            return self._run_epochs(mpath)  # stops at a non-finite loss, term or gradient, naming it)

    def _run_epochs(self, mpath):
        cfg = self.config
        while self.epoch < cfg["epochs"]:
            t0 = time.perf_counter()
            steps = self.train_epoch()
            if self._stopping():
                path = self.save()
                self.log(f"{self.stop_requested}: saved {os.path.basename(path)} at epoch {self.epoch + 1}, "
                         f"step {self.step}; continue with the same command and --resume")
                return 130
            skipped = int(self.sums.pop("skipped", 0))
            if skipped >= steps:  # (--on-nonfinite skip) nothing left to average: the run has diverged
                raise NonFiniteError(f"every step of epoch {self.epoch + 1} was non-finite and skipped: stopping "
                                     "(the last checkpoint is kept; try a smaller --lr)")
            train = {k: float(v) / max(steps - skipped, 1) for k, v in self.sums.items()}  # means over taken steps
            train["skipped_steps"] = skipped
            self.epoch, self.step, self.sums = self.epoch + 1, 0, {}
            if self.dist is not None:  # batch-norm running statistics averaged; ranks checked identical
                self.dist.epoch_end(self)
            test = self.evaluate()
            bad = [k for k, v in test.items() if not np.isfinite(v)]
            if bad:  # (checked before anything of this epoch is written: a resume redoes it)
                raise NonFiniteError(f"non-finite test-set terms after epoch {self.epoch} ({', '.join(bad)}): stopping "
                                     "(the last checkpoint is kept)")
            record = {"epoch": self.epoch, "beta": beta_at(self.epoch, cfg["warmup"]), "train": train,
                      "test": test, "seconds": round(time.perf_counter() - t0, 3)}
            if self.is_writer:
                _append_line(mpath, record)
            # the epoch's PNG before its checkpoint: a run killed in between redoes the epoch and
            # writes the same PNG again (after the checkpoint, that PNG would never be written)
            if self.epoch % self.sample_every == 0 or self.epoch == cfg["epochs"]:
                self.write_samples(os.path.join(self.out, f"samples-e{self.epoch:04d}.png"))
            self.keep_snapshot(self.save())
            recs = ", ".join(f"{k} {test[k]:.{1 if k == 'rec_x' else 3}f}" for k in ("rec_x", "rec_w") if k in test)
            self.log(f"epoch {self.epoch}/{cfg['epochs']}  train loss {train['loss']:.2f}  "
                     f"test elbo {test['elbo']:.2f}  ({recs})  {record['seconds']:.1f}s")
        return 0


# The errors a user can cause: one line on stderr, exit 1 (cli.describe: with OSError, MemoryError, Ctrl-C)
USER_ERRORS = (TrainError, DataError, ModelError, CheckpointError, BackendError, NonFiniteError, DistributedError,
               NetSpecError)  # (a --config's network that does not fit its input)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    dist, made_dir, lock = None, None, None
    try:
        config = config_from_args(args)
        if args.distributed:
            dist = DataParallel(init_distributed(args.device), exact_noise=args.exact_noise,
                                ordered_reduce=args.ordered_reduce)
            config["distributed"] = {"ranks": dist.comm.size, "exact_noise": args.exact_noise}
            if args.ordered_reduce:  # only then in the config: older distributed runs keep theirs
                config["distributed"]["ordered_reduce"] = True
            P, K = dist.comm.size, args.micro_batches
            if config["batch_size"] % (P * K):  # the same on every rank: rank 0 says it
                if dist.comm.rank == 0:
                    parts = f"the {P} ranks (each rank takes B/P rows)" if K == 1 else \
                        f"{P} ranks x {K} micro-batches (each micro-batch takes B/(P K) rows)"
                    print(f"error: --batch-size {config['batch_size']} is not divisible by {parts}", file=sys.stderr)
                return 1
        elif args.exact_noise or args.ordered_reduce:
            raise TrainError(f"{'--exact-noise' if args.exact_noise else '--ordered-reduce'} applies to "
                             "--distributed only")
        writer = dist is None or dist.comm.rank == 0
        name = config["dataset"] if config["dataset"] != "data" else \
            os.path.splitext(os.path.basename(config["data"]))[0]
        out = args.out or os.path.join("runs", "-".join(
            [name, config["variant"]] + ([config["direction"]] if config["direction"] else [])))
        if writer:
            lock, created = prepare_run_dir(out, args.resume)
            made_dir = out if created else None
        trainer = Trainer(config, out, device=args.device, progress=not args.no_progress and writer,
                          on_nonfinite=args.on_nonfinite, sample_every=args.sample_every,
                          checkpoint_steps=args.checkpoint_steps, log=print if writer else _quiet, dist=dist,
                          snapshot_every=args.snapshot_every)
        resume = bool(args.resume and list_checkpoints(out)) if writer else None
        if dist is not None:
            resume = dist.comm.bcast_obj(resume)
        if resume:
            trainer.keep_snapshot(trainer.restore())
        elif writer and args.resume:
            print(f"no checkpoint in {out} yet (a run killed before its first one): starting a new run",
                  file=sys.stderr)
            mpath = os.path.join(out, "metrics.jsonl")
            if os.path.exists(mpath):  # epochs of a run killed before its first checkpoint: redone now
                os.unlink(mpath)
        if writer:  # (on resume too: --epochs may have grown; the settings that must agree were checked)
            # (a smaller --epochs: no shrink)
            recorded = {**trainer.config, "epochs": max(config["epochs"], trainer.epoch)}
            _atomic_write_text(os.path.join(out, "config.json"), json.dumps(recorded, indent=2, sort_keys=True) + "\n")

        def request_stop(signum, frame):
            trainer.stop_requested = signal.Signals(signum).name

        old = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return trainer.run()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    except BaseException as e:
        handled = describe(e, USER_ERRORS)
        if handled is None:  # a bug: its traceback; on one rank of many, end the job after it
            if dist is None or not isinstance(e, Exception):
                raise
            traceback.print_exc()
            handled = (f"{type(e).__name__}: {e}", 1)
        else:
            show_traceback_if_asked(e)
        message, code = handled
        print(f"error: {'' if dist is None else f'rank {dist.comm.rank}: '}{message}", file=sys.stderr)
        if made_dir is not None and os.path.isdir(made_dir) and set(os.listdir(made_dir)) <= {LOCK_NAME}:
            os.unlink(os.path.join(made_dir, LOCK_NAME))  # (still held: nobody else can be in there)
            os.rmdir(made_dir)  # a run that failed before writing anything leaves no directory
        if dist is not None:
            dist.comm.abort(code)  # the other ranks may wait in a collective: end the whole job
        return code
    finally:
        if lock is not None:
            lock.close()


def _quiet(*args, **kwargs):
    """The log of ranks other than 0."""


if __name__ == "__main__":
    keep_freed_memory()  # the process is ours: reuse each step's memory (hostmem.py; not for library callers)
    sys.exit(main())
