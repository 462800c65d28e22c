"""CF/xarray conventions: encoded attrs, CF variable attributes, netCDF round trip, old stores."""

from __future__ import annotations

import json
import warnings

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

from ganx_dask import generate, open_cube, store, to_zarr
from ganx_dask.attrs import JSON_ATTRS, decode, encode
from ganx_dask.energy import EnergyAxis
from ganx_dask.pigments import MeasuredSpectrum, Pigment, PigmentLibrary

from .cf_check import cf_problems

AX = "0.5:38.5:64"
KW = dict(energy=AX, counts=20, n_start=2, delta=0, fit_samples=2000, chunks=32, tile=32,
          engine="numpy")


@pytest.fixture(scope="module")
def lib_img():
    ax = EnergyAxis.parse(AX)
    e = ax.centres
    lib = PigmentLibrary([
        Pigment("red one", (200, 30, 30),
                measured=MeasuredSpectrum(ax.edges, np.exp(-(e - 10) ** 2) + 0.01)),
        Pigment("blue one", (30, 30, 200),
                measured=MeasuredSpectrum(ax.edges, np.exp(-(e - 20) ** 2) + 0.01)),
    ], name="cf-test")
    img = np.zeros((40, 64, 4), np.uint8)
    img[..., :3] = (200, 30, 30)
    img[:, 32:, :3] = (30, 30, 200)
    img[..., 3] = 255
    img[:5, :5, 3] = 0  # transparent corner: label -1
    return lib, img


@pytest.fixture(scope="module")
def ds(lib_img):
    lib, img = lib_img
    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*alpha channel")
        return generate(img, lib, seed=3, pixel_size=0.25, **KW).load()


def test_encode_decode_round_trip_and_idempotent():
    a = {"p": {"x": [1, 2], "y": None}, "flag": True, "none": None, "empty": [],
         "names": ["a", "b"], "n": np.int64(3), "f": np.float32(0.5), "s": "{not json}"}
    e = encode(a)
    assert encode(e) == e
    assert e["flag"] == 1 and e["names"] == ["a", "b"] and e["s"] == "{not json}"
    assert set(e[JSON_ATTRS].split()) == {"p", "none", "empty"}
    back = decode(e)
    assert back == {**a, "flag": 1, "n": 3, "f": 0.5}
    assert decode({"p": {"x": 1}}) == {"p": {"x": 1}}  # 0.1.0 attrs pass through


def test_generated_dataset_meets_cf_checks(ds):
    assert cf_problems(ds) == []
    assert ds.attrs["Conventions"].startswith("CF-") and "generate(seed=3)" in ds.attrs["history"]
    assert "units" not in ds.x.attrs and ds.x.attrs["pixel_size"] == 0.25
    assert ds.x.attrs["pixel_size_units"] == "mm" and ds.xrf.meta["parameters"]["pixel_size_mm"]
    lab = ds["labels"]
    assert lab.attrs["flag_values"][0] == -1 and "units" not in lab.attrs
    assert lab.attrs["flag_meanings"].split()[0] == "transparent_no_counts"
    assert int(lab[0, 0]) == -1 and ds["rgb"].attrs["units"] == "1"
    assert isinstance(ds.attrs["parameters"], str)  # JSON text, listed in json_attrs
    assert ds.xrf.meta["parameters"]["seed"] == 3 and ds.xrf.meta["detector"] is None


def test_checker_catches_what_the_issue_listed(ds):
    bad = ds.copy()
    bad.attrs = {**decode(ds.attrs)}
    bad.x.attrs["units"] = "pixel"
    bad["rgb"].attrs["units"] = "8-bit sRGB"
    bad["pigment"].attrs.pop("long_name")
    bad["abundance"].attrs.pop("units")
    bad["labels"].attrs["flag_meanings"] = "transparent_no_counts"
    found = "\n".join(cf_problems(bad))
    for what in ("attr 'parameters' is not netCDF-writable", "coordinate 'x': units 'pixel'",
                 "variable 'rgb': units '8-bit sRGB'", "coordinate 'pigment': no long_name",
                 "variable 'abundance': numeric variable without units",
                 "variable 'labels': 3 flag_values but 1 flag_meanings"):
        assert what in found, found


def test_to_netcdf_round_trips(ds, tmp_path):
    p = tmp_path / "cube.nc"
    ds.to_netcdf(p)
    with xr.open_dataset(p) as back:
        back.load()
    for name in ds.variables:
        np.testing.assert_array_equal(back[name].values, ds[name].values, err_msg=name)
    assert back["counts"].dtype == ds["counts"].dtype
    assert back.attrs == ds.attrs
    assert back.xrf.meta["clustering"] == ds.xrf.meta["clustering"]
    assert back["labels"].attrs["flag_meanings"] == ds["labels"].attrs["flag_meanings"]
    assert cf_problems(back) == []
    from ganx_dask.readers import open_any  # the .nc reader takes it back as a cube

    cube = open_any(p)
    np.testing.assert_array_equal(cube["counts"].values, ds["counts"].values)
    assert cube.xrf.meta["parameters"] == ds.xrf.meta["parameters"]


def test_store_is_clean_for_plain_xarray_and_netcdf(ds, tmp_path):
    path = tmp_path / "cube.zarr"
    with dask.config.set(scheduler="synchronous"):
        to_zarr(ds, path)
    plain = xr.open_zarr(path)
    assert "region_complete" not in plain.variables  # the record sits in `_internal/`
    assert plain.attrs["complete"] == 1 and isinstance(plain.attrs["parameters"], str)
    assert store.missing_regions(path) == []
    plain.to_netcdf(tmp_path / "plain.nc")  # every attr is netCDF-writable, bookkeeping too
    cube = open_cube(path)
    assert cf_problems(cube.load()) == []
    assert cube.attrs["parameters"] == ds.attrs["parameters"]
    cube.to_netcdf(tmp_path / "cube.nc")
    meta = open_cube(path, decode_attrs=True).attrs
    assert meta["parameters"]["counts"] == 20 and meta["resumed"] == []
    assert meta["complete"] == 1 and JSON_ATTRS not in meta


def _as_010_store(path) -> None:
    """Rewrite a store the way ganx-dask 0.1.0 laid it out: nested dict attrs, bools, and the
    region record at the top level (consolidated metadata dropped, as after a crash)."""
    g = zarr.open_group(str(path), mode="r+", zarr_format=3)
    old = decode(g.attrs)
    old.update(complete=True, template_complete=True)
    g.attrs.put(old)
    rec = np.asarray(g[store.RECORD][...])
    g.create_array("region_complete", shape=rec.shape, chunks=(1, 1), dtype="bool",
                   dimension_names=("region_y", "region_x"))[...] = rec
    del g["_internal"]
    meta = json.loads((path / "zarr.json").read_text())
    meta.pop("consolidated_metadata", None)
    (path / "zarr.json").write_text(json.dumps(meta))


def test_stores_of_0_1_0_stay_readable_and_resumable(ds, tmp_path):
    path = tmp_path / "old.zarr"
    with dask.config.set(scheduler="synchronous"):
        to_zarr(ds, path, region=32)
    ref = open_cube(path)["counts"].values
    _as_010_store(path)
    assert isinstance(zarr.open_group(str(path)).attrs["parameters"], dict)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = open_cube(path)
    assert "region_complete" not in old.variables and store.is_complete(path)
    assert isinstance(old.attrs["parameters"], str)  # encoded on reading: to_netcdf works
    old.to_netcdf(tmp_path / "old.nc")
    assert open_cube(path, decode_attrs=True).attrs["parameters"]["seed"] == 3
    # an interrupted 0.1.0 store resumes through its top-level record
    g = zarr.open_group(str(path), mode="r+")
    g["region_complete"][0, 1] = False
    g.attrs["complete"] = False
    assert store.missing_regions(path) == [(0, 1)]
    with dask.config.set(scheduler="synchronous"):
        to_zarr(ds, path, resume=True, region=32)
    assert store.is_complete(path)
    np.testing.assert_array_equal(open_cube(path)["counts"].values, ref)
