"""Test log-likelihood estimators (the paper's Evaluation method, Eq. 5, Eq. 6, and tighter
importance-weighted ones).  Every number carries the name of the estimator that produced it.

Notation: t is the modality to generate (the *target*: x for label->image, w for image->label),
c the one given (the *condition*).  All estimators are Monte Carlo; what each one bounds:

``eq5-unimodal`` (JMVAE-kl), ``eq5-iterK`` (JMVAE)
    Eq. 5:  (1/N) sum_l log p(t|z_l),  z_l ~ q(z|c)  (N = ``samples``, paper: 10).  JMVAE-kl has
    q(z|w) / q(z|x).  JMVAE only has the joint encoder: the missing t is filled with zeros and
    completed by K steps of the paper's iterative sampling (z ~ q(z|t^, c), t^ ~ p(t|z)), then
    q(z|t^_K, c) plays q(z|c).  By Jensen, E[eq5] = E_q[log p(t|z)] <= log INT q(z|c) p(t|z) dz:
    a lower bound on the log-likelihood of the *encoder-decoder predictive*
    INT q(z|c) p(t|z) dz, which is what the paper evaluates.  It is *not* a bound on the joint
    model's exact log p(t|c) = log INT p(z|c) p(t|z) dz, because q(z|c) is not p(z|c) (see
    tests/test_estimators.py: with a point-mass q it can exceed the exact value).
``eq6-iterK`` (JMVAE-h), the paper's appendix, Eq. 6
    log p(t|c) ~ log INT q(z2|c) INT p(z1|z2) p(t|z1) dz1 dz2
              >= INT q(z2|c) INT p(z1|z2) log p(t|z1) dz1 dz2   (Jensen twice)
              ~  (1/N) sum_l (1/N) sum_k log p(t|z1_lk),  z2_l ~ q(z2|c),  z1_lk ~ p(z1|z2_l).
    q(z2|c) is q(z2|t^_K, c) after K steps of iterative sampling (as for JMVAE; each step reaches
    z1 through q(z1|t^, c), or through the top layer, z2 then p(z1|z2), in ``eq6-iterK-top``); z1 is drawn from
    the *prior* p(z1|z2), not from q(z1|.).  With the top layer q(z2|z1) (``h_top="z1"``) each
    estimate draws z1 ~ q(z1|t^_K, c) once and then uses q(z2|z1) as q(z2|c).  N x N = 100 decoder
    evaluations per example.  The second Jensen step makes it looser than Eq. 5 (the paper says so: JMVAE-h may be
    underestimated).  A lower bound on log INT q(z2|c) p(t|z2) dz2, not on log p(t|c).
``eq5-prior`` (CVAE, CMMA)
    (1/N) sum_l log p(t|z_l, c),  z_l ~ p(z) (CVAE) or p(z|c) (CMMA): the model's own prior,
    so by Jensen a true lower bound on the model's exact log p(t|c).
``iwS`` (CVAE, CMMA)
    log (1/S) sum_s p(t|z_s, c) p(z_s|c) / q(z_s|x, w),  z_s ~ q(z|x,w): the importance-weighted
    bound of Burda et al. (2015), a lower bound on log p(t|c) in expectation for every S,
    increasing in S, equal to log p(t|c) as S -> infinity.
``iwS-joint`` (JMVAE family)
    log (1/S) sum_s p(x|z_s) p(w|z_s) p(z_s) / q(z_s|x,w): the same bound on the joint
    log p(x, w) (JMVAE-h: z = (z1, z2), p(z) = p(z2) p(z1|z2), q = q(z1|x,w) q(z2|x,w), or
    q(z1|x,w) q(z2|z1) with the top layer q(z2|z1)).
``snisS`` (JMVAE family, conditionals)
    log p(t|c) = log p(x,w) - log p(c), both by importance sampling with the *same* S draws
    z_s ~ q(z|x,w) (a valid proposal for p(c) = E_q[p(c|z) p(z)/q(z|x,w)] too: any density
    over z will do):  log sum_s softmax_s(log p(c|z_s) + log p(z_s) - log q(z_s)) p(t|z_s),
    i.e. self-normalised importance sampling of E_{p(z|c)}[p(t|z)].  It targets the joint
    model's exact conditional and is consistent (-> log p(t|c) as S -> infinity), but it is a
    ratio of two downward-biased estimates and so *not* a bound at finite S: its bias has
    either sign (the tests bound it on a model with a closed form).  For image->label it is
    <= 0, as a probability of a label must be.  Caveat, measured: for label->image the draws
    from q(z|x,w) cover p(z|w) poorly, log p(w) comes out far too low at small S and snisS far
    too high (tens of nats on MNIST at S = 10); trust it for image->label only, or at large S.
    A *valid* (loose) lower bound on log p(x|w) for a discrete w is iwS-joint itself:
    log p(x|w) = log p(x,w) - log p(w) >= log p(x,w), since p(w) <= 1 (slack -log p(w) ~ log 10).

Generic pieces (:func:`eq5_bound`, :func:`eq6_bound`, :func:`iw_bound`, :func:`snis_conditional`)
take callables, so the tests check them on a linear-Gaussian model whose likelihood is exact.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import asnumpy, get_array_module
from .distributions import gaussian_loglik, logsumexp, standard_normal_loglik
from .inference import initial_fill, joint_latent

DIRECTIONS = ("label2image", "image2label")


class EstimatorError(ValueError):
    """An estimator asked of a model or direction that does not support it."""


# ---------------------------------------------------------------------------------------- generic
def _draw(mu, var, rng):

    xp = get_array_module(mu)
    return mu + xp.sqrt(var) * rng.normal(mu.shape, mu.dtype, xp)


def iw_average(log_w):
    """log (1/S) sum_s exp(log_w[s]) over axis 0 of a (S, B) array, max-shifted."""
    return logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def eq5_bound(mu, var, loglik, rng, samples: int):
    """(1/N) sum_l loglik(z_l), z_l ~ N(mu, diag var): Eq. 5.  mu, var (B, D); loglik: z -> (B,)."""
    return sum(loglik(_draw(mu, var, rng)) for _ in range(samples)) / samples


def eq6_bound(mu2, var2, prior_z1, loglik, rng, samples: int):
    """Eq. 6: (1/N^2) sum_l sum_k loglik(z1_lk), z2_l ~ N(mu2, var2), z1_lk ~ p(z1|z2_l) = prior_z1(z2_l)."""
    total = 0.0
    for _ in range(samples):
        pm, pv = prior_z1(_draw(mu2, var2, rng))
        total = total + eq5_bound(pm, pv, loglik, rng, samples)
    return total / samples


def _log_weights(mu, var, log_parts, rng, samples: int):
    """S draws z_s ~ q = N(mu, var); per draw the parts returned by ``log_parts(z)`` (a tuple of
    (B,) arrays) with log q(z_s) subtracted from the last one.  Returns a tuple of (S, B) arrays."""

    xp = get_array_module(mu)
    rows = []
    for _ in range(samples):
        z = _draw(mu, var, rng)
        parts = list(log_parts(z))
        parts[-1] = parts[-1] - gaussian_loglik(z, mu, var)[0]
        rows.append(parts)
    return tuple(xp.stack([r[i] for r in rows]) for i in range(len(rows[0])))


def iw_bound(mu, var, log_joint, rng, samples: int):
    """log (1/S) sum_s p(data, z_s) / q(z_s), z_s ~ q = N(mu, diag var); log_joint: z -> (B,)."""
    (lw,) = _log_weights(mu, var, lambda z: (log_joint(z),), rng, samples)
    return iw_average(lw)


def snis_conditional(mu, var, log_target, log_rest, rng, samples: int):
    """log p(t|c) ~ log sum_s softmax_s(log_rest(z_s) - log q(z_s)) exp(log_target(z_s)), z_s ~ q.

    log_target: z -> log p(t|z) (B,);  log_rest: z -> log p(c|z) + log p(z) (B,).  Equals
    iw(log p(t, c)) - iw(log p(c)) computed from the same draws (consistent; not a bound).
    """
    lt, lr = _log_weights(mu, var, lambda z: (log_target(z), log_rest(z)), rng, samples)
    return logsumexp(lt + lr, axis=0) - logsumexp(lr, axis=0)


# ---------------------------------------------------------------------------------------- models
def _split(x, w, direction):
    if direction not in DIRECTIONS:
        raise EstimatorError(f"unknown direction {direction!r}: choose label2image or image2label")
    return (x, w) if direction == "label2image" else (w, x)


def _target_loglik(model, t, direction):
    """z -> log p(t|z) for the JMVAE family (decoders read z, or z1 in JMVAE-h)."""
    a = model.arch
    if direction == "label2image":
        flat = t.reshape(t.shape[0], -1)  # images (N, 784) or (N, 3, H, W): likelihoods sum over all pixels
        return lambda z: a.x_lik.loglik(flat, model.decode_x(z).reshape(t.shape[0], -1))[0]
    return lambda z: a.w_lik.loglik(t, model.decode_w(z))[0]


def complete(model, x, w, direction, rng, iterations: int, init: str = "zeros", path: str = "z1"):
    """The paper's iterative sampling for a model with only the joint encoder: the target
    modality is filled with zeros (``init="zeros"``), uniform noise, or a draw from the model's p(t)
    (``"prior"``, inference.initial_fill), then K times
    z ~ q(z|t^, c), t^ ~ p(t|z).  Returns the batch (x, w) with the target replaced by t^_K.
    JMVAE-h: ``path`` "z1" or "top" (inference.joint_latent) is how each step reaches z1."""
    a = model.arch
    t, _ = _split(x, w, direction)
    try:
        th = initial_fill(model, "x" if direction == "label2image" else "w", t.shape[0], rng, init)
    except ValueError as e:
        raise EstimatorError(str(e)) from None
    for _ in range(iterations):
        xx, ww = (th, w) if direction == "label2image" else (x, th)
        z = joint_latent(model, xx, ww, rng, True, path)
        if direction == "label2image":
            th = a.x_lik.sample(model.decode_x(z).reshape(t.shape[0], -1), rng).reshape(t.shape)
        else:
            th = a.w_lik.sample(model.decode_w(z), rng)
    return (th, w) if direction == "label2image" else (x, th)


def paper_estimator_name(model, iterations: int = 10, path: str = "z1") -> str:
    """eq5-unimodal, eq5-iterK, eq6-iterK (JMVAE-h, completion through z1), eq6-iterK-top (through
    the top layer), eq5-prior."""
    v = model.variant
    return {"kl": "eq5-unimodal", "jmvae": f"eq5-iter{iterations}",
            "h": f"eq6-iter{iterations}" + ("-top" if path == "top" else ""),
            "cvae": "eq5-prior", "cmma": "eq5-prior"}[v]


def paper_estimate(model, x, w, direction, rng, samples: int = 10, iterations: int = 10, path: str = "z1",
                   init: str = "zeros"):
    """The paper's conditional estimator for ``model`` (see the module docstring): (name, (B,) array).
    path: how JMVAE-h's completion steps reach z1 ("z1" or "top", :func:`complete`)."""
    v = model.variant
    t, c = _split(x, w, direction)
    name = paper_estimator_name(model, iterations, path if v == "h" else "z1")
    if v in ("cvae", "cmma"):
        if direction != model.direction:
            raise EstimatorError(f"this {v} model is trained for {model.direction}, not {direction}")
        mu, var = model.prior(c)
        return name, eq5_bound(mu, var, lambda z: model.target_loglik(z, t, c), rng, samples)
    ll = _target_loglik(model, t, direction)
    if v == "kl":
        mu, var = model.encode_w(w) if direction == "label2image" else model.encode_x(x)
        return name, eq5_bound(mu, var, ll, rng, samples)
    xc, wc = complete(model, x, w, direction, rng, iterations, init, path=path if v == "h" else "z1")
    if v == "jmvae":
        return name, eq5_bound(*model.encode(xc, wc), ll, rng, samples)
    if v == "h":
        return name, eq6_bound(*model.encode_z2(xc, wc, rng), model.prior_z1, ll, rng, samples)
    raise EstimatorError(f"no estimator for variant {v!r}")


def _jmvae_parts(model, x, w):
    """The proposal q(z|x,w) = N(mu, var) and z -> (log p(x|z), log p(w|z), log p(z)) for the
    JMVAE family.  JMVAE-h: z is the concatenation (z1, z2) of its two layers."""
    a = model.arch
    lx = _target_loglik(model, x, "label2image")
    lw = _target_loglik(model, w, "image2label")
    if model.variant != "h":
        mu, var = model.encode(x, w)
        return mu, var, lambda z: (lx(z), lw(z), standard_normal_loglik(z))
    xp, L = model.xp, a.latent
    m1, v1 = model.encode(x, w)
    m2, v2 = model.encode_z2(x, w)

    def parts(z):
        z1, z2 = z[:, :L], z[:, L:]
        pm, pv = model.prior_z1(z2)
        return lx(z1), lw(z1), standard_normal_loglik(z2) + gaussian_loglik(z1, pm, pv)[0]
    return xp.concatenate([m1, m2], axis=1), xp.concatenate([v1, v2], axis=1), parts


def _h_top_z1_log_weights(model, x, w, rng, samples: int):
    """JMVAE-h with q(z2|z1): S draws z1_s ~ q(z1|x,w), z2_s ~ q(z2|z1_s); per draw (S, B) arrays of
    log p(x|z1), log p(w|z1) and log p(z2) + log p(z1|z2) - log q(z1|x,w) - log q(z2|z1) (the
    proposal is the model's own two-step encoder, not a product of independent Gaussians)."""
    xp = model.xp
    lx = _target_loglik(model, x, "label2image")
    lw = _target_loglik(model, w, "image2label")
    m1, v1 = model.encode(x, w)
    rows = []
    for _ in range(samples):
        z1 = _draw(m1, v1, rng)
        g, _ = model.run("qz2.net", z1, False)
        m2, v2 = model.run("qz2.head", g, False)[0]
        z2 = _draw(m2, v2, rng)
        pm, pv = model.prior_z1(z2)
        rest = (standard_normal_loglik(z2) + gaussian_loglik(z1, pm, pv)[0]
                - gaussian_loglik(z1, m1, v1)[0] - gaussian_loglik(z2, m2, v2)[0])
        rows.append((lx(z1), lw(z1), rest))
    return tuple(xp.stack([r[i] for r in rows]) for i in range(3))


def importance_estimates(model, x, w, direction, rng, samples: int):
    """Importance-weighted estimates with S = ``samples`` draws from q(z|x,w): {name: (B,) array}.

    CVAE/CMMA: ``iwS`` (a bound on log p(t|c)).  JMVAE family: ``snisS`` for log p(t|c) and
    ``iwS-joint`` for log p(x, w) (one set of draws serves both)."""
    v = model.variant
    t, c = _split(x, w, direction)
    if v in ("cvae", "cmma"):
        mu, var = model.encode(x, w)
        if direction != model.direction:
            raise EstimatorError(f"this {v} model is trained for {model.direction}, not {direction}")

        def log_joint(z):
            pm, pv = model.prior(c)
            return model.target_loglik(z, t, c) + gaussian_loglik(z, pm, pv)[0]
        return {f"iw{samples}": iw_bound(mu, var, log_joint, rng, samples)}
    if getattr(model, "top", "chain") == "z1":
        lx, lw, lr = _h_top_z1_log_weights(model, x, w, rng, samples)
    else:
        mu, var, parts = _jmvae_parts(model, x, w)
        lx, lw, lr = _log_weights(mu, var, parts, rng, samples)
    lt, lc = (lx, lw) if direction == "label2image" else (lw, lx)
    return {f"snis{samples}": logsumexp(lt + lc + lr, axis=0) - logsumexp(lc + lr, axis=0),
            f"iw{samples}-joint": iw_average(lx + lw + lr)}


def evaluate_model(model, x, w, direction, rng, samples=10, iterations=10, importance=0, batch_size=500,
                   tick=None, path="z1", init="zeros"):
    """Mean over the test set of every estimator for one direction: {name: float}.
    ``importance`` = S > 0 adds the importance-weighted estimates; ``tick()`` (optional: a progress
    bar) is called after each batch of ``batch_size`` rows."""
    sums: dict = {}
    n = x.shape[0]
    for i in range(0, n, batch_size):
        xb, wb = x[i:i + batch_size], w[i:i + batch_size]
        name, val = paper_estimate(model, xb, wb, direction, rng, samples, iterations, path, init)
        out = {name: val}
        if importance:
            out.update(importance_estimates(model, xb, wb, direction, rng, importance))
        for k, vals in out.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(asnumpy(vals).astype(np.float64)))
        if tick is not None:
            tick()
    return {k: s / n for k, s in sums.items()}
