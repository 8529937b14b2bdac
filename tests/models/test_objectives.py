"""Finite-difference checks (float64, central differences, h = 1e-5) of every JMVAE objective's
gradient w.r.t. every parameter tensor, each term on its own and the weighted sum.

Fixed noise: the loss closure rebuilds the same Rng every call, so the sampled z is a smooth
function of the parameters (the reparameterisation trick) and finite differences apply.
Tolerance: relative error max|a-n| / max(|a|+|n|) < 1e-6 per tensor (float64 central
differences reach ~1e-9 here; the margin covers ReLU units that sit close to their kink).
"""

import numpy as np
import pytest

from jmvae_cupy.gradcheck import numerical_gradient, rel_error
from jmvae_cupy.models import ModelError, build_model, mnist_arch
from jmvae_cupy.rng import Rng

TOL = 1e-6
ARCH = mnist_arch(hidden=5, latent=3, x_dim=7, w_dim=4, chain=4)
NOISE_SEED = 99


def _batch(n=4, seed=0):
    r = np.random.default_rng(seed)
    x = (r.random((n, ARCH.x_dim)) < 0.5).astype(np.float64)
    w = np.eye(ARCH.w_dim)[r.integers(0, ARCH.w_dim, n)]
    return x, w


def _perturb_biases(model, seed=0):
    """Zero-initialised biases put ReLU inputs exactly on the kink (a unit whose inputs are all zero
    gets pre-activation b = 0): move every bias off zero."""
    r = np.random.default_rng(seed)
    for k, p in model.params.items():
        if k.endswith(".b"):
            p[...] = 0.3 * r.standard_normal(p.shape)


def _check(model, coef, beta=1.0):
    _perturb_biases(model)
    x, w = _batch()
    loss, terms, grads = model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=beta, coef=coef)

    def f():
        return float(model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=beta, coef=coef)[0])

    errs = {}
    for name, p in model.params.items():
        num = numerical_gradient(f, p)
        errs[name] = rel_error(grads[name], num)
        if not np.any(num) and not np.any(grads[name]):
            errs[name] = 0.0
    return errs, grads


VARIANTS = [("jmvae", ("rec_x", "rec_w", "kl")),
            ("kl", ("rec_x", "rec_w", "kl", "kl_x", "kl_w")),
            ("h", ("rec_x", "rec_w", "kl_z2", "kl_z1")),
            ("h-z1", ("rec_x", "rec_w", "kl_z2", "kl_z1"))]  # JMVAE-h with the top layer q(z2|z1)


def _build(variant, **kw):
    """build_model for the names above ("h-z1": JMVAE-h, h_top="z1")."""
    if variant == "h-z1":
        return build_model(ARCH, "h", h_top="z1", **kw)
    return build_model(ARCH, variant, **kw)
CASES = [(v, (t,)) for v, ts in VARIANTS for t in ts] + [(v, None) for v, _ in VARIANTS]


@pytest.mark.parametrize("variant,term", CASES, ids=[f"{v}-{t[0] if t else 'total'}" for v, t in CASES])
def test_gradient_matches_finite_differences(variant, term):
    model = _build(variant, seed=3, dtype="float64", device="cpu", alpha=0.7)
    # terms alone with weight -1 or +1 like in the objective; the total uses beta = 0.6 (warm-up)
    coef = None if term is None else {term[0]: (1.0 if term[0].startswith("rec") else -1.0)}
    errs, grads = _check(model, coef, beta=0.6)
    worst = max(errs, key=errs.get)
    assert errs[worst] < TOL, f"{variant} {term}: {worst} rel err {errs[worst]:.2e}"
    touched = [k for k, g in grads.items() if np.any(g)]
    assert touched, "a term with no gradient anywhere cannot be checked"


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h", "h-z1"])
def test_terms_add_up_to_the_loss(variant):
    model = _build(variant, seed=1, dtype="float64", device="cpu", alpha=0.5)
    x, w = _batch(6)
    loss, terms, _ = model.loss_and_grads(x, w, Rng(5), beta=0.3)
    c = model.coefficients(0.3)
    assert np.isclose(float(loss), -sum(c[k] * float(terms[k]) for k in c))
    grads_sum = {k: 0 for k in model.params}
    for t, ct in c.items():
        _, _, g = model.loss_and_grads(x, w, Rng(5), beta=0.3, coef={t: ct})
        for k in grads_sum:
            grads_sum[k] = grads_sum[k] + g[k]
    _, _, g_all = model.loss_and_grads(x, w, Rng(5), beta=0.3)
    for k in model.params:
        np.testing.assert_allclose(grads_sum[k], g_all[k], rtol=1e-10, atol=1e-12)
    assert float(terms["elbo"]) < 0  # a bound on log p(x, w) of discrete data


def test_same_generator_state_gives_same_numbers():
    model = build_model(ARCH, "kl", seed=0, dtype="float32", device="cpu")
    x, w = (a.astype(np.float32) for a in _batch(5))
    a = model.loss_and_grads(x, w, Rng(7))
    b = model.loss_and_grads(x, w, Rng(7))
    c = model.loss_and_grads(x, w, Rng(8))
    assert float(a[0]) == float(b[0]) and float(a[0]) != float(c[0])
    for k in model.params:
        assert np.array_equal(a[2][k], b[2][k])
        assert a[2][k].dtype == np.float32


def test_paper_architectures_build_with_expected_parameter_shapes():
    m = build_model("mnist", "h", seed=0, device="cpu")
    assert m.params["qxw.x.0.W"].shape == (784, 512)
    assert m.params["qz1.head.W"].shape == (1024, 128)  # fused mu / var heads, latent 64
    assert m.params["qz2.net.0.W"].shape == (1024, 64)
    assert m.params["px.4.W"].shape == (512, 784)
    assert m.params["pw.4.W"].shape == (512, 10)
    kl = build_model("mnist", "kl", seed=0, device="cpu", latent=2)
    assert kl.params["qw.head.W"].shape == (512, 4)


def test_bad_arguments_are_rejected():
    with pytest.raises(ModelError, match="unknown variant"):
        build_model("mnist", "vae")
    with pytest.raises(ModelError, match="unknown dataset"):
        build_model("cifar", "kl")
    model = build_model(ARCH, "jmvae", dtype="float64", device="cpu")
    x, w = _batch()
    with pytest.raises(ModelError, match="batch shapes"):
        model.loss_and_grads(x[:, :3], w, Rng(0))
    with pytest.raises(ModelError, match="dtype"):
        model.loss_and_grads(x.astype(np.float32), w.astype(np.float32), Rng(0))


@pytest.mark.parametrize("alpha", [-0.5, float("nan"), float("inf"), "heavy", None])
def test_build_model_rejects_an_alpha_that_leaves_no_bound(alpha):
    """JMVAE-kl subtracts alpha times two KLs: a negative (or non-finite) weight rewards them and
    the objective has no bound (a run with --alpha -1 reached a loss of -7e24).  The variants that
    ignore alpha do not check it (a stored run of theirs loads whatever its config says)."""
    with pytest.raises(ModelError, match="alpha must be a number >= 0"):
        build_model(ARCH, "kl", alpha=alpha)
    assert build_model(ARCH, "kl", alpha=0).alpha == 0.0  # 0 switches the two terms off: allowed
    assert build_model(ARCH, "kl", alpha="0.5").alpha == 0.5  # (a number in a string, as before)
    build_model(ARCH, "jmvae", alpha=-0.5)


# ---------------------------------------------------------------------------- the objective, written out
def _kl_gauss(m1, v1, m2, v2):
    """KL(N(m1, diag v1) || N(m2, diag v2)) per row, in closed form (plain NumPy)."""
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0).sum(axis=1)


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h"])
def test_warm_up_weight_multiplies_every_kl_term(variant):
    """The paper's objectives with the warm-up weight beta on every KL (and alpha on JMVAE-kl's two
    extra ones), written out by hand: beta = 0.3, alpha = 0.5 -> the extra KLs weigh 0.15."""
    beta, alpha = 0.3, 0.5
    expected = {"jmvae": {"rec_x": 1.0, "rec_w": 1.0, "kl": -0.3},
                "kl": {"rec_x": 1.0, "rec_w": 1.0, "kl": -0.3, "kl_x": -0.15, "kl_w": -0.15},
                "h": {"rec_x": 1.0, "rec_w": 1.0, "kl_z2": -0.3, "kl_z1": -0.3}}[variant]
    model = build_model(ARCH, variant, seed=1, dtype="float64", device="cpu", alpha=alpha)
    assert model.coefficients(beta) == pytest.approx(expected, rel=1e-15)
    x, w = _batch(6)
    loss, terms, _ = model.loss_and_grads(x, w, Rng(5), beta=beta)
    t = {k: float(v) for k, v in terms.items()}
    if variant == "jmvae":
        objective = t["rec_x"] + t["rec_w"] - beta * t["kl"]
    elif variant == "kl":
        objective = t["rec_x"] + t["rec_w"] - beta * t["kl"] - beta * alpha * (t["kl_x"] + t["kl_w"])
    else:
        objective = t["rec_x"] + t["rec_w"] - beta * t["kl_z2"] - beta * t["kl_z1"]
    assert np.isclose(float(loss), -objective, rtol=1e-13, atol=0)
    assert all(t[k] > 0 for k in expected if k.startswith("kl"))  # (so a dropped beta would show)


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h"])
def test_kl_terms_are_the_closed_form_of_the_encoders_outputs(variant):
    """Eval mode: each KL term is the batch mean of the closed-form Gaussian KL, in the paper's
    direction: KL(q(z|x,w) || N(0, I)), KL(q(z|x,w) || q(z|x)), KL(q(z|x,w) || q(z|w));
    JMVAE-h: KL(q(z2|x,w) || N(0, I)) and KL(q(z1|x,w) || p(z1|z2)), here with p(z1|z2) made
    independent of z2 (first layer of pz1.net zeroed) so that it has a closed form too."""
    model = build_model(ARCH, variant, seed=2, dtype="float64", device="cpu", alpha=0.7)
    _perturb_biases(model, seed=4)
    x, w = _batch(5)
    L = ARCH.latent
    zeros, ones = np.zeros((5, L)), np.ones((5, L))
    if variant == "h":
        model.params["pz1.net.0.W"][...] = 0.0
    _, terms, _ = model.loss_and_grads(x, w, Rng(3), train=False)
    mu, var = model.encode(x, w)
    want = {}
    if variant == "h":
        h, _ = model.trunk_forward(x, w, False)
        mu2, var2 = model.run("qz2.head", model.run("qz2.net", h, False)[0], False)[0]
        pm, pv = model.run("pz1.head", model.run("pz1.net", np.zeros((5, L)), False)[0], False)[0]
        want["kl_z2"] = _kl_gauss(mu2, var2, zeros, ones)
        want["kl_z1"] = _kl_gauss(mu, var, pm, pv)
        reverse = _kl_gauss(pm, pv, mu, var)
    else:
        want["kl"] = _kl_gauss(mu, var, zeros, ones)
    if variant == "kl":
        mux, varx = model.encode_x(x)
        muw, varw = model.encode_w(w)
        want["kl_x"] = _kl_gauss(mu, var, mux, varx)
        want["kl_w"] = _kl_gauss(mu, var, muw, varw)
        reverse = _kl_gauss(mux, varx, mu, var)
        assert not np.isclose(_kl_gauss(muw, varw, mu, var).mean(), want["kl_w"].mean(), rtol=1e-3)
    for k, v in want.items():
        np.testing.assert_allclose(float(terms[k]), v.mean(), rtol=1e-12, err_msg=k)
    if variant != "jmvae":  # the test can tell the two directions apart on these numbers
        k = "kl_z1" if variant == "h" else "kl_x"
        assert not np.isclose(reverse.mean(), want[k].mean(), rtol=1e-3)


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h"])
def test_reported_elbo_is_the_bound_on_log_p_x_w(variant):
    """terms["elbo"] is the bound of log p(x, w) itself (beta = 1): rec_x + rec_w - KL(q(z|x,w)||p(z))
    -- JMVAE-kl's extra KLs are regularisers of its objective, not part of the bound; JMVAE-h
    subtracts both of its KLs -- whatever beta the step used."""
    model = build_model(ARCH, variant, seed=1, dtype="float64", device="cpu", alpha=0.5)
    x, w = _batch(6)
    for beta in (0.3, 1.0):
        _, terms, _ = model.loss_and_grads(x, w, Rng(5), beta=beta)
        t = {k: float(v) for k, v in terms.items()}
        kl = t["kl_z2"] + t["kl_z1"] if variant == "h" else t["kl"]
        assert np.isclose(t["elbo"], t["rec_x"] + t["rec_w"] - kl, rtol=1e-14, atol=0)
        if variant == "kl":
            assert t["kl_x"] > 0 and t["kl_w"] > 0


def _mlp(model, name, h):
    """A dense ReLU stack by hand from model.params (every layer ReLU but none here ends without)."""
    i = 0
    while f"{name}.{i}.W" in model.params:
        h = np.maximum(h @ model.params[f"{name}.{i}.W"] + model.params[f"{name}.{i}.b"], 0)
        i += 2  # (layer i: dense, i + 1: its ReLU)
    return h


def _head_mean(model, name, h):
    """mu of a fused Gaussian head: the first half of its dense outputs."""
    o = h @ model.params[f"{name}.W"] + model.params[f"{name}.b"]
    return o[:, :o.shape[1] // 2]


def test_h_top_z1_terms_match_a_forward_written_by_hand():
    """JMVAE-h, q(z2|z1): z1 ~ q(z1|x,w), z2 ~ q(z2|z1) with the same noise, and the four terms
    computed here from the parameters: log p(x|z1), log p(w|z1), KL(q(z2|z1)||N(0,I)) and
    log q(z1|x,w) - log p(z1|z2), whose mean over many noise draws equals the Monte Carlo mean of
    log q(z1) - log p(z1|z2) with log q evaluated at the draw (the closed-form entropy is unbiased)."""
    m = _build("h-z1", seed=2, dtype="float64", device="cpu")
    assert m.top == "z1" and m.components["qz2.net"].in_shape == (ARCH.latent,)
    x, w = _batch(3, seed=4)
    _, terms, _ = m.loss_and_grads(x, w, Rng(11), beta=1.0, train=False)
    r = Rng(11)
    h = np.concatenate([_mlp(m, "qxw.x", x), _mlp(m, "qxw.w", w)], axis=1)
    mu1, var1 = m.encode(x, w)
    eps1 = r.normal(mu1.shape, np.float64, np)
    eps2 = r.normal(mu1.shape, np.float64, np)
    np.testing.assert_allclose(_head_mean(m, "qz1.head", h), mu1, rtol=1e-12)
    z1 = mu1 + np.sqrt(var1) * eps1
    g = _mlp(m, "qz2.net", z1)
    mu2, var2 = m.run("qz2.head", g, False)[0]
    z2 = mu2 + np.sqrt(var2) * eps2
    pm, pv = m.prior_z1(z2)
    kl2 = 0.5 * np.sum(mu2 ** 2 + var2 - np.log(var2) - 1, axis=1)
    log_p = -0.5 * np.sum(np.log(2 * np.pi * pv) + (z1 - pm) ** 2 / pv, axis=1)
    neg_h = -0.5 * np.sum(np.log(2 * np.pi * var1) + 1, axis=1)
    np.testing.assert_allclose(float(terms["kl_z2"]), kl2.mean(), rtol=1e-10)
    np.testing.assert_allclose(float(terms["kl_z1"]), (neg_h - log_p).mean(), rtol=1e-10)
    # the closed-form entropy against log q(z1|x,w) at the draws, averaged over many draws
    big = np.random.default_rng(0).standard_normal((20000,) + mu1.shape)
    log_q = -0.5 * np.sum(np.log(2 * np.pi * var1) + big ** 2, axis=2).mean(axis=0)
    np.testing.assert_allclose(log_q, neg_h, atol=0.05)


def test_h_top_choice_is_checked():
    with pytest.raises(ModelError, match="top layer"):
        build_model(ARCH, "h", h_top="z3", device="cpu")
    with pytest.raises(ModelError, match="JMVAE-h"):
        build_model(ARCH, "kl", h_top="z1", device="cpu")
