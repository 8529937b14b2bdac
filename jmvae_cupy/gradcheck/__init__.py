"""Finite-difference gradient checking, as a package:

* :mod:`.core`           the finite-difference checker (central differences, relative error);
* :mod:`.registry`       the registered checks and the inputs they share;
* :mod:`.checks_layers`, :mod:`.checks_models`   the checks of every backward pass of the library;
* :mod:`.index`          each backward -> its checks -> its derivation page (docs/derivations/);
* :mod:`.cli`            ``python -m jmvae_cupy.gradcheck [NAME ... | --all] [--list]``.

The package itself holds the checker's functions, for the tests.
"""

from ..cli import guarded
from .core import (
    check_gradients,
    check_gradients_sampled,
    dot,
    numerical_gradient,
    numerical_gradient_at,
    random_like,
    rel_error,
)

__all__ = ["check_gradients", "check_gradients_sampled", "dot", "main", "numerical_gradient",
           "numerical_gradient_at", "random_like", "rel_error"]


def main(argv=None) -> int:
    """``python -m jmvae_cupy.gradcheck`` (jmvae_cupy/gradcheck/cli.py).  Ctrl-C, also while the checks
    import the library: one line, exit 130."""

    def run() -> int:
        from .cli import main as cli_main  # noqa: PLC0415  (the checks import the whole library)

        return cli_main(argv)

    return guarded(run)
