"""Architectures: the shapes of the two modalities, their likelihoods, and one network string per
component, in the paper's notation (see jmvae_cupy/nets.py).

An :class:`Arch` (models/arch.py) is built from a model config (models/config.py); ``MNIST`` and ``CELEBA`` are the
appendix's two setups, from the built-in configs jmvae_cupy/configs/mnist.toml and celeba.toml.
``mnist_arch(hidden=8, ...)`` shrinks widths for tests; ``celeba_arch(size=32, width=0.25)`` gives
the CelebA family at 64, 32 or 16 pixels and scaled widths.
"""

from __future__ import annotations

import re
from dataclasses import replace

from .arch import Arch
from .config import builtin_arch

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
