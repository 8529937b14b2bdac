"""jmvae_cupy: joint multimodal variational autoencoders on a hand-written NumPy/CuPy stack."""

__version__ = "0.1.0"
