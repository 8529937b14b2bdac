"""The VAE-GAN extension of the paper's CelebA experiment (Larsen et al. 2016, as the paper says): a
discriminator D on images, trained against the decoder p(x|z) used as the GAN's generator.

The discriminator is the appendix's ``C64R-C128BR-C256BR-C256BR-F-D1024R-D1`` + sigmoid (the
architecture's q(z|x) trunk ``arch.enc_x_uni`` followed by ``D1``, so narrowed test architectures
narrow it too): logits l(x) (N,), D(x) = sigmoid(l(x)).  Its parameters are keyed ``"disc.<layer>.<name>"``
and live in :class:`VAEGAN` (``params``, ``state``, and its own Adam ``opt``), not in the model.

For a batch of N pairs (x, w), with z~ ~ q(z|x,w) (JMVAE-h: q(z1|x,w)) and z_p ~ p(z) (JMVAE-h:
z2 ~ N(0, I), z1 ~ p(z1|z2)):

* x~  = mean of p(x|z~)  (the reconstruction),  x_p = mean of p(x|z_p)  (a sample from the prior)
* discriminator loss, minimised by the discriminator's parameters only:

      L_D = mean_n softplus(-l(x_n)) + mean_n softplus(l(x~_n)) + mean_n softplus(l(x_p,n))
          = -mean log D(x) - mean log(1 - D(x~)) - mean log(1 - D(x_p))

* generator term (non-saturating), weighted by gamma (``weight``) and added to the model's loss:

      L_G = gamma [mean_n softplus(-l(x~_n)) + mean_n softplus(-l(x_p,n))] = -gamma [mean log D(x~) + mean log D(x_p)]

  Its gradient reaches the decoder ``px`` only: z~ and z_p are treated as constants (the
  encoder and, for JMVAE-h, the prior network get no GAN gradient -- as in Larsen et al., where
  the encoder is trained by the prior and reconstruction terms only).  The discriminator's
  parameters get no gradient from L_G.

Batch norm: the discriminator sees the 3N images [x; x~; x_p] as *one* batch (one forward in
train mode, batch statistics over the 3N images, running statistics updated once per step).  The
GAN's decoder and encoder passes run in train mode too (batch statistics) but on copies of the
model's running statistics, so only the VAE pass (``model.loss_and_grads``) updates them.  x~ is
decoded from fresh noise in its own pass (the model's objective is a separate pass).

softplus(-l) = -log sigmoid(l) and softplus(l) = -log(1 - sigmoid(l)) are computed from the logits
(stable for any |l|); their derivatives are -sigmoid(-l) and sigmoid(l).
Derivation: docs/derivations/gan.md.  Checked by tests/models/test_gan.py and the gradcheck
entries ``gan_xent``, ``gan_disc*``, ``gan_gen*``.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..backend import get_array_module, to_device
from ..checkpoint import CheckpointError, restore_arrays
from ..distributions import FixedVarGaussian
from ..layers.activations import sigmoid, softplus
from ..nets import Net
from ..optim import Adam
from ..rng import Rng
from .base import ModelError, _slice

DISC_TERMS = ("real", "rec", "prior")  # the three parts of L_D
GEN_TERMS = ("rec", "prior")  # the two parts of L_G


def disc_spec(arch) -> str:
    """The discriminator's network string: the q(z|x) trunk of ``arch`` + D1 (CELEBA: the appendix's)."""
    return arch.enc_x_uni + "-D1"


# --------------------------------------------------------------------------------------------
# The sigmoid cross-entropies on logits
# --------------------------------------------------------------------------------------------


def gan_xent(logits, n: int, disc_coef: dict | None = None, gen_coef: dict | None = None):
    """The GAN losses from the discriminator's logits of [x; x~; x_p], (3N,) in that order.

    disc_coef / gen_coef: weights of the parts of L_D ({"real", "rec", "prior"}, default 1 each) and
    of L_G ({"rec", "prior"}, default 1 each; gamma is applied by the caller).
    Returns (L_D, L_G, dl_D (3N,), dl_G (3N,)) with dl_* = d L_* / d logits:
        L_D = c_real mean softplus(-l_real) + c_rec mean softplus(l_rec) + c_prior mean softplus(l_prior)
        L_G = g_rec mean softplus(-l_rec) + g_prior mean softplus(-l_prior)
        d softplus(-l)/dl = -sigmoid(-l),   d softplus(l)/dl = sigmoid(l)     (each mean: 1/N)
    """
    xp_ = get_array_module(logits)
    dc = {k: 1.0 for k in DISC_TERMS} if disc_coef is None else {k: disc_coef.get(k, 0.0) for k in DISC_TERMS}
    gc = {k: 1.0 for k in GEN_TERMS} if gen_coef is None else {k: gen_coef.get(k, 0.0) for k in GEN_TERMS}
    lr, lf, lp = logits[:n], logits[n:2 * n], logits[2 * n:]
    loss_d = (dc["real"] * softplus(-lr).mean() + dc["rec"] * softplus(lf).mean()
              + dc["prior"] * softplus(lp).mean())
    loss_g = gc["rec"] * softplus(-lf).mean() + gc["prior"] * softplus(-lp).mean()
    dl_d = xp_.concatenate([-dc["real"] * sigmoid(-lr), dc["rec"] * sigmoid(lf), dc["prior"] * sigmoid(lp)]) / n
    dl_g = xp_.concatenate([xp_.zeros_like(lr), -gc["rec"] * sigmoid(-lf), -gc["prior"] * sigmoid(-lp)]) / n
    return loss_d, loss_g, dl_d, dl_g


# --------------------------------------------------------------------------------------------
# The discriminator and the GAN step
# --------------------------------------------------------------------------------------------


@contextmanager
def frozen_state(model):
    """Run ``model``'s components in train mode without touching its running statistics: the
    model reads a copy of ``model.state`` inside the block."""
    saved = model.state
    model.state = {k: v.copy() for k, v in saved.items()}
    try:
        yield
    finally:
        model.state = saved


class VAEGAN:
    """The discriminator (``params``/``state`` keyed ``"disc.*"``, its own Adam ``opt``) and the GAN
    terms for a JMVAE / JMVAE-kl / JMVAE-h model with a Gaussian image decoder (CelebA).

    weight: gamma, the weight of the generator term in the model's loss; lr: the discriminator's
    Adam learning rate; seed: its initialisation (stream ``Rng([seed, 5])``).
    """

    prefix = "disc"

    def __init__(self, model, weight: float = 1.0, lr: float = 1e-4, seed: int = 0):
        arch = model.arch
        if not isinstance(arch.x_lik, FixedVarGaussian) or len(arch.x_shape) != 3:
            raise ModelError("the GAN needs image data with a Gaussian decoder (celeba)")
        if model.variant not in ("jmvae", "kl", "h"):
            raise ModelError(f"the GAN applies to jmvae, kl and h, not {model.variant!r}")
        self.weight = float(weight)
        self.dtype, self.xp = model.dtype, model.xp
        self.net = Net(disc_spec(arch), arch.x_shape)
        p, s = self.net.init(Rng([int(seed), 5]), self.dtype, self.xp)
        self.params = {f"{self.prefix}.{k}": v for k, v in p.items()}
        self.state = {f"{self.prefix}.{k}": v for k, v in s.items()}
        self.opt = Adam(lr=lr)

    # ---------------------------------------------------------------- the discriminator
    def forward(self, x, train: bool = True):
        """Logits l(x) (N,) of images x (N, C, H, W); D(x) = sigmoid(l).  Returns (l, cache)."""
        y, cache = self.net.forward(_slice(self.params, self.prefix), _slice(self.state, self.prefix), x, train)
        return y[:, 0], cache

    def backward(self, dl, cache):
        """dl (N,) = d loss / d logits -> (dx (N, C, H, W), {"disc.*": grads}) (the Net's backward)."""
        dx, g = self.net.backward(dl[:, None], cache)
        return dx, {f"{self.prefix}.{k}": v for k, v in g.items()}

    def disc_loss_and_grads(self, x_real, x_rec, x_prior, coef: dict | None = None, train: bool = True):
        """L_D on given images (each (N, C, H, W)) and its gradients: (L_D, {"disc.*": grads},
        (dx_real, dx_rec, dx_prior)).  coef: weights of its parts ("real", "rec", "prior")."""
        n = x_real.shape[0]
        logits, cache = self.forward(self.xp.concatenate([x_real, x_rec, x_prior]), train)
        loss_d, _, dl_d, _ = gan_xent(logits, n, coef, {})
        dx, grads = self.backward(dl_d, cache)
        return loss_d, grads, (dx[:n], dx[n:2 * n], dx[2 * n:])

    # ---------------------------------------------------------------- the GAN step
    def sample_latents(self, model, x, w, rng, train: bool = True):
        """(z~ ~ q(z|x,w), z_p ~ p(z)) for the batch, constants for the GAN (JMVAE-h: z1 of both)."""
        xp = self.xp
        with frozen_state(model):
            mu, var = model.encode(x, w, train=train)
            z_rec = mu + xp.sqrt(var) * rng.normal(mu.shape, self.dtype, xp)
            z_prior = rng.normal(mu.shape, self.dtype, xp)
            if "pz1.net" in model.components:  # JMVAE-h: z1 ~ p(z1|z2), z2 ~ N(0, I)
                (pm, pv), _ = model.run("pz1.head", model.run("pz1.net", z_prior, train)[0], train)
                z_prior = pm + xp.sqrt(pv) * rng.normal(pm.shape, self.dtype, xp)
        return z_rec, z_prior

    def loss_and_grads(self, model, x, w, rng, disc_coef: dict | None = None, gen_coef: dict | None = None,
                       train: bool = True, latents=None):
        """Both GAN losses on a batch and their gradients.

        Returns (L_D, L_G, terms, disc_grads {"disc.*"}, model_grads {"px.*"}) with L_G *including*
        the weight gamma; terms: gan_d (L_D), gan_g (L_G / gamma, the unweighted non-saturating
        term), d_real (mean D(x)), d_fake (mean D over x~ and x_p).  latents: (z~, z_p) to use
        instead of drawing them from ``rng`` (gradient checks).
        """
        xp, N = self.xp, x.shape[0]
        z_rec, z_prior = self.sample_latents(model, x, w, rng, train) if latents is None else latents
        with frozen_state(model):
            x_rec, c_rec = model.run("px", z_rec, train)          # x~ = mean of p(x|z~) (Gaussian: the output)
            x_prior, c_prior = model.run("px", z_prior, train)    # x_p
        logits, dcache = self.forward(xp.concatenate([x, x_rec, x_prior]), train)
        loss_d, loss_g, dl_d, dl_g = gan_xent(logits, N, disc_coef, gen_coef)
        _, disc_grads = self.backward(dl_d, dcache)               # L_D -> discriminator parameters
        dx, _ = self.backward(self.weight * dl_g, dcache)         # gamma L_G -> the fake images
        model_grads: dict = {}
        model.run_back("px", dx[N:2 * N], c_rec, model_grads)    # -> decoder, through x~
        model.run_back("px", dx[2 * N:], c_prior, model_grads)   # -> decoder, through x_p (accumulated)
        d = sigmoid(logits)
        terms = {"gan_d": loss_d, "gan_g": loss_g, "d_real": d[:N].mean(), "d_fake": d[N:].mean()}
        return loss_d, self.weight * loss_g, terms, disc_grads, model_grads

    def step_grads(self, model, x, w, rng, loss, terms, grads):
        """The trainer's GAN step: adds gamma dL_G/dpx into ``grads`` (in place) and returns
        (loss + gamma L_G, terms + the GAN terms, the discriminator's gradients)."""
        _, loss_g, gterms, disc_grads, model_grads = self.loss_and_grads(model, x, w, rng)
        for k, g in model_grads.items():
            grads[k] = grads[k] + g
        return loss + loss_g, {**terms, **gterms}, disc_grads

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_groups(self) -> tuple[dict, dict]:
        """(Adam hyper-parameters and t for the meta JSON, the array groups for checkpoint.save(extra=))."""
        adam = {k: v for k, v in self.opt.state_dict().items() if k not in ("m", "v")}
        return adam, {"disc/params": self.params, "disc/state": self.state,
                      "disc/adam/m": self.opt.m, "disc/adam/v": self.opt.v}

    def load_checkpoint(self, ck: dict, xp) -> None:
        """Restore parameters, running statistics and Adam from a checkpoint made with the GAN."""

        extra = ck.get("extra", {})
        if "disc/params" not in extra or "disc_adam" not in ck["meta"]:
            raise CheckpointError(f"checkpoint {ck.get('path', '')}: no GAN discriminator in it")
        restore_arrays(self.params, extra["disc/params"], xp, "discriminator parameters")
        restore_arrays(self.state, extra.get("disc/state", {}), xp, "discriminator state")
        adam = dict(ck["meta"]["disc_adam"])
        adam["m"] = {k: to_device(v, xp) for k, v in extra.get("disc/adam/m", {}).items()}
        adam["v"] = {k: to_device(v, xp) for k, v in extra.get("disc/adam/v", {}).items()}
        self.opt.load_state_dict(adam)
