"""``python -m jmvae_cupy.selftest``: see jmvae_cupy/selftest/run.py."""

import sys

from .run import main

sys.exit(main())
