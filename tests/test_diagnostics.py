"""jmvae_cupy/diagnostics.py on tiny models whose answers are known by construction."""

import numpy as np
import pytest

from jmvae_cupy.diagnostics import active_units, diagnose
from jmvae_cupy.models import build_model, mnist_arch
from jmvae_cupy.rng import Rng

ARCH = mnist_arch(hidden=8, latent=3, x_dim=12, w_dim=4, chain=4)


def _data(n=40):
    r = np.random.default_rng(0)
    return (r.random((n, 12)) < 0.5).astype(np.float64), np.eye(4)[r.integers(0, 4, n)]


def test_active_units_count_dimensions_whose_mean_moves():
    r = np.random.default_rng(1)
    mu = np.stack([r.standard_normal(500), 0.05 * r.standard_normal(500), np.full(500, 3.0)], axis=1)
    assert active_units(mu) == 1  # variance 1 (active), 0.0025 and 0 (inactive)


@pytest.mark.parametrize("variant,h_top", [("jmvae", "chain"), ("kl", "chain"), ("h", "chain"), ("h", "z1")])
def test_an_encoder_blind_to_the_label_reads_nothing_from_it(variant, h_top):
    """The joint encoder's w branch zeroed: the label moves no posterior (KL exactly 0), and the ten
    labels at the zero image share one posterior."""
    m = build_model(ARCH, variant, seed=0, dtype="float64", device="cpu", h_top=h_top)
    x, w = _data()
    d = diagnose(m, x, w, Rng(0))
    assert d["encoder"]["label_kl"] > 0 and d["encoder"]["image_kl"] > 0
    assert set(d["zero_image"]["readout"]) == ({"z1", "top"} if variant == "h" else {"z1"})
    assert all(0.0 <= v <= 1.0 for v in d["zero_image"]["readout"].values())
    assert set(d["layers"]) == ({"z1", "z2"} if variant == "h" else {"z"})
    for k in m.params:
        if k.startswith("qxw.w."):
            m.params[k][...] = 0.0
    d = diagnose(m, x, w, Rng(0))
    assert d["encoder"]["label_kl"] == 0.0 and d["zero_image"]["pairwise_kl"] == 0.0
    assert d["encoder"]["image_kl"] > 0


def test_baselines_are_refused():
    m = build_model(ARCH, "cvae", seed=0, dtype="float64", device="cpu")
    with pytest.raises(ValueError, match="JMVAE family"):
        diagnose(m, *_data(), Rng(0))
