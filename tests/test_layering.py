"""The library's imports point downward and form no cycle (read from the source, lazy imports
inside functions included, so a cycle cannot hide behind an import put off until call time):

    backend, rng, data, checkpoint, ... -> kernels -> layers -> nets, distributions, optim
        -> models -> estimators, inference, coherence, distributed
        -> runs, evaluation, train, plan (the libraries the commands share)
        -> evaluate, figures, generate, reproduce, plan_eval, report, selftest, gradcheck's checks

A module may import its own rank or any rank below it.  Importing a module always imports its
parent packages first, so an edge to a module's own parent is not counted."""

import ast
import pathlib
from collections import defaultdict

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (module prefix, rank): the longest matching prefix gives a module its rank
RANKS = [
    ("jmvae_cupy.backend", 0), ("jmvae_cupy.rng", 0), ("jmvae_cupy.fsutil", 0), ("jmvae_cupy.hostmem", 0),
    ("jmvae_cupy.cli", 0), ("jmvae_cupy.checkpoint", 0), ("jmvae_cupy.data", 0), ("jmvae_cupy.viz", 0),
    ("jmvae_cupy.plots", 0), ("jmvae_cupy.gradcheck.core", 0),
    ("jmvae_cupy.kernels", 1),
    ("jmvae_cupy.layers", 2),
    ("jmvae_cupy.nets", 3), ("jmvae_cupy.distributions", 3), ("jmvae_cupy.optim", 3),
    ("jmvae_cupy.models", 4),
    ("jmvae_cupy.estimators", 5), ("jmvae_cupy.inference", 5), ("jmvae_cupy.diagnostics", 5),
    ("jmvae_cupy.coherence", 5), ("jmvae_cupy.distributed", 5),
    ("jmvae_cupy.runs", 6), ("jmvae_cupy.evaluation", 6), ("jmvae_cupy.train", 6), ("jmvae_cupy.plan", 6),
    ("jmvae_cupy.evaluate", 7), ("jmvae_cupy.figures", 7), ("jmvae_cupy.generate", 7),
    ("jmvae_cupy.reproduce", 7), ("jmvae_cupy.plan_eval", 7), ("jmvae_cupy.report", 7),
    ("jmvae_cupy.selftest", 7), ("jmvae_cupy.gradcheck", 7), ("jmvae_cupy.data.__main__", 7),
]


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":  # shipped as jmvae_cupy.kernels (setup.py's package_dir)
        parts = ["jmvae_cupy"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict:
    """{module: {modules of the library it imports}}, every import statement of every file."""
    files = [p for d in ("jmvae_cupy", "kernels") for p in (ROOT / d).rglob("*.py")]
    mods = {module_name(p): p for p in files}
    edges = defaultdict(set)
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base] + subs
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[m] |= {t for t in targets if t in mods and t != m and not m.startswith(t + ".")}
    return {m: edges[m] for m in mods}


def rank(module: str):
    hits = [(len(p), r) for p, r in RANKS if module == p or module.startswith(p + ".")]
    return max(hits)[1] if hits else None


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


GRAPH = import_graph()


def test_the_graph_sees_the_library():
    assert {"jmvae_cupy.layers.dense", "jmvae_cupy.kernels.reparam", "jmvae_cupy.train"} <= set(GRAPH)
    assert "jmvae_cupy.kernels.reparam" in GRAPH["jmvae_cupy.distributions"] or any(
        t.startswith("jmvae_cupy.kernels") for t in GRAPH["jmvae_cupy.distributions"])


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_every_module_has_a_rank():
    assert [m for m in GRAPH if m != "jmvae_cupy" and rank(m) is None] == []


def test_imports_point_downward():
    up = [f"{m} ({rank(m)}) imports {t} ({rank(t)})" for m, ts in GRAPH.items() for t in sorted(ts)
          if m != "jmvae_cupy" and rank(t) > rank(m)]
    assert up == []


@pytest.mark.parametrize("graph, want", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_cycle_finder_finds_cycles(graph, want):
    assert cycles(graph) == want
