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

from tqdm import tqdm

from .cli import guarded
from .evaluation import (
    NAMES,
    EvaluateError,
    batches,
    classifier_for,
    coherence_paths,
    coherence_run,
    directions,
    evaluate_run,
    load_run,
    run_config,
)
from .inference import INITS


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
        from .figures import main as figures_main  # noqa: PLC0415  (matplotlib only for the figures alias)

        return figures_main(argv[1:])
    args = build_parser().parse_args(argv)
    return guarded(lambda: _evaluate(args), (EvaluateError,))


if __name__ == "__main__":
    sys.exit(main())
