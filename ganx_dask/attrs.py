"""Attribute encoding: the one place that turns provenance attrs into netCDF/Zarr/CF-safe values.

Rule (docs/architecture.md, "Attributes"): every dataset ganx-dask hands out — :func:`generate`,
:func:`~ganx_dask.store.open_cube`, a plain ``xr.open_zarr`` of a store — carries **encoded**
attributes, the form every xarray backend can write (``ds.to_netcdf()`` works as is):

* strings, ints, floats and flat lists of strings or of numbers are kept;
* booleans become the integers 0/1 (netCDF has no boolean attribute type);
* anything else — dicts, ``None``, empty lists, lists of dicts — becomes JSON text, and its key
  is listed in the space-separated attribute ``json_attrs`` (so a string that merely looks like
  JSON is never parsed).

:func:`decode` gives the Python view back (dicts, lists, ``None``); ``ds.xrf.meta`` and
``open_cube(..., decode_attrs=True)`` use it.  Both functions are idempotent and accept the
nested dicts of stores written by ganx-dask 0.1.0 (they pass through :func:`decode` unchanged).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from numbers import Number
from typing import Any

import numpy as np

__all__ = ["JSON_ATTRS", "CONVENTIONS", "RGB8", "encode", "decode", "encode_dataset", "plain",
           "pixel_coord_attrs"]

#: Attribute listing (space-separated) the keys whose values are JSON text.
JSON_ATTRS = "json_attrs"
#: The ``Conventions`` attribute of every dataset.
CONVENTIONS = "CF-1.10"
#: CF attributes of an 8-bit sRGB value (``units`` must be a UDUNITS unit: "1").
RGB8 = {"units": "1", "valid_range": [0, 255], "color_space": "sRGB, 8 bits per channel"}


def pixel_coord_attrs(dim: str, pixel_size: float | None = None) -> dict:
    """CF attributes of the ``y``/``x`` pixel-index coordinate.

    Index coordinates carry no ``units`` (UDUNITS has no "pixel"); when the physical pixel size
    is known it is given as ``pixel_size`` (with ``pixel_size_units: "mm"``), so the position of
    index ``i`` is ``i · pixel_size`` mm from the image's top-left corner.
    """
    what = {"y": "pixel row index (top to bottom)", "x": "pixel column index (left to right)"}
    out = {"long_name": what[dim], "axis": dim.upper()}
    if pixel_size is not None:
        out.update(pixel_size=float(pixel_size), pixel_size_units="mm")
    return out


def plain(obj: Any, *, finite: bool = False) -> Any:
    """``obj`` with numpy scalars/arrays and tuples turned into plain Python (JSON-ready).

    ``finite=True`` also turns NaN and ±inf into ``None`` (strict JSON has no such numbers).
    """
    if isinstance(obj, Mapping):
        return {str(k): plain(v, finite=finite) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v, finite=finite) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist(), finite=finite)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if finite and isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _scalar(v) -> bool:
    return isinstance(v, str) or (isinstance(v, Number) and not isinstance(v, bool))


def _flat(v) -> bool:
    """A value every netCDF backend writes as an attribute (no bools, no empty lists)."""
    if _scalar(v):
        return True
    if isinstance(v, list) and v:
        return all(isinstance(x, str) for x in v) or all(_scalar(x) and not isinstance(x, str)
                                                          for x in v)
    return False


def _listed(attrs: Mapping) -> set[str]:
    names = attrs.get(JSON_ATTRS, "")
    return set(names.split()) if isinstance(names, str) else set()


def encode(attrs: Mapping) -> dict:
    """Encoded (netCDF/Zarr/CF-safe) copy of ``attrs``; see the module docstring.

    Values already encoded (keys listed in ``json_attrs`` holding text) are kept, so
    ``encode(encode(a)) == encode(a)``.
    """
    listed = _listed(attrs)
    out: dict[str, Any] = {}
    json_keys = set()
    for k, v in attrs.items():
        k = str(k)
        if k == JSON_ATTRS:
            continue
        if k in listed and isinstance(v, str):
            out[k] = v
            json_keys.add(k)
            continue
        v = plain(v)
        if isinstance(v, bool):
            out[k] = int(v)
        elif _flat(v):
            out[k] = v
        else:
            out[k] = json.dumps(v, sort_keys=True, default=str)
            json_keys.add(k)
    if json_keys:
        out[JSON_ATTRS] = " ".join(sorted(json_keys))
    return out


def decode(attrs: Mapping) -> dict:
    """Python view of (encoded or 0.1.0-style nested) attrs: JSON values parsed, no ``json_attrs``."""
    listed = _listed(attrs)
    out = {}
    for k, v in attrs.items():
        if k == JSON_ATTRS:
            continue
        if k in listed and isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out


def encode_dataset(ds):
    """Shallow copy of a Dataset/DataArray with the attrs of it and of every variable encoded."""
    out = ds.copy(deep=False)
    out.attrs = encode(out.attrs)
    variables = out.variables.values() if hasattr(out, "data_vars") else [out.variable, *(
        c.variable for c in out.coords.values())]
    for var in variables:
        var.attrs = encode(var.attrs)
    return out

