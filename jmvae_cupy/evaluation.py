"""Evaluation as a library: loading a trained run (:func:`load_run`: its model, config, test pairs
and checkpoint), the estimators over a test set (:func:`evaluate_run`), coherence
(:func:`coherence_run`), and the data of the figures (latent samples, generation chains, the
estimate against K).  The commands on top: evaluate (the tables), figures, plan_eval (the
reproduction), generate."""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

import numpy as np

from .backend import BackendError, asnumpy, select_device, to_device
from .checkpoint import CheckpointError, load_latest, restore_arrays
from .checkpoint import load as load_checkpoint
from .coherence import CoherenceError, celeba_classifier, coherence, mnist_classifier, model_generator
from .data import DataError, binarized_test_set, load_mnist, one_hot
from .data.celeba import open_celeba
from .data.paired import open_paired
from .estimators import DIRECTIONS, complete, evaluate_model, paper_estimate
from .inference import H_PATHS, x_from_w
from .models import ModelError, build_model
from .rng import Rng
from .runs import Run, RunError, read_config, run_arch

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
    float32 per 1,000 faces), read through runs.Run, which also recovers the image size and
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
    except (CheckpointError, ModelError, DataError, BackendError, RunError, KeyError) as e:
        raise EvaluateError(f"{run_dir}: {e}") from None
    return LoadedRun(model, cfg, to_device(x, xp), to_device(w, xp), int(ck["meta"]["epoch"]), ck["path"])


def _test_set(cfg: dict, dtype):
    """The host test pairs (x, w) of an MNIST run (binarised once, one-hot labels) or of a paired-data run
    (the test rows of its file)."""
    if cfg["dataset"] == "data":
        d = open_paired(cfg["data"])
        return d.rows(d.test_idx, dtype)
    data = load_mnist(cfg.get("data_dir"))
    return binarized_test_set(data, dtype=dtype), one_hot(data.test_y, 10, dtype)


def run_config(run_dir: str) -> dict:
    """The checked config.json of a run directory (runs.read_config), or an EvaluateError naming the
    file and what is wrong with it."""
    try:
        return read_config(run_dir)
    except RunError as e:
        raise EvaluateError(str(e)) from None


def _load_celeba_run(run_dir, device, test_size):
    try:
        run = Run(run_dir, device=device, generation=False)
        n = run.n_test if not test_size else min(test_size, run.n_test)
        rows = np.arange(n)
        x, w = run.test_x(rows), run.test_w(rows)
    except (RunError, CheckpointError, ModelError, DataError, BackendError, KeyError) as e:
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


# ------------------------------------------------------------------------ the data of the figures
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
