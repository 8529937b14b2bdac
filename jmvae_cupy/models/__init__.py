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
from .jmvae import JMVAE, JMVAEH, JMVAEKL

VARIANTS = {"jmvae": JMVAE, "kl": JMVAEKL, "h": JMVAEH, "cvae": CVAE, "cmma": CMMA}
BASELINES = ("cvae", "cmma")  # one model per direction: build_model(..., direction=...)

__all__ = ["build_model", "VARIANTS", "ARCHS", "Arch", "mnist_arch", "ModelError", "JMVAE", "JMVAEKL", "JMVAEH",
           "CVAE", "CMMA", "BASELINES", "DIRECTIONS"]


def build_model(dataset, variant: str, seed: int = 0, dtype="float32", device: str | None = None,
                latent: int | None = None, alpha: float = 1.0, xp=None, direction: str | None = None):
    """A model of ``variant`` (jmvae | kl | h | cvae | cmma) for ``dataset`` ("mnist", "celeba", or an Arch).

    seed: initialisation seed; dtype: "float32" | "float64"; device: "cpu" | "gpu" | "auto"
    (or pass ``xp`` directly); latent: override the size of z; alpha: weight of JMVAE-kl's
    extra KL terms; direction: "label2image" (default) | "image2label", for the baselines cvae | cmma
    only.  Parameters: ``model.params`` (name -> array, read and set freely).
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
    return VARIANTS[variant](arch, seed=seed, dtype=dtype, xp=xp, alpha=alpha)
