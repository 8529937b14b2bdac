"""Generating one modality from the other (the paper's bi-directional generation).

* JMVAE-kl has unimodal encoders: x from w uses q(z|w) directly, w from x uses q(z|x).
* JMVAE and JMVAE-h only have the joint encoder q(z|x,w): the missing modality is filled with
  zeros (or noise) and refined by the paper's iterative sampling, a Markov chain with kernel
  T(x'|x, w) = integral p(x'|z) q(z|x, w) dz:   z ~ q(z|x^, w),  x^ ~ p(x|z),  K times.
* JMVAE-h's decoders read z1, which the chain reaches by one of two paths (``path``):
  ``"z1"``: z1 ~ q(z1|x^, w) (the bottom layer of the joint encoder);
  ``"top"``: z2 ~ q(z2|x^, w), then z1 ~ p(z1|z2) (through the top layer and the prior, the
  path of Fig. 2(b) and of Eq. 6; the paper samples "at the top stochastic layer").
"""

from __future__ import annotations

from .backend import get_array_module

INITS = ("zeros", "noise", "prior")  # how the missing modality starts (the paper: zeros, noise, x ~ p(x))


def prior_latent(model, n: int, rng):
    """z ~ p(z), (n, latent): N(0, I); JMVAE-h: z2 ~ N(0, I), then z1 ~ p(z1|z2) (what its decoders read)."""
    z = rng.normal((n, model.arch.latent), model.dtype, model.xp)
    if model.variant == "h":
        z = _sample_z(*model.prior_z1(z), rng, True)
    return z


def initial_fill(model, target: str, n: int, rng, init: str = "zeros"):
    """The missing modality (``target`` "x" or "w", n rows) before iterative sampling: ``"zeros"``,
    ``"noise"`` (uniform in [0, 1)), or ``"prior"``: a draw from the model's own marginal, x ~ p(x) =
    INT p(z) p(x|z) dz (the paper's "random noise such as x ~ p(x)"), likewise w ~ p(w)."""
    a, xp = model.arch, model.xp
    shape = (n,) + (tuple(a.x_shape) if target == "x" else (a.w_dim,))
    if init == "zeros":
        return xp.zeros(shape, dtype=model.dtype)
    if init == "noise":
        return rng.uniform(shape, model.dtype, xp)
    if init == "prior":
        z = prior_latent(model, n, rng)
        if target == "x":
            return a.x_lik.sample(model.decode_x(z).reshape(n, -1), rng).reshape(shape)
        return a.w_lik.sample(model.decode_w(z), rng)
    raise ValueError(f"unknown init {init!r}: choose {', '.join(INITS)}")


def _sample_z(mu, var, rng, sample: bool):
    xp = get_array_module(mu)
    if not sample:
        return mu
    return mu + xp.sqrt(var) * rng.normal(mu.shape, mu.dtype, xp)


H_PATHS = ("z1", "top")


def joint_latent(model, x, w, rng, sample: bool = True, path: str = "z1"):
    """The z the decoders read, inferred by the joint encoder from (x, w): (N, latent).

    JMVAE: z ~ q(z|x,w).  JMVAE-h: path "z1": z1 ~ q(z1|x,w); path "top": z2 ~ q(z2|x,w), then
    z1 ~ p(z1|z2).  sample=False: the mean at each step instead of a draw.
    """
    if path not in H_PATHS:
        raise ValueError(f"unknown JMVAE-h path {path!r}: choose z1 or top")
    if path == "z1":
        return _sample_z(*model.encode(x, w), rng, sample)
    if model.variant != "h":
        raise ValueError(f"the path through the top layer is JMVAE-h's; a {model.variant} model has none")
    z2 = _sample_z(*model.encode_z2(x, w, rng if sample else None), rng, sample)
    return _sample_z(*model.prior_z1(z2), rng, sample)


def x_from_w(model, w, rng, iterations: int = 10, init: str = "zeros", sample_z: bool = True,
             return_chain: bool = False, path: str = "z1"):
    """Images generated from w (N, w_dim): the mean of p(x|z), shaped (N, *x_shape).

    JMVAE-kl: z ~ q(z|w) (its mean if sample_z is False), ``iterations`` is ignored.
    JMVAE / JMVAE-h: iterative sampling for ``iterations`` steps from an x filled with ``init``.
    return_chain: also return the list of means after 0..K iterations (the paper's Fig. 4).
    path: JMVAE-h's path to z1 (:func:`joint_latent`).
    """
    a = model.arch
    lik = a.x_lik
    if hasattr(model, "encode_w"):
        z = _sample_z(*model.encode_w(w), rng, sample_z)
        mean = lik.mean(model.decode_x(z)).reshape((w.shape[0],) + tuple(a.x_shape))
        return (mean, [mean]) if return_chain else mean
    x = initial_fill(model, "x", w.shape[0], rng, init)
    chain = []
    for k in range(iterations + 1):
        z = joint_latent(model, x, w, rng, sample_z, path)
        out = model.decode_x(z)
        mean = lik.mean(out.reshape(out.shape[0], -1)).reshape(x.shape)
        chain.append(mean)
        if k < iterations:
            x = lik.sample(out.reshape(out.shape[0], -1), rng).reshape(x.shape)  # x^ ~ p(x|z)
    return (chain[-1], chain) if return_chain else chain[-1]


def w_from_x(model, x, rng, iterations: int = 10, init: str = "zeros", sample_z: bool = True,
             return_chain: bool = False, path: str = "z1"):
    """The mean of p(w|z) (class probabilities for MNIST) given x, (N, w_dim); as :func:`x_from_w`."""
    a = model.arch
    if hasattr(model, "encode_x"):
        mean = a.w_lik.mean(model.decode_w(_sample_z(*model.encode_x(x), rng, sample_z)))
        return (mean, [mean]) if return_chain else mean
    w = initial_fill(model, "w", x.shape[0], rng, init)
    chain = []
    for k in range(iterations + 1):
        out = model.decode_w(joint_latent(model, x, w, rng, sample_z, path))
        chain.append(a.w_lik.mean(out))
        if k < iterations:
            w = a.w_lik.sample(out, rng)
    return (chain[-1], chain) if return_chain else chain[-1]
