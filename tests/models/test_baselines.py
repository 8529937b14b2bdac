"""Finite-difference checks (float64, central differences) of the CVAE and CMMA baselines, both
directions: every term on its own and the weighted total, w.r.t. every parameter tensor.

Same method and tolerance as tests/models/test_objectives.py: fixed noise (the Rng is rebuilt on
every call), relative error max|a-n| / max(|a|+|n|) < 1e-6 per tensor.
"""

import numpy as np
import pytest

from jmvae_cupy.models import CMMA, CVAE, ModelError, build_model
from jmvae_cupy.rng import Rng

from .test_objectives import ARCH, TOL, _batch, _check

CASES = [(v, d, t) for v in ("cvae", "cmma") for d in ("label2image", "image2label")
         for t in ("rec", "kl", None)]


@pytest.mark.parametrize("variant,direction,term", CASES, ids=[f"{v}-{d}-{t or 'total'}" for v, d, t in CASES])
def test_gradient_matches_finite_differences(variant, direction, term):
    model = build_model(ARCH, variant, seed=3, dtype="float64", device="cpu", direction=direction)
    rec = "rec_x" if direction == "label2image" else "rec_w"
    assert model.term_names == (rec, "kl")
    coef = None if term is None else ({rec: 1.0} if term == "rec" else {"kl": -1.0})
    errs, grads = _check(model, coef, beta=0.6)
    worst = max(errs, key=errs.get)
    assert errs[worst] < TOL, f"{variant} {direction} {term}: {worst} rel err {errs[worst]:.2e}"
    assert any(np.any(g) for g in grads.values())
    if term == "kl" and variant == "cmma":  # the learned prior receives gradient from the KL only
        assert np.any(grads["pz.head.W"])
    if term == "rec":
        assert not np.any(grads.get("pz.head.W", np.zeros(1)))


@pytest.mark.parametrize("variant", ["cvae", "cmma"])
@pytest.mark.parametrize("direction", ["label2image", "image2label"])
def test_terms_elbo_and_protocol(variant, direction):
    model = build_model(ARCH, variant, seed=1, dtype="float64", device="cpu", direction=direction)
    x, w = _batch(6)
    loss, terms, _ = model.loss_and_grads(x, w, Rng(5), beta=0.3)
    c = model.coefficients(0.3)
    assert np.isclose(float(loss), -sum(c[k] * float(terms[k]) for k in c))
    rec = model.term_names[0]
    assert np.isclose(float(terms["elbo"]), float(terms[rec]) - float(terms["kl"]))
    assert float(terms["elbo"]) < 0 and float(terms["kl"]) >= 0
    t, cond = model.split(x, w)
    mu, var = model.prior(cond)
    assert mu.shape == (6, ARCH.latent) and np.all(var > 0)
    z = mu + np.sqrt(var)
    assert model.target_loglik(z, t, cond).shape == (6,)
    g = model.generate(cond, Rng(0))
    assert g.shape == t.shape


def test_baselines_build_on_mnist_and_reject_bad_arguments():
    m = build_model("mnist", "cvae", device="cpu", direction="label2image")
    assert isinstance(m, CVAE) and m.params["p.dec.0.W"].shape == (64 + 10, 512)
    m = build_model("mnist", "cmma", device="cpu", direction="image2label")
    assert isinstance(m, CMMA) and m.params["pz.net.0.W"].shape == (784, 512)
    assert m.params["p.dec.4.W"].shape == (512, 10)
    with pytest.raises(ModelError, match="direction"):
        build_model(ARCH, "cvae", direction="sideways")
    with pytest.raises(ModelError, match="baselines"):
        build_model(ARCH, "kl", direction="label2image")


@pytest.mark.parametrize("direction", ["label2image", "image2label"])
def test_cvae_prior_is_the_standard_normal(direction):
    """The CVAE's p(z) is N(0, I) whatever the condition: mean exactly 0, variance exactly 1."""
    for dtype in ("float64", "float32"):
        model = build_model(ARCH, "cvae", seed=1, dtype=dtype, device="cpu", direction=direction)
        x, w = (a.astype(dtype) for a in _batch(5))
        _, cond = model.split(x, w)
        mu, var = model.prior(cond)
        assert mu.shape == var.shape == (5, ARCH.latent) and mu.dtype == var.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(mu, 0.0)
        np.testing.assert_array_equal(var, 1.0)


@pytest.mark.parametrize("variant", ["cvae", "cmma"])
def test_a_learned_variance_image_decoder_matches_finite_differences(variant):
    """A config's gaussian_learned x (the decoder gives a mean and a variance per pixel, 2 D outputs):
    the label -> image baselines' whole loss against central differences."""
    from dataclasses import replace

    from jmvae_cupy.distributions import likelihood

    arch = replace(ARCH, x_lik=likelihood("gaussian_learned", 1.0), dec_x=f"D5R-D5R-D{2 * ARCH.x_dim}")
    model = build_model(arch, variant, seed=4, dtype="float64", device="cpu", direction="label2image")
    errs, grads = _check(model, None, beta=0.6)
    worst = max(errs, key=errs.get)
    assert errs[worst] < TOL, f"{variant}: {worst} rel err {errs[worst]:.2e}"
    assert any(np.any(g) for g in grads.values())
