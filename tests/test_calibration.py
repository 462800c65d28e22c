"""Calibration: synthetic round trips (known instrument, detector, background, abundances),
JSON round trip, generate(calibration=...), and bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr

import ganx_dask as g
from ganx_dask.attrs import decode
from ganx_dask.calibration import (
    BACKGROUNDS,
    Calibration,
    ColourModel,
    background_components,
    calibrate,
    library_hash,
    pileup_spectrum,
)
from ganx_dask.detector import DetectorEffects
from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import ConfigError, EnergyAxisError, GanxError, ImageError, PigmentError
from ganx_dask.metrics import cosine

# 9 pigments with overlapping lines: As Kα (orpiment) on Pb Lα (lead white), S K (gypsum,
# vermilion, orpiment) on Pb M / Hg M; Ca in chalk and gypsum
NAMES = ["lead white", "orpiment", "gypsum", "vermilion", "azurite", "yellow ochre", "chalk",
         "zinc white", "cobalt blue"]
RGB = np.array([[250, 249, 242], [250, 190, 40], [227, 66, 52], [38, 84, 160], [120, 200, 90],
                [204, 119, 34]], np.uint8)
MIX = [
    {"lead white": 0.7, "gypsum": 0.3},
    {"orpiment": 0.5, "lead white": 0.5},
    {"vermilion": 0.6, "chalk": 0.2, "lead white": 0.2},
    {"azurite": 0.6, "cobalt blue": 0.4},
    {"zinc white": 0.5, "azurite": 0.3, "chalk": 0.2},
    {"yellow ochre": 0.8, "gypsum": 0.2},
]
AXIS = EnergyAxis(0.5, 38.5, 1024)
STRIPE = 16


def _truth(lib) -> Calibration:
    inst = g.Instrument.preset("lab-rh").replace(
        noise_fwhm_kev=0.1, fano=0.125, tail_fraction=0.03, tail_slope_sigma=2.5,
        shelf_fraction=0.01)
    ab = np.zeros((len(MIX), len(NAMES)))
    for i, d in enumerate(MIX):
        for k, v in d.items():
            ab[i, NAMES.index(k)] = v
    colour = ColourModel(
        rgb=RGB, pigments=list(NAMES), abundance=ab, background=np.tile([0.1, 0.03, 0.02], (6, 1)),
        counts=np.array([2000, 1500, 1800, 1200, 1600, 1400.0]), counts_spread=np.zeros(6),
        pixels=np.ones(6, int), bandwidth_de=2.0, gamut_de=10.0)
    return Calibration(
        instrument=inst, detector=DetectorEffects(pulse_pair_ns=300, dwell_ms=20.0),
        energy={"gain": AXIS.width, "offset": AXIS.start + AXIS.width / 2, "channels": AXIS.n},
        background=background_components(g.Instrument.preset("lab-rh")), colour=colour,
        library={"name": lib.name, "version": lib.version, "sha256": library_hash(lib)})


@pytest.fixture(scope="module")
def lib():
    return g.default_library().select(NAMES)


@pytest.fixture(scope="module")
def image():
    img = np.zeros((48, STRIPE * len(RGB), 3), np.uint8)
    for i, c in enumerate(RGB):
        img[:, i * STRIPE:(i + 1) * STRIPE] = c
    return img


@pytest.fixture(scope="module")
def truth(lib):
    return _truth(lib)


@pytest.fixture(scope="module")
def scan(lib, image, truth):
    """The synthetic scan; its energy coordinate states a gain 0.4 % high and offset +15 eV."""
    ds = g.generate(image, lib, seed=3, calibration=truth, n_start=len(RGB), delta=0)
    cube = ds.counts.compute()
    stated = AXIS.start + AXIS.width / 2 + 0.015 + AXIS.width * 1.004 * np.arange(AXIS.n)
    return cube.assign_coords(energy=xr.DataArray(stated, dims="energy", attrs={"units": "keV"}))


@pytest.fixture(scope="module")
def cal(scan, image, lib):
    return calibrate(scan, image, library=lib, instrument="lab-rh")


def test_round_trip_instrument_and_detector(cal, truth):
    assert cal.energy["gain"] == pytest.approx(AXIS.width, rel=0.002)
    assert cal.energy["offset"] == pytest.approx(AXIS.start + AXIS.width / 2, abs=0.01)
    assert cal.diagnostics["energy"]["used"]  # the peak check moved the stated calibration
    t = truth.instrument
    assert cal.instrument.noise_fwhm_kev == pytest.approx(t.noise_fwhm_kev, rel=0.05)
    assert cal.instrument.fano == pytest.approx(t.fano, rel=0.05)
    assert cal.instrument.tail_fraction == pytest.approx(t.tail_fraction, rel=0.2)
    assert cal.instrument.shelf_fraction == pytest.approx(t.shelf_fraction, rel=0.2)
    # pile-up: the fitted link probability at 2000 counts matches the truth's
    p_true = truth.detector.link_probability(2000.0, 2000.0)
    p_fit = cal.detector.link_probability(2000.0, 2000.0)
    assert p_fit == pytest.approx(p_true, rel=0.2)


def test_round_trip_abundances_background_counts(cal, truth):
    pred = cal.colour.predict(RGB)
    assert pred["in_gamut"].all()
    names = cal.colour.pigments
    assert set(names) <= set(NAMES)
    for i in range(len(RGB)):
        got = dict(zip(names, pred["abundance"][i], strict=True))
        for j, n in enumerate(NAMES):
            assert got.get(n, 0.0) == pytest.approx(truth.colour.abundance[i, j], abs=0.05), (i, n)
    assert np.allclose(pred["background"], truth.colour.background, atol=0.01)
    assert np.allclose(pred["counts"], truth.colour.counts, rtol=0.02)
    chi2 = np.array(cal.diagnostics["groups"]["chi2_reduced"])
    assert np.all(chi2 < 1.3)


def test_regenerated_cube_matches_scan(cal, scan, image, lib):
    ds = g.generate(image, lib, seed=11, calibration=cal, n_start=len(RGB), delta=0)
    assert decode(ds.attrs)["parameters"]["calibration"]["out_of_gamut"] == []
    regen = ds.counts.sum(("y", "x")).values.astype(float)
    data = scan.sum(("y", "x")).values.astype(float)
    assert cosine(data, regen) <= 0.002
    assert abs(regen.sum() / data.sum() - 1) < 0.01
    # the calibrated energy axis is the generation default
    assert float(ds.energy[1] - ds.energy[0]) == pytest.approx(cal.energy["gain"])


def test_json_round_trip(cal, tmp_path, image, lib):
    path = cal.to_json(tmp_path / "cal.json")
    back = Calibration.from_json(path)
    assert back.instrument == cal.instrument
    assert back.detector == cal.detector
    assert back.colour.pigments == cal.colour.pigments
    np.testing.assert_array_equal(back.colour.abundance, cal.colour.abundance)
    assert back.library["sha256"] == library_hash(lib)
    a = g.generate(image, lib, seed=5, calibration=cal, n_start=len(RGB), delta=0)
    b = g.generate(image, lib, seed=5, calibration=path, n_start=len(RGB), delta=0)
    np.testing.assert_array_equal(a.spectrum.values, b.spectrum.values)  # lossless JSON
    fig = back.plot_fit(tmp_path / "fit.png")
    assert (tmp_path / "fit.png").stat().st_size > 1000
    assert len(fig.axes) == 2


def test_out_of_gamut_colours_fall_back_and_are_reported(cal, lib):
    img = np.zeros((16, 32, 3), np.uint8)
    img[:, :16] = RGB[0]
    img[:, 16:] = (40, 40, 40)  # dark grey: far from every calibrated colour
    with pytest.warns(UserWarning, match="outside the calibrated gamut"):
        ds = g.generate(img, lib, seed=1, calibration=cal, n_start=2, delta=0)
    rep = decode(ds.attrs)["parameters"]["calibration"]
    assert len(rep["out_of_gamut"]) == 1
    assert rep["out_of_gamut_rgb"] == [[40, 40, 40]]


def test_generate_refuses_another_library(cal):
    with pytest.raises(ConfigError, match="calibration refers to library"):
        g.generate(np.zeros((8, 8, 3), np.uint8), None, seed=0, calibration=cal)


def test_pileup_spectrum_matches_two_photon_sums():
    # lines at channel centres 1.05 and 3.05 keV (axis from 0): pairs sum to 2.1, 4.1 and
    # 6.1 keV, on the lower edges of channels 21, 41, 61 (an edge goes up, as in the sampler)
    edges = np.arange(101) * 0.1
    m = np.zeros(100)
    m[10], m[30] = 300.0, 100.0
    y = pileup_spectrum(m, 0.1, edges)
    assert y[21] == pytest.approx(0.81 * 0.1 * 300 * 300 / 400)
    assert y[41] == pytest.approx(0.81 * 0.1 * 2 * 300 * 100 / 400)
    assert y[61] == pytest.approx(0.81 * 0.1 * 100 * 100 / 400)
    assert y[31] == pytest.approx(0.81 * 0.01 * 300**3 / 400**2)  # 3 × 1.05 keV
    # recorded events: photons × (1 − p)² (1 + p + p²) (chains of up to 3 photons) ≈ × (1 − p)
    assert y.sum() == pytest.approx(400 * 0.81 * 1.11)
    assert y.sum() == pytest.approx(400 * 0.9, rel=0.1**3 / 0.9 + 1e-9)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_shapes_units_values_library(scan, image, lib, tmp_path):
    with pytest.raises(ImageError, match=r"photo is 48x80 .* scan .* 48x96"):
        calibrate(scan, image[:, :80], library=lib)
    bad = scan.copy()
    bad.coords["energy"].attrs["units"] = "eV"
    with pytest.raises(EnergyAxisError, match="field 'energy': units must be 'keV'"):
        calibrate(bad, image, library=lib)
    neg = scan.astype(np.float64).copy()
    neg[0, 0, 5] = -1.0
    with pytest.raises(GanxError, match="field 'counts': 1 negative"):
        calibrate(neg, image, library=lib)
    nan = scan.astype(np.float64).copy()
    nan[3, 3, 7] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, img=nan.values, energy=nan.energy.values)
    with pytest.raises(GanxError, match=r"nan\.npz: field 'counts': 1 NaN"):
        calibrate(path, image, library=lib)
    # a library without lead or arsenic cannot explain Pb L / As K
    small = g.default_library().select(["chalk", "azurite", "yellow ochre", "zinc white"])
    with pytest.raises(PigmentError, match=r"no pigment that explains the line.*Pb L"):
        calibrate(scan, image, library=small)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.npz"]  # nothing written


def test_unreadable_calibration_files(tmp_path, cal):
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON"):
        Calibration.from_json(p)
    d = cal.to_dict()
    del d["colour_model"]
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"broken\.json: field 'colour_model' is missing"):
        Calibration.from_json(p)
    d = cal.to_dict()
    d["energy"]["gain"] = "x"
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"field 'energy.gain' must be a number"):
        Calibration.from_json(p)
    with pytest.raises(ConfigError, match="missing.json: cannot read"):
        Calibration.from_json(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match=r"broken\.json"):
        g.generate(np.zeros((8, 8, 3), np.uint8), seed=0, calibration=p)


def test_backgrounds_are_named_and_normalised(truth):
    spec = truth.background_spectra(AXIS)
    assert spec.shape == (len(BACKGROUNDS), AXIS.n)
    np.testing.assert_allclose(spec.sum(axis=1), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spec[0, 100] == pytest.approx(spec[0, 600], rel=0.01)  # flat shelf


def test_cli_calibrate_then_generate_batch(scan, image, lib, tmp_path, capsys):
    import imageio.v3 as iio

    from ganx_dask.cli import main
    from ganx_dask.pigments.formats import write_library
    from ganx_dask.store import open_cube

    npz = tmp_path / "scan.npz"
    np.savez(npz, img=scan.values, energy=scan.energy.values)
    photo = tmp_path / "photo.png"
    iio.imwrite(photo, image)
    libfile = tmp_path / "lib.json"
    write_library(lib, libfile)
    out = tmp_path / "cal.json"
    # a photo of another size: one-line error naming the file, nothing written
    small = tmp_path / "small.png"
    iio.imwrite(small, image[:10])
    assert main(["calibrate", str(npz), "--rgb", str(small), "-o", str(out)]) == 1
    assert "small.png: photo is 10x96" in capsys.readouterr().err
    assert not out.exists()
    assert main(["calibrate", str(npz), "--rgb", str(photo), "-o", str(out), "--library",
                 str(libfile), "--instrument", "lab-rh", "--plot", str(tmp_path / "fit.png"),
                 "--groups", str(len(RGB))]) == 0
    assert "wrote" in capsys.readouterr().out
    cal = Calibration.from_json(out)
    assert cal.energy["gain"] == pytest.approx(AXIS.width, rel=0.002)
    assert (tmp_path / "fit.png").exists()
    store = tmp_path / "gen.zarr"
    assert main(["generate", str(photo), "-o", str(store), "--calibration", str(out),
                 "--library", str(libfile), "--n-start", str(len(RGB)), "--delta", "0",
                 "--no-progress"]) == 0
    ds = open_cube(store)
    assert decode(ds.attrs)["parameters"]["calibration"]["out_of_gamut"] == []
    assert decode(ds.attrs)["instrument"]["fano"] == pytest.approx(cal.instrument.fano)
    assert int(ds.counts.sum()) == pytest.approx(float(scan.sum()), rel=0.02)
    bstore = tmp_path / "batch.zarr"
    assert main(["batch", str(photo), "-o", str(bstore), "--calibration", str(out),
                 "--library", str(libfile), "--n-start", str(len(RGB)), "--delta", "0"]) == 0
