"""Cross-modal coherence: do the images generated from a label show that label, and is the label
generated from an image the right one?  The standard measure of multimodal VAEs (MMVAE, MoPoE,
MultiVae report it), used here to see the paper's missing-modality collapse directly.

* label -> image: the fraction of images generated from w that an independent classifier assigns
  to w (MNIST: argmax of its 10 logits equals the label; CelebA: the mean over the 40 attributes of
  sign agreement between the classifier's prediction and w).
* image -> label: the fraction of generated labels that are right (MNIST: argmax of the mean of
  p(w|z) equals the label; CelebA: the mean over attributes of sign(w^) == w).  No classifier.

The classifier is trained by the library on its own stack (:class:`jmvae_cupy.nets.Net`, a
categorical or Bernoulli likelihood from :mod:`jmvae_cupy.distributions`, :class:`~jmvae_cupy.optim.Adam`)
on the run's training images, once, and cached (:func:`cached_classifier`) with its accuracy on the
test images recorded.  Coherence of the real test pairs (a "generator" that returns the true image)
is the classifier's own accuracy: the ceiling of every label -> image number.
"""

from __future__ import annotations

import hashlib
import json
import os

import h5py
import numba
import numpy as np
from threadpoolctl import threadpool_limits

from .backend import asnumpy, get_array_module, to_device
from .data import binarized_test_set
from .distributions import Bernoulli, Categorical
from .fsutil import replacing
from .inference import w_from_x, x_from_w
from .models.architectures import celeba_arch
from .nets import Net
from .optim import Adam
from .rng import Rng

# The MNIST classifier: a dense ReLU net on the 784 pixels (CelebA: celeba_spec).
MNIST_SPEC = "D512R-D512R-D10"
FORMAT = "jmvae_cupy classifier 1"


class CoherenceError(ValueError):
    """A classifier file or a coherence request that cannot be served (one-line message)."""


class Classifier:
    """p(y|x) from a :class:`Net`: ``likelihood`` "categorical" (y one-hot, (N, K)) or "bernoulli"
    (y in {0, 1}^K, independent attributes).  x: (N, *in_shape) of the classifier's dtype."""

    def __init__(self, spec: str, in_shape, likelihood: str, seed: int = 0, dtype=np.float32, xp=np):
        if likelihood not in ("categorical", "bernoulli"):
            raise CoherenceError(f"unknown classifier likelihood {likelihood!r}")
        self.spec, self.in_shape, self.likelihood = spec, tuple(in_shape), likelihood
        self.lik = Categorical if likelihood == "categorical" else Bernoulli
        self.net = Net(spec, self.in_shape)
        self.params, self.state = self.net.init(Rng([seed, 7]), np.dtype(dtype), xp)
        self.dtype, self.xp = np.dtype(dtype), xp
        self.meta: dict = {}

    def loss_and_grads(self, x, y):
        """loss = -(1/N) sum_n log p(y_n|x_n); grads of every parameter.  x (N, *in_shape), y (N, K)."""
        logits, cache = self.net.forward(self.params, self.state, x, train=True)
        ll, lcache = self.lik.loglik(y, logits)
        n = x.shape[0]
        dlogits = self.lik.loglik_backward(self.xp.full((n,), -1.0 / n, dtype=self.dtype), lcache)
        _, grads = self.net.backward(dlogits, cache, need_dx=False)
        return -ll.mean(), grads

    def logits(self, x, batch_size: int = 500):
        """Logits (N, K) in eval mode (batch norm from its running statistics), in batches."""
        out = [self.net.forward(self.params, self.state, x[i:i + batch_size], train=False)[0]
               for i in range(0, x.shape[0], batch_size)]
        return get_array_module(out[0]).concatenate(out)

    def predict(self, x):
        """Categorical: the class index (N,).  Bernoulli: the predicted attributes as +-1, (N, K)."""
        lg = self.logits(x)
        if self.likelihood == "categorical":
            return lg.argmax(axis=1)
        return self.xp.where(lg > 0, 1.0, -1.0).astype(self.dtype)

    def to(self, xp):
        self.params = {k: to_device(v, xp) for k, v in self.params.items()}
        self.state = {k: to_device(v, xp) for k, v in self.state.items()}
        self.xp = xp
        return self


def _targets(labels, likelihood, dtype):
    """Training targets: one-hot rows for class indices (N,), {0, 1} for +-1 attributes (N, K)."""
    if likelihood == "categorical":
        return np.eye(int(labels.max()) + 1 if labels.size else 1, dtype=dtype)[labels]
    return (labels > 0).astype(dtype)


def _as_float(images):
    """A batch as float32 in [0, 1]: uint8 grey levels / 255, float images as they are."""
    images = np.asarray(images)
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


def train_classifier(images, labels, spec: str, likelihood: str, epochs: int = 20, batch_size: int = 100,
                     lr: float = 1e-3, seed: int = 0, binarize: bool = False, n_classes: int | None = None,
                     log=None) -> Classifier:
    """Train a :class:`Classifier` on the CPU: ``images`` (N, *shape), uint8 grey levels or floats in
    [0, 1] (converted batch by batch), ``labels`` class indices (N,) or +-1 attributes (N, K).

    binarize: every epoch shows each image twice, as it is and binarised afresh (x ~ Bernoulli(pixel)),
    so that the classifier reads binary test digits and the grey means of p(x|z) alike.  BLAS and
    Numba run one thread while it trains: the same classifier, bit for bit, whatever the machine's
    thread count (summation orders change with it, and the rounding differences grow over the
    epochs into a different net, 94-96 % accurate)."""

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            return _train(images, labels, spec, likelihood, epochs, batch_size, lr, seed, binarize, n_classes, log)
    finally:
        numba.set_num_threads(before)


def _train(images, labels, spec, likelihood, epochs, batch_size, lr, seed, binarize, n_classes, log) -> Classifier:
    """:func:`train_classifier`'s loop: Adam on -log p(y|x), a fresh order (and binarisation) each epoch."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    clf = Classifier(spec, np.asarray(images[:1]).shape[1:], likelihood, seed=seed)
    if likelihood == "categorical":
        y_all = np.eye(n_classes or int(labels.max()) + 1, dtype=np.float32)[labels]
    else:
        y_all = (labels > 0).astype(np.float32)
    opt, rng = Adam(lr=lr), Rng([seed, 8])
    rows = 2 * n if binarize else n  # row r >= n: row r - n, binarised
    for epoch in range(epochs):
        order, total = rng.permutation(rows), 0.0
        for i in range(0, rows - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            src = idx % n
            x = _as_float(images[src])
            if binarize:
                flip = (idx >= n).reshape((-1,) + (1,) * (x.ndim - 1))
                x = np.where(flip, (rng.uniform(x.shape, np.float32) < x).astype(np.float32), x)
            loss, grads = clf.loss_and_grads(x, y_all[src])
            opt.step(clf.params, grads)
            total += float(loss) * len(idx)
        if log is not None:
            log(f"classifier epoch {epoch + 1}/{epochs}: train loss {total / max(rows, 1):.4f}")
    return clf


def accuracy(clf: Classifier, images, labels):
    """Categorical: the fraction of images classified as their label (a float).  Bernoulli: the
    per-attribute accuracy, (K,) array of fractions.  images: uint8 or float in [0, 1]."""
    pred = asnumpy(clf.predict(_as_float(images)))
    labels = asnumpy(labels)
    if clf.likelihood == "categorical":
        return float(np.mean(pred == labels))
    return np.mean(pred == np.where(labels > 0, 1.0, -1.0), axis=0)


# ------------------------------------------------------------------------------------------- cache
def save_classifier(clf: Classifier, path: str) -> None:
    """Write the classifier (params, state, meta) atomically to an HDF5 file."""
    with replacing(path, prefix=".clf-") as fh:
        with h5py.File(fh, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["meta"] = json.dumps({"spec": clf.spec, "in_shape": list(clf.in_shape),
                                          "likelihood": clf.likelihood, **clf.meta}, sort_keys=True)
            for group, arrays in (("params", clf.params), ("state", clf.state)):
                g = f.require_group(group)
                for k, v in arrays.items():
                    g.create_dataset(k, data=asnumpy(v))


def load_classifier(path: str) -> Classifier:
    """The classifier saved by :func:`save_classifier`; a damaged file is a CoherenceError."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise CoherenceError(f"{path}: not a jmvae_cupy classifier file")
            meta = json.loads(f.attrs["meta"])
            clf = Classifier(meta["spec"], meta["in_shape"], meta["likelihood"])
            for group, target in (("params", clf.params), ("state", clf.state)):
                names = set(f[group].keys()) if group in f else set()
                if names != set(target):
                    raise CoherenceError(f"{path}: its {group} do not match the network {meta['spec']!r}")
                for k in target:
                    target[k] = np.asarray(f[group][k], dtype=target[k].dtype).reshape(target[k].shape)
    except (OSError, KeyError, ValueError, TypeError) as e:
        if isinstance(e, CoherenceError):
            raise
        raise CoherenceError(f"{path}: unreadable classifier file ({type(e).__name__}: {e})") from None
    clf.meta = {k: v for k, v in meta.items() if k not in ("spec", "in_shape", "likelihood")}
    return clf


def default_cache_dir() -> str:
    """$JMVAE_CACHE_DIR, else $XDG_CACHE_HOME/jmvae_cupy, else ~/.cache/jmvae_cupy: outside the
    installed package, so a read-only install works."""
    if os.environ.get("JMVAE_CACHE_DIR"):
        return os.environ["JMVAE_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jmvae_cupy")


def _fingerprint(*arrays, settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def cached_classifier(name: str, train_images, train_labels, test_images, test_labels, spec: str,
                      likelihood: str, cache_dir: str | None = None, log=print, **train_kw) -> Classifier:
    """The classifier of ``name`` for these data: loaded from ``cache_dir`` when a file made from
    the same data and settings is there, else trained, its test accuracy recorded in its meta
    (``test_accuracy``: a float, or the per-attribute list), and saved (a cache directory that
    cannot be written only costs the saving: the log says so)."""
    settings = {"spec": spec, "likelihood": likelihood, "format": FORMAT, **train_kw}
    key = _fingerprint(train_images, train_labels, test_images, test_labels, settings=settings)
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"classifier-{name}-{key}.h5")
    if os.path.exists(path):
        try:
            return load_classifier(path)
        except CoherenceError as e:
            log(f"warning: {e}: training it again")
    log(f"training the {name} classifier for coherence ({spec}, {len(train_labels)} images; cached in {path})")
    clf = train_classifier(train_images, train_labels, spec, likelihood, **train_kw)
    acc = accuracy(clf, test_images, test_labels)
    clf.meta = {"name": name, "key": key, "n_train": int(len(train_labels)), "n_test": int(len(test_labels)),
                "test_accuracy": acc if isinstance(acc, float) else [float(a) for a in acc]}
    try:
        os.makedirs(cache_dir, exist_ok=True)
        save_classifier(clf, path)
    except OSError as e:
        log(f"warning: cannot cache the classifier in {cache_dir} ({e.strerror or e}): it is kept in memory only")
    return clf


def mnist_classifier(data, cache_dir: str | None = None, log=print, epochs: int = 20) -> Classifier:
    """The MNIST digit classifier of ``data`` (a :class:`~jmvae_cupy.data.MnistData`): trained on its
    training digits (grey levels and fresh binarisations), its accuracy measured on the binarised
    test digits that evaluation uses."""

    return cached_classifier("mnist", data.train_x, data.train_y, binarized_test_set(data), data.test_y,
                             MNIST_SPEC, "categorical", cache_dir=cache_dir, log=log, epochs=epochs, binarize=True,
                             n_classes=10)


def celeba_spec(image_size: int, width: float = 1.0, n_attrs: int = 40) -> str:
    """The attribute classifier for CelebA faces of ``image_size``: the conv encoder of q(z|x)
    (models.architectures.celeba_arch) and one logit per attribute."""

    return f"{celeba_arch(image_size, width).enc_x_uni}-D{n_attrs}"


def celeba_classifier(data, width: float = 1.0, max_train: int = 20000, epochs: int = 5, cache_dir=None,
                      log=print) -> Classifier:
    """The attribute classifier of a prepared CelebA file (a :class:`~jmvae_cupy.data.celeba.CelebAData`):
    trained on its first ``max_train`` training faces (uint8 in memory: 12 KB a face at 64x64),
    its per-attribute accuracy measured on the test faces."""
    train = np.asarray(data.train_idx[:max_train])
    test = np.asarray(data.test_idx)
    return cached_classifier("celeba", data.images_uint8(train), data.attributes(train), data.images_uint8(test),
                             data.attributes(test), celeba_spec(data.image_size, width, len(data.attr_names)),
                             "bernoulli", cache_dir=cache_dir, log=log, epochs=epochs)


# --------------------------------------------------------------------------------------- coherence
def model_generator(model, direction: str, rng, ks=(0,), init: str = "zeros", path: str = "z1"):
    """A generator for :func:`coherence`: (x, w) batch -> {K: the generated target after K iterations}.

    JMVAE / JMVAE-h: the paper's iterative sampling from ``init``, read after each K in ``ks``
    (``path``: JMVAE-h's path to z1).  JMVAE-kl, CVAE, CMMA generate in one step: the same
    batch for every K.  z is drawn (not its mean); images are the mean of p(x|z), labels the mean
    of p(w|z)."""
    ks = sorted(set(int(k) for k in ks))
    v = model.variant

    def gen(x, w):
        if v in ("cvae", "cmma"):
            out = model.generate(w if direction == "label2image" else x, rng)
            return {k: out for k in ks}
        kw = {"path": path} if v == "h" else {}
        if direction == "label2image":
            _, chain = x_from_w(model, w, rng, iterations=ks[-1], init=init, return_chain=True, **kw)
        else:
            _, chain = w_from_x(model, x, rng, iterations=ks[-1], init=init, return_chain=True, **kw)
        return {k: chain[min(k, len(chain) - 1)] for k in ks}
    return gen


def agreement(pred, target):
    """Per row: 1.0 where a generated / predicted label agrees with the target.  Class indices (N,)
    against one-hot or index targets; +-1 attributes (N, K) against +-1 targets: the mean agreement
    over the K attributes."""
    xp = get_array_module(pred)
    if pred.ndim == 1:
        t = target.argmax(axis=1) if target.ndim == 2 else target
        return (pred == t).astype(np.float64)
    return (xp.sign(pred) == xp.sign(target)).mean(axis=1)


def coherence(generate, x, w, direction: str, classifier: Classifier | None, batch_size: int = 500,
              tick=None) -> dict:
    """{K: coherence} over the pairs (x, w): ``generate(x_batch, w_batch) -> {K: target batch}``.

    label -> image: the classifier's prediction of each generated image against w.
    image -> label: each generated label against w (categorical w: argmax; attributes: sign)."""
    sums: dict = {}
    n = x.shape[0]
    for i in range(0, n, batch_size):
        xb, wb = x[i:i + batch_size], w[i:i + batch_size]
        for k, t in generate(xb, wb).items():
            if direction == "label2image":
                if classifier is None:
                    raise CoherenceError("label -> image coherence needs a classifier")
                pred = classifier.predict(t.reshape((t.shape[0],) + classifier.in_shape))
            else:
                pred = t.argmax(axis=1) if _is_one_hot(wb) else t
            sums[k] = sums.get(k, 0.0) + float(asnumpy(agreement(pred, wb)).sum())
        if tick is not None:
            tick()
    return {k: s / n for k, s in sorted(sums.items())}


def _is_one_hot(w) -> bool:
    """Labels as one-hot rows (MNIST), not +-1 attributes (CelebA)."""
    return bool(float(w.min()) >= 0.0)
