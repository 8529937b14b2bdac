"""Data-parallel training (jmvae_cupy/distributed.py, train --distributed) under ``mpiexec -n 2``.

Tolerances (P ranks vs one process with the same global batch, --exact-noise, 4 Adam steps):
float64: parameters agree to 1e-12 absolute (they differ only by the order of the batch sums:
two local means averaged vs one mean; measured about 3e-14); float32: 1e-5 absolute for all but a
handful of entries whose first Adam steps are lr * sign(g) with g at rounding level, so a sign can
flip: those may differ by up to 2 lr per step (checked: at most 0.1% of entries).
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
from jmvae_cupy.distributed import NCCL_COMM_METHODS, NCCL_NAMES, Comm, FlatBuffer, GlobalNoiseRng
from jmvae_cupy.rng import Rng
from jmvae_cupy.train import main

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


def _mpirun(args, n=2, env=None, timeout=120):
    cmd = [MPIEXEC, "-n", str(n), sys.executable] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "JMVAE_DEVICE": "cpu", **(env or {})})


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
    assert c.broadcast_(b) is b and c.bcast_obj("x") == "x" and c.allgather_obj(3) == [3]
    c.barrier()
    assert (c.rank, c.size) == (0, 1)


def test_global_noise_slices_reproduce_the_single_stream():
    full = Rng([0, 2]).normal((6, 3), np.float64)
    parts = [GlobalNoiseRng(Rng([0, 2]), r, 3).normal((2, 3), np.float64) for r in range(3)]
    assert np.array_equal(np.concatenate(parts), full)


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


def test_exact_noise_needs_distributed(tmp_path, capsys):
    assert main(TINY + ["--out", str(tmp_path / "r"), "--exact-noise"]) == 1
    assert "--exact-noise applies to --distributed only" in capsys.readouterr().err


# ---------------------------------------------------------------------------- under mpiexec -n 2
COLLECTIVES = textwrap.dedent("""
    import numpy as np
    from jmvae_cupy.distributed import MpiComm
    c = MpiComm()
    assert c.size == 2
    for dt in (np.float32, np.float64):
        b = np.array([1.0, 2.0, 3.0], dt) * (c.rank + 1)
        assert c.allreduce_mean_(b) is b and b.tolist() == [1.5, 3.0, 4.5] and b.dtype == dt
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


@needs_mpi
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path, dtype):
    one, two = tmp_path / "one", tmp_path / "two"
    args = TINY + ["--dtype", dtype, "--variant", "kl"]
    assert main(args + ["--out", str(one)]) == 0
    p = _train_mpi(args + ["--out", str(two), "--exact-noise"])
    assert p.returncode == 0, p.stderr
    a, b = _final(one), _final(two)
    assert a["meta"]["epoch"] == b["meta"]["epoch"] == 2
    assert b["meta"]["config"]["distributed"] == {"ranks": 2, "exact_noise": True}
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
    p = _train_mpi(TINY + ["--out", str(tmp_path / "r")], env={"JMVAE_TEST_FAIL_RANK": "1"}, timeout=60)
    assert p.returncode != 0
    assert "error: rank 1: RuntimeError: injected failure" in p.stderr, p.stderr[-2000:]
    assert time.time() - t0 < 60


@needs_mpi
def test_batch_not_divisible_by_ranks_is_one_line(tmp_path):
    p = _train_mpi(TINY + ["--batch-size", "75", "--train-subset", "150", "--out", str(tmp_path / "r")])
    assert p.returncode != 0
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert err == ["error: --batch-size 75 is not divisible by the 2 ranks (each rank takes B/P rows)"]


BN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from jmvae_cupy.distributed import DataParallel, MpiComm
    from jmvae_cupy.train import Trainer, build_parser, config_from_args
    dp = DataParallel(MpiComm())
    args = build_parser().parse_args(["celeba", "--data", sys.argv[1], "--width-scale", "0.0625", "--batch-size", "8",
                                      "--latent", "8", "--device", "cpu", "--epochs", "1"])
    cfg = config_from_args(args)
    cfg["distributed"] = {"ranks": 2, "exact_noise": False}
    t = Trainer(cfg, sys.argv[2], device="cpu", progress=False, log=lambda *a: None, dist=dp)
    dp.check_consistent(t, "start")
    t.train_epoch()
    local = {k: v.copy() for k, v in t.model.state.items()}
    gathered = dp.comm.allgather_obj(local)
    assert any(not np.array_equal(gathered[0][k], gathered[1][k]) for k in local), "local statistics differ"
    dp.sync_state(t)
    for k, v in t.model.state.items():
        assert np.allclose(v, (gathered[0][k] + gathered[1][k]) / 2, rtol=1e-6, atol=1e-7), k
    after = dp.comm.allgather_obj({k: v.copy() for k, v in t.model.state.items()})
    assert all(np.array_equal(after[0][k], after[1][k]) for k in local)
    dp.check_consistent(t, "after sync")  # parameters, state, optimizer step, data RNG: identical
    print("ok", len(local))
""")


@needs_mpi
def test_batchnorm_running_statistics_are_averaged_and_identical(tmp_path):
    from jmvae_cupy.data.__main__ import main as data_main
    from tests.data.test_celeba import make_celeba

    make_celeba(tmp_path / "src", n=40)
    h5 = tmp_path / "c.h5"
    assert data_main(["prepare", "celeba", str(tmp_path / "src"), "--out", str(h5), "--size", "32",
                      "--no-progress"]) == 0
    (tmp_path / "bn.py").write_text(BN_SCRIPT)
    p = _mpirun([str(tmp_path / "bn.py"), str(h5), str(tmp_path / "out")], timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("ok") == 2
