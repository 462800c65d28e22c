"""Readers for real (measured) MA-XRF cubes, so synthetic cubes can be compared with scans.

Every reader returns an :class:`xarray.Dataset` with ``counts(y, x, energy)`` (dask-backed where
the format allows lazy reading) and an ``energy`` coordinate of channel centres in keV
(``units: "keV"``); ``attrs["source"]`` names the file and ``attrs["reader"]`` the reader.

Energy calibration (all readers that take it): either ``energy=`` (an
:class:`~ganx_dask.energy.EnergyAxis`, ``"START:STOP:N"`` or channel centres in keV) or
``gain=`` (keV per channel) and ``offset=`` (keV at the centre of channel 0): channel ``i`` is
centred at ``offset + gain·i`` keV.  Without them, calibration stored in the file is used
(HDF5/npz attributes ``calibration_gain_keV_per_channel``/``calibration_offset_keV``, an
``energy``/``energy_keV`` array, or an MCA ``<<CALIBRATION>>`` section); failing that, an
:class:`~ganx_dask.errors.EnergyAxisError` names the file.

Formats
-------
* HDF5 (``.h5``, ``.hdf5``, ``.nxs``): a 3-D dataset (default ``img``, the ganX/LABEC layout
  ``(H, W, E)``; other axis orders with ``axes="eyx"`` etc.).
* NumPy ``.npy`` (memory-mapped) and ``.npz`` (``key=``; default: the only 3-D array).
* Any xarray-readable store: Zarr (a ganx-dask store opens through
  :func:`ganx_dask.store.open_cube`, which warns when incomplete) and netCDF.  Zarr stores may
  also be object-store URLs (``s3://bucket/prefix/cube.zarr``, see :mod:`ganx_dask.storage`).
* A folder of per-pixel Amptek ``.mca`` files.  File names: with ``layout="yx"`` (default) each
  name ends with two integers ``<row><sep><col>.mca`` (e.g. ``scan_012_034.mca``,
  ``r12c34.mca``); with ``layout="raster"`` the name ends with one integer, the raster index
  (row-major), and ``shape=(rows, cols)`` is required.  Indices may start at 0 or 1 (the
  minimum is subtracted).  Every pixel must be present and all files must have the same number
  of channels.

:func:`open_any` dispatches on the path.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from .energy import EnergyAxis, as_energy_axis
from .errors import EnergyAxisError, GanxError
from .storage import location

__all__ = [
    "open_any",
    "open_hdf5",
    "open_numpy",
    "open_xarray",
    "open_mca_folder",
    "read_mca",
    "energy_coord",
]

_GAIN_KEYS = ("calibration_gain_keV_per_channel", "gain", "gain_keV", "energy_gain")
_OFFSET_KEYS = ("calibration_offset_keV", "offset", "offset_keV", "energy_offset")
_ENERGY_KEYS = ("energy", "energy_keV", "energies")


def energy_coord(n: int, *, energy=None, gain: float | None = None, offset: float | None = None,
                 where: str = "cube") -> xr.DataArray:
    """The ``energy`` coordinate (channel centres, keV) for ``n`` channels.

    Parameters
    ----------
    n : int
        Number of channels.
    energy : EnergyAxis, str or array-like, optional
        Explicit axis (takes precedence).
    gain, offset : float, optional
        keV per channel and keV at the centre of channel 0.
    where : str
        Name used in error messages (the file).

    Raises
    ------
    EnergyAxisError
        No calibration, wrong length, or non-positive gain.
    """
    if energy is not None:
        ax = as_energy_axis(energy)
        if isinstance(ax, EnergyAxis):
            if ax.n != n:
                raise EnergyAxisError(f"{where}: energy axis {ax} has {ax.n} channels, "
                                      f"the data have {n}")
            return ax.to_coord()
        centres = 0.5 * (ax[1:] + ax[:-1])
        if centres.size != n:
            raise EnergyAxisError(f"{where}: energy axis has {centres.size} channels, "
                                  f"the data have {n}")
        return xr.DataArray(centres, dims="energy", attrs={"units": "keV"})
    if gain is None or offset is None:
        raise EnergyAxisError(
            f"{where}: no energy calibration; give gain (keV/channel) and offset (keV at "
            "channel 0), or an energy axis (e.g. energy='0.5:38.5:1024')"
        )
    gain, offset = float(gain), float(offset)
    if not (np.isfinite(gain) and gain > 0 and np.isfinite(offset)):
        raise EnergyAxisError(f"{where}: energy gain must be > 0 keV/channel and offset finite, "
                              f"got gain={gain}, offset={offset}")
    start = offset - gain / 2
    if start >= 0:
        return EnergyAxis(start, start + gain * n, n).to_coord()
    centres = offset + gain * np.arange(n)
    return xr.DataArray(centres, dims="energy",
                        attrs={"units": "keV", "calibration_offset_keV": offset,
                               "calibration_gain_keV_per_channel": gain})


def _calibration_from_attrs(attrs) -> tuple[float | None, float | None]:
    gain = next((float(attrs[k]) for k in _GAIN_KEYS if k in attrs), None)
    offset = next((float(attrs[k]) for k in _OFFSET_KEYS if k in attrs), None)
    return gain, offset


def _reorder(arr, axes: str, where: str):
    axes = axes.lower()
    if sorted(axes) != ["e", "x", "y"]:
        raise GanxError(f"{where}: axes must be a permutation of 'yxe', got {axes!r}")
    if arr.ndim != 3:
        raise GanxError(f"{where}: expected a 3-D cube, got shape {tuple(arr.shape)}")
    return arr.transpose([axes.index(c) for c in "yxe"])


def _dataset(arr, coord: xr.DataArray, source: str, reader: str, **attrs) -> xr.Dataset:
    h, w, _ = arr.shape
    ds = xr.Dataset(
        {"counts": (("y", "x", "energy"), arr, {"units": "counts", "long_name": "photon counts"})},
        coords={
            "y": ("y", np.arange(h), {"units": "pixel"}),
            "x": ("x", np.arange(w), {"units": "pixel"}),
            "energy": coord,
        },
        attrs={"source": source, "reader": reader, **attrs},
    )
    if np.any(np.asarray(coord.values) <= 0):
        warnings.warn(f"{source}: energy axis has channels at or below 0 keV", stacklevel=3)
    return ds


def _resolve(f, name: str) -> str:
    """The real path of ``name`` in an open h5py file, following soft links."""
    import h5py

    parts, cur = [p for p in name.strip("/").split("/") if p], ""
    for p in parts:
        link = f[cur or "/"].get(p, getlink=True)
        cur = link.path if isinstance(link, h5py.SoftLink) else f"{cur}/{p}"
        cur = cur if cur.startswith("/") else "/" + cur
    return cur or "/"


def _nexus_cube(f) -> str | None:
    """The 3-D data set of a NeXus/PyMca file: the ``data`` of the first ``NXdetector`` holding a
    3-D one (PyMca's ``McaStackExport``), else the ``signal`` of the default ``NXdata``."""
    import h5py

    found: list[str] = []

    def visit(name, obj):
        if (isinstance(obj, h5py.Group) and _nx_class(obj) == "NXdetector" and "data" in obj
                and isinstance(obj["data"], h5py.Dataset) and obj["data"].ndim == 3):
            found.append(f"{name}/data")

    f.visititems(visit)
    if found:
        return sorted(found)[0]
    entry = f.attrs.get("default")
    entry = entry.decode() if isinstance(entry, bytes) else entry
    if entry and entry in f:
        nxdata = f[entry].attrs.get("default")
        nxdata = nxdata.decode() if isinstance(nxdata, bytes) else nxdata
        if nxdata and nxdata in f[entry]:
            sig = f[entry][nxdata].attrs.get("signal")
            sig = sig.decode() if isinstance(sig, bytes) else sig
            if sig and sig in f[entry][nxdata] and getattr(f[entry][nxdata][sig], "ndim", 0) == 3:
                return f"{entry}/{nxdata}/{sig}"
    return None


def _nx_class(obj) -> str:
    v = obj.attrs.get("NX_class", "")
    return v.decode() if isinstance(v, bytes) else str(v)


def _mca_siblings(f, name: str) -> dict:
    """PyMca's per-detector metadata beside a data set (``calibration`` [a, b, c],
    ``channels``, ``live_time``), found like PyMca's ``NexusTools.getMcaObjectPaths``: in the
    data set's group, else its ``info`` sub-group, else the enclosing ``NXdetector``."""
    import h5py

    real = _resolve(f, name)
    parent = real.rsplit("/", 1)[0] or "/"
    groups = [f[parent]]
    if "info" in f[parent] and isinstance(f[parent]["info"], h5py.Group):
        groups.append(f[parent]["info"])
    up = parent.rsplit("/", 1)[0] or "/"
    if up != parent and _nx_class(f[up]) == "NXdetector":
        groups.append(f[up])
    out: dict = {}
    for g in groups:
        for key in ("calibration", "channels", "live_time"):
            if key not in out and key in g and isinstance(g[key], h5py.Dataset) \
                    and g[key].name != real:
                out[key] = np.asarray(g[key][()], dtype=float)
    return out


def _calibrated_energy(sib: dict, n: int, where: str) -> np.ndarray | None:
    """Channel centres (keV) from PyMca's ``calibration`` ``E = a + b·ch + c·ch²`` over its
    ``channels`` (default ``0 … n−1``); ``None`` without a calibration."""
    if "calibration" not in sib:
        return None
    cal = np.ravel(sib["calibration"])
    if cal.size < 2:
        raise EnergyAxisError(f"{where}: calibration must be [a, b(, c)], got {cal.tolist()}")
    a, b, c = (float(v) for v in (*cal[:3], 0.0)[:3])
    ch = np.ravel(sib.get("channels", np.arange(n)))
    if ch.size != n:
        raise EnergyAxisError(f"{where}: 'channels' has {ch.size} entries, the data have {n}")
    energy = a + b * ch + c * ch**2
    if not np.all(np.diff(energy) > 0):
        raise EnergyAxisError(f"{where}: calibration {cal.tolist()} does not give increasing "
                              "energies (PyMca's default [0, 1, 0] means uncalibrated channels)")
    return energy


def open_hdf5(path, dataset: str | None = None, *, axes: str = "yxe", energy=None,
              gain: float | None = None, offset: float | None = None,
              chunks=(64, 64, -1)) -> xr.Dataset:
    """Open a cube stored in HDF5 lazily (h5py + dask; use a local scheduler).

    Reads the ganX/LABEC layout (``img`` with calibration attributes or an ``energy`` data set,
    :func:`ganx_dask.export.to_ganx_hdf5`) and PyMca/NeXus MCA stacks (``…/detector_00/data``
    with sibling ``calibration`` ``[a, b, c]`` keV, ``channels`` and ``live_time``,
    :func:`ganx_dask.export.to_pymca_hdf5` or PyMca's own export).  A ``live_time`` with one
    value per pixel becomes the ``live_time(y, x)`` variable (s).

    Parameters
    ----------
    path : path-like
        HDF5 file.
    dataset : str, optional
        Path of the 3-D dataset inside the file; default ``img`` if present, else the data of
        the first ``NXdetector`` (PyMca) or the default ``NXdata`` signal (NeXus).
    axes : str
        Axis order of the stored array (``"yxe"``: (H, W, E)).
    energy, gain, offset
        Energy calibration (see the module docstring); else read from the file: attributes of
        the dataset or the file, PyMca's sibling ``calibration``, or an ``energy``/``energy_keV``
        data set.
    chunks : tuple
        Dask chunks in the stored order's ``(y, x, energy)`` sense.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise GanxError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise GanxError(f"{path}: not a readable HDF5 file ({exc})") from None
    if dataset is None:
        dataset = "img" if "img" in f else (_nexus_cube(f) or "img")
    if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        f.close()
        raise GanxError(f"{path}: no dataset {dataset!r} (datasets: {', '.join(names) or 'none'})")
    dset = f[dataset]
    if dset.ndim != 3:
        f.close()
        raise GanxError(f"{path}:{dataset}: expected a 3-D cube, got shape {dset.shape}")
    where = f"{path}:{dataset}"
    try:
        sib = _mca_siblings(f, dataset)
        n_e = dset.shape[axes.lower().index("e")] if "e" in axes.lower() else dset.shape[-1]
        if energy is None and (gain is None or offset is None):
            g, o = _calibration_from_attrs(dset.attrs)
            if g is None or o is None:
                g, o = _calibration_from_attrs(f.attrs)
            gain = gain if gain is not None else g
            offset = offset if offset is not None else o
            if gain is None or offset is None:
                energy = _calibrated_energy(sib, n_e, where)
            if energy is None and (gain is None or offset is None):
                for k in _ENERGY_KEYS:
                    if k in dset.attrs:
                        energy = np.asarray(dset.attrs[k], dtype=float)
                        break
                    if k in f and isinstance(f[k], h5py.Dataset) and f[k].ndim == 1:
                        energy = f[k][()]
                        break
        stored_chunks = tuple(chunks["yxe".index(c)] for c in axes.lower()) \
            if sorted(axes.lower()) == ["e", "x", "y"] else chunks
        arr = da.from_array(dset, chunks=stored_chunks, lock=True)
        arr = _reorder(arr, axes, where)
        coord = energy_coord(arr.shape[2], energy=energy, gain=gain, offset=offset, where=where)
    except BaseException:  # bad axes or calibration: do not leave the file open
        f.close()
        raise
    ds = _dataset(arr, coord, str(path), "hdf5", dataset=dataset)
    lt = sib.get("live_time")
    if lt is not None and lt.size == arr.shape[0] * arr.shape[1]:
        ds["live_time"] = (("y", "x"), lt.reshape(arr.shape[:2]).astype(np.float32),
                           {"units": "s", "long_name": "live time"})
    return ds


def _npz_ndims(z) -> dict[str, int]:
    """Number of dimensions of every array in an open ``.npz`` archive, read from the ``.npy``
    headers only (loading ``z[k]`` would decompress the whole cube just to look at its shape)."""
    out = {}
    members = set(z.zip.namelist())
    for k in z.files:
        if f"{k}.npy" not in members:  # a non-array member: never a cube or a scalar
            out[k] = -1
            continue
        with z.zip.open(f"{k}.npy") as fp:
            version = np.lib.format.read_magic(fp)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            out[k] = len(read(fp)[0])
    return out


def open_numpy(path, *, key: str | None = None, axes: str = "yxe", energy=None,
               gain: float | None = None, offset: float | None = None,
               chunks=(64, 64, -1)) -> xr.Dataset:
    """Open a ``.npy`` (memory-mapped) or ``.npz`` cube.

    For ``.npz`` the cube is ``key`` (default: the only 3-D array); an ``energy``/``energy_keV``
    array or ``gain``/``offset`` scalars in the archive calibrate it.
    """
    path = Path(path)
    if not path.is_file():
        raise GanxError(f"{path}: no such file")
    where = str(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                ndim = _npz_ndims(z)  # from the headers: no array is read twice
                if key is None:
                    cubes = [k for k in z.files if ndim[k] == 3]
                    if len(cubes) != 1:
                        raise GanxError(f"{path}: give key= (3-D arrays: {cubes or 'none'})")
                    key = cubes[0]
                if key not in z.files:
                    raise GanxError(f"{path}: no array {key!r} (arrays: {', '.join(z.files)})")
                data = z[key]
                where = f"{path}:{key}"
                if energy is None and (gain is None or offset is None):
                    g, o = _calibration_from_attrs({k: z[k] for k in z.files if ndim[k] == 0})
                    gain = gain if gain is not None else g
                    offset = offset if offset is not None else o
                    if gain is None or offset is None:
                        energy = next((z[k] for k in _ENERGY_KEYS if k in z.files), None)
        else:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise GanxError(f"{path}: not a readable NumPy file ({exc})") from None
    arr = _reorder(da.from_array(data, chunks=chunks if axes == "yxe" else "auto"), axes, where)
    coord = energy_coord(arr.shape[2], energy=energy, gain=gain, offset=offset, where=where)
    return _dataset(arr, coord, str(path), "numpy")


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or (path.is_dir() and (
        (path / "zarr.json").exists() or (path / ".zgroup").exists()))


def open_xarray(path, *, variable: str = "counts", energy=None, gain: float | None = None,
                offset: float | None = None) -> xr.Dataset:
    """Open a Zarr or netCDF store lazily; ganx-dask stores go through
    :func:`ganx_dask.store.open_cube` (warns with ``IncompleteStoreWarning`` when incomplete).

    The counts variable (``variable``) must have dims ``y``, ``x`` and ``energy`` (in any order);
    a missing ``energy`` coordinate is built from ``energy``/``gain``/``offset``.  On object
    storage (``s3://...``) only Zarr stores are read.
    """
    loc = location(path)
    path = loc.url if loc.is_remote else loc.path
    if not loc.is_remote and not path.exists():  # a remote store is checked by open_cube
        raise GanxError(f"{path}: no such file or store")
    try:
        if loc.is_remote or _is_zarr(path):
            try:
                from .store import open_cube
            except ImportError:  # pragma: no cover - store module not built yet
                ds = xr.open_zarr(path)
            else:
                ds = open_cube(path)
        else:
            ds = xr.open_dataset(path, chunks={})
    except GanxError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise GanxError(f"{path}: cannot open with xarray ({exc})") from None
    if variable not in ds:
        raise GanxError(f"{path}: no variable {variable!r} (variables: {', '.join(map(str, ds.data_vars))})")
    if variable != "counts":
        ds = ds.rename({variable: "counts"})
    missing = {"y", "x", "energy"} - set(ds["counts"].dims)
    if missing:
        raise GanxError(f"{path}: variable {variable!r} needs dims y, x, energy; has {ds['counts'].dims}")
    if "energy" not in ds.coords:
        ds = ds.assign_coords(energy=energy_coord(ds.sizes["energy"], energy=energy, gain=gain,
                                                  offset=offset, where=str(path)))
    ds.attrs.setdefault("source", str(path))
    ds.attrs.setdefault("reader", "xarray")
    return ds


# --------------------------------------------------------------------------- Amptek MCA
def read_mca(path) -> tuple[np.ndarray, tuple[float, float] | None, dict]:
    """Read one Amptek ``.mca`` text spectrum of a scan pixel.

    Parsing is :func:`ganx_dask.pigments.formats.parse_mca` (shared with pigment spectra).

    Returns
    -------
    counts : numpy.ndarray
        Counts per channel (int64).
    calibration : (gain keV/channel, offset keV) or None
        Linear fit of the ``<<CALIBRATION>>`` points (channel, energy), keV; None when absent.
    meta : dict
        ``<<PMCA SPECTRUM>>`` header entries (``"LIVE_TIME"`` etc., strings).

    Raises
    ------
    GanxError
        Not an MCA file, no ``<<DATA>>`` section or a non-numeric data line (the message names
        file and line).
    """
    from .pigments.formats import parse_mca

    data, pts, meta = parse_mca(path)
    calibration = None
    if pts.shape[0] >= 2:
        gain, offset = np.polyfit(pts[:, 0], pts[:, 1], 1)
        calibration = (float(gain), float(offset))
    elif pts.shape[0] == 1:
        warnings.warn(f"{path}: a single calibration point cannot define gain and offset",
                      stacklevel=2)
    return data.astype(np.int64), calibration, meta


def _mca_index(files: list[Path], layout: str, shape, where: str) -> tuple[np.ndarray, tuple]:
    if layout == "yx":
        pat = re.compile(r"(\d+)\D+(\d+)\.mca$", re.IGNORECASE)
        idx = []
        for f in files:
            m = pat.search(f.name)
            if not m:
                raise GanxError(f"{where}: file {f.name!r} does not end with <row>_<col>.mca "
                                "(use layout='raster' with shape=(rows, cols) for numbered files)")
            idx.append((int(m.group(1)), int(m.group(2))))
        idx = np.array(idx)
        idx -= idx.min(axis=0)
        dims = tuple(int(v) for v in idx.max(axis=0) + 1)
        if shape is not None and tuple(shape) != dims:
            raise GanxError(f"{where}: file names give {dims[0]}×{dims[1]} pixels, shape={shape}")
        return idx, dims
    if layout == "raster":
        if shape is None:
            raise GanxError(f"{where}: layout='raster' needs shape=(rows, cols)")
        rows, cols = (int(v) for v in shape)
        pat = re.compile(r"(\d+)\.mca$", re.IGNORECASE)
        k = []
        for f in files:
            m = pat.search(f.name)
            if not m:
                raise GanxError(f"{where}: file {f.name!r} does not end with <index>.mca")
            k.append(int(m.group(1)))
        k = np.array(k) - min(k)
        if k.max() >= rows * cols:
            raise GanxError(f"{where}: index {k.max()} exceeds {rows}×{cols} pixels")
        return np.stack([k // cols, k % cols], axis=1), (rows, cols)
    raise GanxError(f"{where}: layout must be 'yx' or 'raster', got {layout!r}")


def open_mca_folder(path, *, layout: str = "yx", shape: tuple[int, int] | None = None,
                    energy=None, gain: float | None = None, offset: float | None = None
                    ) -> xr.Dataset:
    """Assemble a folder of per-pixel Amptek ``.mca`` files into a cube (read eagerly).

    See the module docstring for the file naming.  The energy calibration is taken from the
    first file's ``<<CALIBRATION>>`` section unless given.
    """
    path = Path(path)
    where = str(path)
    if not path.is_dir():
        raise GanxError(f"{path}: not a folder of .mca files")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".mca")
    if not files:
        raise GanxError(f"{path}: no .mca files")
    idx, (rows, cols) = _mca_index(files, layout, shape, where)
    first, cal, _ = read_mca(files[0])
    n = first.size
    cube = np.zeros((rows, cols, n), dtype=np.uint32)
    seen = np.zeros((rows, cols), dtype=bool)
    for f, (r, c) in zip(files, idx, strict=True):
        counts, _, _ = read_mca(f)
        if counts.size != n:
            raise GanxError(f"{f}: {counts.size} channels, {files[0].name} has {n}")
        if seen[r, c]:
            raise GanxError(f"{f}: pixel ({r}, {c}) appears twice")
        if np.any(counts < 0):
            raise GanxError(f"{f}: negative counts")
        cube[r, c] = counts
        seen[r, c] = True
    if not seen.all():
        miss = np.argwhere(~seen)
        raise GanxError(f"{path}: {len(miss)} of {rows * cols} pixels have no .mca file "
                        f"(first missing: row {miss[0][0]}, col {miss[0][1]})")
    if energy is None and (gain is None or offset is None) and cal is not None:
        gain = gain if gain is not None else cal[0]
        offset = offset if offset is not None else cal[1]
    coord = energy_coord(n, energy=energy, gain=gain, offset=offset, where=where)
    arr = da.from_array(cube, chunks=(64, 64, -1))
    return _dataset(arr, coord, where, "amptek-mca", layout=layout)


def open_any(path, **kw) -> xr.Dataset:
    """Open a synthetic or measured cube by its path.

    * a directory that is a Zarr store, or ``*.zarr``, or an object-store URL (``s3://...``)
      → :func:`open_xarray`
    * a directory of ``.mca`` files → :func:`open_mca_folder`
    * ``.h5``/``.hdf5``/``.hdf``/``.nxs`` → :func:`open_hdf5`
    * ``.npy``/``.npz`` → :func:`open_numpy`
    * ``.nc``/``.nc4``/``.cdf`` → :func:`open_xarray`

    Keyword arguments are passed to the reader (``energy``, ``gain``, ``offset``, ``dataset``,
    ``key``, ``axes``, ``layout``, ``shape``, ``variable``); ``None`` values are ignored.
    """
    kw = {k: v for k, v in kw.items() if v is not None}
    loc = location(path)
    path = loc.url if loc.is_remote else loc.path

    def pick(*names):
        extra = sorted(set(kw) - set(names))
        if extra:
            raise GanxError(f"{path}: option(s) {', '.join(extra)} do not apply to this format")
        return kw

    if loc.is_remote:  # object storage: Zarr stores
        return open_xarray(path, **pick("variable", "energy", "gain", "offset"))
    if not path.exists():
        raise GanxError(f"{path}: no such file or store")
    suffix = path.suffix.lower()

    if _is_zarr(path):
        return open_xarray(path, **pick("variable", "energy", "gain", "offset"))
    if path.is_dir():
        if any(p.suffix.lower() == ".mca" for p in path.iterdir()):
            return open_mca_folder(path, **pick("layout", "shape", "energy", "gain", "offset"))
        raise GanxError(f"{path}: folder is neither a Zarr store nor a folder of .mca files")
    if suffix in (".h5", ".hdf5", ".hdf", ".nxs"):
        return open_hdf5(path, **pick("dataset", "axes", "energy", "gain", "offset", "chunks"))
    if suffix in (".npy", ".npz"):
        return open_numpy(path, **pick("key", "axes", "energy", "gain", "offset", "chunks"))
    if suffix in (".nc", ".nc4", ".cdf", ".netcdf"):
        return open_xarray(path, **pick("variable", "energy", "gain", "offset"))
    raise GanxError(f"{path}: unknown cube format {suffix or '(no extension)'}; expected a Zarr "
                    "store, .h5/.hdf5, .npy/.npz, .nc or a folder of .mca files")
