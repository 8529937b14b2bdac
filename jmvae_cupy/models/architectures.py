"""Architectures: the shapes of the two modalities, their likelihoods, and one network string per
component, in the paper's notation (see jmvae_cupy/nets.py).

An :class:`Arch` is built from a model config (models/config.py); ``MNIST`` and ``CELEBA`` are the
appendix's two setups, from the built-in configs jmvae_cupy/configs/mnist.toml and celeba.toml.
``mnist_arch(hidden=8, ...)`` shrinks widths for tests; ``celeba_arch(size=32, width=0.25)`` gives
the CelebA family at 64, 32 or 16 pixels and scaled widths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .config import builtin_arch


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


MNIST = builtin_arch("mnist", (784,), 10)     # jmvae_cupy/configs/mnist.toml
CELEBA = builtin_arch("celeba", (3, 64, 64), 40)  # jmvae_cupy/configs/celeba.toml

ARCHS = {"mnist": MNIST, "celeba": CELEBA}


def mnist_arch(hidden: int = 512, latent: int = 64, x_dim: int = 784, w_dim: int = 10, chain: int = 64) -> Arch:
    """The MNIST architecture, optionally shrunk (hidden width, input sizes) for gradient checks."""
    s = lambda spec: re.sub(r"\bD512", f"D{hidden}", spec)  # noqa: E731  (the hidden width 512 -> hidden)
    return replace(
        MNIST, x_shape=(x_dim,), w_dim=w_dim, latent=latent,
        enc_x=s(MNIST.enc_x), enc_w=s(MNIST.enc_w), enc_x_uni=s(MNIST.enc_x_uni), enc_w_uni=s(MNIST.enc_w_uni),
        dec_x=f"D{hidden}R-D{hidden}R-D{x_dim}", dec_w=f"D{hidden}R-D{hidden}R-D{w_dim}",
        prior_z1=s(MNIST.prior_z1), h_chain=f"D{chain}-D{hidden}R-D{hidden}R",
    )


def celeba_arch(size: int = 64, width: float = 1.0, latent: int = 128, w_dim: int = 40) -> Arch:
    """The CelebA setup for ``size`` x ``size`` images (64: the appendix; 32: three convs to 4x4 and
    three deconvs back, DESIGN's cheap option; 16: two and two, for gradient checks), with every
    hidden width multiplied by ``width`` (tests).  ``celeba_arch() == CELEBA``."""
    if size not in (64, 32, 16):
        raise ValueError(f"CelebA image size must be 64, 32 or 16, got {size}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    return builtin_arch("celeba", (3, size, size), w_dim, latent, width)
