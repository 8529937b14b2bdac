"""``python -m jmvae_cupy.gradcheck``: every backward pass of the library against central differences.
(``python -m jmvae_cupy.gradcheck_cli`` runs the same command.)

    python -m jmvae_cupy.gradcheck --list             # the registered checks
    python -m jmvae_cupy.gradcheck dense relu         # some of them (shell-style patterns work: 'jmvae_kl*')
    python -m jmvae_cupy.gradcheck --all              # all of them; exit code 1 if any fails

Each check builds float64 inputs (off zero mean, ReLU inputs away from the kink, odd non-square
sizes), a *random* upstream gradient dy (never all ones), and compares the analytic gradient of
L = <f(inputs), dy> from the backward pass under test with central differences
(:func:`jmvae_cupy.gradcheck.numerical_gradient`, h = 1e-5), input by input, by
:func:`jmvae_cupy.gradcheck.rel_error` = max|a - n| / max(|a| + |n|).  It reports the largest error
over the inputs and the input it came from.

Every forward and backward is looked up *through its module at call time*
(``dense.dense_backward``, never a name bound by ``from ... import`` when this file was imported),
so a backward monkeypatched in its module is the one that gets checked.

``BACKWARDS`` maps every backward function of the library to the checks that exercise it and
``DERIVATIONS`` to the page of docs/derivations/ that derives it; tests/test_gradcheck_cli.py
holds both to the library (nothing undiscovered, nothing unchecked, no page missing).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import distributions, gradcheck, optim
from .cli import guarded
from .layers import activations, dense, reshape
from .models import architectures, base
from .models import baselines as baselines_mod
from .models import config as model_config
from .models import jmvae as jmvae_mod
from .rng import Rng


def _optional(name: str):
    """The module ``name`` or None when it does not exist (yet): its checks are then not registered."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


reparam = importlib.import_module("jmvae_cupy.kernels.reparam")
bias_relu = importlib.import_module("jmvae_cupy.kernels.bias_relu")
bn_kernels = importlib.import_module("jmvae_cupy.kernels.batchnorm")
gauss_kl = importlib.import_module("jmvae_cupy.kernels.gauss_kl")
conv = _optional("jmvae_cupy.layers.conv")
deconv = _optional("jmvae_cupy.layers.deconv")
batchnorm = _optional("jmvae_cupy.layers.batchnorm")


@dataclass(frozen=True)
class Check:
    """One registered check: ``run()`` -> {input name: relative error}; passes if every error < tol."""

    name: str
    run: Callable[[], dict]
    tol: float
    what: str
    covers: tuple = field(default=())


REGISTRY: dict[str, Check] = {}


def register(name: str, tol: float, what: str, covers: tuple = ()):
    def deco(fn):
        REGISTRY[name] = Check(name, fn, tol, what, tuple(covers))
        return fn

    return deco


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _randn(r, shape, scale=1.0, shift=0.3):
    """Gaussian entries off zero mean: N(shift, scale^2)."""
    return r.standard_normal(shape) * scale + shift


def _away_from_zero(r, shape, gap=0.2):
    """Entries with |v| >= gap and random signs (ReLU inputs away from the kink)."""
    return (gap + r.random(shape) * 1.5) * r.choice([-1.0, 1.0], size=shape) + 0.05


def _positive(r, shape, low=0.4):
    """Entries in [low, low + 1.5) (variances)."""
    return low + 1.5 * r.random(shape)


def _compare(loss: Callable[[], float], arrays: dict, grads: dict) -> dict:
    """{name: rel_error(grads[name], central differences of loss() w.r.t. arrays[name])}."""
    out = {}
    for name, x in arrays.items():
        num = gradcheck.numerical_gradient(loss, x)
        out[name] = gradcheck.rel_error(np.asarray(grads[name], dtype=np.float64), num)
    return out


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


@register("dense", 1e-7, "y = x W + b", covers=("jmvae_cupy.layers.dense.dense_backward",))
def _dense():
    r = _rng(1)
    x, W, b = _randn(r, (5, 7)), _randn(r, (7, 3), 0.5, -0.2), _randn(r, (3,))
    dy = _randn(r, (5, 3))

    def loss():
        return gradcheck.dot(dense.dense_forward(x, W, b)[0], dy)

    dx, g = dense.dense_backward(dy, dense.dense_forward(x, W, b)[1])
    return _compare(loss, {"x": x, "W": W, "b": b}, {"x": dx, "W": g["W"], "b": g["b"]})


@register("dense_relu", 1e-7, "y = max(x W + b, 0) fused (and its bias+ReLU kernel), pre-activations |u| >= 0.2",
          covers=("jmvae_cupy.layers.dense.dense_relu_backward",
                  "jmvae_cupy.kernels.bias_relu.bias_relu_backward"))
def _dense_relu():
    r = _rng(21)
    x, W = _randn(r, (5, 7)), _randn(r, (7, 4), 0.5, -0.2)
    # b puts every pre-activation x W + b at least 0.2 away from the kink, with both signs
    b = _away_from_zero(r, (5, 4)) - x @ W
    b = b.mean(axis=0)
    u = x @ W  # the GEMM output the kernel adds b to
    assert (np.abs(u + b) >= 0.05).all(), "test inputs too close to the ReLU kink"
    dy = _randn(r, (5, 4))

    def loss():
        return gradcheck.dot(dense.dense_relu_forward(x, W, b)[0], dy)

    dx, g = dense.dense_relu_backward(dy, dense.dense_relu_forward(x, W, b)[1])
    out = _compare(loss, {"x": x, "W": W, "b": b}, {"x": dx, "W": g["W"], "b": g["b"]})
    du, db = bias_relu.bias_relu_backward(dy, bias_relu.bias_relu_forward(u.copy(), b))

    def loss_u():
        return gradcheck.dot(bias_relu.bias_relu_forward(u.copy(), b), dy)

    out.update(_compare(loss_u, {"u (kernel)": u, "b (kernel)": b}, {"u (kernel)": du, "b (kernel)": db}))
    return out


def _elementwise(fwd: str, bwd: str, x, seed):
    dy = _randn(_rng(seed), x.shape)

    def loss():
        return gradcheck.dot(getattr(activations, fwd)(x)[0], dy)

    dx = getattr(activations, bwd)(dy, getattr(activations, fwd)(x)[1])
    return _compare(loss, {"x": x}, {"x": dx})


@register("relu", 1e-7, "y = max(x, 0), inputs |x| >= 0.2",
          covers=("jmvae_cupy.layers.activations.relu_backward",))
def _relu():
    return _elementwise("relu_forward", "relu_backward", _away_from_zero(_rng(2), (6, 5)), 3)


@register("softplus", 1e-7, "y = log(1 + e^x)", covers=("jmvae_cupy.layers.activations.softplus_backward",))
def _softplus():
    return _elementwise("softplus_forward", "softplus_backward", _randn(_rng(4), (6, 5), 3.0), 5)


@register("sigmoid", 1e-7, "y = 1 / (1 + e^-x)", covers=("jmvae_cupy.layers.activations.sigmoid_backward",))
def _sigmoid():
    return _elementwise("sigmoid_forward", "sigmoid_backward", _randn(_rng(6), (6, 5), 3.0), 7)


@register("flatten", 1e-7, "(N, C, H, W) -> (N, C*H*W) and back (reshape)",
          covers=("jmvae_cupy.layers.reshape.flatten_backward", "jmvae_cupy.layers.reshape.reshape_backward"))
def _flatten():
    r = _rng(8)
    x, v = _randn(r, (3, 2, 3, 5)), _randn(r, (3, 10))
    dy, dv = _randn(r, (3, 30)), _randn(r, (3, 5, 2))

    def loss_f():
        return gradcheck.dot(reshape.flatten_forward(x)[0], dy)

    def loss_r():
        return gradcheck.dot(reshape.reshape_forward(v, (5, 2))[0], dv)

    out = _compare(loss_f, {"x (flatten)": x},
                   {"x (flatten)": reshape.flatten_backward(dy, reshape.flatten_forward(x)[1])})
    out.update(_compare(loss_r, {"x (reshape)": v},
                        {"x (reshape)": reshape.reshape_backward(dv, reshape.reshape_forward(v, (5, 2))[1])}))
    return out


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def _loglik_check(dist, data, out, seed):
    """Check ``dist.loglik_backward`` (looked up on the class at call time) w.r.t. the network output."""
    dll = _randn(_rng(seed), (out.shape[0],))

    def loss():
        return gradcheck.dot(dist.loglik(data, out)[0], dll)

    return _compare(loss, {"out": out}, {"out": dist.loglik_backward(dll, dist.loglik(data, out)[1])})


@register("bernoulli", 1e-7, "sum_d x log sigmoid(l) + (1-x) log(1 - sigmoid(l)) w.r.t. logits",
          covers=("jmvae_cupy.distributions.Bernoulli.loglik_backward",))
def _bernoulli():
    r = _rng(10)
    x = (r.random((5, 7)) < 0.4).astype(np.float64)
    return {"logits": _loglik_check(distributions.Bernoulli(), x, _randn(r, (5, 7), 2.0), 11)["out"]}


@register("categorical", 1e-7, "sum_k w log softmax(l) w.r.t. logits, one-hot and soft w",
          covers=("jmvae_cupy.distributions.Categorical.loglik_backward",))
def _categorical():
    r = _rng(12)
    onehot = np.eye(4)[r.integers(0, 4, 5)]
    soft = r.random((5, 4)) * 0.8  # rows do not sum to 1: the sum_k w_k factor is exercised
    cat = distributions.Categorical()
    return {"logits (one-hot w)": _loglik_check(cat, onehot, _randn(r, (5, 4), 2.0), 13)["out"],
            "logits (soft w)": _loglik_check(cat, soft, _randn(r, (5, 4), 2.0), 14)["out"]}


@register("gaussian_fixed", 1e-7, "log N(x; mu, 0.7 I) w.r.t. mu",
          covers=("jmvae_cupy.distributions.FixedVarGaussian.loglik_backward",))
def _gaussian_fixed():
    r = _rng(15)
    g = distributions.FixedVarGaussian(0.7)
    return {"mu": _loglik_check(g, _randn(r, (5, 6)), _randn(r, (5, 6), 1.0, -0.4), 16)["out"]}


@register("gaussian_learned", 1e-7, "log N(x; mu, diag softplus(a) + floor) w.r.t. the output [mu | a]",
          covers=("jmvae_cupy.distributions.LearnedVarGaussian.loglik_backward",))
def _gaussian_learned():
    r = _rng(19)
    g = distributions.LearnedVarGaussian()
    out = np.concatenate([_randn(r, (5, 6), 1.0, -0.4), _randn(r, (5, 6), 1.5)], axis=1)  # [mu | a]
    return {"[mu | a]": _loglik_check(g, _randn(r, (5, 6)), out, 23)["out"]}


@register("gaussian", 1e-7, "log N(x; mu, diag var) w.r.t. x, mu, var",
          covers=("jmvae_cupy.distributions.gaussian_loglik_backward",))
def _gaussian():
    r = _rng(17)
    x, mu, var = _randn(r, (5, 6)), _randn(r, (5, 6), 1.0, -0.4), _positive(r, (5, 6))
    dll = _randn(r, (5,))

    def loss():
        return gradcheck.dot(distributions.gaussian_loglik(x, mu, var)[0], dll)

    dx, dmu, dvar = distributions.gaussian_loglik_backward(dll, distributions.gaussian_loglik(x, mu, var)[1])
    return _compare(loss, {"x": x, "mu": mu, "var": var}, {"x": dx, "mu": dmu, "var": dvar})


@register("gaussian_var_head", 1e-7, "var = softplus(a) + floor",
          covers=("jmvae_cupy.distributions.gaussian_var_backward",))
def _gaussian_var_head():
    r = _rng(18)
    a, dvar = _randn(r, (5, 6), 2.0), _randn(r, (5, 6))

    def loss():
        return gradcheck.dot(distributions.gaussian_var_forward(a)[0], dvar)

    da = distributions.gaussian_var_backward(dvar, distributions.gaussian_var_forward(a)[1])
    return _compare(loss, {"a": a}, {"a": da})


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@register("reparam", 1e-7, "z = mu + sqrt(var) eps (Numba kernel)",
          covers=("jmvae_cupy.kernels.reparam.reparam_backward",))
def _reparam():
    r = _rng(20)
    mu, var, eps, dz = _randn(r, (5, 3)), _positive(r, (5, 3)), _randn(r, (5, 3), 1.0, 0.0), _randn(r, (5, 3))

    def loss():
        return gradcheck.dot(reparam.reparam_forward(mu, var, eps), dz)

    dmu, dvar = reparam.reparam_backward(dz, var, eps)
    return _compare(loss, {"mu": mu, "var": var}, {"mu": dmu, "var": dvar})


@register("gauss_kl", 1e-7, "KL(N(mu1, var1) || N(mu2, var2)) (Numba kernel)",
          covers=("jmvae_cupy.kernels.gauss_kl.gauss_kl_backward",))
def _gauss_kl():
    r = _rng(21)
    mu1, var1 = _randn(r, (5, 3)), _positive(r, (5, 3))
    mu2, var2 = _randn(r, (5, 3), 1.0, -0.5), _positive(r, (5, 3), 0.6)
    dkl = _randn(r, (5,))

    def loss():
        return gradcheck.dot(gauss_kl.gauss_kl_forward(mu1, var1, mu2, var2), dkl)

    d = gauss_kl.gauss_kl_backward(dkl, mu1, var1, mu2, var2)
    return _compare(loss, {"mu1": mu1, "var1": var1, "mu2": mu2, "var2": var2},
                    {"mu1": d[0], "var1": d[1], "mu2": d[2], "var2": d[3]})


@register("gauss_kl_prior", 1e-7, "KL(N(mu, var) || N(0, I)) (Numba kernel)",
          covers=("jmvae_cupy.kernels.gauss_kl.gauss_kl_backward",))
def _gauss_kl_prior():
    r = _rng(22)
    mu1, var1, dkl = _randn(r, (5, 3)), _positive(r, (5, 3)), _randn(r, (5,))

    def loss():
        return gradcheck.dot(gauss_kl.gauss_kl_forward(mu1, var1), dkl)

    dmu1, dvar1, _, _ = gauss_kl.gauss_kl_backward(dkl, mu1, var1)
    return _compare(loss, {"mu1": mu1, "var1": var1}, {"mu1": dmu1, "var1": dvar1})


# --------------------------------------------------------------------------------------------
# Adam: not a backward pass.  Three steps of optim.Adam against Algorithm 1 written out.
# --------------------------------------------------------------------------------------------


@register("adam", 1e-10, "3 steps of optim.Adam vs the 4-line Algorithm 1 (no finite differences)")
def _adam():
    r = _rng(23)
    shapes = {"W": (4, 3), "b": (3,)}
    p0 = {k: _randn(r, s) for k, s in shapes.items()}
    gs = [{k: _randn(r, s, 1e-2 if i == 1 else 1.0) for k, s in shapes.items()} for i in range(3)]
    lr, b1, b2, eps = 3e-2, 0.8, 0.95, 1e-3  # off the defaults, eps large enough to matter
    opt = optim.Adam(lr=lr, beta1=b1, beta2=b2, eps=eps)
    params = {k: v.copy() for k, v in p0.items()}
    for g in gs:
        opt.step(params, g)
    out = {}
    for k in shapes:
        p, m, v = p0[k].copy(), np.zeros(shapes[k]), np.zeros(shapes[k])
        for t, g in enumerate(gs, start=1):
            m = b1 * m + (1 - b1) * g[k]
            v = b2 * v + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        # compare the update (p - p0), not p: the error relative to what the step moved
        out[k] = gradcheck.rel_error(params[k] - p0[k], p - p0[k])
    return out


# --------------------------------------------------------------------------------------------
# Convolution stack (registered only when the modules exist)
# --------------------------------------------------------------------------------------------

def _strided_check(module, name, seed, x_shape, W_shape, b_shape, stride, pad, method):
    """conv2d or deconv2d (``name``) of ``module``: <forward(x, W, b), dy> against its backward."""
    forward, backward = getattr(module, f"{name}_forward"), getattr(module, f"{name}_backward")
    r = _rng(seed)
    x, W, b = _randn(r, x_shape), _randn(r, W_shape, 0.5), _randn(r, b_shape)
    dy = _randn(r, forward(x, W, b, stride, pad, method=method)[0].shape)

    def loss():
        return gradcheck.dot(forward(x, W, b, stride, pad, method=method)[0], dy)

    dx, g = backward(dy, forward(x, W, b, stride, pad, method=method)[1])
    return _compare(loss, {"x": x, "W": W, "b": b}, {"x": dx, "W": g["W"], "b": g["b"]})


if conv is not None:

    @register("conv2d", 1e-7, "x (2,3,7,6) * W (4,3,3,2), stride (2,1), pad (1,0), bias",
              covers=("jmvae_cupy.layers.conv.conv2d_backward",))
    def _conv2d():
        return _strided_check(conv, "conv2d", 30, (2, 3, 7, 6), (4, 3, 3, 2), (4,), (2, 1), (1, 0), "im2col")

    @register("conv2d_winograd", 1e-7, "x (2,5,8,12) * W (6,5,4,4), stride 2, pad 1, bias, Winograd F(2x2, 2x2)",
              covers=("jmvae_cupy.layers.conv.conv2d_backward",))
    def _conv2d_winograd():
        return _strided_check(conv, "conv2d", 32, (2, 5, 8, 12), (6, 5, 4, 4), (6,), 2, 1, "winograd")


if deconv is not None:

    @register("deconv2d", 1e-7, "x (2,3,4,5) transposed-conv W (3,2,3,4), stride 2, pad (1,2), bias",
              covers=("jmvae_cupy.layers.deconv.deconv2d_backward",))
    def _deconv2d():
        return _strided_check(deconv, "deconv2d", 31, (2, 3, 4, 5), (3, 2, 3, 4), (2,), 2, (1, 2), "im2col")

    @register("deconv2d_winograd", 1e-7, "x (2,6,4,2) transposed-conv W (6,5,4,4), stride 2, pad 1, bias, "
              "Winograd F(2x2, 2x2)", covers=("jmvae_cupy.layers.deconv.deconv2d_backward",))
    def _deconv2d_winograd():
        return _strided_check(deconv, "deconv2d", 33, (2, 6, 4, 2), (6, 5, 4, 4), (5,), 2, 1, "winograd")


def _batchnorm_check(x, train, seed):
    r = _rng(seed)
    C = x.shape[1]
    gamma, beta = _randn(r, (C,), 0.5, 1.0), _randn(r, (C,))
    state0 = {"mean": _randn(r, (C,)), "var": _positive(r, (C,))}
    dy = _randn(r, x.shape)

    def fwd():
        state = {k: v.copy() for k, v in state0.items()}  # train mode updates it in place
        return batchnorm.batchnorm_forward(x, gamma, beta, state, train)

    def loss():
        return gradcheck.dot(fwd()[0], dy)

    dx, g = batchnorm.batchnorm_backward(dy, fwd()[1])
    return _compare(loss, {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": g["gamma"], "beta": g["beta"]})


def _bn_kernel_check(fused: bool, relu: bool, seed: int):
    """The training-mode kernels on their own: the fused Numba passes, or the plain-xp reference
    (the CuPy path).  With relu, beta = +-2.5 and |gamma xhat| < 1.7 keep y away from the kink."""
    r = _rng(seed)
    M, C = 9, 4
    x = _randn(r, (M, C), 2.0, 1.5)
    gamma = 0.4 + 0.2 * r.random(C)
    beta = 2.5 * np.array([1.0, -1.0, 1.0, -1.0]) if relu else _randn(r, (C,))
    dy = _randn(r, (M, C))
    fwd_fn = bn_kernels.bn_train_forward if fused else bn_kernels.bn_train_forward_ref
    bwd_fn = bn_kernels.bn_train_backward if fused else bn_kernels.bn_train_backward_ref

    def loss():
        return gradcheck.dot(fwd_fn(x, gamma, beta, 1e-4, relu)[0], dy)

    y, mu, _, inv_std = fwd_fn(x, gamma, beta, 1e-4, relu)
    dx, dgamma, dbeta = bwd_fn(dy, x, y if relu else None, mu, inv_std, gamma, relu)
    return _compare(loss, {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": dgamma, "beta": dbeta})


# (the fused passes without the ReLU: the batchnorm_train_* entries, whose layer runs them)
@register("batchnorm_kernel_relu", 1e-6, "fused passes + ReLU, y kept 0.8 away from the kink",
          covers=("jmvae_cupy.kernels.batchnorm.bn_train_backward",))
def _bn_kernel_relu():
    return _bn_kernel_check(True, True, 39)


@register("batchnorm_kernel_ref", 1e-6, "plain-xp reference (the CuPy path) + ReLU, x (9, 4)",
          covers=("jmvae_cupy.kernels.batchnorm.bn_train_backward_ref",))
def _bn_kernel_ref():
    return _bn_kernel_check(False, True, 40)


if batchnorm is not None:
    _BN = ("jmvae_cupy.layers.batchnorm.batchnorm_backward",)

    @register("batchnorm_train_dense", 1e-6, "batch statistics, x (7, 5) off zero mean", covers=_BN)
    def _bn_train_dense():
        return _batchnorm_check(_randn(_rng(32), (7, 5), 2.0, 1.5), True, 33)

    @register("batchnorm_train_spatial", 1e-6, "batch statistics per channel, x (3, 4, 5, 3)", covers=_BN)
    def _bn_train_spatial():
        return _batchnorm_check(_randn(_rng(34), (3, 4, 5, 3), 2.0, -1.0), True, 35)

    @register("batchnorm_eval", 1e-7, "running statistics (a fixed affine map), x (3, 4, 5, 3)", covers=_BN)
    def _bn_eval():
        return _batchnorm_check(_randn(_rng(36), (3, 4, 5, 3), 2.0, 0.7), False, 37)


# --------------------------------------------------------------------------------------------
# Model pieces and whole objectives
# --------------------------------------------------------------------------------------------


@register("gaussian_head", 1e-7, "mu = h W_mu + b_mu, var = softplus(h W_v + b_v) (fused dense)",
          covers=("jmvae_cupy.models.base.GaussianHead.backward",))
def _gaussian_head():
    r = _rng(40)
    head = base.GaussianHead(5, 3)
    h = _randn(r, (4, 5))
    params = {"W": _randn(r, (5, 6), 0.7), "b": _randn(r, (6,))}
    dmu, dvar = _randn(r, (4, 3)), _randn(r, (4, 3))

    def loss():
        (mu, var), _ = head.forward(params, {}, h)
        return gradcheck.dot(mu, dmu) + gradcheck.dot(var, dvar)

    dh, g = head.backward((dmu, dvar), head.forward(params, {}, h)[1])
    return _compare(loss, {"h": h, "W": params["W"], "b": params["b"]}, {"h": dh, "W": g["W"], "b": g["b"]})


ARCH_KW = dict(hidden=5, latent=3, x_dim=7, w_dim=4, chain=4)  # as tests/models/test_objectives.py
NOISE_SEED = 99
BETA, ALPHA = 0.6, 0.7  # a warm-up weight and a JMVAE-kl alpha off 1


def _model_check(variant: str, coef: dict | None, direction: str | None = None) -> dict:
    """Finite differences of model.loss_and_grads w.r.t. every parameter tensor, fixed noise."""
    arch = architectures.mnist_arch(**ARCH_KW)
    if variant in ("cvae", "cmma"):
        cls = getattr(baselines_mod, variant.upper())
        model = cls(arch, seed=3, dtype="float64", alpha=ALPHA, direction=direction)
    else:
        cls = {"jmvae": jmvae_mod.JMVAE, "kl": jmvae_mod.JMVAEKL, "h": jmvae_mod.JMVAEH,
               "h-z1": jmvae_mod.JMVAEHTopZ1}[variant]
        model = cls(arch, seed=3, dtype="float64", alpha=ALPHA)
    r = _rng(0)
    for k, p in model.params.items():  # zero biases put ReLU inputs on the kink: move them off
        if k.endswith(".b"):
            p[...] = 0.3 * r.standard_normal(p.shape)
    x = (r.random((4, arch.x_dim)) < 0.5).astype(np.float64)
    w = np.eye(arch.w_dim)[r.integers(0, arch.w_dim, 4)]

    def loss():
        return float(model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=BETA, coef=coef)[0])

    _, _, grads = model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=BETA, coef=coef)
    return _compare(loss, dict(model.params), grads)


def _register_model(name, variant, terms, covers, direction=None, what=""):
    def total():
        return _model_check(variant, None, direction)

    register(name, 1e-6, f"{what}: the whole loss (beta {BETA})", covers)(total)
    for t in terms:
        coef = {t: 1.0 if t.startswith("rec") else -1.0}

        def one(coef=coef):
            return _model_check(variant, coef, direction)

        register(f"{name}:{t}", 1e-6, f"{what}: term {t} alone", covers)(one)


def _config_model_check(variant: str, x_lik: str, w_lik: str) -> dict:
    """As :func:`_model_check`, on a model built from a model config (models/config.py) whose decoders
    have the likelihoods ``x_lik`` and ``w_lik`` (data of each family: {0, 1}, one-hot, real)."""
    user = model_config.check_config({"latent": 3, "x": {"likelihood": x_lik, "encoder": "D5R", "decoder": "D5R"},
                                      "w": {"likelihood": w_lik, "encoder": "D5R", "decoder": "D5R"},
                                      "jmvae_h": {"prior_z1": "D5R", "chain": "D4-D5R"}}, "gradcheck")
    if x_lik == "gaussian_fixed":
        user["x"]["variance"] = 0.7
    base = model_config.builtin_config("mnist")
    arch = model_config.arch_from_model(model_config.resolve(user, (7,), 4, base))
    cls = {"jmvae": jmvae_mod.JMVAE, "kl": jmvae_mod.JMVAEKL, "h": jmvae_mod.JMVAEH}[variant]
    model = cls(arch, seed=3, dtype="float64", alpha=ALPHA)
    r = _rng(1)
    for k, p in model.params.items():
        if k.endswith(".b"):
            p[...] = 0.3 * r.standard_normal(p.shape)

    def data(lik, d):
        if lik == "bernoulli":
            return (r.random((4, d)) < 0.5).astype(np.float64)
        if lik == "categorical":
            return np.eye(d)[r.integers(0, d, 4)]
        return _randn(r, (4, d))

    x, w = data(x_lik, 7), data(w_lik, 4)

    def loss():
        return float(model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=BETA)[0])

    _, _, grads = model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=BETA)
    return _compare(loss, dict(model.params), grads)


# every likelihood a model config can choose, on each modality, through a whole model's loss
CONFIG_LIKELIHOODS = (("gaussian_learned", "gaussian_fixed", "kl"), ("gaussian_fixed", "gaussian_learned", "jmvae"),
                      ("bernoulli", "gaussian_learned", "h"), ("gaussian_learned", "categorical", "kl"),
                      ("categorical", "bernoulli", "h"))
for _x, _w, _v in CONFIG_LIKELIHOODS:
    register(f"config_{_v}_{_x}_{_w}", 1e-6, f"a config's model ({_v}): x {_x}, w {_w}, the whole loss",
             covers=("jmvae_cupy.distributions.LearnedVarGaussian.loglik_backward",))(
        lambda _x=_x, _w=_w, _v=_v: _config_model_check(_v, _x, _w))


_M = "jmvae_cupy.models."
_register_model("jmvae", "jmvae", ("rec_x", "rec_w", "kl"), (_M + "jmvae.JMVAE.loss_and_grads",),
                what="JMVAE Eq. 2")
_register_model("jmvae_kl", "kl", ("rec_x", "rec_w", "kl", "kl_x", "kl_w"), (_M + "jmvae.JMVAEKL.loss_and_grads",),
                what="JMVAE-kl Eq. 4")
_register_model("jmvae_h", "h", ("rec_x", "rec_w", "kl_z2", "kl_z1"), (_M + "jmvae.JMVAEH.loss_and_grads",),
                what="JMVAE-h Eq. 3")
_register_model("jmvae_h_top_z1", "h-z1", ("rec_x", "rec_w", "kl_z2", "kl_z1"),
                (_M + "jmvae.JMVAEHTopZ1.loss_and_grads",), what="JMVAE-h Eq. 3, top layer q(z2|z1)")
for _v in ("cvae", "cmma"):
    for _d, _short, _rec in (("label2image", "l2i", "rec_x"), ("image2label", "i2l", "rec_w")):
        _register_model(f"{_v}_{_short}", _v, (_rec, "kl"), (f"{_M}baselines.{_v.upper()}.loss_and_grads",),
                        direction=_d, what=f"{_v.upper()} {_d}")


# --------------------------------------------------------------------------------------------
# The VAE-GAN terms (models/gan.py): L_D w.r.t. the discriminator and its inputs, L_G w.r.t. the decoder
# --------------------------------------------------------------------------------------------

gan_mod = _optional("jmvae_cupy.models.gan")
GAN_ENTRIES = 8  # entries checked per tensor (a random subset: the conv nets have thousands)


def _compare_subset(loss: Callable[[], float], arrays: dict, grads: dict, r, h: float = 1e-5) -> dict:
    """As :func:`_compare`, on ``GAN_ENTRIES`` random entries of each array."""
    return gradcheck.check_gradients_sampled(loss, arrays, grads, GAN_ENTRIES, r, h)


def _gan_setup(seed: int = 50):
    """A tiny CelebA-like JMVAE-kl (16x16, width 1/32) and its discriminator, biases off zero, a batch."""
    arch = architectures.celeba_arch(size=16, width=1 / 32, latent=3, w_dim=5)
    model = jmvae_mod.JMVAEKL(arch, seed=2, dtype="float64")
    gan = gan_mod.VAEGAN(model, weight=0.7, seed=3)
    r = _rng(seed)
    for d in (model.params, gan.params):
        for k, p in d.items():
            if k.endswith(".b"):
                p[...] = 0.3 * r.standard_normal(p.shape)
    x = r.random((4,) + arch.x_shape)
    w = np.where(r.random((4, arch.w_dim)) < 0.5, -1.0, 1.0)
    return model, gan, x, w, r


def _gan_disc_check(coef):
    model, gan, x, _, r = _gan_setup()
    x_rec, x_prior = r.random(x.shape), _randn(r, x.shape, 0.5, 0.5)
    state0 = {k: v.copy() for k, v in gan.state.items()}
    _, grads, (dx, dxr, dxp) = gan.disc_loss_and_grads(x, x_rec, x_prior, coef)

    def loss():
        for k, v in state0.items():  # train-mode batch norm updates the running statistics in place
            gan.state[k][...] = v
        return float(gan.disc_loss_and_grads(x, x_rec, x_prior, coef)[0])

    return _compare_subset(loss, {**gan.params, "x": x, "x_rec": x_rec, "x_prior": x_prior},
                           {**grads, "x": dx, "x_rec": dxr, "x_prior": dxp}, r)


def _gan_gen_check(coef):
    model, gan, x, w, r = _gan_setup(51)
    latents = gan.sample_latents(model, x, w, Rng(NOISE_SEED))
    _, _, _, _, grads = gan.loss_and_grads(model, x, w, None, gen_coef=coef, latents=latents)

    def loss():
        return float(gan.loss_and_grads(model, x, w, None, gen_coef=coef, latents=latents)[1])

    return _compare_subset(loss, {k: model.params[k] for k in grads}, grads, r)


if gan_mod is not None:
    _G = "jmvae_cupy.models.gan.VAEGAN."
    register("gan_disc", 1e-6, "VAE-GAN L_D w.r.t. discriminator params and its inputs x, x~, x_p",
             covers=(_G + "backward",))(lambda: _gan_disc_check(None))
    for _t in gan_mod.DISC_TERMS:
        register(f"gan_disc:{_t}", 1e-6, f"VAE-GAN L_D, part {_t} alone",
                 covers=(_G + "backward",))(lambda _t=_t: _gan_disc_check({_t: 1.0}))
    register("gan_gen", 1e-6, "VAE-GAN gamma L_G (non-saturating) w.r.t. the decoder px",
             covers=(_G + "loss_and_grads",))(lambda: _gan_gen_check(None))
    for _t in gan_mod.GEN_TERMS:
        register(f"gan_gen:{_t}", 1e-6, f"VAE-GAN L_G, part {_t} alone (x~ or x_p)",
                 covers=(_G + "loss_and_grads",))(lambda _t=_t: _gan_gen_check({_t: 1.0}))


# --------------------------------------------------------------------------------------------
# Coverage: backward function -> checks, backward function -> derivation page
# --------------------------------------------------------------------------------------------


def _backwards_from_registry() -> dict:
    out: dict[str, list] = {}
    for c in REGISTRY.values():
        for b in c.covers:
            out.setdefault(b, []).append(c.name)
    return {k: tuple(v) for k, v in out.items()}


BACKWARDS: dict[str, tuple] = _backwards_from_registry()
"""Qualified name of every backward function of the library -> the names of the checks covering it."""

_L, _D = "jmvae_cupy.layers.", "jmvae_cupy.distributions."
DERIVATIONS: dict[str, str] = {
    _L + "dense.dense_backward": "dense.md",
    _L + "dense.dense_relu_backward": "dense.md",
    "jmvae_cupy.kernels.bias_relu.bias_relu_backward": "dense.md",
    "jmvae_cupy.kernels.batchnorm.bn_train_backward": "batchnorm.md",
    _L + "reshape.flatten_backward": "dense.md",
    _L + "reshape.reshape_backward": "dense.md",
    _L + "activations.relu_backward": "activations.md",
    _L + "activations.softplus_backward": "activations.md",
    _L + "activations.sigmoid_backward": "activations.md",
    _D + "Bernoulli.loglik_backward": "distributions.md",
    _D + "Categorical.loglik_backward": "distributions.md",
    _D + "FixedVarGaussian.loglik_backward": "distributions.md",
    _D + "LearnedVarGaussian.loglik_backward": "distributions.md",
    _D + "gaussian_loglik_backward": "distributions.md",
    _D + "gaussian_var_backward": "distributions.md",
    "jmvae_cupy.kernels.reparam.reparam_backward": "reparameterisation.md",
    "jmvae_cupy.kernels.gauss_kl.gauss_kl_backward": "gaussian_kl.md",
    _L + "conv.conv2d_backward": "conv.md",
    _L + "deconv.deconv2d_backward": "deconv.md",
    _L + "batchnorm.batchnorm_backward": "batchnorm.md",
    "jmvae_cupy.models.base.GaussianHead.backward": "distributions.md",
    _M + "jmvae.JMVAE.loss_and_grads": "objectives.md",
    _M + "jmvae.JMVAEKL.loss_and_grads": "objectives.md",
    _M + "jmvae.JMVAEH.loss_and_grads": "objectives.md",
    _M + "jmvae.JMVAEHTopZ1.loss_and_grads": "objectives.md",
    _M + "baselines.CVAE.loss_and_grads": "objectives.md",
    _M + "baselines.CMMA.loss_and_grads": "objectives.md",
    _M + "gan.VAEGAN.backward": "gan.md",
    _M + "gan.VAEGAN.loss_and_grads": "gan.md",
}
"""Qualified name of every backward function -> its page under docs/derivations/."""


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


def run_check(check: Check) -> tuple[float, str, str]:
    """(max relative error, worst input, error message or '') of one check; an exception is a failure."""
    try:
        errs = check.run()
    except Exception as e:  # a broken backward may raise (wrong shape...): report it as the culprit
        return float("inf"), f"raised {type(e).__name__}: {e}".splitlines()[0][:80], "error"
    if not errs:
        return float("inf"), "(no inputs)", "error"
    worst = max(errs, key=lambda k: (errs[k] != errs[k], errs[k]))  # NaN counts as worst
    err = errs[worst]
    return (float("inf") if err != err else err), worst, ""


def select(patterns: list[str]) -> list[Check]:
    """The checks matching the names or shell-style patterns, in registry order; ValueError on a miss."""
    chosen = []
    for p in patterns:
        hits = [n for n in REGISTRY if fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise ValueError(f"unknown check {p!r} (python -m jmvae_cupy.gradcheck --list names them)")
        chosen += [n for n in hits if n not in chosen]
    return [REGISTRY[n] for n in REGISTRY if n in chosen]


def main(argv: list[str] | None = None) -> int:
    """The command line (exit 0: all passed, 1: a check failed, 2: bad arguments; Ctrl-C: 130, one line)."""
    return guarded(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m jmvae_cupy.gradcheck",
        description="Check backward passes against central differences in float64 (see docs/derivations/).")
    ap.add_argument("names", nargs="*", help="checks to run (shell patterns allowed, e.g. 'jmvae_kl*')")
    ap.add_argument("--all", action="store_true", help="run every registered check")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    args = ap.parse_args(argv)
    if args.list:
        width = max(map(len, REGISTRY))
        for c in REGISTRY.values():
            print(f"{c.name:<{width}}  tol {c.tol:.0e}  {c.what}")
        return 0
    if not args.all and not args.names:
        print("gradcheck: name checks to run, or --all (--list names them)", file=sys.stderr)
        return 2
    try:
        checks = list(REGISTRY.values()) if args.all else select(args.names)
    except ValueError as e:
        print(f"gradcheck: {e}", file=sys.stderr)
        return 2
    width = max(len(c.name) for c in checks)
    print(f"{'check':<{width}}  {'max rel err':>11}  {'tol':>7}  result  worst input")
    failed = []
    t0 = time.perf_counter()
    for c in checks:
        err, worst, status = run_check(c)
        ok = not status and err < c.tol
        if not ok:
            failed.append(c.name)
        print(f"{c.name:<{width}}  {err:11.2e}  {c.tol:7.0e}  {'PASS' if ok else 'FAIL'}    {worst}", flush=True)
    dt = time.perf_counter() - t0
    if failed:
        print(f"FAILED {len(failed)} of {len(checks)} checks ({dt:.1f} s): {', '.join(failed)}")
        return 1
    print(f"all {len(checks)} checks passed ({dt:.1f} s)")
    return 0


if __name__ == "__main__":  # python -m jmvae_cupy.gradcheck_cli: the same as python -m jmvae_cupy.gradcheck
    raise SystemExit(main())
