"""The paper's MNIST figures from trained runs (PNG, Pillow only):

    python -m jmvae_cupy.figures RUN_DIR [RUN_DIR ...] --out DIR      (= python -m jmvae_cupy.evaluate figures ...)

* ``gen-<model>.png``      Fig. 4: images generated from labels 0-9 (columns) after 0..K iterations
                           of iterative sampling (rows; JMVAE-kl and CVAE/CMMA need none: one row);
* ``ll-vs-iterations.png`` Fig. 5: the label->image estimator (Eq. 5 / Eq. 6) against K, on
                           ``--test-size`` digits, for every label->image run (flat for JMVAE-kl);
* ``latent-<model>.png``   Fig. 3 (runs with a 2-D z only): means of q(z|x,w) and of q(z|w)
                           (JMVAE-kl) or q(z|x^_K, w) (iterative sampling), coloured by label.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .backend import asnumpy
from .evaluate import NAMES, EvaluateError, generation_chain, latent_means, load_run, loglik_vs_iterations
from .rng import Rng
from .viz import save_grid, save_line_plot, save_scatter


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jmvae_cupy.figures", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("--iterations", type=int, default=10, help="K (default 10)")
    p.add_argument("--test-size", type=int, default=500,
                   help="test digits for Fig. 5 and Fig. 3 (default 500; 0: all, as in evaluate)")
    args = p.parse_args(argv)
    try:
        for name, val in (("iterations", args.iterations), ("test-size", args.test_size)):
            if val < 0:
                raise EvaluateError(f"--{name} must be >= 0, got {val}")
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise EvaluateError(f"cannot create output directory {args.out}: {e.strerror}") from None
        curves = {}
        for rd in args.runs:
            model, cfg, x, w, _ = load_run(rd)
            name = NAMES[cfg["variant"]] + (f"-{cfg['direction']}" if cfg.get("direction") else "")
            tag = os.path.basename(os.path.normpath(rd))
            if args.test_size:
                x, w = x[: args.test_size], w[: args.test_size]
            if getattr(model, "direction", "label2image") != "label2image":
                continue
            if hasattr(model, "generate"):
                labels = model.xp.eye(10, dtype=model.dtype)
                imgs = asnumpy(model.generate(labels, Rng(4)))
                save_grid(imgs.reshape(1, 10, 28, 28), os.path.join(args.out, f"gen-{tag}.png"))
            else:
                save_grid(generation_chain(model, args.iterations), os.path.join(args.out, f"gen-{tag}.png"))
            if cfg["latent"] == 2 and hasattr(model, "trunk_forward") and not hasattr(model, "generate"):
                joint, other, label = latent_means(model, x, w, args.iterations)
                y = np.argmax(asnumpy(w), axis=1)
                save_scatter(joint, y, os.path.join(args.out, f"latent-{tag}-joint.png"), f"{name}: q(z|x,w)")
                save_scatter(other, y, os.path.join(args.out, f"latent-{tag}-cond.png"), f"{name}: {label}")
                continue
            ks, vals = loglik_vs_iterations(model, x, w, args.iterations)
            if cfg["variant"] in ("kl", "cvae", "cmma"):
                ks, vals = [0, args.iterations], [vals[0], vals[0]]
            curves[name] = (ks, vals)
        if curves:
            save_line_plot(curves, os.path.join(args.out, "ll-vs-iterations.png"),
                           "test log p(x|w) estimate vs iterations", "iterations K", "Eq. 5 / Eq. 6")
    except EvaluateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"figures written to {args.out}: {', '.join(sorted(os.listdir(args.out)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
