"""``python -m jmvae_cupy.selftest`` and ``bench/gpu_acceptance.sh``.

* The run CI makes, ``--device cpu --quick --json F`` in a fresh process: every line PASS or SKIP
  with a reason, every check of the plan present, the JSON the lines say, exit 0.
* It can fail: a broken CPU twin, a float32 step that is off, a host round trip in Adam, a memory
  budget exceeded, a resume that lost its noise stream each give a FAIL line and exit 1.
* Its own errors are one line; ``--only`` runs the checks named.
* On a GPU (skipped elsewhere, run by bench/gpu_acceptance.sh): the GPU-only probes (host waits,
  the pool's peak) see what they must.
* bench/gpu_acceptance.sh on a machine without CUDA: one "no CUDA device" line, non-zero, within a
  minute, its logs written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jmvae_cupy.backend import gpu_available
from jmvae_cupy.selftest import run as selftest_run
from jmvae_cupy.selftest.kernels import KERNEL_CHECKS, CheckFailed

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(PASS|FAIL|SKIP)  (.+?)\s{2,}(?:\d+\.\d s)?\s*(\S.*)$")
needs_gpu = pytest.mark.skipif(not gpu_available(), reason="needs a usable CUDA device")


def parse(stdout: str):
    """(header, [(status, name, detail)], summary line) of the selftest's output."""
    lines = stdout.strip().splitlines()
    checks = []
    for ln in lines[1:-1]:
        m = LINE.match(ln)
        assert m, f"not a check line: {ln!r}"
        checks.append((m.group(1), m.group(2).strip(), m.group(3)))
    return lines[0], checks, lines[-1]


def selftest(*args, capsys):
    """main(args) in this process: (exit status, parsed checks, stderr)."""
    rc = selftest_run.main(["--device", "cpu", "--quick", *args])
    out, err = capsys.readouterr()
    return rc, parse(out)[1], err


@pytest.mark.slow
@pytest.mark.skipif(gpu_available(), reason="checks the CPU run (on a GPU machine bench/gpu_acceptance.sh runs it)")
def test_the_cpu_quick_run_passes_every_check_and_writes_its_json(tmp_path):
    report = tmp_path / "selftest.json"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "jmvae_cupy.selftest", "--device", "cpu", "--quick", "--json",
                        str(report)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-3000:]
    header, checks, summary = parse(p.stdout)
    assert header.startswith("jmvae_cupy selftest on cpu (--quick): python ")
    statuses = {s for s, _, _ in checks}
    assert statuses <= {"PASS", "SKIP"}, [c for c in checks if c[0] == "FAIL"]
    assert all(detail.strip() for _, _, detail in checks)  # a PASS says what it compared, a SKIP why
    names = [n for _, n, _ in checks]
    plan = ([f"kernel {k.name} {dt}" for k in KERNEL_CHECKS for dt in ("float32", "float64")]
            + [f"step {label} float32" for label, *_ in selftest_run.model_cases(True)]
            + ["sync mnist-kl trap", "sync celeba32-kl trap", "memory mnist-kl batch 100",
               "memory celeba32-kl batch 64", "train mnist-kl 2 epochs", "train mnist-kl resume to epoch 3",
               "train mnist-kl evaluate"])
    skipped = ["kernel grids past 65,535 blocks", "step * float64", "sync * gpu"]  # GPU only, each with its reason
    assert sorted(names) == sorted(plan + skipped)
    assert {n for s, n, _ in checks if s == "SKIP"} == set(skipped)
    assert all("needs a GPU" in d or "the device is the CPU" in d for s, _, d in checks if s == "SKIP")
    n_pass = len(plan)
    assert summary.startswith(f"selftest: {n_pass} passed, 0 failed, 3 skipped on cpu in ")
    doc = json.loads(report.read_text())
    assert doc["device"] == "cpu" and doc["quick"] is True and doc["device_name"] == "cpu"
    assert {"python", "numpy", "numba"} <= set(doc["versions"])
    assert (doc["passed"], doc["failed"], doc["skipped"]) == (n_pass, 0, 3)
    assert [(c["status"], c["name"], c["detail"]) for c in doc["checks"]] == checks
    assert all(c["seconds"] >= 0 for c in doc["checks"]) and doc["seconds"] <= seconds
    assert not list(tmp_path.glob("*.tmp"))  # (the JSON is written through a temporary file)


def test_a_broken_cpu_twin_is_a_fail_line_and_exit_1(monkeypatch, capsys):
    from jmvae_cupy.kernels import reparam

    def twin_with_var_for_its_square_root(mu, var, eps, z):
        z[...] = mu + var * eps

    monkeypatch.setattr(reparam, "_reparam_forward_cpu", twin_with_var_for_its_square_root)
    rc, checks, _ = selftest("--only", "kernel reparam", capsys=capsys)
    assert rc == 1
    assert [(s, n) for s, n, _ in checks] == [("FAIL", "kernel reparam float32"), ("FAIL", "kernel reparam float64")]
    assert all(d.startswith("CPU twin, forward ") and "z: error" in d and "exceeds" in d for _, _, d in checks)


def test_a_reference_off_in_float32_fails_too(monkeypatch, capsys):
    """On the CPU the twin's partner is the plain-xp reference, held to the same bound against the
    float64 oracle: a reference off in float32 alone fails, naming it, while the CPU twin passes."""
    from jmvae_cupy.selftest import kernels

    ref = kernels.reparam_forward_ref

    def off_in_float32(mu, var, eps):
        z = ref(mu, var, eps)
        return z * np.float32(1 + 1e-5) if z.dtype == np.float32 else z

    monkeypatch.setattr(kernels, "reparam_forward_ref", off_in_float32)
    rc, checks, _ = selftest("--only", "kernel reparam", capsys=capsys)
    assert rc == 1 and [s for s, _, _ in checks] == ["FAIL", "PASS"], checks
    assert checks[0][2].startswith("plain-xp reference, forward "), checks[0][2]


def test_a_float32_step_that_is_off_fails_its_step_check(monkeypatch, capsys):
    """The Gaussian KL's CPU twin 1e-4 off in float32 only (as a kernel with a float32 slip would
    be): the float32 steps fail against float64 NumPy, naming the term."""
    from jmvae_cupy.kernels import gauss_kl

    twin = gauss_kl._gauss_kl_forward_cpu

    def slipping(mu1, var1, mu2, var2, kl, prior):
        twin(mu1, var1, mu2, var2, kl, prior)
        if kl.dtype == np.float32:
            kl *= np.float32(1 + 1e-4)

    monkeypatch.setattr(gauss_kl, "_gauss_kl_forward_cpu", slipping)
    rc, checks, _ = selftest("--only", "step mnist-kl float32", capsys=capsys)
    assert rc == 1 and checks[0][:2] == ("FAIL", "step mnist-kl float32"), checks
    assert re.match(r"(loss|term \w+): .* relative error .* > 1e-05", checks[0][2]), checks[0][2]


def test_a_host_round_trip_in_the_step_fails_the_trap(monkeypatch, capsys):
    import jmvae_cupy.optim as optim

    update = optim.adam_update

    def reads_the_gradient_norm(p, g, *args, **kwargs):
        if float((g * g).sum()) >= 0:  # a host read, as a logging line would make
            update(p, g, *args, **kwargs)

    monkeypatch.setattr(optim, "adam_update", reads_the_gradient_norm)
    rc, checks, _ = selftest("--only", "sync mnist-kl", capsys=capsys)
    assert rc == 1
    assert len(checks) == 1 and checks[0][:2] == ("FAIL", "sync mnist-kl trap") and "float()" in checks[0][2], checks


def test_a_memory_budget_exceeded_fails(monkeypatch, capsys):
    monkeypatch.setitem(selftest_run.MEMORY_BUDGET_MIB, "mnist-kl", 16)
    rc, checks, _ = selftest("--only", "memory mnist-kl", capsys=capsys)
    assert rc == 1 and checks[0][0] == "FAIL"
    assert re.search(r"mnist-kl: peak \d+ MiB exceeds the budget 16 MiB", checks[0][2]), checks[0][2]


def test_the_resume_comparison_catches_a_lost_noise_stream(tmp_path, monkeypatch):
    """The full run compares the resumed parameters with an uninterrupted run's (bit for bit on the
    CPU): as written it passes; with a resume that restarts the noise stream instead of restoring it,
    it fails."""
    from jmvae_cupy import train
    from jmvae_cupy.rng import Rng
    from jmvae_cupy.selftest.training import TrainingRun

    run = TrainingRun("cpu", str(tmp_path / "good"), subset=200, test_size=100)
    run.train_two_epochs()
    assert "bit for bit" in run.resume()
    restore = train.Trainer.restore

    def restore_forgetting_the_noise(self):
        path = restore(self)
        self.noise_rng = Rng([self.config["seed"], 2])
        return path

    monkeypatch.setattr(train.Trainer, "restore", restore_forgetting_the_noise)
    bad = TrainingRun("cpu", str(tmp_path / "bad"), subset=200, test_size=100)
    bad.straight = run.straight  # (the same uninterrupted run: it is not trained again)
    bad.train_two_epochs()
    with pytest.raises(CheckFailed, match="differ from an uninterrupted 3-epoch run's"):
        bad.resume()


def test_errors_of_the_command_are_one_line(tmp_path):
    cases = [(["--json", str(tmp_path / "missing" / "x.json")], "error: " + str(tmp_path / "missing" / "x.json")),
             (["--device", "cpu", "--only", "nothing such"], "error: --only nothing such: no check has a name")]
    if not gpu_available():
        cases.append((["--device", "gpu"], "error: device 'gpu' requested but no usable CUDA device"))
    for args, message in cases:
        p = subprocess.run([sys.executable, "-m", "jmvae_cupy.selftest", *args], capture_output=True, text=True,
                           timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith(message), (args, p.stderr[-2000:])
    p = subprocess.run([sys.executable, "-m", "jmvae_cupy.selftest", "--device", "tpu"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "invalid choice: 'tpu'" in p.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------- on a GPU only
@needs_gpu
def test_gpu_probe_sees_a_host_wait_and_passes_a_clean_step():
    """gpu_step_waits: a CuPy read to the host is caught by CuPy's detection, a device synchronise
    through Numba (outside CuPy's sight) by the queued spin, a step of device work by neither."""
    from numba import cuda

    from jmvae_cupy.backend import cupyx_module, select_device
    from jmvae_cupy.selftest.steps import gpu_step_waits

    cp, cupyx = select_device("gpu"), cupyx_module()
    a = cp.ones((256, 256), dtype=cp.float32)
    waited, _ = gpu_step_waits(cp, cupyx, lambda: a @ a + 1, 1.0)
    assert waited is None
    waited, _ = gpu_step_waits(cp, cupyx, lambda: float((a @ a).sum()), 1.0)
    assert waited and "CuPy detected" in waited
    waited, _ = gpu_step_waits(cp, cupyx, cuda.synchronize, 1.0)
    assert waited and "returned only after" in waited


@needs_gpu
def test_gpu_pool_peak_counts_what_a_step_holds_at_once():
    from jmvae_cupy.backend import select_device
    from jmvae_cupy.selftest.steps import peak_during

    cp = select_device("gpu")

    def hold_64_then_32_mib():
        a = cp.empty(64 * 2**20, dtype=cp.uint8)
        del a
        b = cp.empty(32 * 2**20, dtype=cp.uint8)
        del b

    assert 64 * 2**20 <= peak_during(cp, hold_64_then_32_mib) < 65 * 2**20


# ---------------------------------------------------------------------------- bench/gpu_acceptance.sh
@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU: the script runs its checks")
def test_the_acceptance_script_says_no_cuda_device_in_one_line_within_a_minute(tmp_path):
    out = tmp_path / "acceptance"
    t0 = time.perf_counter()
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu_acceptance.sh"), str(out)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHON": sys.executable})
    seconds = time.perf_counter() - t0
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    said = [ln for ln in (p.stdout + p.stderr).splitlines() if "no CUDA device" in ln]
    assert len(said) == 1 and said[0].startswith("no CUDA device: ") and p.stdout.strip().endswith(said[0])
    assert seconds < 60, seconds
    # what it could check, it did, and wrote down
    steps = [ln.split("\t") for ln in (out / "steps.tsv").read_text().splitlines()]
    assert [(s[0], s[1]) for s in steps] == [("env", "0"), ("install", "0"), ("imports", "0"), ("cuda", "3")]
    assert "numpy" in (out / "env.log").read_text()
    assert re.search(r"\d+ modules of jmvae_cupy import", (out / "imports.log").read_text())


def test_the_acceptance_script_refuses_bad_arguments_in_one_line(tmp_path):
    for args in ([], [str(tmp_path / "a"), str(tmp_path / "b")], [str(tmp_path / "a"), "--fast"]):
        p = subprocess.run(["bash", str(ROOT / "bench" / "gpu_acceptance.sh"), *args], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("usage: bash bench/gpu_acceptance.sh")
