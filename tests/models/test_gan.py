"""Finite-difference checks (float64, central differences) of the VAE-GAN terms of jmvae_cupy/models/gan.py:
the sigmoid cross-entropies on logits, the discriminator loss L_D w.r.t. the discriminator's parameters and
its three inputs, and the generator term L_G w.r.t. the decoder's parameters -- each part on its own.

Tiny CelebA-like architecture as in test_conv_objectives.py: celeba_arch(size=16, width=1/32), so the
discriminator is C2R-C4BR-F-D32R-D1 on 3x16x16 and the decoder D128R-DC2BR-DC3.  Batch norm runs in train
mode (batch statistics): the loss of one image depends on the whole batch, which finite differences see
too.  The discriminator's running statistics change in place on every forward; they do not enter a
train-mode loss, but are restored anyway.  Latents are fixed (the GAN treats z~, z_p as constants).
Tolerance: rel. error max|a-n| / max(|a|+|n|) < 1e-6 per tensor (a random subset of entries of each
large tensor).
"""

import numpy as np
import pytest

from jmvae_cupy.gradcheck import check_gradients_sampled, numerical_gradient, rel_error
from jmvae_cupy.models import ModelError, build_model
from jmvae_cupy.models.architectures import celeba_arch, mnist_arch
from jmvae_cupy.models.gan import VAEGAN, disc_spec, gan_xent
from jmvae_cupy.rng import Rng

TOL = 1e-6
ARCH = celeba_arch(size=16, width=1 / 32, latent=3, w_dim=5)
H = 1e-5
ENTRIES = 6
N = 4


def _setup(variant="kl", weight=0.7):
    model = build_model(ARCH, variant, seed=2, dtype="float64", device="cpu")
    gan = VAEGAN(model, weight=weight, seed=3)
    r = np.random.default_rng(1)
    for d in (model.params, gan.params):  # biases off zero: no ReLU exactly at its kink
        for k, p in d.items():
            if k.endswith(".b"):
                p[...] = 0.3 * r.standard_normal(p.shape)
    x = r.random((N,) + ARCH.x_shape)
    w = np.where(r.random((N, ARCH.w_dim)) < 0.5, -1.0, 1.0)
    return model, gan, x, w, r


def _fd(f, params: dict, grads: dict, r, names=None):
    """{name: rel error} of grads vs central differences of f() over a random subset of each tensor."""
    return check_gradients_sampled(f, {k: params[k] for k in (names or params)}, grads, ENTRIES, r, H)


def _assert_small(errs, what):
    worst = max(errs, key=errs.get)
    assert errs[worst] < TOL, f"{what}: {worst} rel err {errs[worst]:.2e}"


def test_discriminator_is_the_appendix_network():
    assert disc_spec(celeba_arch()) == "C64R-C128BR-C256BR-C256BR-F-D1024R-D1"


@pytest.mark.parametrize("part", ["real", "rec", "prior", "gen_rec", "gen_prior"])
def test_sigmoid_cross_entropy_on_logits(part):
    r = np.random.default_rng(5)
    logits = r.standard_normal(3 * N) * 4.0  # large |l| too: the softplus forms stay exact
    dc = {part: 1.0} if not part.startswith("gen") else {}
    gc = {part[4:]: 1.0} if part.startswith("gen") else {}
    loss_d, loss_g, dl_d, dl_g = gan_xent(logits, N, dc, gc)
    which = 1 if part.startswith("gen") else 0
    num = numerical_gradient(lambda: float(gan_xent(logits, N, dc, gc)[which]), logits)
    assert rel_error(dl_g if which else dl_d, num) < 1e-8
    # the stable forms agree with the textbook -log sigmoid / -log(1 - sigmoid) where those are exact
    l0 = np.array([-3.0, 0.5, 2.0])
    s = 1 / (1 + np.exp(-l0))
    ld, lg, _, _ = gan_xent(np.concatenate([l0, l0, l0]), 3)
    assert np.isclose(ld, np.mean(-np.log(s)) + 2 * np.mean(-np.log(1 - s)))
    assert np.isclose(lg, 2 * np.mean(-np.log(s)))
    big = gan_xent(np.array([800.0, -800.0, 800.0]), 1)
    assert np.isfinite(big[0]) and np.isfinite(big[1]) and np.all(np.isfinite(big[2]))


@pytest.mark.parametrize("part", [None, "real", "rec", "prior"])
def test_discriminator_loss_gradients(part):
    model, gan, x, w, r = _setup()
    xr, xp_ = r.random((N,) + ARCH.x_shape), r.standard_normal((N,) + ARCH.x_shape) * 0.5 + 0.5
    coef = None if part is None else {part: 1.0}
    state0 = {k: v.copy() for k, v in gan.state.items()}
    _, grads, (dxr, dxf, dxp) = gan.disc_loss_and_grads(x, xr, xp_, coef)
    assert set(grads) == set(gan.params) and all(k.startswith("disc.") for k in grads)

    def f():
        for k, v in state0.items():
            gan.state[k][...] = v
        return float(gan.disc_loss_and_grads(x, xr, xp_, coef)[0])

    errs = _fd(f, gan.params, grads, r)
    errs.update(_fd(f, {"x": x, "x_rec": xr, "x_prior": xp_}, {"x": dxr, "x_rec": dxf, "x_prior": dxp}, r))
    _assert_small(errs, f"L_D {part or 'total'}")
    assert any(np.any(g) for g in grads.values())


@pytest.mark.parametrize("variant,part", [("kl", "rec"), ("kl", "prior"), ("kl", None), ("jmvae", None),
                                          ("h", None)])
def test_generator_term_gradients_reach_the_decoder_only(variant, part):
    model, gan, x, w, r = _setup(variant)
    latents = gan.sample_latents(model, x, w, Rng(7))
    gen_coef = None if part is None else {part: 1.0}
    mstate0 = {k: v.copy() for k, v in model.state.items()}
    _, loss_g, terms, disc_grads, grads = gan.loss_and_grads(model, x, w, None, gen_coef=gen_coef, latents=latents)
    assert all(np.array_equal(model.state[k], v) for k, v in mstate0.items()), "GAN passes must not move BN stats"
    assert grads and all(k.startswith("px.") for k in grads), sorted(grads)
    assert set(terms) == {"gan_d", "gan_g", "d_real", "d_fake"}
    dstate0 = {k: v.copy() for k, v in gan.state.items()}

    def f(which=1):
        for k, v in dstate0.items():
            gan.state[k][...] = v
        return float(gan.loss_and_grads(model, x, w, None, gen_coef=gen_coef, latents=latents)[which])

    _assert_small(_fd(f, model.params, grads, r, names=sorted(grads)), f"L_G {variant} {part or 'total'}")
    if part is None:  # the discriminator's gradient from the same pass, w.r.t. its parameters
        _assert_small(_fd(lambda: f(0), gan.params, disc_grads, r), f"L_D in loss_and_grads ({variant})")
        assert np.isclose(loss_g, 0.7 * float(terms["gan_g"]))


def test_trainer_step_adds_the_generator_term(monkeypatch):
    model, gan, x, w, _ = _setup()
    loss, terms, grads = model.loss_and_grads(x, w, Rng(0), beta=0.5)
    before = {k: v.copy() for k, v in grads.items()}
    loss2, terms2, dgrads = gan.step_grads(model, x, w, Rng(1), loss, terms, grads)
    assert "gan_g" in terms2 and "elbo" in terms2 and float(loss2) > float(loss) - 10
    changed = {k for k in grads if not np.array_equal(grads[k], before[k])}
    assert changed and all(k.startswith("px.") for k in changed)
    assert set(dgrads) == set(gan.params)


def test_gan_needs_a_celeba_jmvae_model():
    with pytest.raises(ModelError, match="celeba"):
        VAEGAN(build_model(mnist_arch(hidden=4, latent=2), "kl", device="cpu", dtype="float64"))


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h"])
def test_gan_latents_are_reparameterised_draws_rebuilt_by_hand(variant):
    """z~ = mu + sqrt(var) eps1 with (mu, var) = q(z|x,w) (JMVAE-h: q(z1|x,w)); z_p = eps2 ~ N(0, I)
    (JMVAE-h: z2 = eps2, z_p = z1 = pm(z2) + sqrt(pv(z2)) eps3 ~ p(z1|z2)), the eps drawn in that
    order from the same stream.  Rebuilt here from the model's encoder and prior networks."""
    model, gan, x, w, _ = _setup(variant)
    z_rec, z_prior = gan.sample_latents(model, x, w, Rng(11), train=False)
    mu, var = model.encode(x, w, train=False)
    assert np.abs(np.sqrt(var) - var).max() > 1e-2  # sqrt(var) and var differ here: the test can tell
    r = Rng(11)
    eps1 = r.normal(mu.shape, np.float64)
    np.testing.assert_allclose(z_rec, mu + np.sqrt(var) * eps1, rtol=1e-14, atol=1e-14)
    z2 = r.normal(mu.shape, np.float64)
    if variant == "h":
        pm, pv = model.run("pz1.head", model.run("pz1.net", z2, False)[0], False)[0]
        want = pm + np.sqrt(pv) * r.normal(mu.shape, np.float64)
    else:
        want = z2
    np.testing.assert_allclose(z_prior, want, rtol=1e-14, atol=1e-14)
