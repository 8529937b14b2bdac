"""bench/throughput.py: its GEMM floor lists the products the implementation performs (checked
against counts written independently of ``gemm_list``, and against the method each conv layer
really runs), and the benchmark runs end to end.  A smoke run only: no time is asserted (speed
is measured by the benchmark, never by a test)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import throughput as T  # noqa: E402

from jmvae_cupy.layers import conv_fast  # noqa: E402
from jmvae_cupy.nets import Conv2D, Deconv2D  # noqa: E402


@pytest.mark.parametrize("key", ["mnist:jmvae", "mnist:kl", "mnist:h"])
def test_the_dense_floor_is_three_products_per_weight_less_the_data_inputs_dx(key):
    """Every weight W (D_in, D_out) costs 3 products of 2 N D_in D_out flops (forward, dx, dW),
    except that the first layer of a component reading data computes no dx."""
    n = 7
    model = T.make_model(key, np)
    first_of_data = {f"{c}.0.W" for c in model.data_inputs}
    want = sum((2 if k in first_of_data else 3) * 2.0 * n * W.size
               for k, W in model.params.items() if k.endswith(".W"))
    assert T.gemm_flops(T.gemm_list(model, n)) == want


def test_the_celeba_floor_follows_the_method_each_layer_runs(monkeypatch):
    """A layer is listed with Winograd's 9 batched products exactly when a forward through the
    model runs it as Winograd, and its products then cost 9/16 of im2col's."""
    n = 2
    model = T.make_model("celeba:kl", np)
    listed = T.gemm_list(model, n)
    wino_layers = {name.split(" ")[0] for name, (a, _), _ in listed if len(a) == 3}
    assert wino_layers  # the CelebA nets do have such layers

    ran = set()
    x, w = T.make_batch(model, n, np)
    z = np.zeros((n, model.arch.latent), np.float32)
    inputs = {"qxw.x": x, "qx.net": x, "px": z, "pw": z}
    for cname, inp in inputs.items():
        comp = model.components[cname]
        _, caches = model.run(cname, inp)
        for i, layer in enumerate(comp.layers):
            if isinstance(layer, (Conv2D, Deconv2D)) and conv_fast.is_winograd(caches[i]):
                ran.add(f"{cname}.{i}")
    assert ran == wino_layers

    monkeypatch.setattr(conv_fast, "use_winograd", lambda *a, **k: False)  # the same model, all im2col
    im2col = T.gemm_list(model, n)

    def per_layer(gemms):
        out = {}
        for g in gemms:
            layer = g[0].split(" ")[0]
            out[layer] = out.get(layer, 0.0) + T.gemm_flops([g])
        return out

    a, b = per_layer(listed), per_layer(im2col)
    for layer in wino_layers:
        assert a[layer] == pytest.approx(9 / 16 * b[layer], rel=1e-12)
    assert all(a[k] == b[k] for k in b if k not in wino_layers)


def test_the_benchmark_runs_end_to_end_and_reports_every_column():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--models", "mnist:kl", "--batch-sizes", "8",
         "--steps", "1", "--blocks", "1", "--warmup", "0", "--no-torch", "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    (r,) = doc["results"]
    assert (r["model"], r["batch"], r["device"]) == ("mnist:kl", 8, "cpu")
    for k in ("step_s", "samples_per_s", "floor_s", "floor_pct", "gemm_gflop", "rss_ours_mb"):
        assert r[k] > 0, k
    assert "cpu" in doc["machine"]


def test_the_breakdown_names_the_category_of_every_kernel_and_layer_function():
    """``--breakdown`` files a function's own time by its file; a kernel file missing from
    CATEGORIES would count as "python glue" (the fused bias + ReLU and Bernoulli kernels did:
    ~9 ms of "glue" at MNIST batch 1000 were these kernels).  One step each of MNIST JMVAE-kl and
    of a CelebA JMVAE-kl with Winograd and im2col layers, profiled: no function of kernels/ is left
    to the glue.  (The layers' reshapes and argument checks are glue by design.)"""
    import cProfile
    import pstats

    from jmvae_cupy.models import build_model
    from jmvae_cupy.models.architectures import celeba_arch

    models = [T.make_model("mnist:kl", np), build_model(celeba_arch(size=16, width=0.25, latent=3, w_dim=5), "kl")]
    prof = cProfile.Profile()
    for model in models:
        step = T.our_step(model, *T.make_batch(model, 4, np))
        step()  # (compiles the kernels outside the profile)
        prof.enable()
        step()
        prof.disable()
    seen = [(f, fn) for f, _, fn in pstats.Stats(prof).stats if "jmvae_cupy" in f or "/kernels/" in f]
    assert any("kernels/bias_relu.py" in f for f, _ in seen) and any("winograd" in f for f, _ in seen)
    glue = sorted({f"{f.split('/')[-1]}:{fn}" for f, fn in seen
                   if "/kernels/" in f and T.category(f, fn) == "python glue"})
    assert not glue, glue


def test_the_subnormal_benchmark_runs_both_trainings():
    """``bench/micro.py subnormal`` (docs/performance.md): one epoch of each training, one round of
    the single-update table (no timing asserted)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "micro.py"), "subnormal", "--epochs", "1",
                          "--repeat", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ours, flush=True" in out.stdout and "ours, flush=False" in out.stdout, out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.lstrip().startswith("1 ")]
    assert len(rows) == 1 and rows[0][:3] == ["1", "80", "|"], out.stdout  # epoch 1, 8000 digits / 100
    assert "parameters that differ between the two runs after 80 steps: 0 " in out.stdout, out.stdout


def test_the_subpixel_benchmark_prints_each_deconv_and_the_rule():
    """``bench/micro.py subpixel`` (docs/derivations/deconv.md): one round, a row per CelebA deconv,
    and "auto" naming the method conv_fast.use_subpixel takes (no timing asserted)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "micro.py"), "subpixel", "--repeat", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    autos = re.findall(r"auto: (\w+)$", out.stdout, flags=re.M)
    assert autos == ["scatter", "scatter", "subpixel", "scatter"], out.stdout


def test_the_adam_memory_benchmark_prints_both_rows():
    """``bench/micro.py adam-memory`` (docs/performance.md): one round, both rows, every prelude
    (no timing asserted)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "micro.py"), "adam-memory", "--repeat", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3,127,450 float32 parameters in 34 arrays, 87.6 MB" in out.stdout, out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("  ") and "(" in line]
    labels = [r.split("  ")[1] for r in rows]
    assert labels == ["Adam.step (kernels/adam.py)", "same traffic, no arithmetic"], out.stdout
    assert all(len(re.findall(r"\d+\.\d\d \(\d+\)", r)) == 3 for r in rows), out.stdout  # "ms (GB/s)" per prelude


@pytest.mark.parametrize("script, args, message", [
    ("throughput.py", ["--steps", "0"], "--steps must be at least 1, got 0"),
    ("throughput.py", ["--batch-sizes", "100", "0"], "--batch-sizes must be at least 1, got 0"),
    ("throughput.py", ["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    ("throughput.py", ["--models", "mnist:foo"], "--models: unknown model 'mnist:foo'"),
    ("conv.py", ["--blocks", "0"], "--blocks must be at least 1, got 0"),
    ("micro.py", ["subnormal", "--repeat", "0"], "--repeat must be at least 1, got 0"),
    ("micro.py", ["subnormal", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    ("distributed.py", ["--ranks", "2", "0"], "--ranks must be at least 1, got 0"),
])
def test_a_bad_count_or_model_gets_one_usage_line(script, args, message):
    """Counts below their minimum and unknown models stop at the argument parser (exit 2, one
    line), not in a worker: --blocks 0 was a ZeroDivisionError, --repeat 0 a StatisticsError."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert message in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]


def _device_cases():
    from jmvae_cupy.backend import gpu_available

    cases = [("zz", "unknown device 'zz': choose one of auto, cpu, gpu")]
    if not gpu_available():
        cases.append(("gpu", "device 'gpu' requested but no usable CUDA device"))
    return cases


@pytest.mark.parametrize("device, message", _device_cases())
def test_a_bad_device_is_one_line_from_the_driver(device, message):
    """--device zz (or gpu without one): each worker died with a BackendError traceback before the
    driver's "bench worker 'ours' died".  The driver now checks the device once, through
    backend.select_device, before it starts a worker."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--device", device],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and out.stdout == "", out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --device {device}: {message}"), out.stderr[-2000:]


@pytest.mark.parametrize("script", ["throughput.py", "conv.py", "micro.py", "distributed.py"])
def test_a_python_without_the_package_gets_one_line(script):
    """``python -S`` skips site-packages (the install): each benchmark says so in one line and
    exits 2, instead of a worker dying with a traceback in the middle of a run."""
    args = ["winograd"] if script == "micro.py" else []
    out = subprocess.run([sys.executable, "-S", str(ROOT / "bench" / script), *args],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "jmvae_cupy is not installed" in lines[0], out.stderr[-2000:]


def test_alternating_blocks_time_the_steps_asked_for(capsys):
    """--steps 3 --blocks 2 timed 2 steps (1 + 1) without saying so: now 2 + 1; and 2 steps over 4
    blocks time one step per block, with a note that says 4 were timed."""
    import _timing

    class Fake:
        def request(self, cmd):
            return {"times": [0.01] * int(cmd.split()[2])}

    times, medians = _timing.alternate({"a": Fake(), "b": Fake()}, 0, 3, 2)
    assert len(times["a"]) == len(times["b"]) == 3 and len(medians["a"]) == 2
    assert capsys.readouterr().err == ""
    assert _timing.block_sizes(20, 4) == [5, 5, 5, 5] and _timing.block_sizes(7, 3) == [3, 2, 2]
    assert _timing.block_sizes(2, 4) == [1, 1, 1, 1]
    assert "timing 4 steps per side, one in each of the 4 blocks (--steps 2 is fewer than --blocks 4)" \
        in capsys.readouterr().err


def _have_mpiexec() -> bool:
    import shutil

    return shutil.which("mpiexec", path=str(pathlib.Path(sys.executable).parent)) is not None or \
        shutil.which("mpiexec") is not None


@pytest.mark.skipif(not _have_mpiexec(), reason='mpiexec not available (pip install -e ".[distributed]")')
@pytest.mark.parametrize("sizing", ["auto", "off"])
def test_distributed_bench_ranks_use_the_threads_its_sizing_names(sizing):
    """Two ranks: with --sizing auto each rank runs cores // 2 BLAS and Numba threads (what train
    --distributed chooses), with off every rank keeps all the cores; the line reports what the
    ranks really ran, read inside a worker."""
    import os

    cores = os.cpu_count() or 1
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "distributed.py"), "--ranks", "2", "--epochs", "1",
                          "--train-subset", "200", "--sizing", sizing],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    want = max(1, cores // 2) if sizing == "auto" else cores
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith(f"ranks 2 (mpi, {want} BLAS / {want} Numba threads per rank"), out.stdout
