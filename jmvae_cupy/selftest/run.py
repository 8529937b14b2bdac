"""``python -m jmvae_cupy.selftest [--device cpu|gpu|auto] [--json FILE] [--quick]``: the check of an
installation, one line per check (PASS, FAIL or SKIP with its reason), exit 1 on any failure.

The checks, in order (the package docstring, jmvae_cupy/selftest/__init__.py, says what each
compares; README "Check your GPU install" what the lines mean):

1. ``kernel NAME DTYPE``: every fused kernel on the device against its twin (selftest/kernels.py),
   and ``kernel grids past 65,535 blocks`` (GPU only);
2. ``step MODEL DTYPE``: one training step of each MNIST model and each width-scaled 32-pixel
   CelebA model on the device against the float64 NumPy step (selftest/steps.py); float32, and on
   a GPU float64 as well;
3. ``sync MODEL``: the step inside the host-round-trip trap (selftest/hostsync.py), and on a GPU
   under CuPy's synchronisation detection with GPU work queued ahead of it;
4. ``memory MODEL batch N``: the most memory the MNIST JMVAE-kl step at batch 100 and the CelebA
   JMVAE-kl step at batch 64 hold (CuPy's pool on a GPU), against a budget;
5. ``train``, ``resume``, ``evaluate``: two epochs of ``train mnist --variant kl`` on the device, a
   resume to a third, an evaluation (selftest/training.py).

``--quick`` runs fewer shapes, the smaller CelebA model in the CPU's memory check, a shorter
training run and no past-the-limit grids.  ``--json FILE`` writes every result (rewritten after
each check, so that a run cut short leaves the checks it finished).  Errors of the command itself
(an unusable ``--device gpu``, an unwritable ``--json``) are one line on stderr, exit 1; a check
that raises anything is that check's FAIL line, with the exception's one-line message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from typing import NamedTuple

import numba
import numpy as np

from jmvae_cupy.backend import BackendError, cupy_module, cupyx_module, device_name, select_device
from jmvae_cupy.cli import guarded, one_line
from jmvae_cupy.models import build_model
from jmvae_cupy.models.architectures import celeba_arch
from jmvae_cupy.optim import Adam
from jmvae_cupy.rng import Rng

from .bounds import DTYPES, CheckFailed
from .hostsync import trap_steps
from .kernels import KERNEL_CHECKS, big_grids, sides
from .steps import assert_budget, compare_steps, gpu_step_waits, random_batch, step_memory, where_raised
from .training import TrainingRun


class Skip(Exception):
    """A check that cannot run here; the message says why (one line)."""


class Result(NamedTuple):
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str
    seconds: float


# Memory budgets (MiB) of the memory checks: about twice what the step held at its peak on the CPU
# when this check was written (NumPy 2.4, tracemalloc: 52 MiB for MNIST JMVAE-kl at batch 100, 740 MiB
# for the 64-pixel CelebA JMVAE-kl at batch 64, 52 MiB for the 32-pixel width-1/4 one at batch 64), so
# that a copy too many or a float64 temporary in a float32 step shows, while the pool's rounding and
# the GPU's plain-xp batch norm (more temporaries than the CPU's fused kernels) fit.
MEMORY_BUDGET_MIB = {"mnist-kl": 128, "celeba-kl": 1536, "celeba32-kl": 128}


def versions(xp) -> dict:
    """The versions that matter to the checks (the JSON's "versions")."""

    out = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__}
    cp = cupy_module()
    if cp is not None:
        out["cupy"] = cp.__version__
    if xp is not np:
        try:
            out["numba-cuda"] = version("numba-cuda")
        except Exception:  # (not installed as a distribution: numba's bundled CUDA target)
            pass
        cp = xp
        out["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        out["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
    return out


def model_cases(quick: bool):
    """(label, arch, variant, direction, batch) of the step checks: every MNIST model at batch 100 (32
    with --quick: the same step, a third of the products) and the JMVAE family on the 32-pixel CelebA
    nets at width 1/4 (16, 32, 64 channels) at batch 16."""

    celeba32 = celeba_arch(size=32, width=0.25)
    n = 32 if quick else 100
    cases = [(f"mnist-{v}", "mnist", v, None, n) for v in ("jmvae", "kl", "h")]
    cases += [(f"mnist-{v}-{d}", "mnist", v, d, n) for v in ("cvae", "cmma") for d in ("label2image", "image2label")]
    cases += [(f"celeba32-{v}", celeba32, v, None, 16) for v in ("jmvae", "kl", "h")]
    return cases


class Selftest:
    """The checks on one device; ``run()`` prints a line per check and returns the exit status."""

    def __init__(self, device: str, quick: bool, json_path: str | None, out=None, only=()):
        self.only = tuple(only)  # name prefixes of the checks to run (empty: all)
        self.xp = select_device(device)
        self.gpu = self.xp is not np
        self.device = "gpu" if self.gpu else "cpu"
        self.quick, self.json_path, self.out = quick, json_path, out
        self.results: list[Result] = []
        self.started = time.perf_counter()
        self.header = {"device": self.device, "device_name": device_name(self.xp), "quick": quick,
                       "versions": versions(self.xp)}

    # ------------------------------------------------------------------ reporting
    def say(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)  # (sys.stdout as it is now: tests capture it)

    def record(self, result: Result) -> None:
        self.results.append(result)
        secs = "" if result.status == "SKIP" else f"{result.seconds:6.1f} s"
        self.say(f"{result.status:4s}  {result.name:<36s} {secs:>8s}  {result.detail}")
        if self.json_path:
            self.write_json()

    def summary(self) -> dict:
        counts = {s: sum(r.status == s for r in self.results) for s in ("PASS", "FAIL", "SKIP")}
        return {"passed": counts["PASS"], "failed": counts["FAIL"], "skipped": counts["SKIP"],
                "seconds": round(time.perf_counter() - self.started, 2)}

    def write_json(self) -> None:
        doc = {**self.header, "checks": [r._asdict() for r in self.results], **self.summary()}
        tmp = self.json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.json_path)

    def selected(self, name: str) -> bool:
        return not self.only or name.startswith(self.only)

    def check(self, name: str, fn, *args) -> bool:
        """Run one check: PASS with what ``fn(*args)`` returns, SKIP on Skip, FAIL on anything raised.
        A check that ``--only`` leaves out is not run (False)."""
        if not self.selected(name):
            return False
        t0 = time.perf_counter()
        try:
            detail = fn(*args)
            status = "PASS"
        except Skip as e:
            status, detail = "SKIP", one_line(e)
        except CheckFailed as e:
            status, detail = "FAIL", one_line(e)
        except Exception as e:  # a bug or a broken install: the check fails, the others still run
            status, detail = "FAIL", f"{type(e).__name__}: {one_line(e)} ({where_raised(e)})"
        self.record(Result(name, status, detail, round(time.perf_counter() - t0, 2)))
        return status == "PASS"

    def skip(self, name: str, reason: str) -> None:
        if self.selected(name):
            self.record(Result(name, "SKIP", reason, 0.0))

    # ------------------------------------------------------------------ the checks
    def kernels(self):
        for kc in KERNEL_CHECKS:
            for dtype in DTYPES:
                rng = np.random.default_rng(1234)
                dev, twin = sides(self.xp)
                self.check(f"kernel {kc.name} {np.dtype(dtype).name}",
                           lambda kc=kc, dtype=dtype, rng=rng, dev=dev, twin=twin:
                           f"{dev} and {twin} within bound: {kc.run(self.xp, dtype, rng, self.quick)}")
        name = "kernel grids past 65,535 blocks"
        if not self.gpu:
            self.skip(name, "needs a GPU: the CPU twins have no launch grid (the capped grids above ran their shapes)")
        elif self.quick:
            self.skip(name, "--quick (half a million rows: run without --quick)")
        else:
            self.check(name, big_grids, self.xp, np.float32, np.random.default_rng(1234))

    def steps(self):
        for label, arch, variant, direction, batch in model_cases(self.quick):
            self.check(f"step {label} float32", compare_steps, arch, variant, direction, batch, self.xp, "float32")
        if not self.gpu:
            self.skip("step * float64", "the device is the CPU: the float64 NumPy step is the reference itself "
                                        "(the float32 steps above ran against it)")
            return
        for label, arch, variant, direction, batch in model_cases(self.quick):
            self.check(f"step {label} float64", compare_steps, arch, variant, direction, batch, self.xp, "float64")

    def sync_cases(self):
        """(label, arch, batch) of the sync checks: MNIST JMVAE-kl and the 32-pixel CelebA one."""
        return [(label, arch, batch) for label, arch, _, _, batch in model_cases(self.quick)
                if label in ("mnist-kl", "celeba32-kl")]

    def sync(self):
        def trap(arch, batch):
            model = build_model(arch, "kl", seed=0, dtype="float32", xp=np)
            trap_steps(model, *random_batch(model, batch, np), steps=2)
            return ("2 steps on arrays that raise at any host conversion (float(), bool(), .item(), "
                    "boolean masks, ...); every result stayed a device array")

        for label, arch, batch in self.sync_cases():
            self.check(f"sync {label} trap", trap, arch, batch)
        if not self.gpu:
            self.skip("sync * gpu", "needs a GPU: CuPy's synchronisation detection and a step queued behind GPU work "
                                    "(on the CPU the trap above stands in)")
            return
        for label, arch, batch in self.sync_cases():
            self.check(f"sync {label} gpu", self.gpu_sync, arch, batch)

    def gpu_sync(self, arch, batch):
        cp = self.xp
        model = build_model(arch, "kl", seed=0, dtype="float32", xp=cp)
        x, w = random_batch(model, batch, cp)
        opt, rng = Adam(), Rng(0)

        def step():
            _, _, grads = model.loss_and_grads(x, w, rng, beta=0.5)
            opt.step(model.params, grads)

        for _ in range(10):  # compiles every kernel, fills the pool, and cycles the ring of 8 pinned buffers
            step()            # the noise goes through (one or two draws a step; backend._PinnedStaging)
        cp.cuda.get_current_stream().synchronize()
        t0 = time.perf_counter()
        step()
        cp.cuda.get_current_stream().synchronize()
        spin = max(1.0, 20 * (time.perf_counter() - t0))
        waited, host_s = gpu_step_waits(cp, cupyx_module(), step, spin)
        if waited:
            raise CheckFailed(waited)
        return (f"no host wait: the step returned after {host_s * 1e3:.0f} ms of host time while {spin:.1f} s of "
                "GPU work queued ahead of it still ran; CuPy's synchronisation detection saw none")

    def memory(self):
        where = "CuPy's pool" if self.gpu else "NumPy's allocations (tracemalloc)"
        cases = [("mnist-kl", "mnist", 100)]
        if self.quick and not self.gpu:  # (the 64-pixel step takes seconds on a CPU)
            cases.append(("celeba32-kl", celeba_arch(size=32, width=0.25), 64))
        else:
            cases.append(("celeba-kl", "celeba", 64))
        for label, arch, batch in cases:
            budget = MEMORY_BUDGET_MIB[label]
            self.check(f"memory {label} batch {batch}",
                       lambda arch=arch, batch=batch, label=label, budget=budget:
                       f"{where}: " + assert_budget(step_memory(self.xp, arch, "kl", batch), budget, label))

    def training(self, workdir: str):
        subset, test_size = ((300, 200) if self.quick else (1000, 500)) if not self.gpu else \
            ((2000, 500) if self.quick else (0, 0))
        tr = TrainingRun(self.device, workdir, subset, test_size, compare=not self.quick)
        if self.check("train mnist-kl 2 epochs", tr.train_two_epochs):
            self.check("train mnist-kl resume to epoch 3", tr.resume)
            self.check("train mnist-kl evaluate", tr.evaluate)
        else:
            reason = "the training run above failed" if self.selected("train mnist-kl 2 epochs") else \
                "needs the training run, which --only left out"
            self.skip("train mnist-kl resume to epoch 3", reason)
            self.skip("train mnist-kl evaluate", reason)

    def run(self) -> int:
        h = self.header
        vers = ", ".join(f"{k} {v}" for k, v in h["versions"].items())
        mode = " (--quick)" if self.quick else ""
        mode += f" (--only {' '.join(repr(o) for o in self.only)})" if self.only else ""
        self.say(f"jmvae_cupy selftest on {h['device_name']}{mode}: {vers}")
        self.kernels()
        self.steps()
        self.sync()
        self.memory()
        with tempfile.TemporaryDirectory(prefix="jmvae-selftest-") as workdir:
            self.training(workdir)
        s = self.summary()
        if self.only and not self.results:
            print(f"error: --only {' '.join(self.only)}: no check has a name starting so (the names are the "
                  "second column of a full run's lines)", file=sys.stderr)
            return 1
        self.say(f"selftest: {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped on {self.device} "
                 f"in {s['seconds']:.0f} s" + (f"; results in {self.json_path}" if self.json_path else ""))
        if self.json_path:
            self.write_json()
        return 1 if s["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jmvae_cupy.selftest",
                                description="Check this installation: every fused kernel, a training step of "
                                            "every model against float64 NumPy, host round trips, memory, and "
                                            "train / resume / evaluate, on the device.  Exit 1 on any failure.")
    p.add_argument("--device", default="auto", choices=["cpu", "gpu", "auto"],
                   help="where to check (default auto: the GPU when CuPy sees one)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write every result as JSON to FILE")
    p.add_argument("--quick", action="store_true", help="fewer shapes, smaller runs (under a minute on a CPU)")
    p.add_argument("--only", metavar="NAME", action="append", default=[],
                   help="run only the checks whose names start with NAME (repeatable), e.g. 'kernel adam' or "
                        "'step mnist' (to rerun what failed)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.json:  # an unwritable path fails now, in one line, not after the checks
            with open(args.json, "a"):
                pass
        return Selftest(args.device, args.quick, args.json, only=args.only).run()

    return guarded(body, (BackendError,))
