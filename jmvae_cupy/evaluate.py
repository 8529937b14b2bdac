"""Evaluate trained runs: the paper's Table 1 (test conditional log-likelihoods) and its figures.

    python -m jmvae_cupy.evaluate RUN_DIR [RUN_DIR ...] [--json] [--samples N] [--iterations K]
                                  [--importance S] [--repeats R] [--test-size M] [--no-progress]
    python -m jmvae_cupy.evaluate figures RUN_DIR [RUN_DIR ...] --out DIR    (jmvae_cupy/figures.py)

Each run is loaded from its newest good checkpoint and its ``config.json`` and evaluated on the
binarised test set of its data (the embedded subset: 2,000 digits, binarised once with a fixed
seed).  JMVAE-family runs give both directions; a CVAE / CMMA run gives the direction it was
trained for, and rows of the same model and estimator are merged.  Each cell is the mean over
the test set, then mean +- std over R repeats of the estimator's randomness (seeds 0..R-1).
Estimator names and what they bound: jmvae_cupy/estimators.py.  A progress bar on stderr counts
the batches of 500 test examples each (direction, repeat) of each run evaluates (``--no-progress``:
none); the table or ``--json`` goes to stdout alone.  Errors (a missing or damaged run directory or
``config.json``, ...): one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .backend import BackendError, asnumpy, select_device, to_device
from .checkpoint import CheckpointError, load_latest, restore_arrays
from .checkpoint import load as load_checkpoint
from .cli import guarded
from .data import DataError, binarized_test_set, load_mnist, one_hot
from .estimators import DIRECTIONS, complete, evaluate_model, paper_estimate
from .generate import GenerateError, read_config
from .inference import x_from_w
from .models import ModelError, build_model
from .rng import Rng

NAMES = {"jmvae": "JMVAE", "kl": "JMVAE-kl", "h": "JMVAE-h", "cvae": "CVAE", "cmma": "CMMA"}
COLUMNS = {"label2image": "label->image", "image2label": "image->label"}
BATCH = 500  # test examples per call of the estimators (evaluate_model's batch): one tick of the progress bar


class EvaluateError(RuntimeError):
    """A run directory that cannot be evaluated (one-line message)."""


def load_run(run_dir: str, device="cpu", test_size: int = 0, checkpoint_path: str | None = None):
    """(model, config, test x, test w, epoch) of the newest good checkpoint in ``run_dir`` (or of
    ``checkpoint_path``, e.g. a snapshot of train --snapshot-every, MNIST runs).

    MNIST: the binarised test set.  CelebA: the first ``test_size`` test images of the run's HDF5
    file (all if 0: about 50 MB of float32 per 1,000 faces), read through generate.Run, which
    also recovers the image size and widths of the run's architecture.
    """
    cfg = run_config(run_dir)
    if cfg.get("dataset") == "celeba":
        return _load_celeba_run(run_dir, device, test_size)
    try:
        if checkpoint_path is None:
            ck = load_latest(run_dir, warn=lambda m: print(m, file=sys.stderr))  # (m says "warning: ...")
        else:
            ck = load_checkpoint(checkpoint_path)
        xp = select_device(device)
        model = build_model(cfg["dataset"], cfg["variant"], seed=cfg["seed"], dtype=cfg["dtype"], xp=xp,
                            latent=cfg["latent"], alpha=cfg["alpha"], direction=cfg["direction"],
                            h_top=cfg["h_top"])
        restore_arrays(model.params, ck["params"], xp, "parameters")
        restore_arrays(model.state, ck["state"], xp, "state")
        data = load_mnist(cfg.get("data_dir"))
    except (CheckpointError, ModelError, DataError, BackendError, KeyError) as e:
        raise EvaluateError(f"{run_dir}: {e}") from None
    x = to_device(binarized_test_set(data, dtype=model.dtype), xp)
    w = to_device(one_hot(data.test_y, 10, model.dtype), xp)
    return model, cfg, x, w, int(ck["meta"]["epoch"])


def run_config(run_dir: str) -> dict:
    """The checked config.json of a run directory (generate.read_config), or an EvaluateError naming the
    file and what is wrong with it."""
    try:
        return read_config(run_dir)
    except GenerateError as e:
        raise EvaluateError(str(e)) from None


def _load_celeba_run(run_dir, device, test_size):
    from .generate import Run  # noqa: PLC0415

    try:
        run = Run(run_dir, device=device)
        n = run.n_test if not test_size else min(test_size, run.n_test)
        rows = np.arange(n)
        x, w = run.test_x(rows), run.test_w(rows)
    except (GenerateError, CheckpointError, ModelError, DataError, BackendError, KeyError) as e:
        raise EvaluateError(str(e) if str(e).startswith(run_dir) else f"{run_dir}: {e}") from None
    epoch = int(run.checkpoint.split("-")[1])
    return run.model, run.config, x, w, epoch


def directions(model) -> list:
    """The directions a model is evaluated in: a baseline's own, both for the JMVAE family."""
    return [model.direction] if hasattr(model, "direction") else list(DIRECTIONS)


def batches(n: int) -> int:
    """Estimator calls per (direction, repeat) on n test examples (the progress bar's unit)."""
    return -(-n // BATCH)


def evaluate_run(model, x, w, samples=10, iterations=10, importance=0, repeats=1, tick=None):
    """{direction: {estimator: (mean, std, values)}} over ``repeats`` seeds (one random stream per
    (direction, repeat)); the test set goes through the estimators in batches of BATCH rows, and
    ``tick()`` (optional, a progress bar) follows each batch."""
    out = {}
    for d in directions(model):
        reps = [evaluate_model(model, x, w, d, Rng([r, 11]), samples, iterations, importance, BATCH, tick=tick)
                for r in range(repeats)]
        out[d] = {k: (float(np.mean([r[k] for r in reps])), float(np.std([r[k] for r in reps])), [r[k] for r in reps])
                  for k in reps[0]}
    return out


def _fmt(cell):
    if cell is None:
        return "—"
    m, s = cell
    digits = 4 if abs(m) < 10 else 1
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def table(results: list) -> str:
    """Markdown: one row per (model, estimator); the joint log p(x,w) in a second table."""
    rows, joint = {}, {}
    for r in results:
        for d, ests in r["estimates"].items():
            for est, v in ests.items():
                target = joint if est.endswith("-joint") else rows
                key = (r["model"], est)
                target.setdefault(key, {})[d] = (v["mean"], v["std"])
    lines = ["| model | label->image | image->label | estimator |", "|---|---|---|---|"]
    for (m, est), cells in rows.items():
        lines.append(f"| {m} | {_fmt(cells.get('label2image'))} | {_fmt(cells.get('image2label'))} | {est} |")
    if joint:
        lines += ["", "| model | log p(x, w) | estimator |", "|---|---|---|"]
        for (m, est), cells in joint.items():
            lines.append(f"| {m} | {_fmt(next(iter(cells.values())))} | {est} |")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m jmvae_cupy.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    p.add_argument("--samples", type=int, default=10, help="N of Eq. 5 / Eq. 6 (default 10, the paper's)")
    p.add_argument("--iterations", type=int, default=10, help="K iterative-sampling steps (default 10)")
    p.add_argument("--importance", type=int, default=0,
                   help="S importance samples for the iwS / snisS estimates (default 0: off)")
    p.add_argument("--repeats", type=int, default=1, help="R repeats of the estimators' randomness (default 1)")
    p.add_argument("--test-size", type=int, default=0, help="evaluate on the first M test digits / faces only (0: all)")
    p.add_argument("--device", default="cpu", help="cpu | gpu | auto (default cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (on stderr)")
    return p


def _evaluate(args) -> int:
    for name, val, lo in (("samples", args.samples, 1), ("iterations", args.iterations, 0),
                          ("importance", args.importance, 0), ("repeats", args.repeats, 1),
                          ("test-size", args.test_size, 0)):
        if val < lo:
            raise EvaluateError(f"--{name} must be >= {lo}, got {val}")
    for rd in args.runs:  # every config first: a damaged one is found before any run is loaded
        run_config(rd)
    loaded = []
    for rd in args.runs:
        model, cfg, x, w, epoch = load_run(rd, args.device, args.test_size)
        if args.test_size:
            x, w = x[: args.test_size], w[: args.test_size]
        loaded.append((rd, model, cfg, x, w, epoch))
    from tqdm import tqdm  # noqa: PLC0415

    total = sum(len(directions(m)) * args.repeats * batches(x.shape[0]) for _, m, _, x, _, _ in loaded)
    results = []
    with tqdm(total=total, unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True,
              disable=not args.progress) as bar:
        for rd, model, cfg, x, w, epoch in loaded:
            bar.set_description(os.path.basename(os.path.normpath(rd)))
            est = evaluate_run(model, x, w, args.samples, args.iterations, args.importance, args.repeats,
                               tick=lambda: bar.update(1))
            results.append({
                "run": rd, "model": NAMES[cfg["variant"]], "variant": cfg["variant"], "epoch": epoch,
                "dataset": cfg["dataset"],
                "direction": cfg["direction"], "test_size": int(x.shape[0]), "samples": args.samples,
                "iterations": args.iterations, "importance": args.importance, "repeats": args.repeats,
                "estimates": {d: {k: {"mean": m, "std": s, "repeats": v} for k, (m, s, v) in e.items()}
                              for d, e in est.items()}})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table(results))
        items = "faces" if all(r["dataset"] == "celeba" for r in results) else \
            "digits" if all(r["dataset"] == "mnist" for r in results) else "examples"
        print(f"\n(test {items}: {results[0]['test_size']}; N = {args.samples}, K = {args.iterations}, "
              f"S = {args.importance}, mean ± std over {args.repeats} repeat(s); estimators: jmvae_cupy/estimators.py)")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["figures"]:
        from .figures import main as figures_main  # noqa: PLC0415

        return figures_main(argv[1:])
    args = build_parser().parse_args(argv)
    return guarded(lambda: _evaluate(args), (EvaluateError,))


# ------------------------------------------------------------------------ helpers used by figures
def loglik_vs_iterations(model, x, w, max_iter=10, samples=10, seed=0):
    """The paper estimator (label->image) after K = 0..max_iter iterations: (Ks, values)."""
    ks = list(range(max_iter + 1))
    vals = [float(np.mean(asnumpy(paper_estimate(model, x, w, "label2image", Rng([seed, k]), samples, k)[1])))
            for k in ks]
    return ks, vals


def latent_means(model, x, w, iterations=10, seed=0):
    """2-D codes: means of q(z|x,w), and of q(z|w) (JMVAE-kl) or q(z|x^_K, w) after iterative sampling."""
    joint = asnumpy(model.encode(x, w)[0])
    if hasattr(model, "encode_w"):
        return joint, asnumpy(model.encode_w(w)[0]), "q(z|w)"
    xc, wc = complete(model, x, w, "label2image", Rng([seed, 5]), iterations)
    return joint, asnumpy(model.encode(xc, wc)[0]), f"q(z|x^_{iterations},w)"


def generation_chain(model, iterations=10, seed=0):
    """Images generated from labels 0..9 after 0..K iterations: (K+1, 10, 28, 28)."""
    w = to_device(one_hot(np.arange(10), 10, model.dtype), model.xp)
    _, chain = x_from_w(model, w, Rng([seed, 4]), iterations=iterations, return_chain=True)
    return np.stack([asnumpy(c).reshape(10, 28, 28) for c in chain])


if __name__ == "__main__":
    sys.exit(main())
