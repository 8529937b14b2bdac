"""The command ``python -m jmvae_cupy.train``: its options, the run's configuration from them
(:func:`config_from_args`), and :func:`main` (the run directory, the Trainer, signals, one-line
errors).  The module docstring of jmvae_cupy/train/ says what a run writes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback

import numpy as np

from ..backend import BackendError, get_dtype
from ..checkpoint import CheckpointError, list_checkpoints
from ..cli import describe, show_traceback_if_asked
from ..data import DataError
from ..data.paired import open_paired
from ..distributed import DataParallel, DistributedError, init_distributed
from ..fsutil import write_text
from ..models import ModelError
from ..models.config import builtin_base, infer_config, read_config_file, train_defaults
from ..nets import NetSpecError
from .errors import NonFiniteError, TrainError
from .rundir import LOCK_NAME, prepare_run_dir
from .trainer import Trainer


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
        if args.gan:  # only then in the config (a config without "gan" means no GAN)
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
            if args.ordered_reduce:  # only then in the config (without it: the all-reduce)
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
            write_text(os.path.join(out, "config.json"), json.dumps(recorded, indent=2, sort_keys=True) + "\n")

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
