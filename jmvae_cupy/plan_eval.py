"""One run of the reproduction plan evaluated (jmvae_cupy/reproduce.py, step 2):

    python -m jmvae_cupy.plan_eval OUT NAME SETTINGS_JSON

writes OUT/eval/NAME.json (tables, coherence, diagnostics, curves against K), OUT/eval/NAME.npz
(Fig. 3's latent samples, Fig. 4's chains) and OUT/eval/NAME-trend.json (the same measures at every
training snapshot, one entry per snapshot, kept across restarts).  Every file is written
atomically; a JSON that names the run's final checkpoint and the same settings is not redone.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

from .backend import asnumpy
from .cli import guarded
from .coherence import CoherenceError, coherence, mnist_classifier, model_generator
from .data import load_mnist
from .diagnostics import diagnose
from .estimators import paper_estimate
from .evaluate import (
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
from .rng import Rng

CHAIN_KS = (0, 1, 2, 5, 10, 20)  # Fig. 4's rows


def classifier_path(out: str) -> str:
    return os.path.join(out, "classifier")


def ensure_classifier(out: str, s: dict, log=print):
    """The digit classifier of the plan, trained once into OUT/classifier (its cache)."""
    return mnist_classifier(load_mnist(), classifier_path(out), log=log, epochs=s["classifier_epochs"])


def _classifier(out: str, s: dict):
    files = sorted(glob.glob(os.path.join(classifier_path(out), "classifier-mnist-*.h5")))
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
    from .reproduce import settings_hash  # noqa: PLC0415  (reproduce launches this module)

    rd = os.path.join(out, f"mnist-{name}")
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
    est = evaluate_run(model, run.x, run.w, s["samples"], 10 if s["ks"][-1] >= 10 else s["ks"][-1], s["importance"],
                       s["repeats"])
    res = {"name": name, "variant": cfg["variant"], "h_top": cfg.get("h_top", "chain"), "latent": cfg["latent"],
           "direction": cfg["direction"], "epoch": run.epoch, "checkpoint": os.path.basename(run.checkpoint),
           "settings_hash": h, "test_size": int(run.x.shape[0]), "classifier_accuracy": clf.meta["test_accuracy"],
           "estimates": {d: {k: {"mean": m, "std": sd, "repeats": v} for k, (m, sd, v) in e.items()}
                         for d, e in est.items()},
           "coherence": {init: coherence_run(model, run.x, run.w, clf, s["ks"], init)
                         for init in (INITS if cfg["variant"] in ("jmvae", "h") else ("zeros",))}}
    arrays = {}
    if cfg["variant"] in ("jmvae", "kl", "h"):
        res["diagnostics"] = diagnose(model, run.x, run.w, Rng([0, 27]))
        if cfg["latent"] == 2:
            arrays.update({f"latent_{k}": v for k, v in latent_samples(model, run.x, run.w).items()
                           if k in ("joint", "cond")})
        else:
            res["vs_k"] = curves_vs_k(run, clf, s)
            arrays.update({f"chain_{p}": generation_chain(model, CHAIN_KS, path=p) for p in coherence_paths(model)})
            res["trend"] = trend(out, name, clf, s)
    if arrays:
        arrays["labels"] = asnumpy(run.w).argmax(axis=1)
        with replacing(os.path.join(out, "eval", f"{name}.npz"), suffix=".npz") as f:
            np.savez(f, **arrays)
    res = json.loads(json.dumps(res, default=_jsonable))  # (dict keys of K as strings, like the file)
    write_json(jpath, res)
    return res


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
