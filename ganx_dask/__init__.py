"""ganx-dask: synthetic MA-XRF data cubes from RGB images, at scale on Dask.

The one obvious entry point is :func:`generate` (image -> lazy ``xarray.Dataset``), written with
:func:`to_zarr` and read back with :func:`open_cube`.  Building blocks live in one module per
concept: :mod:`~ganx_dask.io`, :mod:`~ganx_dask.color`, :mod:`~ganx_dask.clustering`,
:mod:`~ganx_dask.matching`, :mod:`~ganx_dask.sampling`, :mod:`~ganx_dask.generator`,
:mod:`~ganx_dask.store`, :mod:`~ganx_dask.pigments`, :mod:`~ganx_dask.analysis`,
:mod:`~ganx_dask.metrics`, :mod:`~ganx_dask.export`, :mod:`~ganx_dask.ml` (PyTorch).
"""

from __future__ import annotations

import importlib

from . import analysis as _analysis  # noqa: F401  (registers the ``ds.xrf`` accessor)
from . import export as _export  # noqa: F401  (adds the export methods to ``ds.xrf``)
from ._version import __version__
from .energy import EnergyAxis

__all__ = [
    "__version__", "EnergyAxis", "generate", "to_zarr", "open_cube",
    "default_library", "PigmentLibrary", "Pigment", "Instrument",
]

_LAZY = {
    "generate": ("ganx_dask.generator", "generate"),
    "to_zarr": ("ganx_dask.store", "to_zarr"),
    "open_cube": ("ganx_dask.store", "open_cube"),
    "default_library": ("ganx_dask.pigments", "default_library"),
    "PigmentLibrary": ("ganx_dask.pigments", "PigmentLibrary"),
    "Pigment": ("ganx_dask.pigments", "Pigment"),
    "Instrument": ("ganx_dask.pigments", "Instrument"),
}


def __getattr__(name: str):
    try:
        mod, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'ganx_dask' has no attribute {name!r}") from None
    return getattr(importlib.import_module(mod), attr)
