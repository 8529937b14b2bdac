"""The JMVAE family and the CVAE / CMMA baselines.

    >>> from jmvae_cupy.models import build_model
    >>> model = build_model("mnist", "kl", seed=0, dtype="float64")
    >>> loss, terms, grads = model.loss_and_grads(x, w, Rng(0), beta=1.0)
"""

from __future__ import annotations

import math

from ..backend import select_device
from .architectures import ARCHS, Arch, mnist_arch
from .base import ModelError
from .baselines import CMMA, CVAE, DIRECTIONS
from .jmvae import JMVAE, JMVAEH, JMVAEKL, JMVAEHTopZ1

VARIANTS = {"jmvae": JMVAE, "kl": JMVAEKL, "h": JMVAEH, "cvae": CVAE, "cmma": CMMA}
H_TOPS = {"chain": JMVAEH, "z1": JMVAEHTopZ1}  # JMVAE-h's top layer: q(z2|x,w) on h's chain, or q(z2|z1)
BASELINES = ("cvae", "cmma")  # one model per direction: build_model(..., direction=...)

__all__ = ["build_model", "VARIANTS", "ARCHS", "Arch", "mnist_arch", "ModelError", "JMVAE", "JMVAEKL", "JMVAEH",
           "JMVAEHTopZ1", "H_TOPS", "CVAE", "CMMA", "BASELINES", "DIRECTIONS"]


def build_model(dataset, variant: str, seed: int = 0, dtype="float32", device: str | None = None,
                latent: int | None = None, alpha: float = 1.0, xp=None, direction: str | None = None,
                h_top: str = "chain"):
    """A model of ``variant`` (jmvae | kl | h | cvae | cmma) for ``dataset`` ("mnist", "celeba", or an Arch).

    seed: initialisation seed; dtype: "float32" | "float64"; device: "cpu" | "gpu" | "auto"
    (or pass ``xp`` directly); latent: override the size of z; alpha: weight of JMVAE-kl's
    extra KL terms; direction: "label2image" (default) | "image2label", for the baselines cvae | cmma
    only; h_top: JMVAE-h's top layer, "chain" (q(z2|x,w) on the deterministic chain on h, default)
    or "z1" (the appendix's literal q(z2|z1), z2 drawn from a sampled z1).
    Parameters: ``model.params`` (name -> array, read and set freely).
    """
    if variant not in VARIANTS:
        raise ModelError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    if variant == "kl":  # (the others ignore alpha) a negative weight on JMVAE-kl's KLs leaves no bound
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise ModelError(f"alpha must be a number >= 0, got {alpha!r}") from None
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ModelError(f"alpha must be a number >= 0, got {alpha}")
    if isinstance(dataset, Arch):
        arch = dataset
    elif dataset in ARCHS:
        arch = ARCHS[dataset]
    else:
        raise ModelError(f"unknown dataset {dataset!r}: choose one of {', '.join(ARCHS)}")
    if latent is not None:
        arch = arch.with_latent(latent)
    if xp is None:
        xp = select_device(device)
    if variant in BASELINES:
        return VARIANTS[variant](arch, seed=seed, dtype=dtype, xp=xp, alpha=alpha,
                                 direction=direction or "label2image")
    if direction is not None:
        raise ModelError(f"--direction applies to the baselines ({', '.join(BASELINES)}) only, not {variant!r}")
    if h_top not in H_TOPS:
        raise ModelError(f"unknown JMVAE-h top layer {h_top!r}: choose one of {', '.join(H_TOPS)}")
    if h_top != "chain" and variant != "h":
        raise ModelError(f"the top-layer choice applies to JMVAE-h (variant h) only, not {variant!r}")
    cls = H_TOPS[h_top] if variant == "h" else VARIANTS[variant]
    return cls(arch, seed=seed, dtype=dtype, xp=xp, alpha=alpha)
