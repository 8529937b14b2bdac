"""The selftest's end-to-end run: ``train mnist --variant kl`` for two epochs on the device, then
``--resume`` to a third, then ``evaluate``, each through the command's own ``main``, in a
temporary directory.

What each step must show:

* train: exit 0; metrics.jsonl holds epochs 1 and 2 with finite train and test terms; a checkpoint
  of epoch 2;
* resume: exit 0 and the log says it resumed from epoch 2; epochs 1 and 2 of metrics.jsonl are
  unchanged and epoch 3 follows; the test bound improved from epoch 1 to epoch 3; and (unless
  ``compare`` is off: ``--quick``, three epochs fewer) the parameters equal those of an
  uninterrupted 3-epoch run of the same seed: bit for bit on the CPU (the data order, binarisation
  and noise come from checkpointed RNG streams: train/trainer.py), within 1e-5 of the largest parameter on a
  GPU (where a library may add in another order from run to run; a resume that lost Adam's moments
  or an RNG state is off by about lr = 1e-3);
* evaluate: exit 0 and finite estimates of both directions, label->image and image->label, for the
  checkpoint of epoch 3.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os

import numpy as np

from jmvae_cupy.checkpoint import list_checkpoints
from jmvae_cupy.checkpoint import load as load_checkpoint

from .bounds import CheckFailed, require


def _quiet(main, argv):
    """(exit status, stdout, stderr) of ``main(argv)`` run with its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _metrics(run: str) -> list:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _finite_record(rec: dict) -> bool:
    values = [v for part in ("train", "test") for v in rec[part].values()]
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


class TrainingRun:
    """The three steps, in order, on one run directory under ``workdir``.

    device: "cpu" or "gpu"; subset: training digits (0: all 8,000 of the embedded subset);
    test_size: test digits the evaluation reads (0: all 2,000); compare: also train 3 epochs
    uninterrupted and compare the parameters with the resumed run's."""

    def __init__(self, device: str, workdir: str, subset: int, test_size: int, compare: bool = True):
        self.device, self.subset, self.test_size, self.compare = device, subset, test_size, compare
        self.run = os.path.join(workdir, "mnist-kl")
        self.straight = os.path.join(workdir, "mnist-kl-3-epochs")
        self.before_resume = None

    def _train(self, out: str, epochs: int, *extra):
        from jmvae_cupy import train  # noqa: PLC0415  (the trainer imports the whole library)

        argv = ["mnist", "--variant", "kl", "--epochs", str(epochs), "--device", self.device, "--no-progress",
                "--out", out, "--sample-every", "100", *(["--train-subset", str(self.subset)] if self.subset else []),
                *extra]
        rc, out_text, err_text = _quiet(train.main, argv)
        require(rc == 0, f"train {' '.join(argv)} exited with {rc}: {err_text.strip().splitlines()[-1:] or out_text}")
        return out_text

    def train_two_epochs(self) -> str:
        self._train(self.run, 2)
        recs = _metrics(self.run)
        require([r["epoch"] for r in recs] == [1, 2], f"metrics.jsonl holds epochs {[r['epoch'] for r in recs]}")
        require(all(_finite_record(r) for r in recs), "a non-finite train or test term in metrics.jsonl")
        ckpts = [os.path.basename(p) for p in list_checkpoints(self.run)]
        require(any(c.startswith("ckpt-000002-") for c in ckpts), f"no checkpoint of epoch 2: {ckpts}")
        self.before_resume = recs
        return (f"2 epochs{f' on {self.subset} digits' if self.subset else ''}: test elbo {recs[0]['test']['elbo']:.1f}"
                f" -> {recs[1]['test']['elbo']:.1f}, checkpoint {ckpts[0]}")

    def resume(self) -> str:
        require(self.before_resume is not None, "the training step did not complete")
        log = self._train(self.run, 3, "--resume")
        require("resumed from ckpt-000002-" in log, f"the log does not say it resumed from epoch 2: {log[:200]!r}")
        recs = _metrics(self.run)
        require([r["epoch"] for r in recs] == [1, 2, 3], f"metrics.jsonl holds epochs {[r['epoch'] for r in recs]}")
        require(recs[:2] == self.before_resume, "resuming changed the records of epochs 1 and 2")
        require(_finite_record(recs[2]), "a non-finite train or test term at epoch 3")
        require(recs[2]["test"]["elbo"] > recs[0]["test"]["elbo"],
                f"the test bound did not improve: {recs[0]['test']['elbo']:.2f} at epoch 1, "
                f"{recs[2]['test']['elbo']:.2f} at epoch 3")
        detail = f"epoch 3 from the epoch-2 checkpoint: test elbo {recs[2]['test']['elbo']:.1f}"
        if not self.compare:
            return detail + " (--quick: not compared with an uninterrupted run)"
        if not any(os.path.basename(c).startswith("ckpt-000003-") for c in list_checkpoints(self.straight)):
            self._train(self.straight, 3)  # (unless a run of the same settings has made it already)
        resumed = load_checkpoint(list_checkpoints(self.run)[0])["params"]
        straight = load_checkpoint(list_checkpoints(self.straight)[0])["params"]
        scale = max(float(np.abs(p).max()) for p in straight.values())
        diff = max(float(np.abs(np.asarray(resumed[k], np.float64) - straight[k]).max()) for k in straight)
        tol = 0.0 if self.device == "cpu" else 1e-5 * scale
        require(diff <= tol, f"the resumed run's parameters differ from an uninterrupted 3-epoch run's by {diff:.3e} "
                             f"(allowed {tol:.1e})")
        same = "bit for bit" if diff == 0 else f"within {diff:.1e}"
        return f"{detail}; parameters equal an uninterrupted 3-epoch run's {same}"

    def evaluate(self) -> str:
        from jmvae_cupy import evaluate  # noqa: PLC0415

        require(self.before_resume is not None, "the training step did not complete")
        argv = [self.run, "--json", "--no-progress", "--device", self.device,
                *(["--test-size", str(self.test_size)] if self.test_size else [])]
        rc, out, err = _quiet(evaluate.main, argv)
        require(rc == 0, f"evaluate exited with {rc}: {err.strip().splitlines()[-1:]}")
        try:
            (row,) = json.loads(out)
        except ValueError as e:
            raise CheckFailed(f"evaluate --json printed no single JSON row: {e}") from None
        require(row["epoch"] == 3, f"evaluate read the checkpoint of epoch {row['epoch']}, not 3")
        cells = {(d, name): est["mean"] for d, ests in row["estimates"].items() for name, est in ests.items()}
        require({d for d, _ in cells} == {"label2image", "image2label"}, f"directions evaluated: {sorted(cells)}")
        require(all(math.isfinite(v) for v in cells.values()), f"non-finite estimates: {cells}")
        return ", ".join(f"{d} {name} {v:.2f}" for (d, name), v in sorted(cells.items()))
