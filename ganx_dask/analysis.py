"""Lazy analysis of MA-XRF cubes: element maps, sum spectra, ROIs, rebinning, flattening, export.

Everything here works on a ``counts(y, x, energy)`` DataArray (dask-backed or not) and stays lazy:
results are dask-backed until the caller computes or plots them, and no function materialises the
cube (memory is bounded by the chunk size, also for a 2048² × 1024 cube).  The same operations are
available as an xarray accessor on datasets and on counts DataArrays::

    ds = ganx_dask.open_cube("demo.zarr")
    pb = ds.xrf.element_map("Pb", line="La")        # (y, x) counts in ±1 FWHM around Pb Lα
    spec = ds.xrf.sum_spectrum()                     # (energy,) counts
    ds.xrf.to_ganx_hdf5("demo.h5")                   # ganX/LABEC layout: dataset "img" (H, W, E)
    ds.xrf.to_pymca_hdf5("demo-pymca.h5")            # PyMca's MCA-stack layout
    s = ds.xrf.to_hyperspy()                         # exspy EDSSEMSpectrum (needs [hyperspy])

The export methods (``to_ganx_hdf5``, ``to_pymca_hdf5``, ``to_hyperspy``, ``export``) come from
:mod:`ganx_dask.export`, which adds them to the accessor when imported (``import ganx_dask``
does).

Line energies come from xraylib (composite, rate-weighted ``KA_LINE``, ``KB_LINE``, ``LA_LINE``,
``LB_LINE`` and ``MA1_LINE``).  The default window is ±1 FWHM of the detector response at the line
energy (``FWHM² = 2.3548²·ε·F·E + noise_FWHM²`` of the cube's instrument; default ε = 3.6 eV,
F = 0.114, noise 0.08 keV: ≈ 141 eV at Mn Kα; see :func:`detector_fwhm`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .energy import EnergyAxis, as_energy_axis, axis_edges
from .energy import rebin as rebin_histogram
from .errors import EnergyAxisError, GanxError

__all__ = [
    "LINES",
    "PAPER_ELEMENTS",
    "line_energy",
    "default_line",
    "parse_element",
    "detector_fwhm",
    "element_window",
    "roi",
    "element_map",
    "element_maps",
    "line_peak",
    "line_present",
    "line_overlaps",
    "sum_spectrum",
    "rebin",
    "rebin_matrix",
    "flatten",
    "abundance_map",
    "common_axis",
    "compare",
    "XRFDatasetAccessor",
    "XRFDataArrayAccessor",
]

#: Supported line families (names accepted by ``line=``), as xraylib macro names.
LINES = {"Ka": "KA_LINE", "Kb": "KB_LINE", "La": "LA_LINE", "Lb": "LB_LINE", "Ma": "MA1_LINE"}

#: The eight element maps of the ganX paper's Figures 2-4 (element, line).
PAPER_ELEMENTS = (("K", "Ka"), ("Ca", "Ka"), ("Fe", "Ka"), ("Zn", "Ka"), ("Cu", "Ka"),
                  ("Au", "La"), ("Hg", "La"), ("Pb", "La"))

_ALIASES = {"ka": "Ka", "kα": "Ka", "kb": "Kb", "kβ": "Kb", "la": "La", "lα": "La",
            "lb": "Lb", "lβ": "Lb", "ma": "Ma", "mα": "Ma"}


# --------------------------------------------------------------------------- lines and windows
def _z(element: str) -> int:
    import xraylib

    sym = str(element).strip()
    try:
        return int(xraylib.SymbolToAtomicNumber(sym[:1].upper() + sym[1:].lower()))
    except ValueError:
        raise GanxError(f"unknown element {element!r} (give a chemical symbol such as 'Pb')") from None


def _line_name(line: str) -> str:
    key = _ALIASES.get(str(line).strip().lower())
    if key is None:
        raise GanxError(f"unknown line {line!r}; choose one of {', '.join(LINES)}")
    return key


def line_energy(element: str, line: str = "Ka") -> float:
    """Energy of an emission line, keV (xraylib; rate-weighted for composite lines).

    Parameters
    ----------
    element : str
        Chemical symbol, e.g. ``"Pb"``.
    line : {"Ka", "Kb", "La", "Lb", "Ma"}
        Line family.

    Raises
    ------
    GanxError
        Unknown element or line, or the element has no such line.
    """
    import xraylib

    z = _z(element)
    name = _line_name(line)
    try:
        e = float(xraylib.LineEnergy(z, getattr(xraylib, LINES[name])))
    except ValueError:
        e = 0.0
    if not e > 0:
        raise GanxError(f"element {element} has no {name} line")
    return e


def _axis_range(energy: np.ndarray) -> tuple[float, float]:
    edges = axis_edges(np.asarray(energy, dtype=float))
    return float(edges[0]), float(edges[-1])


def default_line(element: str, energy) -> str:
    """The line used for an element's map when none is given: the first of Kα, Lα, Mα inside the
    energy axis (``energy``: bin centres in keV).

    Raises
    ------
    GanxError
        If none of them lies inside the axis.
    """
    lo, hi = _axis_range(energy)
    tried = []
    for name in ("Ka", "La", "Ma"):
        try:
            e = line_energy(element, name)
        except GanxError:
            continue
        tried.append(f"{name} {e:.3f} keV")
        if lo <= e <= hi:
            return name
    raise GanxError(
        f"element {element} has no K, L or M line inside the energy axis {lo:g}-{hi:g} keV"
        + (f" (lines: {', '.join(tried)})" if tried else "")
    )


def parse_element(spec: str | tuple[str, str], energy=None) -> tuple[str, str]:
    """``"Pb"``, ``"Pb:La"``, ``"Pb-La"`` or ``("Pb", "La")`` → ``("Pb", "La")``.

    Without a line, :func:`default_line` picks one for ``energy`` (bin centres, keV; Kα when
    ``energy`` is None).
    """
    if isinstance(spec, tuple):
        el, ln = spec
    else:
        parts = str(spec).replace("-", ":").replace(" ", ":").split(":")
        parts = [p for p in parts if p]
        if not parts or len(parts) > 2:
            raise GanxError(f"invalid element specification {spec!r}; use e.g. 'Pb' or 'Pb:La'")
        el = parts[0]
        ln = parts[1] if len(parts) == 2 else None
    z = _z(el)
    import xraylib

    el = xraylib.AtomicNumberToSymbol(z)
    if ln is None:
        ln = "Ka" if energy is None else default_line(el, energy)
    return el, _line_name(ln)


def detector_fwhm(energy_kev: float | np.ndarray, instrument=None) -> float | np.ndarray:
    """Detector resolution (FWHM, keV) at ``energy_kev``: the pigment model's detector response,
    :func:`ganx_dask.pigments.physics.fwhm_kev` (``FWHM² = 2.3548²·ε·F·E + noise_FWHM²``; default
    instrument ``"lab-rh"``: ε = 0.0036 keV, F = 0.114, noise 0.08 keV, 0.141 keV at Mn Kα).
    """
    from .pigments.physics import fwhm_kev

    return fwhm_kev(energy_kev, instrument)


def element_window(element: str, line: str | None, energy, width: float | None = None,
                   instrument=None) -> tuple[float, float, float]:
    """Integration window of an element map: ``(line energy, e0, e1)`` in keV.

    ``width`` is the full window width in keV (default 2 × FWHM of the detector at the line,
    i.e. ±1 FWHM).  Raises :class:`GanxError` when the line lies outside the energy axis.
    """
    el, ln = parse_element((element, line) if line else element, energy)
    e = line_energy(el, ln)
    lo, hi = _axis_range(energy)
    if not lo <= e <= hi:
        raise GanxError(
            f"element {el}: line {ln} at {e:.3f} keV lies outside the energy axis "
            f"{lo:g}-{hi:g} keV"
        )
    if width is None:
        width = 2.0 * float(detector_fwhm(e, instrument))
    if not (np.isfinite(width) and width > 0):
        raise GanxError(f"element-map window width must be > 0 keV, got {width!r}")
    return e, e - width / 2.0, e + width / 2.0


# --------------------------------------------------------------------------- basic operations
def _counts(obj) -> xr.DataArray:
    if isinstance(obj, xr.Dataset):
        if "counts" not in obj:
            raise GanxError("dataset has no 'counts' variable (expected counts(y, x, energy))")
        obj = obj["counts"]
    if not isinstance(obj, xr.DataArray):
        raise GanxError(f"expected a counts DataArray or a Dataset, got {type(obj).__name__}")
    if "energy" not in obj.dims:
        raise GanxError(f"counts need an 'energy' dimension, got dims {obj.dims}")
    if "energy" not in obj.coords:
        raise EnergyAxisError("counts have no 'energy' coordinate (bin centres, keV)")
    return obj


def _channel_slice(energy: np.ndarray, e0: float, e1: float, centre: float | None = None) -> slice:
    c = np.asarray(energy, dtype=float)
    inside = np.nonzero((c >= e0) & (c <= e1))[0]
    if inside.size == 0:
        edges = axis_edges(c)
        target = centre if centre is not None else 0.5 * (e0 + e1)
        if not edges[0] <= target <= edges[-1]:
            raise GanxError(
                f"energy window {e0:g}-{e1:g} keV lies outside the axis {edges[0]:g}-{edges[-1]:g} keV"
            )
        i = int(np.clip(np.searchsorted(edges, target, side="right") - 1, 0, c.size - 1))
        return slice(i, i + 1)
    return slice(int(inside[0]), int(inside[-1]) + 1)


def roi(counts, e0: float, e1: float) -> xr.DataArray:
    """Counts integrated over the channels whose centres lie in ``[e0, e1]`` keV → ``(y, x)``.

    If the window is narrower than a channel, the channel containing its centre is used.  Lazy.
    """
    c = _counts(counts)
    if not e1 >= e0:
        raise GanxError(f"ROI needs e0 <= e1 (keV), got {e0:g} and {e1:g}")
    sl = _channel_slice(c["energy"].values, float(e0), float(e1))
    out = c.isel(energy=sl).sum("energy")
    out.attrs = {"units": "counts", "long_name": f"counts {e0:.3f}-{e1:.3f} keV",
                 "window_keV": [float(e0), float(e1)],
                 "channels": [sl.start, sl.stop]}
    return out


def element_map(counts, element: str, line: str | None = None, width: float | None = None,
                instrument=None) -> xr.DataArray:
    """Elemental map: counts in a window around an emission line, dims ``(y, x)``, lazy.

    Parameters
    ----------
    counts : xarray.DataArray or Dataset
        ``counts(y, x, energy)`` with bin centres (keV) as the ``energy`` coordinate.
    element : str
        Chemical symbol (``"Pb"``) or ``"Pb:La"``.
    line : {"Ka", "Kb", "La", "Lb", "Ma"}, optional
        Line family; default: the first of Kα, Lα, Mα inside the energy axis.
    width : float, optional
        Full window width, keV (default ±1 FWHM of the detector at the line energy).
    instrument : Instrument, optional
        Detector parameters for the default width.

    Raises
    ------
    GanxError
        Unknown element/line, or the line is outside the cube's energy axis.
    """
    c = _counts(counts)
    el, ln = parse_element((element, line) if line else element, c["energy"].values)
    e, e0, e1 = element_window(el, ln, c["energy"].values, width, instrument)
    sl = _channel_slice(c["energy"].values, e0, e1, centre=e)
    out = c.isel(energy=sl).sum("energy")
    out.name = f"{el} {ln}"
    out.attrs = {
        "units": "counts",
        "long_name": f"{el} {ln} counts",
        "element": el,
        "line": ln,
        "line_energy_keV": e,
        "window_keV": [e0, e1],
        "channels": [sl.start, sl.stop],
    }
    return out


def element_maps(counts, elements: Iterable[str | tuple[str, str]] = PAPER_ELEMENTS, *,
                 width: float | None = None, instrument=None, skip_missing: bool = False
                 ) -> xr.DataArray:
    """Several element maps stacked along a new ``element`` dimension (labels like ``"Pb La"``).

    ``skip_missing=True`` drops elements whose line lies outside the energy axis instead of
    raising (the dropped ones are listed in ``attrs["skipped"]``).
    """
    c = _counts(counts)
    maps, skipped = [], []
    for spec in elements:
        try:
            maps.append(element_map(c, *((spec,) if isinstance(spec, str) else spec), width=width,
                                    instrument=instrument))
        except GanxError:
            if not skip_missing:
                raise
            skipped.append(spec if isinstance(spec, str) else ":".join(spec))
    if not maps:
        raise GanxError(f"no element line inside the energy axis for {list(elements)!r}")
    names = [m.name for m in maps]
    out = xr.concat([m.drop_attrs() if hasattr(m, "drop_attrs") else m for m in maps],
                    dim=xr.DataArray(names, dims="element", name="element"))
    out.name = "element_maps"
    out = out.assign_coords(
        line_energy=("element", [m.attrs["line_energy_keV"] for m in maps], {"units": "keV"}))
    out.attrs = {"units": "counts", "long_name": "element map", "skipped": skipped}
    return out


def line_peak(spectrum, element: str, line: str | None = None, *, width: float | None = None,
              instrument=None) -> dict:
    """How clearly an emission line stands above the background of a sum spectrum.

    The gross counts ``G`` in the element-map window are compared with a baseline ``B`` taken
    from two side bands of the same width just below and above it (scaled to the window's
    channels): ``net = G − B`` and ``z = net / sqrt(G + r²·S)`` (Poisson; ``S`` side-band counts,
    ``r`` window/side channel ratio).  A neighbouring peak in a side band raises ``B``, so the
    test errs towards "absent".

    Parameters
    ----------
    spectrum : xarray.DataArray
        ``(energy,)`` counts with bin centres in keV (:func:`sum_spectrum`, computed).
    element, line, width, instrument
        As for :func:`element_map`.

    Returns
    -------
    dict
        ``element``, ``line``, ``line_energy_keV``, ``gross``, ``net`` (counts), ``z`` (σ),
        ``peak_fraction`` (net / gross).
    """
    e_c = np.asarray(spectrum["energy"].values, dtype=float)
    y = np.asarray(spectrum.values, dtype=float)
    el, ln = parse_element((element, line) if line else element, e_c)
    e, e0, e1 = element_window(el, ln, e_c, width, instrument)
    win = _channel_slice(e_c, e0, e1, centre=e)
    n = win.stop - win.start
    lo = slice(max(0, win.start - n), win.start)
    hi = slice(win.stop, min(e_c.size, win.stop + n))
    side_n = (lo.stop - lo.start) + (hi.stop - hi.start)
    gross = float(y[win].sum())
    side = float(y[lo].sum() + y[hi].sum())
    r = n / side_n if side_n else 0.0
    base = r * side
    net = gross - base
    var = gross + r * r * side
    z = net / np.sqrt(var) if var > 0 else 0.0
    return {"element": el, "line": ln, "line_energy_keV": e, "gross": gross, "net": net,
            "z": float(z), "peak_fraction": net / gross if gross > 0 else 0.0}


def line_present(peak: dict, *, z_min: float = 5.0, fraction_min: float = 0.1) -> bool:
    """A :func:`line_peak` result above noise: ``z ≥ z_min`` and net ≥ ``fraction_min`` of the
    window's counts (with millions of counts a 1 % bump is significant yet its map is noise)."""
    return peak["z"] >= z_min and peak["peak_fraction"] >= fraction_min


def line_overlaps(element: str, line: str, energy, *, elements: Iterable[str] = (),
                  instrument=None) -> list[tuple[str, str, float]]:
    """Lines of *other* elements that fall inside the detector resolution of ``element``'s line.

    Every line family of :data:`LINES` of each of ``elements`` inside the energy axis (bin
    centres, keV) is compared; a line closer than the detector FWHM at ``element``'s line is
    not resolved from it, so that element map also shows the other element (As Kα / Pb Lα,
    S Kα / Pb Mα, Ti Kα / Ba Lα …).

    Returns
    -------
    list of (element, line, energy keV)
        Sorted by distance.
    """
    el, ln = parse_element((element, line), energy)
    e = line_energy(el, ln)
    fwhm = float(detector_fwhm(e, instrument))
    lo, hi = _axis_range(energy)
    out = []
    for other in {parse_element((o, "Ka"))[0] for o in elements} - {el}:
        for name in LINES:
            try:
                e2 = line_energy(other, name)
            except GanxError:
                continue
            if lo <= e2 <= hi and abs(e2 - e) < fwhm:
                out.append((other, name, e2))
    return sorted(out, key=lambda t: abs(t[2] - e))


def sum_spectrum(counts) -> xr.DataArray:
    """Counts summed over all pixels → ``(energy,)`` (lazy; uint64 for integer counts)."""
    c = _counts(counts)
    pix = [d for d in c.dims if d != "energy"]
    dtype = np.uint64 if np.issubdtype(c.dtype, np.unsignedinteger) else None
    out = c.sum(pix, dtype=dtype) if dtype is not None else c.sum(pix)
    out.name = "sum_spectrum"
    out.attrs = {"units": "counts", "long_name": "sum spectrum"}
    return out


def rebin_matrix(src_energy, dst_energy) -> np.ndarray:
    """The linear map ``(n_src, n_dst)`` of :func:`ganx_dask.energy.rebin` between two axes.

    Row ``i`` is where the counts of source channel ``i`` go (uniform within the channel).
    """
    s = axis_edges(src_energy)
    t = axis_edges(dst_energy)
    return rebin_histogram(np.eye(s.size - 1), s, t)


def _energy_coord(ax) -> xr.DataArray:
    if isinstance(ax, EnergyAxis):
        return ax.to_coord()
    centres = 0.5 * (ax[1:] + ax[:-1])
    return xr.DataArray(centres, dims="energy", attrs={"units": "keV"})


def _rebin_da(c: xr.DataArray, factor: int | None, target) -> xr.DataArray:
    n = c.sizes["energy"]
    if target is None and n % factor == 0:
        # sum groups of `factor` channels; uint16 counts stay exact in uint32
        dtype = np.dtype(np.uint32) if c.dtype.kind == "u" and c.dtype.itemsize <= 2 else \
            np.dtype(np.uint64) if c.dtype.kind == "u" else np.result_type(c.dtype, np.float64)
        other = [d for d in c.dims if d != "energy"]
        c = c.transpose(*other, "energy")
        data = c.data
        if isinstance(data, da.Array):
            data = data.rechunk({data.ndim - 1: -1})
            new = da.coarsen(np.sum, data, {data.ndim - 1: factor}, dtype=dtype)
        else:
            new = np.asarray(data).reshape(data.shape[:-1] + (n // factor, factor)).sum(
                axis=-1, dtype=dtype)
        centres = c["energy"].values.reshape(-1, factor).mean(axis=1)
        src = as_energy_axis(c["energy"].values)
        coord = EnergyAxis(src.start, src.stop, n // factor).to_coord() \
            if isinstance(src, EnergyAxis) else xr.DataArray(centres, dims="energy",
                                                            attrs={"units": "keV"})
        coords = {k: v for k, v in c.coords.items() if "energy" not in v.dims}
        coords["energy"] = coord
        return xr.DataArray(new, dims=c.dims, coords=coords, attrs=dict(c.attrs), name=c.name)
    if target is None:
        lo, hi = _axis_range(c["energy"].values)
        target = EnergyAxis(lo, hi, n // factor)
    ax = as_energy_axis(target)
    w = rebin_matrix(c["energy"].values, ax)
    other = [d for d in c.dims if d != "energy"]
    c = c.transpose(*other, "energy")
    data = c.data
    if isinstance(data, da.Array):
        data = data.rechunk({data.ndim - 1: -1})
        if data.ndim > 1:  # float64 output blocks of at most ~64 MiB
            per_row = int(np.prod([max(ch) for ch in data.chunks[1:-1]], dtype=np.int64)) * \
                max(w.shape[1], data.shape[-1]) * 8
            rows = max(1, min(max(data.chunks[0]), (64 * 2**20) // max(per_row, 1)))
            data = data.rechunk({0: rows})
        new = data.map_blocks(lambda b: np.asarray(b, dtype=np.float64) @ w,
                              chunks=data.chunks[:-1] + ((w.shape[1],),), dtype=np.float64)
    else:
        new = np.asarray(data, dtype=np.float64) @ w
    coords = {k: v for k, v in c.coords.items() if "energy" not in v.dims}
    coords["energy"] = _energy_coord(ax)
    out = xr.DataArray(new, dims=c.dims, coords=coords, attrs=dict(c.attrs), name=c.name)
    return out


def rebin(obj, factor: int | None = None, *, energy=None):
    """Count-conserving rebinning along ``energy`` (lazy).

    Parameters
    ----------
    obj : xarray.DataArray or Dataset
        A counts DataArray, or a dataset whose energy-dimensioned variables (``counts``,
        ``spectrum``) are all rebinned.
    factor : int, optional
        Merge ``factor`` adjacent channels.  When it divides the number of channels the counts are
        summed exactly (unsigned counts widened: uint8/uint16 → uint32, wider → uint64; other
        dtypes → float64); otherwise the same range is split into
        ``n // factor`` equal channels with :func:`ganx_dask.energy.rebin` (float counts).
    energy : EnergyAxis, str or array-like, optional
        A target axis instead of ``factor`` (``"START:STOP:N"``, bin centres in keV); counts
        outside it are dropped.

    Returns
    -------
    Same type as ``obj``.
    """
    if (factor is None) == (energy is None):
        raise GanxError("rebin needs exactly one of factor (int) or energy (target axis)")
    if factor is not None and (int(factor) != factor or factor < 1):
        raise GanxError(f"rebin factor must be a positive integer, got {factor!r}")
    factor = int(factor) if factor is not None else None
    if isinstance(obj, xr.Dataset):
        out = obj.drop_vars([k for k, v in obj.variables.items() if "energy" in v.dims])
        new = {k: _rebin_da(obj[k], factor, energy) for k, v in obj.data_vars.items()
               if "energy" in v.dims}
        out = out.assign(new)
        if "energy_axis" in out.attrs:
            out.attrs["energy_axis"] = str(as_energy_axis(out["energy"].values)) \
                if isinstance(as_energy_axis(out["energy"].values), EnergyAxis) else None
        return out
    return _rebin_da(_counts(obj), factor, energy)


def flatten(counts, *, target_chunk_bytes: int = 64 * 2**20) -> xr.DataArray:
    """The cube as a 2-D ``(pixel, energy)`` array, pixels in raster order (``pixel = y·W + x``).

    Lazy: rows of the image are grouped so that a chunk holds about ``target_chunk_bytes``; the
    ``y`` and ``x`` of each pixel are kept as coordinates along ``pixel``.
    """
    c = _counts(counts).transpose("y", "x", "energy")
    h, w, e = (c.sizes[d] for d in ("y", "x", "energy"))
    data = c.data
    if isinstance(data, da.Array):
        rows = int(max(1, min(h, target_chunk_bytes // max(1, w * e * data.dtype.itemsize))))
        ychunk = max(data.chunks[0])
        if rows < ychunk:  # slabs that tile the stored y-chunks: each reads one chunk row
            rows = max(d for d in range(1, rows + 1) if ychunk % d == 0)
        data = data.rechunk((rows, -1, -1)).reshape(h * w, e)
    else:
        data = np.asarray(data).reshape(h * w, e)
    pix = np.arange(h * w)
    coords = {"pixel": pix, "energy": c["energy"]}
    ycoord = c["y"].values if "y" in c.coords else np.arange(h)
    xcoord = c["x"].values if "x" in c.coords else np.arange(w)
    coords["y"] = ("pixel", np.repeat(ycoord, w))
    coords["x"] = ("pixel", np.tile(xcoord, h))
    out = xr.DataArray(data, dims=("pixel", "energy"), coords=coords, name="counts",
                       attrs=dict(c.attrs))
    out.attrs["image_shape"] = [h, w]
    return out


def abundance_map(ds: xr.Dataset, pigment: str | Sequence[str] | None = None) -> xr.DataArray:
    """Lazy per-pixel ground-truth pigment abundance ``(y, x, pigment)`` from ``labels`` and
    ``abundance(cluster, pigment)`` (0 where ``labels == -1``)."""
    for v in ("labels", "abundance"):
        if v not in ds:
            raise GanxError(f"dataset has no {v!r} variable")
    ab = ds["abundance"]
    if pigment is not None:
        ab = ab.sel(pigment=[pigment] if isinstance(pigment, str) else list(pigment))
    table = np.vstack([ab.values, np.zeros((1, ab.sizes["pigment"]))])
    lab = ds["labels"]
    pos = {int(c): i for i, c in enumerate(ab["cluster"].values)}
    lut = np.full(max(pos) + 2 if pos else 1, len(pos), dtype=np.int64)
    for c, i in pos.items():
        lut[c] = i

    def fn(block):
        b = np.asarray(block).astype(np.int64)
        idx = np.where(b >= 0, lut[np.clip(b, 0, lut.size - 1)], len(pos))
        return table[idx]

    data = lab.data
    if isinstance(data, da.Array):
        out = data.map_blocks(fn, new_axis=2, chunks=data.chunks + ((table.shape[1],),),
                              dtype=np.float64)
    else:
        out = fn(data)
    return xr.DataArray(out, dims=("y", "x", "pigment"),
                        coords={**{k: v for k, v in lab.coords.items()},
                                "pigment": ab["pigment"].values},
                        attrs={"units": "1", "long_name": "ground-truth pigment abundance"})


# --------------------------------------------------------------------------- accessors
class _Base:
    def __init__(self, obj) -> None:
        self._obj = obj

    @property
    def counts(self) -> xr.DataArray:
        """The ``counts(y, x, energy)`` DataArray."""
        return _counts(self._obj)

    def _instrument(self, instrument):
        return instrument

    def element_map(self, element: str, line: str | None = None, width: float | None = None,
                    instrument=None) -> xr.DataArray:
        """See :func:`ganx_dask.analysis.element_map`."""
        return element_map(self._obj, element, line, width, self._instrument(instrument))

    def element_maps(self, elements=PAPER_ELEMENTS, **kw) -> xr.DataArray:
        """See :func:`ganx_dask.analysis.element_maps`."""
        kw.setdefault("instrument", self._instrument(kw.get("instrument")))
        return element_maps(self._obj, elements, **kw)

    def sum_spectrum(self) -> xr.DataArray:
        """See :func:`ganx_dask.analysis.sum_spectrum`."""
        return sum_spectrum(self._obj)

    def roi(self, e0: float, e1: float) -> xr.DataArray:
        """See :func:`ganx_dask.analysis.roi`."""
        return roi(self._obj, e0, e1)

    def rebin(self, factor: int | None = None, *, energy=None):
        """See :func:`ganx_dask.analysis.rebin`."""
        return rebin(self._obj, factor, energy=energy)

    def flatten(self, **kw) -> xr.DataArray:
        """See :func:`ganx_dask.analysis.flatten`."""
        return flatten(self._obj, **kw)


@xr.register_dataset_accessor("xrf")
class XRFDatasetAccessor(_Base):
    """``ds.xrf``: lazy MA-XRF analysis of a ganx-dask dataset (see :mod:`ganx_dask.analysis`)."""

    @property
    def meta(self) -> dict:
        """The dataset's attrs as Python values (nested dicts/lists; :func:`ganx_dask.attrs.decode`)."""
        from .attrs import decode

        return decode(self._obj.attrs)

    def _instrument(self, instrument):
        if instrument is not None:
            return instrument
        spec = self.meta.get("instrument")
        if spec is None:
            return None
        try:
            from .pigments.physics import Instrument
        except ImportError:
            return None
        try:
            if isinstance(spec, dict):
                return Instrument.from_dict(spec)
            return Instrument.preset(str(spec))
        except (TypeError, ValueError, KeyError):  # GanxError is a ValueError
            return None

    def abundance_map(self, pigment=None) -> xr.DataArray:
        """See :func:`ganx_dask.analysis.abundance_map`."""
        return abundance_map(self._obj, pigment)


@xr.register_dataarray_accessor("xrf")
class XRFDataArrayAccessor(_Base):
    """``counts.xrf``: the same analysis on a bare ``counts(y, x, energy)`` DataArray."""


# --------------------------------------------------------------------------- comparing cubes
def common_axis(energy_a, energy_b) -> EnergyAxis:
    """A uniform axis covering the overlap of two axes (bin centres, keV) at the coarser width.

    Raises
    ------
    EnergyAxisError
        When the axes do not overlap.
    """
    ea, eb = axis_edges(np.asarray(energy_a, float)), axis_edges(np.asarray(energy_b, float))
    lo, hi = max(ea[0], eb[0]), min(ea[-1], eb[-1])
    if not hi > lo:
        raise EnergyAxisError(
            f"energy axes do not overlap: {ea[0]:g}-{ea[-1]:g} keV and {eb[0]:g}-{eb[-1]:g} keV")
    width = max(np.max(np.diff(ea)), np.max(np.diff(eb)))
    n = int(np.floor((hi - lo) / width + 1e-9))
    if n < 2:
        raise EnergyAxisError(f"energy axes overlap by less than two channels ({lo:g}-{hi:g} keV)")
    return EnergyAxis(float(lo), float(lo + n * width), n)


def _same_axis(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-9)


def compare(a, b, *, energy=None, spectral_only: bool = False, image_metrics: bool = True
            ) -> dict:
    """Compare two cubes: the paper's sum-spectrum metrics and SSIM/MS-SSIM of flattened cubes.

    Parameters
    ----------
    a, b : Dataset or counts DataArray
        Cubes ``counts(y, x, energy)`` (synthetic or measured).
    energy : EnergyAxis or str, optional
        Common axis.  Default: the axes as they are when identical, else
        :func:`common_axis` (both cubes are rebinned onto it, conserving counts).
    spectral_only : bool
        Only the sum-spectrum metrics (allowed for cubes of different spatial shapes).
    image_metrics : bool
        Compute SSIM/MS-SSIM (skipped when ``spectral_only``).

    Returns
    -------
    dict
        ``energy_axis`` (str), ``rebinned`` (bool), ``shape_a``/``shape_b``, ``spectral``
        (:func:`ganx_dask.metrics.spectral_metrics`), ``ssim``, ``ms_ssim`` (float or None) and
        ``notes`` (why something was skipped).

    Raises
    ------
    GanxError
        Different spatial shapes without ``spectral_only`` (the message says so), or energy axes
        that do not overlap.
    """
    from . import metrics

    ca, cb = _counts(a).transpose("y", "x", "energy"), _counts(b).transpose("y", "x", "energy")
    shape_a = (ca.sizes["y"], ca.sizes["x"])
    shape_b = (cb.sizes["y"], cb.sizes["x"])
    notes: list[str] = []
    do_image = image_metrics and not spectral_only
    if do_image and shape_a != shape_b:
        raise GanxError(
            f"spatial shapes differ: {shape_a[0]}×{shape_a[1]} vs {shape_b[0]}×{shape_b[1]} "
            "pixels; SSIM/MS-SSIM need cubes of the same shape (use spectral_only / "
            "--spectral-only to compare the sum spectra only)"
        )
    en_a, en_b = ca["energy"].values, cb["energy"].values
    rebinned = False
    if energy is not None:
        target = as_energy_axis(energy)
        rebinned = True
    elif _same_axis(en_a, en_b):
        target = None
    else:
        target = common_axis(en_a, en_b)
        rebinned = True
    sa, sb = sum_spectrum(ca), sum_spectrum(cb)
    if target is not None:
        edges = axis_edges(target)
        sa_v, sb_v = dask.compute(sa.data, sb.data)
        sa_v = rebin_histogram(np.asarray(sa_v, float), axis_edges(en_a), edges)
        sb_v = rebin_histogram(np.asarray(sb_v, float), axis_edges(en_b), edges)
        axis_str = str(target) if isinstance(target, EnergyAxis) else f"{edges.size - 1} channels"
    else:
        sa_v, sb_v = dask.compute(sa.data, sb.data)
        ax = as_energy_axis(en_a)
        axis_str = str(ax) if isinstance(ax, EnergyAxis) else f"{en_a.size} channels"
    out = {
        "energy_axis": axis_str,
        "rebinned": rebinned,
        "shape_a": [*shape_a, ca.sizes["energy"]],
        "shape_b": [*shape_b, cb.sizes["energy"]],
        "spectral": metrics.spectral_metrics(sa_v, sb_v),
        "ssim": None,
        "ms_ssim": None,
        "notes": notes,
    }
    if not do_image:
        notes.append("SSIM/MS-SSIM not computed (spectral only)")
        return out
    if target is not None:
        ca = rebin(ca, energy=target)
        cb = rebin(cb, energy=target)
    fa, fb = flatten(ca).data, flatten(cb).data
    out["ssim"] = metrics.ssim(fa, fb)
    try:
        out["ms_ssim"] = metrics.ms_ssim(fa, fb)
    except GanxError as exc:
        notes.append(f"MS-SSIM skipped: {exc}")
    return out
