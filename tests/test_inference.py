"""Generation across modalities (jmvae_cupy/inference.py): JMVAE-h's two paths to z1 against a
forward written here by hand from the model's parameters, on a tiny model, with the same noise."""

import numpy as np
import pytest

from jmvae_cupy.distributions import VAR_FLOOR
from jmvae_cupy.inference import joint_latent, w_from_x, x_from_w
from jmvae_cupy.models import build_model, mnist_arch
from jmvae_cupy.rng import Rng

ARCH = mnist_arch(hidden=6, latent=3, x_dim=9, w_dim=4, chain=5)


def _relu_stack(model, name, h):
    """A component of dense and ReLU layers, by hand: layer i is dense where params "{name}.{i}.W" exist."""
    for i, layer in enumerate(model.components[name].layers):
        if f"{name}.{i}.W" in model.params:
            h = h @ model.params[f"{name}.{i}.W"] + model.params[f"{name}.{i}.b"]
        else:
            assert type(layer).__name__ == "ReLU"
            h = np.maximum(h, 0)
    return h


def _gauss_head(model, name, h):
    o = h @ model.params[f"{name}.W"] + model.params[f"{name}.b"]
    d = o.shape[1] // 2
    return o[:, :d], np.logaddexp(0, o[:, d:]) + VAR_FLOOR  # var = softplus(a) + a floor


def _model(top):
    m = build_model(ARCH, "h", seed=5, dtype="float64", device="cpu", h_top=top)
    r = np.random.default_rng(0)
    for k, p in m.params.items():  # biases off zero, so that every ReLU passes something
        if k.endswith(".b"):
            p[...] = 0.3 * r.standard_normal(p.shape)
    return m


def _batch(n=5):
    r = np.random.default_rng(1)
    return (r.random((n, ARCH.x_dim)) < 0.5).astype(np.float64), np.eye(ARCH.w_dim)[r.integers(0, ARCH.w_dim, n)]


def _by_hand(m, x, w, path, rng):
    h = np.concatenate([_relu_stack(m, "qxw.x", x), _relu_stack(m, "qxw.w", w)], axis=1)
    mu1, var1 = _gauss_head(m, "qz1.head", h)
    if path == "z1":
        return mu1 + np.sqrt(var1) * rng.normal(mu1.shape, np.float64)
    if m.top == "chain":  # q(z2|x,w) on the deterministic chain on h
        mu2, var2 = _gauss_head(m, "qz2.head", _relu_stack(m, "qz2.net", h))
    else:                 # q(z2|z1) at a drawn z1
        z1 = mu1 + np.sqrt(var1) * rng.normal(mu1.shape, np.float64)
        mu2, var2 = _gauss_head(m, "qz2.head", _relu_stack(m, "qz2.net", z1))
    z2 = mu2 + np.sqrt(var2) * rng.normal(mu2.shape, np.float64)
    pm, pv = _gauss_head(m, "pz1.head", _relu_stack(m, "pz1.net", z2))   # p(z1|z2)
    return pm + np.sqrt(pv) * rng.normal(pm.shape, np.float64)


@pytest.mark.parametrize("top", ["chain", "z1"])
@pytest.mark.parametrize("path", ["z1", "top"])
def test_jmvae_h_paths_match_a_forward_by_hand(top, path):
    m = _model(top)
    x, w = _batch()
    got = joint_latent(m, x, w, Rng(3), sample=True, path=path)
    np.testing.assert_allclose(got, _by_hand(m, x, w, path, Rng(3)), rtol=1e-10, atol=1e-12)


def test_the_two_paths_differ_and_generation_uses_the_chosen_one():
    m = _model("chain")
    x, w = _batch()
    a = joint_latent(m, x, w, Rng(3), path="z1")
    b = joint_latent(m, x, w, Rng(3), path="top")
    assert not np.allclose(a, b)
    # K = 0: x from w decodes the latent of the zero-filled x by the chosen path
    for path in ("z1", "top"):
        z = _by_hand(m, np.zeros_like(x), w, path, Rng(4))
        want = 1.0 / (1.0 + np.exp(-m.decode_x(z)))
        np.testing.assert_allclose(x_from_w(m, w, Rng(4), iterations=0, path=path), want, rtol=1e-10)
    # w from x: the chain holds K + 1 means, each a probability vector
    mean, chain = w_from_x(m, x, Rng(2), iterations=3, path="top", return_chain=True)
    assert len(chain) == 4 and chain[-1] is mean
    np.testing.assert_allclose(mean.sum(axis=1), 1.0)


def test_path_checks():
    m = build_model(ARCH, "jmvae", seed=0, dtype="float64", device="cpu")
    x, w = _batch()
    with pytest.raises(ValueError, match="top layer"):
        joint_latent(m, x, w, Rng(0), path="top")
    with pytest.raises(ValueError, match="unknown"):
        joint_latent(m, x, w, Rng(0), path="z3")


@pytest.mark.parametrize("variant", ["jmvae", "h"])
def test_prior_init_draws_the_missing_image_from_the_models_own_marginal(variant):
    """init "prior": x ~ p(x) = INT p(z) p(x|z) dz (JMVAE-h: z2 ~ N(0, I), z1 ~ p(z1|z2)), by hand with
    the same stream; zeros and noise as before; an unknown init is refused."""
    from jmvae_cupy.inference import initial_fill

    m = build_model(ARCH, variant, seed=5, dtype="float64", device="cpu")
    got = initial_fill(m, "x", 6, Rng(8), "prior")
    r = Rng(8)
    z = r.normal((6, ARCH.latent), np.float64)
    if variant == "h":
        pm, pv = m.prior_z1(z)
        z = pm + np.sqrt(pv) * r.normal(pm.shape, np.float64)
    p = 1.0 / (1.0 + np.exp(-m.decode_x(z)))
    np.testing.assert_array_equal(got, (r.uniform(p.shape, np.float64) < p).astype(np.float64))
    w = initial_fill(m, "w", 6, Rng(8), "prior")
    assert w.shape == (6, ARCH.w_dim) and np.all(w.sum(axis=1) == 1)
    assert not np.any(initial_fill(m, "x", 2, Rng(0), "zeros"))
    with pytest.raises(ValueError, match="unknown init"):
        initial_fill(m, "x", 2, Rng(0), "ones")
