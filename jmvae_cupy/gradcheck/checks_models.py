"""The gradient checks of the models: the Gaussian head, every objective (JMVAE, JMVAE-kl, JMVAE-h
under both readings, CVAE and CMMA in both directions, a model of every likelihood a config can
choose), each term on its own and the whole loss, and the VAE-GAN terms; registered in
jmvae_cupy/gradcheck/registry.py.  Modules are looked up at call time, as in checks_layers.py."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..models import architectures, base
from ..models import baselines as baselines_mod
from ..models import config as model_config
from ..models import gan as gan_mod
from ..models import jmvae as jmvae_mod
from ..rng import Rng
from . import core
from .registry import _randn, _rng, compare, register

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
        return core.dot(mu, dmu) + core.dot(var, dvar)

    dh, g = head.backward((dmu, dvar), head.forward(params, {}, h)[1])
    return compare(loss, {"h": h, "W": params["W"], "b": params["b"]}, {"h": dh, "W": g["W"], "b": g["b"]})


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
    return compare(loss, dict(model.params), grads)


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
    return compare(loss, dict(model.params), grads)


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

GAN_ENTRIES = 8  # entries checked per tensor (a random subset: the conv nets have thousands)


def _compare_subset(loss: Callable[[], float], arrays: dict, grads: dict, r, h: float = 1e-5) -> dict:
    """As :func:`registry.compare` (core.check_gradients), on ``GAN_ENTRIES`` random entries of each array."""
    return core.check_gradients_sampled(loss, arrays, grads, GAN_ENTRIES, r, h)


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


