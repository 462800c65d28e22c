"""Exports of a cube to other tools: ganX HDF5, PyMca HDF5, HyperSpy/exspy (``.hspy``, ``.rpl``).

Every file export writes block by block (a few dask blocks in memory, never the whole cube)
under a temporary name renamed into place at the end: an error leaves no partial file and an
existing file is replaced only with ``overwrite=True``.

========================  ===================================  =================================
function                  layout                               read back by
========================  ===================================  =================================
:func:`to_ganx_hdf5`      dataset ``img`` (H, W, E), sibling   ganX, :func:`ganx_dask.readers.\
                          ``energy`` (keV), calibration attrs  open_hdf5`
:func:`to_pymca_hdf5`     NeXus ``/stack/instrument/           PyMca (HDF5 stack), :func:`ganx_\
                          detector_00``: ``data`` (H, W, E),   dask.readers.open_hdf5`
                          ``calibration`` [a, b, c],
                          ``channels``, ``live_time``
:func:`to_hyperspy`       an exspy ``EDSSEMSpectrum`` (lazy    HyperSpy; ``.hspy``/``.rpl`` via
                          for big cubes)                       :func:`export`
========================  ===================================  =================================

Energy calibration conventions: channel ``i`` is centred at ``offset + gain·i`` keV (ganX attrs);
PyMca's ``calibration`` is ``[a, b, c]`` with ``E(ch) = a + b·ch + c·ch²`` keV over the
``channels`` numbers (``0 … E−1``), so ``a = offset``, ``b = gain``, ``c = 0`` for our uniform
axes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ._staging import atomic_file, staged_output
from .analysis import _counts, detector_fwhm
from .errors import EnergyAxisError, GanxError, StoreExistsError

__all__ = [
    "FORMATS",
    "MN_KA_KEV",
    "energy_calibration",
    "live_time",
    "to_ganx_hdf5",
    "to_pymca_hdf5",
    "to_hyperspy",
    "hyperspy_window",
    "export",
]

#: ``export`` formats and their file name endings.
FORMATS = {"ganx": ".h5", "pymca": ".h5", "hspy": ".hspy", "rpl": ".rpl"}

#: Mn Kα energy, keV (the reference line of ``energy_resolution_MnKa``; HyperSpy's value).
MN_KA_KEV = 5.8987


# --------------------------------------------------------------------------- helpers
def _dask_cube(counts) -> tuple[xr.DataArray, da.Array]:
    c = _counts(counts).transpose("y", "x", "energy")
    data = c.data if isinstance(c.data, da.Array) else da.from_array(
        np.asarray(c.data), chunks=(64, 64, -1))
    return c, data


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise StoreExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if not path.parent.exists():
        raise GanxError(f"output directory {path.parent} does not exist")


def _write_blocks(dset, data: da.Array, batch: int | None) -> None:
    """Compute ``data`` ``batch`` blocks at a time and write each into the h5py dataset."""
    batch = batch or 2 * (os.cpu_count() or 1)
    offs = [np.cumsum((0,) + ch) for ch in data.chunks]
    idx = list(np.ndindex(*data.numblocks))
    for k in range(0, len(idx), batch):
        part = idx[k: k + batch]
        blocks = dask.compute(*[data.blocks[i] for i in part])
        for i, b in zip(part, blocks, strict=True):
            sl = tuple(slice(int(offs[d][i[d]]), int(offs[d][i[d] + 1]))
                       for d in range(data.ndim))
            dset[sl] = b


def _h5_cube(group, name: str, data: da.Array):
    """A gzip-1 + shuffle HDF5 dataset shaped like ``data`` with ≤ 64×64-pixel chunks."""
    chunks = tuple(min(max(ch), 64) if i < 2 else max(ch) for i, ch in enumerate(data.chunks))
    return group.create_dataset(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                compression="gzip", compression_opts=1, shuffle=True)


def energy_calibration(energy) -> tuple[float, float]:
    """``(offset, gain)`` keV of a uniform axis of channel centres (channel ``i`` at
    ``offset + gain·i``).

    Raises
    ------
    EnergyAxisError
        Fewer than two channels or a non-uniform axis (no linear calibration describes it).
    """
    e = np.asarray(energy, dtype=float)
    if e.size < 2:
        raise EnergyAxisError(f"an energy calibration needs ≥ 2 channels, got {e.size}")
    gain = float((e[-1] - e[0]) / (e.size - 1))
    if not gain > 0 or np.max(np.abs(e - (e[0] + gain * np.arange(e.size)))) > 1e-6 * gain + 1e-9:
        raise EnergyAxisError("the energy axis is not uniform: no linear calibration "
                              "(rebin it onto a uniform axis first, ds.xrf.rebin(energy=...))")
    return float(e[0]), gain


def _attr(attrs, key):
    """A dataset attribute that may be a dict or its JSON encoding (CF-style stores)."""
    v = attrs.get(key)
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def live_time(obj) -> xr.DataArray | None:
    """Per-pixel live time ``(y, x)``, s: the ``live_time`` variable of a dataset (dead-time
    model), else the detector's dwell time (``detector.dwell_ms`` attribute) for every pixel;
    ``None`` when the cube records neither."""
    if isinstance(obj, xr.Dataset):
        if "live_time" in obj:
            return obj["live_time"].transpose("y", "x")
        det = _attr(obj.attrs, "detector")
        if isinstance(det, dict) and det.get("dwell_ms"):
            c = obj["counts"]
            return xr.DataArray(np.full((c.sizes["y"], c.sizes["x"]), det["dwell_ms"] * 1e-3,
                                        np.float32), dims=("y", "x"), attrs={"units": "s"})
    return None


# --------------------------------------------------------------------------- ganX HDF5
def to_ganx_hdf5(counts, path: str | os.PathLike, *, dataset: str = "img",
                 overwrite: bool = False, batch: int | None = None) -> Path:
    """Write the cube in the ganX/LABEC HDF5 layout: dataset ``img`` of shape ``(H, W, E)``.

    Blocks are computed a few at a time and written into the dataset, so the cube is never held
    in memory.  The file is written under a temporary name and renamed at the end: on error no
    partial file is left and an existing file is untouched.  The energy calibration is stored as
    attributes of ``img`` (``calibration_offset_keV``, ``calibration_gain_keV_per_channel``:
    channel ``i`` is centred at ``offset + gain·i`` keV) and the channel centres as a sibling
    1-D dataset ``energy`` (keV; a data set, not an attribute, so any channel count fits: HDF5
    object headers hold 64 KiB).

    Parameters
    ----------
    counts : xarray.DataArray or Dataset
        ``counts(y, x, energy)``.
    path : path-like
        Output ``.h5`` file.
    dataset : str
        Dataset name (``"img"`` for ganX).
    overwrite : bool
        Replace an existing file.
    batch : int, optional
        Blocks computed concurrently (default: 2 × CPU count).

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    import h5py

    c, data = _dask_cube(counts)
    path = Path(path)
    _check_target(path, overwrite)
    energy = np.asarray(c["energy"].values, dtype=float)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            dset = _h5_cube(f, dataset, data)
            if energy.size > 1:
                gain = float((energy[-1] - energy[0]) / (energy.size - 1))
                dset.attrs["calibration_gain_keV_per_channel"] = gain
            dset.attrs["calibration_offset_keV"] = float(energy[0])
            dset.attrs["dims"] = "y,x,energy"
            e = f.create_dataset("energy", data=energy)
            e.attrs["units"] = "keV"
            e.attrs["long_name"] = "channel centre energy"
            _write_blocks(dset, data, batch)

    # temporary file renamed into place; it gets the umask's permissions (not mkstemp's 0600)
    atomic_file(path, overwrite=overwrite, write=write)
    return path


# --------------------------------------------------------------------------- PyMca HDF5
def to_pymca_hdf5(obj, path: str | os.PathLike, *, overwrite: bool = False,
                  batch: int | None = None) -> Path:
    """Write the cube as PyMca writes an MCA stack (``McaStackExport``), readable by PyMca's
    HDF5 stack reader (``HDF5Stack1D``) with its energy calibration and live time.

    Layout (NeXus)::

        /stack                              NXentry, default "measurement"
          instrument/detector_00            NXinstrument / NXdetector
            data         (H, W, E)          counts, interpretation "spectrum"; written block by block
            calibration  [a, b, c]          E(ch) = a + b·ch + c·ch² keV (c = 0)
            channels     (E,) int32         0 … E−1
            live_time    (H·W,) float64     s, row-major pixels (only when the cube records one,
                                            see :func:`live_time`)
          measurement                       NXdata, signal "detector_00" → data (soft link)

    Parameters
    ----------
    obj : xarray.Dataset or DataArray
        A cube dataset (its ``live_time`` or dwell time is exported) or a counts DataArray.
    path : path-like
        Output ``.h5`` file.
    overwrite : bool
        Replace an existing file.
    batch : int, optional
        Blocks computed concurrently (default: 2 × CPU count).

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is false.
    EnergyAxisError
        A non-uniform energy axis.
    """
    import h5py

    c, data = _dask_cube(obj)
    path = Path(path)
    _check_target(path, overwrite)
    offset, gain = energy_calibration(c["energy"].values)
    lt = live_time(obj)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["NX_class"] = "NXroot"
            f.attrs["creator"] = "ganx-dask"
            f.attrs["default"] = "stack"
            entry = f.create_group("stack")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "measurement"
            entry["title"] = "ganx-dask synthetic MA-XRF cube"
            inst = entry.create_group("instrument")
            inst.attrs["NX_class"] = "NXinstrument"
            det = inst.create_group("detector_00")
            det.attrs["NX_class"] = "NXdetector"
            dset = _h5_cube(det, "data", data)
            dset.attrs["interpretation"] = "spectrum"
            det["calibration"] = np.array([offset, gain, 0.0])
            det["calibration"].attrs["units"] = "keV"
            det["channels"] = np.arange(data.shape[2], dtype=np.int32)
            if lt is not None:
                det["live_time"] = np.asarray(lt.values, dtype=np.float64).ravel()
                det["live_time"].attrs["units"] = "s"
            meas = entry.create_group("measurement")
            meas.attrs["NX_class"] = "NXdata"
            meas.attrs["signal"] = "detector_00"
            meas["detector_00"] = h5py.SoftLink(dset.name)
            _write_blocks(dset, data, batch)

    atomic_file(path, overwrite=overwrite, write=write)
    return path


# --------------------------------------------------------------------------- HyperSpy / exspy
def _elements(ds) -> list[str]:
    """Chemical symbols of the cube's pigments (default library), for ``Sample.elements``."""
    if not isinstance(ds, xr.Dataset):
        return []
    from .cli.analysis import default_elements

    try:
        return sorted({el for el, _ in default_elements(ds, ds["energy"].values)})
    except GanxError:
        return []


def to_hyperspy(obj, *, lazy: bool | None = None, elements=None):
    """The cube as an exspy ``EDSSEMSpectrum`` (``LazyEDSSEMSpectrum`` for big cubes).

    exspy has no XRF signal type; ``EDS_SEM`` is the closest (an energy-dispersive spectrum
    image with a beam energy and a detector resolution), and its ``get_lines_intensity``,
    ``plot`` and line markers work on XRF cubes.

    Axes: navigation ``x``, ``y`` (pixels, offsets from the coordinates), signal ``Energy``
    (keV, offset and scale from the uniform energy axis).  Metadata
    (``Acquisition_instrument.SEM``): ``beam_energy`` = the tube voltage (kV, the maximum
    excitation energy; instrument attrs, default 40), ``Detector.EDS.energy_resolution_MnKa``
    (eV, the cube's detector FWHM at Mn Kα, :func:`ganx_dask.analysis.detector_fwhm`),
    ``Detector.EDS.live_time`` (s, mean per pixel, when the cube records one, see
    :func:`live_time`); ``Sample.elements`` (the elements of the cube's pigments, or
    ``elements``); the dataset's attrs go to ``original_metadata``.

    HyperSpy's default ``get_lines_intensity`` windows use its own line energies and resolution
    model; pass ``integration_windows`` from :func:`ganx_dask.analysis.element_window` (see
    ``docs/analysis.md``) for the exact window of ``ds.xrf.element_map``.

    Parameters
    ----------
    obj : xarray.Dataset or DataArray
        A cube (``counts(y, x, energy)``).
    lazy : bool, optional
        Lazy signal on the cube's dask array; default: lazy when the cube is dask-backed and
        larger than 256 MiB.
    elements : list of str, optional
        ``Sample.elements`` (default: from the pigments).

    Raises
    ------
    GanxError
        exspy/HyperSpy not installed (``pip install ganx-dask[hyperspy]``).
    EnergyAxisError
        A non-uniform energy axis.
    """
    try:
        import exspy.signals as es
    except ImportError:
        raise GanxError("to_hyperspy needs HyperSpy and exspy: pip install "
                        "'ganx-dask[hyperspy]'") from None
    c = _counts(obj).transpose("y", "x", "energy")
    offset, gain = energy_calibration(c["energy"].values)
    is_dask = isinstance(c.data, da.Array)
    if lazy is None:
        lazy = is_dask and c.nbytes > 256 * 2**20
    data = c.data if (lazy and is_dask) else (da.asarray(c.data) if lazy else np.asarray(c.values))
    cls = es.LazyEDSSEMSpectrum if lazy else es.EDSSEMSpectrum

    def nav(dim, name):
        v = np.asarray(c[dim].values, float) if dim in c.coords else np.arange(c.sizes[dim])
        step = float(v[1] - v[0]) if v.size > 1 else 1.0
        return {"name": name, "size": int(v.size), "offset": float(v[0]), "scale": step,
                "units": str(c[dim].attrs.get("units", "pixel")) if dim in c.coords else "pixel",
                "navigate": True}

    axes = [nav("y", "y"), nav("x", "x"),
            {"name": "Energy", "size": int(c.sizes["energy"]), "offset": offset, "scale": gain,
             "units": "keV", "navigate": False}]
    s = cls(data, axes=axes)
    ds = obj if isinstance(obj, xr.Dataset) else None
    inst = ds.xrf._instrument(None) if ds is not None else None
    kv = float(getattr(inst, "kv", 40.0) or 40.0)
    md = s.metadata
    md.set_item("General.title", str((ds.attrs.get("title") if ds is not None else None)
                                     or "ganx-dask MA-XRF cube"))
    md.set_item("Signal.quantity", "X-rays (Counts)")
    md.set_item("Acquisition_instrument.SEM.beam_energy", kv)
    md.set_item("Acquisition_instrument.SEM.Detector.EDS.energy_resolution_MnKa",
                float(detector_fwhm(MN_KA_KEV, inst)) * 1000.0)
    lt = live_time(ds) if ds is not None else None
    if lt is not None:
        md.set_item("Acquisition_instrument.SEM.Detector.EDS.live_time",
                    float(lt.mean().values))
    els = list(elements) if elements is not None else _elements(ds)
    if els:
        s.add_elements(els)
    if ds is not None:
        s.original_metadata.add_dictionary(
            {"ganx_dask": json.loads(json.dumps(dict(ds.attrs), default=str))})
    return s


def hyperspy_window(obj, element: str, line: str | None = None, width: float | None = None
                    ) -> list[float]:
    """``[left, right]`` keV for HyperSpy's ``get_lines_intensity(integration_windows=...)``
    that sums exactly the channels of ``ds.xrf.element_map(element, line, width)``.

    HyperSpy slices ``isig[left:right]`` by rounding to the nearest channel centre, so the
    window runs from the centre of the first channel to the centre of the one after the last.
    """
    m = obj.xrf.element_map(element, line, width)
    e = np.asarray(obj["energy"].values, dtype=float)
    i0, i1 = m.attrs["channels"]
    return [float(e[i0]), float(e[i0] + (e[1] - e[0]) * (i1 - i0))]


def _write_hyperspy(obj, path: Path, fmt: str, overwrite: bool) -> Path:
    s = to_hyperspy(obj)
    if fmt == "hspy":
        # chunk-wise for lazy signals (rosettasciio's HDF5 writer stores dask blocks one by one)
        atomic_file(path, overwrite=overwrite, write=lambda tmp: s.save(tmp, overwrite=True))
        return path
    # rpl: the header (.rpl) and the raw data (.raw) are written together into a staging folder
    raw = path.with_suffix(".raw")
    if raw.exists() and not overwrite:
        raise StoreExistsError(f"{raw} exists; pass overwrite=True (--overwrite) to replace it")
    stage = path.with_name(f".{path.name}.staging")
    with staged_output(stage, overwrite=True) as tmp:
        s.save(tmp / path.name, overwrite=True)
        for p in (tmp / path.name, tmp / raw.name):
            os.replace(p, path.parent / p.name)
    shutil.rmtree(stage, ignore_errors=True)
    return path


def export(obj, path: str | os.PathLike, *, format: str | None = None,  # noqa: A002
           overwrite: bool = False) -> Path:
    """Write a cube for another tool.

    Parameters
    ----------
    obj : xarray.Dataset or DataArray
        The cube.
    path : path-like
        Output file.
    format : {"ganx", "pymca", "hspy", "rpl"}, optional
        Default from the suffix: ``.hspy`` → HyperSpy HDF5, ``.rpl`` → Ripple (``.rpl`` header
        + ``.raw`` data, read by HyperSpy and Lispix), ``.h5``/``.hdf5`` → ``pymca``.
    overwrite : bool
        Replace existing output file(s).

    Raises
    ------
    GanxError
        Unknown format, or a suffix that does not say it.
    StoreExistsError
        The output exists and ``overwrite`` is false.
    """
    path = Path(path)
    if format is None:
        format = {".hspy": "hspy", ".rpl": "rpl", ".h5": "pymca", ".hdf5": "pymca"}.get(
            path.suffix.lower())
        if format is None:
            raise GanxError(f"{path}: cannot tell the export format from the suffix; give "
                            f"format= (--format) one of {', '.join(FORMATS)}")
    format = format.lower()
    if format not in FORMATS:
        raise GanxError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    if format in ("hspy", "rpl") and path.suffix.lower() != FORMATS[format]:
        raise GanxError(f"{path}: a {format} export must end with {FORMATS[format]}")
    _check_target(path, overwrite)
    if format == "ganx":
        return to_ganx_hdf5(obj, path, overwrite=overwrite)
    if format == "pymca":
        return to_pymca_hdf5(obj, path, overwrite=overwrite)
    return _write_hyperspy(obj, path, format, overwrite)


# --------------------------------------------------------------------------- accessor methods
def _add_accessor_methods() -> None:
    """``ds.xrf.to_ganx_hdf5/to_pymca_hdf5/to_hyperspy/export`` (and on counts DataArrays).

    The accessor classes live in :mod:`ganx_dask.analysis`, which this module builds on, so the
    methods are attached here (``import ganx_dask`` imports this module)."""
    from .analysis import _Base

    def method(fn):
        def call(self, *args, **kw):
            return fn(self._obj, *args, **kw)

        call.__name__ = fn.__name__
        call.__doc__ = f"See :func:`ganx_dask.export.{fn.__name__}`."
        return call

    for fn in (to_ganx_hdf5, to_pymca_hdf5, to_hyperspy, export):
        setattr(_Base, fn.__name__, method(fn))


_add_accessor_methods()
