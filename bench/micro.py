"""Micro-benchmarks behind the explanations in docs/performance.md (not tests).

    python bench/micro.py heap          # page faults per step: alone, after the floor's operands, after torch;
                                        # default glibc policy vs jmvae_cupy.hostmem.keep_freed_memory
    python bench/micro.py batchnorm     # fused batch-norm kernels vs the plain-NumPy reference, (65536, 64)
    python bench/micro.py gemm          # the same products in NumPy (OpenBLAS) and torch (MKL), 1 thread
    python bench/micro.py winograd      # conv forward + both gradients, im2col vs Winograd F(2x2, 2x2), per
                                        # correlation of the CelebA nets (the rule of conv_fast.use_winograd)
    python bench/micro.py subpixel      # col2im(dY Wm) of the CelebA deconvs, scatter vs sub-pixel, and the
                                        # choice of conv_fast.use_subpixel
    python bench/micro.py subnormal     # MNIST JMVAE-kl training on the embedded data, Adam with and without
                                        # its flush of subnormal numbers (kernels/adam.py), epoch by epoch
    python bench/micro.py adam-memory   # the MNIST JMVAE-kl Adam update against a loop with its memory traffic
                                        # and no arithmetic: right after itself, after a pause, in a step

Every measurement of ``heap`` runs in a fresh process of its own (the point is what a process's
history does to its heap).  ``--threads N`` sets the BLAS / Numba / torch threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _timing import ROOT, Local, alternate, check_counts, require_installed, thread_env, time_block  # noqa: E402

sys.path.insert(0, ROOT)


def _timed(fn, n: int, warmup: int = 3):
    """(median ms per call, minor page faults per call) over n calls after warm-up (time_block)."""
    for _ in range(warmup):
        fn()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = time_block(fn, lambda: None, 0, n)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n
    return statistics.median(times) * 1e3, faults


# ---------------------------------------------------------------------------------------------- heap
HEAP_CASES = {
    "alone": "our MNIST JMVAE-kl step (batch 100), alone in the process",
    "after-floor": "the same, after 23 steps, then building the GEMM floor's operands in the process",
    "after-torch": "the same, after 23 steps, then 5 steps of the torch twin in the process",
    "im2col": "im2col of the CelebA encoder's 2nd conv input (64, 32, 32, 64): a 67 MB matrix",
}


def heap_one(case: str, policy: str) -> dict:
    import numpy as np

    if policy == "keep":
        from jmvae_cupy.hostmem import keep_freed_memory

        keep_freed_memory()
    if case == "im2col":
        from jmvae_cupy.kernels.im2col import im2col

        x = np.random.default_rng(0).standard_normal((64, 32, 32, 64)).astype(np.float32)
        ms, faults = _timed(lambda: im2col(x, 4, 4, 2, 2, 1, 1), 5, warmup=2)
        return {"ms": ms, "faults": faults}
    import throughput as T

    model = T.make_model("mnist:kl", np)
    x, w = T.make_batch(model, 100, np)
    step = T.our_step(model, x, w)
    if case != "alone":  # some steps first, as a benchmark does (the heap's layout is its history)
        for _ in range(23):
            step()
    if case == "after-floor":
        T.floor_step(T.gemm_list(model, 100), np)
    elif case == "after-torch":
        import torch

        torch.set_num_threads(T.blas_threads()[0])
        twin = T.torch_twin(model, x, w, "cpu")
        for _ in range(5):
            twin()
    ms, faults = _timed(step, 20)
    return {"ms": ms, "faults": faults}


def heap(args) -> None:
    print(f"{'case':12s} {'policy':8s} {'faults/step':>12s} {'ms/step':>8s}   (each in a fresh process)")
    for case in HEAP_CASES:
        for policy in ("default", "keep"):
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "heap", "--one", case, policy],
                               capture_output=True, text=True, env=os.environ.copy())
            if p.returncode != 0:
                print(f"{case:12s} {policy:8s} failed: {p.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"{case:12s} {policy:8s} {r['faults']:12.0f} {r['ms']:8.1f}")
    print("cases: " + "; ".join(f"{k}: {v}" for k, v in HEAP_CASES.items()))
    print("policy keep = jmvae_cupy.hostmem.keep_freed_memory() (what python -m jmvae_cupy.train does)")


# ----------------------------------------------------------------------------------------- batchnorm
def batchnorm(args) -> None:
    import numba
    import numpy as np

    from jmvae_cupy.kernels import batchnorm as K
    from jmvae_cupy.layers import batchnorm as L

    r = np.random.default_rng(0)
    x = r.standard_normal((65536, 64)).astype(np.float32)
    dy = r.standard_normal(x.shape).astype(np.float32)
    g, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    print(f"batch norm + ReLU, training mode, rows (65536, 64) float32, Numba threads {numba.get_num_threads()}")
    for name, fwd, bwd in (("fused", K.bn_train_forward, K.bn_train_backward),
                           ("plain xp", L.bn_train_forward_xp, L.bn_train_backward_xp)):
        y, mu, _, inv = fwd(x, g, b, 1e-4, True)
        t_f, _ = _timed(lambda: fwd(x, g, b, 1e-4, True), 10)  # noqa: B023
        t_b, _ = _timed(lambda: bwd(dy, x, y, mu, inv, g, True), 10)  # noqa: B023
        print(f"  {name:10s} forward {t_f:6.2f} ms   backward {t_b:6.2f} ms")


# ---------------------------------------------------------------------------------------------- gemm
GEMM_SHAPES = [(16384, 1024, 128), (4096, 2048, 256), (1024, 4096, 256), (65536, 48, 64), (64, 4096, 1024),
               (100, 784, 512), (100, 512, 512)]


def gemm(args) -> None:
    import numpy as np

    try:
        import torch
    except ImportError:
        print("torch not importable: nothing to compare")
        return
    torch.set_num_threads(args.threads)
    r = np.random.default_rng(0)
    print(f"C = A @ B.T, float32, {args.threads} thread(s): NumPy (OpenBLAS) vs torch (MKL), median ms")
    for M, K_, N in GEMM_SHAPES:
        A = r.standard_normal((M, K_)).astype(np.float32)
        B = r.standard_normal((N, K_)).astype(np.float32)
        At, Bt = torch.from_numpy(A), torch.from_numpy(B)
        n = 200 if M * K_ * N < 1e8 else 10
        t_np, _ = _timed(lambda: A @ B.T, n)  # noqa: B023
        t_th, _ = _timed(lambda: At @ Bt.T, n)  # noqa: B023
        print(f"  M {M:6d} K {K_:5d} N {N:5d}:  numpy {t_np:7.3f}   torch {t_th:7.3f}   numpy/torch {t_np / t_th:5.2f}")


# ------------------------------------------------------------------------------------------ winograd
# (H, B, A): a 4x4 / stride-2 / pad-1 correlation of an H x H input with B channels into A channels,
# as in the CelebA nets (a conv: B = C_in; a deconv: B = C_out, its correlation runs output -> input)
WINOGRAD_CASES = [(64, 3, 64), (32, 64, 128), (16, 128, 256), (8, 256, 256)]


def winograd(args) -> None:
    import numpy as np

    from jmvae_cupy.layers.conv import conv2d_backward, conv2d_forward
    from jmvae_cupy.layers.conv_fast import use_winograd

    r = np.random.default_rng(0)
    n = 64
    print(f"conv 4x4 stride 2 pad 1, N = {n}, float32, {args.threads} thread(s): forward + backward "
          f"(dx and dW), median ms of {args.repeat}, the two methods interleaved")
    for h, b, a in WINOGRAD_CASES:
        x = r.standard_normal((n, h, h, b)).astype(np.float32).transpose(0, 3, 1, 2)  # NCHW view, channels-last
        W = (r.standard_normal((a, b, 4, 4)) * 0.05).astype(np.float32)
        dy = r.standard_normal((n, a, h // 2, h // 2)).astype(np.float32)
        steps = {}
        for method in ("im2col", "winograd"):
            def step(x=x, W=W, dy=dy, method=method):
                _, cache = conv2d_forward(x, W, None, 2, 1, method=method)
                conv2d_backward(dy, cache)

            steps[method] = step
            step()  # warm-up
        # one step of each in turn, args.repeat times: a burst of load hits both methods alike
        times, _ = alternate({m: Local(step) for m, step in steps.items()}, 0, args.repeat, args.repeat)
        row = [1e3 * statistics.median(times[m]) for m in steps]
        auto = "winograd" if use_winograd(h, h, 4, 4, (2, 2), (1, 1), b, a) else "im2col"
        print(f"  {h:2d}x{h:<2d} {b:3d} -> {a:3d} channels:  im2col {row[0]:7.1f}   winograd {row[1]:7.1f}   "
              f"winograd/im2col {row[1] / row[0]:5.2f}   auto: {auto}")


# ----------------------------------------------------------------------------------------- subpixel
# (N, OH, A, B): col2im(dY Wm) from an OH x OH grid of A channels to 2*OH x 2*OH of B channels, as
# in the CelebA decoder's deconvs (4x4, stride 2, pad 1)
SUBPIXEL_CASES = [(64, 4, 256, 256), (64, 8, 256, 128), (64, 16, 128, 64), (64, 32, 64, 3)]


def subpixel(args) -> None:
    import numpy as np

    from jmvae_cupy.layers.conv import correlate_transpose
    from jmvae_cupy.layers.conv_fast import use_subpixel

    r = np.random.default_rng(0)
    print(f"col2im(dY Wm), 4x4 stride 2 pad 1, float32, {args.threads} thread(s): median ms of "
          f"{args.repeat}, the two methods interleaved")
    for n, oh, a, b in SUBPIXEL_CASES:
        y_rows = r.standard_normal((n * oh * oh, a)).astype(np.float32)
        Wm = (r.standard_normal((a, 16 * b)) * 0.05).astype(np.float32)
        args_ = (y_rows, Wm, (n, oh, oh), (2 * oh, 2 * oh), 4, 4, (2, 2), (1, 1))
        steps = {m: (lambda m=m, a_=args_: correlate_transpose(*a_, method=m)) for m in ("scatter", "subpixel")}
        for step in steps.values():
            step()  # warm-up
        times, _ = alternate({m: Local(step) for m, step in steps.items()}, 0, args.repeat, args.repeat)
        row = [1e3 * statistics.median(times[m]) for m in steps]
        auto = "subpixel" if use_subpixel((n, oh, oh), (2 * oh, 2 * oh), b, 4, 4, (2, 2), (1, 1)) else "scatter"
        print(f"  N={n} {oh:2d}x{oh:<2d} {a:3d} -> {2 * oh:2d}x{2 * oh:<2d} {b:3d}:  scatter {row[0]:7.1f}   "
              f"subpixel {row[1]:7.1f}   subpixel/scatter {row[1] / row[0]:5.2f}   auto: {auto}")


# ----------------------------------------------------------------------------------------- subnormal
def subnormal_update(args) -> None:
    """One Adam update of 2^20 float32 parameters with zero gradients, v = 1e-4 and every m at one
    value: normal (1e-3), where ``step_size * m`` is subnormal (1e-36), itself subnormal (1e-39);
    ours with and without the flush, and torch's (when importable) with and without
    ``torch.set_flush_denormal``.  m is refilled before each timed update, so the 1e-39 column is
    the one update that meets subnormal moments carried over from before (ours then stores 0)."""
    import numpy as np

    from jmvae_cupy.optim import Adam

    n, values = 1 << 20, (1e-3, 1e-36, 1e-39)
    sides = {}
    for flush in (True, False):
        opt, p, g = Adam(flush_subnormals=flush), {"w": np.ones(n, np.float32)}, {"w": np.zeros(n, np.float32)}
        opt.step(p, g)

        def ours(value, opt=opt, p=p, g=g):
            opt.m["w"].fill(value)
            opt.v["w"].fill(1e-4)
            return _timed(lambda: opt.step(p, g), 1, warmup=0)[0]

        sides[f"ours, flush={flush}"] = ours
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        w = torch.nn.Parameter(torch.ones(n))
        topt = torch.optim.Adam([w], lr=1e-3)
        w.grad = torch.zeros(n)
        topt.step()

        for ftz in (False, True):
            def theirs(value, ftz=ftz):
                torch.set_flush_denormal(ftz)
                topt.state[w]["exp_avg"].fill_(value)
                topt.state[w]["exp_avg_sq"].fill_(1e-4)
                t = _timed(topt.step, 1, warmup=0)[0]
                torch.set_flush_denormal(False)
                return t

            sides[f"torch, set_flush_denormal({ftz})"] = theirs
    print(f"One Adam update, 2^20 float32 parameters, zero gradients, every m at one value (median ms of "
          f"{args.repeat}, interleaved):")
    print(f"  {'':34s}" + "".join(f"{f'm = {v:g}':>12s}" for v in values))
    times = {(k, v): [] for k in sides for v in values}
    for _ in range(args.repeat):
        for k, fn in sides.items():
            for v in values:
                times[k, v].append(fn(v))
    for k in sides:
        print(f"  {k:34s}" + "".join(f"{statistics.median(times[k, v]):12.2f}" for v in values))
    print()


def subnormal(args) -> None:
    """Two MNIST JMVAE-kl trainings on the embedded data (batch 100, beta 1, the same data and noise),
    one with Adam's flush (the default) and one with ``Adam(flush_subnormals=False)``, an epoch of
    each in turn; per epoch the median step and Adam-update times of each, and how many moments of
    the unflushed run are subnormal."""
    import numpy as np

    from jmvae_cupy.models import build_model
    from jmvae_cupy.optim import Adam
    from jmvae_cupy.rng import Rng
    from jmvae_cupy.train import MnistSource

    subnormal_update(args)
    source = MnistSource({"dataset": "mnist", "data_dir": None, "train_subset": 0, "batch_size": 100}, np.float32)
    runs = {}
    for flush in (True, False):
        model = build_model("mnist", "kl", seed=0, dtype="float32", xp=np)
        runs[flush] = (model, Adam(lr=1e-3, flush_subnormals=flush), Rng(1), Rng(2))
    tiny = np.finfo(np.float32).tiny
    print(f"MNIST JMVAE-kl, batch 100, {source.name}; {args.threads} thread(s); median ms per step "
          "(loss_and_grads + Adam) and per Adam update; subnormal: moments of the unflushed run below "
          f"{tiny:.2g} (of {sum(p.size for p in runs[True][0].params.values()) * 2:,})")
    print(f"{'epoch':>5s} {'steps':>6s} | {'step ms':>8s} {'Adam ms':>8s} | {'step ms':>8s} {'Adam ms':>8s} "
          f"{'subnormal':>10s}  (flush | no flush)")
    done = 0
    for epoch in range(1, args.epochs + 1):
        row = []
        for flush, (model, opt, data_rng, noise_rng) in runs.items():
            steps, batch = source.epoch(data_rng, 100)
            t_step, t_adam = [], []
            for i in range(steps):
                x, w = batch(i)
                t0 = time.perf_counter()
                _, _, grads = model.loss_and_grads(x, w, noise_rng, beta=1.0)
                t1 = time.perf_counter()
                opt.step(model.params, grads)
                t2 = time.perf_counter()
                t_step.append(t2 - t0)
                t_adam.append(t2 - t1)
            row += [1e3 * statistics.median(t_step), 1e3 * statistics.median(t_adam)]
            if not flush:
                moments = [*opt.m.values(), *opt.v.values()]
                row.append(sum(int(np.count_nonzero((a != 0) & (np.abs(a) < tiny))) for a in moments))
        done += steps
        print(f"{epoch:5d} {done:6d} | {row[0]:8.1f} {row[1]:8.2f} | {row[2]:8.1f} {row[3]:8.2f} {row[4]:10,d}",
              flush=True)
    a, b = runs[True][0].params, runs[False][0].params
    differ = sum(int(np.count_nonzero(a[k] != b[k])) for k in a)
    print(f"parameters that differ between the two runs after {done} steps: {differ:,} "
          f"(largest difference {max(float(np.abs(a[k] - b[k]).max()) for k in a):.3g})")


# --------------------------------------------------------------------------------------- adam-memory
ADAM_PRELUDES = ("in a loop of itself", "after a 15 ms pause", "after loss_and_grads")


def adam_memory(args) -> None:
    """The Adam update of MNIST JMVAE-kl (3.1 M float32 parameters in 34 arrays) against a Numba
    loop with the same memory traffic and none of the arithmetic (reads p, g, m, v; writes p, m,
    v: 28 bytes a parameter); each timed once after each prelude: 5 calls of itself (its arrays
    as warm as they get), a 15 ms sleep (what the machine's other processes do to the caches
    meanwhile), ``loss_and_grads`` (a training step: the update then runs on the gradients just
    computed).  The update is the model's own (``Adam.step`` on its parameters, moments and the
    latest gradients); the loop runs on copies of them, allocated alike, so after
    ``loss_and_grads`` its p and g are colder than the update's.  Median of ``--repeat`` rounds,
    the cases interleaved.  Where the two rows agree, the update costs what moving its bytes
    costs, and no change to its arithmetic can make it faster."""
    import numba
    import numpy as np
    import throughput as T

    from jmvae_cupy.optim import Adam
    from jmvae_cupy.rng import Rng

    @numba.njit
    def same_traffic(p, g, m, v):
        for i in range(p.shape[0]):
            a = g[i]
            m[i] = m[i] * np.float32(0.5) + a
            v[i] = v[i] * np.float32(0.5) + a
            p[i] = p[i] - a

    model = T.make_model("mnist:kl", np)
    x, w = T.make_batch(model, 100, np)
    rng, opt = Rng(0), Adam(lr=1e-3)
    latest = {}

    def grads_step():
        latest["grads"] = model.loss_and_grads(x, w, rng, beta=1.0)[2]

    for _ in range(2):
        grads_step()
        opt.step(model.params, latest["grads"])
    grads = latest["grads"]
    stream_arrays = [[a.copy().reshape(-1) for a in (model.params[k], grads[k], opt.m[k], opt.v[k])] for k in grads]

    def adam():
        opt.step(model.params, latest["grads"])

    def stream():
        for p, g, m, v in stream_arrays:
            same_traffic(p, g, m, v)

    stream()
    ops = {"Adam.step (kernels/adam.py)": adam, "same traffic, no arithmetic": stream}
    preludes = dict(zip(ADAM_PRELUDES, (None, lambda: time.sleep(0.015), grads_step)))
    times = {(o, k): [] for o in ops for k in preludes}
    for _ in range(args.repeat):
        for o, op in ops.items():
            for k, prelude in preludes.items():
                for _ in range(1 if prelude else 5):
                    (prelude or op)()
                times[o, k].append(_timed(op, 1, warmup=0)[0])
    n = sum(g.size for g in grads.values())
    mb = 28 * n / 1e6
    print(f"Adam update of MNIST JMVAE-kl: {n:,} float32 parameters in {len(grads)} arrays, {mb:.1f} MB read "
          f"and written; median ms of {args.repeat} (GB/s), {args.threads} thread(s)")
    print(f"  {'':30s}" + "".join(f"{k:>24s}" for k in preludes))
    for o in ops:
        med = [statistics.median(times[o, k]) for k in preludes]
        print(f"  {o:30s}" + "".join(f"{f'{t:.2f} ({mb / t:.0f})':>24s}" for t in med))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("heap", "batchnorm", "gemm", "winograd", "subpixel", "subnormal",
                                     "adam-memory"))
    p.add_argument("--threads", type=int, default=1, help="BLAS / Numba / torch threads (default 1)")
    p.add_argument("--repeat", type=int, default=9,
                   help="winograd, subpixel, subnormal, adam-memory: interleaved rounds (default 9)")
    p.add_argument("--epochs", type=int, default=14, help="subnormal: epochs of each training (default 14)")
    p.add_argument("--one", nargs=2, metavar=("CASE", "POLICY"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_counts(p, args, threads=1, repeat=1, epochs=1)
    require_installed()
    if args.one:  # a heap measurement in this fresh process
        print(json.dumps(heap_one(*args.one)))
        return 0
    os.environ.update(thread_env(args.threads))
    if args.what == "heap":
        heap(args)
    else:
        # the thread variables must be set before NumPy / Numba load: run in a fresh process
        if os.environ.get("_MICRO_CHILD") != "1":
            return subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:]],
                                  env={**os.environ, "_MICRO_CHILD": "1"}).returncode
        {"batchnorm": batchnorm, "gemm": gemm, "winograd": winograd, "subpixel": subpixel, "subnormal": subnormal,
         "adam-memory": adam_memory}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
