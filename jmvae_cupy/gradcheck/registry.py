"""The registry of the gradient checks: every check is a :class:`Check` registered under a name by
:func:`register` (jmvae_cupy/gradcheck/checks_layers.py and checks_models.py register them), with
the input makers they share.  Every check builds float64 inputs (off zero mean, ReLU inputs away from
the kink, odd non-square sizes) and a *random* upstream gradient dy (never all ones)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import core


@dataclass(frozen=True)
class Check:
    """One registered check: ``run()`` -> {input name: relative error}; passes if every error < tol."""

    name: str
    run: Callable[[], dict]
    tol: float
    what: str
    covers: tuple = field(default=())


REGISTRY: dict[str, Check] = {}


def register(name: str, tol: float, what: str, covers: tuple = ()):
    def deco(fn):
        REGISTRY[name] = Check(name, fn, tol, what, tuple(covers))
        return fn

    return deco


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _randn(r, shape, scale=1.0, shift=0.3):
    """Gaussian entries off zero mean: N(shift, scale^2)."""
    return r.standard_normal(shape) * scale + shift


def _away_from_zero(r, shape, gap=0.2):
    """Entries with |v| >= gap and random signs (ReLU inputs away from the kink)."""
    return (gap + r.random(shape) * 1.5) * r.choice([-1.0, 1.0], size=shape) + 0.05


def _positive(r, shape, low=0.4):
    """Entries in [low, low + 1.5) (variances)."""
    return low + 1.5 * r.random(shape)


compare = core.check_gradients  # {name: rel_error(grads[name], central differences of loss() w.r.t. arrays[name])}


