"""Evaluate trained runs: the paper's Table 1 (test conditional log-likelihoods) and its figures.

    python -m jmvae_cupy.evaluate RUN_DIR [RUN_DIR ...] [--json] [--samples N] [--iterations K]
                                  [--importance S] [--repeats R] [--test-size M] [--no-progress]
    python -m jmvae_cupy.evaluate figures RUN_DIR [RUN_DIR ...] --out DIR    (jmvae_cupy/figures.py)

Each run is loaded from its newest good checkpoint and its ``config.json`` and evaluated on the
test set of its data (MNIST: binarised once with a fixed seed, the embedded subset's 2,000 digits;
a paired file of your own, train data --data FILE: its test rows).  JMVAE-family runs give both
directions; a CVAE / CMMA run gives the direction it was trained for, and rows of the same model
and estimator are merged.  Each cell is the mean over the test set, then mean +- std over R
repeats of the estimator's randomness (seeds 0..R-1).
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
from typing import NamedTuple

import numpy as np

from .backend import BackendError, asnumpy, select_device, to_device
from .checkpoint import CheckpointError, load_latest, restore_arrays
from .checkpoint import load as load_checkpoint
from .cli import guarded
from .coherence import CoherenceError, celeba_classifier, coherence, mnist_classifier, model_generator
from .data import DataError, binarized_test_set, load_mnist, one_hot
from .estimators import DIRECTIONS, complete, evaluate_model, paper_estimate
from .generate import GenerateError, read_config, run_arch
from .inference import H_PATHS, INITS, x_from_w
from .models import ModelError, build_model
from .rng import Rng

NAMES = {"jmvae": "JMVAE", "kl": "JMVAE-kl", "h": "JMVAE-h", "cvae": "CVAE", "cmma": "CMMA"}
COLUMNS = {"label2image": "label->image", "image2label": "image->label"}
BATCH = 500  # test examples per call of the estimators (evaluate_model's batch): one tick of the progress bar


class EvaluateError(RuntimeError):
    """A run directory that cannot be evaluated (one-line message)."""


class LoadedRun(NamedTuple):
    model: object
    config: dict
    x: object         # test images (N, *x_shape), binarised MNIST or CelebA faces, on the model's device
    w: object         # test labels / attributes (N, w_dim)
    epoch: int
    checkpoint: str   # the checkpoint file the parameters came from


def load_run(run_dir: str, device="cpu", test_size: int = 0, checkpoint_path: str | None = None) -> LoadedRun:
    """(model, config, test x, test w, epoch, checkpoint path) of the newest good checkpoint in ``run_dir`` (or of
    ``checkpoint_path``, e.g. a snapshot of train --snapshot-every, MNIST and paired-data runs).

    MNIST: the binarised test set.  Paired data (train data --data FILE): the test rows of its file.
    CelebA: the first ``test_size`` test images of the run's HDF5 file (all if 0: about 50 MB of
    float32 per 1,000 faces), read through generate.Run, which also recovers the image size and
    widths of the run's architecture.
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
        model = build_model(run_arch(cfg, ck), cfg["variant"], seed=cfg["seed"], dtype=cfg["dtype"], xp=xp,
                            latent=cfg["latent"], alpha=cfg["alpha"], direction=cfg["direction"],
                            h_top=cfg["h_top"])
        restore_arrays(model.params, ck["params"], xp, "parameters")
        restore_arrays(model.state, ck["state"], xp, "state")
        x, w = _test_set(cfg, model.dtype)
    except (CheckpointError, ModelError, DataError, BackendError, GenerateError, KeyError) as e:
        raise EvaluateError(f"{run_dir}: {e}") from None
    return LoadedRun(model, cfg, to_device(x, xp), to_device(w, xp), int(ck["meta"]["epoch"]), ck["path"])


def _test_set(cfg: dict, dtype):
    """The host test pairs (x, w) of an MNIST run (binarised once, one-hot labels) or of a paired-data run
    (the test rows of its file)."""
    if cfg["dataset"] == "data":
        from .data.paired import open_paired  # noqa: PLC0415

        d = open_paired(cfg["data"])
        return d.rows(d.test_idx, dtype)
    data = load_mnist(cfg.get("data_dir"))
    return binarized_test_set(data, dtype=dtype), one_hot(data.test_y, 10, dtype)


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
        run = Run(run_dir, device=device, generation=False)
        n = run.n_test if not test_size else min(test_size, run.n_test)
        rows = np.arange(n)
        x, w = run.test_x(rows), run.test_w(rows)
    except (GenerateError, CheckpointError, ModelError, DataError, BackendError, KeyError) as e:
        raise EvaluateError(str(e) if str(e).startswith(run_dir) else f"{run_dir}: {e}") from None
    epoch = int(run.checkpoint.split("-")[1])
    return LoadedRun(run.model, run.config, x, w, epoch, os.path.join(run_dir, run.checkpoint))


def directions(model) -> list:
    """The directions a model is evaluated in: a baseline's own, both for the JMVAE family."""
    return [model.direction] if hasattr(model, "direction") else list(DIRECTIONS)


def batches(n: int) -> int:
    """Estimator calls per (direction, repeat) on n test examples (the progress bar's unit)."""
    return -(-n // BATCH)


def coherence_paths(model) -> tuple:
    """The generation paths coherence is measured along: JMVAE-h both (inference.H_PATHS), others one."""
    return H_PATHS if model.variant == "h" else ("z1",)


def classifier_for(cfg: dict, cache_dir=None):
    """The coherence classifier of a run's data: MNIST digits, or the attributes of its CelebA file."""
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        if cfg["dataset"] == "data":
            raise EvaluateError("coherence needs a classifier of the data's w, which mnist and celeba runs have; "
                                f"this run trained on its own data ({cfg['data']})")
        if cfg["dataset"] == "celeba":
            from .data.celeba import open_celeba  # noqa: PLC0415  (h5py file reader: only for CelebA runs)

            return celeba_classifier(open_celeba(cfg["data"]), cfg.get("width_scale", 1.0), cache_dir=cache_dir,
                                     log=log)
        return mnist_classifier(load_mnist(cfg.get("data_dir")), cache_dir, log=log)
    except (DataError, CoherenceError) as e:
        raise EvaluateError(f"coherence classifier: {e}") from None


def coherence_run(model, x, w, classifier, ks, init="zeros", seed=0, tick=None) -> dict:
    """{direction: {path: {K: coherence}}} of one model on the test pairs (x, w) (coherence.py)."""
    out = {}
    for d in directions(model):
        out[d] = {}
        for path in coherence_paths(model):
            gen = model_generator(model, d, Rng([seed, 13]), ks, init=init, path=path)
            out[d][path] = coherence(gen, x, w, d, classifier, BATCH, tick=tick)
    return out


def coherence_table(results: list, classifier_accuracy=None) -> str:
    """Markdown: one row per (model, path, direction), one column per K."""
    ks = sorted({int(k) for r in results for d in r.get("coherence", {}).values() for p in d.values() for k in p})
    lines = ["| model | direction | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for r in results:
        for d, paths in r.get("coherence", {}).items():
            for path, vals in paths.items():
                name = r["model"] + (f" ({'z1 ~ q(z1|x,w)' if path == 'z1' else 'z2 ~ q(z2|x,w), z1 ~ p(z1|z2)'})"
                                     if r["variant"] == "h" else "")
                cells = [f"{vals[k]:.3f}" if k in vals else "—" for k in (str(k) for k in ks)]
                name = name.replace("|", "\\|")  # (a pipe would split the markdown cell)
                lines.append(f"| {name} | {d.replace('2', ' -> ')} | " + " | ".join(cells) + " |")
    if classifier_accuracy is not None:
        lines.append("\n(label -> image: the fraction of generated images the digit classifier assigns to their label; "
                     f"its accuracy on the real test digits, the ceiling, is {classifier_accuracy:.3f}. "
                     "image -> label: the fraction of generated labels that are right.)")
    return "\n".join(lines)


def evaluate_run(model, x, w, samples=10, iterations=10, importance=0, repeats=1, tick=None, init="zeros"):
    """{direction: {estimator: (mean, std, values)}} over ``repeats`` seeds (one random stream per
    (direction, repeat)); the test set goes through the estimators in batches of BATCH rows, and
    ``tick()`` (optional, a progress bar) follows each batch.  JMVAE-h: Eq. 6 with the completion
    through z1 (eq6-iterK) and through the top layer (eq6-iterK-top)."""
    out = {}
    paths = H_PATHS if model.variant == "h" else ("z1",)
    for d in directions(model):
        reps = [{k: v for path in paths
                 for k, v in evaluate_model(model, x, w, d, Rng([r, 11]), samples, iterations,
                                            importance if path == "z1" else 0, BATCH, tick=tick, path=path,
                                            init=init).items()}
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
    p.add_argument("--init", choices=list(INITS), default="zeros",
                   help="how JMVAE / JMVAE-h fill the missing modality before iterative sampling: zeros, uniform "
                        "noise, or a draw from the model's p(x) / p(w) (default zeros)")
    p.add_argument("--coherence", action="store_true",
                   help="add cross-modal coherence (jmvae_cupy/coherence.py) after K iterations, both directions; "
                        "JMVAE-h along both paths to z1")
    p.add_argument("--coherence-k", default="0,1,5,10,20", metavar="K,K,...",
                   help="--coherence: the iteration counts to read (default 0,1,5,10,20)")
    p.add_argument("--classifier-cache", default=None, metavar="DIR",
                   help="--coherence: where the digit classifier is cached (default $JMVAE_CACHE_DIR or "
                        "~/.cache/jmvae_cupy)")
    p.add_argument("--device", default="cpu", help="cpu | gpu | auto (default cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (on stderr)")
    return p


def _evaluate(args) -> int:
    for name, val, lo in (("samples", args.samples, 1), ("iterations", args.iterations, 0),
                          ("importance", args.importance, 0), ("repeats", args.repeats, 1),
                          ("test-size", args.test_size, 0)):
        if val < lo:
            raise EvaluateError(f"--{name} must be >= {lo}, got {val}")
    ks = _parse_ks(args.coherence_k) if args.coherence else None
    for rd in args.runs:  # every config first: a damaged one is found before any run is loaded
        run_config(rd)
    loaded = []
    for rd in args.runs:
        model, cfg, x, w, epoch, ckpt = load_run(rd, args.device, args.test_size)
        if args.test_size:
            x, w = x[: args.test_size], w[: args.test_size]
        loaded.append((rd, model, cfg, x, w, epoch, ckpt))
    from tqdm import tqdm  # noqa: PLC0415

    classifiers = {}  # one per data set: a run's data file / directory -> its classifier
    for _, _, cfg, *_ in loaded if args.coherence else ():
        key = cfg.get("data") or cfg.get("data_dir") or ""
        if key not in classifiers:
            classifiers[key] = classifier_for(cfg, args.classifier_cache)
    total = sum(len(directions(m)) * batches(x.shape[0]) * (len(coherence_paths(m)) * (args.repeats + bool(ks)))
                for _, m, _, x, _, _, _ in loaded)
    results = []
    with tqdm(total=total, unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True,
              disable=not args.progress) as bar:
        for rd, model, cfg, x, w, epoch, ckpt in loaded:
            bar.set_description(os.path.basename(os.path.normpath(rd)))
            est = evaluate_run(model, x, w, args.samples, args.iterations, args.importance, args.repeats,
                               tick=lambda: bar.update(1), init=args.init)
            classifier = classifiers.get(cfg.get("data") or cfg.get("data_dir") or "")
            coh = coherence_run(model, x, w, classifier, ks, args.init, tick=lambda: bar.update(1)) if ks else None
            results.append({
                "run": rd, "model": NAMES[cfg["variant"]], "variant": cfg["variant"], "epoch": epoch,
                "dataset": cfg["dataset"],
                "direction": cfg["direction"], "test_size": int(x.shape[0]), "samples": args.samples,
                "iterations": args.iterations, "importance": args.importance, "repeats": args.repeats,
                "init": args.init, "checkpoint": os.path.basename(ckpt),
                "estimates": {d: {k: {"mean": m, "std": s, "repeats": v} for k, (m, s, v) in e.items()}
                              for d, e in est.items()}})
            if coh is not None:
                results[-1]["coherence"] = {d: {p: {str(k): v for k, v in c.items()} for p, c in e.items()}
                                            for d, e in coh.items()}
                results[-1]["classifier_accuracy"] = classifier.meta.get("test_accuracy")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table(results))
        if classifiers:
            accs = [c.meta.get("test_accuracy") for c in classifiers.values()]
            acc = accs[0] if len(accs) == 1 and isinstance(accs[0], float) else None
            print("\n" + coherence_table(results, acc))
        items = "faces" if all(r["dataset"] == "celeba" for r in results) else \
            "digits" if all(r["dataset"] == "mnist" for r in results) else "examples"
        print("\ncheckpoints: " + "; ".join(f"{r['run']}: {r['checkpoint']} (epoch {r['epoch']})" for r in results))
        print(f"(test {items}: {results[0]['test_size']}; N = {args.samples}, K = {args.iterations}, "
              f"S = {args.importance}, mean ± std over {args.repeats} repeat(s); estimators: jmvae_cupy/estimators.py)")
    return 0


def _parse_ks(text: str) -> list:
    try:
        ks = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise EvaluateError(f"--coherence-k must be comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 0:
        raise EvaluateError(f"--coherence-k needs iteration counts >= 0, got {text!r}")
    return ks


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["figures"]:
        from .figures import main as figures_main  # noqa: PLC0415

        return figures_main(argv[1:])
    args = build_parser().parse_args(argv)
    return guarded(lambda: _evaluate(args), (EvaluateError,))


# ------------------------------------------------------------------------ helpers used by figures
def loglik_vs_iterations(model, x, w, max_iter=10, samples=10, seed=0, path="z1"):
    """The paper estimator (label->image) after K = 0..max_iter iterations: (Ks, values).
    JMVAE-h: the completion reaches z1 along ``path``."""
    ks = list(range(max_iter + 1))
    vals = [float(np.mean(asnumpy(paper_estimate(model, x, w, "label2image", Rng([seed, k]), samples, k, path)[1])))
            for k in ks]
    return ks, vals


def latent_samples(model, x, w, iterations=10, seed=0) -> dict:
    """Fig. 3 (2-D latents): {"joint", "cond"} (N, 2) each, one sampled z per test pair from the joint
    encoder, and one from the label alone: q(z|w) (JMVAE-kl), or the joint encoder after K
    iterations from zeros (JMVAE; JMVAE-h at its top layer z2 with the completion through the top
    layer, as the paper samples "at the top stochastic layer"); and the two panels' titles."""
    rng = Rng([seed, 23])

    def draw(mu, var):
        return asnumpy(mu + model.xp.sqrt(var) * rng.normal(mu.shape, mu.dtype, model.xp))
    if model.variant == "h":
        joint = draw(*model.encode_z2(x, w, rng))
        xc, wc = complete(model, x, w, "label2image", rng, iterations, path="top")
        return {"joint": joint, "cond": draw(*model.encode_z2(xc, wc, rng)),
                "joint_title": "joint: q(z2|x,w) (top layer)", "cond_title": f"from w alone: q(z2|x^_{iterations},w)"}
    joint = draw(*model.encode(x, w))
    if model.variant == "kl":
        return {"joint": joint, "cond": draw(*model.encode_w(w)), "joint_title": "joint: q(z|x,w)",
                "cond_title": "from w alone: q(z|w)"}
    xc, wc = complete(model, x, w, "label2image", rng, iterations)
    return {"joint": joint, "cond": draw(*model.encode(xc, wc)), "joint_title": "joint: q(z|x,w)",
            "cond_title": f"from w alone: q(z|x^_{iterations},w)"}


def generation_chain(model, ks=(0, 1, 2, 5, 10, 20), seed=0, path="z1", w=None):
    """Figs. 4 and 6: images generated from w (C, w_dim) (default: the labels 0..9) after each K in
    ``ks`` of iterative sampling (JMVAE-h: along ``path``), (len(ks), C, *image) with image (28, 28)
    for MNIST, (3, H, W) for CelebA; JMVAE-kl (from q(z|w)) and the baselines: one row."""
    if w is None:
        w = one_hot(np.arange(10), 10, model.dtype)
    w = to_device(w, model.xp)
    x_shape = tuple(model.arch.x_shape)
    image = (28, 28) if len(x_shape) == 1 else x_shape
    if hasattr(model, "generate"):
        return asnumpy(model.generate(w, Rng([seed, 4]))).reshape((1, len(w)) + image)
    kw = {"path": path} if model.variant == "h" else {}
    _, chain = x_from_w(model, w, Rng([seed, 4]), iterations=max(ks), return_chain=True, **kw)
    rows = [0] if model.variant == "kl" else ks
    return np.stack([asnumpy(chain[min(k, len(chain) - 1)]).reshape((len(w),) + image) for k in rows])


if __name__ == "__main__":
    sys.exit(main())
