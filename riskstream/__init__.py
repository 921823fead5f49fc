"""riskstream: a real-time risk and fraud engine on streams."""

import os

# numpy's and scipy's OpenBLAS start a spinning helper thread per extra core when they load
# (~0.3 s of CPU per process on 2 cores) and the engine makes no BLAS call worth threading:
# its batches are a few thousand rows by a few dozen features. On a small machine those
# threads take CPU from the broker, chDB and the other workers. A value the user set wins.
# This runs before numpy loads because every riskstream module imports this package first.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
