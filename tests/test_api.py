"""The top-level public API (``import ganx_dask as gx``)."""

import subprocess
import sys

import pytest

import ganx_dask as gx


def test_public_names_resolve():
    from ganx_dask.generator import generate
    from ganx_dask.pigments import Instrument, PigmentLibrary, default_library
    from ganx_dask.store import open_cube, to_zarr

    assert gx.generate is generate
    assert gx.to_zarr is to_zarr and gx.open_cube is open_cube
    assert gx.default_library is default_library
    assert gx.PigmentLibrary is PigmentLibrary and gx.Instrument is Instrument
    assert isinstance(gx.__version__, str) and gx.__version__.count(".") >= 2
    for name in gx.__all__:
        obj = getattr(gx, name)
        assert callable(obj) or isinstance(obj, str), name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        gx.nonexistent  # noqa: B018


def test_import_registers_the_xrf_accessor_in_a_fresh_interpreter():
    code = (
        "import numpy as np, xarray as xr, ganx_dask\n"
        "ds = xr.Dataset({'counts': (('y', 'x', 'energy'), np.ones((2, 2, 4), 'u2'))},\n"
        "                coords={'energy': ('energy', [1.0, 2.0, 3.0, 4.0], {'units': 'keV'})})\n"
        "print(int(ds.xrf.sum_spectrum().sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "16"
