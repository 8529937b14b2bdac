"""python -m jmvae_cupy.gradcheck"""

import sys

from . import main

sys.exit(main())
