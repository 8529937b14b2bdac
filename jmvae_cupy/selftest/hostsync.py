"""A trap for host round trips in a training step, on the CPU: the GPU claim "no host
synchronisation inside a step" (docs/performance.md), checked without a GPU.

On CuPy the host waits for the GPU whenever device data becomes host data: a device array turned
into a Python number, truth value or string (``float``, ``int``, ``bool``, ``.item()``,
``.tolist()``, ``if a: ...``, formatting), or any operation whose result's size depends on the
data (boolean-mask indexing and assignment, ``nonzero``, one-argument ``where``: CuPy counts on
the host).  A step -- ``loss_and_grads`` and ``Adam.step`` -- must do none of these.

:class:`DeviceLike` is a NumPy array subclass that behaves like a CuPy array where it matters and
raises :class:`HostSync` on each of those.  What NumPy computes from it stays a device array, 0-d
results included where NumPy would hand back a host scalar (reductions, an element, a 1-D
product), as CuPy does; and inside :func:`device_creators` NumPy's array-creating functions return
DeviceLike, so the arrays made inside layers and kernels are device arrays as well, and batch norm
takes its plain-xp path, the one CuPy takes.  :func:`trap_steps` runs a model's steps so and
checks that the trap saw everything: the loss, the terms, every gradient, parameter, Adam moment
and running statistic come out DeviceLike (a plain ndarray would be an array the trap never saw).

Users: tests/test_host_sync.py (every model family) and ``python -m jmvae_cupy.selftest`` (the
MNIST and CelebA JMVAE-kl steps, on every device: on a GPU CuPy's own detection runs beside it).
Not covered here: the Numba CUDA launches and the pinned copies of the noise (they need a GPU:
the selftest's GPU check does them).
"""

from __future__ import annotations

import contextlib

import numpy as np

from jmvae_cupy.kernels import batchnorm as batchnorm_kernels


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

    def __repr__(self):  # (messages print arrays: repr looks at the host copy)
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
    kernels are CPU-only); both restored after.  Numba must not compile inside the block (it would
    take the wrapped functions for NumPy's and reject the real ones later in the process): run the
    step once on plain arrays outside it first, which compiles (or loads from the cache) every
    kernel it calls."""
    def device(fn):
        def wrapped(*args, **kwargs):
            return _device(fn(*args, **kwargs))
        return wrapped

    saved = {name: getattr(np, name) for name in CREATORS}
    saved_fast = batchnorm_kernels.applies
    try:
        for name, fn in saved.items():
            setattr(np, name, device(fn))
        batchnorm_kernels.applies = lambda *arrays: False
        yield
    finally:
        for name, fn in saved.items():
            setattr(np, name, fn)
        batchnorm_kernels.applies = saved_fast


def to_device_like(*holders):
    """Every array of the dicts ``holders`` (a model's params and state, ...) as a device array, in place."""
    for d in holders:
        for k in d:
            d[k] = dev(d[k])


def assert_on_device(**groups):
    """Every array of every group ({name: array}) is DeviceLike, else HostSync naming the plain ones."""
    for group, arrays in groups.items():
        plain = [k for k, a in arrays.items() if type(a) is not DeviceLike]
        if plain:
            raise HostSync(f"{group} not device arrays (the trap never saw them): {plain[:6]}")


def trap_steps(model, x, w, steps: int = 2, beta: float = 0.5, lr: float = 1e-3):
    """Run ``steps`` training steps (``loss_and_grads`` + ``Adam.step``) of ``model`` (NumPy arrays)
    on the batch x, w inside the trap; HostSync on a host round trip or an array the trap did not
    see.  The model's params and state become DeviceLike.  Returns the last (loss, terms, grads)."""
    from jmvae_cupy.optim import Adam  # noqa: PLC0415  (optim imports the kernels this module patches)
    from jmvae_cupy.rng import Rng  # noqa: PLC0415

    Adam().step({k: v.copy() for k, v in model.params.items()},  # (compiles: device_creators)
                model.loss_and_grads(x, w, Rng(1), beta=beta)[2])
    to_device_like(model.params, model.state)
    x, w = dev(x), dev(w)
    opt, rng = Adam(lr=lr), Rng(0)
    with device_creators():
        for _ in range(steps):  # the second step runs on the moments the first one made
            loss, terms, grads = model.loss_and_grads(x, w, rng, beta=beta)
            opt.step(model.params, grads)
    assert_on_device(loss={"loss": loss}, terms=terms, grads=grads, params=model.params, state=model.state,
                     m=opt.m, v=opt.v)
    return loss, terms, grads
