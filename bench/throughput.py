"""Benchmark (not a test): training-step throughput of the JMVAE models, against the GEMM floor
and PyTorch eager.

    python bench/throughput.py                          # the default set, a table
    python bench/throughput.py --models mnist:kl --batch-sizes 100 --steps 40 --json
    python bench/throughput.py --breakdown              # where MNIST JMVAE-kl batch 100 spends a step
    python bench/throughput.py --threads 1              # BLAS, Numba and torch threads (default: as found)

A step is ``model.loss_and_grads(x, w, rng, beta=1)`` + ``Adam.step`` on random data of the
model's shapes (binary images and one-hot labels for MNIST, Gaussian noise for CelebA).  Per
(model, batch), each side below runs in a worker process of its own (see "Timing" below for why),
driven by this one:

* ours: median step time after ``--warmup`` untimed steps -> samples/s;
* floor: the model's bare matrix products alone, the same GEMMs with the same shapes and memory
  layouts the implementation runs (dense: x@W, dy@W.T, x.T@dy; conv / transposed conv: the
  im2col GEMMs), derived by walking the model's layers (:func:`gemm_list`), on the same BLAS;
  ``% floor`` = floor time / our step time;
* torch: the same architecture and objective (reparameterisation, the KLs, Bernoulli /
  categorical / Gaussian log-likelihoods, torch.optim.Adam) in PyTorch eager mode, when torch
  is importable, with torch.set_num_threads = the BLAS threads of NumPy; ratio = ours / torch
  throughput (> 1: we are faster);
* memory: the peak RSS (ru_maxrss) of our worker and of torch's; on a GPU also the CuPy memory
  pool's size (it keeps what it ever held: its peak).

The three are timed in alternating blocks (ours, floor, torch, ours, ...; ``--blocks``), so a
change of load on a shared machine hits all alike; each block starts with untimed steps; the
waiting workers sleep on their pipe.  On a GPU every timed call is followed by a synchronize.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from math import prod

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from _timing import Local, Worker, alternate, check_counts, require_installed, serve, thread_env  # noqa: E402

from jmvae_cupy.hostmem import keep_freed_memory  # noqa: E402

DEFAULT_CONFIGS = [("mnist:jmvae", 100), ("mnist:jmvae", 1000), ("mnist:kl", 100), ("mnist:kl", 1000),
                   ("mnist:h", 100), ("mnist:h", 1000), ("celeba:kl", 64)]
DEFAULT_BATCH = {"mnist": (100, 1000), "celeba": (64,)}
BENCH_VARIANTS = ("jmvae", "kl", "h")  # the JMVAE family (the PyTorch twin covers these)


# ---------------------------------------------------------------------------------------------
# Our step
# ---------------------------------------------------------------------------------------------


def make_model(key: str, xp):
    from jmvae_cupy.models import build_model

    dataset, variant = key.split(":")
    return build_model(dataset, variant, seed=0, dtype="float32", xp=xp)


def make_batch(model, n: int, xp):
    """A random float32 batch of the model's shapes (x (n, *x_shape), w (n, w_dim)) on ``xp``: the
    selftest's, jmvae_cupy.selftest.steps.random_batch."""
    from jmvae_cupy.selftest.steps import random_batch

    return random_batch(model, n, xp)


def our_step(model, x, w):
    from jmvae_cupy.optim import Adam
    from jmvae_cupy.rng import Rng

    rng, opt = Rng(0), Adam(lr=1e-3)

    def step():
        _, _, grads = model.loss_and_grads(x, w, rng, beta=1.0)
        opt.step(model.params, grads)

    return step


# ---------------------------------------------------------------------------------------------
# The GEMM floor: the products the implementation performs, derived from the model's layers
# ---------------------------------------------------------------------------------------------


def gemm_list(model, n: int) -> list:
    """Every matrix product of one training step as (what, (a_shape, a_transposed), (b_shape,
    b_transposed)): a_transposed means the operand is the transpose (of the last two axes) of a
    C-ordered array of a_shape, as in the implementation (``dy @ W.T``, ``x.T @ dy``).

    Walks every component of the model (all of them run forward and backward in a step):
    Dense (N, D_in) -> (N, D_out): x@W, dy@W.T, x.T@dy;  Conv2D with M = N*OH*OW rows and
    K = KH*KW*C_in: col@Wm.T, dY.T@col, dY@Wm;  Deconv2D with M = N*H*W input pixels and
    K = KH*KW*C_out: X@Wm, dcol@Wm.T, X.T@dcol;  GaussianHead: a dense layer D_in -> 2 D_z.
    A conv or deconv layer that runs as Winograd F(2x2, 2x2) (``conv_fast.use_winograd``, as the
    layers decide) does 9 GEMMs per product instead, batched: with T = N * tiles, B and A the
    channels of its correlation's input and output: V@U (9, T, 4B) x (9, 4B, A), dM.T@V and
    dM@U.T (U stored transposed, (9, A, 4B), as the layers keep it).  The input gradient of a
    component in ``model.data_inputs`` is not computed (its input is data), so its first layer has
    no dx product.
    """
    from jmvae_cupy.layers.conv_fast import use_winograd
    from jmvae_cupy.layers.im2col import conv_outsize, deconv_outsize
    from jmvae_cupy.models.base import GaussianHead
    from jmvae_cupy.nets import Conv2D, Deconv2D, Dense, Flatten, Reshape

    skip_dx = set(getattr(model, "data_inputs", ()))
    out = []

    def dense(name, d_in, d_out, need_dx):
        out.append((f"{name} x@W", ((n, d_in), False), ((d_in, d_out), False)))
        if need_dx:
            out.append((f"{name} dy@W.T", ((n, d_out), False), ((d_in, d_out), True)))
        out.append((f"{name} x.T@dy", ((n, d_in), True), ((n, d_out), False)))

    def winograd(name, t, b, a, need_dx, deconv):
        """The 9-fold batched products of a Winograd layer (forward / backward roles per ``deconv``)."""
        fwd = (f"{name} V@U", ((9, t, 4 * b), False), ((9, a, 4 * b), True))
        adj = (f"{name} dM@U.T", ((9, t, a), False), ((9, a, 4 * b), False))
        out.extend([adj, fwd] if deconv else [fwd] + ([adj] if need_dx else []))
        out.append((f"{name} dM.T@V", ((9, t, a), True), ((9, t, 4 * b), False)))

    for cname, comp in model.components.items():
        if isinstance(comp, GaussianHead):
            dense(cname, comp.d_in, 2 * comp.d_z, True)
            continue
        shape = comp.in_shape
        for i, layer in enumerate(comp.layers):
            name = f"{cname}.{i}"
            need_dx = not (i == 0 and cname in skip_dx and hasattr(layer, "param_grads"))  # as Net.backward
            if isinstance(layer, Dense):
                dense(name, shape[0], layer.units, need_dx)
                shape = (layer.units,)
            elif isinstance(layer, Conv2D):
                c, h, wd = shape
                k, s, p = layer.ksize, layer.stride, layer.pad
                oh, ow = conv_outsize(h, k, s, p), conv_outsize(wd, k, s, p)
                m, kk = n * oh * ow, k * k * c
                if use_winograd(h, wd, k, k, (s, s), (p, p), c, layer.channels):
                    winograd(name, m // 4, c, layer.channels, need_dx, deconv=False)
                else:
                    out.append((f"{name} col@Wm.T", ((m, kk), False), ((layer.channels, kk), True)))
                    out.append((f"{name} dY.T@col", ((m, layer.channels), True), ((m, kk), False)))
                    if need_dx:
                        out.append((f"{name} dY@Wm", ((m, layer.channels), False), ((layer.channels, kk), False)))
                shape = (layer.channels, oh, ow)
            elif isinstance(layer, Deconv2D):
                c, h, wd = shape
                k, s, p = layer.ksize, layer.stride, layer.pad
                m, kk = n * h * wd, k * k * layer.channels
                oh, ow = deconv_outsize(h, k, s, p), deconv_outsize(wd, k, s, p)
                if use_winograd(oh, ow, k, k, (s, s), (p, p), layer.channels, c):
                    winograd(name, m // 4, layer.channels, c, True, deconv=True)
                else:
                    out.append((f"{name} X@Wm", ((m, c), False), ((c, kk), False)))
                    out.append((f"{name} dcol@Wm.T", ((m, kk), False), ((c, kk), True)))
                    out.append((f"{name} X.T@dcol", ((m, c), True), ((m, kk), False)))
                shape = (layer.channels, oh, ow)
            elif isinstance(layer, Flatten):
                shape = (prod(shape),)
            elif isinstance(layer, Reshape):
                shape = tuple(layer.out_shape)
    return out


def gemm_flops(gemms) -> float:
    total = 0.0
    for _, (a, ta), (b, tb) in gemms:
        batch = a[0] if len(a) == 3 else 1
        m, k = (a[-1], a[-2]) if ta else a[-2:]
        n = b[-2] if tb else b[-1]
        total += 2.0 * batch * m * k * n
    return total


def floor_step(gemms, xp):
    """All the products of ``gemms`` on persistent random operands (outputs allocated, as in the layers)."""
    import numpy as np

    gen = np.random.default_rng(1)
    ops = []
    for _, (a, ta), (b, tb) in gemms:
        A = xp.asarray(gen.standard_normal(a).astype(np.float32))
        B = xp.asarray(gen.standard_normal(b).astype(np.float32))
        ops.append((A.swapaxes(-1, -2) if ta else A, B.swapaxes(-1, -2) if tb else B))

    def step():
        for A, B in ops:
            A @ B

    return step


# ---------------------------------------------------------------------------------------------
# The PyTorch twin: the same components, objective and optimiser
# ---------------------------------------------------------------------------------------------


def torch_twin(model, x, w, device):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from jmvae_cupy.backend import asnumpy
    from jmvae_cupy.distributions import VAR_FLOOR
    from jmvae_cupy.layers.im2col import conv_outsize, deconv_outsize
    from jmvae_cupy.models.base import GaussianHead
    from jmvae_cupy.nets import BatchNorm, Conv2D, Deconv2D, Dense, Flatten, ReLU, Reshape

    class Head(nn.Module):
        def __init__(self, d_in, d_z):
            super().__init__()
            self.lin, self.d_z = nn.Linear(d_in, 2 * d_z), d_z

        def forward(self, h):
            o = self.lin(h)
            return o[:, : self.d_z], F.softplus(o[:, self.d_z:]) + VAR_FLOOR

    def build(comp):
        if isinstance(comp, GaussianHead):
            return Head(comp.d_in, comp.d_z)
        mods, shape = [], comp.in_shape
        for layer in comp.layers:
            if isinstance(layer, Dense):
                mods.append(nn.Linear(shape[0], layer.units, bias=layer.bias))
                shape = (layer.units,)
            elif isinstance(layer, (Conv2D, Deconv2D)):
                cls = nn.Conv2d if isinstance(layer, Conv2D) else nn.ConvTranspose2d
                mods.append(cls(shape[0], layer.channels, layer.ksize, layer.stride, layer.pad, bias=layer.bias))
                size = conv_outsize if isinstance(layer, Conv2D) else deconv_outsize
                shape = (layer.channels, *(size(d, layer.ksize, layer.stride, layer.pad) for d in shape[1:]))
            elif isinstance(layer, BatchNorm):
                mods.append(nn.BatchNorm1d(shape[0]) if len(shape) == 1 else nn.BatchNorm2d(shape[0]))
            elif isinstance(layer, ReLU):
                mods.append(nn.ReLU())
            elif isinstance(layer, Flatten):
                mods.append(nn.Flatten())
                shape = (prod(shape),)
            elif isinstance(layer, Reshape):
                mods.append(nn.Unflatten(1, tuple(layer.out_shape)))
                shape = tuple(layer.out_shape)
            else:
                raise TypeError(f"no torch twin for {layer!r}")
        return nn.Sequential(*mods)

    torch.manual_seed(0)
    nets = nn.ModuleDict({k.replace(".", "_"): build(c) for k, c in model.components.items()}).to(device)
    net = lambda name: nets[name.replace(".", "_")]  # noqa: E731
    a, alpha = model.arch, model.alpha
    X = torch.as_tensor(asnumpy(x), device=device)
    W = torch.as_tensor(asnumpy(w), device=device)
    Xf = X.reshape(X.shape[0], -1)

    def loglik(lik, target, out):
        out = out.reshape(out.shape[0], -1)
        if lik.name == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, target, reduction="none").sum(1)
        if lik.name == "categorical":
            return (target * F.log_softmax(out, dim=1)).sum(1)
        return -0.5 * ((target - out) ** 2).sum(1) / lik.var  # constant dropped: no gradient

    def kl(m1, v1, m2=None, v2=None):
        if m2 is None:
            return 0.5 * (v1 + m1 * m1 - 1.0 - torch.log(v1)).sum(1)
        return 0.5 * (torch.log(v2) - torch.log(v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0).sum(1)

    def sample(mu, var):
        return mu + torch.sqrt(var) * torch.randn_like(mu)

    def trunk():
        h = torch.cat([net("qxw.x")(X), net("qxw.w")(W)], dim=1)
        return net("qxw.joint")(h) if "qxw.joint" in model.components else h

    def loss_fn():
        h = trunk()
        if model.variant == "h":
            mu1, v1 = net("qz1.head")(h)
            mu2, v2 = net("qz2.head")(net("qz2.net")(h))
            z1, z2 = sample(mu1, v1), sample(mu2, v2)
            pm, pv = net("pz1.head")(net("pz1.net")(z2))
            kls = kl(mu2, v2) + kl(mu1, v1, pm, pv)
            z = z1
        else:
            mu, var = net("qxw.head")(h)
            z = sample(mu, var)
            kls = kl(mu, var)
            if model.variant == "kl":
                mux, vx = net("qx.head")(net("qx.net")(X))
                muw, vw = net("qw.head")(net("qw.net")(W))
                kls = kls + alpha * (kl(mu, var, mux, vx) + kl(mu, var, muw, vw))
        rec = loglik(a.x_lik, Xf, net("px")(z)) + loglik(a.w_lik, W, net("pw")(z))
        return -(rec - kls).mean()

    opt = torch.optim.Adam(nets.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step


# ---------------------------------------------------------------------------------------------
# Timing: one worker process per side (bench/_timing.py says why)
# ---------------------------------------------------------------------------------------------

SIDES = ("ours", "floor", "torch")


def build_side(side: str, key: str, batch: int, device: str):
    """(step, sync, info) of one side for one (model, batch); ``step`` is None when unavailable."""
    import numpy as np

    from jmvae_cupy import backend

    xp = backend.select_device(device)
    model = make_model(key, xp)
    x, w = make_batch(model, batch, xp)
    sync = lambda: backend.synchronize(xp)  # noqa: E731
    info = {"device": backend.device_name(xp)}
    if xp is not np:  # the CuPy pool keeps what it ever held: its peak
        info["quit_extra"] = lambda: {"gpu_pool_mb": xp.get_default_memory_pool().total_bytes() / 2**20}
    if side == "ours":
        import numba

        threads, blas = blas_threads()
        info.update(blas=blas, blas_threads=threads, numba_threads=numba.get_num_threads())
        return our_step(model, x, w), sync, info
    if side == "floor":
        gemms = gemm_list(model, batch)
        info.update(gemms=len(gemms), gemm_flop=gemm_flops(gemms))
        return floor_step(gemms, xp), sync, info
    if side == "adam":
        return adam_step(model, x, w), sync, info
    if side == "grads":  # the step without the optimiser
        from jmvae_cupy.rng import Rng

        rng = Rng(0)
        return (lambda: model.loss_and_grads(x, w, rng, beta=1.0)), sync, info
    if side == "torch":
        try:
            import torch
        except ImportError as e:
            return None, sync, {"unavailable": str(e)}
        dev = "cpu" if xp is np else "cuda"
        torch.set_num_threads(blas_threads()[0])
        inner = torch_twin(model, x, w, dev)
        tsync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)
        info.update(version=torch.__version__, threads=torch.get_num_threads(), device=dev)
        return inner, tsync, info  # (torch's own wait; CuPy's would be a second one in the timed step)
    raise ValueError(f"unknown side {side!r}")


def adam_step(model, x, w):
    """Adam alone: one update of a copy of the parameters with a fixed gradient."""
    from jmvae_cupy.optim import Adam
    from jmvae_cupy.rng import Rng

    _, _, grads = model.loss_and_grads(x, w, Rng(0))
    params = {k: v.copy() for k, v in model.params.items()}
    opt = Adam()
    return lambda: opt.step(params, grads)


def worker(side: str, key: str, batch: int, device: str) -> Worker:
    return Worker(side, __file__, [side, key, batch, "--device", device])


def run_config(key: str, batch: int, args) -> dict:
    """Benchmark one (model, batch): a worker per side, alternating blocks; a JSON-able dict."""
    workers, mem = {}, {}
    try:
        for side in SIDES:
            if side == "torch" and args.no_torch:
                continue
            wk = worker(side, key, batch, args.device)
            workers[side] = wk
        for side in [side for side, wk in workers.items() if not wk.available]:  # e.g. no torch
            workers.pop(side).close()
        times, _ = alternate(workers, args.warmup, args.steps, args.blocks)
    finally:
        for side, wk in workers.items():
            mem[side] = wk.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    ours, floor = workers["ours"].info, workers["floor"].info
    res = {
        "model": key, "batch": batch, "device": ours["device"], "dtype": "float32",
        "blas": ours["blas"], "blas_threads": ours["blas_threads"], "numba_threads": ours["numba_threads"],
        "steps": len(times["ours"]),
        "step_s": med["ours"], "samples_per_s": batch / med["ours"],
        "floor_s": med["floor"], "floor_pct": 100.0 * med["floor"] / med["ours"],
        "gemms": floor["gemms"], "gemm_gflop": floor["gemm_flop"] / 1e9,
        "floor_gflops": floor["gemm_flop"] / med["floor"] / 1e9,
        "rss_ours_mb": mem["ours"]["rss_mb"],
    }
    if "gpu_pool_mb" in mem["ours"]:
        res["gpu_pool_peak_mb"] = mem["ours"]["gpu_pool_mb"]
    if "torch" in workers:
        res.update({"torch": workers["torch"].info, "torch_step_s": med["torch"],
                    "torch_samples_per_s": batch / med["torch"], "ours_over_torch": med["torch"] / med["ours"],
                    "rss_torch_mb": mem["torch"]["rss_mb"]})
    return res


def blas_threads():
    """(threads, description) of NumPy's BLAS, via threadpoolctl when installed."""
    try:
        import threadpoolctl
    except ImportError:
        env = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        return (int(env) if env else os.cpu_count()), "threadpoolctl not installed: from the environment"
    import numpy  # noqa: F401  (load its BLAS)

    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") == "blas":
            desc = f"{info.get('internal_api')} {info.get('version')} ({info.get('architecture')})"
            return int(info["num_threads"]), desc
    return os.cpu_count(), "unknown BLAS"


# ---------------------------------------------------------------------------------------------
# Breakdown of one step
# ---------------------------------------------------------------------------------------------

CATEGORIES = [  # (category, predicate on (file, function)) -- first match wins
    ("gemm (+bias add)", lambda f, fn: f.endswith(("layers/dense.py", "layers/conv.py", "layers/deconv.py",
                                                    "layers/conv_fast.py", "layers/winograd.py"))
     and fn not in ("_check", "use_winograd", "use_subpixel", "is_winograd")),
    ("im2col/col2im, Winograd transforms", lambda f, fn: f.endswith(("layers/im2col.py", "kernels/im2col.py",
                                                                      "kernels/winograd.py"))),
    ("kernels reparam/KL", lambda f, fn: "kernels/reparam.py" in f or "kernels/gauss_kl.py" in f
     or "kernels/_dispatch.py" in f),
    ("optimiser", lambda f, fn: "kernels/adam.py" in f or f.endswith("jmvae_cupy/optim.py")),
    ("elementwise (act., lik., bn)", lambda f, fn: f.endswith(("activations.py", "distributions.py", "batchnorm.py",
                                                                "kernels/bias_relu.py", "kernels/bernoulli.py",
                                                                "kernels/stable.py"))),
    ("numpy builtins (reductions, concat, alloc)", lambda f, fn: f == "~" or "numpy" in f),
    ("rng", lambda f, fn: f.endswith("jmvae_cupy/rng.py")),
]


def category(f: str, fn: str) -> str:
    """The breakdown's category of function ``fn`` of file ``f`` (cProfile's names): the first of
    CATEGORIES whose predicate holds, else "python glue"."""
    return next((c for c, pred in CATEGORIES if pred(f, fn)), "python glue")


def breakdown(args) -> dict:
    """Attribute a step of one model (the first of ``--models``, default MNIST JMVAE-kl; the first
    of ``--batch-sizes``, default that dataset's first) to categories.

    Method: cProfile over ``--steps`` steps; every function's *own* time (tottime) goes to the
    category of the file it is in (CATEGORIES; numpy's C functions and methods such as ufunc
    reductions, concatenate and zeros_like form their own category; everything else -- the
    models' and nets' Python glue -- is "python glue").  The shares are then scaled to the
    median un-profiled step time (cProfile's own per-call cost inflates the glue).  The GEMM
    floor, the step without its Adam update (``loss_and_grads`` alone) and the Adam update alone
    are also timed, each in a worker process, as a cross-check.
    """
    import cProfile
    import pstats

    import numpy as np

    key = (args.models or ["mnist:kl"])[0]
    batch = (args.batch_sizes or DEFAULT_BATCH[key.split(":")[0]])[0]
    keep_freed_memory()
    model = make_model(key, np)
    x, w = make_batch(model, batch, np)
    step = our_step(model, x, w)

    others = {side: worker(side, key, batch, "cpu") for side in ("floor", "grads", "adam")}
    try:
        times, _ = alternate({"step": Local(step), **others}, args.warmup, args.steps, args.blocks)
    finally:
        for wk in others.values():
            wk.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    prof.disable()
    stats = pstats.Stats(prof).stats
    own = {}
    for (f, _, fn), (_, _, tt, _, _) in stats.items():
        cat = category(f, fn)
        own[cat] = own.get(cat, 0.0) + tt
    total = sum(own.values())
    shares = {k: v / total for k, v in sorted(own.items(), key=lambda kv: -kv[1])}
    return {"model": key, "batch": batch, "step_ms": med["step"] * 1e3, "floor_ms": med["floor"] * 1e3,
            "adam_alone_ms": med["adam"] * 1e3, "grads_alone_ms": med["grads"] * 1e3,
            "categories_ms": {k: s * med["step"] * 1e3 for k, s in shares.items()},
            "categories_pct": {k: 100 * s for k, s in shares.items()}}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "unset"),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset")}


def print_table(results):
    r0 = results[0]
    torch_line = f"torch {r0['torch']['version']} x{r0['torch']['threads']} threads" if "torch" in r0 else "no torch"
    print(f"device {r0['device']}; BLAS {r0['blas']} x{r0['blas_threads']} threads; Numba x{r0['numba_threads']} "
          f"threads; {torch_line}; "
          f"median of {r0['steps']} steps")
    hdr = (f"{'model':12s} {'N':>5s} {'ours/s':>9s} {'ms/step':>8s} {'floor ms':>8s} {'%floor':>6s} "
           f"{'torch/s':>9s} {'ours/torch':>10s} {'GFLOP':>6s} {'RSS MB ours/torch':>17s}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        t = f"{'-':>9s} {'-':>10s}"
        if "torch_step_s" in r:
            t = f"{r['torch_samples_per_s']:9.0f} {r['ours_over_torch']:10.2f}"
        rss = f"{r['rss_ours_mb']:.0f}" + (f" / {r['rss_torch_mb']:.0f}" if "rss_torch_mb" in r else "")
        print(f"{r['model']:12s} {r['batch']:5d} {r['samples_per_s']:9.0f} {r['step_s'] * 1e3:8.1f} "
              f"{r['floor_s'] * 1e3:8.1f} {r['floor_pct']:6.1f} {t} {r['gemm_gflop']:6.2f} {rss:>17s}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, help="e.g. mnist:jmvae mnist:kl mnist:h celeba:kl")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: 100 1000 (MNIST), 64 (CelebA)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each block (default 2)")
    p.add_argument("--blocks", type=int, default=4, help="alternating blocks (default 4)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS, Numba and torch threads (default: as found)")
    p.add_argument("--device", default="cpu", help="cpu | gpu | auto (default cpu)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--breakdown", action="store_true",
                   help="attribute a step of the first --models / --batch-sizes (default mnist:kl, 100) to categories")
    p.add_argument("--serve", nargs=3, metavar=("SIDE", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_counts(p, args, batch_sizes=1, steps=1, warmup=0, blocks=1, threads=1)
    for key in args.models or ():
        dataset, _, variant = key.partition(":")
        if dataset not in DEFAULT_BATCH or variant not in BENCH_VARIANTS:
            p.error(f"--models: unknown model {key!r}: choose DATASET:VARIANT with DATASET one of "
                    f"{', '.join(DEFAULT_BATCH)} and VARIANT one of {', '.join(BENCH_VARIANTS)}")
    require_installed()
    if args.serve:
        side, key, batch = args.serve
        return serve(lambda: build_side(side, key, int(batch), args.device))
    from jmvae_cupy.backend import BackendError, select_device

    try:  # once, here: a worker would die of it with a traceback, after the driver had started the others
        select_device(args.device)
    except BackendError as e:
        print(f"error: --device {args.device}: {e}", file=sys.stderr)
        return 2
    if args.threads is not None:
        os.environ.update(thread_env(args.threads))  # the workers inherit it
    if args.breakdown:
        out = {"machine": machine(), "breakdown": breakdown(args)}
        if args.json:
            print(json.dumps(out, indent=1))
        else:
            b = out["breakdown"]
            print(f"{b['model']} batch {b['batch']}: step {b['step_ms']:.1f} ms (median); GEMM floor alone "
                  f"{b['floor_ms']:.1f} ms; loss_and_grads alone {b['grads_alone_ms']:.1f} ms; "
                  f"Adam step alone {b['adam_alone_ms']:.1f} ms")
            for k, v in b["categories_ms"].items():
                print(f"  {k:44s} {v:7.2f} ms  {b['categories_pct'][k]:5.1f} %")
        return 0
    if args.models is None and args.batch_sizes is None:
        configs = DEFAULT_CONFIGS
    else:
        models = args.models or ["mnist:jmvae", "mnist:kl", "mnist:h", "celeba:kl"]
        configs = [(m, b) for m in models for b in (args.batch_sizes or DEFAULT_BATCH[m.split(":")[0]])]
    results = []
    for key, batch in configs:
        try:
            results.append(run_config(key, batch, args))
        except RuntimeError as e:
            print(f"error: {key} batch {batch}: {e}", file=sys.stderr)
            return 1
        if not args.json:
            print(f"  done {key} batch {batch}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"machine": machine(), "results": results}, indent=1))
    else:
        print(json.dumps(machine()))
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
