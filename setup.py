"""jmvae_cupy: JMVAE, JMVAE-kl and JMVAE-h on a hand-written NumPy/CuPy stack."""

from setuptools import find_packages, setup

setup(
    name="jmvae_cupy",
    version="0.1.0",
    description="JMVAE, JMVAE-kl, JMVAE-h on a hand-written, autograd-free NumPy/CuPy stack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ is shipped inside the package as jmvae_cupy.kernels: no top-level `kernels` module.
    packages=find_packages(include=["jmvae_cupy", "jmvae_cupy.*"]) + ["jmvae_cupy.kernels"],
    package_dir={"jmvae_cupy.kernels": "kernels"},
    package_data={"jmvae_cupy.data": ["mnist10k/*.gz"], "jmvae_cupy": ["configs/*.toml"]},
    install_requires=["numpy>=1.24", "numba>=0.59", "h5py>=3.8", "pillow>=9", "tqdm>=4.60", "matplotlib>=3.7",
                      "threadpoolctl>=3"],
    extras_require={
        # Everything the test suite needs on a machine without a GPU: CuPy imports without a device
        # (the namespace test), numba-cuda brings NVVM/NVRTC (PTX for sm_80/sm_90, the CUDA simulator),
        # mpi4py + mpich give mpiexec (the distributed tests).
        "test": ["pytest>=7", "hypothesis>=6", "ruff>=0.5", "cupy-cuda13x>=14", "numba-cuda[cu13]>=0.20",
                 "mpi4py>=3.1", "mpich"],
        # The CPU tests only (about 0.7 GB less, no NVIDIA libraries): the CuPy-namespace, PTX and
        # distributed tests skip, each with its reason; CI installs "test".
        "test-cpu": ["pytest>=7", "hypothesis>=6", "ruff>=0.5"],
        # GPU extras: CuPy and numba-cuda (NVVM/NVRTC) for the matching CUDA major version.
        "cuda12": ["cupy-cuda12x>=13", "numba-cuda[cu12]>=0.20"],
        "cuda13": ["cupy-cuda13x>=14", "numba-cuda[cu13]>=0.20"],
        "bench": ["torch"],
        # the docs' own-data example: scikit-learn's bundled digits, no download (docs/data.md)
        "examples": ["scikit-learn>=1.3"],
        # data-parallel training (train --distributed under mpiexec; docs/distributed.md)
        "distributed": ["mpi4py>=3.1", "mpich"],
    },
)
