"""python -m jmvae_cupy.train"""

import sys

from ..hostmem import keep_freed_memory
from . import main

keep_freed_memory()  # the process is ours: reuse each step's memory (hostmem.py; not for library callers)
sys.exit(main())
