"""Float32 discipline: a float32 training step (loss_and_grads + Adam.step) produces float32 arrays
only -- loss, terms, gradients, the forward caches, parameters and Adam's moments -- no silent
float64 upcast anywhere (a float64 intermediate would double memory traffic and time)."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.models import build_model, mnist_arch
from jmvae_cupy.models.architectures import celeba_arch
from jmvae_cupy.optim import Adam
from jmvae_cupy.rng import Rng


def arrays_in(obj):
    """Every NumPy array inside nested tuples / lists / dicts."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from arrays_in(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from arrays_in(o)


def batch(model, n, gen):
    a = model.arch
    x = (gen.random((n, *a.x_shape)) < 0.5).astype(np.float32)
    w = np.eye(a.w_dim, dtype=np.float32)[gen.integers(0, a.w_dim, n)]
    return x, w


@pytest.mark.parametrize("arch, variant", [(mnist_arch(hidden=16, latent=4), v) for v in ("jmvae", "kl", "h")]
                         + [(celeba_arch(size=16, width=0.125, latent=4, w_dim=5), "kl")],
                         ids=["mnist-jmvae", "mnist-kl", "mnist-h", "celeba16-kl"])
def test_float32_step_makes_only_float32_arrays(rng, arch, variant):
    model = build_model(arch, variant, seed=0, dtype="float32", device="cpu")
    x, w = batch(model, 6, rng)
    opt = Adam()
    for _ in range(2):
        loss, terms, grads = model.loss_and_grads(x, w, Rng(0), beta=0.5)
        opt.step(model.params, grads)
    found = {"loss": [np.asarray(loss)], "terms": [np.asarray(t) for t in terms.values()],
             "grads": list(grads.values()), "params": list(model.params.values()),
             "state": list(model.state.values()), "adam": [*opt.m.values(), *opt.v.values()]}
    for name in model.components:  # the forward caches of the branches that read the data
        if name in ("qxw.x", "qx.net"):
            _, cache = model.run(name, x)
        elif name in ("qxw.w", "qw.net"):
            _, cache = model.run(name, w)
        else:
            continue
        found[f"cache {name}"] = list(arrays_in(cache))
    for what, arrays in found.items():
        bad = {str(a.dtype) for a in arrays if a.dtype not in (np.float32, np.bool_)}
        assert not bad, f"{what}: {bad}"
