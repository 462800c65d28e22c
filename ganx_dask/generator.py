"""``generate()``: an RGB image and a pigment library → a lazy, labelled MA-XRF ``xarray.Dataset``.

The steps (docs/architecture.md): read the image chunk-wise (:mod:`~ganx_dask.io`), fit the
colour clustering on a seed-derived pixel subsample (:mod:`~ganx_dask.clustering`; the only
image computation done here, besides validating value ranges), predict labels chunk-wise,
match cluster colours to pigments (:mod:`~ganx_dask.matching`), and build the Monte Carlo cube
with per-tile seeded streams (:mod:`~ganx_dask.sampling`).  Nothing else is computed until the
dataset is written (:func:`ganx_dask.store.to_zarr`) or loaded.

The ``luminosity`` count model scales each pixel's expected counts by a factor: by default the
pixel's relative luminance ``Y`` (CIE 1931, D65) of its *linearised* sRGB colour, i.e.
``Y = 0.2126 R_lin + 0.7152 G_lin + 0.0722 B_lin`` (Rec. 709 primaries; skimage ``rgb2xyz``), in
[0, 1] — white receives ``counts`` photons on average, black none; or a user map of non-negative
factors (``luminosity=``).
"""

from __future__ import annotations

import datetime as _dt
import numbers
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ._version import __version__
from .attrs import CONVENTIONS, RGB8, encode, pixel_coord_attrs
from .clustering import _check_params, fit_iterative_kmeans, predict_labels, subsample_pixels
from .energy import EnergyAxis, as_energy_axis
from .errors import ConfigError, EnergyAxisError, GanxError, ImageError
from .io import file_sha256, read_image
from .matching import _check_params as _check_match_params
from .matching import canonical_mode, cluster_distributions
from .sampling import check_count_model, counts_dtype, sample_cube
from .scheduling import compute
from .seeding import check_seed

#: Version of the cube a given seed and inputs produce (attribute ``format_version``).  1:
#: ganx-dask ≤ 0.1.0 (MiniBatchKMeans on the sampled pixels; no attribute); 2: KMeans on the
#: weighted colour histogram (:mod:`ganx_dask.clustering`) — other centroids, labels and counts;
#: 3: per-channel tiles whose pixels expect the same counts row by row (a calibrated cube's
#: per-cluster counts, pile-up at a shared mean) and ``fixed`` with pile-up draw their big
#: channels from Poisson tables — other counts there, the same law.
FORMAT_VERSION = 3

__all__ = ["generate", "relative_luminance", "ENGINES", "FORMAT_VERSION"]

#: The default energy axis (keV, keV, channels).
DEFAULT_ENERGY = "0.5:38.5:1024"
#: Sampler engines (see :mod:`ganx_dask.sampling`).
ENGINES = ("auto", "numpy", "numba")


def relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """Relative luminance Y in [0, 1] of 8-bit sRGB pixels (linearised, D65; skimage ``rgb2xyz``).

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(..., 3)`` uint8 sRGB.

    Returns
    -------
    numpy.ndarray
        ``(...)`` float32 luminance (1 = white, 0 = black), dimensionless.
    """
    from skimage.color import rgb2xyz

    a = np.asarray(rgb)
    if a.size == 0:
        return np.zeros(a.shape[:-1], np.float32)
    y = rgb2xyz(a.astype(np.float64) / 255.0)[..., 1]
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _plain(v):
    """A parameter as a plain JSON value (numpy scalars such as ``np.int64(3)`` → ``3``)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, np.str_):
        return str(v)
    return v


def _validate(p: dict) -> EnergyAxis | np.ndarray:
    check_seed(p["seed"])
    try:
        ax = as_energy_axis(p["energy"])
    except GanxError:
        raise
    except (TypeError, ValueError) as exc:
        raise EnergyAxisError(
            f"invalid energy axis {p['energy']!r}: expected 'START:STOP:N' (keV, keV, channels) "
            f"or bin centres in keV ({exc})"
        ) from None
    check_count_model(p["count_model"], p["counts"])
    if p["luminosity"] is not None and p["count_model"] != "luminosity":
        raise ConfigError("a luminosity map is only used with count_model='luminosity'")
    _check_match_params(p["threshold"], p["similarity"], p["mode"], p["margin"],
                        p["max_pigments"], p["lightness_factor"])
    _check_params(p["n_start"], p["delta"], p["patience"], p["score_batch"])
    if not _is_int(p["fit_samples"]) or p["fit_samples"] < 2:
        raise ConfigError(f"fit_samples must be an integer >= 2 pixels, got {p['fit_samples']!r}")
    if not _is_int(p["tile"]) or p["tile"] < 1:
        raise ConfigError(f"tile must be a positive number of pixels, got {p['tile']!r}")
    if not _is_int(p["chunks"]) or p["chunks"] < 1:
        raise ConfigError(f"chunks must be a positive number of pixels, got {p['chunks']!r}")
    if p["chunks"] % p["tile"]:
        raise ConfigError(
            f"chunk size {p['chunks']} px is not a multiple of the {p['tile']}-px seeding tile"
        )
    if p["engine"] not in ENGINES:
        raise ConfigError(f"unknown engine {p['engine']!r}; choose one of {', '.join(ENGINES)}")
    return ax


def _check_detector(detector, count_model: str):
    """The detector effects (``None``: none), refused when they cannot go with the count model."""
    from .detector import as_detector

    fx = as_detector(detector)
    if fx is not None and fx.dead_time and count_model == "fixed":
        raise ConfigError(
            "a dead-time model needs count_model 'poisson' or 'luminosity' (with 'fixed' the "
            "recorded counts are fixed by definition)"
        )
    return fx


def _resolve_library(library):
    """:func:`ganx_dask.pigments.library.resolve_library` (imported lazily: pigments is heavy)."""
    from .pigments.library import resolve_library

    return resolve_library(library)


def _centres(energy) -> np.ndarray:
    """Bin centres (keV) of an array-like energy specification."""
    return np.asarray(energy.values if isinstance(energy, xr.DataArray) else energy, dtype=float)


def _instrument_dict(instrument, library) -> dict:
    inst = instrument if instrument is not None else getattr(library, "instrument", None)
    try:
        from .pigments.physics import as_instrument

        return as_instrument(inst).to_dict()
    except ImportError:  # pragma: no cover - physics module unavailable
        return {} if inst is None else {"name": str(inst)}


def _image_info(image, img: xr.DataArray) -> dict:
    info: dict[str, Any] = {"shape": [int(img.sizes["y"]), int(img.sizes["x"])],
                            "format": img.attrs.get("source_format", "")}
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).resolve()
        info["source"] = str(path)
        # the content hash guards --resume (it enters the store fingerprint)
        info["sha256"] = file_sha256(path)
    else:
        info["source"] = str(img.attrs.get("source", type(image).__name__))
        raw = image.data if isinstance(image, xr.DataArray) else image
        if isinstance(raw, np.ndarray):  # in-memory pixels: a content token guards resume too
            from dask.base import tokenize

            info["token"] = tokenize(raw)
    return info


def _luminosity_scale(luminosity, img: xr.DataArray,
                      chunks: int) -> tuple[da.Array, float, dict | None]:
    """The per-pixel factor, its maximum, and (user map) a record of its source and content
    token for the provenance attrs (so ``resume`` refuses a different map)."""
    ny, nx = int(img.sizes["y"]), int(img.sizes["x"])
    if luminosity is None:
        scale = img.data.map_blocks(relative_luminance, drop_axis=2, dtype=np.float32,
                                    meta=np.empty((0, 0), np.float32))
        return scale, 1.0, None
    from dask.base import tokenize

    where, source = "luminosity map", None
    if isinstance(luminosity, xr.DataArray):
        if "source" in luminosity.attrs:
            source = str(luminosity.attrs["source"])
            where = f"luminosity map {source}"
        if set(luminosity.dims) != {"y", "x"}:
            raise ConfigError(f"{where} must have dims (y, x), got {luminosity.dims}")
        luminosity = luminosity.transpose("y", "x").data
    m = luminosity if isinstance(luminosity, da.Array) else np.asarray(luminosity)
    if m.shape != (ny, nx):
        raise ConfigError(f"{where} has shape {m.shape}, the image is {(ny, nx)} (y, x)")
    if m.dtype.kind not in "biuf":
        raise ConfigError(f"{where} must be numeric, got dtype {m.dtype}")
    lo, hi = (compute(da.min(m), da.max(m)) if isinstance(m, da.Array)
              else (np.min(m), np.max(m)))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0:
        raise ConfigError(f"{where}: values must be finite and non-negative")
    arr = m if isinstance(m, da.Array) else da.from_array(m, chunks=(chunks, chunks))
    record = {"source": source, "token": tokenize(m)}
    return arr.astype(np.float32).rechunk((chunks, chunks)), max(float(hi), 1e-12), record


def generate(
    image,
    library=None,
    *,
    seed: int,
    energy=DEFAULT_ENERGY,
    counts: float = 400,
    count_model: str = "fixed",
    luminosity=None,
    threshold: float = 0.2,
    similarity: str = "ciede2000",
    mode: str = "closest",
    margin: float = 0.02,
    max_pigments: int = 3,
    lightness_factor: float | None = None,
    n_start: int = 10,
    delta: int = 3,
    patience: int = -1,
    score_batch: int = 1024,
    fit_samples: int = 100_000,
    chunks: int = 256,
    tile: int = 64,
    instrument=None,
    include_rgb: bool = True,
    engine: str = "auto",
    detector=None,
    pixel_size: float | None = None,
    calibration=None,
) -> xr.Dataset:
    """Build the lazy synthetic MA-XRF dataset of an image.

    Parameters
    ----------
    image : str, path-like, numpy.ndarray or xarray.DataArray
        The RGB(A) image (see :func:`ganx_dask.io.read_image`).
    library : PigmentLibrary, path or None
        Pigment library (``None``: :func:`ganx_dask.pigments.default_library`; a path is read with
        :func:`ganx_dask.pigments.formats.load_library`, our JSON or a ganX database).
    seed : int
        Master seed (≥ 0).  Same seed ⇒ identical counts on any scheduler and chunking.
    energy : str, EnergyAxis or array-like
        Energy axis, ``"START:STOP:N"`` (keV, keV, channels), or bin centres in keV.  With a
        ``calibration``, the default (``DEFAULT_ENERGY``) means the calibrated scan axis.
    counts : float
        Photons per pixel ``N`` (``fixed``: exactly N; ``poisson``: mean N; ``luminosity``: mean
        ``N · factor``), counts.
    count_model : {"fixed", "poisson", "luminosity"}
    luminosity : array-like or xarray.DataArray, optional
        ``(y, x)`` non-negative per-pixel factors for ``luminosity`` (default: the pixel's
        relative luminance, see the module docstring).
    threshold : float
        Similarity threshold in [0, 1] for pigment matching (paper: 0.2, 0.6).
    similarity : {"ciede2000", "cie94", "cie76", "cosine"}
    mode : {"closest", "paper", "threshold", "nearest"}
        Colour → pigment matching (:mod:`ganx_dask.matching`): ``closest`` (default: the one to
        ``max_pigments`` pigments within ``margin`` of the best colour match), ``paper`` (alias
        ``threshold``: the paper's method, every pigment above ``threshold``) or ``nearest``.
    margin : float
        ``closest``: largest similarity deficit to the best match (0.02 = ΔE2000 2).
    max_pigments : int
        ``closest``: most pigments per cluster.
    lightness_factor : float or None
        CIEDE2000 lightness factor kL of the matching (``None``: 2 for ``closest``, the textile
        convention; 1 for ``paper`` and ``nearest``).
    n_start, delta, patience, score_batch : int
        Clustering sweep k = n_start − delta … n_start + delta, patience (−1 = none), pixels per
        silhouette score (see :func:`ganx_dask.clustering.fit_iterative_kmeans`).
    fit_samples : int
        Pixels in the clustering fit subsample.
    chunks : int
        Dask chunk edge in pixels (a multiple of ``tile``).
    tile : int
        Edge of the global seeding tile grid, pixels.
    instrument : Instrument, str, dict or None
        Instrument (or preset name) for computed pigment spectra; ``None``: the library's.
    include_rgb : bool
        Add the input image as ``rgb(y, x, channel)``.
    engine : {"auto", "numpy", "numba"}
        Sampler kernel (all give identical bits).  ``auto``: numba when installed and loaded or
        worth loading for this cube, else numpy (:data:`ganx_dask.sampling.AUTO_NUMPY_PHOTONS`).
    detector : DetectorEffects, dict, str or None
        Detector and scan effects in the Monte Carlo (:mod:`ganx_dask.detector`): pile-up,
        dead time (adds ``live_time(y, x)``, seconds; needs ``poisson`` or ``luminosity``) and
        beam-spot blur; a dict of its fields or a preset name such as ``"lab-rh"``.  ``None``:
        none (the plain sampler).
    pixel_size : float, optional
        Physical size of one pixel, mm (the scan step); recorded on the ``y``/``x`` coordinates
        (``pixel_size``, ``pixel_size_units``) and in ``parameters``.  Does not change the counts.
    calibration : Calibration or path, optional
        A :class:`~ganx_dask.calibration.Calibration` (or its JSON file): cluster abundances,
        background and incident counts per pixel come from its colour model (count model
        ``luminosity`` with per-cluster counts; ``counts``/``count_model`` are ignored);
        colours outside its gamut fall back to the matching parameters and are listed in
        ``attrs["parameters"]["calibration"]``.  Instrument, detector effects and energy axis
        come from the calibration unless given.

    Returns
    -------
    xarray.Dataset
        Variables ``counts``, ``labels``, ``abundance``, ``spectrum``, ``cluster_rgb``,
        ``pigment_rgb`` and optionally ``rgb`` with CF-style variable attributes and encoded
        provenance attrs (docs/architecture.md, "The dataset" and "Attributes": nested values
        are JSON text, :func:`ganx_dask.attrs.decode` or ``ds.xrf.meta`` give dicts).  Dask-backed; computed so far: the clustering subsample, the SHA-256
        of an image file, and the value range of a float/wide-integer image or of a dask
        luminosity map (validated before anything is written).

    Raises
    ------
    GanxError
        ``ImageError`` (unreadable or unusable image, e.g. 1×1), ``EnergyAxisError``,
        ``ConfigError`` (bad parameter, named), ``PigmentError`` (bad library).
    """
    from .calibration import as_calibration

    cal = as_calibration(calibration)
    if cal is not None and isinstance(energy, str) and energy == DEFAULT_ENERGY:
        energy = cal.energy_axis
    if cal is not None:
        if luminosity is not None:
            raise ConfigError("a luminosity map cannot be combined with a calibration (the "
                              "calibration models the counts per pixel)")
        count_model = "luminosity"
    params = dict(
        seed=seed, energy=energy, counts=counts, count_model=count_model, luminosity=luminosity,
        threshold=threshold, similarity=similarity, mode=canonical_mode(mode), margin=margin,
        max_pigments=max_pigments, lightness_factor=lightness_factor, n_start=n_start,
        delta=delta,
        patience=patience, score_batch=score_batch, fit_samples=fit_samples, chunks=chunks,
        tile=tile, include_rgb=include_rgb, engine=engine,
    )
    ax = _validate(params)
    if pixel_size is not None and not (isinstance(pixel_size, numbers.Real)
                                       and not isinstance(pixel_size, bool)
                                       and np.isfinite(pixel_size) and pixel_size > 0):
        raise ConfigError(f"pixel_size must be a positive number of mm, got {pixel_size!r}")
    from .detector import live_time_map

    fx = (_check_detector(detector, count_model) if (detector is not None or cal is None)
          else cal.detector)

    lib = _resolve_library(library)
    if cal is not None:
        cal.check_library(lib)
        instrument = cal.instrument if instrument is None else instrument
    img, opaque = read_image(image, chunks=chunks, return_alpha=True)
    where = img.attrs.get("source", "image")
    ny, nx = int(img.sizes["y"]), int(img.sizes["x"])
    if ny * nx < 2:
        raise ImageError(
            f"{where}: image is {ny}x{nx} pixel: too small to cluster colours "
            "(need at least 2 pixels)"
        )
    # a non-uniform axis is given (and recorded) by its bin centres; ``ax`` holds its edges
    lib_spectra = lib.spectra(ax if isinstance(ax, EnergyAxis) else _centres(energy), instrument)
    lib_rgb = lib.rgb

    # -- clustering: the only computation (a subsample of the image) -------------------------
    px = subsample_pixels(img, fit_samples, seed, mask=opaque)
    try:
        model = fit_iterative_kmeans(px, n_start=n_start, delta=delta, patience=patience,
                                     score_batch=score_batch, seed=seed)
    except ImageError as exc:
        raise ImageError(f"{where}: {exc}") from None
    labels = predict_labels(img, model, opaque)
    match = dict(threshold=threshold, similarity=similarity, mode=mode, margin=margin,
                 max_pigments=max_pigments, lightness_factor=lightness_factor)
    scale, scale_max, map_record, cal_report = None, 1.0, None, None
    if cal is not None:
        from .calibration import calibrated_cluster_inputs

        abundance, spectrum, counts, scale, cal_report = calibrated_cluster_inputs(
            cal, model.cluster_rgb, labels.data, lib, lib_spectra,
            ax if isinstance(ax, EnergyAxis) else _centres(energy), instrument, **match)
    else:
        abundance, spectrum = cluster_distributions(model.cluster_rgb, lib_rgb, lib_spectra,
                                                    **match)

    # -- Monte Carlo cube ---------------------------------------------------------------------
    if count_model == "luminosity" and cal is None:
        scale, scale_max, map_record = _luminosity_scale(luminosity, img, chunks)
    dtype = counts_dtype(count_model, counts, scale_max=scale_max)
    cube = sample_cube(labels.data, spectrum.values, seed=int(seed), counts=counts,
                       count_model=count_model, scale=scale, tile=tile, dtype=dtype,
                       engine=engine, detector=fx,
                       energy=ax if isinstance(ax, EnergyAxis)
                       else lib_spectra.coords["energy"].values)

    # -- dataset ------------------------------------------------------------------------------
    energy_coord = lib_spectra.coords["energy"]
    k = np.arange(model.k)
    coords = {
        "y": img.coords["y"].assign_attrs(pixel_coord_attrs("y", pixel_size)),
        "x": img.coords["x"].assign_attrs(pixel_coord_attrs("x", pixel_size)),
        "energy": energy_coord,
        # variable-length strings: zarr v3 has a spec for them, not for fixed-width unicode
        "pigment": xr.DataArray(np.array(lib.names, dtype=object), dims="pigment",
                                attrs={"long_name": "pigment name (library entry)"}),
        "cluster": xr.DataArray(k, dims="cluster", attrs={"long_name": "cluster id"}),
        "channel": xr.DataArray(np.array(["R", "G", "B"], dtype=object), dims="channel",
                                attrs={"long_name": "sRGB colour channel"}),
    }
    data_vars = {
        "counts": xr.DataArray(
            cube, dims=("y", "x", "energy"),
            attrs={"long_name": "photon counts", "units": "counts"}),
        "labels": labels.variable.to_base_variable(),
        "abundance": abundance.variable.to_base_variable(),
        "spectrum": spectrum.variable.to_base_variable(),
        "cluster_rgb": xr.Variable(("cluster", "channel"), model.cluster_rgb,
                                   attrs={"long_name": "cluster mean colour (8-bit sRGB)",
                                          **RGB8}),
        "pigment_rgb": xr.Variable(("pigment", "channel"), lib_rgb.values.astype(np.uint8),
                                   attrs={"long_name": "pigment characteristic colour "
                                          "(8-bit sRGB)", **RGB8}),
    }
    data_vars["labels"].attrs.update(labels.attrs)  # flag values: no units (CF)
    if fx is not None and fx.dead_time:
        data_vars["live_time"] = xr.Variable(
            ("y", "x"), live_time_map(fx, labels.data, counts, scale),
            attrs={"long_name": "detector live time", "units": "s",
                   "dwell_time_s": fx.dwell_ms * 1e-3, "dead_time_model": fx.dead_time_model,
                   "dead_time_s": fx.dead_time_us * 1e-6})
    if include_rgb:
        data_vars["rgb"] = xr.Variable(("y", "x", "channel"), img.data,
                                       attrs={"long_name": "input image (8-bit sRGB)",
                                              **RGB8})
    recorded = {key: _plain(v) for key, v in params.items()}
    recorded["energy"] = str(ax) if isinstance(ax, EnergyAxis) else "custom"
    recorded["counts"] = int(counts) if float(counts) == int(counts) else float(counts)
    recorded["luminosity"] = (None if luminosity is None else "user map")
    if count_model == "luminosity" and luminosity is None:
        recorded["luminosity"] = "relative luminance Y of linearised sRGB (D65)"
    if map_record is not None:
        recorded["luminosity_map"] = map_record
    if cal_report is not None:
        recorded["luminosity"] = "calibrated counts per cluster"
        recorded["calibration"] = cal_report
    inst_dict = _instrument_dict(instrument, lib)
    det_dict = None if fx is None else fx.to_dict()
    recorded["instrument"] = (None if instrument is None
                              else inst_dict.get("name", str(instrument)))
    recorded["counts_dtype"] = np.dtype(dtype).name
    recorded["detector"] = det_dict
    if pixel_size is not None:  # only when given: stores of 0.1.0 keep their fingerprint
        recorded["pixel_size_mm"] = float(pixel_size)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    attrs = {
        "title": "synthetic MA-XRF data cube (ganx-dask)",
        "Conventions": CONVENTIONS,
        "source": f"ganx-dask {__version__}: Monte Carlo photon draws from pigment spectra "
                  "matched to the colours of an RGB image",
        "history": f"{created} ganx-dask {__version__} generate(seed={int(seed)})",
        "references": "A. Bombini et al., ganX - generate artificially new XRF: a python library "
                      "to generate MA-XRF raw data out of RGB images (2023)",
        "format_version": FORMAT_VERSION,
        "ganx_dask_version": __version__,
        "seed": int(seed),
        "created": created,
        "parameters": recorded,
        "library_name": lib.name,
        "library_version": lib.version,
        "instrument": inst_dict,
        "detector": det_dict,
        "clustering": model.to_attrs(),
        "energy_axis": recorded["energy"],
        "tile": int(tile),
        "image": _image_info(image, img),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=encode(attrs))
    from .store import cube_encoding  # a plain ds.to_zarr(path) writes what store.to_zarr does

    ds["counts"].encoding = cube_encoding((chunks, chunks), ds.sizes["energy"])
    return ds
