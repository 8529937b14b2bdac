"""The appendix architectures, written in the paper's notation (see jmvae_cupy/nets.py).

One :class:`Arch` per dataset: the shapes of the two modalities, their likelihoods, and one
network string per component.  ``mnist_arch(hidden=8, ...)`` shrinks widths for tests;
``celeba_arch(size=32, width=0.25)`` gives the CelebA family at 64, 32 or 16 pixels and scaled widths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..distributions import Bernoulli, Categorical, FixedVarGaussian


@dataclass(frozen=True)
class Arch:
    """Everything that differs between datasets.

    x_shape: shape of one image without N ((784,) or (3, 64, 64)); w_dim: label/attribute size.
    Network strings: ``enc_x``/``enc_w`` the two branches of q(z|x,w), concatenated and then
    ``enc_joint`` (may be empty); ``enc_x_uni``/``enc_w_uni`` the trunks of q(z|x), q(z|w);
    ``dec_x``/``dec_w`` the decoders including their output layer; ``prior_z1`` the trunk of
    p(z1|z2) and ``h_chain`` the deterministic chain of q(z2|x,w) on top of the joint trunk
    (JMVAE-h).  ``latent``: size of z (z1 and z2 in JMVAE-h).
    """

    name: str
    x_shape: tuple
    w_dim: int
    x_lik: object
    w_lik: object
    enc_x: str
    enc_w: str
    enc_joint: str
    enc_x_uni: str
    enc_w_uni: str
    dec_x: str
    dec_w: str
    prior_z1: str
    h_chain: str
    latent: int

    @property
    def x_dim(self) -> int:
        n = 1
        for s in self.x_shape:
            n *= s
        return n

    def with_latent(self, latent: int) -> Arch:
        if latent < 1:
            raise ValueError(f"latent size must be >= 1, got {latent}")
        return replace(self, latent=int(latent))


def _scale_widths(spec: str, width: int) -> str:
    """Replace the hidden width 512 of every dense token by ``width`` (tests use tiny nets)."""
    return re.sub(r"\bD512", f"D{width}", spec)


MNIST = Arch(
    name="mnist", x_shape=(784,), w_dim=10, x_lik=Bernoulli(), w_lik=Categorical(),
    enc_x="D512R-D512R", enc_w="D512R-D512R", enc_joint="",
    enc_x_uni="D512R-D512R", enc_w_uni="D512R-D512R",
    dec_x="D512R-D512R-D784", dec_w="D512R-D512R-D10",
    prior_z1="D512R-D512R", h_chain="D64-D512R-D512R", latent=64,
)

CELEBA = Arch(
    name="celeba", x_shape=(3, 64, 64), w_dim=40, x_lik=FixedVarGaussian(1.0), w_lik=FixedVarGaussian(1.0),
    enc_x="C64R-C128BR-C256BR-C256BR-F", enc_w="D512R-D512BR", enc_joint="D1024R",
    enc_x_uni="C64R-C128BR-C256BR-C256BR-F-D1024R", enc_w_uni="D512R-D512BR-D1024R",
    dec_x="D4096R-DC256BR-DC128BR-DC64BR-DC3", dec_w="D512R-D4096R-D40",
    prior_z1="D512R-D512R", h_chain="D64-D512R-D512R", latent=128,
)

ARCHS = {"mnist": MNIST, "celeba": CELEBA}


def mnist_arch(hidden: int = 512, latent: int = 64, x_dim: int = 784, w_dim: int = 10, chain: int = 64) -> Arch:
    """The MNIST architecture, optionally shrunk (hidden width, input sizes) for gradient checks."""
    s = lambda spec: _scale_widths(spec, hidden)  # noqa: E731
    return replace(
        MNIST, x_shape=(x_dim,), w_dim=w_dim, latent=latent,
        enc_x=s(MNIST.enc_x), enc_w=s(MNIST.enc_w), enc_x_uni=s(MNIST.enc_x_uni), enc_w_uni=s(MNIST.enc_w_uni),
        dec_x=f"D{hidden}R-D{hidden}R-D{x_dim}", dec_w=f"D{hidden}R-D{hidden}R-D{w_dim}",
        prior_z1=s(MNIST.prior_z1), h_chain=f"D{chain}-D{hidden}R-D{hidden}R",
    )


def celeba_arch(size: int = 64, width: float = 1.0, latent: int = 128, w_dim: int = 40) -> Arch:
    """The CelebA architecture for ``size`` x ``size`` images (64: the appendix; 32: three convs
    to 4x4 and three deconvs back, DESIGN's cheap option; 16: two and two, for gradient checks),
    with every hidden width multiplied by ``width`` (tests).  ``celeba_arch() == CELEBA``."""
    n = {64: 4, 32: 3, 16: 2}.get(size)
    if n is None:
        raise ValueError(f"CelebA image size must be 64, 32 or 16, got {size}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    c = lambda k: max(1, int(round(k * width)))  # noqa: E731
    convs = [64, 128, 256, 256][:n]
    conv = "-".join(f"C{c(k)}{'R' if i == 0 else 'BR'}" for i, k in enumerate(convs)) + "-F"
    deconvs = [256, 128, 64][4 - n:]
    dec_x = f"D{c(256) * 16}R-" + "-".join(f"DC{c(k)}BR" for k in deconvs) + "-DC3"
    return replace(
        CELEBA, x_shape=(3, size, size), w_dim=w_dim, latent=latent,
        enc_x=conv, enc_w=f"D{c(512)}R-D{c(512)}BR", enc_joint=f"D{c(1024)}R",
        enc_x_uni=f"{conv}-D{c(1024)}R", enc_w_uni=f"D{c(512)}R-D{c(512)}BR-D{c(1024)}R",
        dec_x=dec_x, dec_w=f"D{c(512)}R-D{c(4096)}R-D{w_dim}",
        prior_z1=f"D{c(512)}R-D{c(512)}R", h_chain=f"D{c(64)}-D{c(512)}R-D{c(512)}R",
    )
