"""The conditional baselines of the paper's Table 1 (Pandey & Dukkipati 2016), one model per direction.

Notation: t is the *target* modality (the one generated), c the *condition*.  For
``direction="label2image"`` t = x (image), c = w (label); for ``"image2label"`` t = w, c = x.

* CVAE   log p(t|c) >= E_q(z|x,w)[log p(t|z,c)] - KL(q(z|x,w) || N(0, I))       (z independent of c)
* CMMA   log p(t|c) >= E_q(z|x,w)[log p(t|z)]   - KL(q(z|x,w) || p(z|c))        (learned Gaussian prior)

Both use the JMVAE joint encoder q(z|x,w) (components ``qxw.*``, the same trunk and heads as
:class:`jmvae_cupy.models.jmvae.JMVAE`).  The CVAE decoder ``p.dec`` reads the concatenation
(z, c) through one dense input layer (an image condition flattened, (N, C*H*W)); the CMMA decoder
``p.dec`` reads z, and its prior ``pz.net`` / ``pz.head`` reads c (the unimodal-encoder trunk of
the architecture: D512R-D512R on MNIST; on CelebA the conv encoder of q(z|x) for an image, the
dense one of q(z|w) for attributes).  Decoders are the architecture's p(x|z) / p(w|z) networks
(MNIST: D512R-D512R-D784 or -D10; CelebA: the deconv stack, its outputs (N, C, H, W)).

Terms (batch means): ``rec_x`` (label2image) or ``rec_w`` (image2label) = log p(t|z[,c]) at a
reparameterised z ~ q(z|x,w), and ``kl``; ``elbo`` = rec - kl is the conditional bound above.
loss = -(rec - beta kl), with the warm-up weight beta like every JMVAE model.  Gradients are
explicit backward passes through the same layers and kernels (checked by
tests/models/test_baselines.py).
"""

from __future__ import annotations

from ..kernels.gauss_kl import gauss_kl_backward, gauss_kl_forward
from ..kernels.reparam import reparam_backward, reparam_forward
from .base import ModelError, zeros_like_or
from .jmvae import JMVAE

DIRECTIONS = ("label2image", "image2label")


class _Conditional(JMVAE):
    """Shared machinery of CVAE and CMMA (see the module docstring)."""

    def __init__(self, arch, seed: int = 0, dtype="float32", xp=None, alpha: float = 1.0,
                 direction: str = "label2image"):
        if direction not in DIRECTIONS:
            raise ModelError(f"unknown direction {direction!r}: choose label2image or image2label")
        self.direction = direction
        self.rec_key = "rec_x" if direction == "label2image" else "rec_w"
        self.term_names = (self.rec_key, "kl")
        super().__init__(arch, seed=seed, dtype=dtype, xp=xp, alpha=alpha)

    # ------------------------------------------------------------------ modalities
    @property
    def target_lik(self):
        return self.arch.x_lik if self.direction == "label2image" else self.arch.w_lik

    @property
    def target_dim(self) -> int:
        return self.arch.x_dim if self.direction == "label2image" else self.arch.w_dim

    @property
    def cond_dim(self) -> int:
        return self.arch.w_dim if self.direction == "label2image" else self.arch.x_dim

    @property
    def cond_shape(self) -> tuple:
        """The condition of one example: (w_dim,), or the image's x_shape (e.g. (3, H, W))."""
        return (self.arch.w_dim,) if self.direction == "label2image" else tuple(self.arch.x_shape)

    @property
    def target_shape(self) -> tuple:
        return tuple(self.arch.x_shape) if self.direction == "label2image" else (self.arch.w_dim,)

    def _check_decoder(self, dec):
        """The decoder gives the target likelihood's outputs: k per feature (LearnedVarGaussian: 2),
        flat (k D,) or, for an image, (k C, H, W)."""
        k, shape = self.target_lik.outputs_per_feature, self.target_shape
        want = [(k * self.target_dim,)] + ([(k * shape[0], *shape[1:])] if len(shape) > 1 else [])
        if dec.out_shape not in want:
            raise ModelError(f"decoder outputs {dec.out_shape}, expected {' or '.join(map(str, want))}")

    def split(self, x, w):
        """(target, condition) of a batch."""
        return (x, w) if self.direction == "label2image" else (w, x)

    def _dec_spec(self) -> str:
        return self.arch.dec_x if self.direction == "label2image" else self.arch.dec_w

    def _build(self):
        d = self._build_trunk()
        self._register_head("qxw.head", d, self.arch.latent)
        self._build_rest()

    def coefficients(self, beta: float = 1.0) -> dict:
        return {self.rec_key: 1.0, "kl": -beta}

    def elbo_from_terms(self, terms):
        return terms[self.rec_key] - terms["kl"]

    # ------------------------------------------------------------------ the objective
    def loss_and_grads(self, x, w, rng, beta: float = 1.0, coef: dict | None = None, train: bool = True):
        """As :meth:`JMVAE.loss_and_grads`: terms ``rec_x`` or ``rec_w``, ``kl``, ``elbo``."""
        coefs = self._begin(x, w, beta, coef)                          # c_t, the terms' coefficients
        xp, N = self.xp, x.shape[0]
        grads = {}
        t, cond = self.split(x, w)
        # ---- forward
        h, trunk_c = self.trunk_forward(x, w, train)                  # h(x, w)
        (mu, var), head_c = self.run("qxw.head", h, train)            # q(z|x,w)
        eps = rng.normal(mu.shape, self.dtype, xp)
        z = reparam_forward(mu, var, eps)
        out, dec_c = self._decoder_forward(z, cond, train)            # p(t|z,c) or p(t|z)
        ll, lik_c = self.target_lik.loglik(t.reshape(N, -1), out.reshape(N, -1))  # an image's pixels: flat
        kl, prior_c = self._kl_forward(mu, var, cond, train)          # KL(q || p(z)) or KL(q || p(z|c))
        terms_n = {self.rec_key: ll, "kl": kl}
        # ---- backward
        dterm = {k: -coefs[k] / N for k in coefs}                     # d loss / d term_t[n] = -c_t / N
        dz = None
        if dterm[self.rec_key] != 0.0:
            dout = self.target_lik.loglik_backward(xp.full((N,), dterm[self.rec_key], dtype=self.dtype),
                                                   lik_c).reshape(out.shape)
            dz = self._decoder_backward(dout, dec_c, grads)
        dmu, dvar = reparam_backward(zeros_like_or(dz, mu), var, eps)
        if dterm["kl"] != 0.0:
            dmu, dvar = self._kl_backward(xp.full((N,), dterm["kl"], dtype=self.dtype), mu, var, prior_c,
                                          dmu, dvar, grads)
        dh = self.run_back("qxw.head", (dmu, dvar), head_c, grads)
        self.trunk_backward(dh, trunk_c, grads)
        return self._finish(terms_n, coefs, grads)

    # ------------------------------------------------------------------ inference
    def target_loglik(self, z, t, cond, train=False):
        """log p(t|z, c) (CVAE) or log p(t|z) (CMMA), (N,)."""
        out, _ = self._decoder_forward(z, cond, train)
        return self.target_lik.loglik(t.reshape(len(t), -1), out.reshape(len(out), -1))[0]

    def generate(self, cond, rng, sample_z: bool = True):
        """The mean of p(t|z[,c]) with z drawn from the prior p(z) / p(z|c) (its mean if not sample_z)."""
        mu, var = self.prior(cond)
        z = mu + self.xp.sqrt(var) * rng.normal(mu.shape, self.dtype, self.xp) if sample_z else mu
        out = self._decoder_forward(z, cond, False)[0]
        return self.target_lik.mean(out.reshape(len(out), -1)).reshape((len(out),) + self.target_shape)


class CVAE(_Conditional):
    """Conditional VAE: q(z|x,w), p(z) = N(0, I), decoder p(t|z, c) on the concatenation (z, c)."""

    variant = "cvae"

    def _build_rest(self):
        a = self.arch
        dec = self._register_net("p.dec", self._dec_spec(), (a.latent + self.cond_dim,))
        self._check_decoder(dec)

    def _decoder_forward(self, z, cond, train):
        zc = self.xp.concatenate([z, cond.reshape(cond.shape[0], -1)], axis=1)
        return self.run("p.dec", zc, train)

    def _decoder_backward(self, dout, cache, grads):
        return self.run_back("p.dec", dout, cache, grads)[:, : self.arch.latent]  # c is data: no gradient

    def _kl_forward(self, mu, var, cond, train):
        return gauss_kl_forward(mu, var), None

    def _kl_backward(self, dkl, mu, var, cache, dmu, dvar, grads):
        a_m, a_v, _, _ = gauss_kl_backward(dkl, mu, var)
        return dmu + a_m, dvar + a_v

    def prior(self, cond, train=False):
        """p(z) = N(0, I) for every condition: (mu, var), each (N, latent)."""
        shape = (cond.shape[0], self.arch.latent)
        return self.xp.zeros(shape, dtype=self.dtype), self.xp.ones(shape, dtype=self.dtype)


class CMMA(_Conditional):
    """Conditional multimodal autoencoder: q(z|x,w), learned prior p(z|c), decoder p(t|z)."""

    variant = "cmma"

    def _build_rest(self):
        a = self.arch
        spec = a.enc_w_uni if self.direction == "label2image" else a.enc_x_uni
        d = self._register_net("pz.net", spec, self.cond_shape).out_shape[0]
        self._register_head("pz.head", d, a.latent)
        dec = self._register_net("p.dec", self._dec_spec(), (a.latent,))
        self._check_decoder(dec)

    def _decoder_forward(self, z, cond, train):
        return self.run("p.dec", z, train)

    def _decoder_backward(self, dout, cache, grads):
        return self.run_back("p.dec", dout, cache, grads)

    def _prior_forward(self, cond, train):
        hp, pc = self.run("pz.net", cond, train)
        (pm, pv), phc = self.run("pz.head", hp, train)
        return pm, pv, pc, phc

    def _kl_forward(self, mu, var, cond, train):
        pm, pv, pc, phc = self._prior_forward(cond, train)
        return gauss_kl_forward(mu, var, pm, pv), (pm, pv, pc, phc)

    def _kl_backward(self, dkl, mu, var, cache, dmu, dvar, grads):
        pm, pv, pc, phc = cache
        a_m, a_v, d_pm, d_pv = gauss_kl_backward(dkl, mu, var, pm, pv)  # both sides are learned
        dhp = self.run_back("pz.head", (d_pm, d_pv), phc, grads)
        self.run_back("pz.net", dhp, pc, grads)
        return dmu + a_m, dvar + a_v

    def prior(self, cond, train=False):
        """p(z|c): (mu, var), each (N, latent)."""
        pm, pv, _, _ = self._prior_forward(cond, train)
        return pm, pv
