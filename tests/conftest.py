import numpy as np
import pytest


@pytest.fixture
def rng():
    """A float64 test generator with a fixed seed (tests are deterministic)."""
    return np.random.default_rng(1234)
