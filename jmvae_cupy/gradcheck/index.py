"""The index of the gradient checks: every backward function of the library -> the checks that
exercise it (``BACKWARDS``, from the registry) and -> the page of docs/derivations/ that derives it
(``DERIVATIONS``); tests/test_gradcheck_cli.py holds both to the library (nothing undiscovered,
nothing unchecked, no page missing)."""

from __future__ import annotations

from . import checks_layers, checks_models  # noqa: F401  (importing them registers their checks)
from .registry import REGISTRY

_M = "jmvae_cupy.models."

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
    _L + "conv_fast.bias_backward": "conv.md",
    _L + "conv_fast.conv2d_backward_winograd": "winograd.md",
    _L + "conv_fast.deconv2d_backward_winograd": "winograd.md",
    _L + "batchnorm.batchnorm_backward": "batchnorm.md",
    _L + "batchnorm.train_backward": "batchnorm.md",
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


