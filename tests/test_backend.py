"""Backend: device selection, and proof that the GPU path calls only names CuPy has.

CuPy imports without a GPU, so ``hasattr(cupy, name)`` can be checked on this machine: every
name the library takes from an array namespace must exist in CuPy and in NumPy -- ``xp.<name>``
(and ``xp.<a>.<b>``), also reached as ``self.xp.``, ``model.xp.``, ``xp_.`` (any name or attribute
``xp``, ``xp_``, ``*_xp``) or ``get_array_module(...).<name>`` -- and every ``cp.<name>`` (CuPy
itself, backend.py and distributed.py) must exist in CuPy."""

import ast
import pathlib
import re
from types import SimpleNamespace

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


# A name or attribute that holds the array namespace: xp, xp_, self.xp, model.xp, host_xp, ...
XP_NAME = re.compile(r"(?:\w*_)?xp_?")


def _attribute_chain(node):
    """(root, [attr, ...]) of an attribute chain ``root.a.b``: root is the innermost non-attribute."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return node, attrs[::-1]


def _call_name(node):
    """The name a call node calls: ``f`` for f(...) and for mod.f(...); None otherwise."""
    if isinstance(node, ast.Call):
        func = node.func
        return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return None


def namespace_chains(source: str):
    """Yield ``(kind, chain, lineno, via)`` for every attribute chain the source takes from an
    array namespace: kind "xp" after a name or attribute matching XP_NAME (``self.xp.linalg.norm``
    -> ('linalg', 'norm'), via "self.xp") or after a ``get_array_module(...)`` call (any prefix:
    ``backend.``; via "get_array_module()"); kind "cp" after the name ``cp`` (CuPy itself, via
    "cp").  Each prefix of a chain comes too (``xp.linalg``)."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        root, attrs = _attribute_chain(node)
        if isinstance(root, ast.Name):
            names = [root.id, *attrs]
            if root.id == "cp":
                yield "cp", tuple(attrs), node.lineno, "cp"
                continue
            at = next((i for i, n in enumerate(names) if XP_NAME.fullmatch(n)), None)
            if at is not None and at + 1 < len(names):
                yield "xp", tuple(names[at + 1:]), node.lineno, ".".join(names[:at + 1])
        elif _call_name(root) == "get_array_module":
            yield "xp", tuple(attrs), node.lineno, "get_array_module()"


def _resolve(mod, chain):
    obj = mod
    for name in chain:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def missing_names(source: str, where: str, cupy, numpy=np, gpu_only_cuda: bool = False):
    """The names of ``namespace_chains(source)`` missing from ``cupy`` (every chain) or ``numpy``
    (the "xp" chains, but for ``xp.cuda.*`` where gpu_only_cuda: backend.py's GPU-only branch)."""
    missing = set()
    for kind, chain, line, _ in namespace_chains(source):
        mods = (cupy,) if kind == "cp" or (gpu_only_cuda and chain[0] == "cuda") else (cupy, numpy)
        for mod in mods:
            if not _resolve(mod, chain):
                missing.add(f"{where}:{line}: {kind}.{'.'.join(chain)} missing in {mod.__name__}")
    return sorted(missing)


FAKE_SOURCE = """
def f(self, model, m, run, a, host_xp):
    self.xp.exp(a); model.xp.linalg.norm(a); m.xp.random.bogus_rng(); run.xp.sum(a)
    xp_.not_a_cupy_name(a); get_array_module(a).also_bogus(a); backend.get_array_module(a).zeros(3)
    host_xp.asarray(a).bogus_method(); cp.cuda.no_such_thing(); cp.empty(3); xp.linalg.bogus_inv(a)
    math.exp(a); np.bogus_numpy_name(a); exp.bogus_attribute
"""


def test_scanner_finds_every_spelling_of_the_namespace():
    found = list(namespace_chains(FAKE_SOURCE))
    assert {via for *_, via in found} == {"self.xp", "model.xp", "m.xp", "run.xp", "xp_", "get_array_module()",
                                         "host_xp", "cp", "xp"}
    chains = {(kind, chain) for kind, chain, *_ in found}
    assert chains == {
        ("xp", ("exp",)), ("xp", ("linalg",)), ("xp", ("linalg", "norm")), ("xp", ("random",)),
        ("xp", ("random", "bogus_rng")), ("xp", ("sum",)), ("xp", ("not_a_cupy_name",)), ("xp", ("also_bogus",)),
        ("xp", ("zeros",)), ("xp", ("asarray",)), ("cp", ("cuda",)), ("cp", ("cuda", "no_such_thing")),
        ("cp", ("empty",)), ("xp", ("linalg", "bogus_inv")),
    }


def test_scanner_reports_names_missing_from_cupy():
    """With a stand-in CuPy (so that this runs without CuPy too): the bogus names, and only
    they, are reported; so the real test fails when the library calls a name CuPy lacks."""
    fake_cupy = SimpleNamespace(__name__="cupy", exp=1, sum=1, zeros=1, asarray=1, empty=1,
                                linalg=SimpleNamespace(norm=1), random=SimpleNamespace(),
                                cuda=SimpleNamespace())
    missing = missing_names(FAKE_SOURCE, "fake.py", fake_cupy)
    reported = {line.split(": ", 1)[1] for line in missing}
    assert reported == {
        "xp.random.bogus_rng missing in cupy", "xp.random.bogus_rng missing in numpy",
        "xp.not_a_cupy_name missing in cupy", "xp.not_a_cupy_name missing in numpy",
        "xp.also_bogus missing in cupy", "xp.also_bogus missing in numpy",
        "cp.cuda.no_such_thing missing in cupy",
        "xp.linalg.bogus_inv missing in cupy", "xp.linalg.bogus_inv missing in numpy",
    }


def test_sources_found():
    assert len(SOURCES) >= 5


def test_every_xp_name_exists_in_cupy_and_numpy():
    cupy = pytest.importorskip("cupy", reason="cupy not installed (pip install cupy-cuda13x)")
    missing = []
    seen = {"xp": 0, "cp": 0}
    spellings = set()
    for path in SOURCES:
        source = path.read_text()
        for kind, _, _, via in namespace_chains(source):
            seen[kind] += 1
            spellings.add(via)
        # xp.cuda internals are only touched in backend.py, in its GPU-only branch: CuPy only
        backend_py = path.name == "backend.py"
        missing += missing_names(source, str(path.relative_to(ROOT)), cupy, np, gpu_only_cuda=backend_py)
    assert seen["xp"] > 10 and seen["cp"] > 3, seen
    # the scan reaches past the plain xp. (test_scanner_finds_every_spelling_of_the_namespace: all)
    assert {"xp", "self.xp", "get_array_module()", "cp"} <= spellings, spellings
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
