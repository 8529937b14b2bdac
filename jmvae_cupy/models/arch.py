"""The :class:`Arch` of a model: the shapes of the two modalities, their likelihoods, and one
network string per component, in the paper's notation (jmvae_cupy/nets.py).  Built from a model
config (models/config.py); the built-in setups are in models/architectures.py."""

from __future__ import annotations

from dataclasses import dataclass, replace


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
