import numpy as np
import pytest


@pytest.fixture
def rng():
    """A float64 test generator with a fixed seed (tests are deterministic)."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def celeba_h5(tmp_path_factory):
    """A CelebA-layout file of 40 synthetic faces prepared at 32x32 (36 train / 4 test)."""
    from jmvae_cupy.data.__main__ import main as data_main
    from tests.data.test_celeba import make_celeba

    root = tmp_path_factory.mktemp("celeba")
    make_celeba(root / "src", n=40)
    out = root / "celeba32.h5"
    assert data_main(["prepare", "celeba", str(root / "src"), "--out", str(out), "--size", "32",
                      "--no-progress"]) == 0
    return out


def train_tiny(tmp_path_factory, variant: str, *extra) -> str:
    """A one-epoch MNIST run of ``variant`` on 300 training digits (module fixtures of the evaluation
    tests); returns its directory."""
    from jmvae_cupy import train

    out = str(tmp_path_factory.mktemp("runs") / variant)
    assert train.main(["mnist", "--variant", variant, "--epochs", "1", "--train-subset", "300", "--device", "cpu",
                       "--no-progress", "--out", out, *extra]) == 0
    return out
