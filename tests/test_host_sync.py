"""A training step makes no host round trip: the GPU claim of docs/performance.md ("no host
synchronisation inside a step"), checked here without a GPU.

On CuPy the host waits for the GPU whenever device data becomes host data: a device array turned
into a Python number or truth value (``float``, ``int``, ``bool``, ``.item()``, ``.tolist()``,
``if a: ...``), or indexed with a boolean mask (the result's size depends on the data, so CuPy
counts the mask on the host).  A step -- ``loss_and_grads`` and ``Adam.step``, what
bench/throughput.py times -- must do none of these.

The step runs here on :class:`DeviceLike`, a NumPy array subclass that behaves like a CuPy array
where it matters and raises :class:`HostSync` on each of those conversions.  CuPy's reductions
give 0-d device arrays, not host scalars, so DeviceLike's do too; and for the duration of the
step NumPy's array-creating functions return DeviceLike, so the arrays made inside layers and
kernels are device arrays as well.  Every model family runs: the MNIST MLPs (JMVAE, JMVAE-kl,
JMVAE-h, CVAE, CMMA), the CelebA conv nets with batch norm through im2col and through Winograd
F(2x2, 2x2), and the VAE-GAN terms.  That the trap covers the step is asserted too: the loss,
the terms, every gradient, parameter, Adam moment and running statistic come out DeviceLike
(a plain ndarray would be an array the trap never saw).  The trainer reads the loss once per
step, after the update, and its guard against non-finite values reads one flag: those reads are
outside the step, and documented (docs/reliability.md).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from jmvae_cupy.kernels import batchnorm as batchnorm_kernels
from jmvae_cupy.models import build_model
from jmvae_cupy.models.architectures import celeba_arch, mnist_arch
from jmvae_cupy.optim import Adam
from jmvae_cupy.rng import Rng


class HostSync(AssertionError):
    """Device data was turned into host data inside the step."""


def _sync(what):
    def trap(self, *args, **kwargs):
        raise HostSync(f"{what} of a device array {self.shape}: the host would wait for the GPU")
    return trap


class DeviceLike(np.ndarray):
    """A NumPy array that stands for a CuPy array: 0-d results stay arrays; conversions to host
    values and boolean-mask indexing raise HostSync."""

    def __array_wrap__(self, obj, context=None, return_scalar=False):
        return np.asarray(obj).view(DeviceLike)  # (CuPy: a reduction gives a 0-d array, never a scalar)

    def mean(self, *args, **kwargs):  # NumPy's mean / var / std turn a full reduction into a scalar
        return np.asarray(super().mean(*args, **kwargs)).view(DeviceLike)

    def var(self, *args, **kwargs):
        return np.asarray(super().var(*args, **kwargs)).view(DeviceLike)

    def std(self, *args, **kwargs):
        return np.asarray(super().std(*args, **kwargs)).view(DeviceLike)

    __float__ = _sync("float()")
    __int__ = _sync("int()")
    __index__ = _sync("use as an index")
    __bool__ = _sync("truth value")
    __complex__ = _sync("complex()")
    item = _sync(".item()")
    tolist = _sync(".tolist()")

    def __getitem__(self, key):
        for k in key if isinstance(key, tuple) else (key,):
            if isinstance(k, np.ndarray) and k.dtype == np.bool_:
                raise HostSync(f"boolean-mask indexing of a device array {self.shape}: the result's size "
                               "is counted on the host")
        return super().__getitem__(key)


# The array-creating functions the library calls through ``xp`` (kernels, layers, models, Adam):
# inside the step their results are device arrays.
CREATORS = ("empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "concatenate", "stack",
            "ascontiguousarray", "asarray", "tensordot", "einsum", "where", "arange")


def dev(a):
    """A host array as a device array (what ``xp.asarray`` does on CuPy)."""
    return np.asarray(a).view(DeviceLike)


@contextlib.contextmanager
def device_creators():
    """Within the block, NumPy's array-creating functions (CREATORS) return DeviceLike, and batch
    norm takes the path it takes on CuPy (its plain-xp reference: kernels/batchnorm.py's Numba
    kernels are CPU-only)."""
    def device(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            return out.view(DeviceLike) if isinstance(out, np.ndarray) else out
        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        for name in CREATORS:
            mp.setattr(np, name, device(getattr(np, name)))
        mp.setattr(batchnorm_kernels, "_fast", lambda *arrays: False)
        yield


def _to_device(model):
    for d in (model.params, model.state):
        for k in d:
            d[k] = dev(d[k])


def _batch(arch, n):
    gen = np.random.default_rng(0)
    if arch.x_lik.name == "bernoulli":
        x = (gen.random((n, *arch.x_shape)) < 0.5).astype(np.float32)
    else:
        x = gen.standard_normal((n, *arch.x_shape)).astype(np.float32)
    if arch.w_lik.name == "categorical":
        w = np.eye(arch.w_dim, dtype=np.float32)[gen.integers(0, arch.w_dim, n)]
    else:
        w = np.sign(gen.standard_normal((n, arch.w_dim))).astype(np.float32)
    return dev(x), dev(w)


def _assert_on_device(**groups):
    for group, arrays in groups.items():
        plain = [k for k, a in arrays.items() if type(a) is not DeviceLike]
        assert not plain, f"{group} not device arrays (the trap never saw them): {plain[:6]}"


MNIST = mnist_arch(hidden=16, latent=3, x_dim=12, w_dim=10, chain=4)
CELEBA = celeba_arch(size=16, width=1 / 32, latent=3, w_dim=5)  # convs and deconvs through im2col, batch norm
CELEBA_WINOGRAD = celeba_arch(size=16, width=0.25, latent=3, w_dim=5)  # the 8x8 conv / deconv through Winograd
CASES = [(MNIST, v) for v in ("jmvae", "kl", "h", "cvae", "cmma")] + [(CELEBA, v) for v in ("jmvae", "kl", "h")] + [
    (CELEBA_WINOGRAD, "kl")]


@pytest.mark.parametrize("arch, variant", CASES, ids=[f"{'mnist' if a is MNIST else 'celeba'}"
                                                      f"{'-winograd' if a is CELEBA_WINOGRAD else ''}-{v}"
                                                      for a, v in CASES])
def test_a_training_step_makes_no_host_round_trip(arch, variant):
    model = build_model(arch, variant, seed=0, dtype="float32", xp=np)
    _to_device(model)
    x, w = _batch(arch, 8)
    opt, rng = Adam(lr=1e-3), Rng(0)
    with device_creators():
        for _ in range(2):  # the second step runs on the moments the first one made
            loss, terms, grads = model.loss_and_grads(x, w, rng, beta=0.5)
            opt.step(model.params, grads)
    _assert_on_device(loss={"loss": loss}, terms=terms, grads=grads, params=model.params, state=model.state,
                      m=opt.m, v=opt.v)
    if arch is CELEBA_WINOGRAD:  # the case is there for its Winograd layers: make sure they ran
        from jmvae_cupy.layers.conv import WinogradCache
        caches = model.run("qxw.x", x)[1]
        assert any(c is not None and isinstance(c[0], WinogradCache) for c in caches)


def test_the_vae_gan_terms_make_no_host_round_trip():
    from jmvae_cupy.models.gan import VAEGAN

    model = build_model(CELEBA, "kl", seed=0, dtype="float32", xp=np)
    gan = VAEGAN(model, weight=0.5, seed=1)
    _to_device(model)
    _to_device(gan)
    x, w = _batch(CELEBA, 8)
    opt, rng = Adam(lr=1e-3), Rng(0)
    with device_creators():
        loss, terms, grads = model.loss_and_grads(x, w, rng, beta=1.0)
        loss, terms, dgrads = gan.step_grads(model, x, w, rng, loss, terms, grads)
        opt.step(model.params, grads)
        gan.opt.step(gan.params, dgrads)
    _assert_on_device(loss={"loss": loss}, terms=terms, grads=grads, disc_grads=dgrads, disc_params=gan.params,
                      disc_m=gan.opt.m)


def test_the_trap_catches_each_kind_of_host_round_trip():
    """The trap itself: each conversion the module docstring names raises HostSync, on a result of
    the step's kind (a 0-d reduction, an elementwise result, an array made by a creator)."""
    a = dev(np.arange(6, dtype=np.float32).reshape(2, 3))
    total, mask = a.sum(), a > 2
    with device_creators():
        made = np.zeros(3)
    assert type(total) is DeviceLike and total.shape == () and type(a.mean()) is DeviceLike
    for act in (lambda: float(total), lambda: int(total), lambda: bool(mask.any()), lambda: total.item(),
                lambda: made.tolist(), lambda: a[mask], lambda: [0, 1][total.astype(np.int64)],
                lambda: 1.0 if (a > 0).all() else 0.0):
        with pytest.raises(HostSync):
            act()
    a[mask] = 0  # a masked assignment needs no count (CuPy scatters it in a kernel)
    assert a.shape == (2, 3)
