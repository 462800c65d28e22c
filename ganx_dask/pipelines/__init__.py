"""Whole jobs driven by validated YAML configs: ``batch`` (image collection → dataset),
``mosaic`` (one huge image → one store) and ``paper`` (the paper's experiment).

Each pipeline takes its configuration (a YAML file or a dict), works with whatever dask scheduler
is active (the CLI sets one up from ``--scheduler``/``--cluster-config``, see
:mod:`ganx_dask.scheduling`), and writes resumable Zarr stores.
"""

from __future__ import annotations

import importlib

__all__ = [
    "run_batch", "run_mosaic", "run_paper", "BATCH_SCHEMA", "MOSAIC_SCHEMA", "PAPER_SCHEMA",
    "read_manifest",
]

_LAZY = {
    "run_batch": ("ganx_dask.pipelines.batch", "run_batch"),
    "read_manifest": ("ganx_dask.pipelines.batch", "read_manifest"),
    "BATCH_SCHEMA": ("ganx_dask.pipelines.batch", "BATCH_SCHEMA"),
    "run_mosaic": ("ganx_dask.pipelines.mosaic", "run_mosaic"),
    "MOSAIC_SCHEMA": ("ganx_dask.pipelines.mosaic", "MOSAIC_SCHEMA"),
    "run_paper": ("ganx_dask.pipelines.paper", "run_paper"),
    "PAPER_SCHEMA": ("ganx_dask.pipelines.paper", "PAPER_SCHEMA"),
}


def __getattr__(name: str):
    try:
        mod, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'ganx_dask.pipelines' has no attribute {name!r}") from None
    return getattr(importlib.import_module(mod), attr)
