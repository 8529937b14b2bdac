"""Benchmark (not a test): forward + backward of the CelebA conv encoder and decoder.

    python bench/conv.py                    # batch 64, float32, 24 timed steps per side, on the CPU
    python bench/conv.py --threads 1 --repeat 48 --blocks 16
    python bench/conv.py --device gpu       # CuPy against PyTorch CUDA (each timed step synchronised)

Encoder  q(z|x) trunk: x (N, 3, 64, 64) -> C64R-C128BR-C256BR-C256BR-F-D1024R -> (N, 1024)
Decoder  p(x|z):       z (N, 128)       -> D4096R-DC256BR-DC128BR-DC64BR-DC3    -> (N, 3, 64, 64)

One step = Net.forward(train=True) + Net.backward with a random upstream gradient, as in
training: the decoder returns dz (z comes from the encoder), the encoder does not compute a
gradient for its input image (data; ``need_dx=False``; ``--input-grad`` adds it on both sides).
Prints the median step time, and, when PyTorch is importable, the same
networks in PyTorch (same shapes, bias dropped before batch norm as here, same thread count)
and the ratio torch_time / our_time (>= 1: we are faster; the issue's target is >= 0.7),
timed in alternating blocks so that other load on the machine hits both sides alike, each side in
a worker process of its own (bench/_timing.py says why).  ``--device gpu``: our nets on CuPy arrays,
PyTorch's on CUDA, each timed step followed by its library's synchronize.
Thread counts: NumPy's BLAS reads OMP_NUM_THREADS / OPENBLAS_NUM_THREADS at import;
``--threads`` sets both for the workers, and torch.set_num_threads to match.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import ROOT, Worker, alternate, block_ratio, check_counts, require_installed, serve, thread_env  # noqa: E402

NETS = {"encoder": ("C64R-C128BR-C256BR-C256BR-F-D1024R", (3, 64, 64)),
        "decoder": ("D4096R-DC256BR-DC128BR-DC64BR-DC3", (128,))}


def ours(spec, in_shape, batch, need_dx, device):
    """One training step of our Net: forward (train=True) + backward (dx to the input if need_dx)."""
    import numpy as np

    from jmvae_cupy import backend
    from jmvae_cupy.nets import Net
    from jmvae_cupy.rng import Rng

    xp = backend.select_device(device)
    net = Net(spec, in_shape)
    params, state = net.init(Rng(0), np.float32, xp)
    gen = np.random.default_rng(0)
    x = xp.asarray(gen.standard_normal((batch, *in_shape)).astype(np.float32))
    dy = xp.asarray(gen.standard_normal((batch, *net.out_shape)).astype(np.float32))

    def step():
        _, caches = net.forward(params, state, x, train=True)
        net.backward(dy, caches, need_dx=need_dx)

    return step, lambda: backend.synchronize(xp), {"device": backend.device_name(xp)}


def torch_nets():
    import torch.nn as nn

    def cbr(ci, co):
        return [nn.Conv2d(ci, co, 4, 2, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU()]

    def dcbr(ci, co):
        return [nn.ConvTranspose2d(ci, co, 4, 2, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU()]

    encoder = nn.Sequential(
        nn.Conv2d(3, 64, 4, 2, 1), nn.ReLU(), *cbr(64, 128), *cbr(128, 256), *cbr(256, 256),
        nn.Flatten(), nn.Linear(4096, 1024), nn.ReLU(),
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.Linear(128, 4096), nn.ReLU(), nn.Unflatten(1, (256, 4, 4)),
        *dcbr(256, 256), *dcbr(256, 128), *dcbr(128, 64), nn.ConvTranspose2d(64, 3, 4, 2, 1),
    )  # fmt: skip
    return encoder, decoder


def theirs(name, in_shape, batch, need_dx, threads, device):
    """One training step of the PyTorch twin of ``name``: forward + backward (dx to the input if need_dx)."""
    try:
        import torch
    except ImportError as e:
        return None, None, {"unavailable": str(e)}
    import numpy as np

    from jmvae_cupy import backend

    if threads is not None:
        torch.set_num_threads(threads)
    dev = "cpu" if backend.select_device(device) is np else "cuda"
    net = dict(zip(("encoder", "decoder"), torch_nets()))[name].to(dev)
    torch.manual_seed(0)
    x = torch.randn(batch, *in_shape, device=dev)
    with torch.no_grad():
        dy = torch.randn_like(net(x))

    def step():
        xx = x.detach().requires_grad_(need_dx)
        net.zero_grad(set_to_none=True)
        net(xx).backward(dy)

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return step, sync, {"version": torch.__version__, "threads": torch.get_num_threads(), "device": dev}


def build(side, name, batch, need_dx, threads, device):
    spec, in_shape = NETS[name]
    if side == "ours":
        return ours(spec, in_shape, batch, need_dx, device)
    return theirs(name, in_shape, batch, need_dx, threads, device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before each block (default 1)")
    p.add_argument("--repeat", type=int, default=24, help="timed steps per network and library (default 24)")
    p.add_argument("--blocks", type=int, default=8, help="alternating blocks the steps are split into (default 8)")
    p.add_argument("--threads", type=int, default=None, help="BLAS / Numba / torch threads (default: as found)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--input-grad", action="store_true", help="the encoder computes dx to the image too (both sides)")
    p.add_argument("--device", default="cpu", help="cpu | gpu | auto (default cpu): CuPy and PyTorch CUDA on a GPU")
    p.add_argument("--serve", nargs=3, metavar=("SIDE", "NET", "NEED_DX"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_counts(p, args, batch=1, warmup=0, repeat=1, blocks=1, threads=1)
    require_installed()
    if args.serve:
        side, name, need_dx = args.serve
        return serve(lambda: build(side, name, args.batch, need_dx == "1", args.threads, args.device))
    if args.threads is not None:
        os.environ.update(thread_env(args.threads))  # the workers inherit it

    sys.path.insert(0, ROOT)
    import numpy as np

    from jmvae_cupy.backend import BackendError, device_name, select_device

    try:  # once, here: a worker would die of it with a traceback
        where = device_name(select_device(args.device))
    except BackendError as e:
        print(f"error: --device {args.device}: {e}", file=sys.stderr)
        return 2
    print(f"batch {args.batch}, float32, {where}; median of {args.repeat} steps in {args.blocks} alternating blocks, "
          f"{args.warmup} untimed steps before each block")
    print(f"numpy {np.__version__}; os.cpu_count() = {os.cpu_count()}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    load0 = os.getloadavg()[0]
    common = ["--batch", args.batch, "--device", args.device]
    common += ["--threads", args.threads] if args.threads is not None else []
    for name, (spec, _) in NETS.items():
        need_dx = "1" if (name == "decoder" or args.input_grad) else "0"
        workers = {}
        try:
            for side in ("ours",) + (() if args.no_torch else ("torch",)):
                workers[side] = Worker(side, __file__, [side, name, need_dx, *common])
            for side in [side for side, w in workers.items() if not w.available]:  # e.g. no torch
                if name == "encoder":
                    print(f"{side} not importable ({workers[side].info['unavailable']}): no comparison")
                workers.pop(side).close()
            if "torch" in workers and name == "encoder":
                info = workers["torch"].info
                print(f"torch {info['version']} on {info['device']}; torch.get_num_threads() = {info['threads']}")
            times, blocks = alternate(workers, args.warmup, args.repeat, args.blocks)
        finally:
            for w in workers.values():
                w.close()
        line = f"{name:8s} {spec:36s} ours {statistics.median(times['ours']) * 1e3:7.1f} ms"
        if "torch" in workers:
            line += (f"   torch {statistics.median(times['torch']) * 1e3:7.1f} ms"
                     f"   torch/ours {block_ratio(blocks, 'torch', 'ours'):4.2f}")
        print(line, flush=True)
    print(f"load average (1 min) before / after: {load0:.2f} / {os.getloadavg()[0]:.2f} "
          f"(other processes on the machine skew the times; the ratio is taken block by block)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
