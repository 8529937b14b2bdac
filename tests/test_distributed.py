"""Data-parallel training (jmvae_cupy/distributed.py, train --distributed) under ``mpiexec -n P``.

Equalities (4 Adam steps, --exact-noise):

* P ranks with --ordered-reduce vs one process with --micro-batches P and the same global batch:
  BIT-IDENTICAL (parameters, Adam moments, batch-norm running statistics, the metrics), float64
  and float32, P = 2 and 3, MNIST and CelebA with batch norm: the same rows, the same noise rows,
  and the same arithmetic (mean_in_order_: the parts' buffers added left to right, then / P).
* P ranks vs one plain process with batch B: float64 parameters to 1e-12 absolute (the mean of
  P local means vs one mean of B rows: another summation order; measured about 3e-14, and not
  bit-identical); float32: 1e-5 absolute for all but a handful of entries whose first Adam steps
  are lr * sign(g) with g at rounding level, so a sign can flip: those may differ by up to 2 lr per
  step (checked: at most 0.1% of entries).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jmvae_cupy import checkpoint
from jmvae_cupy.distributed import (
    NCCL_COMM_METHODS,
    NCCL_NAMES,
    THREAD_VARS,
    Comm,
    FlatBuffer,
    GlobalNoiseRng,
    StepMean,
    mean_in_order_,
)
from jmvae_cupy.rng import Rng
from jmvae_cupy.train import main as train_main

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                               reason='mpi4py / mpiexec not available (pip install -e ".[distributed]")')

BASE = ["mnist", "--train-subset", "200", "--batch-size", "100", "--no-progress", "--device", "cpu",
        "--sample-every", "1"]
TINY = BASE + ["--epochs", "2"]


# One BLAS / Numba thread in every process, ranks and the single process they are compared with: bit
# identity needs the same summation orders, and a thread count changes them.
ONE_THREAD = {v: "1" for v in THREAD_VARS}


def main(argv):
    """train.main in this process with one BLAS and Numba thread (ONE_THREAD), like the ranks."""
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            return train_main(argv)
    finally:
        numba.set_num_threads(before)


def _mpirun(args, n=2, env=None, timeout=120):
    cmd = [MPIEXEC, "-n", str(n), sys.executable] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "JMVAE_DEVICE": "cpu", **ONE_THREAD, **(env or {})})


def _train_mpi(args, n=2, env=None, timeout=120):
    return _mpirun(["-m", "jmvae_cupy.train"] + args + ["--distributed"], n, env, timeout)


def _final(run_dir):
    return checkpoint.load(checkpoint.list_checkpoints(str(run_dir))[0])


# ---------------------------------------------------------------------------- no MPI needed
def test_flat_buffer_pack_unpack_round_trip():
    r = np.random.default_rng(0)
    shapes = {"b.W": (3, 4), "a.b": (5,), "c": (2, 1, 3)}
    for dtype in (np.float32, np.float64):
        fb = FlatBuffer(shapes, 2, dtype, np)
        assert fb.buf.shape == (12 + 5 + 6 + 2,) and fb.buf.dtype == dtype and fb.buf.flags.c_contiguous
        arrays = {k: r.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        buf = fb.pack(arrays, [1.5, -2.0])
        assert buf is fb.buf  # preallocated once, reused
        out, scalars = fb.unpack()
        for k in shapes:
            assert np.array_equal(out[k], arrays[k]) and out[k].dtype == dtype
            assert np.shares_memory(out[k], fb.buf)  # views, no copies
        assert scalars.tolist() == [1.5, -2.0]
        fb.buf *= 2  # what the all-reduce does in place: the views see it
        assert np.array_equal(fb.unpack()[0]["c"], 2 * arrays["c"])
        with pytest.raises(Exception, match="flat buffer"):
            fb.pack({"a.b": arrays["a.b"]})


def test_single_process_comm_is_a_no_op():
    c = Comm()
    b = np.arange(4.0)
    assert c.allreduce_mean_(b) is b and b.tolist() == [0, 1, 2, 3]
    assert c.allreduce_mean_ordered_(b) is b and b.tolist() == [0, 1, 2, 3]
    assert c.broadcast_(b) is b and c.bcast_obj("x") == "x" and c.allgather_obj(3) == [3]
    c.barrier()
    assert (c.rank, c.size) == (0, 1)


# four numbers whose sum depends on the order of the additions: left to right 1e16 + 1 rounds to
# 1e16 (the spacing of doubles there is 2), so ((a + b) + c) + d = 1 but (a + b) + (c + d) = 0,
# the pairing of a recursive-doubling all-reduce (MPICH's for 4 ranks)
ORDER_SENSITIVE = [1e16, 1.0, -1e16, 1.0]


def test_mean_in_order_adds_left_to_right():
    a, b, c, d = ORDER_SENSITIVE
    assert ((a + b) + c) + d != (a + b) + (c + d)  # the data can tell the orders apart
    rows = np.array(ORDER_SENSITIVE)[:, None] * np.ones((1, 3))
    out = np.empty(3)
    assert mean_in_order_(out, rows) is out and out.tolist() == [(((a + b) + c) + d) / 4] * 3 == [0.25] * 3
    # a generator that yields ``out`` itself first (StepMean packs part 0 into its own buffer)
    out = rows[0].copy()
    assert mean_in_order_(out, (r for r in [out] + list(rows[1:]))).tolist() == [0.25] * 3
    with pytest.raises(ValueError):
        mean_in_order_(out, iter([]))


def test_step_mean_of_micro_batches():
    """StepMean, one process: gradients, running statistics, loss and terms of K parts averaged in
    one buffer, in part order; the parts are consumed one at a time."""
    r = np.random.default_rng(1)
    K = 3
    parts = [(r.standard_normal(()), {"kl": r.standard_normal(()), "rec": r.standard_normal(())},
              {"W": r.standard_normal((2, 3)), "b": r.standard_normal(2)}, {"bn.mean": r.standard_normal(4)})
             for _ in range(K)]
    asked = []

    def gen():
        for i, p in enumerate(parts):
            asked.append(i)
            yield p

    def mean(i, k=None):  # ((r0 + r1) + r2) / K of item i (key k) of the parts
        get = (lambda p: p[i]) if k is None else (lambda p: p[i][k])
        return ((get(parts[0]) + get(parts[1])) + get(parts[2])) / K

    sm = StepMean()
    loss, terms, grads, state, stop = sm(gen(), stop=False)
    assert asked == [0, 1, 2] and stop is False
    assert loss == mean(0) and terms == {k: mean(1, k) for k in ("kl", "rec")}
    assert all(np.array_equal(grads[k], mean(2, k)) for k in ("W", "b")) and set(grads) == {"W", "b"}
    assert np.array_equal(state["bn.mean"], mean(3, "bn.mean")) and set(state) == {"bn.mean"}
    assert np.shares_memory(grads["W"], sm.acc.buf)  # views of the one fused buffer
    assert sm(iter(parts[:1]), stop=True)[-1] is True


def test_global_noise_slices_reproduce_the_single_stream():
    full = Rng([0, 2]).normal((6, 3), np.float64)
    parts = [GlobalNoiseRng(Rng([0, 2]), r, 3).normal((2, 3), np.float64) for r in range(3)]
    assert np.array_equal(np.concatenate(parts), full)


@pytest.mark.filterwarnings("ignore:(?s).*nccl library could not be loaded")  # expected without libnccl
def test_nccl_names_exist_in_installed_cupy():
    """Every cupy.cuda.nccl name NcclComm calls exists (NCCL itself cannot run here).  Without
    libnccl the module does not load, so the names are looked up in the compiled binding."""
    from jmvae_cupy.backend import cupy_module
    from jmvae_cupy.distributed import nccl_module

    cp = cupy_module()
    if cp is None:
        pytest.skip("cupy not installed")
    nccl = nccl_module()
    if nccl is not None:
        for name in NCCL_NAMES:
            assert hasattr(nccl, name), name
        for name in NCCL_COMM_METHODS:
            assert hasattr(nccl.NcclCommunicator, name), name
        return
    import glob

    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(cp.__file__)), "cupy_backends", "cuda", "libs",
                                  "nccl*.so"))
    if not libs:
        pytest.skip("cupy has no NCCL binding")
    blob = open(libs[0], "rb").read()
    for name in NCCL_NAMES:
        assert name.encode() in blob, name
    for name in NCCL_COMM_METHODS:
        assert f"NcclCommunicator.{name}(".encode() in blob, name


# ---------------------------------------------------------------------------- NCCL, one rank, on a GPU
def _gpu_nccl_singleton() -> None:
    """Skip unless a GPU, NCCL and an MPI that starts without mpiexec (a singleton world of one rank)
    are all here: the NCCL communicator's set-up (its unique id goes over MPI) needs all three."""
    from jmvae_cupy.backend import gpu_available
    from jmvae_cupy.distributed import nccl_module

    if not gpu_available():
        pytest.skip("needs a usable CUDA device")
    if nccl_module() is None:
        pytest.skip("NCCL is not available to CuPy (cupy.cuda.nccl does not load)")
    p = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; assert MPI.COMM_WORLD.Get_size() == 1"],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.skip(f"no MPI singleton here: {(p.stderr.strip().splitlines() or ['?'])[-1]}")


NCCL_ONE_RANK = textwrap.dedent("""
    import numpy as np
    from jmvae_cupy.backend import select_device
    from jmvae_cupy.distributed import DistributedError, NcclComm, nccl_module
    cp = select_device("gpu")
    c = NcclComm(nccl_module())
    assert c.size == 1 and c.backend == "nccl"
    for dt in (np.float32, np.float64):
        host = np.arange(1001, dtype=dt) / 7
        for op in (c.allreduce_mean_, c.allreduce_mean_ordered_, c.broadcast_):
            b = cp.asarray(host)
            assert op(b) is b and b.dtype == dt, op.__name__
            assert np.array_equal(cp.asnumpy(b), host), op.__name__  # the mean of one rank: itself
    try:
        c.allreduce_mean_(np.zeros(3))
        raise AssertionError("NCCL took a host buffer")
    except DistributedError:
        pass
    c.barrier()
    print("ok", flush=True)
""")


def test_nccl_comm_with_one_rank_on_the_gpu(tmp_path):
    """NcclComm (written from CuPy's API) on one rank, started without mpiexec: its set-up, the
    all-reduce, the ordered all-reduce (all-gather) and the broadcast of device buffers of both
    dtypes leave them as they were, and a host buffer is refused in one line."""
    _gpu_nccl_singleton()
    (tmp_path / "n.py").write_text(NCCL_ONE_RANK)
    p = subprocess.run([sys.executable, str(tmp_path / "n.py")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-3000:]


def test_one_rank_over_nccl_trains_as_one_process_on_the_gpu(tmp_path):
    """train --distributed with one rank on the GPU (a singleton MPI world): its gradients go through
    NCCL (no warning of the host fallback), and with --exact-noise the run equals one plain process's
    in float64 (the all-reduce of one rank and the division by 1 change no bit; allowed: 1e-12)."""
    _gpu_nccl_singleton()
    args = TINY + ["--dtype", "float64", "--variant", "kl", "--device", "gpu"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    p = subprocess.run([sys.executable, "-m", "jmvae_cupy.train", *args, "--out", str(tmp_path / "nccl"),
                        "--distributed", "--exact-noise"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **ONE_THREAD})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "gradients go through the host" not in p.stderr, p.stderr[-3000:]
    a, b = _final(tmp_path / "one"), _final(tmp_path / "nccl")
    assert b["meta"]["config"]["distributed"]["ranks"] == 1
    for k in a["params"]:
        assert np.abs(a["params"][k] - b["params"][k]).max() <= 1e-12, k


def test_exact_noise_needs_distributed(tmp_path, capsys):
    assert main(TINY + ["--out", str(tmp_path / "r"), "--exact-noise"]) == 1
    assert "--exact-noise applies to --distributed only" in capsys.readouterr().err
    assert main(TINY + ["--out", str(tmp_path / "r"), "--ordered-reduce"]) == 1
    assert "--ordered-reduce applies to --distributed only" in capsys.readouterr().err


# ---------------------------------------------------------------------------- under mpiexec -n 2
COLLECTIVES = textwrap.dedent("""
    import numpy as np
    from jmvae_cupy.distributed import MpiComm
    c = MpiComm()
    assert c.size == 2
    for dt in (np.float32, np.float64):
        b = np.array([1.0, 2.0, 3.0], dt) * (c.rank + 1)
        assert c.allreduce_mean_(b) is b and b.tolist() == [1.5, 3.0, 4.5] and b.dtype == dt
        b = np.array([1.0, 2.0, 3.0], dt) * (c.rank + 1)
        assert c.allreduce_mean_ordered_(b) is b and b.tolist() == [1.5, 3.0, 4.5] and b.dtype == dt
        b = np.full(3, c.rank, dt)
        c.broadcast_(b, root=1)
        assert b.tolist() == [1, 1, 1]
    assert c.allgather_obj(c.rank) == [0, 1] and c.bcast_obj({"r": c.rank}) == {"r": 0}
    c.barrier()
    print("ok", flush=True)
""")


@needs_mpi
def test_mpi_collectives(tmp_path):
    (tmp_path / "c.py").write_text(COLLECTIVES)
    p = _mpirun([str(tmp_path / "c.py")], timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("ok") == 2  # (the two ranks' lines may interleave)


ORDERED = textwrap.dedent("""
    import numpy as np
    from jmvae_cupy.distributed import MpiComm
    c = MpiComm()
    v = [1e16, 1.0, -1e16, 1.0]  # tests.test_distributed.ORDER_SENSITIVE
    assert c.size == len(v)
    b = np.full(5, v[c.rank])
    c.allreduce_mean_ordered_(b)
    assert b.tolist() == [0.25] * 5, b  # (((v0 + v1) + v2) + v3) / 4 on every rank
    p = np.full(5, v[c.rank])
    c.allreduce_mean_(p)  # the all-reduce's own order
    plain = c.allgather_obj(float(p[0]))
    from mpi4py import MPI
    if c.rank == 0:  # (one line: the ranks' output may interleave)
        print("ok", *plain, "MPICH" in MPI.Get_library_version(), flush=True)
""")


@needs_mpi
def test_ordered_allreduce_adds_in_rank_order(tmp_path):
    (tmp_path / "o.py").write_text(ORDERED)
    p = _mpirun([str(tmp_path / "o.py")], n=4, timeout=60)
    assert p.returncode == 0, p.stderr  # every rank checked its ordered mean
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("ok")][0].split()
    if line[-1] == "True":  # MPICH pairs (r0 + r1) + (r2 + r3) for 4 ranks: the plain mean differs
        assert line[1:-1] == ["0.0"] * 4, line


def _assert_bit_identical(a, b, groups=("params", "adam_m", "adam_v", "state")):
    for g in groups:
        assert set(a[g]) == set(b[g]), g
        for k in a[g]:
            assert np.array_equal(a[g][k], b[g][k]), (g, k, np.abs(a[g][k] - b[g][k]).max())


def _metrics(run_dir):
    return [{k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in open(run_dir / "metrics.jsonl")]


@needs_mpi
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path, dtype):
    one, two, micro = tmp_path / "one", tmp_path / "two", tmp_path / "micro"
    args = TINY + ["--dtype", dtype, "--variant", "kl"]
    assert main(args + ["--out", str(one)]) == 0
    assert main(args + ["--out", str(micro), "--micro-batches", "2"]) == 0
    p = _train_mpi(args + ["--out", str(two), "--exact-noise", "--ordered-reduce"])
    assert p.returncode == 0, p.stderr
    a, b = _final(one), _final(two)
    assert a["meta"]["epoch"] == b["meta"]["epoch"] == 2
    assert b["meta"]["config"]["distributed"] == {"ranks": 2, "exact_noise": True, "ordered_reduce": True}
    # bit for bit: one process adding two micro-batches of 50 rows, in order (metrics included)
    _assert_bit_identical(_final(micro), b)
    assert _metrics(micro) == _metrics(two)
    # up to the summation order: one process with one batch of 100 rows
    assert any(not np.array_equal(a["params"][k], b["params"][k]) for k in a["params"])  # not the same bits
    for k in a["params"]:
        d = np.abs(a["params"][k] - b["params"][k])
        if dtype == "float64":
            assert d.max() <= 1e-12, (k, d.max())
        else:
            assert np.mean(d > 1e-5) <= 1e-3 and d.max() <= 2 * 1e-3 * 4, (k, d.max(), np.mean(d > 1e-5))
    # rank 0 alone wrote the run: one metrics line per epoch, every file once
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    ma = [json.loads(ln) for ln in open(one / "metrics.jsonl")]
    mb = [json.loads(ln) for ln in open(two / "metrics.jsonl")]
    assert len(mb) == 2
    rtol = 1e-9 if dtype == "float64" else 1e-3
    for ra, rb in zip(ma, mb):
        for k in ("loss", "rec_x", "kl"):
            assert np.isclose(ra["train"][k], rb["train"][k], rtol=rtol), (k, ra["train"][k], rb["train"][k])
        assert np.isclose(ra["test"]["elbo"], rb["test"]["elbo"], rtol=rtol)


@needs_mpi
def test_three_ranks_equal_three_micro_batches(tmp_path):
    """P = 3, where the order of the reduction is a choice (for P = 2, a + b = b + a)."""
    args = BASE + ["--train-subset", "288", "--batch-size", "96", "--epochs", "1", "--dtype", "float64",
                   "--variant", "kl"]  # 3 steps (3 ranks on 2 cores: kept short)
    assert main(args + ["--out", str(tmp_path / "micro"), "--micro-batches", "3"]) == 0
    p = _train_mpi(args + ["--out", str(tmp_path / "three"), "--exact-noise", "--ordered-reduce"], n=3)
    assert p.returncode == 0, p.stderr
    _assert_bit_identical(_final(tmp_path / "micro"), _final(tmp_path / "three"))
    assert _metrics(tmp_path / "micro") == _metrics(tmp_path / "three")


@needs_mpi
def test_distributed_resume_is_bit_identical(tmp_path):
    """Per-rank noise streams (the default): their states are checkpointed by rank."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = BASE + ["--checkpoint-steps", "1", "--variant", "h"]
    assert _train_mpi(args + ["--epochs", "2", "--out", str(ref)]).returncode == 0
    assert _train_mpi(args + ["--epochs", "1", "--out", str(run)]).returncode == 0
    p = _train_mpi(args + ["--epochs", "2", "--out", str(run), "--resume"])
    assert p.returncode == 0, p.stderr
    a, b = _final(ref), _final(run)
    assert len(b["meta"]["noise_rng_ranks"]) == 2
    for k in a["params"]:
        assert np.array_equal(a["params"][k], b["params"][k]), k
    # a single-process resume of a 2-rank run is refused
    assert main(args + ["--epochs", "3", "--out", str(run), "--resume"]) == 1


@needs_mpi
def test_a_failing_rank_ends_the_job(tmp_path):
    t0 = time.time()
    # rank 1's first step raises (patched in that process only): the job must end, not hang in a collective
    inject = ("import sys\n"
              "from jmvae_cupy import distributed\n"
              "from jmvae_cupy.train import main, trainer\n"
              "real = trainer.Trainer._step_grads\n"
              "def failing(self, x, w, beta):\n"
              "    if self.dist.comm.rank == 1:\n"
              "        raise RuntimeError('injected failure')\n"
              "    return real(self, x, w, beta)\n"
              "trainer.Trainer._step_grads = failing\n"
              "sys.exit(main(sys.argv[1:]))\n")
    p = _mpirun(["-c", inject] + TINY + ["--out", str(tmp_path / "r"), "--distributed"], timeout=60)
    assert p.returncode != 0
    assert "error: rank 1: RuntimeError: injected failure" in p.stderr, p.stderr[-2000:]
    assert time.time() - t0 < 60


@needs_mpi
def test_batch_not_divisible_by_ranks_is_one_line(tmp_path):
    p = _train_mpi(TINY + ["--batch-size", "75", "--train-subset", "150", "--out", str(tmp_path / "r")])
    assert p.returncode != 0
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert err == ["error: --batch-size 75 is not divisible by the 2 ranks (each rank takes B/P rows)"]
    p = _train_mpi(TINY + ["--micro-batches", "4", "--out", str(tmp_path / "r")])  # 100 rows, 2 x 4 parts
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode != 0 and err == ["error: --batch-size 100 is not divisible by 2 ranks x 4 micro-batches "
                                         "(each micro-batch takes B/(P K) rows)"]




@needs_mpi
@pytest.mark.parametrize("gan", [False, True], ids=["bn", "bn-gan"])
def test_batchnorm_two_ranks_equal_two_micro_batches(tmp_path, celeba_h5, gan):
    """CelebA (batch norm everywhere; with --gan the discriminator's gradients and statistics share the
    step's buffer): each rank normalises its B/P rows like each micro-batch its B/K rows, and the
    running statistics after a step are the mean over the parts of what each part's forward made of
    the step's starting statistics: bit-identical, and identical on both ranks after every step (the
    run's checksum check at every epoch end would end it otherwise)."""
    args = ["celeba", "--data", str(celeba_h5), "--width-scale", "0.0625", "--batch-size", "8", "--latent", "8",
            "--epochs", "2", "--warmup", "1", "--dtype", "float64", "--no-progress", "--device", "cpu",
            "--sample-every", "1"] + (["--gan"] if gan else [])
    assert main(args + ["--out", str(tmp_path / "micro"), "--micro-batches", "2"]) == 0
    p = _train_mpi(args + ["--out", str(tmp_path / "two"), "--exact-noise", "--ordered-reduce"])
    assert p.returncode == 0, p.stderr
    a, b = _final(tmp_path / "micro"), _final(tmp_path / "two")
    assert a["state"] and a["meta"]["epoch"] == 2
    _assert_bit_identical(a, b)
    if gan:
        for g in ("disc/params", "disc/state", "disc/adam/m", "disc/adam/v"):
            _assert_bit_identical(a["extra"], b["extra"], groups=(g,))
    assert _metrics(tmp_path / "micro") == _metrics(tmp_path / "two")
    if gan:  # and a 2-rank GAN run stopped after epoch 1 and resumed ends with the same bits
        run = args[:args.index("--epochs")] + args[args.index("--epochs") + 2:] + ["--out", str(tmp_path / "r"),
                                                                                   "--exact-noise", "--ordered-reduce"]
        assert _train_mpi(run + ["--epochs", "1"]).returncode == 0
        p = _train_mpi(run + ["--epochs", "2", "--resume"])
        assert p.returncode == 0, p.stderr
        c = _final(tmp_path / "r")
        _assert_bit_identical(b, c)
        _assert_bit_identical(b["extra"], c["extra"], groups=("disc/params", "disc/state", "disc/adam/m"))


def test_thread_pools_get_the_ranks_share_of_the_cores(monkeypatch):
    """Each of P ranks on a node gets cores // P BLAS and Numba threads (at least 1); a thread count
    set in the environment is left alone."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    from jmvae_cupy.distributed import size_thread_pools

    for v in THREAD_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    before = numba.get_num_threads()
    with threadpool_limits(limits=None):  # (restores the BLAS pools afterwards)
        try:
            msg = size_thread_pools(local_size=4, cores=8)
            assert msg.startswith("2 BLAS / Numba threads per rank (8 cores, 4 ranks on this node")
            assert all(p["num_threads"] == 2 for p in threadpool_info() if p["user_api"] == "blas")
            assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
            assert size_thread_pools(local_size=16, cores=8).startswith("1 BLAS / Numba thread per rank")
            monkeypatch.setenv("OMP_NUM_THREADS", "3")
            assert size_thread_pools(local_size=4, cores=8) == "threads as set in the environment (OMP_NUM_THREADS=3)"
        finally:
            numba.set_num_threads(before)


@needs_mpi
def test_two_ranks_say_how_many_threads_each_takes(tmp_path):
    env = {v: "" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
    p = _train_mpi(TINY + ["--epochs", "1", "--out", str(tmp_path / "t")], env=env)
    assert p.returncode == 0, p.stderr
    cores = os.cpu_count()
    n = max(1, cores // 2)
    assert f"distributed: 2 ranks; {n} BLAS / Numba thread" in p.stderr
