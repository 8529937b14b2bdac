"""The distributions of the paper, with log-likelihoods and their gradients.

Every log-likelihood sums over the feature axis and returns one number per sample:
``loglik(x, out) -> (ll (N,), cache)``; ``loglik_backward(dll (N,), cache) -> d out (N, D)``,
where ``out`` is what the network produced (logits, or the mean).  Derivations:
docs/derivations/distributions.md.  Checked by tests/test_distributions.py.

=====================  ===============================  ==========================
family                 network output                   used for
=====================  ===============================  ==========================
Bernoulli              logits l (N, D)                  MNIST images  p(x|z)
Categorical            logits l (N, K)                  MNIST labels  p(w|z)
FixedVarGaussian       mean mu (N, D), variance fixed   CelebA images and attributes
LearnedVarGaussian     [mu | a] (N, 2 D), var from a    a decoder of a model config
Gaussian (learned)     mu (N, D), var = softplus(a)     q(z|.), p(z1|z2)
=====================  ===============================  ==========================

The four decoder likelihoods are chosen by name in a model config (jmvae_cupy/models/config.py):
``likelihood(name, variance=...)``.  ``outputs_per_feature`` is how many network outputs one data
feature takes (2 for LearnedVarGaussian: its mean and its variance's pre-activation).
"""

from __future__ import annotations

import math

from .backend import get_array_module
from .kernels._dispatch import FLOAT_DTYPES
from .kernels.bernoulli import bernoulli_loglik_forward, bernoulli_loglik_forward_ref
from .layers.activations import sigmoid, softplus

LOG_2PI = math.log(2.0 * math.pi)

# The variance of a learned Gaussian is softplus(a) + VAR_FLOOR: softplus underflows to 0 in
# float32 for a < -104, and log(0) in the KL would turn one bad unit into -inf.
VAR_FLOOR = 1e-8


def logsumexp(l, axis=-1):
    """log sum_k exp(l_k) along ``axis``, shifted by the max so that exp never overflows."""
    xp = get_array_module(l)
    m = xp.max(l, axis=axis, keepdims=True)
    return (m + xp.log(xp.sum(xp.exp(l - m), axis=axis, keepdims=True))).squeeze(axis)


def log_softmax(l):
    """log softmax(l) along the last axis, (N, K)."""
    return l - logsumexp(l, axis=-1)[:, None]


def softmax(l):
    """softmax(l) along the last axis, (N, K), computed from the shifted exponentials."""
    xp = get_array_module(l)
    e = xp.exp(l - xp.max(l, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class _Likelihood:
    """What the decoder likelihoods share: equality by family and settings (an Arch compares them)."""

    name = ""
    outputs_per_feature = 1

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Bernoulli(_Likelihood):
    """p(x|l) = prod_d sigmoid(l_d)^x_d (1 - sigmoid(l_d))^(1 - x_d), x in {0,1}^D (or [0,1])."""

    name = "bernoulli"

    @staticmethod
    def loglik(x, logits):
        """ll_n = sum_d [ -softplus(-l) x - softplus(l) (1 - x) ]  (N,).

        Written with softplus, never log(sigmoid): finite for logits of +-100 and beyond.
        x, logits: (N, D).  Cache: the residual r = x - sigmoid(l) (N, D), computed in the same
        pass (kernels/bernoulli.py: one fused kernel when x and logits are float arrays of one
        dtype and shape; the plain-xp reference otherwise).
        """
        if x.dtype == logits.dtype and logits.dtype in FLOAT_DTYPES and x.ndim == 2 and x.shape == logits.shape:
            return bernoulli_loglik_forward(x, logits)
        return bernoulli_loglik_forward_ref(x, logits)

    @staticmethod
    def loglik_backward(dll, cache):
        """d ll_n / d l_nd = x_nd - sigmoid(l_nd), so dlogits = dll[:, None] * (x - sigmoid(l))  (N, D).

        dll: (N,) upstream gradient; cache: the residual r = x - sigmoid(l) (N, D) from loglik."""
        return dll[:, None] * cache

    @staticmethod
    def mean(logits):
        """E[x] = sigmoid(l)."""
        return sigmoid(logits)

    @staticmethod
    def sample(logits, rng):
        """x ~ Bernoulli(sigmoid(l)), same dtype as logits."""
        xp = get_array_module(logits)
        u = rng.uniform(logits.shape, logits.dtype, xp)
        return (u < sigmoid(logits)).astype(logits.dtype)


class Categorical(_Likelihood):
    """p(w|l) = prod_k softmax(l)_k^w_k, with w one-hot (or any weights) over K classes."""

    name = "categorical"

    @staticmethod
    def loglik(w, logits):
        """ll_n = sum_k w_nk log softmax(l_n)_k  (N,);  log softmax = l - logsumexp(l), max-shifted."""
        return (w * log_softmax(logits)).sum(axis=1), (w, logits)

    @staticmethod
    def loglik_backward(dll, cache):
        """d ll_n / d l_nj = w_nj - softmax(l_n)_j sum_k w_nk   (= w - softmax(l) for one-hot w), so
        dlogits = dll[:, None] * (w - softmax(l) * sum_k w_k)  (N, K).

        dll: (N,) upstream gradient; cache: (w, logits), each (N, K)."""
        w, logits = cache
        return dll[:, None] * (w - softmax(logits) * w.sum(axis=1, keepdims=True))

    @staticmethod
    def mean(logits):
        """E[w] = softmax(l) (class probabilities)."""
        return softmax(logits)

    @staticmethod
    def sample(logits, rng):
        """One-hot draws w ~ Categorical(softmax(l)) by inverting the CDF with one uniform per row."""
        xp = get_array_module(logits)
        cdf = xp.cumsum(softmax(logits), axis=1)
        u = rng.uniform((logits.shape[0], 1), logits.dtype, xp)
        k = xp.minimum((cdf < u).sum(axis=1), logits.shape[1] - 1)
        return (xp.arange(logits.shape[1])[None, :] == k[:, None]).astype(logits.dtype)


class FixedVarGaussian(_Likelihood):
    """p(x|mu) = N(x; mu, var I) with the variance fixed (the paper's CelebA decoders: var = 1)."""

    name = "gaussian_fixed"

    def __init__(self, var: float = 1.0):
        self.var = float(var)

    def loglik(self, x, mu):
        """ll_n = -0.5 sum_d (x - mu)^2 / var - (D/2) log(2 pi var)  (N,)."""
        D = x.shape[1]
        diff = x - mu
        ll = -0.5 * (diff * diff).sum(axis=1) / self.var - 0.5 * D * (LOG_2PI + math.log(self.var))
        return ll, diff

    def loglik_backward(self, dll, diff):
        """d ll_n / d mu_nd = (x_nd - mu_nd) / var, so dmu = dll[:, None] * (x - mu) / var  (N, D).

        dll: (N,) upstream gradient; diff: x - mu (N, D) from loglik."""
        return dll[:, None] * diff / self.var

    def mean(self, mu):
        return mu

    def sample(self, mu, rng):
        xp = get_array_module(mu)
        return mu + math.sqrt(self.var) * rng.normal(mu.shape, mu.dtype, xp)


def gaussian_var_forward(a):
    """var = softplus(a) + VAR_FLOOR: the variance head of a learned Gaussian. Returns (var, cache)."""
    return softplus(a) + VAR_FLOOR, a


def gaussian_var_backward(dvar, a):
    """d var / d a = sigmoid(a), so da = dvar * sigmoid(a)  (N, D).

    dvar: (N, D) upstream gradient; a: (N, D) the pre-activation (the cache)."""
    return dvar * sigmoid(a)


def gaussian_loglik(x, mu, var):
    """log N(x; mu, diag var) summed over D:  ll_n = -0.5 sum_d [log 2pi + log var + (x - mu)^2 / var]  (N,).

    x, mu, var: (N, D) (mu, var may broadcast).  Returns ll and the cache for the backward.
    """
    xp = get_array_module(x, mu, var)
    diff = x - mu
    ll = -0.5 * (LOG_2PI + xp.log(var) + diff * diff / var).sum(axis=-1)
    return ll, (diff, var)


def gaussian_loglik_backward(dll, cache):
    """Closed form (per sample n, feature d):
    d ll/d x = -(x - mu)/var;  d ll/d mu = (x - mu)/var;  d ll/d var = 0.5 ((x - mu)^2/var - 1)/var.
    dll: (N,) upstream gradient; cache: (x - mu, var), each (N, D).
    Returns (dx, dmu, dvar), each (N, D), scaled by dll[:, None].
    """
    diff, var = cache
    g = dll[..., None]
    dmu = g * diff / var
    dvar = g * 0.5 * (diff * diff / var - 1.0) / var
    return -dmu, dmu, dvar


def standard_normal_loglik(z):
    """log N(z; 0, I) summed over D:  -0.5 sum_d (z^2 + log 2pi)  (N,)."""
    return -0.5 * (z * z + LOG_2PI).sum(axis=-1)


class LearnedVarGaussian(_Likelihood):
    """p(x|mu, v) = N(x; mu, diag v) with the variance learned per sample and feature: the decoder
    outputs 2 D numbers per sample, [mu | a] (flattened in C order: an image decoder's first C
    channels are mu, its last C the pre-activations a), and v = softplus(a) + VAR_FLOOR, the
    variance head of q(z|.)."""

    name = "gaussian_learned"
    outputs_per_feature = 2

    @staticmethod
    def _split(out):
        """out (N, 2 D, ...) -> (mu, a), each (N, D), of the flattened output."""
        flat = out.reshape(out.shape[0], -1)
        d = flat.shape[1] // 2
        return flat[:, :d], flat[:, d:]

    def loglik(self, x, out):
        """ll_n = -0.5 sum_d [log 2pi + log v + (x - mu)^2 / v]  (N,), v = softplus(a) + VAR_FLOOR.

        x: (N, D); out: (N, 2 D) = [mu | a].  Cache: ((x - mu, v), a)."""
        mu, a = self._split(out)
        var, _ = gaussian_var_forward(a)
        ll, gcache = gaussian_loglik(x, mu, var)
        return ll, (gcache, a)

    def loglik_backward(self, dll, cache):
        """d ll_n / d mu_nd = (x - mu) / v;  d ll_n / d a_nd = 0.5 ((x - mu)^2 / v - 1) / v * sigmoid(a)
        (the chain through v = softplus(a) + floor), so d out = [dmu | da]  (N, 2 D).

        dll: (N,) upstream gradient; cache: ((x - mu, v), a) from loglik."""
        gcache, a = cache
        _, dmu, dvar = gaussian_loglik_backward(dll, gcache)
        xp = get_array_module(dmu)
        return xp.concatenate([dmu, gaussian_var_backward(dvar, a)], axis=1)

    def mean(self, out):
        """E[x] = mu  (N, D)."""
        return self._split(out)[0]

    def sample(self, out, rng):
        """x = mu + sqrt(v) eps  (N, D)."""
        mu, a = self._split(out)
        xp = get_array_module(mu)
        return mu + xp.sqrt(gaussian_var_forward(a)[0]) * rng.normal(mu.shape, mu.dtype, xp)


LIKELIHOODS = {"bernoulli": Bernoulli, "categorical": Categorical, "gaussian_fixed": FixedVarGaussian,
               "gaussian_learned": LearnedVarGaussian}


def likelihood(name: str, variance: float = 1.0):
    """The decoder likelihood called ``name`` (a key of LIKELIHOODS); ``variance``: gaussian_fixed's."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}: choose one of {', '.join(LIKELIHOODS)}")
    return FixedVarGaussian(variance) if name == "gaussian_fixed" else LIKELIHOODS[name]()
