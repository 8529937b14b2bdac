"""``python -m jmvae_cupy.gradcheck``: --all passes, a broken backward is caught and named, and every
backward function of the library has a check and a derivation page."""

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jmvae_cupy.layers
import jmvae_cupy.models
from jmvae_cupy import gradcheck
from jmvae_cupy.gradcheck import cli as gradcheck_cli
from jmvae_cupy.gradcheck import index

KERNELS = importlib.import_module("jmvae_cupy.kernels")  # installed from kernels/ (package_dir)
ROOT = Path(__file__).resolve().parents[1]
DERIV = ROOT / "docs" / "derivations"
# pages written by the owners of the kernels and of the convolution stack
EXTERNAL_PAGES = {"reparameterisation.md", "gaussian_kl.md", "conv.md", "deconv.md", "batchnorm.md"}


def test_all_checks_pass(capsys):
    assert gradcheck.main(["--all"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and f"all {len(gradcheck_cli.REGISTRY)} checks passed" in out
    for name in ("dense", "jmvae_kl:kl_x", "jmvae_h:kl_z1", "adam"):
        assert any(line.split()[:1] == [name] and "PASS" in line for line in out.splitlines())


def test_list_and_bad_arguments(capsys):
    assert gradcheck.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in gradcheck_cli.REGISTRY)
    assert gradcheck.main(["no_such_check"]) == 2
    assert "unknown check 'no_such_check'" in capsys.readouterr().err
    assert gradcheck.main([]) == 2


def test_a_broken_dense_backward_fails_and_is_named(monkeypatch, capsys):
    import jmvae_cupy.layers.dense as dense

    real = dense.dense_backward

    def broken(dy, cache):
        dx, g = real(dy, cache)
        return dx, {"W": 2 * g["W"], "b": g["b"]}

    monkeypatch.setattr(dense, "dense_backward", broken)
    assert gradcheck.main(["dense", "relu"]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert "FAIL" in rows["dense"] and rows["dense"].rstrip().endswith("W")
    assert "PASS" in rows["relu"]
    assert "FAILED 1 of 2 checks" in out and out.rstrip().endswith("dense")


def test_a_broken_kernel_backward_fails_and_is_named(monkeypatch, capsys):
    import jmvae_cupy.kernels.gauss_kl as gk

    real = gk.gauss_kl_backward

    def broken(dkl, mu1, var1, mu2=None, var2=None):
        d = list(real(dkl, mu1, var1, mu2, var2))
        d[1] = d[1] * 1.01  # a 1% error in dvar1
        return tuple(d)

    monkeypatch.setattr(gk, "gauss_kl_backward", broken)
    assert gradcheck.main(["gauss_kl*", "reparam"]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert "FAIL" in rows["gauss_kl"] and "var1" in rows["gauss_kl"]
    assert "FAIL" in rows["gauss_kl_prior"] and "PASS" in rows["reparam"]
    assert out.rstrip().endswith("gauss_kl, gauss_kl_prior")


def test_a_backward_that_raises_is_a_failure(monkeypatch, capsys):
    import jmvae_cupy.layers.activations as act

    monkeypatch.setattr(act, "sigmoid_backward", lambda dy, y: dy[:, :1])
    assert gradcheck.main(["sigmoid"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_command_line_exit_code():
    r = subprocess.run([sys.executable, "-m", "jmvae_cupy.gradcheck", "relu", "gauss_kl_prior"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all 2 checks passed" in r.stdout


# ------------------------------------------------------------------ coverage


def _modules(pkg):
    yield pkg
    for info in pkgutil.iter_modules(pkg.__path__):
        yield importlib.import_module(f"{pkg.__name__}.{info.name}")


def discover_backwards() -> set:
    """Qualified names of every backward function the library defines: callables named *_backward in
    jmvae_cupy.layers.*, jmvae_cupy.distributions (module functions and class methods) and
    jmvae_cupy.kernels.*; ``backward`` of the model building blocks (GaussianHead); every public
    model class's loss_and_grads."""
    import jmvae_cupy.distributions as dist

    found = set()
    for mod in [*_modules(jmvae_cupy.layers), dist, *_modules(KERNELS)]:
        for name, obj in vars(mod).items():
            if name.startswith("_"):
                continue
            if callable(obj) and name.endswith("_backward") and getattr(obj, "__module__", None) == mod.__name__:
                found.add(f"{mod.__name__}.{name}")
            if inspect.isclass(obj) and obj.__module__ == mod.__name__:
                for attr in dir(obj):
                    if attr.endswith("_backward") and not attr.startswith("_") and callable(getattr(obj, attr)):
                        found.add(f"{mod.__name__}.{name}.{attr}")
    for mod in _modules(jmvae_cupy.models):
        for name, obj in vars(mod).items():
            if not inspect.isclass(obj) or obj.__module__ != mod.__name__ or name.startswith("_"):
                continue
            if callable(getattr(obj, "loss_and_grads", None)):
                found.add(f"{mod.__name__}.{name}.loss_and_grads")
            if callable(getattr(obj, "backward", None)) and callable(getattr(obj, "forward", None)):
                found.add(f"{mod.__name__}.{name}.backward")
    return found


def test_discovery_finds_the_known_backwards():
    found = discover_backwards()
    for name in ("jmvae_cupy.layers.dense.dense_backward", "jmvae_cupy.distributions.Bernoulli.loglik_backward",
                 "jmvae_cupy.kernels.reparam.reparam_backward", "jmvae_cupy.models.jmvae.JMVAEKL.loss_and_grads"):
        assert name in found


def test_every_backward_is_covered_by_a_check():
    missing = sorted(discover_backwards() - set(index.BACKWARDS))
    assert not missing, f"backward functions with no gradcheck entry: {missing}"
    for backward, checks in index.BACKWARDS.items():
        assert checks and all(c in gradcheck_cli.REGISTRY for c in checks), backward


def _page_cases():
    return sorted(discover_backwards() | set(index.DERIVATIONS))


@pytest.mark.parametrize("backward", _page_cases())
def test_every_backward_has_a_derivation_page(backward):
    assert backward in index.DERIVATIONS, f"{backward}: no page in gradcheck/index.py DERIVATIONS"
    page = DERIV / index.DERIVATIONS[backward]
    if not page.exists() and page.name in EXTERNAL_PAGES:
        pytest.skip(f"{page.name} is not written yet (owned by another part of the project)")
    assert page.exists(), f"{backward}: {page} is missing"
    text = page.read_text()
    parts = backward.split(".")
    func = parts[-1]
    owner = parts[-2] if parts[-2][:1].isupper() else None  # Class.method: name the class too
    assert func in text, f"{page.name} never mentions {func}"
    if owner:
        assert owner in text, f"{page.name} never mentions {owner} (for {owner}.{func})"


def test_derivation_index_links_every_page():
    readme = (DERIV / "README.md").read_text()
    for page in set(index.DERIVATIONS.values()) | {"adam.md", "objectives.md"}:
        assert f"({page})" in readme, f"docs/derivations/README.md does not link {page}"


def test_adam_check_sees_a_wrong_step(monkeypatch, capsys):
    import jmvae_cupy.optim as optim

    real = optim.Adam.step

    def no_bias_correction(self, params, grads):
        for name, g in grads.items():  # one step of plain RMSprop-with-momentum: no 1/(1-b^t)
            m = self.m.setdefault(name, np.zeros_like(g))
            v = self.v.setdefault(name, np.zeros_like(g))
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            params[name] -= self.lr * m / (np.sqrt(v) + self.eps)

    monkeypatch.setattr(optim.Adam, "step", no_bias_correction)
    assert gradcheck.main(["adam"]) == 1
    monkeypatch.setattr(optim.Adam, "step", real)
    assert gradcheck.main(["adam"]) == 0


def test_python_m_gradcheck_runs_the_command():
    """``python -m jmvae_cupy.gradcheck`` (the package's __main__): a check by name, and no names at all
    (exit 2 with the usage line, not a silent pass)."""
    r = subprocess.run([sys.executable, "-m", "jmvae_cupy.gradcheck", "relu"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "all 1 checks passed" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "jmvae_cupy.gradcheck"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "name checks to run, or --all" in r.stderr, r.stdout + r.stderr


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(check):
        raise KeyboardInterrupt

    monkeypatch.setattr(gradcheck_cli, "run_check", interrupted)
    assert gradcheck.main(["relu"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"
