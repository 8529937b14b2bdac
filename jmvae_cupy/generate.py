"""Generate with a trained run:  python -m jmvae_cupy.generate RUN_DIR {faces,edit,attributes} ...

* ``faces --attrs "Smiling,Male,-Eyeglasses" --out F.png`` -- attributes -> faces, the paper's Fig. 7(a):
  column 0 is a *Base* of random attribute values (``--base random``, seeded; or ``zeros``), each
  further column sets one listed attribute of the Base to +strength (``-Name``: -strength; the
  paper's 2 / -2, ``--strength``), the last column all of them together.  Row 0: the average face,
  the mean of p(x|z_mean) with z_mean the mean of q(z|w); rows 1..R: random faces
  z = z_mean + sigma * eps, one eps per row (the same in every column).  JMVAE / JMVAE-h have no
  q(z|w): the iterative completion of :func:`jmvae_cupy.inference.x_from_w` from zeros (K =
  ``--iterations``), with the means of q (row 0) or samples (rows 1..).  ``--from-test K``: the
  attributes of the first K test images instead (an extra top row shows those faces).  MNIST
  runs: ``--attrs "3,7"`` names digit labels.
* ``edit --image-index I --set "Smiling=1,Eyeglasses=-1" --out F.png`` -- the paper's Fig. 8:
  w = the attributes predicted from x (the mean of p(w|z), z the mean of q(z|x); ``--given-attrs``:
  the file's labels instead); x_mean = the average face of w, x'_mean that of w' (w with the set
  values); x' = x + x'_mean - x_mean (clipped to [0, 1]).  "Average face of w" follows the paper:
  z the mean of q(z|w) for JMVAE-kl (``--encoder w``, the default for kl) or the mean of q(z|x, w)
  (``--encoder xw``, the default for jmvae / h, which have no q(z|w)).  Row 0: x, then x' for each
  set attribute alone, then all together; row 1: x_mean and the x'_mean under them.
* ``attributes --image-index I [--json]`` -- image -> the 40 predicted attribute values (the mean of
  p(w|z); JMVAE / JMVAE-h: iterative completion of w), with the file's labels beside them.

JMVAE-h's iterative sampling reaches z1 through q(z1|x^,w) (``--path z1``, the default) or through
its top layer, z2 ~ q(z2|x^,w) then z1 ~ p(z1|z2) (``--path top``).

The run's newest good checkpoint is loaded (parameters and batch-norm running statistics; a GAN
discriminator in it is ignored) and everything runs in eval mode.  ``--out`` must name a ``.png``
file in a writable directory (checked before any work); the grid is written atomically.  A float
option must be finite and representable in the model's dtype, and output that is not finite
(NaN / inf, e.g. an overflowing --strength) is refused, not written.  ``faces`` shows a progress
bar on stderr over its rows when they take more than a second (``--no-progress``: none).  Errors
are one line on stderr, exit 1 (bad flags: argparse's usage message, exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from .backend import BackendError, to_device
from .checkpoint import CheckpointError
from .cli import guarded, one_line
from .data import DataError
from .fsutil import probe_writable, replacing
from .inference import H_PATHS
from .models import ModelError
from .rng import Rng
from .runs import (
    Run,
    RunError,
    attribute_columns,
    average_and_random,
    average_face,
    base_attributes,
    predict_w,
)
from .viz import save_grid


class GenerateError(RunError):
    """A problem a user can cause with this command's arguments (one-line message)."""


PROGRESS_DELAY = 1.0  # seconds before generate's progress bar appears (quick commands show none)


def check_value(what: str, v: float, dtype) -> float:
    """``v`` if it is finite and representable in ``dtype`` (the model's); a GenerateError otherwise."""
    big = float(np.finfo(dtype).max)
    if not (np.isfinite(v) and abs(v) <= big):
        raise GenerateError(f"{what} must be a finite number within the range of the model's "
                            f"{np.dtype(dtype).name} (|value| <= {big:.4g}), got {v:g}")
    return v


def check_finite(a, what: str):
    """``a`` if every entry is finite; a GenerateError (nothing is written) otherwise."""
    if not np.all(np.isfinite(a)):
        raise GenerateError(f"{what} is not finite (NaN or inf), nothing written: the model overflows for these "
                            "inputs (try smaller attribute values)")
    return a


def check_out(out: str, npz: bool = False) -> None:
    """Refuse an --out that is not a .png file (or, ``npz``, a .npz file) in an existing, writable
    directory (before any work)."""
    if os.path.isdir(out):
        raise GenerateError(f"--out {out}: is a directory (name the .png file to write)")
    ext = os.path.splitext(out)[1].lower()
    if ext != ".png" and not (npz and ext == ".npz"):
        raise GenerateError(f"--out {out}: must name a .png file (the grid is written as PNG)"
                            + ("; or .npz for the generated arrays" if npz else ""))
    d = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(d):
        raise GenerateError(f"--out {out}: no such directory")
    try:
        probe_writable(d, suffix=".png")  # what the atomic write will do
    except OSError as e:
        raise GenerateError(f"--out {out}: cannot write in {d} ({e.strerror or one_line(e)})") from None


def write_arrays(out: str, **arrays) -> None:
    """The generated arrays as one .npz file (written atomically); a failed write named by --out."""

    try:
        with replacing(out, suffix=".npz") as f:
            np.savez(f, **arrays)
    except OSError as e:
        raise GenerateError(f"--out {out}: cannot write ({e.strerror or one_line(e)})") from None


def _to_unit(run: Run, grid):
    """A grid of a paired-data run's x scaled from the data's range to [0, 1] for the PNG (MNIST and
    CelebA images are in [0, 1] already)."""
    if run.dataset != "data":
        return grid
    stats = run.data().x_stats
    return (grid - stats["min"]) / ((stats["max"] - stats["min"]) or 1.0)


def write_grid(grid, out: str, col_labels=None) -> None:
    """save_grid (``col_labels`` above the columns), with a write that fails (disk full, ...) named by --out."""
    try:
        save_grid(grid, out, col_labels=col_labels)
    except OSError as e:
        raise GenerateError(f"--out {out}: cannot write ({e.strerror or one_line(e)})") from None


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, shown once the work has taken PROGRESS_DELAY seconds (disabled: a no-op)."""

    return tqdm(total=total, desc=desc, unit="row", file=sys.stderr, leave=False, dynamic_ncols=True,
                delay=PROGRESS_DELAY, disable=not enabled)


def _parse_list(spec: str, what: str) -> list:
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise GenerateError(f"{what}: empty list")
    return items


# ------------------------------------------------------------------------------------------ commands
def cmd_faces(run: Run, args) -> None:
    rng = Rng(args.seed)
    xp, dt = run.xp, run.model.dtype
    real = None
    if args.from_test is not None:
        if args.from_test < 1:
            raise GenerateError(f"--from-test must be >= 1, got {args.from_test}")
        idx = np.arange(min(args.from_test, run.n_test))
        w, labels = run.test_w(idx), [f"test {i}" for i in idx]
        real = run.images(run.test_x(idx))
    elif run.categorical:  # classes (MNIST: the digits 0-9): a one-hot w per listed class
        classes = []
        for c in _parse_list(args.attrs, "--attrs"):
            if c not in run.names:
                known = "digits 0-9" if run.dataset == "mnist" else ", ".join(run.names[:12]) + \
                    (", ..." if len(run.names) > 12 else "")
                raise GenerateError(f"unknown label {c!r}: this run's classes are {known}")
            classes.append(run.names.index(c))
        w, labels = to_device(np.eye(run.model.arch.w_dim, dtype=dt)[classes], xp), [run.names[c] for c in classes]
    else:
        base = base_attributes(run.model.arch.w_dim, args.base, args.seed, dt)
        cols, labels = attribute_columns(run, base, _parse_list(args.attrs, "--attrs"),
                                         check_value("--strength", args.strength, dt))
        w = to_device(cols, xp)
    with progress_bar(1 + args.samples, "faces", args.progress) as bar:
        avg, rand = average_and_random(run, w, args.samples, rng, args.iterations, tick=lambda: bar.update(1))
    grid = check_finite(np.stack(([real] if real is not None else []) + [avg] + rand), "the generated grid")
    if args.out.lower().endswith(".npz"):
        write_arrays(args.out, average=avg, random=np.stack(rand), w=np.asarray(to_device(w, np)),
                     **({"test_x": real} if real is not None else {}))
    else:
        write_grid(_to_unit(run, grid), args.out, col_labels=labels)
    top = "test faces, " if real is not None else ""
    print(f"wrote {args.out}: rows = {top}average face, {args.samples} random; columns = {', '.join(labels)}")


def _parse_set(run: Run, spec: str) -> list:
    """[(attribute index, value)] of --set "Name=value,..."; values finite in the model's dtype."""
    out = []
    for item in _parse_list(spec, "--set"):
        name, sep, val = item.partition("=")
        if not sep:
            raise GenerateError(f"--set: {item!r} is not NAME=VALUE")
        try:
            v = float(val)
        except ValueError:
            raise GenerateError(f"--set: value {val!r} of {name.strip()} is not a number") from None
        check_value(f"--set: the value of {name.strip()}", v, run.model.dtype)
        j = run.attr_index(name.strip())
        out.append((j, v))
    return out


def cmd_edit(run: Run, args) -> None:
    if run.dataset == "mnist" or run.image is None or len(run.image) != 3:
        raise GenerateError("edit needs a CelebA run, or a data run of colour images x (3, H, W), with attributes")
    edits = _parse_set(run, args.set)
    encoder = args.encoder or ("w" if hasattr(run.model, "encode_w") else "xw")
    rng = Rng(args.seed)
    x = run.test_x([args.image_index])
    w = run.test_w([args.image_index]) if args.given_attrs else predict_w(run, x, rng, args.iterations)
    w_host = np.asarray(to_device(w, np))
    cols, labels = [], []
    for j, v in edits:
        c = w_host[0].copy()
        c[j] = v
        cols.append(c)
        labels.append(f"{run.names[j]}={v:g}")
    if len(cols) > 1:
        allc = w_host[0].copy()
        for j, v in edits:
            allc[j] = v
        cols.append(allc)
        labels.append("all")
    wp = to_device(np.stack([w_host[0]] + cols).astype(run.model.dtype), run.xp)
    xs = run.xp.concatenate([x] * len(wp))
    means = average_face(run, xs, wp, encoder, rng, args.iterations)      # x_mean, x'_mean ...
    x0 = run.images(x)[0]
    edited = np.clip(x0[None] + means[1:] - means[:1], 0.0, 1.0)          # x' = x + x'_mean - x_mean
    write_grid(check_finite(np.stack([np.concatenate([x0[None], edited]), means]), "the edited grid"), args.out,
               col_labels=["input"] + labels)
    src = "given" if args.given_attrs else "predicted"
    changes = ", ".join(f"{run.names[j]} {w_host[0, j]:+.2f} -> {v:+g}" for j, v in edits)
    q = "q(z|x,w)" if encoder == "xw" else "q(z|w)"
    print(f"wrote {args.out}: test image {args.image_index}, {src} attributes, z from {q}; "
          f"row 0 = x, edited; row 1 = average faces; columns = original, {', '.join(labels)} ({changes})")


def cmd_attributes(run: Run, args) -> None:
    x = run.test_x([args.image_index])
    pred = np.asarray(to_device(predict_w(run, x, Rng(args.seed), args.iterations), np), dtype=np.float64)[0]
    true = np.asarray(to_device(run.test_w([args.image_index]), np), dtype=np.float64)[0]
    check_finite(pred, "the predicted attributes")
    if args.json:
        print(json.dumps({"image_index": args.image_index, "checkpoint": run.checkpoint,
                          "predicted": {n: round(float(v), 6) for n, v in zip(run.names, pred)},
                          "given": {n: float(v) for n, v in zip(run.names, true)}}, indent=2))
        return
    width = max(len(n) for n in run.names)
    what = "p(digit)" if run.dataset == "mnist" else "p(class)" if run.categorical else "predicted"
    print(f"{'attribute':<{width}}  {what:>9}  {'given':>5}")
    for n, p, t in zip(run.names, pred, true):
        print(f"{n:<{width}}  {p:9.3f}  {t:5.0f}" if run.dataset != "data" else f"{n:<{width}}  {p:9.3f}  {t:9.4g}")


def seed_arg(s: str) -> int:
    """argparse type of --seed: an integer >= 0 (NumPy's generators take no negative seed)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {v}")
    return v


def finite_float(s: str) -> float:
    """argparse type of a float option: a finite number (its range in the model's dtype is checked later)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {s!r}") from None
    if not np.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jmvae_cupy.generate", description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", help="a run directory written by python -m jmvae_cupy.train")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--seed", type=seed_arg, default=0, help="seed of the random faces / noise (>= 0, default 0)")
        p.add_argument("--iterations", type=int, default=10,
                       help="jmvae / h: iterations of the iterative completion (default 10; paper 40)")
        p.add_argument("--path", choices=list(H_PATHS), default="z1",
                       help="h: how iterative sampling reaches z1: z1 ~ q(z1|x^,w) (default), or through the top "
                            "layer, z2 ~ q(z2|x^,w) then z1 ~ p(z1|z2)")
        p.add_argument("--device", default="cpu", help="cpu | gpu | auto (default cpu)")
        p.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar (faces shows one on stderr when its rows take more than a second)")

    f = sub.add_parser("faces", help="attributes -> average and random faces (Fig. 7)")
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--attrs", help='comma-separated attribute names, "-Name" for Not (categorical w, e.g. '
                   'MNIST: class names, the digits)')
    g.add_argument("--from-test", type=int, help="the attributes of the first K test images")
    f.add_argument("--out", required=True, help="the PNG to write (must end in .png), or a .npz of the generated "
                   "arrays (average, random, w[, test_x]); x that are not images: .npz only")
    f.add_argument("--samples", type=int, default=4, help="rows of random faces (default 4)")
    f.add_argument("--strength", type=finite_float, default=2.0,
                   help="value of a set attribute (default 2, the paper's)")
    f.add_argument("--base", choices=["random", "zeros"], default="random", help="the Base attributes")
    common(f)
    e = sub.add_parser("edit", help="change attributes of a test image (Fig. 8)")
    e.add_argument("--image-index", type=int, required=True, help="index into the test set")
    e.add_argument("--set", required=True, help='e.g. "Smiling=1,Eyeglasses=-1"')
    e.add_argument("--out", required=True, help="the PNG to write (must end in .png)")
    e.add_argument("--given-attrs", action="store_true", help="start from the file's attributes, not predicted ones")
    e.add_argument("--encoder", choices=["w", "xw"], default=None,
                   help="average faces from q(z|w) (kl default, the paper's) or q(z|x,w) (jmvae / h default)")
    common(e)
    a = sub.add_parser("attributes", help="image -> predicted attributes")
    a.add_argument("--image-index", type=int, required=True, help="index into the test set")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common(a)
    return ap


# The errors a user can cause: one line on stderr, exit 1 (cli.guarded: with OSError, MemoryError, Ctrl-C)
USER_ERRORS = (RunError, CheckpointError, DataError, ModelError, BackendError)


def _generate(args) -> int:
    if getattr(args, "samples", 1) < 0 or args.iterations < 0:
        raise GenerateError("--samples and --iterations must be >= 0")
    out = getattr(args, "out", None)
    if out is not None:
        check_out(out, npz=args.command == "faces")
    run = Run(args.run_dir, device=args.device)
    if out is not None and run.image is None and run.dataset != "mnist" and not out.lower().endswith(".npz"):
        raise GenerateError(f"--out {out}: this run's x {tuple(run.model.arch.x_shape)} are not images: name a .npz "
                            "file for the generated arrays")
    if args.path != "z1" and run.variant != "h":
        raise GenerateError(f"--path {args.path} applies to JMVAE-h runs (variant h), not {run.variant!r}")
    run.path = args.path
    {"faces": cmd_faces, "edit": cmd_edit, "attributes": cmd_attributes}[args.command](run, args)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: _generate(args), USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
