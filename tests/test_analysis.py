"""Tests of ganx_dask.analysis: element maps, laziness, rebinning, flattening, ganX HDF5 export."""

import os
import stat

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
import xraylib
from dask.callbacks import Callback

import ganx_dask
from ganx_dask import analysis as A
from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import GanxError, StoreExistsError
from ganx_dask.pigments.physics import fwhm_kev


def make_cube(h=48, w=40, energy="0.5:38.5:128", seed=0, chunks=16) -> xr.Dataset:
    """A small dataset in the documented layout (counts uint16 on dask, labels, abundance...)."""
    ax = EnergyAxis.parse(energy)
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.5, (h, w, ax.n)).astype(np.uint16)
    labels = np.zeros((h, w), np.int16)
    labels[:, w // 2:] = 1
    ds = xr.Dataset(
        {
            "counts": (("y", "x", "energy"), da.from_array(counts, chunks=(chunks, chunks, -1)),
                       {"units": "counts"}),
            "labels": (("y", "x"), da.from_array(labels, chunks=chunks)),
            "abundance": (("cluster", "pigment"), np.array([[1.0, 0.0], [0.25, 0.75]])),
            "spectrum": (("cluster", "energy"), np.full((2, ax.n), 1.0 / ax.n)),
            "cluster_rgb": (("cluster", "channel"), np.array([[200, 30, 30], [30, 30, 200]],
                                                             np.uint8)),
            "pigment_rgb": (("pigment", "channel"), np.array([[227, 66, 52], [38, 84, 160]],
                                                             np.uint8)),
            "rgb": (("y", "x", "channel"), np.zeros((h, w, 3), np.uint8)),
        },
        coords={"y": np.arange(h), "x": np.arange(w), "energy": ax.to_coord(),
                "cluster": [0, 1], "pigment": ["vermilion", "azurite"],
                "channel": ["R", "G", "B"]},
        attrs={"seed": seed, "energy_axis": energy, "complete": True},
    )
    return ds


class TaskCounter(Callback):
    def __init__(self):
        super().__init__()
        self.n = 0

    def _pretask(self, key, dsk, state):
        self.n += 1


@pytest.fixture(scope="module")
def two_pigment():
    """Left half vermilion (HgS), right half azurite (Cu), default library, nearest mode."""
    lib = ganx_dask.default_library()
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = lib["vermilion"].rgb
    img[:, 32:] = lib["azurite"].rgb
    return ganx_dask.generate(img, lib, seed=3, energy="0.5:38.5:256", mode="nearest",
                              n_start=2, delta=0, chunks=64, counts=200)


def test_element_map_bright_exactly_where_the_pigment_is(two_pigment):
    hg = two_pigment.xrf.element_map("Hg").compute().values
    cu = two_pigment.xrf.element_map("Cu").compute().values
    assert hg[:, :32].min() > hg[:, 32:].max()
    assert cu[:, 32:].min() > cu[:, :32].max()
    m = two_pigment.xrf.element_map("Hg")
    assert m.attrs["line"] == "La" and m.attrs["element"] == "Hg"
    assert m.attrs["line_energy_keV"] == pytest.approx(xraylib.LineEnergy(80, xraylib.LA_LINE))


def test_default_window_is_plus_minus_one_fwhm():
    ds = make_cube(energy="0.5:38.5:2048")
    m = A.element_map(ds, "Cu", "Ka")
    e = xraylib.LineEnergy(29, xraylib.KA_LINE)
    fwhm = fwhm_kev(e)  # the pigment model's detector resolution (≈ 0.16 keV at Cu Kα)
    assert 0.12 < fwhm < 0.2
    e0, e1 = m.attrs["window_keV"]
    assert e0 == pytest.approx(e - fwhm, rel=1e-3) and e1 == pytest.approx(e + fwhm, rel=1e-3)
    c = ds["energy"].values
    sel = (c >= e0) & (c <= e1)
    np.testing.assert_array_equal(m.values, ds.counts.values[..., sel].sum(-1))
    wide = A.element_map(ds, "Cu:Ka", width=1.0)
    assert wide.attrs["window_keV"][1] - wide.attrs["window_keV"][0] == pytest.approx(1.0)


def test_element_errors():
    ds = make_cube()
    with pytest.raises(GanxError, match="outside the energy axis"):
        A.element_map(ds, "Pb", "Ka")  # 74.16 keV
    with pytest.raises(GanxError, match="no K, L or M line inside"):
        A.element_map(ds, "C")
    with pytest.raises(GanxError, match="unknown element"):
        A.element_map(ds, "Xx")
    with pytest.raises(GanxError, match="unknown line"):
        A.element_map(ds, "Pb", "Qz")


def test_operations_are_lazy_and_correct():
    ds = make_cube()
    counter = TaskCounter()
    with counter:
        results = {
            "map": ds.xrf.element_map("Cu"),
            "maps": ds.xrf.element_maps([("Cu", "Ka"), "Pb"]),
            "sum": ds.xrf.sum_spectrum(),
            "roi": ds.xrf.roi(5.0, 7.0),
            "flat": ds.xrf.flatten(),
            "rebin": ds.counts.xrf.rebin(4),
            "rebin3": ds.xrf.rebin(3),
            "axis": ds.xrf.rebin(energy="1:30:50"),
            "abundance": ds.xrf.abundance_map(),
        }
    assert counter.n == 0
    for name, r in results.items():
        arr = r["counts"] if isinstance(r, xr.Dataset) else r
        assert isinstance(arr.data, da.Array), name
    cube = ds.counts.values
    np.testing.assert_array_equal(results["sum"].values, cube.sum(axis=(0, 1)))
    c = ds.energy.values
    np.testing.assert_array_equal(results["roi"].values,
                                  cube[..., (c >= 5.0) & (c <= 7.0)].sum(-1))
    flat = results["flat"].values
    h, w = cube.shape[:2]
    np.testing.assert_array_equal(flat[7 * w + 5], cube[7, 5])
    assert results["flat"]["y"].values[7 * w + 5] == 7
    ab = results["abundance"].values
    np.testing.assert_allclose(ab[0, 0], [1.0, 0.0])
    np.testing.assert_allclose(ab[0, -1], [0.25, 0.75])


def test_rebin_conserves_counts():
    ds = make_cube()
    total = int(ds.counts.sum())
    r4 = A.rebin(ds.counts, 4)
    assert r4.sizes["energy"] == 32 and int(r4.sum()) == total
    np.testing.assert_array_equal(r4.values[..., 0], ds.counts.values[..., :4].sum(-1))
    assert r4["energy"].attrs["units"] == "keV"
    np.testing.assert_allclose(r4["energy"].values, EnergyAxis(0.5, 38.5, 32).centres)
    r3 = A.rebin(ds, 3)  # non-integer: 128 -> 42 channels over the same range
    assert r3.counts.sizes["energy"] == 42
    assert float(r3.counts.sum()) == pytest.approx(total, rel=1e-12)
    assert float(r3.spectrum.sum()) == pytest.approx(2.0, rel=1e-12)
    sub = A.rebin(ds.counts, energy=EnergyAxis(0.5, 38.5, 100))
    assert float(sub.sum()) == pytest.approx(total, rel=1e-12)
    with pytest.raises(GanxError, match="exactly one"):
        A.rebin(ds.counts)
    with pytest.raises(GanxError, match="positive integer"):
        A.rebin(ds.counts, 0)


def test_memory_bounded_graph_on_2048_cube():
    """A lazy 2048² × 1024 cube (8 GiB): no operation builds a chunk larger than ~64 MiB."""
    cube = da.zeros((2048, 2048, 1024), dtype=np.uint16, chunks=(256, 256, 1024))
    c = xr.DataArray(cube, dims=("y", "x", "energy"),
                     coords={"energy": EnergyAxis(0.5, 38.5, 1024).to_coord()})
    limit = 64 * 2 ** 20
    for arr in (A.flatten(c).data, A.element_map(c, "Pb").data, A.sum_spectrum(c).data,
                A.rebin(c, 2).data, A.rebin(c, energy="0.5:38.5:1000").data):
        worst = max(np.prod(k) * arr.dtype.itemsize for k in _chunk_shapes(arr))
        assert worst <= 2 * limit


def _chunk_shapes(arr):
    import itertools

    return [tuple(s) for s in itertools.product(*[sorted(set(ch)) for ch in arr.chunks])]


def test_to_ganx_hdf5_roundtrip_and_no_overwrite(tmp_path):
    ds = make_cube(h=40, w=36)
    out = tmp_path / "cube.h5"
    with dask.config.set(scheduler="synchronous"):
        ds.xrf.to_ganx_hdf5(out)
    with h5py.File(out) as f:
        img = f["img"]
        assert img.shape == (40, 36, 128)
        np.testing.assert_array_equal(img[()], ds.counts.values)
        assert img.attrs["calibration_gain_keV_per_channel"] == pytest.approx(38.0 / 128)
    before = out.read_bytes()
    with pytest.raises(StoreExistsError):
        ds.xrf.to_ganx_hdf5(out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.h5"]
    # an ordinary file for other users too (umask permissions, not a temp file's 0600)
    umask = os.umask(0o022)
    try:
        with dask.config.set(scheduler="synchronous"):
            ds.xrf.to_ganx_hdf5(tmp_path / "b.h5")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "b.h5").stat().st_mode) == 0o644
