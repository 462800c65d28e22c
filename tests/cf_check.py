"""A focused CF-conventions checker for ganx-dask datasets (used by the tests).

``cfchecker`` needs the UDUNITS-2 C library and netCDF4; this checks what our datasets must meet,
over **every** variable and coordinate:

* dataset: ``Conventions`` (``CF-…``), ``title``, ``history``, ``source``, ``references``;
* every attribute is netCDF-writable (str, number, flat list of str or of numbers);
* every variable and coordinate has a ``long_name`` (or ``standard_name``);
* ``units``, when present, is a unit UDUNITS-2 knows: parsed by cf-xarray's UDUNITS-flavoured
  pint registry, minus the pint-only names UDUNITS lacks (``pixel``…);
* every numeric data variable has ``units``, except flag variables;
* flag variables: as many ``flag_meanings`` as ``flag_values``, no ``units``; values (of small,
  in-memory variables) all among the flags.
"""

from __future__ import annotations

from numbers import Number

import numpy as np
import xarray as xr

#: Names pint (and so cf-xarray) accepts that are not UDUNITS-2 units.
NOT_UDUNITS = {"pixel", "pixels", "px", "dot", "dots", "8-bit sRGB"}
REQUIRED_GLOBAL = ("Conventions", "title", "history", "source", "references")


def _writable(v) -> bool:
    if isinstance(v, str) or (isinstance(v, Number) and not isinstance(v, bool)):
        return True
    if isinstance(v, np.ndarray):
        return v.dtype.kind in "iufU" or (v.dtype.kind == "O" and all(isinstance(x, str)
                                                                         for x in v.flat))
    if isinstance(v, list | tuple) and v:
        return all(isinstance(x, str) for x in v) or all(
            isinstance(x, Number) and not isinstance(x, bool) for x in v)
    return False


def _unit_problem(units: str) -> str | None:
    from cf_xarray.units import units as ureg

    if units in NOT_UDUNITS:
        return f"units {units!r} is not a UDUNITS unit"
    try:
        ureg.parse_units(units)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
        return f"units {units!r} not understood ({type(exc).__name__})"
    return None


def cf_problems(ds: xr.Dataset) -> list[str]:
    """Every CF problem found in ``ds`` as one line each (empty: none)."""
    out = []
    conv = ds.attrs.get("Conventions")
    if not (isinstance(conv, str) and conv.startswith("CF-")):
        out.append(f"dataset: Conventions is {conv!r}, expected 'CF-x.y'")
    out += [f"dataset: missing {k}" for k in REQUIRED_GLOBAL[1:] if not ds.attrs.get(k)]
    out += [f"dataset: attr {k!r} is not netCDF-writable ({type(v).__name__})"
            for k, v in ds.attrs.items() if not _writable(v)]
    for name, var in ds.variables.items():
        where = f"{'coordinate' if name in ds.coords else 'variable'} {name!r}"
        a = var.attrs
        out += [f"{where}: attr {k!r} is not netCDF-writable ({type(v).__name__})"
                for k, v in a.items() if not _writable(v)]
        if not (a.get("long_name") or a.get("standard_name")):
            out.append(f"{where}: no long_name")
        is_flag = "flag_values" in a
        if "units" in a:
            prob = _unit_problem(str(a["units"]))
            if prob:
                out.append(f"{where}: {prob}")
            if is_flag:
                out.append(f"{where}: a flag variable has units")
        elif (name not in ds.coords and var.dtype.kind in "iuf" and not is_flag):
            out.append(f"{where}: numeric variable without units")
        if is_flag:
            values = np.atleast_1d(a["flag_values"])
            meanings = str(a.get("flag_meanings", "")).split()
            if len(meanings) != values.size:
                out.append(f"{where}: {values.size} flag_values but {len(meanings)} flag_meanings")
            if not isinstance(var.data, np.ndarray):
                continue
            extra = np.setdiff1d(np.unique(var.values), values)
            if extra.size:
                out.append(f"{where}: values {extra[:5].tolist()} are not among flag_values")
    return out
