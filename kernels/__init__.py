"""jmvae_cupy.kernels: fused Numba kernels, each as a CUDA kernel, a Numba CPU twin and a
plain-xp reference (installed from kernels/ via setup.py package_dir).

* ``jmvae_cupy.kernels.reparam``:  z = mu + sqrt(var) * eps, forward and backward
* ``jmvae_cupy.kernels.gauss_kl``: KL between diagonal Gaussians per sample, forward and backward

Importing this package (or its modules) never imports ``numba.cuda``: that happens on the first
CUDA launch, see ``_dispatch.numba_cuda``.
"""

from ._dispatch import KernelArgumentError

__all__ = ["KernelArgumentError"]
