"""Tests for ganx_dask.generator.generate: laziness, statistics, edge channels, transparency,
determinism across schedulers and chunkings, parameter validation, dataset layout."""

import json

import dask
import numpy as np
import pytest
import xarray as xr
from dask.utils import key_split
from scipy import stats

from ganx_dask.attrs import decode
from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import ConfigError, EnergyAxisError, GanxError, ImageError
from ganx_dask.generator import generate, relative_luminance
from ganx_dask.pigments import MeasuredSpectrum, Pigment, PigmentLibrary

AXIS = EnergyAxis(0.5, 38.5, 64)
COLOURS = {"vermilion": (204, 52, 40), "azurite": (46, 96, 160),
           "lead white": (246, 244, 236), "malachite": (62, 140, 92)}


def _spectrum(peaks, background=0.0, lo=8):
    c = np.zeros(AXIS.n)
    c[lo:] = background
    for ch, h in peaks:
        c[ch] += h
    return MeasuredSpectrum(AXIS.edges, c, source="test")


@pytest.fixture(scope="module")
def lib():
    """Four pigments whose spectra are zero below channel 8 (so d = 0 there)."""
    return PigmentLibrary([
        Pigment("vermilion", COLOURS["vermilion"], measured=_spectrum([(20, 5), (40, 2)], 0.05)),
        Pigment("azurite", COLOURS["azurite"], measured=_spectrum([(15, 4), (16, 2)], 0.05)),
        Pigment("lead white", COLOURS["lead white"], measured=_spectrum([(21, 3), (45, 3)], 0.05)),
        Pigment("malachite", COLOURS["malachite"], measured=_spectrum([(15, 1), (50, 4)], 0.05)),
    ], name="test-lib", version="1.2")


def blocks_image(ny=128, nx=192):
    """Four colour blocks with slight noise."""
    img = np.zeros((ny, nx, 3), np.uint8)
    cols = list(COLOURS.values())
    for i in range(4):
        img[(i // 2) * ny // 2:(i // 2 + 1) * ny // 2, (i % 2) * nx // 2:(i % 2 + 1) * nx // 2] = cols[i]
    noise = np.random.default_rng(0).integers(-3, 4, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


SMALL = dict(energy=AXIS, counts=60, n_start=4, delta=1, fit_samples=3000, chunks=64, tile=64)


class CountingScheduler:
    """Synchronous scheduler that records the task-name prefixes of every computed graph."""

    def __init__(self):
        self.calls = 0
        self.names = set()

    def __call__(self, dsk, keys, **kwargs):
        self.calls += 1
        graph = dsk.__dask_graph__() if hasattr(dsk, "__dask_graph__") else dsk
        self.names |= {key_split(k) for k in dict(graph)}
        return dask.get(dsk, keys, **kwargs)


def test_building_the_dataset_computes_nothing_big(lib):
    sched = CountingScheduler()
    with dask.config.set(scheduler=sched):
        ds = generate(blocks_image(), lib, seed=1, **SMALL)
    assert sched.calls == 1  # only the clustering subsample
    assert sched.names and not any(
        ("ganx-counts" in n or "labels" in n or "where" in n) for n in sched.names)
    assert ds["counts"].chunks is not None and ds["labels"].chunks is not None
    counts_name = key_split(ds["counts"].data.name)
    assert counts_name not in sched.names
    # the probe does see a computation of the cube
    with dask.config.set(scheduler=sched):
        ds["counts"][:1, :1].compute()
    assert sched.calls == 2 and any("ganx-counts" in n for n in sched.names)


def test_layout_dtypes_coords_attrs(lib, tmp_path):
    ds = generate(blocks_image(), lib, seed=3, **SMALL)
    assert ds["counts"].dims == ("y", "x", "energy") and ds["counts"].dtype == np.uint16
    assert ds["labels"].dims == ("y", "x") and ds["labels"].dtype == np.int16
    assert ds["abundance"].dims == ("cluster", "pigment")
    assert ds["spectrum"].dims == ("cluster", "energy")
    assert ds["cluster_rgb"].dims == ("cluster", "channel") and ds["cluster_rgb"].dtype == np.uint8
    assert ds["pigment_rgb"].dims == ("pigment", "channel")
    assert ds["rgb"].dims == ("y", "x", "channel")
    assert ds["counts"].data.chunks[:2] == ((64, 64), (64, 64, 64))
    assert ds.energy.attrs["units"] == "keV" and "units" not in ds.y.attrs
    np.testing.assert_allclose(ds.energy.values, AXIS.centres)
    assert list(ds.pigment.values) == list(COLOURS)
    assert list(ds.channel.values) == ["R", "G", "B"]
    np.testing.assert_allclose(ds["abundance"].sum("pigment"), 1.0)
    np.testing.assert_allclose(ds["spectrum"].sum("energy"), 1.0)
    a = ds.xrf.meta
    assert a["seed"] == 3 and a["library_name"] == "test-lib" and a["library_version"] == "1.2"
    assert a["energy_axis"] == "0.5:38.5:64" and a["tile"] == 64
    assert a["clustering"]["k"] == ds.sizes["cluster"] == 4
    p = a["parameters"]
    for key in ("seed", "energy", "counts", "count_model", "threshold", "similarity", "mode",
                "margin", "max_pigments", "lightness_factor",
                "n_start", "delta", "patience", "score_batch", "fit_samples", "chunks", "tile",
                "engine", "include_rgb", "luminosity", "instrument"):
        assert key in p
    assert {"ganx_dask_version", "created", "instrument", "image"} <= set(a)
    json.dumps(a)  # JSON-serialisable for zarr
    ds2 = generate(blocks_image(), lib, seed=3, include_rgb=False, **SMALL)
    assert "rgb" not in ds2


def test_fixed_counts_statistics(lib):
    """Every pixel sums to N; per cluster the summed spectrum passes chi-square vs n·N·d."""
    n = SMALL["counts"]
    ds = generate(blocks_image(), lib, seed=11, **SMALL)
    c = ds["counts"].values
    lab = ds["labels"].values
    d = ds["spectrum"].values
    assert np.all(c.sum(-1) == n)
    assert np.all(c[..., :8] == 0)  # d is zero below channel 8: never a count there
    for k in range(ds.sizes["cluster"]):
        m = lab == k
        obs = c[m].sum(0).astype(float)
        exp = m.sum() * n * d[k]
        assert np.all(obs[exp == 0] == 0)
        s = exp > 0
        chi2 = ((obs[s] - exp[s]) ** 2 / exp[s]).sum()
        assert stats.chi2.sf(chi2, s.sum() - 1) > 1e-4, (k, chi2, s.sum())


def test_first_and_last_energy_channel():
    """A spectrum with mass only in the first and last channel (ganx 0.0.2 crashes on this)."""
    edge = np.zeros(AXIS.n)
    edge[0], edge[-1] = 1.0, 3.0
    lib2 = PigmentLibrary([
        Pigment("edges", (200, 30, 30), measured=MeasuredSpectrum(AXIS.edges, edge)),
        Pigment("mid", (30, 30, 200), measured=_spectrum([(30, 1)])),
    ])
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (200, 30, 30)
    img[:, 32:] = (30, 30, 200)
    ds = generate(img, lib2, seed=2, energy=AXIS, counts=40, n_start=2, delta=0,
                  mode="nearest", chunks=64)
    c = ds["counts"].values
    left = c[:, :32]
    assert np.all(left.sum(-1) == 40)
    assert np.all(left[..., 1:-1] == 0)
    frac_last = left[..., -1].sum() / left.sum()
    assert abs(frac_last - 0.75) < 5 * np.sqrt(0.75 * 0.25 / left.sum())
    assert np.all(c[:, 32:, 30] == 40)


def test_transparent_pixels_no_counts(lib):
    rgba = np.concatenate([blocks_image(), np.full((128, 192, 1), 255, np.uint8)], axis=2)
    rgba[:20, :30, 3] = 0
    with pytest.warns(UserWarning, match="alpha"):
        ds = generate(rgba, lib, seed=5, **SMALL)
    lab, c = ds["labels"].values, ds["counts"].values
    assert np.all(lab[:20, :30] == -1) and (lab == -1).sum() == 600
    assert np.all(c[:20, :30] == 0)
    assert np.all(c[lab >= 0].sum(-1) == SMALL["counts"])


def test_poisson_and_luminosity_models(lib):
    img = blocks_image()
    ds = generate(img, lib, seed=8, **{**SMALL, "counts": 50}, count_model="poisson")
    tot = ds["counts"].values.sum(-1).ravel().astype(float)
    assert abs(tot.mean() - 50) < 5 * np.sqrt(50 / tot.size)
    assert 0.85 < tot.var() / tot.mean() < 1.15  # Poisson dispersion
    # user map: zero on the left half, 2 on the right
    fac = np.zeros(img.shape[:2])
    fac[:, 96:] = 2.0
    ds = generate(img, lib, seed=8, **{**SMALL, "counts": 50}, count_model="luminosity",
                  luminosity=fac)
    c = ds["counts"].values.sum(-1)
    assert np.all(c[:, :96] == 0) and abs(c[:, 96:].mean() - 100) < 1.0
    assert ds.xrf.meta["parameters"]["luminosity"] == "user map"
    # default: relative luminance of the pixel colour (white ~1, black 0)
    bw = np.zeros((64, 128, 3), np.uint8)
    bw[:, 64:] = 255
    ds = generate(bw, lib, seed=8, **{**SMALL, "counts": 50}, count_model="luminosity")
    c = ds["counts"].values.sum(-1)
    assert np.all(c[:, :64] == 0) and abs(c[:, 64:].mean() - 50) < 1.0
    np.testing.assert_allclose(relative_luminance(np.array([[255, 255, 255], [255, 0, 0]])),
                               [1.0, 0.2126], atol=2e-3)


def test_determinism_schedulers_and_chunkings(lib):
    img = blocks_image()
    ref = generate(img, lib, seed=21, **SMALL)
    with dask.config.set(scheduler="synchronous"):
        sync = ref["counts"].values
    with dask.config.set(scheduler="threads", num_workers=2):
        thr = ref["counts"].values
    big = generate(img, lib, seed=21, **{**SMALL, "chunks": 128})
    assert big["counts"].data.chunks[0] == (128,)
    np.testing.assert_array_equal(sync, thr)
    np.testing.assert_array_equal(sync, big["counts"].values)
    np.testing.assert_array_equal(ref["labels"].values, big["labels"].values)
    other = generate(img, lib, seed=22, **SMALL)["counts"].values
    assert not np.array_equal(sync, other)


@pytest.mark.cluster
def test_determinism_localcluster_processes(lib):
    from distributed import Client, LocalCluster

    img = blocks_image()
    ds = generate(img, lib, seed=21, **SMALL)
    with dask.config.set(scheduler="synchronous"):
        ref = ds["counts"].values
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster):
        dist = generate(img, lib, seed=21, **{**SMALL, "chunks": 128})["counts"].values
    np.testing.assert_array_equal(ref, dist)


@pytest.mark.parametrize("kw, err, match", [
    ({"energy": "0.5:38.5"}, EnergyAxisError, "START:STOP:N"),
    ({"energy": "38.5:0.5:64"}, EnergyAxisError, "start < stop"),
    ({"threshold": 1.2}, ConfigError, "threshold"),
    ({"threshold": -0.01}, ConfigError, "threshold"),
    ({"counts": 0}, ConfigError, "counts"),
    ({"counts": -5}, ConfigError, "counts"),
    ({"counts": 10.5}, ConfigError, "integer"),
    ({"counts": 2_000_000}, ConfigError, "at most 1,000,000 photons"),
    ({"counts": 1e9, "count_model": "poisson"}, ConfigError, "at most"),
    ({"chunks": 96}, ConfigError, "multiple of the 64-px"),
    ({"count_model": "gauss"}, ConfigError, "count model"),
    ({"similarity": "cmc"}, ConfigError, "similarity"),
    ({"mode": "all"}, ConfigError, "mode"),
    ({"seed": 1.5}, ConfigError, "seed"),
    ({"seed": -1}, ConfigError, "seed"),
    ({"n_start": 1}, ConfigError, "n_start"),
    ({"engine": "gpu"}, ConfigError, "engine"),
    ({"luminosity": np.ones((128, 192))}, ConfigError, "luminosity"),
])
def test_bad_parameters(lib, kw, err, match):
    args = {**SMALL, "seed": 0, **kw}
    with pytest.raises(err, match=match):
        generate(blocks_image(), lib, **args)


def test_bad_images(lib, tmp_path):
    with pytest.raises(ImageError, match="1x1 pixel"):
        generate(np.zeros((1, 1, 3), np.uint8), lib, seed=0, **SMALL)
    with pytest.raises(ImageError, match="not found"):
        generate(tmp_path / "missing.png", lib, seed=0, **SMALL)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00\x01 no image here")
    with pytest.raises(ImageError, match="bad.jpg"):
        generate(bad, lib, seed=0, **SMALL)
    with pytest.raises(ImageError, match="no pixels"):
        generate(np.zeros((0, 4, 3), np.uint8), lib, seed=0, **SMALL)
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent
    with pytest.warns(UserWarning), pytest.raises(ImageError, match="at least 2 pixels"):
        generate(rgba, lib, seed=0, **SMALL)
    with pytest.raises(GanxError, match="library"):
        generate(blocks_image(), PigmentLibrary([]), seed=0, **SMALL)


def test_uniform_image_single_cluster(lib):
    img = np.full((64, 64, 3), COLOURS["azurite"], np.uint8)
    with pytest.warns(UserWarning, match="single colour"):
        ds = generate(img, lib, seed=0, **SMALL)
    assert ds.sizes["cluster"] == 1 and np.all(ds["labels"].values == 0)
    assert np.all(ds["counts"].values.sum(-1) == SMALL["counts"])


def test_dataarray_input_and_nearest_mode(lib):
    img = xr.DataArray(blocks_image(), dims=("y", "x", "channel"))
    ds = generate(img, lib, seed=4, mode="nearest", **SMALL)
    ab = ds["abundance"].values
    assert np.all(np.sort(ab, axis=1)[:, -1] == 1.0)
    # each block's cluster is matched to its own pigment
    lab = ds["labels"].values
    for (yy, xx), name in zip([(10, 10), (10, 150), (100, 10), (100, 150)], COLOURS, strict=True):
        assert ds["abundance"].sel(pigment=name).values[lab[yy, xx]] == 1.0


def test_tiled_tiff_file_gives_same_cube_as_array(lib, tmp_path):
    """Input format does not matter: a tiled BigTIFF path and the in-memory array agree."""
    import tifffile

    img = blocks_image()
    p = tmp_path / "img.tif"
    tifffile.imwrite(p, img, tile=(64, 64), bigtiff=True, photometric="rgb")
    a = generate(img, lib, seed=9, **SMALL)
    b = generate(p, lib, seed=9, **SMALL)
    assert b.xrf.meta["image"]["source"] == str(p.resolve()) and len(b.xrf.meta["image"]["sha256"]) == 64
    np.testing.assert_array_equal(a["counts"].values, b["counts"].values)


def test_provenance_attrs_are_plain_json_with_numpy_scalar_parameters(lib):
    """numpy scalars as parameters (e.g. from a config array) still give JSON-serialisable attrs."""
    params = {**SMALL, "counts": np.float32(60), "n_start": np.int64(4), "chunks": np.int64(64),
              "tile": np.int32(64), "threshold": np.float32(0.25)}
    ds = generate(blocks_image(), lib, seed=np.int64(3), **params)
    back = decode(json.loads(json.dumps(ds.attrs)))
    assert back["parameters"]["seed"] == 3 and back["parameters"]["n_start"] == 4
    assert back["parameters"]["chunks"] == 64 and back["parameters"]["counts"] == 60
    assert type(ds.xrf.meta["parameters"]["threshold"]) is float


def test_user_luminosity_map_content_is_recorded(lib):
    """A different map gives different provenance (so a resume with another map is refused)."""
    img = blocks_image()
    kw = {**SMALL, "counts": 20, "count_model": "luminosity"}
    fac = np.ones(img.shape[:2])
    a = generate(img, lib, seed=8, luminosity=fac, **kw).xrf.meta["parameters"]
    b = generate(img, lib, seed=8, luminosity=fac.copy(), **kw).xrf.meta["parameters"]
    fac[5, 5] = 0.5
    c = generate(img, lib, seed=8, luminosity=fac, **kw).xrf.meta["parameters"]
    assert a["luminosity"] == "user map" and a["luminosity_map"] == b["luminosity_map"]
    assert a["luminosity_map"]["token"] != c["luminosity_map"]["token"]
    assert "luminosity_map" not in generate(img, lib, seed=8, **SMALL).xrf.meta["parameters"]


def test_image_hash_is_the_file_sha256(lib, tmp_path):
    import hashlib

    import tifffile

    p = tmp_path / "img.tif"
    tifffile.imwrite(p, blocks_image(), tile=(64, 64), photometric="rgb")
    want = hashlib.sha256(p.read_bytes()).hexdigest()
    assert generate(p, lib, seed=1, **SMALL).xrf.meta["image"]["sha256"] == want
    tifffile.imwrite(p, blocks_image()[::-1].copy(), tile=(64, 64), photometric="rgb")
    again = generate(p, lib, seed=1, **SMALL).xrf.meta["image"]["sha256"]
    assert again == hashlib.sha256(p.read_bytes()).hexdigest() != want


def test_in_memory_image_content_is_recorded(lib):
    img = blocks_image()
    a = generate(img, lib, seed=1, **SMALL).xrf.meta["image"]
    b = generate(xr.DataArray(img.copy(), dims=("y", "x", "channel")), lib, seed=1,
                 **SMALL).xrf.meta["image"]
    img[0, 0] = (1, 2, 3)
    c = generate(img, lib, seed=1, **SMALL).xrf.meta["image"]
    assert a["token"] == b["token"] != c["token"]


def test_non_uniform_energy_axis(lib):
    edges = AXIS.edges
    centres = 0.5 * (edges[:-1] + edges[1:])
    centres = np.concatenate([centres[::2][:20], centres[40:]])  # coarser bins at low energy
    ds = generate(blocks_image(), lib, seed=3, **{**SMALL, "energy": centres})
    assert ds.sizes["energy"] == centres.size
    np.testing.assert_array_equal(ds.energy.values, centres)
    c = ds["counts"].values
    assert (c.sum(-1) == SMALL["counts"]).all()
