"""Optional-dependency markers, in the style of xarray's ``tests/__init__.py``."""

import importlib

import pytest


def _importorskip(modname: str, extra: str):
    try:
        importlib.import_module(modname)
        has = True
    except ImportError:
        has = False
    return has, pytest.mark.skipif(
        not has, reason=f"requires {modname} (pip install 'ganx-dask[{extra}]')")


has_numba, requires_numba = _importorskip("numba", "fast")
has_jobqueue, requires_jobqueue = _importorskip("dask_jobqueue", "jobqueue")
has_kubernetes, requires_kubernetes = _importorskip("dask_kubernetes", "kubernetes")
has_torch, requires_torch = _importorskip("torch", "ml")
has_xbatcher, requires_xbatcher = _importorskip("xbatcher", "ml")
has_exspy, requires_exspy = _importorskip("exspy", "hyperspy")
# PyMca's HDF5 stack reader (pymca5 installs without its Qt/fisx parts for reading)
has_pymca, requires_pymca = _importorskip("PyMca5.PyMcaIO.HDF5Stack1D", "pymca")
