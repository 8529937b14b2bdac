"""The paper's MNIST results from one command: Table 1, coherence, Figs. 3-5, learning curves.

    python -m jmvae_cupy.reproduce mnist --out DIR [--epochs N] [--jobs J] [--quick] [--svg]

1. **Train** every model of the plan (:data:`PLAN`): JMVAE, JMVAE-kl, JMVAE-h under both readings
   of its top layer, CVAE and CMMA in both directions, and the z = 2 models of Fig. 3, each with
   ``python -m jmvae_cupy.train`` into DIR/mnist-NAME (warm-up over the first 10 % of the epochs,
   the paper's 200 of 2,000; a snapshot every ``--epochs / 12``), ``--jobs J`` at a time (one
   BLAS / Numba thread each when J > 1), each with its log in DIR/logs/.
2. **Evaluate** each finished run (:func:`evaluate_plan_run`) into DIR/eval/NAME.json: the paper's
   estimators (mean and spread over repeats), the importance-weighted ones, coherence after
   K = 0, 1, 5, 10, 20 iterations (JMVAE-h along both paths to z1, from zeros and from noise),
   the diagnostics of jmvae_cupy/diagnostics.py, Fig. 5's curves against K, Fig. 3's latent
   samples and Fig. 4's chains (DIR/eval/NAME.npz), and the same at every training snapshot
   (DIR/eval/NAME-trend.json) so the trend is visible.
3. **Draw and report**: DIR/figures/*.png (matplotlib, jmvae_cupy/plots.py) and DIR/report.md with
   the tables (the paper's numbers beside ours) and the figures; DIR/tables.json holds every table.

Resumable: killed at any point and rerun with the same arguments, it continues each unfinished
run from its checkpoint (train --resume), and skips every evaluation whose JSON names the same
checkpoint and settings.  One progress line on stderr covers the whole plan.  ``--quick`` (two
epochs on 500 training digits, 200 test digits, few samples) runs the whole pipeline in about a
minute: the test suite does.  Errors: one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .cli import guarded
from .report import write_figures, write_report

DATASETS = ("mnist",)
# (name, train arguments): the runs of Table 1, the second reading of JMVAE-h, and Fig. 3's z = 2 models
PLAN = [
    ("jmvae", ["--variant", "jmvae"]),
    ("kl", ["--variant", "kl"]),
    ("h", ["--variant", "h"]),
    ("h-z1top", ["--variant", "h", "--h-top", "z1"]),
    ("cvae-label2image", ["--variant", "cvae", "--direction", "label2image"]),
    ("cvae-image2label", ["--variant", "cvae", "--direction", "image2label"]),
    ("cmma-label2image", ["--variant", "cmma", "--direction", "label2image"]),
    ("cmma-image2label", ["--variant", "cmma", "--direction", "image2label"]),
    ("jmvae-z2", ["--variant", "jmvae", "--latent", "2"]),
    ("kl-z2", ["--variant", "kl", "--latent", "2"]),
    ("h-z2", ["--variant", "h", "--latent", "2"]),
]
THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class ReproduceError(RuntimeError):
    """A plan that cannot go on (one-line message)."""


def settings(args) -> dict:
    """Everything that decides the numbers (the evaluation JSONs record its hash)."""
    if args.quick:
        return {"epochs": args.epochs or 2, "train_subset": 500, "test_size": 200, "samples": 2, "importance": 5,
                "repeats": 2, "ks": [0, 1, 2], "fig5_ks": [0, 1, 2], "trend_k": 2, "classifier_epochs": 2,
                "snapshot_every": 1}
    e = args.epochs or 300
    return {"epochs": e, "train_subset": 0, "test_size": args.test_size, "samples": 10, "importance": 100,
            "repeats": 3, "ks": [0, 1, 5, 10, 20], "fig5_ks": [0, 1, 2, 3, 5, 10, 20], "trend_k": 10,
            "classifier_epochs": 20, "snapshot_every": max(1, e // 12)}


def run_dir(out: str, name: str) -> str:
    return os.path.join(out, f"mnist-{name}")


def train_argv(out: str, name: str, targs: list, s: dict) -> list:
    warmup = max(1, round(s["epochs"] / 10)) if not s["train_subset"] else 1  # the paper: 200 of 2,000
    argv = [sys.executable, "-m", "jmvae_cupy.train", "mnist", *targs, "--epochs", str(s["epochs"]),
            "--warmup", str(warmup), "--snapshot-every", str(s["snapshot_every"]),
            "--sample-every", str(s["snapshot_every"]), "--no-progress", "--out", run_dir(out, name)]
    if s["train_subset"]:
        argv += ["--train-subset", str(s["train_subset"])]
    if os.path.isdir(run_dir(out, name)):
        argv.append("--resume")
    return argv


def epochs_done(path: str) -> int:
    try:
        with open(os.path.join(path, "metrics.jsonl"), encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


class Plan:
    """Runs the plan's subprocesses, ``jobs`` at a time, under one progress bar."""

    def __init__(self, out: str, jobs: int, progress: bool):
        self.out, self.jobs, self.progress = out, jobs, progress
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if jobs > 1:  # J processes on J cores: one thread each, unless the user set them
            for k in THREADS:
                self.env.setdefault(k, "1")
        self.failed: list = []
        self.live: dict = {}  # name -> the running subprocess
        self.lock = threading.Lock()

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

    def run_all(self, tasks: list, what: str, total: int, done, status=None) -> None:
        """tasks: [(name, argv)]; ``done()`` -> units finished so far and ``status(names)`` -> a word on
        the running tasks (both polled for the bar).  Interrupted (Ctrl-C, SIGTERM, an error), it
        stops the running tasks (a trainer saves a checkpoint first) and waits for them."""
        from tqdm import tqdm  # noqa: PLC0415

        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)
        self.live, self.failed = {}, []
        pool = ThreadPoolExecutor(self.jobs)
        try:
            with tqdm(total=total, desc=what, unit="ep" if what == "train" else "run", file=sys.stderr,
                      dynamic_ncols=True, disable=not self.progress) as bar:
                futures = [pool.submit(self._run, n, a, os.path.join(self.out, "logs", f"{what}-{n}.log"))
                           for n, a in tasks]
                while not all(f.done() for f in futures):
                    bar.n = done()
                    running = sorted(self.live)
                    word = status(running) if status else ", ".join(running)
                    bar.set_postfix_str(f"{sum(f.done() for f in futures)}/{len(futures)} done; now {word}",
                                        refresh=True)
                    time.sleep(1.0)
                bar.n = done()
                bar.refresh()
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


def settings_hash(s: dict) -> str:
    return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the running trainings checkpoint and stop (Plan.run_all)


def _reproduce(args) -> int:
    if args.epochs is not None and args.epochs < 1:
        raise ReproduceError(f"--epochs must be >= 1, got {args.epochs}")
    if args.jobs < 1:
        raise ReproduceError(f"--jobs must be >= 1, got {args.jobs}")
    s = settings(args)
    out = args.out
    try:
        os.makedirs(os.path.join(out, "eval"), exist_ok=True)
    except OSError as e:
        raise ReproduceError(f"cannot create {out}: {e.strerror or e}") from None
    t0 = time.time()
    plan = Plan(out, args.jobs, args.progress)
    tasks = [(n, train_argv(out, n, a, s)) for n, a in PLAN]
    plan.run_all(tasks, "train", s["epochs"] * len(tasks),
                 lambda: sum(min(epochs_done(run_dir(out, n)), s["epochs"]) for n, _ in PLAN),
                 lambda names: ", ".join(f"{n} epoch {epochs_done(run_dir(out, n)) + 1}" for n in names))
    from .plan_eval import ensure_classifier  # noqa: PLC0415  (numerics: only once training is done)

    ensure_classifier(out, s, log=lambda m: print(m, file=sys.stderr))
    h = settings_hash(s)
    evals = [(n, [sys.executable, "-m", "jmvae_cupy.plan_eval", out, n, json.dumps(s)]) for n, _ in PLAN]
    plan.run_all(evals, "evaluate", len(evals),
                 lambda: sum(_eval_current(out, n, h) for n, _ in PLAN))
    figures = write_figures(out, [n for n, _ in PLAN], svg=args.svg, trend_k=s["trend_k"])
    write_report(out, [n for n, _ in PLAN], s, figures, command=" ".join(["python -m jmvae_cupy.reproduce"]
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
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--out", required=True, help="directory of the runs, evaluations, figures and report")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 300; --quick: 2)")
    p.add_argument("--jobs", type=int, default=1, help="trainings / evaluations side by side (default 1)")
    p.add_argument("--test-size", type=int, default=0, help="test digits to evaluate on (default 0: all 2,000)")
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
