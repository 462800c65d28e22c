"""Optional-dependency markers, in the style of xarray's ``tests/__init__.py``."""

import importlib

import pytest


def _importorskip(modname: str):
    try:
        importlib.import_module(modname)
        has = True
    except ImportError:
        has = False
    return has, pytest.mark.skipif(not has, reason=f"requires {modname}")


has_numba, requires_numba = _importorskip("numba")
has_jobqueue, requires_jobqueue = _importorskip("dask_jobqueue")
has_kubernetes, requires_kubernetes = _importorskip("dask_kubernetes")
