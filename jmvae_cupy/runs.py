"""A trained run as a library: its checked ``config.json`` (:func:`read_config`), its architecture
(:func:`run_arch`), the model restored from its newest checkpoint with its test data
(:class:`Run`), and the pieces generation is made of (average and random faces or digits from w,
w predicted from x, Fig. 7(a)'s attribute columns).  The commands on top: generate, evaluate,
figures, plan_eval."""

from __future__ import annotations

import difflib
import json
import os
import sys

import numpy as np

from .backend import select_device, to_device
from .checkpoint import load_latest, restore_arrays
from .cli import one_line
from .data import DataError, binarized_test_set, load_mnist
from .data.celeba import ATTR_NAMES, open_celeba
from .data.paired import image_view, open_paired
from .inference import w_from_x, x_from_w
from .models import build_model
from .models.architectures import celeba_arch
from .models.config import arch_from_model
from .rng import Rng


class RunError(RuntimeError):
    """A run directory that cannot be loaded, or a request it cannot serve (one-line message)."""


VARIANTS = ("jmvae", "kl", "h", "cvae", "cmma")
DIRECTIONS = ("label2image", "image2label")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v) -> str:
    """A JSON value as the file spells it, cut to 40 characters."""
    r = json.dumps(v)
    return r if len(r) <= 40 else r[:37] + "..."


def read_config(run_dir: str) -> dict:
    """The ``config.json`` of the training run in ``run_dir``, checked: a RunError naming the file and
    what is wrong with it otherwise (python -m jmvae_cupy.evaluate and .figures read run directories
    through this too).  Settings an older config may lack get their defaults (seed 0, float32, alpha 1,
    no direction, width scale 1, JMVAE-h's top layer "chain")."""
    if not os.path.exists(run_dir):
        raise RunError(f"{run_dir}: no such run directory")
    if not os.path.isdir(run_dir):
        raise RunError(f"{run_dir}: not a run directory (not a directory)")
    cpath = os.path.join(run_dir, "config.json")
    if not os.path.lexists(cpath):
        raise RunError(f"{run_dir}: not a run directory (no config.json)")
    if os.path.isdir(cpath):
        raise RunError(f"{cpath}: is a directory, not a training config")
    try:
        with open(cpath, encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as e:
        raise RunError(f"{cpath}: unreadable ({e.strerror or one_line(e)})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; absurdly deep nesting
        raise RunError(f"{cpath}: not valid JSON ({one_line(e)[:80]})") from None
    if not isinstance(cfg, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(cfg), "a number")
        raise RunError(f"{cpath}: not a jmvae_cupy training config ({kind}, not a JSON object)")

    def bad(key, what):
        if key not in cfg:
            return RunError(f"{cpath}: \"{key}\" is missing (it must be {what})")
        return RunError(f"{cpath}: \"{key}\" must be {what}, not {_short(cfg[key])}")

    if cfg.get("dataset") not in ("mnist", "celeba", "data"):
        raise bad("dataset", '"mnist", "celeba" or "data" in a jmvae_cupy training config')
    if cfg.get("variant") not in VARIANTS:
        raise bad("variant", "one of " + ", ".join(VARIANTS))
    if not (_is_int(cfg.get("latent")) and cfg["latent"] >= 1):
        raise bad("latent", "an integer >= 1")
    cfg = {"seed": 0, "dtype": "float32", "alpha": 1.0, "direction": None, "h_top": "chain", **cfg}
    if not (_is_int(cfg["seed"]) and cfg["seed"] >= 0):
        raise bad("seed", "an integer >= 0")
    if cfg["dtype"] not in ("float32", "float64"):
        raise bad("dtype", '"float32" or "float64"')
    if not (_is_number(cfg["alpha"]) and np.isfinite(cfg["alpha"]) and cfg["alpha"] >= 0):
        raise bad("alpha", "a finite number >= 0")
    if cfg["h_top"] not in ("chain", "z1") or (cfg["h_top"] != "chain" and cfg["variant"] != "h"):
        raise bad("h_top", '"chain", or "z1" in a JMVAE-h (variant "h") run')
    if cfg["variant"] in ("cvae", "cmma"):
        if cfg["direction"] is not None and cfg["direction"] not in DIRECTIONS:
            raise bad("direction", " or ".join(f'"{d}"' for d in DIRECTIONS))
    elif cfg["direction"] is not None:
        raise bad("direction", f"null for a {cfg['variant']} run (the baselines cvae, cmma have one)")
    for key in ("data_dir", "data"):
        if not (cfg.get(key) is None or isinstance(cfg[key], str)):
            raise bad(key, "a path or null")
    if cfg["dataset"] == "data" and not isinstance(cfg.get("data"), str):
        raise bad("data", "the path of the run's paired data file")
    if "model" in cfg and not isinstance(cfg["model"], dict):
        raise bad("model", "the run's model (an object: train writes it)")
    if "width_scale" in cfg and not (_is_number(cfg["width_scale"]) and np.isfinite(cfg["width_scale"])
                                     and cfg["width_scale"] > 0):
        raise bad("width_scale", "a finite number > 0")
    return cfg


class Run:
    """A trained run: ``model`` (eval mode, restored), ``config``, ``names`` (the w entries), and the
    test data on demand (``test_x(i)``, ``test_w(i)``, ``n_test``)."""

    def __init__(self, run_dir: str, device=None, generation: bool = True):
        self.config = cfg = read_config(run_dir)
        if generation and cfg["variant"] not in ("jmvae", "kl", "h"):  # (evaluate loads CVAE / CMMA runs too)
            raise RunError(f"{run_dir}: generation needs a jmvae, kl or h run, not {cfg['variant']!r}")
        self.dataset, self.variant = cfg["dataset"], cfg["variant"]
        ck = load_latest(run_dir, warn=lambda m: print(m, file=sys.stderr))
        self.xp = select_device(device)
        arch = run_arch(cfg, ck)
        self.model = build_model(arch, self.variant, seed=cfg["seed"], dtype=cfg["dtype"],
                                 xp=self.xp, latent=cfg["latent"], alpha=cfg["alpha"], h_top=cfg["h_top"],
                                 direction=cfg.get("direction"))
        restore_arrays(self.model.params, ck["params"], self.xp, "parameters")
        restore_arrays(self.model.state, ck["state"], self.xp, "state")
        self.checkpoint = os.path.basename(ck["path"])
        self.path = "z1"  # JMVAE-h's path to z1 in iterative sampling (generate --path)
        self._data = None
        self.names = ([str(i) for i in range(10)] if self.dataset == "mnist" else self._celeba_names()
                      if self.dataset == "celeba" else self._data_names())
        self.categorical = self.model.arch.w_lik.name == "categorical"  # w: classes (one-hot), or attributes
        self.image = image_view(tuple(self.model.arch.x_shape))  # how x is drawn; None: x is not an image

    def path_kw(self) -> dict:
        """JMVAE-h: the path to z1 of its iterative sampling (``self.path``, inference.joint_latent)."""
        return {"path": self.path} if self.variant == "h" else {}

    def _celeba_names(self):
        try:
            return list(self.data().attr_names)
        except (DataError, RunError):
            return list(ATTR_NAMES)  # faces --attrs does not need the file

    def _data_names(self):
        try:
            names = self.data().w_names
        except (DataError, RunError):
            names = None
        return list(names) if names else [f"w{i}" for i in range(self.model.arch.w_dim)]

    def data(self):
        if self._data is None:
            if self.dataset == "data":
                self._data = open_paired(self.config["data"])
            elif self.dataset == "celeba":
                if not self.config.get("data"):
                    raise RunError("the run's config names no data file")
                self._data = open_celeba(self.config["data"])
            else:
                d = load_mnist(self.config.get("data_dir"))
                self._data = (binarized_test_set(d, dtype=self.model.dtype), d.test_y)
        return self._data

    @property
    def n_test(self) -> int:
        d = self.data()
        return len(d[0]) if self.dataset == "mnist" else len(d.test_idx)

    def _rows(self, idx):
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        n = self.n_test
        if np.any(idx < 0) or np.any(idx >= n):
            raise RunError(f"image index {int(idx[(idx < 0) | (idx >= n)][0])} is out of range: the test set "
                                f"has {n} images (0..{n - 1})")
        return idx

    def test_x(self, idx):
        idx, d = self._rows(idx), self.data()
        if self.dataset == "data":
            return to_device(d.rows(d.test_idx[idx], self.model.dtype)[0], self.xp)
        x = d.images(d.test_idx[idx], self.model.dtype) if self.dataset == "celeba" else d[0][idx]
        return to_device(x, self.xp)

    def test_w(self, idx):
        idx, d = self._rows(idx), self.data()
        if self.dataset == "data":
            return to_device(d.rows(d.test_idx[idx], self.model.dtype)[1], self.xp)
        if self.dataset == "celeba":
            return to_device(d.attributes(d.test_idx[idx], self.model.dtype), self.xp)
        return to_device(np.eye(10, dtype=self.model.dtype)[d[1][idx]], self.xp)

    def attr_index(self, name: str) -> int:
        if name in self.names:
            return self.names.index(name)
        low = [n.lower() for n in self.names]
        if name.lower() in low:
            return low.index(name.lower())
        close = difflib.get_close_matches(name, self.names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (names: {', '.join(self.names[:6])}, ...)"
        raise RunError(f"unknown attribute {name!r}{hint}")

    def images(self, arr):
        """Device means (N, ...) -> host arrays: images (N, 3, H, W) or (N, H, W) (MNIST's 28 x 28), else x's
        own shape (N, *x_shape)."""
        a = np.asarray(to_device(arr, np), dtype=np.float64)
        if self.dataset == "mnist":
            return a.reshape(len(a), 28, 28)
        return a.reshape((len(a),) + (self.image or tuple(self.model.arch.x_shape)))


def run_arch(cfg: dict, ck: dict):
    """The architecture of a run: its config's "model" (train records it), or for a run made before
    models were recorded, its dataset's built-in one (CelebA: at the image size of the checkpoint's
    conv layers)."""

    if "model" in cfg:
        return arch_from_model(cfg["model"], cfg["dataset"])
    if cfg["dataset"] == "celeba":
        n_conv = sum(1 for k, v in ck["params"].items() if k.startswith("qxw.x.") and v.ndim == 4)
        size = {4: 64, 3: 32, 2: 16}.get(n_conv)
        if size is None:
            raise RunError(f"{ck['path']}: cannot tell the image size ({n_conv} conv layers)")
        return celeba_arch(size, cfg.get("width_scale", 1.0), cfg["latent"])
    if cfg["dataset"] == "data":
        raise RunError("the run's config.json has no \"model\" (train records it)")
    return "mnist"


# ------------------------------------------------------------------------------------------ the pieces
def average_and_random(run: Run, w, rows: int, rng: Rng, iterations: int, tick=None):
    """(average images (C, ...), [random images (C, ...)] * rows) for attribute vectors w (C, w_dim).
    ``tick()`` (optional) is called after each of the 1 + rows rows (a progress bar)."""
    m, lik = run.model, run.model.arch.x_lik
    if hasattr(m, "encode_w"):  # JMVAE-kl: q(z|w)
        mu, var = m.encode_w(w)

        def row(random: bool):
            z = mu + m.xp.sqrt(var) * rng.normal((1, mu.shape[1]), m.dtype, m.xp) if random else mu
            return lik.mean(m.decode_x(z).reshape(len(z), -1))
    else:
        def row(random: bool):
            return x_from_w(m, w, rng, iterations=iterations, sample_z=random, **run.path_kw())
    out = []
    for r in range(1 + rows):
        out.append(run.images(row(r > 0)))
        if tick is not None:
            tick()
    return out[0], out[1:]


def predict_w(run: Run, x, rng: Rng, iterations: int):
    """The mean of p(w|z) for images x: z the mean of q(z|x) (kl) or iterative completion (jmvae, h)."""
    return w_from_x(run.model, x, rng, iterations=iterations, sample_z=False, **run.path_kw())


def average_face(run: Run, x, w, encoder: str, rng: Rng, iterations: int):
    """x_mean for attribute vectors w (N, w_dim): mean of p(x|z), z the mean of q(z|w) or q(z|x,w)."""
    m, lik = run.model, run.model.arch.x_lik
    if encoder == "xw":
        mu, _ = m.encode(x, w)
    elif hasattr(m, "encode_w"):
        mu, _ = m.encode_w(w)
    else:
        return run.images(x_from_w(m, w, rng, iterations=iterations, sample_z=False, **run.path_kw()))
    return run.images(lik.mean(m.decode_x(mu).reshape(len(mu), -1)))


def base_attributes(w_dim: int, kind: str, seed: int, dtype):
    """Fig. 7(a)'s Base, (w_dim,): each attribute +1 or -1 at random (``kind`` "random", seeded) or all 0."""
    if kind == "zeros":
        return np.zeros(w_dim, dtype=dtype)
    return np.where(np.asarray(Rng([seed, 1]).uniform((w_dim,), np.float64, np)) < 0.5, -1.0, 1.0).astype(dtype)


def attribute_columns(run: Run, base, attrs: list, strength: float):
    """Fig. 7(a)'s columns: (w (C, w_dim), C labels): the Base, then the Base with each attribute of
    ``attrs`` set to +strength ("-Name": -strength, labelled "Not Name"), then, for two or more
    attributes, all of them set together ("all")."""
    cols, labels = [base], ["Base"]
    allset = base.copy()
    for s in attrs:
        neg = s.startswith("-")
        j = run.attr_index(s[1:] if neg else s)
        c = base.copy()
        c[j] = allset[j] = -strength if neg else strength
        cols.append(c)
        labels.append(f"Not {run.names[j]}" if neg else run.names[j])
    if len(cols) > 2:
        cols.append(allset)
        labels.append("all")
    return np.stack(cols), labels
