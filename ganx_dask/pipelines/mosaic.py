"""The ``mosaic`` pipeline: one very large image (tiled/BigTIFF) → one store, region by region.

The image is read lazily (only the TIFF tiles a chunk overlaps are decoded), the colour clustering
is fitted on a seed-derived pixel subsample, and the cube is written by
:func:`ganx_dask.store.to_zarr` one region (zarr chunk) at a time with a per-region completion
record.  A mosaic run lasts hours on a whole painting, so it is resumable by default: re-running
the same command on an interrupted store computes only the regions not yet recorded (the report
says how many) and ends byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, GanxError, StoreExistsError
from ..storage import location, with_storage_errors
from .batch import _check_writable, generation_schema
from .config import Option, load_config, validate

__all__ = ["MOSAIC_SCHEMA", "MosaicReport", "mosaic_schema", "load_mosaic_config", "run_mosaic"]

#: Top-level keys of a mosaic config (the ``generation`` section comes from ``generate()``).
MOSAIC_SCHEMA: dict[str, Any] = {
    "seed": Option(int, 0, "Seed of the cube.", minimum=0),
    "image": Option(str, None, "The large image (the CLI's IMAGE replaces it).", nullable=True),
    "output": Option(str, None, "Output store STORE.zarr (the CLI's -o replaces it).", nullable=True),
    "resume": Option(bool, True, "Finish an interrupted store instead of refusing to touch it."),
    "overwrite": Option(bool, False, "Replace an existing store."),
    "region": Option(int, None, "Region (= zarr chunk) edge, pixels; null = the dask chunk size (`generation.chunks`).", nullable=True, minimum=1),
    "scheduler": Option(str, None, "Scheduler: threads, processes, synchronous, tcp://ADDRESS or a scheduler file.", nullable=True),
    "cluster_config": Option(str, None, "Cluster configuration YAML (cluster_configs/); relative to this file.", nullable=True),
}


def mosaic_schema() -> dict[str, Any]:
    """The full mosaic schema: :data:`MOSAIC_SCHEMA` plus the ``generation`` section."""
    return {**MOSAIC_SCHEMA, "generation": generation_schema()}


def load_mosaic_config(config: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a mosaic config (YAML path, dict or ``None``); relative paths in a file are
    relative to its folder.

    Raises
    ------
    ConfigError
        Unknown key or wrong type (naming the dotted key), missing or malformed file.
    """
    return load_config(config, mosaic_schema(), name="mosaic",
                       path_keys=("image", "output", "cluster_config", "generation.library"))


@dataclass
class MosaicReport:
    """What a mosaic run did.

    Attributes
    ----------
    output : str
    regions_total : int
        Regions (zarr chunks) of the cube.
    regions_computed : int
        Regions computed by this run (< total when an interrupted store was resumed; 0 when it
        was already complete).
    resumed : bool
        Whether an existing store was resumed.
    shape : tuple of int
        ``(y, x, energy)`` of ``counts``.
    """

    output: str
    regions_total: int
    regions_computed: int
    resumed: bool
    shape: tuple[int, int, int]

    def summary(self) -> str:
        """One line for the CLI."""
        verb = "resumed" if self.resumed else "wrote"
        return (f"{verb} {self.output}: counts {self.shape[0]}x{self.shape[1]}x{self.shape[2]}, "
                f"computed {self.regions_computed} of {self.regions_total} regions")


@with_storage_errors("cannot write", arg="output")
def run_mosaic(
    image: str | os.PathLike | None,
    output: str | os.PathLike | None,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    resume: bool | None = None,
    overwrite: bool | None = None,
    generation: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> MosaicReport:
    """Generate the cube of one large image into ``output``, region by region, resumably.

    Runs on the active dask scheduler (the CLI sets one up); builds no cluster.

    Parameters
    ----------
    image, output : path-like or None
        Override the config's ``image``/``output`` (a local path or an object-store URL,
        ``s3://bucket/prefix/panel.zarr``).
    config : path-like, mapping or None
        Mosaic configuration (see ``pipelines/mosaic/README.md``).
    seed, resume, overwrite : optional
        Override the config.
    generation : mapping or None
        Generation options overriding the config's ``generation`` section.
    progress : bool
        Show a progress bar.

    Returns
    -------
    MosaicReport

    Raises
    ------
    ConfigError
        Invalid configuration or missing image/output.
    StoreExistsError
        The store exists, ``resume`` is off and ``overwrite`` is off.
    GanxError
        From generation/writing (unreadable image, resume with different parameters, ...).
    """
    from ..generator import generate
    from ..store import _open_group, is_complete, missing_regions, to_zarr

    cfg = load_mosaic_config(config)
    if generation:
        merged = {**cfg["generation"], **dict(generation)}
        cfg["generation"] = validate(merged, generation_schema(), source="generation options",
                                     prefix="generation.")
    for key, val in (("seed", seed), ("resume", resume), ("overwrite", overwrite)):
        if val is not None:
            cfg[key] = validate({key: val}, {key: MOSAIC_SCHEMA[key]}, source=f"--{key}")[key]
    img = os.fspath(image) if image is not None else cfg["image"]
    out = os.fspath(output) if output is not None else cfg["output"]
    if not img:
        raise ConfigError("no image given (IMAGE argument or the config's 'image')")
    if not out:
        raise ConfigError("no output store given (-o STORE.zarr or the config's 'output')")
    gen = dict(cfg["generation"])
    library, pigments = gen.pop("library"), gen.pop("pigments")
    if pigments is not None:
        from ..generator import _resolve_library
        from ..pigments.library import select_pigments

        library = select_pigments(_resolve_library(library), pigments)
    target = location(out)  # an unsupported URL scheme fails here, before any work
    exists = target.exists()
    resuming = exists and not cfg["overwrite"]
    if resuming and not cfg["resume"]:
        raise StoreExistsError(
            f"store {out!r} already exists; re-run with resume (the default, --resume) to finish "
            "it or --overwrite to replace it"
        )
    _check_writable(out)  # before the (possibly long) clustering
    ds = generate(img, library, seed=cfg["seed"], **gen)
    shape = tuple(int(s) for s in ds["counts"].shape)
    if resuming and is_complete(out):
        todo = 0
    elif resuming:
        try:
            todo = len(missing_regions(out))
        except GanxError:  # killed before the region record existed: everything is missing
            todo = None
    else:
        todo = None
    to_zarr(ds, out, overwrite=cfg["overwrite"] and exists, resume=resuming, progress=progress,
            region=cfg["region"])
    total = int(_open_group(target, None).attrs["regions_total"])
    return MosaicReport(output=out, regions_total=total,
                        regions_computed=total if todo is None else todo,
                        resumed=resuming, shape=shape)  # type: ignore[arg-type]
