"""What each layer of a JMVAE-family model carries, and how its joint encoder reads the label:
the measurements behind docs/results.md's account of the missing-modality collapse.

* **Active units** (Burda et al., 2015): a latent dimension d is active when the posterior mean
  moves with the data, Cov_(x,w)[E_q[z_d]] > 0.01.  Reported per stochastic layer (JMVAE: z;
  JMVAE-h: z1 and z2), with the mean KL of the layer (nats per pair): to N(0, I) for z and z2,
  to p(z1|z2) (one draw of z2) for z1.
* **What the joint encoder reads**: the mean KL(q(z|x,w) || q(z|x,w')) over the 9 wrong labels w'
  (how far the label moves the posterior) against KL(q(z|x,w) || q(z|x',w)) with x' another test
  image (how far the image moves it).  When the first is small, the encoder has learnt to read
  the image alone: w is redundant given x in MNIST.
* **The zero image** (the paper's fill for the missing image): the mean pairwise KL between
  q(z|0,w_i) and q(z|0,w_j) over the 10 labels, and the *label read-out*: the fraction of labels
  recovered as argmax p(w|z) from z ~ q(z|0,w) (JMVAE-h: along both paths to z1).  A latent that
  forgot w at the zero image cannot generate an image of w, whatever iterative sampling does.
"""

from __future__ import annotations

import numpy as np

from .backend import asnumpy
from .inference import H_PATHS, joint_latent
from .kernels.gauss_kl import gauss_kl_forward

ACTIVE = 0.01  # Burda et al.'s threshold on Cov[E_q[z_d]]


def _mean(a) -> float:
    return float(np.mean(asnumpy(a).astype(np.float64)))


def active_units(mu) -> int:
    """Dimensions whose posterior mean varies over the data: Var_n[mu_nd] > 0.01.  mu (N, D)."""
    return int(np.sum(asnumpy(mu).astype(np.float64).var(axis=0) > ACTIVE))


def layers(model, x, w, rng) -> dict:
    """{layer: {"active_units", "dims", "kl"}} of q(.|x,w) on the pairs (x, w)."""
    mu, var = model.encode(x, w)
    out = {}
    if model.variant != "h":
        out["z"] = {"active_units": active_units(mu), "dims": int(mu.shape[1]), "kl": _mean(gauss_kl_forward(mu, var))}
        return out
    mu2, var2 = model.encode_z2(x, w, rng)
    z2 = mu2 + model.xp.sqrt(var2) * rng.normal(mu2.shape, mu2.dtype, model.xp)
    pm, pv = model.prior_z1(z2)
    out["z1"] = {"active_units": active_units(mu), "dims": int(mu.shape[1]),
                 "kl": _mean(gauss_kl_forward(mu, var, pm, pv))}
    out["z2"] = {"active_units": active_units(mu2), "dims": int(mu2.shape[1]),
                 "kl": _mean(gauss_kl_forward(mu2, var2))}
    return out


def encoder_reads(model, x, w) -> dict:
    """{"label_kl", "image_kl"}: mean KL(q(z|x,w) || q(z|x,w')) over the wrong labels w' (one-hot
    labels rolled by 1..K-1), and KL(q(z|x,w) || q(z|x',w)) with x' the next test image."""
    mu, var = model.encode(x, w)
    k = w.shape[1]
    label = np.mean([_mean(gauss_kl_forward(mu, var, *model.encode(x, model.xp.roll(w, s, axis=1))))
                     for s in range(1, k)])
    image = _mean(gauss_kl_forward(mu, var, *model.encode(model.xp.roll(x, 1, axis=0), w)))
    return {"label_kl": float(label), "image_kl": image}


def zero_image(model, x_shape, n_labels: int, rng, draws: int = 50) -> dict:
    """The joint encoder at the zero image: {"pairwise_kl", "readout": {path: fraction}}."""
    xp = model.xp
    w = xp.eye(n_labels, dtype=model.dtype)
    x0 = xp.zeros((n_labels,) + tuple(x_shape), dtype=model.dtype)
    mu, var = model.encode(x0, w)
    pair = [_mean(gauss_kl_forward(mu[i:i + 1], var[i:i + 1], mu[j:j + 1], var[j:j + 1]))
            for i in range(n_labels) for j in range(n_labels) if i != j]
    wr, xr = xp.tile(w, (draws, 1)), xp.tile(x0, (draws,) + (1,) * len(x_shape))
    readout = {}
    for path in (H_PATHS if model.variant == "h" else ("z1",)):
        pred = asnumpy(model.decode_w(joint_latent(model, xr, wr, rng, True, path)).argmax(axis=1))
        readout[path] = float(np.mean(pred == np.tile(np.arange(n_labels), draws)))
    return {"pairwise_kl": float(np.mean(pair)), "readout": readout}


def diagnose(model, x, w, rng) -> dict:
    """Every measurement above for one JMVAE-family model on test pairs (x, w) with one-hot w."""
    if model.variant not in ("jmvae", "kl", "h"):
        raise ValueError(f"diagnostics are for the JMVAE family, not {model.variant!r}")
    return {"layers": layers(model, x, w, rng), "encoder": encoder_reads(model, x, w),
            "zero_image": zero_image(model, x.shape[1:], w.shape[1], rng)}
