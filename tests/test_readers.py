"""Tests of ganx_dask.readers: HDF5, npy/npz, Zarr stores, Amptek MCA folders, open_any."""

import dask.array as da
import h5py
import numpy as np
import pytest
import zarr

from ganx_dask import readers as R
from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import EnergyAxisError, GanxError, IncompleteStoreWarning

from .test_analysis import make_cube


@pytest.fixture(scope="module")
def cube():
    rng = np.random.default_rng(1)
    return rng.poisson(2, (6, 5, 32)).astype(np.uint16)


def test_hdf5_written_by_to_ganx_hdf5_reads_back(tmp_path):
    ds = make_cube(h=20, w=18)
    path = ds.xrf.to_ganx_hdf5(tmp_path / "c.h5")
    back = R.open_any(path)
    assert isinstance(back.counts.data, da.Array)
    np.testing.assert_array_equal(back.counts.values, ds.counts.values)
    np.testing.assert_allclose(back.energy.values, ds.energy.values, atol=1e-9)
    assert back.energy.attrs["units"] == "keV"


def test_hdf5_calibration_axes_and_errors(tmp_path, cube):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["data/cube"] = np.transpose(cube, (2, 0, 1))  # (E, H, W)
    ds = R.open_hdf5(path, "data/cube", axes="eyx", gain=0.02, offset=1.0)
    np.testing.assert_array_equal(ds.counts.values, cube)
    np.testing.assert_allclose(ds.energy.values, 1.0 + 0.02 * np.arange(32))
    with pytest.raises(GanxError, match="no dataset 'img'.*data/cube"):
        R.open_hdf5(path)
    with pytest.raises(EnergyAxisError, match="scan.h5:data/cube: no energy calibration"):
        R.open_hdf5(path, "data/cube", axes="eyx")


def test_numpy_npy_and_npz(tmp_path, cube):
    np.save(tmp_path / "c.npy", cube)
    ds = R.open_any(tmp_path / "c.npy", energy="0.5:38.5:32")
    np.testing.assert_array_equal(ds.counts.values, cube)
    np.testing.assert_allclose(ds.energy.values, EnergyAxis(0.5, 38.5, 32).centres)
    np.savez(tmp_path / "c.npz", cube=cube, energy=np.linspace(1, 20, 32))
    ds = R.open_any(tmp_path / "c.npz")
    np.testing.assert_allclose(ds.energy.values, np.linspace(1, 20, 32))
    with pytest.raises(EnergyAxisError, match="has 16 channels"):
        R.open_any(tmp_path / "c.npy", energy="0.5:38.5:16")


def test_zarr_store_and_incomplete_warning(tmp_path):
    ds = make_cube(h=16, w=16)
    path = tmp_path / "s.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    back = R.open_any(path)
    np.testing.assert_array_equal(back.counts.values, ds.counts.values)
    zarr.open_group(str(path), mode="r+").attrs["complete"] = False
    with pytest.warns(IncompleteStoreWarning):
        R.open_any(path)


def _write_mca(path, counts, cal=((100, 2.5), (500, 10.5))):
    lines = ["<<PMCA SPECTRUM>>", "TAG - live_data", "LIVE_TIME - 1.0", "<<CALIBRATION>>",
             "LABEL - keV"]
    lines += [f"{c} {e}" for c, e in cal]
    lines += ["<<DATA>>", *[str(int(v)) for v in counts], "<<END>>"]
    path.write_text("\n".join(lines) + "\n")


def test_mca_folder_yx_and_raster(tmp_path, cube):
    yx = tmp_path / "yx"
    yx.mkdir()
    for r in range(cube.shape[0]):
        for c in range(cube.shape[1]):
            _write_mca(yx / f"scan_{r + 1:03d}_{c + 1:03d}.mca", cube[r, c])
    ds = R.open_any(yx)
    np.testing.assert_array_equal(ds.counts.values, cube)
    # calibration fitted through the points: gain 0.02 keV/channel, channel 0 at 0.5 keV
    np.testing.assert_allclose(ds.energy.values[:2], [0.5, 0.52], atol=1e-9)
    raster = tmp_path / "raster"
    raster.mkdir()
    for k in range(cube.shape[0] * cube.shape[1]):
        _write_mca(raster / f"px{k:04d}.mca", cube.reshape(-1, 32)[k])
    ds = R.open_mca_folder(raster, layout="raster", shape=cube.shape[:2])
    np.testing.assert_array_equal(ds.counts.values, cube)
    (raster / "px0003.mca").unlink()
    with pytest.raises(GanxError, match="1 of 30 pixels have no .mca file"):
        R.open_mca_folder(raster, layout="raster", shape=cube.shape[:2])


def test_read_mca_errors(tmp_path):
    bad = tmp_path / "bad.mca"
    bad.write_text("<<PMCA SPECTRUM>>\n<<DATA>>\n1\nx\n<<END>>\n")
    with pytest.raises(GanxError, match="bad.mca, line 4: <<DATA>> expects one count"):
        R.read_mca(bad)


def test_open_any_unknown_inputs(tmp_path):
    with pytest.raises(GanxError, match="no such file"):
        R.open_any(tmp_path / "missing.h5")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(GanxError, match="unknown cube format"):
        R.open_any(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GanxError, match="neither a Zarr store"):
        R.open_any(tmp_path / "empty")
