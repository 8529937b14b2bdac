"""Backend: device selection, and proof that the GPU path calls only names CuPy has.

CuPy imports without a GPU, so ``hasattr(cupy, name)`` can be checked on this machine: every
``xp.<name>`` (and ``xp.<a>.<b>``) the library writes must exist in CuPy and in NumPy."""

import ast
import pathlib

import numpy as np
import pytest

from jmvae_cupy import backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "jmvae_cupy").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))

# Compute modules: array code that must run unchanged on cupy arrays.  In them, ``np.`` may only
# name dtypes and constants, never an array function (which would fail on a cupy array).
COMPUTE_DIRS = ("layers", "models", "kernels")
COMPUTE_FILES = ("distributions.py", "optim.py", "nets.py")
NP_ALLOWED = {"float32", "float64", "int32", "int64", "uint8", "bool_", "dtype", "pi", "e", "inf", "ndarray",
              "integer", "floating", "finfo", "errstate"}


def _xp_chains(tree):
    """Yield attribute chains rooted at the name ``xp``: ('exp',), ('linalg', 'norm'), ..."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, cur = [], node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "xp":
                yield tuple(reversed(chain))


def _resolve(mod, chain):
    obj = mod
    for name in chain:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def test_sources_found():
    assert len(SOURCES) >= 5


def test_every_xp_name_exists_in_cupy_and_numpy():
    cupy = pytest.importorskip("cupy", reason="cupy not installed (pip install cupy-cuda13x)")
    missing = []
    seen = 0
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        chains = {c for c in _xp_chains(tree)}
        # xp.cuda / xp.random internals are only touched in backend.py (GPU-only branch)
        for chain in chains:
            seen += 1
            if path.name == "backend.py" and chain[0] == "cuda":
                continue
            for mod in (cupy, np):
                if not _resolve(mod, chain):
                    missing.append(f"{path.relative_to(ROOT)}: xp.{'.'.join(chain)} missing in {mod.__name__}")
    assert seen > 10
    assert not missing, "\n".join(missing)


def test_cupy_imported_only_in_backend():
    offenders = []
    for path in SOURCES:
        if path.name == "backend.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "cupy" for a in node.names):
                offenders.append(str(path))
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cupy":
                offenders.append(str(path))
    assert not offenders, offenders


def _numba_cpu_bodies(tree) -> set:
    """ids of the nodes inside ``@numba.njit`` functions: Numba CPU twins only ever see NumPy arrays."""
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and any(
            "njit" in ast.unparse(d) for d in fn.decorator_list
        ):
            inside.update(id(n) for n in ast.walk(fn))
    return inside


def test_compute_modules_call_no_numpy_array_function():
    bad = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).parts
        if not (any(d in rel for d in COMPUTE_DIRS) or rel[-1] in COMPUTE_FILES and rel[0] == "jmvae_cupy"):
            continue
        tree = ast.parse(path.read_text())
        twins = _numba_cpu_bodies(tree)
        for node in ast.walk(tree):
            if id(node) in twins:
                continue
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "np"
                    and node.attr not in NP_ALLOWED):
                bad.append(f"{'/'.join(rel)}:{node.lineno}: np.{node.attr}")
    assert not bad, "use xp = get_array_module(...) instead:\n" + "\n".join(bad)


def test_select_device(monkeypatch):
    assert backend.select_device("cpu") is np
    monkeypatch.setenv("JMVAE_DEVICE", "cpu")
    assert backend.select_device() is np
    with pytest.raises(backend.BackendError, match="unknown device"):
        backend.select_device("tpu")
    if not backend.gpu_available():
        assert backend.select_device("auto") is np
        with pytest.raises(backend.BackendError, match="no usable CUDA device"):
            backend.select_device("gpu")


def test_dtypes_and_arrays():
    assert backend.get_dtype("float32") == np.float32
    assert backend.get_dtype(np.float64) == np.float64
    with pytest.raises(backend.BackendError):
        backend.get_dtype("float16")
    a = np.ones(3)
    assert backend.get_array_module(a) is np
    assert backend.asnumpy(a) is a
    assert backend.to_device([1, 2], np, np.float32).dtype == np.float32


def test_to_device_async_on_the_cpu_is_the_array():
    a = np.arange(6.0).reshape(2, 3)
    assert backend.to_device_async(a, np) is a


def test_pinned_staging_names_exist_in_installed_cupy():
    """Every CuPy name the pinned staging ring calls exists (it cannot run without a GPU)."""
    cupy = pytest.importorskip("cupy", reason="cupy not installed (pip install cupy-cuda13x)")
    for chain in (("cuda", "alloc_pinned_memory"), ("cuda", "Device"), ("cuda", "get_current_stream"),
                  ("cuda", "Stream", "record"), ("cuda", "Event", "synchronize"), ("ndarray", "set"),
                  ("empty",)):
        assert _resolve(cupy, chain), ".".join(chain)


@pytest.mark.skipif(not backend.gpu_available(), reason="needs a usable CUDA device")
def test_pinned_staging_round_trips_more_draws_than_slots():
    """On a GPU: many copies of varying sizes and dtypes (the ring wraps and regrows), each
    queued behind GPU work, arrive intact."""
    xp = backend.select_device("gpu")
    r = np.random.default_rng(0)
    busy = xp.ones((2048, 2048), dtype=np.float32)
    sent, got = [], []
    for k in range(3 * backend._PinnedStaging.SLOTS):
        busy = busy @ busy * np.float32(1e-3)  # keep the stream busy
        a = r.standard_normal((k % 5 + 1, 300 * (k % 7 + 1))).astype(np.float32 if k % 2 else np.float64)
        sent.append(a)
        got.append(backend.to_device_async(a, xp))
    for a, d in zip(sent, got):
        assert d.dtype == a.dtype and np.array_equal(backend.asnumpy(d), a)
