"""Training steps for the selftest: one step on the device against the same step in float64 on
NumPy, the host round trips of a step, and the memory a step holds.

A step is ``model.loss_and_grads(x, w, Rng(seed), beta)`` followed by one ``Adam.step`` from fresh
moments, on a batch of random data of the model's shapes (:func:`random_batch`).  Both sides of a
comparison start from the same parameters (the float64 model's, cast to the device model's dtype),
the same batch (binary images and one-hot labels for MNIST, Gaussian noise for CelebA, drawn in
float32, so exact in both dtypes) and the same noise (``Rng`` draws in float64 on the host and
casts: the same numbers up to the dtype's rounding).

Tolerances (:data:`STEP_TOLERANCES`), per dtype of the device side; the reference is always the
float64 NumPy step:

* the loss and each term: relative error |a - b| / max(|b|, 1);
* every batch-norm running statistic: ``gradcheck.rel_error``, max|a - b| / max(|a| + |b|);
* every gradient: the normwise relative error ||a - b|| / ||b|| of each array, and of all of them
  taken as one vector;
* the updated parameters, element by element, against what one Adam step can make of the two
  gradients: the first step from zero moments moves p by u(g) = lr g / (|g| + eps) (the bias
  corrections cancel), and |u(a) - u(b)| <= 2 lr |a - b| / (max(|a|, |b|) + eps), so
  |p_a - p_b| <= 2 lr |g_a - g_b| / (max(|g_a|, |g_b|) + eps) + 4 eps_dtype (|p| + lr)
  (the last term: p rounded to the dtype before and after).  A gradient at rounding level can
  change sign between the dtypes and move p by up to 2 lr the other way: the bound allows that
  and nothing else.

float32 against float64.  The loss, the terms and the running statistics are continuous functions
of the inputs: float32 rounding moves them by about 1e-7 (measured on a 2-core CPU, NumPy 2.4: at
most 1.8e-7 and 6.4e-8 on all the models), tolerances 1e-5 and 1e-4.  The gradients are not: a ReLU
whose input lies within float32 rounding of 0 takes the other branch in one dtype than in the
other, and the gradient flowing through that one element changes by its full size.  Rare in the
MLPs and the 32-pixel CelebA nets (gradients within 1.4e-6 of float64 per array), it happens about
once per step in the 64-pixel CelebA encoders (half a million batch-normalised ReLU inputs at batch
16, each off by about 2e-6): up to 2.3e-3 per array and 1.6e-4 over all gradients.  Tolerances
1e-2 per array and 1e-3 overall: a kernel that computes a wrong value, or none, for part of an
array is off by far more.  float64 device against float64 NumPy (another summation order of the
same numbers, about 1e-14 expected; no ReLU input comes within that of 0): 1e-11 for the loss,
1e-9 for everything else.  That comparison (GPU only) is the precise one.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
import warnings
from typing import NamedTuple

import numpy as np

from jmvae_cupy.backend import asnumpy, to_device
from jmvae_cupy.gradcheck import rel_error
from jmvae_cupy.models import build_model
from jmvae_cupy.optim import Adam
from jmvae_cupy.rng import Rng

from .bounds import CheckFailed, eps, require

LR = 1e-3  # Adam's learning rate in the compared steps (the MNIST default)
BETA = 0.5  # the KL weight (mid warm-up: every term counts, none at full weight)
SEED = 7  # of the step's noise stream

# dtype of the device side -> tolerance of each quantity (the module docstring says why)
STEP_TOLERANCES = {
    "float32": {"loss": 1e-5, "state": 1e-4, "grad": 1e-2, "grads": 1e-3},
    "float64": {"loss": 1e-11, "state": 1e-9, "grad": 1e-9, "grads": 1e-9},
}


def random_batch(model, n: int, xp):
    """A random batch of the model's shapes, float32, on ``xp``: binary images (p = 0.5) and one-hot
    labels for Bernoulli / categorical likelihoods, standard-normal noise for Gaussian ones.
    x (n, *x_shape), w (n, w_dim).  The generator is seeded: the same batch every call."""
    gen = np.random.default_rng(0)
    a = model.arch
    if a.x_lik.name == "bernoulli":
        x = (gen.random((n, *a.x_shape)) < 0.5).astype(np.float32)
    else:
        x = gen.standard_normal((n, *a.x_shape)).astype(np.float32)
    if a.w_lik.name == "categorical":
        w = np.eye(a.w_dim, dtype=np.float32)[gen.integers(0, a.w_dim, n)]
    else:
        w = gen.standard_normal((n, a.w_dim)).astype(np.float32)
    return xp.asarray(x), xp.asarray(w)


class Step(NamedTuple):
    """What one step gave, as float64 host arrays: loss (a float), terms {name: float}, grads,
    params after the Adam step, state (running statistics) after the forward passes."""

    loss: float
    terms: dict
    grads: dict
    params: dict
    state: dict


def normwise(a, b) -> float:
    """||a - b|| / ||b|| (2-norms of the flattened arrays); 0 when both are 0, inf when only b is."""
    nb, nd = float(np.linalg.norm(b)), float(np.linalg.norm(a - b))
    return nd / nb if nb else (0.0 if nd == 0 else float("inf"))


def host64(d: dict) -> dict:
    return {k: asnumpy(v).astype(np.float64) for k, v in d.items()}


def one_step(model, x, w) -> Step:
    """One training step of ``model`` on x, w (noise Rng(SEED), beta BETA, a fresh Adam at LR)."""
    loss, terms, grads = model.loss_and_grads(x, w, Rng(SEED), beta=BETA)
    Adam(lr=LR).step(model.params, grads)
    return Step(float(loss), {k: float(v) for k, v in terms.items()}, host64(grads), host64(model.params),
                host64(model.state))


def copy_model(ref, model):
    """Give ``model`` (same architecture and variant) ``ref``'s parameters and running statistics,
    cast to its dtype and moved to its device.  Returns ``model``."""
    for d, src in ((model.params, ref.params), (model.state, ref.state)):
        for k in d:
            d[k] = to_device(src[k], model.xp, d[k].dtype)
    return model


def compare_steps(arch, variant, direction, batch: int, xp, dtype: str) -> str:
    """The step of one model on ``xp`` in ``dtype`` against the float64 NumPy step; CheckFailed naming
    the first quantity out of tolerance.  Returns the worst figures, for the report."""
    ref = build_model(arch, variant, seed=0, dtype="float64", xp=np, direction=direction)
    dev = copy_model(ref, build_model(arch, variant, seed=0, dtype=dtype, xp=xp, direction=direction))
    p0 = host64(ref.params)
    x32, w32 = random_batch(ref, batch, np)
    want = one_step(ref, x32.astype(np.float64), w32.astype(np.float64))
    got = one_step(dev, to_device(x32, xp, np.dtype(dtype)), to_device(w32, xp, np.dtype(dtype)))
    tol = STEP_TOLERANCES[dtype]
    worst = {"loss": 0.0, "state": 0.0, "grad": 0.0, "param": 0.0}
    for name, a, b in [("loss", got.loss, want.loss)] + [(f"term {k}", got.terms[k], v) for k, v in want.terms.items()]:
        err = abs(a - b) / max(abs(b), 1.0)
        require(err <= tol["loss"], f"{name}: {a!r} vs float64 NumPy {b!r}, relative error {err:.2e} > {tol['loss']:g}")
        worst["loss"] = max(worst["loss"], err)
    for k, b in want.state.items():
        err = rel_error(got.state[k], b)
        require(err <= tol["state"], f"running statistic {k}: relative error {err:.2e} > {tol['state']:g}")
        worst["state"] = max(worst["state"], err)
    require(set(got.grads) == set(want.grads), f"gradients of {sorted(set(got.grads) ^ set(want.grads))[:4]} "
                                                "on one side only")
    for k, b in want.grads.items():
        err = normwise(got.grads[k], b)
        require(err <= tol["grad"], f"gradient {k}: normwise relative error {err:.2e} > {tol['grad']:g}")
        worst["grad"] = max(worst["grad"], err)
    names = sorted(want.grads)
    err_all = normwise(*(np.concatenate([d[k].ravel() for k in names]) for d in (got.grads, want.grads)))
    require(err_all <= tol["grads"], f"all gradients: normwise relative error {err_all:.2e} > {tol['grads']:g}")
    e_dtype = eps(dtype)
    for k, p in p0.items():
        ga, gb = got.grads.get(k, 0.0), want.grads.get(k, 0.0)
        bound = 2 * LR * np.abs(ga - gb) / (np.maximum(np.abs(ga), np.abs(gb)) + 1e-8) + 4 * e_dtype * (np.abs(p) + LR)
        diff = np.abs(got.params[k] - want.params[k])
        ratio = diff / bound
        i = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.size else ()
        require(not ratio.size or ratio[i] <= 1.0,
                f"updated parameter {k}{list(i)}: {got.params[k][i]!r} vs float64 NumPy {want.params[k][i]!r}, "
                f"beyond the Adam bound {bound[i]:.2e}")
        worst["param"] = max(worst["param"], float(ratio.max()) if ratio.size else 0.0)
    return (f"loss and terms within {worst['loss']:.1e} (tol {tol['loss']:g}), running statistics {worst['state']:.1e} "
            f"({tol['state']:g}), gradients {worst['grad']:.1e} per array ({tol['grad']:g}), {err_all:.1e} in all "
            f"({tol['grads']:g}), updated parameters at {worst['param']:.2f} of the Adam bound")


# --------------------------------------------------------------------------------------------
# Host round trips on a GPU
# --------------------------------------------------------------------------------------------

# A kernel that keeps the GPU busy for ``ns`` nanoseconds of its global timer (one thread).
SPIN_SOURCE = r"""
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
"""


def gpu_step_waits(cp, cupyx, step, spin_s: float):
    """Whether ``step()`` makes the host wait for the GPU, by two detectors at once:
    * CuPy's synchronisation detection (``cupyx.allow_synchronize(False)``): a device-to-host copy
      or a device synchronisation through CuPy raises DeviceSynchronized;
    * a spin kernel queued on the current stream ahead of the step keeps the GPU busy for
      ``spin_s`` seconds: every kernel and copy of the step queues behind it, so if the host waited
      for any of them (through CuPy, Numba, an event or a pageable copy), the spin has finished by
      the time the step returns.  ``spin_s`` must exceed the step's host time (the caller measures it).

    Returns (None, host seconds) when the host did not wait, else (what waited, host seconds).
    """

    spin = cp.RawKernel(SPIN_SOURCE, "spin")
    stream = cp.cuda.get_current_stream()
    spin((1,), (1,), (np.uint64(int(spin_s * 1e9)),))
    spun = cp.cuda.Event()
    spun.record(stream)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():  # (allow_synchronize warns that it is deprecated)
            warnings.simplefilter("ignore")
            with cupyx.allow_synchronize(False):
                step()
    except cupyx.DeviceSynchronized as e:
        stream.synchronize()
        return f"CuPy detected a synchronisation ({where_raised(e)})", time.perf_counter() - t0
    host_s = time.perf_counter() - t0
    waited = spun.done  # (a query, not a wait)
    stream.synchronize()
    if waited:
        return (f"the step returned only after the GPU's {spin_s:.1f} s of queued work had finished "
                f"(host time {host_s:.2f} s): something in it waited for the GPU"), host_s
    return None, host_s


def where_raised(e: BaseException) -> str:
    """file:line of the innermost frame of the package in ``e``'s traceback (else the innermost)."""
    tb, found = e.__traceback__, None
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        if "jmvae_cupy" in path or "/kernels/" in path or found is None:
            found = f"{path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found or "no traceback"


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def peak_during(xp, fn):
    """The most bytes held at once while ``fn()`` ran beyond those held when it started: on a GPU in
    CuPy's pool (the bytes it hands out, counted by a memory hook: what the pool must have, not what
    it caches), on the CPU what NumPy allocates (tracemalloc: Python and NumPy allocations, not
    Numba's own)."""
    gc.collect()
    if xp is np:
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            fn()
            return tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()
    cp = xp
    pool = cp.get_default_memory_pool()

    class Peak(cp.cuda.memory_hook.MemoryHook):
        name = "jmvae_selftest_peak"

        def __init__(self):
            self.used = self.peak = pool.used_bytes()

        def malloc_postprocess(self, **kw):
            self.used += kw["mem_size"]
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, **kw):
            self.used -= kw["mem_size"]

    hook = Peak()
    start = hook.used
    with hook:
        fn()
        cp.cuda.get_current_stream().synchronize()
    return hook.peak - start


def step_memory(xp, arch, variant: str, batch: int, steps: int = 2) -> dict:
    """The memory of ``steps`` float32 training steps of a fresh model (the first makes Adam's
    moments): {"held_mib": the model's parameters, running statistics and the batch before the
    first step, "peak_mib": the most held during the steps, that included, "params_mib"}."""
    model = build_model(arch, variant, seed=0, dtype="float32", xp=xp)
    x, w = random_batch(model, batch, xp)
    opt, rng = Adam(lr=LR), Rng(SEED)

    def run():
        for _ in range(steps):
            _, _, grads = model.loss_and_grads(x, w, rng, beta=BETA)
            opt.step(model.params, grads)
            del grads

    held = sum(int(a.nbytes) for d in (model.params, model.state) for a in d.values()) + int(x.nbytes + w.nbytes)
    extra = peak_during(xp, run)
    mib = 2.0 ** 20
    return {"held_mib": held / mib, "peak_mib": (held + extra) / mib,
            "params_mib": sum(int(a.nbytes) for a in model.params.values()) / mib}


def assert_budget(figures: dict, budget_mib: float, what: str) -> str:
    require(figures["peak_mib"] <= budget_mib, f"{what}: peak {figures['peak_mib']:.0f} MiB exceeds the budget "
                                                f"{budget_mib:.0f} MiB")
    return (f"peak {figures['peak_mib']:.1f} MiB (budget {budget_mib:.0f}): {figures['held_mib']:.1f} MiB held "
            f"before the first step, parameters {figures['params_mib']:.1f} MiB")


__all__ = ["CheckFailed", "STEP_TOLERANCES", "random_batch", "compare_steps", "gpu_step_waits", "step_memory",
           "assert_budget", "where_raised"]
