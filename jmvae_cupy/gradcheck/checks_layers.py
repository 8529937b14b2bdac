"""The gradient checks of the layers, the likelihoods, the fused kernels, Adam and the convolution
stack, registered in jmvae_cupy/gradcheck/registry.py.  Every forward and backward is looked up
*through its module at call time* (``dense.dense_backward``, never a name bound by ``from ... import``
when this file was imported), so a backward monkeypatched in its module is the one that gets checked."""

from __future__ import annotations

import numpy as np

from .. import distributions, optim
from ..kernels import batchnorm as bn_kernels
from ..kernels import bias_relu, gauss_kl, reparam
from ..layers import activations, batchnorm, conv, deconv, dense, reshape
from . import core
from .registry import _away_from_zero, _positive, _randn, _rng, compare, register

# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


@register("dense", 1e-7, "y = x W + b", covers=("jmvae_cupy.layers.dense.dense_backward",))
def _dense():
    r = _rng(1)
    x, W, b = _randn(r, (5, 7)), _randn(r, (7, 3), 0.5, -0.2), _randn(r, (3,))
    dy = _randn(r, (5, 3))

    def loss():
        return core.dot(dense.dense_forward(x, W, b)[0], dy)

    dx, g = dense.dense_backward(dy, dense.dense_forward(x, W, b)[1])
    return compare(loss, {"x": x, "W": W, "b": b}, {"x": dx, "W": g["W"], "b": g["b"]})


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
        return core.dot(dense.dense_relu_forward(x, W, b)[0], dy)

    dx, g = dense.dense_relu_backward(dy, dense.dense_relu_forward(x, W, b)[1])
    out = compare(loss, {"x": x, "W": W, "b": b}, {"x": dx, "W": g["W"], "b": g["b"]})
    du, db = bias_relu.bias_relu_backward(dy, bias_relu.bias_relu_forward(u.copy(), b))

    def loss_u():
        return core.dot(bias_relu.bias_relu_forward(u.copy(), b), dy)

    out.update(compare(loss_u, {"u (kernel)": u, "b (kernel)": b}, {"u (kernel)": du, "b (kernel)": db}))
    return out


def _elementwise(fwd: str, bwd: str, x, seed):
    dy = _randn(_rng(seed), x.shape)

    def loss():
        return core.dot(getattr(activations, fwd)(x)[0], dy)

    dx = getattr(activations, bwd)(dy, getattr(activations, fwd)(x)[1])
    return compare(loss, {"x": x}, {"x": dx})


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
        return core.dot(reshape.flatten_forward(x)[0], dy)

    def loss_r():
        return core.dot(reshape.reshape_forward(v, (5, 2))[0], dv)

    out = compare(loss_f, {"x (flatten)": x},
                   {"x (flatten)": reshape.flatten_backward(dy, reshape.flatten_forward(x)[1])})
    out.update(compare(loss_r, {"x (reshape)": v},
                        {"x (reshape)": reshape.reshape_backward(dv, reshape.reshape_forward(v, (5, 2))[1])}))
    return out


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def _loglik_check(dist, data, out, seed):
    """Check ``dist.loglik_backward`` (looked up on the class at call time) w.r.t. the network output."""
    dll = _randn(_rng(seed), (out.shape[0],))

    def loss():
        return core.dot(dist.loglik(data, out)[0], dll)

    return compare(loss, {"out": out}, {"out": dist.loglik_backward(dll, dist.loglik(data, out)[1])})


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
        return core.dot(distributions.gaussian_loglik(x, mu, var)[0], dll)

    dx, dmu, dvar = distributions.gaussian_loglik_backward(dll, distributions.gaussian_loglik(x, mu, var)[1])
    return compare(loss, {"x": x, "mu": mu, "var": var}, {"x": dx, "mu": dmu, "var": dvar})


@register("gaussian_var_head", 1e-7, "var = softplus(a) + floor",
          covers=("jmvae_cupy.distributions.gaussian_var_backward",))
def _gaussian_var_head():
    r = _rng(18)
    a, dvar = _randn(r, (5, 6), 2.0), _randn(r, (5, 6))

    def loss():
        return core.dot(distributions.gaussian_var_forward(a)[0], dvar)

    da = distributions.gaussian_var_backward(dvar, distributions.gaussian_var_forward(a)[1])
    return compare(loss, {"a": a}, {"a": da})


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@register("reparam", 1e-7, "z = mu + sqrt(var) eps (Numba kernel)",
          covers=("jmvae_cupy.kernels.reparam.reparam_backward",))
def _reparam():
    r = _rng(20)
    mu, var, eps, dz = _randn(r, (5, 3)), _positive(r, (5, 3)), _randn(r, (5, 3), 1.0, 0.0), _randn(r, (5, 3))

    def loss():
        return core.dot(reparam.reparam_forward(mu, var, eps), dz)

    dmu, dvar = reparam.reparam_backward(dz, var, eps)
    return compare(loss, {"mu": mu, "var": var}, {"mu": dmu, "var": dvar})


@register("gauss_kl", 1e-7, "KL(N(mu1, var1) || N(mu2, var2)) (Numba kernel)",
          covers=("jmvae_cupy.kernels.gauss_kl.gauss_kl_backward",))
def _gauss_kl():
    r = _rng(21)
    mu1, var1 = _randn(r, (5, 3)), _positive(r, (5, 3))
    mu2, var2 = _randn(r, (5, 3), 1.0, -0.5), _positive(r, (5, 3), 0.6)
    dkl = _randn(r, (5,))

    def loss():
        return core.dot(gauss_kl.gauss_kl_forward(mu1, var1, mu2, var2), dkl)

    d = gauss_kl.gauss_kl_backward(dkl, mu1, var1, mu2, var2)
    return compare(loss, {"mu1": mu1, "var1": var1, "mu2": mu2, "var2": var2},
                    {"mu1": d[0], "var1": d[1], "mu2": d[2], "var2": d[3]})


@register("gauss_kl_prior", 1e-7, "KL(N(mu, var) || N(0, I)) (Numba kernel)",
          covers=("jmvae_cupy.kernels.gauss_kl.gauss_kl_backward",))
def _gauss_kl_prior():
    r = _rng(22)
    mu1, var1, dkl = _randn(r, (5, 3)), _positive(r, (5, 3)), _randn(r, (5,))

    def loss():
        return core.dot(gauss_kl.gauss_kl_forward(mu1, var1), dkl)

    dmu1, dvar1, _, _ = gauss_kl.gauss_kl_backward(dkl, mu1, var1)
    return compare(loss, {"mu1": mu1, "var1": var1}, {"mu1": dmu1, "var1": dvar1})


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
        out[k] = core.rel_error(params[k] - p0[k], p - p0[k])
    return out


# --------------------------------------------------------------------------------------------
# Convolution stack
# --------------------------------------------------------------------------------------------

def _strided_check(module, name, seed, x_shape, W_shape, b_shape, stride, pad, method):
    """conv2d or deconv2d (``name``) of ``module``: <forward(x, W, b), dy> against its backward."""
    forward, backward = getattr(module, f"{name}_forward"), getattr(module, f"{name}_backward")
    r = _rng(seed)
    x, W, b = _randn(r, x_shape), _randn(r, W_shape, 0.5), _randn(r, b_shape)
    dy = _randn(r, forward(x, W, b, stride, pad, method=method)[0].shape)

    def loss():
        return core.dot(forward(x, W, b, stride, pad, method=method)[0], dy)

    dx, g = backward(dy, forward(x, W, b, stride, pad, method=method)[1])
    return compare(loss, {"x": x, "W": W, "b": b}, {"x": dx, "W": g["W"], "b": g["b"]})


@register("conv2d", 1e-7, "x (2,3,7,6) * W (4,3,3,2), stride (2,1), pad (1,0), bias",
          covers=("jmvae_cupy.layers.conv.conv2d_backward",))
def _conv2d():
    return _strided_check(conv, "conv2d", 30, (2, 3, 7, 6), (4, 3, 3, 2), (4,), (2, 1), (1, 0), "im2col")

@register("conv2d_relu", 1e-7, "y = max(x (2,3,6,5) * W (4,3,3,3) + b, 0), stride 1, pad 1, the fused bias + ReLU",
          covers=("jmvae_cupy.layers.conv.conv2d_backward", "jmvae_cupy.layers.conv_fast.bias_backward"))
def _conv2d_relu():
    r = _rng(34)
    x, W, b = _randn(r, (2, 3, 6, 5)), _randn(r, (4, 3, 3, 3), 0.5), _randn(r, (4,))
    u = conv.conv2d_forward(x, W, b, 1, 1, method="im2col")[0]  # the pre-activations
    assert (np.abs(u) >= 1e-3).all(), "test inputs too close to the ReLU kink"
    dy = _randn(r, u.shape)

    def loss():
        return core.dot(conv.conv2d_forward(x, W, b, 1, 1, relu=True)[0], dy)

    dx, g = conv.conv2d_backward(dy, conv.conv2d_forward(x, W, b, 1, 1, relu=True)[1])
    return compare(loss, {"x": x, "W": W, "b": b}, {"x": dx, "W": g["W"], "b": g["b"]})


@register("conv2d_winograd", 1e-7, "x (2,5,8,12) * W (6,5,4,4), stride 2, pad 1, bias, Winograd F(2x2, 2x2)",
          covers=("jmvae_cupy.layers.conv.conv2d_backward", "jmvae_cupy.layers.conv_fast.conv2d_backward_winograd"))
def _conv2d_winograd():
    return _strided_check(conv, "conv2d", 32, (2, 5, 8, 12), (6, 5, 4, 4), (6,), 2, 1, "winograd")


@register("deconv2d", 1e-7, "x (2,3,4,5) transposed-conv W (3,2,3,4), stride 2, pad (1,2), bias",
          covers=("jmvae_cupy.layers.deconv.deconv2d_backward",))
def _deconv2d():
    return _strided_check(deconv, "deconv2d", 31, (2, 3, 4, 5), (3, 2, 3, 4), (2,), 2, (1, 2), "im2col")

@register("deconv2d_winograd", 1e-7, "x (2,6,4,2) transposed-conv W (6,5,4,4), stride 2, pad 1, bias, "
          "Winograd F(2x2, 2x2)", covers=("jmvae_cupy.layers.deconv.deconv2d_backward",
                                          "jmvae_cupy.layers.conv_fast.deconv2d_backward_winograd"))
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
        return core.dot(fwd()[0], dy)

    dx, g = batchnorm.batchnorm_backward(dy, fwd()[1])
    return compare(loss, {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": g["gamma"], "beta": g["beta"]})


def _bn_kernel_check(fused: bool, relu: bool, seed: int):
    """The training-mode passes on their own: the fused Numba kernels, or the layer's plain-xp passes
    (the CuPy path).  With relu, beta = +-2.5 and |gamma xhat| < 1.7 keep y away from the kink."""
    r = _rng(seed)
    M, C = 9, 4
    x = _randn(r, (M, C), 2.0, 1.5)
    gamma = 0.4 + 0.2 * r.random(C)
    beta = 2.5 * np.array([1.0, -1.0, 1.0, -1.0]) if relu else _randn(r, (C,))
    dy = _randn(r, (M, C))
    fwd_fn = bn_kernels.bn_train_forward if fused else batchnorm.bn_train_forward_xp
    bwd_fn = bn_kernels.bn_train_backward if fused else batchnorm.bn_train_backward_xp

    def loss():
        return core.dot(fwd_fn(x, gamma, beta, 1e-4, relu)[0], dy)

    y, mu, _, inv_std = fwd_fn(x, gamma, beta, 1e-4, relu)
    dx, dgamma, dbeta = bwd_fn(dy, x, y if relu else None, mu, inv_std, gamma, relu)
    return compare(loss, {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": dgamma, "beta": dbeta})


# (the fused passes without the ReLU: the batchnorm_train_* entries, whose layer runs them)
@register("batchnorm_kernel_relu", 1e-6, "fused passes + ReLU, y kept 0.8 away from the kink",
          covers=("jmvae_cupy.kernels.batchnorm.bn_train_backward",))
def _bn_kernel_relu():
    return _bn_kernel_check(True, True, 39)


@register("batchnorm_kernel_ref", 1e-6, "the layer's plain-xp passes (the CuPy path) + ReLU, x (9, 4)",
          covers=("jmvae_cupy.layers.batchnorm.bn_train_backward_xp",))
def _bn_kernel_ref():
    return _bn_kernel_check(False, True, 40)


_BN = ("jmvae_cupy.layers.batchnorm.batchnorm_backward", "jmvae_cupy.layers.batchnorm.train_backward")

@register("batchnorm_train_dense", 1e-6, "batch statistics, x (7, 5) off zero mean", covers=_BN)
def _bn_train_dense():
    return _batchnorm_check(_randn(_rng(32), (7, 5), 2.0, 1.5), True, 33)

@register("batchnorm_train_spatial", 1e-6, "batch statistics per channel, x (3, 4, 5, 3)", covers=_BN)
def _bn_train_spatial():
    return _batchnorm_check(_randn(_rng(34), (3, 4, 5, 3), 2.0, -1.0), True, 35)

@register("batchnorm_eval", 1e-7, "running statistics (a fixed affine map), x (3, 4, 5, 3)", covers=_BN)
def _bn_eval():
    return _batchnorm_check(_randn(_rng(36), (3, 4, 5, 3), 2.0, 0.7), False, 37)


