import numpy as np
import pytest


@pytest.fixture
def rng():
    """A float64 test generator with a fixed seed (tests are deterministic)."""
    return np.random.default_rng(1234)


def train_tiny(tmp_path_factory, variant: str, *extra) -> str:
    """A one-epoch MNIST run of ``variant`` on 300 training digits (module fixtures of the evaluation
    tests); returns its directory."""
    from jmvae_cupy import train

    out = str(tmp_path_factory.mktemp("runs") / variant)
    assert train.main(["mnist", "--variant", variant, "--epochs", "1", "--train-subset", "300", "--device", "cpu",
                       "--no-progress", "--out", out, *extra]) == 0
    return out
