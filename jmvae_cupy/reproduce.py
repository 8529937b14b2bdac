"""The paper's results from one command: Table 1, coherence, Figs. 3-7, learning curves.

    python -m jmvae_cupy.reproduce mnist --out DIR [--epochs N] [--jobs J] [--quick] [--svg]
    python -m jmvae_cupy.reproduce celeba --data FILE.h5 --out DIR [--epochs N] [--jobs J] [--quick]
    python -m jmvae_cupy.reproduce data --data PAIRS.h5 [--config MODEL.toml] --out DIR [...]   (docs/data.md)

1. **Train** every model of the plan (jmvae_cupy/plan.py), each with ``python -m jmvae_cupy.train`` into
   DIR/DATASET-NAME, ``--jobs J`` at a time (one BLAS / Numba thread each when J > 1), each with its
   log in DIR/logs/.  MNIST: JMVAE, JMVAE-kl, JMVAE-h under both readings of its top layer, CVAE and
   CMMA in both directions, and the z = 2 models of Fig. 3 (warm-up over the first 10 % of the
   epochs, the paper's 200 of 2,000; default 300 epochs).  CelebA: JMVAE, JMVAE-kl, JMVAE-h, CVAE
   and CMMA in both directions, and JMVAE-kl with the GAN of Fig. 7 (warm-up over the first 40 %,
   the paper's 20 of 50; default 50 epochs).  Pairs of your own: the runs of Table 1 (100 epochs,
   warm-up over 10 %; no coherence, which needs a classifier of w).  A snapshot every ``--epochs / 12``.
2. **Evaluate** each finished run (jmvae_cupy/plan_eval.py) into DIR/eval/NAME.json: the paper's
   estimators (mean and spread over repeats), the importance-weighted ones, coherence after K
   iterations, and the arrays of the figures (DIR/eval/NAME.npz).  MNIST also: JMVAE-h along both
   paths to z1 and three starts, the diagnostics of jmvae_cupy/diagnostics.py, Fig. 5's curves
   against K, Fig. 3's latent samples, Fig. 4's chains, and the same measures at every training
   snapshot (DIR/eval/NAME-trend.json).  CelebA also: Fig. 6's faces from the attributes of test
   faces along the iterations, Fig. 7(a)'s average and random faces per attribute and Fig. 7(b)'s
   PCA of latent samples (from the GAN run, or JMVAE-kl without it).
3. **Draw and report**: DIR/figures/*.png (matplotlib, jmvae_cupy/plots.py) and DIR/report.md with
   the tables (the paper's numbers beside ours) and the figures; DIR/tables.json holds every table.

Resumable: killed at any point and rerun with the same arguments, it continues each unfinished
run from its checkpoint (train --resume), and skips every evaluation whose JSON names the same
checkpoint and settings.  One progress line on stderr covers the whole plan: its bar counts
training epochs, and each evaluation as a tenth of a run's epochs (so the time left is an
estimate); beside it the runs done and what runs now.  ``--quick`` (two epochs on a few hundred
examples, narrow CelebA networks, few samples) runs the whole pipeline in a minute or two: the
test suite does, for MNIST and on a CelebA-layout file.  Errors: one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from .cli import guarded
from .data.celeba import open_celeba
from .data.errors import DataError
from .data.paired import open_paired
from .distributed import THREAD_VARS
from .plan import PLANS, WARMUP, dataset_of, run_dir, settings_hash
from .report import write_figures, write_report

EVAL_WEIGHT = 0.1  # the progress bar counts an evaluation as this fraction of a run's epochs


class ReproduceError(RuntimeError):
    """A plan that cannot go on (one-line message)."""


def settings(args) -> dict:
    """Everything that decides the numbers (the evaluation JSONs record its hash)."""
    if args.dataset == "celeba":
        return celeba_settings(args)
    if args.dataset == "data":
        return data_settings(args)
    if args.quick:
        return {"epochs": args.epochs or 2, "train_subset": 500, "test_size": 200, "samples": 2, "importance": 5,
                "repeats": 2, "ks": [0, 1, 2], "fig5_ks": [0, 1, 2], "trend_k": 2, "classifier_epochs": 2,
                "snapshot_every": 1}
    e = args.epochs or 300
    return {"epochs": e, "train_subset": 0, "test_size": args.test_size, "samples": 10, "importance": 100,
            "repeats": 3, "ks": [0, 1, 5, 10, 20], "fig5_ks": [0, 1, 2, 3, 5, 10, 20], "trend_k": 10,
            "classifier_epochs": 20, "snapshot_every": max(1, e // 12)}


def data_settings(args) -> dict:
    """Settings for pairs of your own: the paper's estimators and importance sampling, K = 10
    iterations; no coherence (it needs a classifier of the data's w)."""
    if not args.data:
        raise ReproduceError("data needs --data FILE (an .h5 or .npz file of pairs x, w: docs/data.md)")

    try:
        open_paired(args.data)
    except DataError as e:
        raise ReproduceError(str(e)) from None
    common = {"dataset": "data", "data": os.path.abspath(args.data), "train_subset": 0,
              "config": os.path.abspath(args.config) if args.config else None, "test_size": args.test_size}
    if args.quick:
        return {**common, "epochs": args.epochs or 2, "samples": 2, "importance": 3, "repeats": 2, "iterations": 2,
                "ks": [0, 2], "snapshot_every": 1}
    e = args.epochs or 100
    return {**common, "epochs": e, "samples": 10, "importance": 100, "repeats": 3, "iterations": 10,
            "ks": [0, 1, 5, 10], "snapshot_every": max(1, e // 12)}


def celeba_settings(args) -> dict:
    """CelebA's settings: the paper's K = 40 iterations for Table 1; ``--quick``: networks at 1/16 of
    their width, z = 8, batches of 8 (the CelebA-layout fixtures of the tests)."""
    if not args.data:
        raise ReproduceError("celeba needs --data FILE.h5 (made by: python -m jmvae_cupy.data prepare celeba SRC "
                             "--out FILE.h5)")

    try:
        with open_celeba(args.data):
            pass
    except DataError as e:
        raise ReproduceError(str(e)) from None
    common = {"dataset": "celeba", "data": os.path.abspath(args.data), "faces": 6,
              "fig7_attrs": ["Male", "Bald", "Smiling", "Eyeglasses", "Blond_Hair"], "fig7_random": 3}
    if args.quick:
        return {**common, "epochs": args.epochs or 2, "train_subset": 0, "test_size": args.test_size or 16,
                "width_scale": 0.0625, "latent": 8, "batch_size": 8, "samples": 2, "importance": 3, "repeats": 2,
                "iterations": 2, "ks": [0, 1, 2], "fig6_ks": [0, 1, 2], "classifier_epochs": 1,
                "snapshot_every": 1, "pca_samples": 20}
    e = args.epochs or 50
    return {**common, "epochs": e, "train_subset": 0, "test_size": args.test_size or 2000, "width_scale": 1.0,
            "latent": 0, "batch_size": 0, "samples": 10, "importance": 100, "repeats": 3, "iterations": 40,
            "ks": [0, 1, 5, 10, 20, 40], "fig6_ks": [0, 1, 2, 5, 10, 20, 40], "classifier_epochs": 5,
            "snapshot_every": max(1, e // 12), "pca_samples": 200}


def train_argv(out: str, name: str, targs: list, s: dict) -> list:
    ds = dataset_of(s)
    warmup = max(1, round(s["epochs"] * WARMUP[ds])) if not s["train_subset"] else 1
    rd = run_dir(out, name, ds)
    argv = [sys.executable, "-m", "jmvae_cupy.train", ds, *targs, "--epochs", str(s["epochs"]),
            "--warmup", str(warmup), "--snapshot-every", str(s["snapshot_every"]),
            "--sample-every", str(s["snapshot_every"]), "--no-progress", "--out", rd]
    if s["train_subset"]:
        argv += ["--train-subset", str(s["train_subset"])]
    if ds == "data":
        argv += ["--data", s["data"]] + (["--config", s["config"]] if s["config"] else [])
    if ds == "celeba":
        argv += ["--data", s["data"], "--width-scale", str(s["width_scale"])]
        argv += ["--latent", str(s["latent"])] if s["latent"] else []
        argv += ["--batch-size", str(s["batch_size"])] if s["batch_size"] else []
    if os.path.isdir(rd):
        argv.append("--resume")
    return argv


def epochs_done(path: str) -> int:
    try:
        with open(os.path.join(path, "metrics.jsonl"), encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


class Plan:
    """Runs the plan's subprocesses, ``jobs`` at a time, under the plan's one progress bar ``bar``
    (a tqdm bar over training epochs, or None)."""

    def __init__(self, out: str, jobs: int, bar=None):
        self.out, self.jobs, self.bar = out, jobs, bar
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if jobs > 1:  # J processes on J cores: one thread each, unless the user set them
            for k in THREAD_VARS:
                self.env.setdefault(k, "1")
        self.failed: list = []
        self.live: dict = {}  # name -> the running subprocess
        self.lock = threading.Lock()

    def say(self, what: str) -> None:
        """The text beside the bar (what the plan does now)."""
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=True)

    def _run(self, name: str, argv: list, log: str) -> None:
        with open(log, "ab") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=self.env)
            with self.lock:
                self.live[name] = proc
            rc = proc.wait()
        with self.lock:
            del self.live[name]
            if rc != 0:
                self.failed.append(f"{name} (exit {rc}; log {log})")

    def run_all(self, tasks: list, what: str, done, status=None) -> None:
        """tasks: [(name, argv)]; ``done()`` -> the bar's position (units of the whole plan finished)
        and ``status(names)`` -> a word on the running tasks (both polled every second).  Interrupted
        (Ctrl-C, SIGTERM, an error), it stops the running tasks (a trainer saves a checkpoint first)
        and waits for them."""
        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)
        self.live, self.failed = {}, []
        pool = ThreadPoolExecutor(self.jobs)
        try:
            futures = [pool.submit(self._run, n, a, os.path.join(self.out, "logs", f"{what}-{n}.log"))
                       for n, a in tasks]
            while True:
                finished = all(f.done() for f in futures)
                if self.bar is not None:
                    self.bar.n = done()
                    running = sorted(self.live)
                    word = status(running) if status else ", ".join(running)
                    self.say(f"{what}: {sum(f.done() for f in futures)}/{len(futures)} runs done"
                             + (f"; now {word}" if running else ""))
                if finished:
                    break
                time.sleep(1.0)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            with self.lock:
                procs = list(self.live.values())
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
        if self.failed:
            raise ReproduceError(f"{what} failed: {'; '.join(self.failed)}")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the running trainings checkpoint and stop (Plan.run_all)


def _reproduce(args) -> int:
    if args.epochs is not None and args.epochs < 1:
        raise ReproduceError(f"--epochs must be >= 1, got {args.epochs}")
    if args.jobs < 1:
        raise ReproduceError(f"--jobs must be >= 1, got {args.jobs}")
    if args.data and args.dataset == "mnist":
        raise ReproduceError("--data is for celeba and data (mnist reads the embedded digits)")
    if args.config and args.dataset != "data":
        raise ReproduceError(f"--config is for data (the model of {args.dataset} is built in)")
    s = settings(args)
    out = args.out
    try:
        os.makedirs(os.path.join(out, "eval"), exist_ok=True)
    except OSError as e:
        raise ReproduceError(f"cannot create {out}: {e.strerror or e}") from None
    t0 = time.time()
    ds, names = args.dataset, [n for n, _ in PLANS[args.dataset]]
    h = settings_hash(s)
    epochs = s["epochs"] * len(names)
    eval_units = EVAL_WEIGHT * s["epochs"]

    def trained() -> float:
        return sum(min(epochs_done(run_dir(out, n, ds)), s["epochs"]) for n in names)

    def status(running: list) -> str:
        return ", ".join(f"{n} epoch {epochs_done(run_dir(out, n, ds)) + 1}/{s['epochs']}" for n in running)

    with tqdm(total=epochs + eval_units * len(names), desc=f"reproduce {ds}", unit="ep", file=sys.stderr,
              dynamic_ncols=True, disable=not args.progress,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}") as bar:
        plan = Plan(out, args.jobs, bar if args.progress else None)
        plan.run_all([(n, train_argv(out, n, a, s)) for n, a in PLANS[ds]], "train", trained, status)
        plan.say("training the coherence classifier")
        from .plan_eval import ensure_classifier  # noqa: PLC0415  (numerics: only once training is done)

        ensure_classifier(out, s, log=lambda m: bar.write(m, file=sys.stderr) if args.progress else
                          print(m, file=sys.stderr))
        evals = [(n, [sys.executable, "-m", "jmvae_cupy.plan_eval", out, n, json.dumps(s)]) for n in names]
        plan.run_all(evals, "evaluate", lambda: epochs + eval_units * sum(_eval_current(out, n, h) for n in names))
        plan.say("drawing the figures and the report")
    figures = write_figures(out, names, s, svg=args.svg)
    write_report(out, names, s, figures, command=" ".join(["python -m jmvae_cupy.reproduce"]
                 + sys.argv[1:] if args.command is None else [args.command]), seconds=time.time() - t0)
    print(f"wrote {os.path.join(out, 'report.md')}, {os.path.join(out, 'tables.json')} and "
          f"{len(figures)} figures in {os.path.join(out, 'figures')}")
    return 0


def _eval_current(out: str, name: str, h: str) -> bool:
    try:
        with open(os.path.join(out, "eval", f"{name}.json"), encoding="utf-8") as f:
            return json.load(f).get("settings_hash") == h
    except (OSError, ValueError):
        return False


def build_parser():
    p = argparse.ArgumentParser(prog="python -m jmvae_cupy.reproduce", description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=sorted(PLANS))
    p.add_argument("--out", required=True, help="directory of the runs, evaluations, figures and report")
    p.add_argument("--data", default=None, help="celeba: the HDF5 file made by 'python -m jmvae_cupy.data prepare "
                   "celeba SRC --out FILE.h5'; data: your paired .h5 / .npz file (docs/data.md)")
    p.add_argument("--config", default=None, help="data: the model config (TOML / JSON; default: inferred from the "
                   "data, as train data does)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per run (default 300, celeba 50, data 100; --quick: 2)")
    p.add_argument("--jobs", type=int, default=1, help="trainings / evaluations side by side (default 1)")
    p.add_argument("--test-size", type=int, default=0,
                   help="test examples to evaluate on (default 0: all 2,000 digits; celeba: the first 2,000 faces)")
    p.add_argument("--quick", action="store_true", help="the whole pipeline on a tiny budget (tests, CI)")
    p.add_argument("--svg", action="store_true", help="also write every figure as SVG")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line (stderr)")
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)  # the command the report quotes
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        return guarded(lambda: _reproduce(args), (ReproduceError,))
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
