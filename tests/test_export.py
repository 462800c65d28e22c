"""Tests of ganx_dask.export: ganX and PyMca HDF5 (read by PyMca's own code), HyperSpy/exspy
(.hspy, .rpl read by ``hs.load``), ``ganx-dask export``, and readers.open_hdf5 on PyMca files."""

import warnings

import h5py
import numpy as np
import pytest

import ganx_dask
from ganx_dask import readers as R
from ganx_dask.cli import main
from ganx_dask.errors import EnergyAxisError, GanxError, StoreExistsError
from ganx_dask.export import export, hyperspy_window, to_ganx_hdf5, to_hyperspy, to_pymca_hdf5

from .markers import requires_exspy, requires_pymca
from .test_analysis import make_cube


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A generated cube (two pigments: vermilion | lead white) with a live-time map."""
    lib = ganx_dask.default_library()
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :16] = lib["vermilion"].rgb
    img[:, 16:] = lib["lead white"].rgb if "lead white" in lib else lib["minium"].rgb
    ds = ganx_dask.generate(img, lib, seed=5, energy="0.5:38.5:512", mode="nearest",
                            n_start=2, delta=0, chunks=32, tile=32, counts=300)
    path = tmp_path_factory.mktemp("exp") / "c.zarr"
    ganx_dask.to_zarr(ds, path)
    out = ganx_dask.open_cube(path)
    rng = np.random.default_rng(4)
    out["live_time"] = (("y", "x"), rng.uniform(0.008, 0.01, (32, 32)).astype(np.float32),
                        {"units": "s"})
    return out


def _cube_with_live_time(h=24, w=20):
    ds = make_cube(h=h, w=w)
    ds["live_time"] = (("y", "x"), np.linspace(0.5, 1.0, h * w).reshape(h, w).astype(np.float32))
    return ds


# ------------------------------------------------------------------------------- ganX HDF5
def test_ganx_hdf5_8192_channels_energy_as_dataset(tmp_path):
    ds = make_cube(h=4, w=3, energy="0.5:40.5:8192", chunks=4)
    path = to_ganx_hdf5(ds, tmp_path / "big.h5")  # was: "object header message is too large"
    with h5py.File(path) as f:
        assert f["energy"].shape == (8192,) and "energy_keV" not in f["img"].attrs
    back = R.open_hdf5(path)
    np.testing.assert_array_equal(back.counts.values, ds.counts.values)
    np.testing.assert_allclose(back.energy.values, ds.energy.values, atol=1e-9)


# ------------------------------------------------------------------------------- PyMca HDF5
@requires_pymca
def test_pymca_reader_opens_export_with_calibration_and_live_time(tmp_path):
    from PyMca5.PyMcaIO import HDF5Stack1D  # PyMca's own HDF5 stack reader, not ours

    ds = _cube_with_live_time()
    path = to_pymca_hdf5(ds, tmp_path / "p.h5")
    st = HDF5Stack1D.HDF5Stack1D([str(path)], {"y": "/instrument/detector_00/data"})
    assert st.info["McaIndex"] == 2
    np.testing.assert_array_equal(np.asarray(st.data), ds.counts.values)
    a, b, c = st.info["McaCalib"]
    ch = np.asarray(st.x[0], float)  # PyMca's channel numbers
    np.testing.assert_allclose(a + b * ch + c * ch**2, ds.energy.values, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(st.info["McaLiveTime"]).reshape(24, 20),
                               ds.live_time.values)


def test_open_hdf5_reads_pymca_export_back(tmp_path):
    ds = _cube_with_live_time()
    path = ds.xrf.to_pymca_hdf5(tmp_path / "p.h5")
    back = R.open_any(path)  # finds /stack/instrument/detector_00/data by itself
    assert back.attrs["dataset"] == "stack/instrument/detector_00/data"
    np.testing.assert_array_equal(back.counts.values, ds.counts.values)
    np.testing.assert_allclose(back.energy.values, ds.energy.values, atol=1e-9)
    np.testing.assert_allclose(back.live_time.values, ds.live_time.values)
    with pytest.raises(StoreExistsError):
        to_pymca_hdf5(ds, path)


@requires_pymca
def test_open_hdf5_reads_file_written_by_pymca(tmp_path):
    from PyMca5.PyMcaCore import DataObject, McaStackExport

    rng = np.random.default_rng(2)
    stack = DataObject.DataObject()
    stack.data = rng.poisson(3, (5, 6, 64)).astype(np.uint32)
    stack.info = {"McaIndex": 2, "McaCalib": [0.1, 0.02, 1e-6],
                  "McaLiveTime": np.full(30, 0.25)}
    McaStackExport.exportStackList(stack, str(tmp_path / "pymca.h5"))
    back = R.open_hdf5(tmp_path / "pymca.h5")
    np.testing.assert_array_equal(back.counts.values, stack.data)
    ch = np.arange(64)
    np.testing.assert_allclose(back.energy.values, 0.1 + 0.02 * ch + 1e-6 * ch**2, atol=1e-6)
    np.testing.assert_allclose(back.live_time.values, 0.25)


def test_open_hdf5_pymca_siblings_by_explicit_path_and_bad_calibration(tmp_path):
    path = tmp_path / "n.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("entry/det")
        g["data"] = np.ones((2, 3, 8), np.uint16)
        g["calibration"] = [0.5, 0.25, 0.0]
    ds = R.open_hdf5(path, "entry/det/data")  # used to raise EnergyAxisError
    np.testing.assert_allclose(ds.energy.values, 0.5 + 0.25 * np.arange(8))
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["entry/det/data"] = np.ones((2, 3, 8), np.uint16)
        f["entry/det/calibration"] = [0.0, 1.0, 0.0]
        f["entry/det/channels"] = np.arange(7)
    with pytest.raises(EnergyAxisError, match="bad.h5:entry/det/data: 'channels' has 7"):
        R.open_hdf5(bad, "entry/det/data")


# ------------------------------------------------------------------------------- HyperSpy
@requires_exspy
@pytest.mark.parametrize("suffix", [".hspy", ".rpl"])
def test_hs_load_of_export_gives_element_map_and_metadata(store, tmp_path, suffix):
    import hyperspy.api as hs

    out = export(store, tmp_path / f"c{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = hs.load(out)
    assert s.metadata.Signal.signal_type == "EDS_SEM"
    eds = s.metadata.Acquisition_instrument.SEM
    assert eds.beam_energy == pytest.approx(40.0)
    fwhm = ganx_dask.analysis.detector_fwhm(5.8987, store.xrf._instrument(None)) * 1000
    assert eds.Detector.EDS.energy_resolution_MnKa == pytest.approx(fwhm)
    ax = s.axes_manager.signal_axes[0]
    assert ax.units == "keV"
    np.testing.assert_allclose(ax.axis, store.energy.values, atol=1e-6)
    ref = store.xrf.element_map("Pb", line="La").values
    win = [hyperspy_window(store, "Pb", "La")]
    got = s.get_lines_intensity(["Pb_La"], integration_windows=win)[0].data
    np.testing.assert_array_equal(np.asarray(got), ref)
    assert ref.max() > 0
    # HyperSpy's default window (2 FWHM from energy_resolution_MnKa, its own line energy) is
    # within a channel of ours at each edge: the same map up to the edge channels
    default = np.asarray(s.get_lines_intensity(["Pb_La"])[0].data, float)
    assert np.corrcoef(default.ravel(), ref.ravel())[0, 1] > 0.95


@requires_exspy
def test_to_hyperspy_lazy_live_time_elements_and_errors(store, tmp_path):
    s = to_hyperspy(store, lazy=True)
    assert s._lazy
    assert s.metadata.Acquisition_instrument.SEM.Detector.EDS.live_time == pytest.approx(
        float(store.live_time.mean()))
    assert {"Hg", "Pb"} <= set(s.metadata.Sample.elements)
    np.testing.assert_array_equal(np.asarray(s.sum(axis=(0, 1)).data.compute()),
                                  store.xrf.sum_spectrum().values)
    with pytest.raises(EnergyAxisError, match="not uniform"):
        to_hyperspy(store.isel(energy=[0, 1, 5]))
    with pytest.raises(GanxError, match="must end with .rpl"):
        export(store, tmp_path / "x.raw", format="rpl")
    with pytest.raises(GanxError, match="cannot tell the export format"):
        export(store, tmp_path / "x.bin")


@requires_exspy
def test_cli_export_formats(store, tmp_path):
    src = tmp_path / "s.zarr"
    ganx_dask.to_zarr(store, src)
    assert main(["export", str(src), "-o", str(tmp_path / "c.h5")]) == 0
    assert R.open_hdf5(tmp_path / "c.h5").attrs["dataset"].endswith("detector_00/data")
    assert main(["export", str(src), "-o", str(tmp_path / "g.h5"), "--format", "ganx"]) == 0
    assert R.open_hdf5(tmp_path / "g.h5").attrs["dataset"] == "img"
    assert main(["export", str(src), "-o", str(tmp_path / "c.rpl")]) == 0
    assert (tmp_path / "c.raw").stat().st_size == store.counts.nbytes
    assert main(["export", str(src), "-o", str(tmp_path / "c.rpl")]) == 1  # exists
