"""JMVAE (Eq. 2), JMVAE-kl (Eq. 4) and JMVAE-h (Eq. 3) of Suzuki, Nakayama & Matsuo: objectives and
their gradients by explicit backward passes.  Derivations: docs/derivations/objectives.md.

Every model computes, for a batch of N pairs (x, w), the per-sample terms of its bound, their
batch means ``terms``, and ``loss = -sum_t c_t * terms[t]`` with coefficients ``c_t`` set by the
warm-up weight beta (and alpha for JMVAE-kl):

* JMVAE     L = E_q[log p(x|z)] + E_q[log p(w|z)] - beta KL(q(z|x,w) || N(0, I))
* JMVAE-kl  L = L_JMVAE - beta alpha [KL(q(z|x,w) || q(z|x)) + KL(q(z|x,w) || q(z|w))]
* JMVAE-h   L = E_q[log p(x|z1)] + E_q[log p(w|z1)] - beta KL(q(z2|x,w) || N(0, I))
                - beta E_q(z2)[KL(q(z1|x,w) || p(z1|z2))]

Expectations are one-sample reparameterised estimates: z = mu + sqrt(var) * eps with eps drawn
from the ``rng`` argument, so the same generator state gives the same numbers.  ``loss`` is to be
minimised (Adam descends); ``terms["elbo"]`` is the proper lower bound of log p(x, w) (beta = 1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_dtype
from ..distributions import LOG_2PI, gaussian_loglik, gaussian_loglik_backward
from ..kernels.gauss_kl import gauss_kl_backward, gauss_kl_forward
from ..kernels.reparam import reparam_backward, reparam_forward
from ..rng import Rng
from .base import ModelError, Params, zeros_like_or


class TrunkCache(NamedTuple):
    """What :meth:`JMVAE.trunk_forward` keeps for :meth:`JMVAE.trunk_backward`."""

    x: list            # the caches of the x branch ``qxw.x``
    w: list            # the caches of the w branch ``qxw.w``
    joint: list        # the caches of ``qxw.joint``, or None without joint layers
    x_width: int       # D_x, the x branch's share of the concatenation (N, D_x + D_w)


class ReconstructCache(NamedTuple):
    """What :meth:`JMVAE.reconstruct_forward` keeps for :meth:`JMVAE.reconstruct_backward`."""

    px: list           # the caches of the x decoder
    x_lik: object      # the x likelihood's cache
    x_out_shape: tuple  # the x decoder's output shape (N, k*D) or (N, k*C, H, W)
    pw: list           # the caches of the w decoder
    w_lik: object      # the w likelihood's cache


class UnimodalCache(NamedTuple):
    """What JMVAE-kl keeps of one unimodal encoder q(z|x) or q(z|w) for its KL's backward."""

    mu: object         # (N, latent)
    var: object        # (N, latent)
    net: list          # the caches of ``qx.net`` / ``qw.net``
    head: object       # the cache of ``qx.head`` / ``qw.head``


class JMVAE(Params):
    """JMVAE: one joint encoder q(z|x,w), two decoders p(x|z), p(w|z), prior N(0, I).

    Components (parameter-name prefixes): ``qxw.x``, ``qxw.w`` (the two input branches),
    ``qxw.joint`` (after concatenation, if the architecture has one), ``qxw.head`` (mu, var),
    ``px`` (x decoder, outputs logits or mean), ``pw`` (w decoder).
    """

    variant = "jmvae"
    term_names = ("rec_x", "rec_w", "kl")
    # components whose input is data (x or w): their input gradient is never computed
    data_inputs = ("qxw.x", "qxw.w", "qx.net", "qw.net")

    def __init__(self, arch, seed: int = 0, dtype="float32", xp=None, alpha: float = 1.0):
        self.arch = arch
        self.dtype = get_dtype(dtype)
        self.xp = np if xp is None else xp
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.params, self.state, self.components = {}, {}, {}
        self.init_rng = Rng(seed)
        self._build()
        del self.init_rng

    # ------------------------------------------------------------------ construction
    def _build_trunk(self):
        a = self.arch
        bx = self._register_net("qxw.x", a.enc_x, a.x_shape)
        bw = self._register_net("qxw.w", a.enc_w, (a.w_dim,))
        d = bx.out_shape[0] + bw.out_shape[0]
        if a.enc_joint:
            d = self._register_net("qxw.joint", a.enc_joint, (d,)).out_shape[0]
        return d

    def _build_decoders(self):
        a = self.arch
        px = self._register_net("px", a.dec_x, (a.latent,))
        pw = self._register_net("pw", a.dec_w, (a.latent,))
        # k outputs per feature (the likelihood's): flat (k D,), or an image's (k C, H, W)
        kx, kw = a.x_lik.outputs_per_feature, a.w_lik.outputs_per_feature
        want_x = [(kx * a.x_dim,)] + ([(kx * a.x_shape[0], *a.x_shape[1:])] if len(a.x_shape) > 1 else [])
        if px.out_shape not in want_x:
            raise ModelError(f"x decoder {a.dec_x!r} outputs {px.out_shape}, expected {' or '.join(map(str, want_x))}")
        if pw.out_shape != (kw * a.w_dim,):
            raise ModelError(f"w decoder {a.dec_w!r} outputs {pw.out_shape}, expected ({kw * a.w_dim},)")

    def _build(self):
        d = self._build_trunk()
        self._register_head("qxw.head", d, self.arch.latent)
        self._build_decoders()

    # ------------------------------------------------------------------ pieces of the forward pass
    def coefficients(self, beta: float = 1.0) -> dict:
        """objective = sum_t c_t * terms[t]."""
        return {"rec_x": 1.0, "rec_w": 1.0, "kl": -beta}

    def _begin(self, x, w, beta, coef):
        """Check the batch; the term coefficients: the objective's at ``beta``, or ``coef`` alone."""
        self._check_batch(x, w)
        return self.coefficients(beta) if coef is None else {k: coef.get(k, 0.0) for k in self.term_names}

    def _check_batch(self, x, w):
        a = self.arch
        if x.shape[1:] != tuple(a.x_shape) or w.shape[1:] != (a.w_dim,) or x.shape[0] != w.shape[0]:
            raise ModelError(f"batch shapes x {x.shape}, w {w.shape} do not match the model's "
                             f"x (N, {', '.join(map(str, a.x_shape))}) and w (N, {a.w_dim})")
        if x.dtype != self.dtype or w.dtype != self.dtype:
            raise ModelError(f"batch dtype {x.dtype}/{w.dtype} differs from the model's {self.dtype}")

    def trunk_forward(self, x, w, train=True):
        """h(x, w): both branches, concatenated (N, D_x + D_w), then the joint layers if any."""
        hx, cx = self.run("qxw.x", x, train)
        hw, cw = self.run("qxw.w", w, train)
        h = self.xp.concatenate([hx, hw], axis=1)
        cj = None
        if "qxw.joint" in self.components:
            h, cj = self.run("qxw.joint", h, train)
        return h, TrunkCache(cx, cw, cj, hx.shape[1])

    def trunk_backward(self, dh, cache: TrunkCache, grads):
        """dh (N, D_h) back through the joint layers, then split between the two branches (whose
        inputs are data: no input gradient)."""
        if cache.joint is not None:
            dh = self.run_back("qxw.joint", dh, cache.joint, grads)
        self.run_back("qxw.x", dh[:, :cache.x_width], cache.x, grads, need_dx=False)
        self.run_back("qxw.w", dh[:, cache.x_width:], cache.w, grads, need_dx=False)

    def reconstruct_forward(self, z, x, w, train=True):
        """log p(x|z) and log p(w|z), each (N,), with the caches of both decoders."""
        a = self.arch
        ox, cx = self.run("px", z, train)
        lx, lcx = a.x_lik.loglik(x.reshape(x.shape[0], -1), ox.reshape(ox.shape[0], -1))
        ow, cw = self.run("pw", z, train)
        lw, lcw = a.w_lik.loglik(w, ow)
        return lx, lw, ReconstructCache(cx, lcx, ox.shape, cw, lcw)

    def reconstruct_backward(self, dterm_x, dterm_w, cache: ReconstructCache, grads):
        """Upstream d loss / d log p(x|z)_n = dterm_x (one scalar for every n), likewise dterm_w;
        returns dz (N, latent), or None when both are 0."""
        xp, a = self.xp, self.arch
        N = cache.x_out_shape[0]
        dz = None
        if dterm_x != 0.0:
            dox = a.x_lik.loglik_backward(xp.full((N,), dterm_x, dtype=self.dtype), cache.x_lik)
            dz = self.run_back("px", dox.reshape(cache.x_out_shape), cache.px, grads)
        if dterm_w != 0.0:
            dow = a.w_lik.loglik_backward(xp.full((N,), dterm_w, dtype=self.dtype), cache.w_lik)
            dzw = self.run_back("pw", dow, cache.pw, grads)
            dz = dzw if dz is None else dz + dzw
        return dz

    def _finish(self, terms_n: dict, coefs: dict, grads: dict):
        """Batch means of the per-sample terms, the loss -sum_t c_t terms[t], and zero gradients
        for the parameters no term reached."""
        terms = {k: v.mean() for k, v in terms_n.items()}
        loss = -sum(coefs[k] * terms[k] for k in coefs)
        terms["elbo"] = self.elbo_from_terms(terms)
        for k, p in self.params.items():
            if k not in grads:
                grads[k] = self.xp.zeros_like(p)
        return loss, terms, grads

    @staticmethod
    def elbo_from_terms(terms):
        return terms["rec_x"] + terms["rec_w"] - terms["kl"]

    # ------------------------------------------------------------------ the objective
    def loss_and_grads(self, x, w, rng, beta: float = 1.0, coef: dict | None = None, train: bool = True):
        """The training loss on a batch and the gradient of every parameter.

        x: (N, *x_shape), w: (N, w_dim), both of the model's dtype and device; rng: an Rng.
        beta: warm-up weight of the KL terms.  coef: override of the term coefficients
        (``{"kl": -1.0}`` alone checks that term's gradient on its own).
        Returns (loss 0-d array, terms {name: 0-d array}, grads {param name: array}).
        """
        coefs = self._begin(x, w, beta, coef)                          # c_t, the terms' coefficients
        xp, N = self.xp, x.shape[0]
        grads = {}
        # ---- forward
        h, trunk_c = self.trunk_forward(x, w, train)                  # h(x, w)      (N, D_h)
        (mu, var), head_c = self.run("qxw.head", h, train)            # q(z|x,w)     (N, D_z) each
        eps = rng.normal(mu.shape, self.dtype, xp)
        z = reparam_forward(mu, var, eps)                             # z = mu + sqrt(var) eps
        lx, lw, rec_c = self.reconstruct_forward(z, x, w, train)      # log p(x|z), log p(w|z)  (N,)
        terms_n = {"rec_x": lx, "rec_w": lw, "kl": gauss_kl_forward(mu, var)}  # KL(q(z|x,w)||N(0,I))
        extra_c = self._extra_forward(x, w, mu, var, terms_n, train)
        # ---- backward: loss = -sum_t c_t mean_n term_t[n], so d loss / d term_t[n] = -c_t / N
        dterm = {k: -coefs[k] / N for k in coefs}
        dz = self.reconstruct_backward(dterm["rec_x"], dterm["rec_w"], rec_c, grads)   # terms 1, 2: reconstruction
        dmu, dvar = reparam_backward(zeros_like_or(dz, mu), var, eps)         # through z = mu + sqrt(var) eps
        if dterm["kl"] != 0.0:                                                     # term 3: KL to the prior
            dmu_k, dvar_k, _, _ = gauss_kl_backward(xp.full((N,), dterm["kl"], dtype=self.dtype), mu, var)
            dmu, dvar = dmu + dmu_k, dvar + dvar_k
        dmu, dvar = self._extra_backward(dterm, mu, var, extra_c, dmu, dvar, grads)  # JMVAE-kl terms 4, 5
        dh = self.run_back("qxw.head", (dmu, dvar), head_c, grads)
        self.trunk_backward(dh, trunk_c, grads)
        return self._finish(terms_n, coefs, grads)

    def _extra_forward(self, x, w, mu, var, terms_n, train):
        return None

    def _extra_backward(self, dterm, mu, var, cache, dmu, dvar, grads):
        return dmu, dvar

    # ------------------------------------------------------------------ inference
    def encode(self, x, w, train=False):
        """q(z|x,w): (mu, var), each (N, latent)."""
        h, _ = self.trunk_forward(x, w, train)
        return self.run("qxw.head", h, train)[0]

    def decode_x(self, z, train=False):
        """The x decoder's output for z: logits (Bernoulli) or mean (Gaussian), (N, *x_shape)."""
        return self.run("px", z, train)[0]

    def decode_w(self, z, train=False):
        """The w decoder's output for z: logits (Categorical) or mean (Gaussian), (N, w_dim)."""
        return self.run("pw", z, train)[0]


class JMVAEKL(JMVAE):
    """JMVAE-kl: JMVAE plus unimodal encoders q(z|x), q(z|w) pulled towards q(z|x,w) (Eq. 4).

    Extra components: ``qx.net``, ``qx.head``, ``qw.net``, ``qw.head``.  The two extra KLs carry
    the weight alpha (the paper: 1) and the warm-up weight beta like every KL term.
    """

    variant = "kl"
    term_names = ("rec_x", "rec_w", "kl", "kl_x", "kl_w")

    def _build(self):
        super()._build()
        a = self.arch
        dx = self._register_net("qx.net", a.enc_x_uni, a.x_shape).out_shape[0]
        self._register_head("qx.head", dx, a.latent)
        dw = self._register_net("qw.net", a.enc_w_uni, (a.w_dim,)).out_shape[0]
        self._register_head("qw.head", dw, a.latent)

    def coefficients(self, beta: float = 1.0) -> dict:
        return {"rec_x": 1.0, "rec_w": 1.0, "kl": -beta, "kl_x": -beta * self.alpha, "kl_w": -beta * self.alpha}

    def _extra_forward(self, x, w, mu, var, terms_n, train):
        """Terms 4 and 5: KL(q(z|x,w) || q(z|x)) and KL(q(z|x,w) || q(z|w)); their caches by encoder."""
        caches = {}
        for name, key, data in (("qx", "kl_x", x), ("qw", "kl_w", w)):
            h, net_c = self.run(f"{name}.net", data, train)
            (mu_u, var_u), head_c = self.run(f"{name}.head", h, train)     # q(z|x) or q(z|w)
            terms_n[key] = gauss_kl_forward(mu, var, mu_u, var_u)        # KL(q(z|x,w) || q(z|.))
            caches[name] = UnimodalCache(mu_u, var_u, net_c, head_c)
        return caches

    def _extra_backward(self, dterm, mu, var, caches, dmu, dvar, grads):
        """Both KLs' gradients: to (mu, var) of q(z|x,w), added to dmu, dvar, and through each
        unimodal encoder (both sides of each KL are learned)."""
        N = mu.shape[0]
        for name, key in (("qx", "kl_x"), ("qw", "kl_w")):
            if dterm[key] == 0.0:
                continue
            c = caches[name]
            d1m, d1v, d2m, d2v = gauss_kl_backward(self.xp.full((N,), dterm[key], dtype=self.dtype), mu, var,
                                                   c.mu, c.var)
            dmu, dvar = dmu + d1m, dvar + d1v
            dh = self.run_back(f"{name}.head", (d2m, d2v), c.head, grads)
            self.run_back(f"{name}.net", dh, c.net, grads, need_dx=False)
        return dmu, dvar

    def encode_x(self, x, train=False):
        """q(z|x): (mu, var)."""
        return self.run("qx.head", self.run("qx.net", x, train)[0], train)[0]

    def encode_w(self, w, train=False):
        """q(z|w): (mu, var)."""
        return self.run("qw.head", self.run("qw.net", w, train)[0], train)[0]


class JMVAEH(JMVAE):
    """JMVAE-h with L = 2 stochastic layers (Eq. 3).

    q(z1|x,w) reads the joint trunk h; q(z2|x,w) reads the deterministic chain ``qz2.net`` on h;
    the prior is p(z2) = N(0, I) and p(z1|z2) a Gaussian MLP (``pz1.net``, ``pz1.head``); both
    decoders read z1.  Components: ``qxw.*`` (trunk), ``qz1.head``, ``qz2.net``, ``qz2.head``,
    ``pz1.net``, ``pz1.head``, ``px``, ``pw``.
    """

    variant = "h"
    term_names = ("rec_x", "rec_w", "kl_z2", "kl_z1")

    def _build(self):
        a = self.arch
        d = self._build_trunk()
        self._register_head("qz1.head", d, a.latent)
        dc = self._register_net("qz2.net", *self._top_net(d)).out_shape[0]
        self._register_head("qz2.head", dc, a.latent)
        dp = self._register_net("pz1.net", a.prior_z1, (a.latent,)).out_shape[0]
        self._register_head("pz1.head", dp, a.latent)
        self._build_decoders()

    def _top_net(self, d_h: int):
        """(spec, input shape) of ``qz2.net``: the chain on the trunk's h (D_h wide)."""
        return self.arch.h_chain, (d_h,)

    def coefficients(self, beta: float = 1.0) -> dict:
        return {"rec_x": 1.0, "rec_w": 1.0, "kl_z2": -beta, "kl_z1": -beta}

    @staticmethod
    def elbo_from_terms(terms):
        return terms["rec_x"] + terms["rec_w"] - terms["kl_z2"] - terms["kl_z1"]

    def loss_and_grads(self, x, w, rng, beta: float = 1.0, coef: dict | None = None, train: bool = True):
        """As :meth:`JMVAE.loss_and_grads`; terms rec_x, rec_w, kl_z2, kl_z1 (one-sample estimate of
        E_q(z2)[KL(q(z1|x,w) || p(z1|z2))])."""
        coefs = self._begin(x, w, beta, coef)                          # c_t, the terms' coefficients
        xp, N = self.xp, x.shape[0]
        grads = {}
        # ---- forward
        h, trunk_c = self.trunk_forward(x, w, train)                  # h(x, w)
        (mu1, var1), hc1 = self.run("qz1.head", h, train)             # q(z1|x,w)
        g, gc = self.run("qz2.net", h, train)                         # deterministic chain on h
        (mu2, var2), hc2 = self.run("qz2.head", g, train)             # q(z2|x,w)
        eps1 = rng.normal(mu1.shape, self.dtype, xp)
        eps2 = rng.normal(mu2.shape, self.dtype, xp)
        z1 = reparam_forward(mu1, var1, eps1)                         # z1 ~ q(z1|x,w)
        z2 = reparam_forward(mu2, var2, eps2)                         # z2 ~ q(z2|x,w)
        p, pc = self.run("pz1.net", z2, train)
        (pm, pv), phc = self.run("pz1.head", p, train)                # p(z1|z2)
        lx, lw, rec_c = self.reconstruct_forward(z1, x, w, train)
        terms_n = {"rec_x": lx, "rec_w": lw,
                   "kl_z2": gauss_kl_forward(mu2, var2),               # KL(q(z2|x,w) || N(0, I))
                   "kl_z1": gauss_kl_forward(mu1, var1, pm, pv)}       # KL(q(z1|x,w) || p(z1|z2))
        # ---- backward
        dterm = {k: -coefs[k] / N for k in coefs}                     # d loss / d term_t[n] = -c_t / N
        dz1 = self.reconstruct_backward(dterm["rec_x"], dterm["rec_w"], rec_c, grads)     # terms 1, 2
        dmu1, dvar1 = reparam_backward(zeros_like_or(dz1, mu1), var1, eps1)
        dmu2, dvar2 = xp.zeros_like(mu2), xp.zeros_like(var2)
        if dterm["kl_z1"] != 0.0:                                                    # term 4: KL(q(z1)||p(z1|z2))
            a1m, a1v, dpm, dpv = gauss_kl_backward(xp.full((N,), dterm["kl_z1"], dtype=self.dtype), mu1, var1, pm, pv)
            dmu1, dvar1 = dmu1 + a1m, dvar1 + a1v
            dp = self.run_back("pz1.head", (dpm, dpv), phc, grads)
            dz2 = self.run_back("pz1.net", dp, pc, grads)                        # through p(z1|z2) to z2
            dmu2, dvar2 = reparam_backward(dz2, var2, eps2)
        if dterm["kl_z2"] != 0.0:                                                    # term 3: KL(q(z2)||N(0,I))
            a2m, a2v, _, _ = gauss_kl_backward(xp.full((N,), dterm["kl_z2"], dtype=self.dtype), mu2, var2)
            dmu2, dvar2 = dmu2 + a2m, dvar2 + a2v
        dh = self.run_back("qz1.head", (dmu1, dvar1), hc1, grads)
        dg = self.run_back("qz2.head", (dmu2, dvar2), hc2, grads)
        dh = dh + self.run_back("qz2.net", dg, gc, grads)
        self.trunk_backward(dh, trunk_c, grads)
        return self._finish(terms_n, coefs, grads)

    top = "chain"  # q(z2|x,w) reads the deterministic chain on h (JMVAEHTopZ1: z2 ~ q(z2|z1))

    def encode(self, x, w, train=False):
        """q(z1|x,w): (mu, var) — the representation the decoders read."""
        h, _ = self.trunk_forward(x, w, train)
        return self.run("qz1.head", h, train)[0]

    def encode_z2(self, x, w, rng=None, train=False):
        """q(z2|x,w): (mu2, var2), each (N, latent) — the chain on h(x, w); ``rng`` is not used
        (JMVAEHTopZ1 draws z1 with it)."""
        h, _ = self.trunk_forward(x, w, train)
        g, _ = self.run("qz2.net", h, train)
        return self.run("qz2.head", g, train)[0]

    def prior_z1(self, z2, train=False):
        """p(z1|z2): (mu, var), each (N, latent)."""
        p, _ = self.run("pz1.net", z2, train)
        return self.run("pz1.head", p, train)[0]


class JMVAEHTopZ1(JMVAEH):
    """JMVAE-h with the appendix's literal MNIST reading of its top layer: z2 ~ q(z2|z1).

    The appendix lists q(z2|z1) with the MLP "D512R-D512R-D64-D512R-D512R": the joint trunk, a
    64-unit layer, then two more layers.  Read literally, the 64-unit layer is z1 itself (64 is the
    size of z1): z1 ~ q(z1|x,w) is *sampled*, and q(z2|z1) = N(mu2(z1), var2(z1)) reads it through
    ``qz2.net`` = the chain after its bottleneck ("D512R-D512R").  :class:`JMVAEH` (``top =
    "chain"``) instead feeds the deterministic chain on h, as Fig. 2(b) and the text's
    q(z1, z2|x,w) = q(z1|x,w) q(z2|x,w) say.

    With q(z1, z2|x,w) = q(z1|x,w) q(z2|z1) the bound of Eq. 3 becomes (one sample z1, z2)

        L = log p(x|z1) + log p(w|z1) - KL(q(z2|z1) || N(0, I)) - [log q(z1|x,w) - log p(z1|z2)]

    ``kl_z1`` = log q(z1|x,w) - log p(z1|z2) at the drawn z1, z2, with E_q[log q(z1|x,w)] taken in
    closed form as -H[q(z1|x,w)] = -1/2 sum_d (log 2 pi var1 + 1).  (In the chain reading z2 does not
    depend on z1 and E_q(z2)[KL(q(z1|x,w) || p(z1|z2))] is closed form given z2; here z2 is drawn from
    z1, so only the entropy part is.)  Derivation:
    docs/derivations/objectives.md, "JMVAE-h, top layer q(z2|z1)".
    """

    top = "z1"

    def _top_net(self, d_h: int):
        """(spec, input shape) of ``qz2.net``: the chain after its bottleneck, on z1 (latent wide)."""
        return top_z1_net(self.arch.h_chain), (self.arch.latent,)

    def loss_and_grads(self, x, w, rng, beta: float = 1.0, coef: dict | None = None, train: bool = True):
        """As :meth:`JMVAE.loss_and_grads`; terms rec_x, rec_w, kl_z2 = KL(q(z2|z1) || N(0, I)),
        kl_z1 = -H[q(z1|x,w)] - log p(z1|z2) (one sample)."""
        coefs = self._begin(x, w, beta, coef)                          # c_t, the terms' coefficients
        xp, N = self.xp, x.shape[0]
        grads = {}
        # ---- forward
        h, trunk_c = self.trunk_forward(x, w, train)                  # h(x, w)
        (mu1, var1), hc1 = self.run("qz1.head", h, train)             # q(z1|x,w)
        eps1 = rng.normal(mu1.shape, self.dtype, xp)
        eps2 = rng.normal(mu1.shape, self.dtype, xp)
        z1 = reparam_forward(mu1, var1, eps1)                         # z1 ~ q(z1|x,w)
        g, gc = self.run("qz2.net", z1, train)
        (mu2, var2), hc2 = self.run("qz2.head", g, train)             # q(z2|z1)
        z2 = reparam_forward(mu2, var2, eps2)                         # z2 ~ q(z2|z1)
        p, pc = self.run("pz1.net", z2, train)
        (pm, pv), phc = self.run("pz1.head", p, train)                # p(z1|z2)
        lx, lw, rec_c = self.reconstruct_forward(z1, x, w, train)
        lp, lpc = gaussian_loglik(z1, pm, pv)                         # log p(z1|z2)   (N,)
        neg_entropy = -0.5 * (LOG_2PI + xp.log(var1) + 1.0).sum(axis=1)  # -H[q(z1|x,w)]  (N,)
        terms_n = {"rec_x": lx, "rec_w": lw,
                   "kl_z2": gauss_kl_forward(mu2, var2),               # KL(q(z2|z1) || N(0, I))
                   "kl_z1": neg_entropy - lp}                          # log q(z1) - log p(z1|z2)
        # ---- backward
        dterm = {k: -coefs[k] / N for k in coefs}                     # d loss / d term_t[n] = -c_t / N
        dz1 = self.reconstruct_backward(dterm["rec_x"], dterm["rec_w"], rec_c, grads)     # terms 1, 2
        dz1 = zeros_like_or(dz1, mu1)
        dvar1 = xp.zeros_like(var1)
        dmu2, dvar2 = xp.zeros_like(mu2), xp.zeros_like(var2)
        if dterm["kl_z1"] != 0.0:                            # term 4: -H[q(z1)] - log p(z1|z2)
            dvar1 = dvar1 + dterm["kl_z1"] * (-0.5 / var1)                           # d(-H)/d var1 = -1/(2 var1)
            dz1_p, dpm, dpv = gaussian_loglik_backward(xp.full((N,), -dterm["kl_z1"], dtype=self.dtype), lpc)
            dz1 = dz1 + dz1_p
            dp = self.run_back("pz1.head", (dpm, dpv), phc, grads)
            dz2 = self.run_back("pz1.net", dp, pc, grads)                        # through p(z1|z2) to z2
            dmu2, dvar2 = reparam_backward(dz2, var2, eps2)
        if dterm["kl_z2"] != 0.0:                            # term 3: KL(q(z2|z1) || N(0, I))
            a2m, a2v, _, _ = gauss_kl_backward(xp.full((N,), dterm["kl_z2"], dtype=self.dtype), mu2, var2)
            dmu2, dvar2 = dmu2 + a2m, dvar2 + a2v
        if dterm["kl_z1"] != 0.0 or dterm["kl_z2"] != 0.0:       # q(z2|z1) reads z1: its gradient joins z1's
            dg = self.run_back("qz2.head", (dmu2, dvar2), hc2, grads)
            dz1 = dz1 + self.run_back("qz2.net", dg, gc, grads)
        dmu1, dvar1_r = reparam_backward(dz1, var1, eps1)                        # z1 = mu1 + sqrt(var1) eps1
        dh = self.run_back("qz1.head", (dmu1, dvar1 + dvar1_r), hc1, grads)
        self.trunk_backward(dh, trunk_c, grads)
        return self._finish(terms_n, coefs, grads)

    def encode_z2(self, x, w, rng=None, train=False):
        """q(z2|z1) at one draw z1 ~ q(z1|x,w) (``rng``; its mean if rng is None): (mu2, var2)."""
        mu1, var1 = self.encode(x, w, train)
        z1 = mu1 if rng is None else mu1 + self.xp.sqrt(var1) * rng.normal(mu1.shape, mu1.dtype, self.xp)
        g, _ = self.run("qz2.net", z1, train)
        return self.run("qz2.head", g, train)[0]


def top_z1_net(h_chain: str) -> str:
    """q(z2|z1)'s MLP in the literal reading: the chain "D64-D512R-D512R" after its bottleneck
    D64, which is z1 itself ("D512R-D512R")."""
    first, _, rest = h_chain.partition("-")
    if not rest:
        raise ModelError(f"the JMVAE-h chain {h_chain!r} has no layers after its bottleneck {first!r}")
    return rest
