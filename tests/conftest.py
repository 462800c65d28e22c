"""Shared test configuration.

Markers ``requires_numba`` etc. live in :mod:`tests.markers`; fixtures that belong to one module
stay in that test module.
"""

import os

# keep BLAS single-threaded: tests run many small computations on 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")
