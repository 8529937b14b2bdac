"""One run of the reproduction plan evaluated (jmvae_cupy/reproduce.py, step 2):

    python -m jmvae_cupy.plan_eval OUT NAME SETTINGS_JSON

writes OUT/eval/NAME.json (tables, coherence, diagnostics, curves against K) and OUT/eval/NAME.npz
(the figures' arrays: MNIST Fig. 3's latent samples and Fig. 4's chains; CelebA Fig. 6's faces
along the iterations, Fig. 7's average and random faces and its PCA), and for MNIST
OUT/eval/NAME-trend.json (the same measures at every training snapshot, one entry per snapshot,
kept across restarts).  Every file is written atomically; a JSON that names the run's final
checkpoint and the same settings is not redone.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

from .backend import asnumpy
from .cli import guarded
from .coherence import CoherenceError, celeba_classifier, coherence, mnist_classifier, model_generator
from .data import load_mnist
from .data.celeba import open_celeba
from .data.paired import image_view, open_paired
from .diagnostics import diagnose
from .estimators import paper_estimate
from .evaluation import (
    EvaluateError,
    LoadedRun,
    coherence_paths,
    coherence_run,
    evaluate_run,
    generation_chain,
    latent_samples,
    load_run,
)
from .fsutil import replacing, write_json
from .inference import INITS
from .plan import CHAIN_KS, dataset_of, run_dir, settings_hash
from .rng import Rng
from .runs import Run, RunError, attribute_columns, average_and_random, base_attributes


def classifier_path(out: str) -> str:
    return os.path.join(out, "classifier")


def ensure_classifier(out: str, s: dict, log=print):
    """The plan's coherence classifier (MNIST digits, or the attributes of the CelebA file), trained
    once into OUT/classifier (its cache); None for pairs of your own (no classifier of their w)."""
    if dataset_of(s) == "data":
        return None
    if dataset_of(s) == "celeba":
        with open_celeba(s["data"]) as data:
            return celeba_classifier(data, s["width_scale"], epochs=s["classifier_epochs"],
                                     cache_dir=classifier_path(out), log=log)
    return mnist_classifier(load_mnist(), classifier_path(out), log=log, epochs=s["classifier_epochs"])


def _classifier(out: str, s: dict):
    if dataset_of(s) == "data":
        return None
    files = sorted(glob.glob(os.path.join(classifier_path(out), f"classifier-{dataset_of(s)}-*.h5")))
    if not files:
        raise EvaluateError(f"no classifier in {classifier_path(out)} (python -m jmvae_cupy.reproduce trains it)")
    return ensure_classifier(out, s, log=lambda m: print(m, file=sys.stderr))


def curves_vs_k(run: LoadedRun, clf, s: dict) -> dict:
    """Fig. 5: label->image, the paper's estimator and coherence after each K of fig5_ks, per repeat:
    {path: {"k": [...], "estimate": [[per repeat] per K], "coherence": [[...]]}}."""
    model, x, w = run.model, run.x, run.w
    out = {}
    for path in coherence_paths(model):
        est, coh = [], []
        for k in s["fig5_ks"]:
            est.append([float(np.mean(asnumpy(paper_estimate(model, x, w, "label2image", Rng([r, 21, k]), s["samples"],
                                                              k, path)[1]))) for r in range(s["repeats"])])
            coh.append([coherence(model_generator(model, "label2image", Rng([r, 22, k]), [k], path=path), x, w,
                                  "label2image", clf)[k] for r in range(s["repeats"])])
        out[path] = {"k": list(s["fig5_ks"]), "estimate": est, "coherence": coh}
    return out


def trend(out: str, name: str, clf, s: dict) -> dict:
    """At every snapshot of the run: label->image coherence and the paper's estimator after trend_k
    iterations (per path), and the diagnostics.  Entries already in the file are kept."""
    path = os.path.join(out, "eval", f"{name}-trend.json")
    try:
        with open(path, encoding="utf-8") as f:
            done = json.load(f)
        if done.get("settings") != s:
            done = {}
    except (OSError, ValueError):
        done = {}
    entries = done.get("epochs", {})
    rd = os.path.join(out, f"mnist-{name}")
    for snap in sorted(glob.glob(os.path.join(rd, "snapshots", "ckpt-*.h5"))):
        epoch = str(int(os.path.basename(snap)[5:11]))
        if epoch in entries:
            continue
        run = _load(rd, s, snap)
        k = s["trend_k"]
        e = {}
        for p in coherence_paths(run.model):
            e[p] = {"coherence": coherence(model_generator(run.model, "label2image", Rng([0, 25]), [k], path=p),
                                           run.x, run.w, "label2image", clf)[k],
                    "estimate": float(np.mean(asnumpy(paper_estimate(run.model, run.x, run.w, "label2image",
                                                                      Rng([0, 26]), s["samples"], k, p)[1])))}
        e["diagnostics"] = diagnose(run.model, run.x, run.w, Rng([0, 27]))
        entries[epoch] = e
        write_json(path, {"settings": s, "k": k, "epochs": entries})
    return entries


def _load(rd: str, s: dict, checkpoint=None) -> LoadedRun:
    run = load_run(rd, "cpu", s["test_size"], checkpoint_path=checkpoint)
    if s["test_size"]:
        run = run._replace(x=run.x[:s["test_size"]], w=run.w[:s["test_size"]])
    return run


def evaluate_plan_run(out: str, name: str, s: dict) -> dict:
    """Every measurement of one run of the plan (see the module docstring); returns the JSON written."""
    ds = dataset_of(s)
    rd = run_dir(out, name, ds)
    run = _load(rd, s)
    jpath = os.path.join(out, "eval", f"{name}.json")
    h = settings_hash(s)
    try:
        with open(jpath, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("settings_hash") == h and old.get("checkpoint") == os.path.basename(run.checkpoint):
            return old
    except (OSError, ValueError):
        pass
    clf = _classifier(out, s)
    model, cfg = run.model, run.config
    iterations = s.get("iterations", 10 if s["ks"][-1] >= 10 else s["ks"][-1])
    est = evaluate_run(model, run.x, run.w, s["samples"], iterations, s["importance"], s["repeats"])
    res = {"name": name, "dataset": ds, "iterations": iterations, "variant": cfg["variant"],
           "h_top": cfg.get("h_top", "chain"), "latent": cfg["latent"], "gan": bool(cfg.get("gan")),
           "direction": cfg["direction"], "epoch": run.epoch, "checkpoint": os.path.basename(run.checkpoint),
           "settings_hash": h, "test_size": int(run.x.shape[0]),
           "classifier_accuracy": clf.meta["test_accuracy"] if clf else None,
           "estimates": {d: {k: {"mean": m, "std": sd, "repeats": v} for k, (m, sd, v) in e.items()}
                         for d, e in est.items()},
           "coherence": {} if clf is None else  # (pairs of your own: no classifier of their w)
           {init: coherence_run(model, run.x, run.w, clf, s["ks"], init)
            for init in (INITS if cfg["variant"] in ("jmvae", "h") and ds == "mnist" else ("zeros",))}}
    arrays = {}
    if ds == "celeba":
        arrays = celeba_arrays(rd, run, s, res)
    elif ds == "data":
        arrays = data_arrays(run, s, res)
    elif cfg["variant"] in ("jmvae", "kl", "h"):
        res["diagnostics"] = diagnose(model, run.x, run.w, Rng([0, 27]))
        if cfg["latent"] == 2:
            arrays.update({f"latent_{k}": v for k, v in latent_samples(model, run.x, run.w).items()
                           if k in ("joint", "cond")})
        else:
            res["vs_k"] = curves_vs_k(run, clf, s)
            arrays.update({f"chain_{p}": generation_chain(model, CHAIN_KS, path=p) for p in coherence_paths(model)})
            res["trend"] = trend(out, name, clf, s)
    if arrays:
        if ds == "mnist":
            arrays["labels"] = asnumpy(run.w).argmax(axis=1)
        with replacing(os.path.join(out, "eval", f"{name}.npz"), suffix=".npz") as f:
            np.savez(f, **arrays)
    res = json.loads(json.dumps(res, default=_jsonable))  # (dict keys of K as strings, like the file)
    write_json(jpath, res)
    return res


def celeba_arrays(rd: str, run: LoadedRun, s: dict, res: dict) -> dict:
    """CelebA's figure arrays of a JMVAE-family run (none for a baseline):
    * Fig. 6: ``fig6_real`` (F, 3, H, W), the first F test faces, and ``fig6_PATH`` (len(fig6_ks), F,
      3, H, W), the faces generated from their attributes after each K of iterative sampling from
      zeros (the mean of p(x|z), z the mean of q; JMVAE-kl: one row, from q(z|w));
    * JMVAE-kl, Fig. 7 (:func:`fig7_arrays`)."""
    model = run.model
    if model.variant not in ("jmvae", "kl", "h"):
        return {}
    n = min(s["faces"], len(run.x))
    res["fig6_ks"] = list(s["fig6_ks"])
    arrays = {"fig6_real": asnumpy(run.x[:n])}
    for p in coherence_paths(model):
        arrays[f"fig6_{p}"] = generation_chain(model, s["fig6_ks"], path=p, w=run.w[:n])
    if model.variant == "kl":
        try:
            grun = Run(rd, device="cpu")
        except RunError as e:
            raise EvaluateError(str(e)) from None
        res["fig7"], fig7 = fig7_arrays(grun, s)
        arrays.update(fig7)
    return arrays


def data_arrays(run: LoadedRun, s: dict, res: dict) -> dict:
    """Pairs of your own whose x are images (data/paired.py image_view): Fig. 4's chain of a JMVAE-family
    run, ``chain_PATH`` (len(ks), C, H, W) or (len(ks), C, 3, H, W) scaled to [0, 1], generated from
    each class of a categorical w (else from the w of the first ten test pairs); none otherwise."""

    model = run.model
    d = open_paired(run.config["data"])
    view = image_view(d.x_shape)
    if model.variant not in ("jmvae", "kl", "h") or view is None:
        return {}
    if model.arch.w_lik.name == "categorical":
        w, labels = np.eye(d.w_dim, dtype=model.dtype), list(d.w_names or [f"w{i}" for i in range(d.w_dim)])
    else:
        t = d.test_idx[:10]
        w, labels = d.rows(t, model.dtype)[1], [f"test {i}" for i in range(len(t))]
    lo, hi = d.x_stats["min"], d.x_stats["max"]
    res["chain_ks"], res["chain_columns"] = list(s["ks"]), labels
    out = {}
    for p in coherence_paths(model):
        c = generation_chain(model, s["ks"], path=p, w=w)
        out[f"chain_{p}"] = np.clip((c.reshape(c.shape[:2] + view) - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    return out


def fig7_arrays(grun: Run, s: dict, strength: float = 2.0):
    """Fig. 7 of a JMVAE-kl run, for a random Base and (when the data has Male) the same Base with
    Male = -strength ("Not Male"); per base b, columns: the Base and the Base with each attribute of
    ``fig7_attrs`` set to +strength (runs.attribute_columns):
    * (a) ``fig7_avg_b`` (C, 3, H, W): the average faces, the mean of p(x|z_mean), z_mean the mean of
      q(z|w); ``fig7_rand_b`` (R, C, 3, H, W): random faces, z = z_mean + sigma * eps, one eps per row;
    * (b) ``pca_points_b`` (C, M, 2): M samples z = z_mean + sigma * eps per column and
      ``pca_centres_b`` (C, 2): z_mean, projected on the first two principal axes of all the
      samples of both bases together (so the two panels share their axes).

    Returns (JSON meta: bases, columns, the variance the two axes explain; the arrays)."""
    m, dt = grun.model, grun.model.dtype
    base = base_attributes(m.arch.w_dim, "random", 0, dt)
    attrs = [a for a in s["fig7_attrs"] if a in grun.names]
    bases = [("Base", base)]
    if "Male" in grun.names:
        not_male = base.copy()
        not_male[grun.names.index("Male")] = -strength
        bases.append(("Base, Not Male", not_male))
    arrays, samples, columns = {}, [], None
    for b, (_, bw) in enumerate(bases):
        cols, columns = attribute_columns(grun, bw, attrs, strength)
        w = grun.xp.asarray(cols)
        arrays[f"fig7_avg_{b}"], rand = average_and_random(grun, w, s["fig7_random"], Rng([0, 31, b]), 0)
        arrays[f"fig7_rand_{b}"] = np.stack(rand)
        mu, var = (asnumpy(a).astype(np.float64) for a in m.encode_w(w))
        eps = np.asarray(Rng([0, 32, b]).normal((len(cols), s["pca_samples"], mu.shape[1]), np.float64, np))
        samples.append((mu, mu[:, None, :] + np.sqrt(var)[:, None, :] * eps))
    pts = np.concatenate([z.reshape(-1, z.shape[-1]) for _, z in samples])
    centre = pts.mean(axis=0)
    _, sv, vt = np.linalg.svd(pts - centre, full_matrices=False)
    axes = vt[:2].T  # (latent, 2): the first two principal axes
    for b, (mu, z) in enumerate(samples):
        arrays[f"pca_points_{b}"] = (z - centre) @ axes
        arrays[f"pca_centres_{b}"] = (mu - centre) @ axes
    explained = (sv[:2] ** 2 / np.sum(sv ** 2)).tolist()
    return {"bases": [n for n, _ in bases], "columns": columns, "explained": explained}, arrays


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m jmvae_cupy.plan_eval OUT NAME SETTINGS_JSON (run by jmvae_cupy.reproduce)",
              file=sys.stderr)
        return 2
    return guarded(lambda: evaluate_plan_run(argv[0], argv[1], json.loads(argv[2])) and 0,
                   (EvaluateError, CoherenceError))


if __name__ == "__main__":
    sys.exit(main())
