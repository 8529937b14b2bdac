"""Data for jmvae_cupy: IDX reading/writing (MNIST follows)."""

from .errors import DataError
from .idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_idx_images, read_idx_labels, write_idx

__all__ = ["DataError", "IMAGES_MAGIC", "LABELS_MAGIC", "read_idx", "read_idx_images", "read_idx_labels",
           "write_idx"]
