"""The paper's MNIST figures from trained runs (PNG, matplotlib):

    python -m jmvae_cupy.figures RUN_DIR [RUN_DIR ...] --out DIR      (= python -m jmvae_cupy.evaluate figures ...)

* ``gen-<model>.png``      Fig. 4: images generated from labels 0-9 (columns, labelled) after K = 0, 1, 2, 5
                           and --iterations steps of iterative sampling (rows; JMVAE-kl and
                           CVAE/CMMA need none: one row); JMVAE-h: ``gen-<model>-z1.png`` and
                           ``gen-<model>-top.png``, one per path to z1 (inference.joint_latent);
* ``ll-vs-iterations.png`` Fig. 5: the label->image estimator (Eq. 5 / Eq. 6) against K, on
                           ``--test-size`` digits, for every label->image run (flat for JMVAE-kl);
* ``latent.png``           Fig. 3 (runs with a 2-D z only): one row per run, a sampled z per test
                           digit from q(z|x,w) and from the label alone (q(z|w) for JMVAE-kl,
                           q(z|x^_K, w) after iterative sampling), on shared axes, coloured by label.

MNIST runs, and runs on a paired file of your own (train data --data FILE): their columns are
the classes of a categorical w (named by the file's w_names), else the w of the first ten test
pairs; images are drawn when x is one ((H, W), (1, H, W) or (3, H, W), scaled from the data's range
to [0, 1]), and Fig. 3 colours by class (categorical w).  A CelebA run's figures come from
python -m jmvae_cupy.generate.  Every run is loaded before ``--out`` is created, and a directory
this command created is removed again if it fails before writing into it.  A progress bar on
stderr counts the runs (``--no-progress``: none).  Errors: one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

from . import plots
from .backend import asnumpy
from .cli import guarded, one_line
from .data.paired import image_view, open_paired
from .evaluation import (
    NAMES,
    EvaluateError,
    generation_chain,
    latent_samples,
    load_run,
    loglik_vs_iterations,
    run_config,
)
from .fsutil import probe_writable
from .inference import H_PATHS

PATH_NAMES = {"z1": "z1 ~ q(z1|x^,w)", "top": "z2 ~ q(z2|x^,w), z1 ~ p(z1|z2)"}  # JMVAE-h's paths to z1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jmvae_cupy.figures", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("--iterations", type=int, default=10, help="K (default 10)")
    p.add_argument("--test-size", type=int, default=500,
                   help="test digits for Fig. 5 and Fig. 3 (default 500; 0: all, as in evaluate)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (on stderr)")
    return p


def make_out_dir(out: str, made: list) -> None:
    """Create ``out`` (with its missing parents, recorded innermost first in ``made``) and check that
    files can be written in it."""
    p = os.path.abspath(out)
    missing = []
    while not os.path.exists(p) and os.path.dirname(p) != p:
        missing.append(p)
        p = os.path.dirname(p)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise EvaluateError(f"cannot create output directory {out}: {e.strerror or one_line(e)}") from None
    finally:
        made.extend(d for d in missing if os.path.isdir(d))
    try:
        probe_writable(out, suffix=".png")  # what each atomic PNG write does
    except OSError as e:
        raise EvaluateError(f"cannot write in output directory {out}: {e.strerror or one_line(e)}") from None


def remove_if_empty(made: list) -> None:
    """Remove the directories this command created (innermost first) while they are empty."""
    for d in made:
        try:
            os.rmdir(d)  # only an empty directory goes
        except OSError:
            break


def _write(path: str, save, *args, **kwargs) -> str:
    """``save(*args, path=path, **kwargs)``; a failed write names the figure.  Returns the file's name."""
    try:
        save(*args, path=path, **kwargs)
    except OSError as e:
        raise EvaluateError(f"{path}: cannot write ({e.strerror or one_line(e)})") from None
    return os.path.basename(path)


def _columns(cfg: dict, model) -> dict | None:
    """What Fig. 4 generates from: {"w" (C, w_dim) or None (MNIST's digits), "labels" (C names), "xlabel",
    "view" (an image's shape), "scale" (to [0, 1])}; None when the run's x are not images."""
    if cfg["dataset"] == "mnist":
        return {"w": None, "labels": [str(i) for i in range(10)], "xlabel": "label", "view": (28, 28),
                "scale": lambda a: a}

    d = open_paired(cfg["data"])
    view = image_view(d.x_shape)
    if view is None:
        return None
    lo, hi = d.x_stats["min"], d.x_stats["max"]
    cols = {"view": view, "scale": lambda a: (a - lo) / ((hi - lo) or 1.0)}
    if model.arch.w_lik.name == "categorical":
        names = d.w_names or [f"w{i}" for i in range(d.w_dim)]
        return {**cols, "w": np.eye(d.w_dim, dtype=model.dtype), "labels": list(names), "xlabel": "class"}
    t = d.test_idx[:10]
    return {**cols, "w": d.rows(t, model.dtype)[1], "labels": [f"test {i}" for i in range(len(t))],
            "xlabel": "w of the test pair"}


def _figures(args, made: list) -> int:
    for name, val in (("iterations", args.iterations), ("test-size", args.test_size)):
        if val < 0:
            raise EvaluateError(f"--{name} must be >= 0, got {val}")
    for rd in args.runs:  # every config first: a damaged or CelebA one is named before any work
        cfg = run_config(rd)
        if cfg["dataset"] == "celeba":
            raise EvaluateError(f"{rd}: figures are for MNIST runs, and this is a CelebA run (its faces: "
                                f"python -m jmvae_cupy.generate {rd} faces ...)")
    loaded = [(rd, *load_run(rd)) for rd in args.runs]  # a bad checkpoint stops us before --out exists
    if all(getattr(model, "direction", "label2image") != "label2image" for _, model, *_ in loaded):
        raise EvaluateError("nothing to draw: every run is an image->label baseline (the figures are label->image)")
    make_out_dir(args.out, made)

    curves, written, latents = {}, [], []
    out = lambda f: os.path.join(args.out, f)  # noqa: E731
    for rd, model, cfg, x, w, *_ in tqdm(loaded, desc="figures", unit="run", file=sys.stderr, leave=False,
                                        dynamic_ncols=True, disable=not args.progress):
        name = NAMES[cfg["variant"]] + (f"-{cfg['direction']}" if cfg.get("direction") else "")
        tag = os.path.basename(os.path.normpath(rd))
        if args.test_size:
            x, w = x[: args.test_size], w[: args.test_size]
        if getattr(model, "direction", "label2image") != "label2image":
            continue
        ks = sorted({0, 1, 2, 5, args.iterations} & set(range(args.iterations + 1)))
        paths = H_PATHS if cfg["variant"] == "h" else ("z1",)  # JMVAE-h: a file and a curve per path to z1
        cols = _columns(cfg, model)
        for p in paths if cols is not None else ():
            suffix = f"-{p}" if cfg["variant"] == "h" else ""
            chain = generation_chain(model, ks, path=p, w=cols["w"])
            chain = cols["scale"](chain.reshape(chain.shape[:2] + cols["view"]))
            title = name + (f" ({PATH_NAMES[p]})" if suffix else "")
            rows = [f"K={k}" for k in ks] if len(chain) == len(ks) else ["one step"]
            written.append(_write(out(f"gen-{tag}{suffix}.png"), plots.generation_chains, {title: chain},
                                  row_labels={title: rows}, col_labels={title: cols["labels"]},
                                  xlabel=cols["xlabel"]))
        if cfg["latent"] == 2 and hasattr(model, "trunk_forward") and not hasattr(model, "generate"):
            classes = model.arch.w_lik.name == "categorical"
            latents.append({"title": name, "labels": np.argmax(asnumpy(w), axis=1) if classes else
                            np.zeros(len(w), dtype=int), **latent_samples(model, x, w, args.iterations)})
            continue
        for p in paths:
            k, vals = loglik_vs_iterations(model, x, w, args.iterations, path=p)
            if cfg["variant"] in ("kl", "cvae", "cmma"):
                k, vals = [0, args.iterations], [vals[0], vals[0]]
            through = {"z1": " (through q(z1|x^,w))", "top": " (through the top layer)"}[p] if len(paths) > 1 else ""
            curves[name + through] = {"k": k, "mean": vals, "lo": None, "hi": None}
    if latents:
        written.append(_write(out("latent.png"), plots.latent_panels, latents))
    if curves:
        written.append(_write(out("ll-vs-iterations.png"), plots.curves_vs_iterations, [
            {"title": "label -> image: test log p(x|w) estimate against K", "ylabel": "Eq. 5 / Eq. 6 (nats)",
             "series": curves}]))
    print(f"figures written to {args.out}: {', '.join(sorted(written))}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    made: list = []
    return guarded(lambda: _figures(args, made), (EvaluateError,), on_error=lambda: remove_if_empty(made))


if __name__ == "__main__":
    sys.exit(main())
