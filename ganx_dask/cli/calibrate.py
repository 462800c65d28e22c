"""``ganx-dask calibrate``: fit a scanner model to a measured scan and a photo of the same area."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]

_EPILOG = """\
example:
  ganx-dask calibrate scan.h5 --rgb photo.png --instrument portable-ag -o cal.json --plot fit.png
  ganx-dask generate other.png -o out.zarr --calibration cal.json

The calibration file holds the fitted instrument (energy gain/offset, noise, Fano, tail, shelf),
pile-up, background and the colour -> composition model; see docs/calibration.md.
"""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``calibrate`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "calibrate", help="measured scan + photo -> calibration JSON (instrument, detector, "
                          "background, colour model)",
        description=__doc__, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scan", metavar="SCAN",
                   help="measured cube: HDF5, .npy/.npz, Zarr/netCDF store or a folder of .mca "
                        "files (energy in keV)")
    p.add_argument("--rgb", required=True, metavar="PHOTO",
                   help="photo of the scanned area on the same (y, x) pixel grid")
    p.add_argument("-o", "--output", required=True, metavar="CAL.json",
                   help="calibration file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CAL.json")
    p.add_argument("--plot", metavar="FIT.png", help="also write a plot of data vs fit")
    p.add_argument("--library", metavar="FILE", help="pigment library file (default: bundled)")
    p.add_argument("--instrument", metavar="PRESET",
                   help="what is known about the scanner: a preset (lab-rh, portable-ag, ...), "
                        "the starting point of the fit")
    p.add_argument("--groups", type=int, metavar="K",
                   help="number of colour groups (default: silhouette choice in 2-16)")
    p.add_argument("--fit-range", metavar="LO:HI", help="energy range of the fit, keV")
    p.add_argument("--fit-source", action="store_true", help="also fit the tube voltage")
    p.add_argument("--no-pileup", action="store_true", help="do not fit pile-up")
    p.add_argument("--seed", type=int, default=0, help="clustering seed (default 0)")
    p.add_argument("--gain", type=float, metavar="KEV",
                   help="keV per channel, for a scan file without an energy calibration")
    p.add_argument("--offset", type=float, metavar="KEV",
                   help="keV at channel 0, for a scan file without an energy calibration")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute ``ganx-dask calibrate``; returns the exit code."""
    from ..calibration import calibrate
    from ..errors import ConfigError, GanxError

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise GanxError(f"{out}: exists (pass --overwrite to replace it)")
    for path, what in ((args.scan, "scan"), (args.rgb, "photo")):
        if not Path(path).exists():
            raise GanxError(f"{path}: no such {what} file")
    fit_range = None
    if args.fit_range:
        try:
            lo, hi = (float(v) for v in args.fit_range.split(":"))
        except ValueError:
            raise ConfigError(f"--fit-range must be LO:HI in keV, got {args.fit_range!r}") from None
        fit_range = (lo, hi)
    library = None
    if args.library:
        from ..pigments.formats import load_library

        library = load_library(args.library)
    cal = calibrate(args.scan, args.rgb, library=library, instrument=args.instrument,
                    seed=args.seed, groups=args.groups, fit_range=fit_range,
                    fit_source=args.fit_source, pileup=not args.no_pileup, gain=args.gain,
                    offset=args.offset)
    cal.to_json(out, overwrite=True)
    if args.plot:
        cal.plot_fit(args.plot)
    d = cal.diagnostics
    m = d["sum_spectrum"]["metrics"]
    print(f"wrote {out}: gain {cal.energy['gain']:.6g} keV/ch, offset {cal.energy['offset']:.4g} "
          f"keV, noise {cal.instrument.noise_fwhm_kev * 1e3:.1f} eV FWHM, Fano "
          f"{cal.instrument.fano:.3f}; {len(cal.colour.pigments)} pigments in "
          f"{len(d['groups']['pixels'])} colour groups; sum-spectrum cosine distance "
          f"{m['cosine']:.3g}, JS {m['jensen_shannon']:.3g}")
    return 0
