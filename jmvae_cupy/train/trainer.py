"""The Trainer: a run's model, optimiser, data and RNG streams, its loop (:meth:`Trainer.fit`:
epochs of :func:`~jmvae_cupy.train.step.train_step`, then test terms, metrics, samples and a
checkpoint) and its checkpoints, kept in one object so that a resume is exact.  Micro-batches and
data parallelism come in through ``Trainer._step_grads`` (distributed.StepMean, DataParallel), the
VAE-GAN through ``_step_grads`` and ``_update``."""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
from tqdm import tqdm

from ..backend import device_name, get_dtype, select_device, to_device
from ..checkpoint import load_latest, restore_arrays
from ..checkpoint import save as save_checkpoint
from ..distributed import GlobalNoiseRng, StepMean, rows_of
from ..fsutil import write_text
from ..models import build_model
from ..models.config import arch_from_model
from ..models.gan import VAEGAN
from ..optim import Adam
from ..rng import Rng
from .errors import NonFiniteError, TrainError
from .rundir import append_line, metrics_lines_up_to
from .sources import make_source, run_model_record
from .step import beta_at, train_step

# Settings that must agree between a run and the checkpoint it resumes from.
RESUME_KEYS = ("dataset", "variant", "batch_size", "lr", "warmup", "latent", "alpha", "seed", "dtype", "data_dir",
               "train_subset", "direction", "data", "width_scale", "gan", "gan_weight")
RESUME_KEYS += ("distributed",)  # {"ranks": P, "exact_noise": ..., ["ordered_reduce": True]}: --distributed only
RESUME_KEYS += ("micro_batches",)  # K: in runs with --micro-batches K > 1 only
RESUME_KEYS += ("h_top",)  # JMVAE-h's top layer: in runs with --h-top z1 only
RESUME_KEYS += ("model",)  # the resolved model config (compared when the checkpoint's config has one)


def _short(v) -> str:
    """A setting in a one-line message: its repr, cut to 80 characters."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


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
            meta = self.dist.checkpoint_meta(self.noise_rng.get_state(), meta)
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
            self.noise_rng.set_state(self.dist.noise_state(meta))
        self.epoch_data_state = meta["data_rng_epoch_start"]
        self.sums = {k: v for k, v in meta["partial_sums"].items()}
        # keep the metrics of completed epochs only: the lines after the checkpoint are redone
        mpath = os.path.join(self.out, "metrics.jsonl")
        if self.is_writer and os.path.exists(mpath):
            write_text(mpath, "".join(metrics_lines_up_to(mpath, self.epoch)))
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
        running = self._running_state()
        loss, terms, grads, state, stop_any = self.step_mean(self._micro_batches(x, w, beta, running),
                                                             stop=self.stop_requested is not None)
        for name, v in running.items():
            v[...] = state[name]
        if self.dist is not None and self.dist.agree_stop(stop_any) and self.stop_requested is None:
            self.stop_requested = "stop requested on another rank"
        return loss, terms, grads

    def _check_ranks(self, when: str) -> None:
        """--distributed: every rank holds the same parameters, state, optimiser steps and data-RNG
        state (a checksum all-gather; DataParallel.check_consistent)."""
        gan = self.gan
        arrays = [self.model.params, self.model.state] + ([gan.state, gan.params] if gan is not None else [])
        self.dist.check_consistent(when, arrays, (self.opt.t, gan and gan.opt.t, self.data_rng.get_state()))

    def _stopping(self) -> bool:
        """Stop at this step boundary?  (--distributed: when the ranks agreed on it in the all-reduce.)"""
        return self.stop_requested is not None if self.dist is None else self.dist.stop_agreed

    def train_epoch(self) -> int:
        """The steps of this epoch from ``self.step`` on (a resumed epoch goes on where it stopped), each
        one :func:`~jmvae_cupy.train.step.train_step`; returns the epoch's number of steps."""
        steps, batch = self._epoch_batches()
        bar = Progress(self.progress, steps, self.step, f"epoch {self.epoch + 1}/{self.config['epochs']}")
        while self.step < steps:
            x, w = self._device_batch(*batch(self.step))
            beta = beta_at(self.epoch + self.step / steps, self.config["warmup"])
            try:
                loss, terms = train_step(self._step_grads, self._update, x, w, beta,
                                         where=f"epoch {self.epoch + 1}, step {self.step + 1}")
                self._add_to_sums(loss, terms)
            except NonFiniteError as e:
                if self.on_nonfinite == "stop":
                    raise
                self.log(f"warning: {e}; step skipped")
                self.sums["skipped"] = self.sums.get("skipped", 0.0) + 1
            self.step += 1
            bar.update(self.sums, beta)
            if self._stopping():
                break
            if self.checkpoint_steps and self.step % self.checkpoint_steps == 0 and self.step < steps:
                self.save()
        bar.close()
        return steps

    def _device_batch(self, x, w):
        """Batch rows on the device: this rank's contiguous B/P rows of the global batch (--distributed)."""
        if self.dist is not None:
            x, w = self.dist.shard(x), self.dist.shard(w)
        return to_device(x, self.xp), to_device(w, self.xp)

    def _update(self, grads) -> None:
        """Adam on the model's parameters; with --gan the discriminator's gradients ("disc.*") go to its
        own Adam."""
        dgrads = None if self.gan is None else {k: grads.pop(k) for k in self.gan.params}
        self.opt.step(self.model.params, grads)
        if dgrads is not None:
            self.gan.opt.step(self.gan.params, dgrads)

    def _add_to_sums(self, loss, terms) -> None:
        """The epoch's running sums of the train terms and loss (device scalars: no host read per step)."""
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss

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
        self.log(f"training {cfg['variant']} on {self.source.name} | device {device_name(self.xp)} | "
                 f"{sum(int(p.size) for p in self.model.params.values()):,} parameters | run dir {self.out}")
        if self.dist is not None:
            self._check_ranks("at start")  # same seed -> same parameters on every rank
        if self.epoch >= cfg["epochs"]:
            self.log(f"the run is complete ({self.epoch} of {cfg['epochs']} epochs): nothing to do "
                     "(a larger --epochs continues it)")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # (NumPy's warnings: the guard
            return self.fit()  # stops at a non-finite loss, term or gradient, naming it)

    def fit(self) -> int:
        """Train until --epochs: each epoch's steps, then its test terms, its metrics line, its sample PNG
        and its checkpoint.  Returns 0, or 130 when a signal asked to stop (after saving a checkpoint)."""
        cfg = self.config
        while self.epoch < cfg["epochs"]:
            t0 = time.perf_counter()
            steps = self.train_epoch()
            if self._stopping():
                path = self.save()
                self.log(f"{self.stop_requested}: saved {os.path.basename(path)} at epoch {self.epoch + 1}, "
                         f"step {self.step}; continue with the same command and --resume")
                return 130
            train = self._epoch_means(steps)
            self.epoch, self.step, self.sums = self.epoch + 1, 0, {}
            if self.dist is not None:  # batch-norm running statistics averaged: the ranks must agree
                self._check_ranks(f"after epoch {self.epoch}")
            test = self.evaluate()
            self._finish_epoch(train, test, time.perf_counter() - t0)
        return 0

    def _epoch_means(self, steps: int) -> dict:
        """The epoch's train terms: means over the steps taken (--on-nonfinite skip: the skipped ones left out)."""
        skipped = int(self.sums.pop("skipped", 0))
        if skipped >= steps:  # (--on-nonfinite skip) nothing left to average: the run has diverged
            raise NonFiniteError(f"every step of epoch {self.epoch + 1} was non-finite and skipped: stopping "
                                 "(the last checkpoint is kept; try a smaller --lr)")
        train = {k: float(v) / max(steps - skipped, 1) for k, v in self.sums.items()}
        train["skipped_steps"] = skipped
        return train

    def _finish_epoch(self, train: dict, test: dict, seconds: float) -> None:
        """What an epoch leaves, in this order: its metrics line, its sample PNG, its checkpoint (and
        snapshot), the log line.  The PNG comes before the checkpoint: a run killed in between redoes
        the epoch and writes the same PNG again (after the checkpoint, that PNG would never be written)."""
        cfg = self.config
        bad = [k for k, v in test.items() if not np.isfinite(v)]
        if bad:  # (checked before anything of this epoch is written: a resume redoes it)
            raise NonFiniteError(f"non-finite test-set terms after epoch {self.epoch} ({', '.join(bad)}): stopping "
                                 "(the last checkpoint is kept)")
        record = {"epoch": self.epoch, "beta": beta_at(self.epoch, cfg["warmup"]), "train": train,
                  "test": test, "seconds": round(seconds, 3)}
        if self.is_writer:
            append_line(os.path.join(self.out, "metrics.jsonl"), record)
        if self.epoch % self.sample_every == 0 or self.epoch == cfg["epochs"]:
            self.write_samples(os.path.join(self.out, f"samples-e{self.epoch:04d}.png"))
        self.keep_snapshot(self.save())
        recs = ", ".join(f"{k} {test[k]:.{1 if k == 'rec_x' else 3}f}" for k in ("rec_x", "rec_w") if k in test)
        self.log(f"epoch {self.epoch}/{cfg['epochs']}  train loss {train['loss']:.2f}  "
                 f"test elbo {test['elbo']:.2f}  ({recs})  {record['seconds']:.1f}s")


class Progress:
    """The tqdm bar of an epoch's steps on stderr (a no-op when ``enabled`` is False), showing the mean
    train loss so far and beta every 10 steps."""

    def __init__(self, enabled: bool, steps: int, initial: int, desc: str):
        self.bar = None
        if enabled:
            self.bar = tqdm(total=steps, initial=initial, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)

    def update(self, sums: dict, beta: float) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if self.bar.n % 10 == 0 and "loss" in sums:
            taken = self.bar.n - self.bar.initial - int(sums.get("skipped", 0))
            self.bar.set_postfix(loss=f"{float(sums['loss']) / max(taken, 1):.2f}", beta=f"{beta:.2f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
