"""``ganx-dask generate IMAGE -o STORE.zarr``: one image → one synthetic MA-XRF cube in Zarr."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

__all__ = ["register", "run", "demo_image_path"]

_DESCRIPTION = """\
Turn an RGB image (PNG, JPEG, TIFF/BigTIFF; 8/16-bit; alpha = no counts) into a synthetic
MA-XRF cube: colour clustering (k-means + silhouette), pigment matching by colour
similarity (CIEDE2000 by default), Monte Carlo photon counts per pixel and energy channel,
streamed to a Zarr v3 store with per-tile seeded random streams (identical bytes on any
scheduler and chunking for the same --seed).  An existing store is never touched without
--overwrite or --resume.
"""

_EPILOG = """\
examples:
  ganx-dask generate --demo -o demo.zarr
  ganx-dask generate page.tif -o page.zarr --seed 7 --counts 400 --energy 0.5:38.5:1024
  ganx-dask generate page.png -o page.zarr --scheduler tcp://10.0.0.1:8786 --chunk 512
"""


def demo_image_path() -> Path:
    """Path of the bundled demo image (an illuminated-manuscript-like page, 384 × 512 px)."""
    return Path(str(resources.files("ganx_dask") / "data" / "demo.png"))


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``generate`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "generate",
        help="image -> synthetic MA-XRF cube (Zarr)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", nargs="?", metavar="IMAGE",
                   help="input image file (PNG, JPEG, TIFF/BigTIFF; tiled TIFFs are read lazily)")
    p.add_argument("-o", "--output", required=True, metavar="STORE.zarr",
                   help="output Zarr v3 store (directory)")
    p.add_argument("--demo", action="store_true",
                   help="use the bundled demo image (384x512 px manuscript page) instead of IMAGE")
    g = p.add_argument_group("Monte Carlo")
    g.add_argument("--seed", type=int, default=0,
                   help="master random seed, integer >= 0 (default: %(default)s)")
    g.add_argument("--counts", type=float, default=400, metavar="N",
                   help="photons per pixel, counts: exactly N (fixed) or the mean (poisson, "
                        "luminosity) (default: %(default)g)")
    g.add_argument("--count-model", choices=("fixed", "poisson", "luminosity"), default="fixed",
                   help="fixed: exactly N photons per pixel (multinomial, the ganX paper); "
                        "poisson: each channel Poisson(N*d); luminosity: mean N times the pixel's "
                        "relative luminance Y in [0, 1] or the --luminosity-map factor "
                        "(default: %(default)s)")
    g.add_argument("--luminosity-map", metavar="FILE",
                   help="per-pixel factors for --count-model luminosity, dimensionless: a .npy "
                        "array (y, x) of non-negative values, or an image (factor = mean of "
                        "R, G, B / 255)")
    g.add_argument("--energy", default="0.5:38.5:1024", metavar="START:STOP:N",
                   help="energy axis: lower edge (keV), upper edge (keV), channels "
                        "(default: %(default)s)")
    g.add_argument("--engine", choices=("auto", "numpy", "numba"), default="auto",
                   help="sampler kernel; all give identical bits (default: %(default)s: numba "
                        "when installed, unless the cube is too small to pay for its start)")
    g = p.add_argument_group(
        "detector effects",
        "pile-up, dead time and beam-spot blur in the Monte Carlo (all off by default; see "
        "docs/detector.md)")
    g.add_argument("--detector-preset", metavar="NAME",
                   help="typical detector settings of an instrument class (lab-rh, lab-rh-50kv-al, "
                        "lab-mo, lab-w, portable-ag); the options below override it; switches on "
                        "pile-up and dead time (needs --count-model poisson or luminosity)")
    g.add_argument("--pulse-pair-ns", type=float, metavar="NS",
                   help="pile-up: pulse-pair resolution, ns (0 = off)")
    g.add_argument("--pileup-rate", type=float, metavar="CPS",
                   help="pile-up: true input count rate of a pixel with the nominal --counts, "
                        "counts/s (alternative to --dwell-ms, which gives counts/dwell)")
    g.add_argument("--dead-time-model", choices=("none", "nonparalyzable", "paralyzable"),
                   help="dead-time model; adds live_time(y, x) in seconds to the store")
    g.add_argument("--dead-time-us", type=float, metavar="US",
                   help="dead time per recorded event, µs")
    g.add_argument("--dwell-ms", type=float, metavar="MS",
                   help="dwell (real) time per pixel, ms: sets the input rate counts/dwell")
    g.add_argument("--blur-fwhm-px", type=float, metavar="PX",
                   help="beam-spot blur: FWHM of the Gaussian spot, pixels (0 = off)")
    g = p.add_argument_group("pigments and matching")
    g.add_argument("--calibration", metavar="CAL.json",
                   help="a calibration from `ganx-dask calibrate`: abundances, background and "
                        "counts per pixel from its colour model; instrument, detector and energy "
                        "axis from the calibration unless given (--counts/--count-model ignored)")
    g.add_argument("--library", metavar="FILE",
                   help="pigment library JSON (ganx-dask format or a ganX database); "
                        "default: the bundled library")
    g.add_argument("--pigments", metavar="NAMES",
                   help="use only these pigments of the library: comma-separated names or "
                        "aliases (case-insensitive), or 'paper' for the ganX paper's nine "
                        "(default: all)")
    g.add_argument("--instrument", metavar="PRESET",
                   help="instrument preset for computed spectra, e.g. lab-rh, portable-ag "
                        "(default: the library's reference instrument, Rh tube 40 kV)")
    g.add_argument("--threshold", type=float, default=0.2,
                   help="colour-similarity threshold in [0, 1], dimensionless; pigments with "
                        "similarity > threshold contribute (default: %(default)g)")
    g.add_argument("--similarity", choices=("ciede2000", "cie94", "cie76", "cosine"),
                   default="ciede2000",
                   help="colour similarity: (100 - dE)/100 for the dE formulas, or cosine of RGB "
                        "vectors (default: %(default)s)")
    g.add_argument("--matching", "--mode", dest="mode",
                   choices=("closest", "paper", "threshold", "nearest"), default="closest",
                   help="colour -> pigment matching. closest: the 1 to --max-pigments pigments "
                        "whose colour is within --margin of the best match, weighted by "
                        "similarity; paper (= threshold): the ganX paper's method, every pigment "
                        "above --threshold (with the 47-pigment library nearly all of them); "
                        "nearest: the single most similar pigment (default: %(default)s)")
    g.add_argument("--margin", type=float, default=0.02,
                   help="closest: largest similarity deficit to the best match, dimensionless "
                        "(0.02 = CIEDE2000 2) (default: %(default)g)")
    g.add_argument("--max-pigments", type=int, default=3,
                   help="closest: most pigments per cluster (default: %(default)s)")
    g.add_argument("--lightness-factor", type=float, default=None,
                   help="CIEDE2000 lightness factor kL, dimensionless: lightness differences "
                        "count 1/kL (default: 2 for closest, the textile convention; 1 for paper "
                        "and nearest)")
    g = p.add_argument_group("clustering")
    g.add_argument("--n-start", type=int, default=10,
                   help="centre of the k sweep, clusters (default: %(default)s)")
    g.add_argument("--delta", type=int, default=3,
                   help="k = n_start-delta ... n_start+delta inclusive, k >= 2 "
                        "(default: %(default)s)")
    g.add_argument("--patience", type=int, default=-1,
                   help="stop after more than this many non-improving k; -1 = try all "
                        "(default: %(default)s)")
    g.add_argument("--score-batch", type=int, default=1024,
                   help="pixels per silhouette score (default: %(default)s)")
    g.add_argument("--fit-samples", type=int, default=100_000,
                   help="pixels in the clustering fit subsample (default: %(default)s)")
    g = p.add_argument_group("execution and output")
    g.add_argument("--chunk", type=int, default=256,
                   help="chunk edge, pixels (a multiple of --tile); also the Zarr chunk "
                        "(default: %(default)s)")
    g.add_argument("--tile", type=int, default=64,
                   help="seeding tile edge, pixels; output is identical for any chunk that is "
                        "a multiple of it (default: %(default)s)")
    g.add_argument("--pixel-size", type=float, default=None, metavar="MM",
                   help="physical pixel size (scan step), mm; recorded on the y/x coordinates")
    g.add_argument("--no-rgb", action="store_true", help="do not store the input image")
    g.add_argument("--scheduler", default=None, metavar="NAME|ADDRESS",
                   help="threads, processes, synchronous, a tcp://host:port address or a "
                        "scheduler file (default: threads)")
    g.add_argument("--cluster-config", metavar="FILE",
                   help="cluster configuration YAML (see cluster_configs/)")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--overwrite", action="store_true",
                    help="replace an existing store (default: refuse)")
    ex.add_argument("--resume", action="store_true",
                    help="finish an interrupted store with the same parameters")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _load_map(path: str):
    import numpy as np
    import xarray as xr

    from ..errors import ConfigError

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"luminosity map not found: {p}")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            raise ConfigError(f"{p}: not a numpy .npy array file (luminosity map)") from None
        if arr.ndim != 2:
            raise ConfigError(f"{p}: luminosity map must be a 2-D (y, x) array, got shape {arr.shape}")
        m = xr.DataArray(arr, dims=("y", "x"))
    else:
        import warnings

        from ..io import read_image

        with warnings.catch_warnings():  # read_image's alpha warning speaks of labels
            warnings.filterwarnings("ignore", message=".*alpha channel", category=UserWarning)
            img, alpha = read_image(p, return_alpha=True)
        if alpha is not None:
            warnings.warn(f"{p}: alpha channel of the luminosity map ignored", UserWarning,
                          stacklevel=2)
        m = img.astype("float32").mean("channel") / 255.0
    m.attrs["source"] = str(p)
    return m


def run(args: argparse.Namespace) -> int:
    """Execute ``ganx-dask generate``; returns the exit code."""
    from ..errors import ConfigError
    from ..generator import generate
    from ..scheduling import scheduler_context
    from ..storage import location
    from ..store import to_zarr

    if args.demo == (args.image is not None):
        raise ConfigError("give either IMAGE or --demo (exactly one)")
    location(args.output)  # an unsupported URL scheme fails before any work
    image = demo_image_path() if args.demo else Path(args.image)
    library = None
    if args.library:
        from ..pigments.formats import load_library

        library = load_library(args.library)
    if args.pigments:
        from ..pigments.library import select_pigments

        library = select_pigments(library, args.pigments)
    lum = _load_map(args.luminosity_map) if args.luminosity_map else None
    counts = int(args.counts) if float(args.counts).is_integer() else args.counts
    from ..detector import detector_from_options

    # no detector option: None, and with --calibration the calibration's detector effects
    detector = detector_from_options(
        args.detector_preset, pulse_pair_ns=args.pulse_pair_ns, input_rate_cps=args.pileup_rate,
        dead_time_model=args.dead_time_model, dead_time_us=args.dead_time_us,
        dwell_ms=args.dwell_ms, blur_fwhm_px=args.blur_fwhm_px,
    )
    with scheduler_context(args.scheduler, args.cluster_config):
        ds = generate(
            image, library, seed=args.seed, energy=args.energy, counts=counts,
            count_model=args.count_model, luminosity=lum, threshold=args.threshold,
            similarity=args.similarity, mode=args.mode, margin=args.margin,
            max_pigments=args.max_pigments, lightness_factor=args.lightness_factor,
            n_start=args.n_start, delta=args.delta,
            patience=args.patience, score_batch=args.score_batch, fit_samples=args.fit_samples,
            chunks=args.chunk, tile=args.tile, instrument=args.instrument,
            include_rgb=not args.no_rgb, engine=args.engine, detector=detector,
            pixel_size=args.pixel_size,
            calibration=args.calibration,
        )
        out = to_zarr(ds, args.output, overwrite=args.overwrite, resume=args.resume,
                      progress=not args.no_progress)
    print(
        f"wrote {out}: {ds.sizes['y']}x{ds.sizes['x']} px x {ds.sizes['energy']} channels, "
        f"{ds.sizes['cluster']} clusters, {len(ds.pigment)} pigments, "
        + (f"calibrated counts/pixel ({args.calibration}), " if args.calibration else
           f"{args.count_model} {counts:g} counts/pixel, ") + f"seed {args.seed}"
    )
    return 0
