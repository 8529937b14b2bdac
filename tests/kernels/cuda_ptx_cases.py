"""Every CUDA kernel compiles to PTX for sm_80 and sm_90, in float32 and float64, with no GPU.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``):
test_cuda_kernels.py runs this file in a fresh process with NUMBA_ENABLE_CUDASIM unset, since
``numba.cuda.compile_ptx`` does not exist under the simulator,

    python -m pytest tests/kernels/cuda_ptx_cases.py

It needs numba-cuda with NVVM (``pip install "numba-cuda[cu13]"``), and skips with that reason
only when either is missing (the ``test-cpu`` extra installs neither).
"""

from __future__ import annotations

import os
import re

import numba
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compile_ptx needs the real numba.cuda: unset NUMBA_ENABLE_CUDASIM", allow_module_level=True)

import importlib.util

if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip('numba-cuda not installed (the kernels target it, not numba\'s own deprecated numba.cuda): '
                'pip install "numba-cuda[cu13]"', allow_module_level=True)

from numba.cuda.cudadrv import nvvm  # noqa: E402

from jmvae_cupy.kernels import adam, bernoulli, bias_relu, gauss_kl, im2col, reparam, winograd  # noqa: E402

if not nvvm.is_available():
    pytest.skip(
        'NVVM not found: install numba-cuda with its CUDA extra, e.g. "numba-cuda[cu13]"', allow_module_level=True
    )

FLOAT_TYPES = {"float32": numba.float32, "float64": numba.float64}
MODULES = (reparam, gauss_kl, adam, bernoulli, bias_relu, im2col, winograd)
KERNELS = [(module, name) for module in MODULES for name in module._cuda_signatures(numba.float32)]


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("module, name", KERNELS, ids=[f"{m.__name__.rsplit('.', 1)[1]}.{n}" for m, n in KERNELS])
def test_kernel_compiles_to_ptx(module, name, dtype, cc, monkeypatch):
    from types import SimpleNamespace

    from numba import cuda
    from numba.cuda import dispatcher

    # A kernel that calls a device function (kernels/_cuda_reduce.py) has Numba compile that
    # function for the current device's compute capability while typing the kernel; with no GPU
    # there is none, so the test names the one it compiles for.
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: SimpleNamespace(compute_capability=cc))

    kernel = getattr(module._cuda_kernels(), name)
    signature = module._cuda_signatures(FLOAT_TYPES[dtype])[name]
    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert ".entry" in ptx
    if dtype == "float32":
        # Accumulation stays in the input dtype: no instruction on doubles (a bare Python float
        # constant in a kernel would promote float32 arithmetic to float64).
        doubles = [line.strip() for line in ptx.splitlines() if re.search(r"\.f64\b", line)]
        assert not doubles, doubles[:5]
