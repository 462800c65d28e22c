"""Shared test configuration.

Markers ``requires_numba`` etc. live in :mod:`tests.markers`; fixtures that belong to one module
stay in that test module.
"""

import os

import pytest

# keep BLAS single-threaded: tests run many small computations on 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible server (moto, its own process) for the module; yields its endpoint
    (see :func:`tests.s3_server.s3_server`; skips when it cannot start)."""
    from .s3_server import s3_server

    yield from s3_server(tmp_path_factory)
