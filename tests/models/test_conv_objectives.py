"""Finite-difference checks (float64, central differences) of the CelebA-style conv models' objectives:
conv encoders with batch norm, transposed-conv decoder, fixed-variance Gaussian likelihoods for both
modalities -- each variant (and the CVAE / CMMA baselines in both directions), each term on its own
and the weighted sum.

The architecture is celeba_arch(size=16, width=1/32): C2R-C4BR-F encoder on 3x16x16, a D128R-DC2BR-DC3
decoder, dense widths 16/32.  Batch norm runs in train mode, so the loss of one sample depends on the
whole batch; finite differences see exactly that dependence, which is what the backward must
reproduce.  Fixed noise (the same Rng every call) makes the loss a smooth function of the parameters.
Tolerance: rel. error max|a-n| / max(|a|+|n|) < 1e-6 per tensor (float64 reaches ~1e-9; the margin
covers ReLU units near their kink).  Only a random subset of entries of each large tensor is checked
to keep the test fast.
"""

import numpy as np
import pytest

from jmvae_cupy.gradcheck import check_gradients_sampled
from jmvae_cupy.models import build_model
from jmvae_cupy.models.architectures import celeba_arch
from jmvae_cupy.rng import Rng

TOL = 1e-6
ARCH = celeba_arch(size=16, width=1 / 32, latent=3, w_dim=5)
NOISE_SEED = 7
H = 1e-5
ENTRIES = 6  # entries checked per tensor


def _batch(n=4, seed=0):
    r = np.random.default_rng(seed)
    x = r.random((n,) + ARCH.x_shape)
    w = np.where(r.random((n, ARCH.w_dim)) < 0.5, -1.0, 1.0)
    return x, w


def _check(model, coef, beta):
    r = np.random.default_rng(1)
    for k, p in model.params.items():  # biases off zero: no ReLU exactly at its kink
        if k.endswith(".b"):
            p[...] = 0.3 * r.standard_normal(p.shape)
    x, w = _batch()
    _, _, grads = model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=beta, coef=coef)
    state0 = {k: v.copy() for k, v in model.state.items()}

    def f():
        for k, v in state0.items():  # running statistics are updated in place: restore them
            model.state[k][...] = v
        return float(model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=beta, coef=coef)[0])

    return check_gradients_sampled(f, model.params, grads, ENTRIES, r, H), grads


VARIANTS = [("jmvae", ("rec_x", "rec_w", "kl")),
            ("kl", ("rec_x", "rec_w", "kl", "kl_x", "kl_w")),
            ("h", ("rec_x", "rec_w", "kl_z2", "kl_z1"))]
CASES = [(v, t) for v, ts in VARIANTS for t in ts] + [(v, None) for v, _ in VARIANTS]


@pytest.mark.parametrize("variant,term", CASES, ids=[f"{v}-{t or 'total'}" for v, t in CASES])
def test_conv_model_gradient_matches_finite_differences(variant, term):
    model = build_model(ARCH, variant, seed=2, dtype="float64", device="cpu", alpha=0.7)
    assert any(k.endswith("mean") or "run" in k for k in model.state), "the conv model should have batch norm"
    coef = None if term is None else {term: (1.0 if term.startswith("rec") else -1.0)}
    errs, grads = _check(model, coef, beta=0.6)
    worst = max(errs, key=errs.get)
    assert errs[worst] < TOL, f"{variant} {term}: {worst} rel err {errs[worst]:.2e}"
    assert any(np.any(g) for g in grads.values())


BASELINES = [(v, d, t) for v in ("cvae", "cmma") for d in ("label2image", "image2label") for t in ("rec", "kl", None)]


@pytest.mark.parametrize("variant,direction,term", BASELINES,
                         ids=[f"{v}-{d}-{t or 'total'}" for v, d, t in BASELINES])
def test_conv_baseline_gradient_matches_finite_differences(variant, direction, term):
    """CelebA's CVAE and CMMA: the conv joint encoder, the deconv decoder of an image target
    (outputs (N, 3, H, W)), an image condition flattened into the CVAE's dense decoder or read by
    the CMMA prior's conv encoder."""
    model = build_model(ARCH, variant, seed=2, dtype="float64", device="cpu", direction=direction)
    rec = "rec_x" if direction == "label2image" else "rec_w"
    coef = None if term is None else ({rec: 1.0} if term == "rec" else {"kl": -1.0})
    errs, grads = _check(model, coef, beta=0.6)
    worst = max(errs, key=errs.get)
    assert errs[worst] < TOL, f"{variant} {direction} {term}: {worst} rel err {errs[worst]:.2e}"
    assert any(np.any(g) for g in grads.values())
    if variant == "cmma" and direction == "image2label":
        assert model.params["pz.net.0.W"].ndim == 4  # the prior p(z|x) reads the image with convolutions
        if term != "rec":
            assert np.any(grads["pz.net.0.W"])


def test_a_conv_model_through_winograd_layers_matches_im2col_and_finite_differences(monkeypatch):
    """The CelebA JMVAE-kl family at a width where "auto" runs the 8x8 convolutions and their
    deconvolutions as Winograd F(2x2, 2x2): the loss and every gradient equal the im2col model's
    (float64, to rounding), and finite differences agree term by term."""
    from jmvae_cupy.layers import conv_fast

    arch = celeba_arch(size=16, width=0.25, latent=3, w_dim=5)  # C16R-C32BR: the 8x8 conv has 16 -> 32 channels
    model = build_model(arch, "kl", seed=3, dtype="float64")
    x, w = _batch()
    z = np.random.default_rng(0).standard_normal((len(x), 3))

    def winograd_layers():
        """How many conv layers of the encoder qxw.x and deconv layers of the decoder px run as Winograd."""
        return [sum(conv_fast.is_winograd(c) for c in model.run(name, a)[1])
                for name, a in (("qxw.x", x), ("px", z))]

    assert all(winograd_layers()), f"encoder / decoder Winograd layers: {winograd_layers()}"
    loss_w, _, grads_w = model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=0.7)
    with monkeypatch.context() as m:
        m.setattr(conv_fast, "use_winograd", lambda *a, **k: False)  # the same model, all im2col
        assert winograd_layers() == [0, 0]
        loss_i, _, grads_i = model.loss_and_grads(x, w, Rng(NOISE_SEED), beta=0.7)
    assert abs(float(loss_w) - float(loss_i)) <= 1e-12 * abs(float(loss_i))
    for k in grads_i:
        scale = float(np.abs(grads_i[k]).max()) or 1.0
        assert float(np.abs(grads_w[k] - grads_i[k]).max()) <= 1e-10 * scale, k
    for coef in ({"rec_x": 1.0}, {"kl_x": -1.0}):  # a reconstruction and a KL term through the Winograd layers
        errs, _ = _check(model, coef, 1.0)
        assert max(errs.values()) < TOL, errs
