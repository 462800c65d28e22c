"""Pigment-library and spectrum file formats.

Readers and writers for

* **our own library format** (JSON, documented below): :func:`read_library`, :func:`write_library`;
* the **ganX pigment database** of ganx 0.0.2 (JSON + one HDF5 file per pigment):
  :func:`read_ganx_database`, :func:`write_ganx_database`;
* **measured spectra**: two-column CSV, Amptek ``.mca`` text and ORTEC-style ASCII ``.spe``:
  :func:`read_spectrum`.

Every reader validates its input completely before returning and raises
:class:`~ganx_dask.errors.PigmentError` with a message naming the file and the offending field.
Writers serialise everything in memory first and then move finished files into place, so bad input
never leaves a partial file, and an existing output is never replaced unless ``overwrite=True``
(otherwise :class:`~ganx_dask.errors.StoreExistsError`, a ``FileExistsError``).

The ganx-dask pigment-library format (version 1)
------------------------------------------------
A UTF-8 JSON object::

    {
     "format": "ganx-dask-pigment-library",   # required, exactly this string
     "format_version": 1,                     # required; readers refuse unknown versions
     "name": "default",                       # library name (str)
     "version": "1.0",                        # library version (str)
     "description": "...",                    # free text
     "instrument": {...} | null,              # Instrument.to_dict(): reference instrument of the
                                              #   precomputed "components" (null = default)
     "pigments": [                            # ordered list; names unique (case-insensitive,
      {                                       #   aliases included)
       "name": "vermilion",                   # required, non-empty
       "aliases": ["cinnabar"],               # optional list of str
       "rgb": [227, 66, 52],                  # required, three integers 0-255 (8-bit sRGB)
       "rgb_source": "...",                   # citation of the colour
       "composition": {"HgS": 1.0} | null,    # mass fractions by chemical formula (normalised)
       "formula": "HgS" | null,               # the formula the pigment was defined with
       "density": 8.1 | null,                 # g/cm³ (required when composition is given)
       "thickness_um": 20.0 | null,           # paint-layer thickness, µm; null = infinite
       "ground": [                            # layers below the paint, top first
         {"name": "gypsum ground", "composition": {"CaSO4(H2O)2": 1.0},
          "density": 2.32, "thickness_um": null}
       ],
       "provenance": {...},                   # free JSON object: model and parameters, or author
       "measured": {"edges": [...],           # measured spectrum: n+1 channel edges (keV),
                    "counts": [...],          #   n counts (>= 0, finite, not all zero),
                    "source": "..."} | null,  #   and where it came from
       "components": {...} | null             # opaque precomputed physics
      }                                       #   (physics.SpectrumComponents.to_dict())
     ]
    }

A pigment needs a ``composition`` (rendered by the physics model) or a ``measured`` spectrum
(rebinned onto the requested axis, conserving counts); when both are given the measured spectrum
is used.  Unknown keys are rejected (they are usually typos).  Floats are written with Python's
shortest round-tripping representation, so a library read back is equal field by field.  The
writer puts one pigment per line.

The ganX database (ganx 0.0.2)
------------------------------
A JSON object ``{name: {"RGB": [r, g, b], "xrf": "spectrum.h5"}}``; each HDF5 file holds two 1-D
datasets of equal length, ``x`` (energy of each channel, keV) and ``y`` (counts).  We read ``x``
as the channel *centres* (the calibrated energy of each channel); relative ``xrf`` paths are
resolved against the JSON file's folder (ganx resolves them against the working directory).

ganx 0.0.2 cuts ``y`` to the channels with ``0.5 <= x < 38.5`` keV and rebins by channel *index*
(``np.histogram(np.arange(n), bins=size, weights=y)``, bin edges ``linspace(0, n - 1, size+1)``),
then normalises.  We keep the native channels and rebin by *energy overlap* onto whatever axis is
requested (:func:`ganx_dask.energy.rebin`, counts conserved, each native channel's counts spread
uniformly over its width).  The two agree exactly when the native channels are contiguous, tile
0.5-38.5 keV and their number is an integer multiple of the target channel count (e.g. the files
:func:`write_ganx_database` writes: 2048 channels over 0.5-38.5 keV, read by ganx at 1024).
Elsewhere ganx's result is not an energy histogram (its bins hold unequal numbers of channels when
``n`` is not a multiple of ``size``, and it fails when ``size > n``); ours is.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._staging import atomic_file
from ..energy import as_energy_axis, axis_edges, edges_from_centres, rebin
from ..errors import EnergyAxisError, GanxError, PigmentError, StoreExistsError
from .model import Layer, MeasuredSpectrum, Pigment, PigmentLibrary

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "library_to_dict",
    "library_from_dict",
    "read_library",
    "write_library",
    "load_library",
    "parse_mca",
    "read_ganx_database",
    "write_ganx_database",
    "read_spectrum",
]

#: Value of the ``"format"`` key of our library files.
FORMAT_NAME = "ganx-dask-pigment-library"
#: The library-format version this module writes (and the only one it reads).
FORMAT_VERSION = 1

_TOP_KEYS = {"format", "format_version", "name", "version", "description", "instrument", "pigments"}
_PIGMENT_KEYS = {
    "name", "aliases", "rgb", "rgb_source", "composition", "formula", "density", "thickness_um",
    "ground", "provenance", "measured", "components",
}
_LAYER_KEYS = {"name", "composition", "density", "thickness_um"}
_MEASURED_KEYS = {"edges", "counts", "source"}


# ---------------------------------------------------------------------------------------------
# small validation helpers
# ---------------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt_number(d: Mapping, key: str, where: str, *, positive: bool = True) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if not _is_number(v) or not math.isfinite(v) or (positive and v <= 0):
        raise PigmentError(f"{where}: field {key!r} must be a {'positive ' if positive else ''}"
                           f"finite number or null, got {v!r}")
    return float(v)


def _opt_str(d: Mapping, key: str, where: str, default: str | None = "") -> str | None:
    v = d.get(key, default)
    if v is None or isinstance(v, str):
        return v
    raise PigmentError(f"{where}: field {key!r} must be a string, got {v!r}")


def _check_keys(d: Any, allowed: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise PigmentError(f"{where}: expected a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise PigmentError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
                           f"(allowed: {', '.join(sorted(allowed))})")


def _composition(v: Any, where: str, key: str = "composition") -> dict[str, float] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or not v:
        raise PigmentError(f"{where}: field {key!r} must be a non-empty object "
                           f"{{formula: mass fraction}}, got {v!r}")
    out = {}
    for f, x in v.items():
        if not _is_number(x) or not math.isfinite(x) or x < 0:
            raise PigmentError(f"{where}: field {key!r}: mass fraction of {f!r} must be a "
                               f"finite number >= 0, got {x!r}")
        out[str(f)] = float(x)
    return out


def _validate_formulas(comp: Mapping[str, float] | None, where: str) -> None:
    """Check formulas with the physics module's parser when it is available."""
    if comp is None:
        return
    try:
        from .physics import validate_composition
    except ImportError:  # pragma: no cover - physics module not built yet
        return
    validate_composition(dict(comp), where=where)


def _validate_counts(counts: np.ndarray, where: str) -> np.ndarray:
    c = np.asarray(counts, dtype=float)
    if c.ndim != 1 or c.size < 2:
        raise PigmentError(f"{where}: expected a 1-D spectrum of at least 2 channels, "
                           f"got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise PigmentError(f"{where}: spectrum contains NaN or infinite counts "
                           f"(first at channel {int(np.flatnonzero(~np.isfinite(c))[0])})")
    if np.any(c < 0):
        raise PigmentError(f"{where}: spectrum contains negative counts "
                           f"(first at channel {int(np.flatnonzero(c < 0)[0])})")
    if not np.any(c > 0):
        raise PigmentError(f"{where}: spectrum is all zero")
    return c


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _dumps(obj: Any, where: str) -> str:
    try:
        return json.dumps(obj, allow_nan=False, ensure_ascii=False, default=_json_default,
                          separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise PigmentError(f"{where}: cannot be written as JSON: {exc}") from None


def _load_json(path: Path) -> Any:
    """Parse a JSON file; duplicate object keys are an error (they would silently shadow)."""

    def pairs(items):
        d = {}
        for k, v in items:
            if k in d:
                raise PigmentError(f"{path}: duplicate key {k!r} in a JSON object")
            d[k] = v
        return d

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PigmentError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PigmentError(f"{path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError:
        raise PigmentError(f"{path}: not a UTF-8 text (JSON) file") from None
    except OSError as exc:
        raise PigmentError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise PigmentError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def _atomic_write_text(path: Path, text: str, *, overwrite: bool) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`ganx_dask._staging.atomic_file`)."""
    atomic_file(Path(path), overwrite=overwrite,
                   write=lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# our JSON format
# ---------------------------------------------------------------------------------------------
def _pigment_to_dict(p: Pigment) -> dict:
    m = p.measured
    comps = getattr(p, "_components", None)
    return {
        "name": p.name,
        "aliases": list(p.aliases),
        "rgb": [int(v) for v in p.rgb],
        "rgb_source": p.rgb_source,
        "composition": None if p.composition is None else dict(p.composition),
        "formula": p.formula,
        "density": None if p.density is None else float(p.density),
        "thickness_um": None if p.thickness_um is None else float(p.thickness_um),
        "ground": [
            {
                "name": layer.name,
                "composition": dict(layer.composition),
                "density": float(layer.density),
                "thickness_um": None if layer.thickness_um is None else float(layer.thickness_um),
            }
            for layer in p.ground
        ],
        "provenance": dict(p.provenance),
        "measured": None if m is None else {
            "edges": m.edges.tolist(), "counts": m.counts.tolist(), "source": m.source,
        },
        "components": None if comps is None else comps.to_dict(),
    }


def library_to_dict(library: PigmentLibrary) -> dict:
    """The library as a JSON-ready dict in the ganx-dask library format (see module docstring).

    Parameters
    ----------
    library : PigmentLibrary

    Returns
    -------
    dict
    """
    inst = library.instrument
    if inst is not None and not hasattr(inst, "to_dict"):
        raise PigmentError(f"library {library.name!r}: instrument {inst!r} has no to_dict()")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": library.name,
        "version": library.version,
        "description": library.description,
        "instrument": None if inst is None else inst.to_dict(),
        "pigments": [_pigment_to_dict(p) for p in library],
    }


def _pigment_from_dict(d: Any, where: str) -> Pigment:
    _check_keys(d, _PIGMENT_KEYS, where)
    name = d.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PigmentError(f"{where}: field 'name' is missing or not a non-empty string")
    where = f"{where} ({name!r})"
    if "rgb" not in d or d["rgb"] is None:
        raise PigmentError(f"{where}: missing field 'rgb' (three integers 0-255)")
    rgb = d["rgb"]
    if not isinstance(rgb, list) or len(rgb) != 3 or not all(
        _is_number(v) and float(v) == int(v) and 0 <= v <= 255 for v in rgb
    ):
        raise PigmentError(f"{where}: field 'rgb' must be three integers 0-255, got {rgb!r}")
    aliases = d.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise PigmentError(f"{where}: field 'aliases' must be a list of strings")
    comp = _composition(d.get("composition"), where)
    _validate_formulas(comp, f"{where}, field 'composition'")
    density = _opt_number(d, "density", where)
    thickness = _opt_number(d, "thickness_um", where)
    ground_raw = d.get("ground") or []
    if not isinstance(ground_raw, list):
        raise PigmentError(f"{where}: field 'ground' must be a list of layers")
    ground = []
    for j, g in enumerate(ground_raw):
        gw = f"{where}, ground[{j}]"
        _check_keys(g, _LAYER_KEYS, gw)
        gcomp = _composition(g.get("composition"), gw)
        if gcomp is None:
            raise PigmentError(f"{gw}: missing field 'composition'")
        _validate_formulas(gcomp, f"{gw}, field 'composition'")
        gdens = _opt_number(g, "density", gw)
        if gdens is None:
            raise PigmentError(f"{gw}: missing field 'density' (g/cm³)")
        ground.append(Layer(composition=gcomp, density=gdens,
                            thickness_um=_opt_number(g, "thickness_um", gw),
                            name=_opt_str(g, "name", gw) or ""))
    provenance = d.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise PigmentError(f"{where}: field 'provenance' must be a JSON object")
    measured = None
    m = d.get("measured")
    if m is not None:
        mw = f"{where}, field 'measured'"
        _check_keys(m, _MEASURED_KEYS, mw)
        for k in ("edges", "counts"):
            if not isinstance(m.get(k), list) or not all(_is_number(v) for v in m[k]):
                raise PigmentError(f"{mw}: {k!r} must be a list of numbers")
        counts = _validate_counts(np.asarray(m["counts"], dtype=float), f"{mw}.counts")
        measured = MeasuredSpectrum(np.asarray(m["edges"], dtype=float), counts,
                                    source=_opt_str(m, "source", mw) or "")
    pigment = Pigment(
        name=name,
        rgb=tuple(int(v) for v in rgb),
        composition=comp,
        density=density,
        thickness_um=thickness,
        ground=tuple(ground),
        aliases=tuple(aliases),
        rgb_source=_opt_str(d, "rgb_source", where) or "",
        provenance=provenance,
        measured=measured,
        formula=_opt_str(d, "formula", where, default=None),
    )
    comps = d.get("components")
    if comps is not None:
        if not isinstance(comps, dict):
            raise PigmentError(f"{where}: field 'components' must be a JSON object or null")
        try:
            from .physics import SpectrumComponents
        except ImportError:  # pragma: no cover - physics module not built yet
            raise PigmentError(f"{where}: field 'components' needs ganx_dask.pigments.physics"
                               ) from None
        try:
            pigment._components = SpectrumComponents.from_dict(comps)
        except GanxError as exc:
            raise PigmentError(f"{where}, field 'components': {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise PigmentError(f"{where}, field 'components': invalid ({exc!r})") from None
    return pigment


def library_from_dict(d: Any, *, source: str = "<dict>") -> PigmentLibrary:
    """Build a library from a dict in the ganx-dask library format (see module docstring).

    Parameters
    ----------
    d : dict
        The parsed JSON document.
    source : str
        Name used in error messages (the file path).

    Raises
    ------
    PigmentError
        Wrong ``format``, unknown ``format_version``, missing/invalid field, duplicate name.
    """
    _check_keys(d, _TOP_KEYS, source)
    if d.get("format") != FORMAT_NAME:
        raise PigmentError(f"{source}: field 'format' must be {FORMAT_NAME!r}, got "
                           f"{d.get('format')!r} (is this a ganX database? use "
                           f"read_ganx_database / `ganx-dask pigments import`)")
    ver = d.get("format_version")
    if ver != FORMAT_VERSION or isinstance(ver, bool):
        raise PigmentError(f"{source}: unknown field 'format_version' {ver!r} "
                           f"(this ganx-dask reads version {FORMAT_VERSION})")
    pigments = d.get("pigments")
    if not isinstance(pigments, list):
        raise PigmentError(f"{source}: field 'pigments' must be a list")
    instrument = None
    if d.get("instrument") is not None:
        if not isinstance(d["instrument"], dict):
            raise PigmentError(f"{source}: field 'instrument' must be a JSON object or null")
        try:
            from .physics import Instrument
        except ImportError:  # pragma: no cover
            raise PigmentError(f"{source}: field 'instrument' needs ganx_dask.pigments.physics"
                               ) from None
        try:
            instrument = Instrument.from_dict(d["instrument"])
        except GanxError as exc:
            raise PigmentError(f"{source}, field 'instrument': {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise PigmentError(f"{source}, field 'instrument': invalid ({exc!r})") from None
    lib = PigmentLibrary(
        name=_opt_str(d, "name", source) or Path(str(source)).stem,
        version=str(d.get("version", "0")),
        instrument=instrument,
        description=_opt_str(d, "description", source) or "",
    )
    for i, pd in enumerate(pigments):
        try:
            p = _pigment_from_dict(pd, f"{source}: pigments[{i}]")
        except PigmentError as exc:
            msg = str(exc)
            raise PigmentError(msg if msg.startswith(str(source)) else f"{source}: pigments[{i}]: "
                               f"{msg}") from None
        try:
            lib.add(p)
        except PigmentError as exc:
            raise PigmentError(f"{source}: pigments[{i}]: {exc}") from None
    return lib


def read_library(path: str | os.PathLike) -> PigmentLibrary:
    """Read a pigment library written in the ganx-dask library format.

    Parameters
    ----------
    path : str or path-like
        A ``.json`` file (format described in :mod:`ganx_dask.pigments.formats`).

    Returns
    -------
    PigmentLibrary

    Raises
    ------
    PigmentError
        Missing/malformed file or invalid content; the message names the file and field.
    """
    path = Path(path)
    return library_from_dict(_load_json(path), source=str(path))


def write_library(library: PigmentLibrary, path: str | os.PathLike, *,
                  overwrite: bool = False) -> Path:
    """Write ``library`` in the ganx-dask library format (JSON, one pigment per line).

    Parameters
    ----------
    library : PigmentLibrary
    path : str or path-like
        Output file; its folder must exist.
    overwrite : bool
        Replace an existing file (atomically: readers never see a partial file).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is false.
    PigmentError
        The library cannot be serialised (e.g. NaN in provenance).
    """
    path = Path(path)
    d = library_to_dict(library)
    pigments = d.pop("pigments")
    head = [" " + json.dumps(k) + ": " + _dumps(v, f"{path}: field {k!r}") for k, v in d.items()]
    rows = ["  " + _dumps(p, f"{path}: pigment {p.get('name')!r}") for p in pigments]
    text = "{\n" + ",\n".join(head) + ',\n "pigments": [\n' + ",\n".join(rows) + "\n ]\n}\n"
    _atomic_write_text(path, text, overwrite=overwrite)
    return path


def load_library(path: str | os.PathLike, *, energy=None) -> PigmentLibrary:
    """Read a library file of either kind: our format or a ganX database (detected by content).

    Parameters
    ----------
    path : str or path-like
        JSON file.
    energy : optional
        Passed to :func:`read_ganx_database` for ganX databases.
    """
    path = Path(path)
    doc = _load_json(path)
    if isinstance(doc, dict) and "format" in doc:
        return library_from_dict(doc, source=str(path))
    return read_ganx_database(path, energy=energy)


# ---------------------------------------------------------------------------------------------
# ganX database (ganx 0.0.2)
# ---------------------------------------------------------------------------------------------
def _read_ganx_h5(h5: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    if not h5.is_file():
        raise PigmentError(f"{where}: field 'xrf': HDF5 file {h5} not found")
    try:
        f = h5py.File(h5, "r")
    except OSError as exc:
        raise PigmentError(f"{where}: field 'xrf': {h5} is not a readable HDF5 file ({exc})"
                           ) from None
    with f:
        arrays = {}
        for key in ("x", "y"):
            obj = f.get(key)
            if obj is None:
                raise PigmentError(f"{h5}: missing dataset {key!r} "
                                   f"({'energy, keV' if key == 'x' else 'counts'}) for {where}")
            if not isinstance(obj, h5py.Dataset):
                raise PigmentError(f"{h5}: {key!r} is not a dataset ({where})")
            try:
                arrays[key] = np.asarray(obj[()], dtype=float)
            except (TypeError, ValueError):
                raise PigmentError(f"{h5}: dataset {key!r} is not numeric ({where})") from None
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise PigmentError(f"{h5}: datasets 'x' and 'y' must be 1-D of equal length, "
                           f"got shapes {x.shape} and {y.shape} ({where})")
    return x, y


def read_ganx_database(path_or_dict: str | os.PathLike | Mapping, *, energy=None,
                       name: str | None = None) -> PigmentLibrary:
    """Import a ganX (ganx 0.0.2) pigment database as a library of measured pigments.

    Parameters
    ----------
    path_or_dict : str, path-like or Mapping
        The JSON file ``{name: {"RGB": [r, g, b], "xrf": "file.h5"}}`` or the same as a dict.
        Relative ``xrf`` paths are resolved against the JSON file's folder (the working directory
        for a dict).  Each HDF5 file holds 1-D datasets ``x`` (channel energies, keV, read as bin
        centres) and ``y`` (counts).
    energy : EnergyAxis, str, array-like or None
        ``None`` keeps each spectrum on its native channels (rebinned when rendered); otherwise
        each spectrum is rebinned (counts conserved) onto this axis at import.
    name : str, optional
        Library name (default: the JSON file's stem, or ``"ganx"``).

    Returns
    -------
    PigmentLibrary
        One measured :class:`Pigment` per entry, in file order.  ``library.spectra(axis)`` equals
        what ganx 0.0.2 computes when the native channels tile 0.5-38.5 keV in an integer multiple
        of the target channel count (see the module docstring for the differences elsewhere).

    Raises
    ------
    PigmentError
        Malformed JSON, missing ``RGB``/``xrf``, missing HDF5 file or dataset ``x``/``y``,
        negative/NaN/all-zero counts, duplicate names, axes that do not overlap ``energy``.
    """
    if isinstance(path_or_dict, Mapping):
        doc, base, source = dict(path_or_dict), Path.cwd(), "ganX database <dict>"
        default_name = "ganx"
    else:
        p = Path(path_or_dict)
        doc, base, source = _load_json(p), p.parent, str(p)
        default_name = p.stem
    if not isinstance(doc, dict) or not doc:
        raise PigmentError(f"{source}: a ganX database must be a non-empty JSON object "
                           f"{{name: {{'RGB': [r, g, b], 'xrf': 'file.h5'}}}}")
    if "format" in doc and "pigments" in doc:
        raise PigmentError(f"{source}: this is a ganx-dask library, not a ganX database "
                           f"(use read_library)")
    target = None if energy is None else axis_edges(energy)
    lib = PigmentLibrary(name=name or default_name, version="1",
                         description=f"imported from ganX database {source}")
    for pname, entry in doc.items():
        where = f"{source}: pigment {pname!r}"
        if not isinstance(entry, dict):
            raise PigmentError(f"{where}: expected an object with 'RGB' and 'xrf'")
        if "RGB" not in entry:
            raise PigmentError(f"{where}: missing field 'RGB'")
        if "xrf" not in entry:
            raise PigmentError(f"{where}: missing field 'xrf' (path to the HDF5 spectrum)")
        if not isinstance(entry["xrf"], str) or not entry["xrf"]:
            raise PigmentError(f"{where}: field 'xrf' must be a file path, got {entry['xrf']!r}")
        h5 = Path(entry["xrf"])
        h5 = h5 if h5.is_absolute() else base / h5
        x, y = _read_ganx_h5(h5, where)
        y = _validate_counts(y, f"{h5}: dataset 'y'")
        try:
            edges = edges_from_centres(x)
        except EnergyAxisError as exc:
            raise PigmentError(f"{h5}: dataset 'x': {exc}") from None
        if target is not None:
            try:
                y = rebin(y, edges, target)
            except EnergyAxisError as exc:
                raise PigmentError(f"{h5}: {exc} ({where})") from None
            if not np.any(y > 0):
                raise PigmentError(f"{h5}: no counts on the energy axis {energy} ({where})")
            edges = target
        try:
            pig = Pigment(
                name=str(pname),
                rgb=entry["RGB"],
                measured=MeasuredSpectrum(edges, y, source=str(h5)),
                rgb_source=f"ganX database {source}",
                provenance={"source": "ganX database", "database": source, "xrf": str(h5)},
            )
            lib.add(pig)
        except PigmentError as exc:
            raise PigmentError(f"{where}: {exc}") from None
    return lib


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return s or "pigment"


def write_ganx_database(
    library: PigmentLibrary | Iterable[Pigment],
    directory: str | os.PathLike,
    *,
    energy="0.5:38.5:2048",
    instrument=None,
    overwrite: bool = False,
    json_name: str = "pigments.json",
    absolute_paths: bool = True,
) -> Path:
    """Export a library as a ganX database that ganx 0.0.2 can read.

    Writes ``directory/json_name`` and ``directory/xrf/<name>.h5`` (datasets ``x``: channel
    centres, keV; ``y``: the spectrum, normalised to sum 1).

    Parameters
    ----------
    library : PigmentLibrary
    directory : str or path-like
        Output folder (created if missing).
    energy : EnergyAxis, str or array-like
        Axis of the exported spectra.  The default, 2048 channels over 0.5-38.5 keV, is what ganx
        reads without loss at ``rebin_size`` 1024 or 2048 (see the module docstring).
    instrument : Instrument, str or None
        Instrument for computed pigments (``None``: the library's reference instrument).
    overwrite : bool
        Replace existing output files.
    json_name : str
        Name of the JSON file (ganx requires the ``.json`` suffix).
    absolute_paths : bool
        Write absolute ``xrf`` paths (ganx opens them relative to its working directory);
        ``False`` writes paths relative to ``directory`` (portable; read by :func:`read_ganx_database`).

    Returns
    -------
    pathlib.Path
        The JSON file.

    Raises
    ------
    StoreExistsError
        An output file exists and ``overwrite`` is false (nothing is written).
    PigmentError, EnergyAxisError
        A spectrum cannot be rendered on ``energy``.
    """
    import h5py

    if not isinstance(library, PigmentLibrary):
        library = PigmentLibrary(library, name="export")
    if not json_name.endswith(".json"):
        raise PigmentError(f"json_name {json_name!r}: ganx 0.0.2 needs a '.json' file name")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise StoreExistsError(f"{directory}: exists and is not a directory")
    ax = as_energy_axis(energy)
    spectra = library.spectra(ax, instrument)  # all rendering (and its errors) before any I/O
    x = np.asarray(spectra["energy"].values, dtype=float)
    files, used = [], set()
    for p in library:
        stem = _slug(p.name)
        while stem.lower() in used:
            stem += "_"
        used.add(stem.lower())
        files.append((p, Path("xrf") / f"{stem}.h5"))
    json_path = directory / json_name
    targets = [json_path] + [directory / rel for _, rel in files]
    if not overwrite:
        existing = [t for t in targets if t.exists()]
        if existing:
            raise StoreExistsError(f"{existing[0]}: exists (pass overwrite=True / --overwrite)")
    doc = {}
    for p, rel in files:
        h5 = (directory / rel).resolve() if absolute_paths else rel
        doc[p.name] = {"RGB": [int(v) for v in p.rgb], "xrf": h5.as_posix()}
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"

    created_dirs = [d for d in (directory, directory / "xrf") if not d.exists()]
    tmp_files: list[tuple[Path, Path]] = []
    try:
        (directory / "xrf").mkdir(parents=True, exist_ok=True)
        for (p, rel), y in zip(files, spectra.values, strict=True):
            final = directory / rel
            tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
            tmp_files.append((tmp, final))
            with h5py.File(tmp, "w") as f:
                f.create_dataset("x", data=x)
                f.create_dataset("y", data=np.asarray(y, dtype=float))
                f["x"].attrs["units"] = "keV"
                f["x"].attrs["long_name"] = "channel centre energy"
                f["y"].attrs["units"] = "1"
                f["y"].attrs["long_name"] = "spectrum (probability per channel)"
                f.attrs["pigment"] = p.name
                f.attrs["library"] = library.name
                f.attrs["library_version"] = library.version
                f.attrs["energy_axis"] = str(ax) if not isinstance(ax, np.ndarray) else "custom"
        jtmp = json_path.with_name(f".{json_path.name}.{os.getpid()}.tmp")
        tmp_files.append((jtmp, json_path))
        jtmp.write_text(text, encoding="utf-8")
        for tmp, final in tmp_files:
            os.replace(tmp, final)
    except OSError as exc:  # read-only folder, a file in the way, disk full...
        _cleanup_export(tmp_files, created_dirs)
        raise GanxError(f"{directory}: cannot write the ganX database "
                        f"({exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''})"
                        ) from exc
    except BaseException:
        _cleanup_export(tmp_files, created_dirs)
        raise
    return json_path


def _cleanup_export(tmp_files: list[tuple[Path, Path]], created_dirs: list[Path]) -> None:
    """Remove the temporary files and the folders a failed :func:`write_ganx_database` made."""
    for tmp, _ in tmp_files:
        tmp.unlink(missing_ok=True)
    for d in reversed(created_dirs):
        try:
            d.rmdir()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# measured spectra: CSV, Amptek MCA, ORTEC-style SPE
# ---------------------------------------------------------------------------------------------
_SPLIT = re.compile(r"[,;\s]+")


def _check_calibration(calibration, path: Path) -> tuple[float, float] | None:
    if calibration is None:
        return None
    try:
        off, gain = (float(v) for v in calibration)
    except (TypeError, ValueError):
        raise PigmentError(f"{path}: calibration must be (offset_keV, gain_keV_per_channel), "
                           f"got {calibration!r}") from None
    if not (math.isfinite(off) and math.isfinite(gain) and gain > 0):
        raise PigmentError(f"{path}: calibration gain must be > 0 keV/channel and both values "
                           f"finite, got offset={off}, gain={gain}")
    return off, gain


def _linear_edges(n: int, offset: float, gain: float, first: int = 0) -> np.ndarray:
    """Edges of channels ``first .. first+n-1`` whose centres are ``offset + gain * channel``."""
    ch = np.arange(first, first + n + 1, dtype=float) - 0.5
    return offset + gain * ch


def _read_text(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="strict").splitlines()
    except FileNotFoundError:
        raise PigmentError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        try:
            text = path.read_bytes().decode("latin-1")
        except OSError as exc:  # pragma: no cover
            raise PigmentError(f"{path}: cannot be read ({exc.strerror})") from None
        if "\x00" in text:
            raise PigmentError(f"{path}: not a text file") from None
        return text.splitlines()
    except OSError as exc:
        raise PigmentError(f"{path}: cannot be read ({exc.strerror})") from None


def _read_csv(path: Path, cal) -> tuple[np.ndarray, np.ndarray, str]:
    rows: list[list[float]] = []
    ncol = None
    for lineno, raw in enumerate(_read_text(path), start=1):
        line = raw.strip().lstrip("\ufeff")
        if not line or line.startswith("#"):
            continue
        fields = [f for f in _SPLIT.split(line) if f]
        try:
            vals = [float(f) for f in fields]
        except ValueError:
            if not rows:  # a header line
                continue
            raise PigmentError(f"{path}, line {lineno}: expected numbers (energy keV, counts), "
                               f"got {raw.strip()!r}") from None
        if ncol is None:
            ncol = len(vals)
            if ncol not in (1, 2):
                raise PigmentError(f"{path}, line {lineno}: expected 2 columns (energy keV, "
                                   f"counts) or 1 (counts, with a calibration), got {ncol}")
        if len(vals) != ncol:
            raise PigmentError(f"{path}, line {lineno}: expected {ncol} column(s), "
                               f"got {len(vals)}")
        rows.append(vals)
    if len(rows) < 2:
        raise PigmentError(f"{path}: no data rows (need at least 2 channels)")
    arr = np.asarray(rows, dtype=float)
    counts = _validate_counts(arr[:, -1], f"{path}: counts column")
    if cal is not None:
        return _linear_edges(counts.size, *cal), counts, "CSV (calibration given)"
    if ncol == 1:
        raise PigmentError(f"{path}: one column (counts) and no energy calibration: pass "
                           f"calibration=(offset_keV, gain_keV_per_channel)")
    try:
        edges = edges_from_centres(arr[:, 0])
    except EnergyAxisError as exc:
        raise PigmentError(f"{path}: energy column: {exc}") from None
    return edges, counts, "CSV"


def parse_mca(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Parse an Amptek ``.mca`` text spectrum (``<<PMCA SPECTRUM>>`` ... ``<<END>>``).

    Used for pigment spectra (:func:`read_spectrum`) and per-pixel scans
    (:func:`ganx_dask.readers.open_mca_folder`); the counts are not validated here (a pixel of a
    scan may well be all zero).

    Returns
    -------
    counts : numpy.ndarray
        Counts per channel (float64).
    calibration_points : numpy.ndarray
        ``(n, 2)`` array of ``(channel, energy keV)`` from ``<<CALIBRATION>>`` (eV converted).
    header : dict
        ``<<PMCA SPECTRUM>>`` entries, upper-case keys (``"LIVE_TIME"``...), string values.

    Raises
    ------
    PigmentError
        Not an MCA file, bad calibration or data line, missing/unterminated ``<<DATA>>``; the
        message names the file and line.
    """
    path = Path(path)
    lines = [ln.strip() for ln in _read_text(path)]
    nonblank = [ln for ln in lines if ln]
    if not nonblank or nonblank[0].upper() != "<<PMCA SPECTRUM>>":
        raise PigmentError(f"{path}: not an Amptek MCA file (first line must be "
                           f"'<<PMCA SPECTRUM>>')")
    section, cal_pts, data, ended, header, cal_unit = None, [], [], False, {}, 1.0
    for lineno, ln in enumerate(lines, start=1):
        if not ln:
            continue
        if ln.startswith("<<") and ln.endswith(">>"):
            tag = ln[2:-2].strip().upper()
            if section == "DATA" and tag == "END":
                ended = True
            section = tag
            continue
        if section == "PMCA SPECTRUM" and " - " in ln:
            k, _, v = ln.partition(" - ")
            header[k.strip().upper()] = v.strip()
        elif section == "CALIBRATION":
            if ln.upper().startswith("LABEL"):
                unit = ln.partition("-")[2].strip().lower()
                cal_unit = _SPE_UNITS.get(unit, 1.0)
                continue
            parts = [f for f in _SPLIT.split(ln) if f]
            try:
                ch, e = float(parts[0]), float(parts[1])
            except (ValueError, IndexError):
                raise PigmentError(f"{path}, line {lineno}: <<CALIBRATION>> point must be "
                                   f"'channel energy_keV', got {ln!r}") from None
            cal_pts.append((ch, e * cal_unit))
        elif section == "DATA":
            try:
                data.append(float(ln))
            except ValueError:
                raise PigmentError(f"{path}, line {lineno}: <<DATA>> expects one count per line, "
                                   f"got {ln!r}") from None
    if section is None or not data:
        raise PigmentError(f"{path}: missing or empty <<DATA>> section")
    if not ended:
        raise PigmentError(f"{path}: <<DATA>> section not terminated by <<END>> "
                           f"(truncated file?)")
    return np.asarray(data, dtype=float), np.asarray(cal_pts, dtype=float).reshape(-1, 2), header


def _read_mca(path: Path, cal) -> tuple[np.ndarray, np.ndarray, str]:
    data, pts, header = parse_mca(path)
    counts = _validate_counts(data, f"{path}: <<DATA>>")
    if cal is None:
        if pts.shape[0] < 2 or np.ptp(pts[:, 0]) == 0:
            raise PigmentError(f"{path}: <<CALIBRATION>> needs at least 2 points (channel, keV) "
                               f"with different channels, found {pts.shape[0]}; or pass "
                               f"calibration=(offset_keV, gain_keV_per_channel)")
        gain, offset = np.polyfit(pts[:, 0], pts[:, 1], 1)
        if not gain > 0:
            raise PigmentError(f"{path}: <<CALIBRATION>> gives a non-positive gain {gain} keV/ch")
        cal = (float(offset), float(gain))
        how = f"Amptek MCA, calibration fitted to {pts.shape[0]} points"
    else:
        how = "Amptek MCA, calibration given"
    if "LIVE_TIME" in header:
        how += f", live time {header['LIVE_TIME']} s"
    return _linear_edges(counts.size, *cal), counts, how


_SPE_UNITS = {"kev": 1.0, "ev": 1e-3, "mev": 1e3}


def _read_spe(path: Path, cal) -> tuple[np.ndarray, np.ndarray, str]:
    lines = _read_text(path)
    blocks: dict[str, list[tuple[int, str]]] = {}
    current = None
    for lineno, raw in enumerate(lines, start=1):
        ln = raw.strip()
        if ln.startswith("$"):
            current = ln[1:].split(":", 1)[0].strip().upper()
            blocks.setdefault(current, [])
            continue
        if current is not None and ln:
            blocks[current].append((lineno, ln))
    if "SPEC_ID" not in blocks and "DATA" not in blocks:
        raise PigmentError(f"{path}: not an ASCII SPE file (no '$SPEC_ID:' / '$DATA:' blocks)")
    data = blocks.get("DATA")
    if not data:
        raise PigmentError(f"{path}: missing or empty '$DATA:' block")
    lineno, first_line = data[0]
    try:
        first, last = (int(v) for v in first_line.split()[:2])
    except ValueError:
        raise PigmentError(f"{path}, line {lineno}: '$DATA:' must start with 'first last' "
                           f"channel numbers, got {first_line!r}") from None
    vals: list[float] = []
    for lineno, ln in data[1:]:
        try:
            vals.extend(float(v) for v in ln.split())
        except ValueError:
            raise PigmentError(f"{path}, line {lineno}: '$DATA:' counts must be numbers, "
                               f"got {ln!r}") from None
    if len(vals) != last - first + 1:
        raise PigmentError(f"{path}: '$DATA:' declares channels {first}..{last} "
                           f"({last - first + 1}) but holds {len(vals)} counts")
    counts = _validate_counts(np.asarray(vals), f"{path}: '$DATA:'")
    if cal is not None:
        return _linear_edges(counts.size, *cal, first=first), counts, "SPE, calibration given"
    coeffs = None
    if blocks.get("MCA_CAL"):
        entries = blocks["MCA_CAL"]
        lineno, ln = entries[-1]
        parts = ln.split()
        unit = 1.0
        if parts and parts[-1].lower() in _SPE_UNITS:
            unit = _SPE_UNITS[parts.pop().lower()]
        try:
            coeffs = [float(v) * unit for v in parts]
        except ValueError:
            raise PigmentError(f"{path}, line {lineno}: '$MCA_CAL:' coefficients must be "
                               f"numbers, got {ln!r}") from None
        how = "SPE, $MCA_CAL"
    elif blocks.get("ENER_FIT"):
        lineno, ln = blocks["ENER_FIT"][0]
        try:
            coeffs = [float(v) for v in ln.split()[:2]]
        except ValueError:
            raise PigmentError(f"{path}, line {lineno}: '$ENER_FIT:' must be 'offset gain' "
                               f"(keV, keV/channel), got {ln!r}") from None
        how = "SPE, $ENER_FIT"
    if not coeffs or len(coeffs) < 2 or not any(c != 0 for c in coeffs[1:]):
        raise PigmentError(f"{path}: no energy calibration ('$ENER_FIT:' or '$MCA_CAL:' missing "
                           f"or zero); pass calibration=(offset_keV, gain_keV_per_channel)")
    ch = np.arange(first, last + 1, dtype=float)
    centres = np.polynomial.polynomial.polyval(ch, coeffs)
    try:
        edges = edges_from_centres(centres)
    except EnergyAxisError as exc:
        raise PigmentError(f"{path}: energy calibration {coeffs} is not increasing over "
                           f"channels {first}..{last} ({exc})") from None
    return edges, counts, how


_READERS = {
    ".csv": _read_csv, ".txt": _read_csv, ".dat": _read_csv, ".tsv": _read_csv,
    ".mca": _read_mca, ".spe": _read_spe,
}


def read_spectrum(path: str | os.PathLike, *,
                  calibration: tuple[float, float] | None = None) -> MeasuredSpectrum:
    """Read a measured spectrum with its energy calibration.

    The format follows the extension:

    * ``.csv``, ``.txt``, ``.dat``, ``.tsv`` - two columns, energy of the channel centre (keV)
      and counts; separated by commas, semicolons, tabs or spaces; an optional header line and
      ``#`` comments.  A single column of counts is accepted with ``calibration``.
    * ``.mca`` - Amptek text (``<<PMCA SPECTRUM>>`` ... ``<<CALIBRATION>>`` points
      ``channel energy`` (keV, or eV if ``LABEL - eV``; least-squares line through them) ... ``<<DATA>>`` one count per line
      ... ``<<END>>``).
    * ``.spe`` - ORTEC Maestro-style ASCII SPE (also written by other MCA software):
      ``$SPEC_ID:``, ``$DATA:`` followed by ``first last`` channel numbers and the counts
      (any number per line), energy calibration from ``$MCA_CAL:`` (a line with the number of
      coefficients, then ``a b [c] [unit]``, E = a + b·ch + c·ch², unit keV unless ``eV``/``MeV``)
      or else ``$ENER_FIT:`` ``offset gain`` (keV, keV/channel).  A zero gain counts as missing.

    Channel ``i``'s calibrated energy is its centre: ``E_i = offset + gain * i``.

    Parameters
    ----------
    path : str or path-like
    calibration : (float, float), optional
        ``(offset_keV, gain_keV_per_channel)``; overrides the file's calibration, and is required
        when the file has none.

    Returns
    -------
    MeasuredSpectrum
        Channel edges (keV) and counts; ``.on(axis)`` rebins conserving counts.

    Raises
    ------
    PigmentError
        Unknown extension, malformed file, no calibration, negative/NaN/all-zero counts; the
        message names the file and the field (line number, section or column).
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise PigmentError(f"{path}: unknown spectrum format {path.suffix!r} "
                           f"(supported: {', '.join(sorted(_READERS))})")
    cal = _check_calibration(calibration, path)
    edges, counts, how = reader(path, cal)
    return MeasuredSpectrum(edges, counts, source=f"{path} ({how})")
