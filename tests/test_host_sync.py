"""A training step makes no host round trip: the GPU claim of docs/performance.md ("no host
synchronisation inside a step"), checked here without a GPU.

On CuPy the host waits for the GPU whenever device data becomes host data: a device array turned
into a Python number, truth value or string (``float``, ``int``, ``bool``, ``.item()``,
``.tolist()``, ``if a: ...``, formatting), or any operation whose result's size depends on the
data (boolean-mask indexing and assignment, ``nonzero``, one-argument ``where``: CuPy counts on
the host).  A step -- ``loss_and_grads`` and ``Adam.step``, what bench/throughput.py times --
must do none of these.

The step runs here inside the library's trap, jmvae_cupy/selftest/hostsync.py (``python -m
jmvae_cupy.selftest`` runs it too): :class:`DeviceLike`, a NumPy array subclass that behaves like a
CuPy array where it matters (0-d results stay arrays, NumPy's array creators return it during the
step, batch norm takes CuPy's plain-xp path) and raises :class:`HostSync` on each of those; and the
check that the loss, the terms, every gradient, parameter, Adam moment and running statistic came
out DeviceLike (a plain ndarray would be an array the trap never saw).  The model families: the
MNIST MLPs (JMVAE, JMVAE-kl, JMVAE-h; CVAE and CMMA both ways), the CelebA conv nets with batch
norm through im2col and through Winograd F(2x2, 2x2), the VAE-GAN terms (on JMVAE-kl), and Adam's
plain-xp path; and the trap itself, on each kind of conversion.

Not covered here (it needs a GPU): the Numba CUDA launches (kernels/_dispatch.py passes
``sync=False``) and the reparameterisation noise, drawn on the host and copied through pinned
buffers (backend.to_device_async): the selftest's ``sync ... gpu`` checks (a step queued behind GPU
work, under CuPy's synchronisation detection) and test_backend's pinned round trip cover them.
Outside the step, the trainer's guard reads one flag per step and the progress bar the loss every
10 steps (docs/performance.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.models import build_model
from jmvae_cupy.models.architectures import celeba_arch, mnist_arch
from jmvae_cupy.optim import Adam
from jmvae_cupy.rng import Rng
from jmvae_cupy.selftest.hostsync import (
    DeviceLike,
    HostSync,
    assert_on_device,
    dev,
    device_creators,
    to_device_like,
    trap_steps,
)
from jmvae_cupy.selftest.steps import random_batch as make_batch

MNIST = mnist_arch(hidden=16, latent=3, x_dim=12, w_dim=10, chain=4)
CELEBA = celeba_arch(size=16, width=1 / 32, latent=3, w_dim=5)  # convs and deconvs through im2col, batch norm
CELEBA_WINOGRAD = celeba_arch(size=16, width=0.25, latent=3, w_dim=5)  # the 8x8 conv / deconv through Winograd
CASES = ([(MNIST, v, None) for v in ("jmvae", "kl", "h")]
         + [(MNIST, v, d) for v in ("cvae", "cmma") for d in ("label2image", "image2label")]
         + [(CELEBA, v, None) for v in ("jmvae", "kl", "h")] + [(CELEBA_WINOGRAD, "kl", None)])


def _case_id(arch, variant, direction):
    name = "mnist" if arch is MNIST else "celeba-winograd" if arch is CELEBA_WINOGRAD else "celeba"
    return f"{name}-{variant}" + (f"-{direction}" if direction else "")


@pytest.mark.parametrize("arch, variant, direction", CASES, ids=[_case_id(*c) for c in CASES])
def test_a_training_step_makes_no_host_round_trip(arch, variant, direction):
    model = build_model(arch, variant, seed=0, dtype="float32", xp=np, direction=direction)
    x, w = make_batch(model, 8, np)  # (a random batch of the model's shapes)
    trap_steps(model, x, w, steps=2)
    if arch is CELEBA_WINOGRAD:  # the case is there for its Winograd layers: make sure they ran
        from jmvae_cupy.layers.conv_fast import is_winograd
        caches = model.run("qxw.x", x)[1]
        assert any(is_winograd(c) for c in caches)


def test_the_vae_gan_terms_make_no_host_round_trip():
    from jmvae_cupy.models.gan import VAEGAN

    model = build_model(CELEBA, "kl", seed=0, dtype="float32", xp=np)
    gan = VAEGAN(model, weight=0.5, seed=1)
    x, w = make_batch(model, 8, np)
    opt, rng = Adam(lr=1e-3), Rng(0)

    def step():
        loss, terms, grads = model.loss_and_grads(x, w, rng, beta=1.0)
        loss, terms, dgrads = gan.step_grads(model, x, w, rng, loss, terms, grads)
        opt.step(model.params, grads)
        gan.opt.step(gan.params, dgrads)
        return loss, terms, grads, dgrads

    step()  # on plain arrays (compiles: device_creators)
    to_device_like(model.params, model.state, gan.params, gan.state)
    x, w = dev(x), dev(w)
    opt, gan.opt = Adam(lr=1e-3), Adam(lr=gan.opt.lr)  # (moments made on the device)
    with device_creators():
        loss, terms, grads, dgrads = step()
    assert_on_device(loss={"loss": loss}, terms=terms, grads=grads, disc_grads=dgrads, disc_params=gan.params,
                      disc_m=gan.opt.m)


def test_the_trap_catches_each_kind_of_host_round_trip():
    """The trap itself: each conversion the module docstring names raises HostSync, on a result of
    the step's kind (a 0-d reduction, an elementwise result, an array made by a creator, an
    element, a 1-D product)."""
    a = dev(np.arange(6, dtype=np.float32).reshape(2, 3))
    total, mask, row = a.sum(), a > 2, a[1]

    def where_inside():
        with device_creators():  # (np.where is the wrapper there)
            np.where(mask)

    with device_creators():
        made = np.zeros(3)
    assert all(type(r) is DeviceLike for r in (total, a.mean(), row[0], np.dot(row, row), row.dot(row), made))
    for act in (lambda: float(total), lambda: int(total), lambda: bool(mask.any()), lambda: total.item(),
                lambda: made.tolist(), lambda: a[mask], lambda: [0, 1][total.astype(np.int64)],
                lambda: 1.0 if (a > 0).all() else 0.0, lambda: float(row[0]), lambda: [float(v) for v in row],
                lambda: float(np.vdot(row, row)), lambda: f"{total:.2f}", lambda: str(total), lambda: a.nonzero(),
                lambda: np.flatnonzero(a), lambda: np.where(mask), lambda: a.tobytes(), where_inside,
                lambda: a.__setitem__(mask, 0), lambda: a.__setitem__([[True, False, True], [False] * 3], 0)):
        with pytest.raises(HostSync):
            act()
    a[:, 1] = np.where(mask[:, 1], 0, a[:, 1])  # the sync-free form of a masked assignment
    assert type(a) is DeviceLike and repr(a)  # (repr stays usable for pytest's messages)


def test_adams_plain_xp_path_makes_no_host_round_trip():
    """Adam's reference (kernels/adam.py), the path a strided parameter or mixed dtypes take, and
    CuPy's fallback: its flush is an ``xp.where``, not a masked assignment."""
    from jmvae_cupy.kernels.adam import adam_update_ref

    gen = np.random.default_rng(0)
    p, g, m, v = (dev(gen.standard_normal((6, 5)).astype(np.float32)) for _ in range(4))
    m[0, 0], v[0, 0], g[0, 0] = 1e-33, 1e-33, 0.0  # moments below the flush threshold, no gradient
    v[...] = abs(v)
    with device_creators():
        adam_update_ref(p, g, m, v, 0.9, 0.999, 1e-3, 1e-8, flush=True)
    assert all(type(a) is DeviceLike for a in (p, m, v))
    assert m.view(np.ndarray)[0, 0] == 0 and v.view(np.ndarray)[0, 0] == 0
