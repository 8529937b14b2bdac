"""A training step makes no host round trip: the GPU claim of docs/performance.md ("no host
synchronisation inside a step"), checked here without a GPU.

On CuPy the host waits for the GPU whenever device data becomes host data: a device array turned
into a Python number, truth value or string (``float``, ``int``, ``bool``, ``.item()``,
``.tolist()``, ``if a: ...``, formatting), or any operation whose result's size depends on the
data (boolean-mask indexing and assignment, ``nonzero``, one-argument ``where``: CuPy counts on
the host).  A step -- ``loss_and_grads`` and ``Adam.step``, what bench/throughput.py times --
must do none of these.

The step runs here on :class:`DeviceLike`, a NumPy array subclass that behaves like a CuPy array
where it matters and raises :class:`HostSync` on each of those.  What NumPy computes from it stays
a device array, 0-d results included where NumPy would hand back a host scalar (reductions, an
element, a 1-D product), as CuPy does; and within the step NumPy's array-creating functions
return DeviceLike, so the arrays made inside layers and kernels are device arrays as well.  Batch
norm takes its plain-xp path, the one CuPy takes.  The model families: the MNIST MLPs (JMVAE,
JMVAE-kl, JMVAE-h; CVAE and CMMA both ways), the CelebA conv nets with batch norm through im2col
and through Winograd F(2x2, 2x2), the VAE-GAN terms (on JMVAE-kl), and Adam's plain-xp path.
That the trap covers the step is asserted too: the loss, the terms, every gradient, parameter,
Adam moment and running statistic come out DeviceLike (a plain ndarray would be an array the
trap never saw).

Not covered here (it needs a GPU): the Numba CUDA launches (kernels/_dispatch.py passes
``sync=False``) and the reparameterisation noise, drawn on the host and copied through pinned
buffers (backend.to_device_async; its test runs on a GPU only).  Outside the step, the trainer's
guard reads one flag per step and the progress bar the loss every 10 steps (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import pathlib
import sys

import numpy as np
import pytest

from jmvae_cupy.kernels import batchnorm as batchnorm_kernels
from jmvae_cupy.models import build_model
from jmvae_cupy.models.architectures import celeba_arch, mnist_arch
from jmvae_cupy.optim import Adam
from jmvae_cupy.rng import Rng

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
from throughput import make_batch  # noqa: E402


class HostSync(AssertionError):
    """Device data was turned into host data inside the step."""


_asarray, _where = np.asarray, np.where  # (the real ones: device_creators() replaces them)


def _sync(what):
    def trap(self, *args, **kwargs):
        raise HostSync(f"{what} of a device array {self.shape}: the host would wait for the GPU")
    return trap


def _device(out):
    """Results of NumPy on device arrays are device arrays: arrays and NumPy scalars (0-d, as CuPy
    gives them), inside tuples and lists too."""
    if isinstance(out, (np.ndarray, np.generic)):
        return _asarray(out).view(DeviceLike)
    if isinstance(out, (tuple, list)):
        return type(out)(_device(o) for o in out)
    return out


# NumPy functions whose result's size depends on the data: CuPy counts on the host.
DATA_DEPENDENT = {np.nonzero, np.argwhere, np.flatnonzero, np.unique, np.compress, np.extract}


def _is_mask(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) and _asarray(k).dtype == np.bool_ for k in keys)


class DeviceLike(np.ndarray):
    """A NumPy array that stands for a CuPy array: what NumPy computes from it stays a device array
    (0-d results too, where NumPy would give a host scalar: reductions, integer indexing, 1-D
    products), and whatever would move data to the host raises HostSync."""

    def __array_wrap__(self, obj, context=None, return_scalar=False):
        return _device(obj)  # (ufuncs and reductions)

    def __array_function__(self, func, types, args, kwargs):  # (np.dot, np.einsum, np.linalg.norm, ...)
        if func in DATA_DEPENDENT or (func is _where and len(args) + len(kwargs) == 1):
            raise HostSync(f"{func.__name__} on a device array: the result's size is counted on the host")
        return _device(super().__array_function__(func, types, args, kwargs))

    def mean(self, *args, **kwargs):  # NumPy's mean / var / std turn a full reduction into a scalar
        return _device(super().mean(*args, **kwargs))

    def var(self, *args, **kwargs):
        return _device(super().var(*args, **kwargs))

    def std(self, *args, **kwargs):
        return _device(super().std(*args, **kwargs))

    def dot(self, *args, **kwargs):
        return _device(super().dot(*args, **kwargs))

    __float__ = _sync("float()")
    __int__ = _sync("int()")
    __index__ = _sync("use as an index")
    __bool__ = _sync("truth value")
    __complex__ = _sync("complex()")
    __format__ = _sync("formatting")  # (f"{a:.2f}", and f"{a}")
    __str__ = _sync("str()")

    def __repr__(self):  # (the test's own messages print arrays: repr looks at the host copy)
        return "DeviceLike:" + repr(self.view(np.ndarray))

    item = _sync(".item()")
    tolist = _sync(".tolist()")
    tobytes = _sync(".tobytes()")
    nonzero = _sync(".nonzero() (a data-dependent size)")

    def __getitem__(self, key):
        if _is_mask(key):
            raise HostSync(f"boolean-mask indexing of a device array {self.shape}: the result's size is "
                           "counted on the host")
        return _device(super().__getitem__(key))  # (a[i] of a 1-D array: a 0-d device array on CuPy)

    def __setitem__(self, key, value):
        if _is_mask(key):  # CuPy counts the mask's True entries on the host here too (masked_shape)
            raise HostSync(f"boolean-mask assignment to a device array {self.shape}: CuPy counts the mask "
                           "on the host")
        super().__setitem__(key, value)

    def __iter__(self):  # (rows, or 0-d device arrays of a 1-D array, as CuPy iterates)
        return (self[i] for i in range(len(self)))


# The array-creating functions the library calls through ``xp`` (kernels, layers, models, Adam):
# inside the step their results are device arrays, also where no argument is one (a shape, the
# host-drawn noise, a Numba kernel's result) to dispatch on.
CREATORS = ("empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "concatenate", "stack",
            "ascontiguousarray", "asarray", "tensordot", "einsum", "where", "arange")


def dev(a):
    """A host array as a device array (what ``xp.asarray`` does on CuPy)."""
    return _asarray(a).view(DeviceLike)


@contextlib.contextmanager
def device_creators():
    """Within the block, NumPy's array-creating functions (CREATORS) return DeviceLike, and batch
    norm takes the path it takes on CuPy (its plain-xp reference: kernels/batchnorm.py's Numba
    kernels are CPU-only).  Numba must not compile inside the block (it would take the wrapped
    functions for NumPy's and reject the real ones later in the process): run the step once on
    plain arrays outside it first, which compiles (or loads from the cache) every kernel it calls."""
    def device(fn):
        def wrapped(*args, **kwargs):
            return _device(fn(*args, **kwargs))
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


def _assert_on_device(**groups):
    for group, arrays in groups.items():
        plain = [k for k, a in arrays.items() if type(a) is not DeviceLike]
        assert not plain, f"{group} not device arrays (the trap never saw them): {plain[:6]}"


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
    x, w = make_batch(model, 8, np)  # (bench/throughput.py's random batch of the model's shapes)
    Adam().step(model.params, model.loss_and_grads(x, w, Rng(1), beta=0.5)[2])  # (compiles: device_creators)
    _to_device(model)
    x, w = dev(x), dev(w)
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
    x, w = make_batch(model, 8, np)
    opt, rng = Adam(lr=1e-3), Rng(0)

    def step():
        loss, terms, grads = model.loss_and_grads(x, w, rng, beta=1.0)
        loss, terms, dgrads = gan.step_grads(model, x, w, rng, loss, terms, grads)
        opt.step(model.params, grads)
        gan.opt.step(gan.params, dgrads)
        return loss, terms, grads, dgrads

    step()  # on plain arrays (compiles: device_creators)
    _to_device(model)
    _to_device(gan)
    x, w = dev(x), dev(w)
    opt, gan.opt = Adam(lr=1e-3), Adam(lr=gan.opt.lr)  # (moments made on the device)
    with device_creators():
        loss, terms, grads, dgrads = step()
    _assert_on_device(loss={"loss": loss}, terms=terms, grads=grads, disc_grads=dgrads, disc_params=gan.params,
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
