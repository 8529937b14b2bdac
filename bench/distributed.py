"""Data-parallel training throughput: samples/s with 1, 2, ... ranks (docs/distributed.md).

    python bench/distributed.py --ranks 1 2                  # MNIST JMVAE-kl, global batch 100, CPU
    python bench/distributed.py --ranks 1 2 --device gpu     # one GPU per rank (NCCL when available)

For each P it launches ``mpiexec -n P python bench/distributed.py --worker ...``: every rank
builds the Trainer exactly as ``train --distributed`` does, runs one warm-up epoch, then times
``--epochs`` training epochs (no evaluation, no checkpoints) and rank 0 prints the global samples
per second (global batch x steps / seconds).  P = 1 goes through the same distributed path.

Threads per rank (``--sizing``):
  auto   each rank sizes its own BLAS and Numba pools, as ``train --distributed`` does
         (cores of the node // ranks on the node; distributed.size_thread_pools);
  off    every rank keeps all the node's cores (the thread variables set to the core count), the
         oversubscription a launcher without sizing gives: P ranks run P x cores threads;
  ``--threads N`` sets N threads per rank through the environment.
``--ordered-reduce`` times the bit-reproducible reduction instead (an all-gather of the step's
buffer, P times the bytes received, then the P rows added in rank order; not measured yet).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import ROOT, THREAD_VARS, check_counts, require_installed, thread_env  # noqa: E402


def worker(args) -> None:
    sys.path.insert(0, ROOT)
    from jmvae_cupy.backend import synchronize  # noqa: PLC0415
    from jmvae_cupy.distributed import DataParallel, init_distributed  # noqa: PLC0415
    from jmvae_cupy.train import Trainer, build_parser, config_from_args  # noqa: PLC0415

    dp = DataParallel(init_distributed(args.device), ordered_reduce=args.ordered_reduce)
    targs = build_parser().parse_args([args.dataset, "--variant", args.variant, "--batch-size", str(args.batch_size),
                                       "--train-subset", str(args.train_subset), "--dtype", args.dtype])
    cfg = config_from_args(targs)
    cfg["distributed"] = {"ranks": dp.comm.size, "exact_noise": False, "ordered_reduce": args.ordered_reduce}
    with tempfile.TemporaryDirectory() as out:
        t = Trainer(cfg, out, device=args.device, progress=False, log=lambda *a, **k: None, dist=dp)
        t.train_epoch()  # warm-up (allocations, the fused buffer, BLAS)
        t.epoch, t.step = t.epoch + 1, 0
        synchronize(t.xp)
        dp.comm.barrier()
        t0, steps = time.perf_counter(), 0
        for _ in range(args.epochs):
            steps += t.train_epoch()
            t.epoch, t.step = t.epoch + 1, 0
        synchronize(t.xp)
        dp.comm.barrier()
        sec = time.perf_counter() - t0
    if dp.comm.rank == 0:
        import numba  # noqa: PLC0415
        from threadpoolctl import threadpool_info  # noqa: PLC0415

        blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        # NumPy's own BLAS where its file says so (numba loads SciPy's too, if installed, unsized: unused here)
        blas = [p["num_threads"] for p in threadpool_info()
                if p.get("user_api") == "blas" and "numpy" in p.get("filepath", "")] or blas
        print(json.dumps({"ranks": dp.comm.size, "comm": dp.comm.backend, "steps": steps, "seconds": round(sec, 3),
                          "blas_threads": max(blas, default=None), "numba_threads": numba.get_num_threads(),
                          "samples_per_s": round(steps * args.batch_size / sec, 1),
                          "ms_per_step": round(1000 * sec / steps, 2)}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--variant", default="kl")
    p.add_argument("--batch-size", type=int, default=100, help="global batch (default 100)")
    p.add_argument("--train-subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="BLAS/Numba threads per rank (0: by --sizing)")
    p.add_argument("--sizing", choices=("auto", "off"), default="auto",
                   help="auto: ranks size their pools (cores // ranks per node); off: every rank uses all cores "
                        "(default auto)")
    p.add_argument("--ordered-reduce", action="store_true",
                   help="all-gather + rank-order sum instead of the all-reduce (train --ordered-reduce)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    check_counts(p, args, ranks=1, batch_size=1, train_subset=1, epochs=1, threads=0)
    require_installed()
    if args.worker:
        worker(args)
        return 0
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        print('error: mpiexec not found (pip install -e ".[distributed]")', file=sys.stderr)
        return 1
    cores = os.cpu_count() or 1
    print(f"# {args.dataset} {args.variant} {args.dtype}, global batch {args.batch_size}, "
          f"{'ordered reduction (all-gather), ' if args.ordered_reduce else ''}"
          f"{args.train_subset} rows x {args.epochs} epochs, device {args.device}, {cores} cores")
    for n in args.ranks:
        env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
        if args.threads or args.sizing == "off":
            env.update(thread_env(args.threads or cores))
            how = "from the environment"
        else:
            how = "sized by the ranks"
        cmd = [mpiexec, "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker"]
        for k in ("dataset", "variant", "batch_size", "train_subset", "epochs", "dtype", "device"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        cmd += ["--ordered-reduce"] if args.ordered_reduce else []
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return r.returncode
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"ranks {n} ({res['comm']}, {res['blas_threads']} BLAS / {res['numba_threads']} Numba threads per rank, "
              f"{how}): {res['samples_per_s']:8.1f} samples/s  "
              f"{res['ms_per_step']:7.2f} ms/step  {res['seconds'] / args.epochs:6.2f} s/epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
