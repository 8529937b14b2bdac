"""The CUDA kernels, checked on a machine without a GPU, each check in a fresh process:

* cuda_sim_cases.py: the kernels against the plain-xp reference under the CUDA simulator
  (NUMBA_ENABLE_CUDASIM=1 must be set before numba.cuda is first imported: never in this process);
* cuda_ptx_cases.py: every kernel compiles to PTX for sm_80 and sm_90 in float32 and float64
  (compile_ptx needs the real numba.cuda, so NUMBA_ENABLE_CUDASIM is removed there);
* importing the kernels, or running them on NumPy arrays, does not import numba.cuda;
* numba-cuda's low-occupancy warning is silenced by ``_dispatch.low_occupancy_warnings_off``
  (the real numba.cuda's launch configuration, built without a GPU) and only there.

Each subprocess must pass and must have run at least one test: a module that skips itself, or
collects nothing, fails here (except the PTX cases when numba-cuda or its NVVM is genuinely missing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def run_pytest(module: str, tmp_path, simulator: bool):
    """Run ``pytest tests/kernels/<module>`` in a fresh interpreter; return (returncode, output,
    summary) with summary = {"tests", "failures", "errors", "skipped", "skip_reasons"}."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    report = tmp_path / f"{module}.xml"
    cmd = [sys.executable, "-m", "pytest", str(HERE / module), "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*cmd, f"--junitxml={report}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    output = proc.stdout + proc.stderr
    summary = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "skip_reasons": []}
    if report.exists():
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        for key in ("tests", "failures", "errors", "skipped"):
            summary[key] = int(suite.get(key, 0))
        # (a test's skip: the reason is the message; a module skipped at collection: the text)
        summary["skip_reasons"] = [f"{s.get('message', '')} {s.text or ''}" for s in suite.iter("skipped")]
    return proc.returncode, output, summary


def test_cuda_kernels_match_reference_under_simulator(tmp_path):
    rc, output, s = run_pytest("cuda_sim_cases.py", tmp_path, simulator=True)
    assert rc == 0, output[-6000:]
    ran = s["tests"] - s["skipped"]
    assert ran > 0 and s["skipped"] == 0, f"the simulator cases did not run: {s}\n{output[-3000:]}"


def test_cuda_kernels_compile_to_ptx(tmp_path):
    rc, output, s = run_pytest("cuda_ptx_cases.py", tmp_path, simulator=False)
    # (a module that skips itself as a whole: pytest exits 0, or 5 where it then counts no test)
    if rc in (0, 5) and s["tests"] == s["skipped"] and any("NVVM not found" in r or "numba-cuda not installed" in r
                                                           for r in s["skip_reasons"]):
        pytest.skip(s["skip_reasons"][0])
    assert rc == 0, output[-6000:]
    ran = s["tests"] - s["skipped"]
    assert ran > 0 and s["skipped"] == 0, f"the PTX cases did not run: {s}\n{output[-3000:]}"


def test_kernels_import_numba_cuda_only_when_launching_on_the_gpu():
    script = (
        "import sys, numpy as np\n"
        "from jmvae_cupy.kernels import gauss_kl, reparam\n"
        "a = np.ones((2, 3), np.float32)\n"
        "reparam.reparam_backward(a, a, a); gauss_kl.gauss_kl_forward(a, a)\n"
        "assert 'numba.cuda' not in sys.modules, 'numba.cuda was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_low_occupancy_warning_is_off_only_inside_the_package_launches():
    """numba-cuda warns at the launch configuration (``kernel[blocks, threads]``) of a grid under
    128 blocks; inside low_occupancy_warnings_off it must not, outside it still does.  Builds
    numba-cuda's private _LaunchConfiguration (no GPU needed): skipped where that class is gone,
    in which case the switch must be checked again against the new numba-cuda."""
    script = (
        "import warnings, numba\n"
        "from numba.cuda import dispatcher\n"
        "from jmvae_cupy.kernels._dispatch import low_occupancy_warnings_off\n"
        "if not hasattr(dispatcher, '_LaunchConfiguration'):\n"
        "    print('SKIP'); raise SystemExit\n"
        "def configure():\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        dispatcher._LaunchConfiguration(None, (1, 1, 1), (32, 1, 1), 0, 0)\n"
        "    return [str(x.message) for x in w if 'occupancy' in str(x.message)]\n"
        "assert configure(), 'numba-cuda no longer warns: the test checks nothing'\n"
        "with low_occupancy_warnings_off():\n"
        "    assert not configure(), configure()\n"
        "assert configure(), 'the warning stayed off after the package launch'\n"
        "print('OK')\n"
    )
    unset = ("NUMBA_ENABLE_CUDASIM", "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if proc.stdout.strip() == "SKIP":
        pytest.skip("numba-cuda has no _LaunchConfiguration: check low_occupancy_warnings_off by hand")
    assert proc.stdout.strip() == "OK", proc.stdout
