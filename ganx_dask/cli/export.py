"""``ganx-dask export CUBE -o FILE``: a cube for PyMca, HyperSpy/exspy, Lispix or ganX.

* ``--format pymca`` (default for ``.h5``): PyMca's MCA-stack layout with calibration and live
  time (:func:`ganx_dask.export.to_pymca_hdf5`);
* ``--format ganx``: the ganX/LABEC layout (dataset ``img``);
* ``--format hspy`` (``.hspy``): HyperSpy's HDF5, an exspy ``EDS_SEM`` signal with calibrated
  axes and metadata (needs the ``[hyperspy]`` extra);
* ``--format rpl`` (``.rpl`` + ``.raw``): Ripple, read by Lispix and HyperSpy (``[hyperspy]``).

``ganx-dask rechunk SRC DST --chunk 64``: a copy of a store or batch dataset with ``counts`` in
64×64-pixel zarr chunks, the training layout of :mod:`ganx_dask.ml` (``docs/ml.md``).
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``export`` and ``rechunk`` to the ``ganx-dask`` parser."""
    from .analysis import _common_scheduler_args, _reader_args

    p = subparsers.add_parser(
        "export", help="write a cube for PyMca, HyperSpy/exspy, Lispix or ganX",
        description="Export a cube (a ganx-dask store or a measured cube) block by block: "
                    "pymca (.h5, PyMca's HDF5 stack with calibration and live time), ganx "
                    "(.h5, dataset img), hspy (.hspy, HyperSpy/exspy EDS_SEM signal), rpl "
                    "(.rpl + .raw, Lispix/HyperSpy).")
    p.add_argument("cube", help="a ganx-dask Zarr store or a measured cube (see compare)")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="output file (.h5, .hspy or .rpl)")
    p.add_argument("--format", default=None, choices=("pymca", "ganx", "hspy", "rpl"),
                   help="default from the suffix: .hspy, .rpl, .h5 -> pymca")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _reader_args(p)
    _common_scheduler_args(p)
    p.set_defaults(func=_run_export)

    r = subparsers.add_parser(
        "rechunk", help="copy a store or batch dataset to a training chunk layout",
        description="Copy a ganx-dask store or batch dataset with counts in CHUNK×CHUNK-pixel "
                    "zarr chunks (all energies per chunk): a random 64² patch then decodes one "
                    "64² chunk instead of a whole 256² one (see docs/ml.md).")
    r.add_argument("source", help="ganx-dask store or batch dataset")
    r.add_argument("dest", help="new store")
    r.add_argument("--chunk", type=int, default=64, metavar="PX",
                   help="chunk edge, pixels (default 64: the patch size)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing DEST")
    r.add_argument("--progress", action="store_true", help="show a progress bar")
    _common_scheduler_args(r)
    r.set_defaults(func=_run_rechunk)


def _run_export(args: argparse.Namespace) -> int:
    from ..export import export
    from ..scheduling import scheduler_context
    from .analysis import _open

    ds = _open(args.cube, args.dataset, args.calibration, args.mca_shape)
    with scheduler_context(args.scheduler):
        out = export(ds, args.output, format=args.format, overwrite=args.overwrite)
    print(out)
    return 0


def _run_rechunk(args: argparse.Namespace) -> int:
    from ..ml import rechunk
    from ..scheduling import scheduler_context

    with scheduler_context(args.scheduler):
        out = rechunk(args.source, args.dest, chunk=args.chunk, overwrite=args.overwrite,
                      progress=args.progress)
    print(out)
    return 0
