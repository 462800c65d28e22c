"""Excitation sources beyond the X-ray tube: monochromatic (polarised) beams and user spectra."""

import json
import math

import numpy as np
import pytest
import xraylib as xl

from ganx_dask.errors import ConfigError
from ganx_dask.pigments.model import Layer, Pigment, sample_components, sample_spectrum
from ganx_dask.pigments.physics import (
    PRESETS,
    Instrument,
    _acceptance_nodes,
    compute_components,
    render,
    source_spectrum,
    tube_spectrum,
)

EDGES = np.linspace(0.5, 38.5, 2049)
WATER_CO = {"H2O": 1.0, "Co": 5e-4}


def _line(comps, label):
    return comps.line_intensity[comps.line_label.index(label)]


def _tiny(**kw):
    """Monochromatic 16 keV with a point-like detector (acceptance ≈ 0.006°)."""
    return Instrument(excitation_kev=16.0, det_area_mm2=0.01, det_distance_mm=100.0, **kw)


# ---- API -------------------------------------------------------------------------------------
def test_new_fields_roundtrip_and_old_json_unchanged():
    old = Instrument().to_dict()
    assert not {"excitation_kev", "excitation_spectrum", "polarisation_degree",
                "polarisation_azimuth_deg"} & set(old)  # tube JSON as before these fields
    for inst in (PRESETS["synchrotron-16kev"],
                 Instrument(excitation_spectrum=[(10.0, 1.0), (10.5, 2.0), (17.48, 3.0, 1)],
                            polarisation_degree=0.5, polarisation_azimuth_deg=90)):
        d = json.loads(json.dumps(inst.to_dict()))
        assert Instrument.from_dict(d) == inst and hash(Instrument.from_dict(d)) == hash(inst)
    assert PRESETS["synchrotron-16kev"].source == "monochromatic" and Instrument().source == "tube"


@pytest.mark.parametrize("kw, field", [
    (dict(excitation_kev=0.5), "excitation_kev"),
    (dict(excitation_kev="x"), "excitation_kev"),
    (dict(excitation_kev=16.0, excitation_spectrum=[(16.0, 1.0, 1)]), "excitation_spectrum"),
    (dict(excitation_spectrum=[(10.0, 1.0)]), "excitation_spectrum"),
    (dict(excitation_spectrum=[(10.0, -1.0), (11.0, 1.0)]), "excitation_spectrum"),
    (dict(excitation_spectrum=[(10.0, 1.0), (10.0, 1.0), (11.0, 1.0)]), "excitation_spectrum"),
    (dict(excitation_spectrum=[(10.0, 1.0, 2)]), "excitation_spectrum"),
    (dict(polarisation_degree=1.5), "polarisation_degree"),
    (dict(polarisation_azimuth_deg=200), "polarisation_azimuth_deg"),
])
def test_bad_excitation_values_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        Instrument(**kw)


def test_excitation_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.txt"):
        Instrument(excitation_spectrum=tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("# E flux\n10 1\n11 abc\n")
    with pytest.raises(ConfigError, match=r"bad\.txt.*line 3"):
        Instrument(excitation_spectrum=str(bad))


# ---- monochromatic source --------------------------------------------------------------------
@pytest.mark.parametrize("alpha, beta", [(45.0, 45.0), (0.1, 89.9), (60.0, 60.0)])
def test_monochromatic_scatter_peaks_at_right_energies(alpha, beta):
    inst = Instrument(excitation_kev=16.0, incidence_deg=alpha, takeoff_deg=beta)
    c = sample_components(WATER_CO, 1.0, 100.0, instrument=inst)
    theta = math.radians(180.0 - alpha - beta)
    labs = [lab for lab in c.line_label if lab.startswith("beam") and "esc" not in lab]
    assert labs == ["beam 16 keV Rayleigh", "beam 16 keV Compton"]
    assert c.line_energy[c.line_label.index(labs[0])] == 16.0
    assert c.line_energy[c.line_label.index(labs[1])] == pytest.approx(
        xl.ComptonEnergy(16.0, theta), abs=1e-12)
    assert c.box_intensity.size == 0  # no continuum to scatter
    assert not any(lab.startswith("Rh") for lab in c.line_label)  # tube fields ignored
    # the rendered spectrum peaks at the Compton line and at the Co Kα line (500 ppm in water)
    y = render(c, EDGES)
    centres = 0.5 * (EDGES[1:] + EDGES[:-1])
    top = centres[np.argmax(y)]
    assert abs(top - xl.ComptonEnergy(16.0, theta)) < 0.1 or abs(top - 16.0) < 0.05
    win = (centres > 6.5) & (centres < 7.3)
    assert abs(centres[win][np.argmax(y[win])] - xl.LineEnergy(27, xl.KL3_LINE)) < 0.03
    # Co K is excited (16 keV > 7.7 keV edge); a 7 keV beam excites no Co K
    low = sample_components(WATER_CO, 1.0, 100.0, instrument=inst.replace(excitation_kev=7.0))
    assert not any(lab.startswith("Co K") for lab in low.line_label)
    assert any(lab.startswith("Co K") for lab in c.line_label)


def _kn_ratio(p: float) -> float:
    """In-plane / out-of-plane Compton intensity at θ = 90° (Klein–Nishina, polarisation P)."""
    k = xl.ComptonEnergy(16.0, math.pi / 2) / 16.0
    a, b = k + 1 / k - 2.0, k + 1 / k  # sin²θ cos²φ = 1 (in plane), 0 (perpendicular)
    return (0.5 * (1 + p) * a + 0.5 * (1 - p) * b) / (0.5 * (1 + p) * b + 0.5 * (1 - p) * a)


@pytest.mark.parametrize("p", [1.0, 0.9, 0.5])
def test_polarised_scatter_in_vs_out_of_plane_matches_thomson_and_klein_nishina(p):
    # 90° scattering; detector in (φ = 0) or perpendicular to (φ = 90°) the polarisation plane.
    # Same energies and attenuation: the ratio is the polarisation factor alone.  Thomson:
    # 1 − sin²θ cos²φ -> in/out = (1 − P)/(1 + P); Klein–Nishina: k + 1/k − 2 sin²θ cos²φ.
    c_in = sample_components(WATER_CO, 1.0, 100.0,
                             instrument=_tiny(polarisation_degree=p, polarisation_azimuth_deg=0))
    c_out = sample_components(WATER_CO, 1.0, 100.0,
                              instrument=_tiny(polarisation_degree=p, polarisation_azimuth_deg=90))
    r_ray = _line(c_in, "beam 16 keV Rayleigh") / _line(c_out, "beam 16 keV Rayleigh")
    r_com = _line(c_in, "beam 16 keV Compton") / _line(c_out, "beam 16 keV Compton")
    assert r_ray == pytest.approx((1 - p) / (1 + p), abs=1e-6)
    assert r_com == pytest.approx(_kn_ratio(p), rel=1e-3, abs=1e-6)
    # fluorescence is isotropic: unchanged
    assert _line(c_in, "Co KL3") == pytest.approx(_line(c_out, "Co KL3"), rel=1e-12)


def test_unpolarised_limit_equals_unpolarised_cross_sections():
    # P → 0 through the polarised path (DCSP mixed at φ and φ + 90°) = DCS_Rayl / DCS_Compt
    c0 = sample_components(WATER_CO, 1.0, 100.0, instrument=_tiny())
    c1 = sample_components(WATER_CO, 1.0, 100.0, instrument=_tiny(polarisation_degree=1e-12))
    for lab in ("beam 16 keV Rayleigh", "beam 16 keV Compton"):
        assert _line(c1, lab) == pytest.approx(_line(c0, lab), rel=1e-6)


def test_acceptance_average_of_thomson_factor_is_exact():
    # detector along the polarisation vector: Thomson factor 1 − cos²γ, averaged uniformly over
    # a cone of half-angle ψ: 1 − (1 + cos ψ + cos²ψ)/3
    for psi in (0.05, 0.2, 0.38):
        th, ph, w = _acceptance_nodes(math.pi / 2, 0.0, psi)
        assert w.sum() == pytest.approx(1.0)
        nx = np.sin(th) * np.cos(ph)
        c = math.cos(psi)
        assert float(w @ (1 - nx**2)) == pytest.approx(1 - (1 + c + c * c) / 3, rel=1e-10)


def test_synchrotron_preset_scatters_an_order_of_magnitude_less():
    inst = PRESETS["synchrotron-16kev"]
    pol = sample_components(WATER_CO, 1.0, 100.0, instrument=inst)
    unp = sample_components(WATER_CO, 1.0, 100.0, instrument=inst.replace(polarisation_degree=0))
    for lab in ("beam 16 keV Rayleigh", "beam 16 keV Compton"):
        assert _line(unp, lab) / _line(pol, lab) > 10.0
    # the finite acceptance (50 mm² at 20 mm) leaves more than a point detector would
    point = sample_components(WATER_CO, 1.0, 100.0,
                              instrument=inst.replace(det_area_mm2=0.01, det_distance_mm=100.0))
    ratio_pt = _line(point, "beam 16 keV Rayleigh") / _line(point, "beam 16 keV Compton")
    ratio = _line(pol, "beam 16 keV Rayleigh") / _line(pol, "beam 16 keV Compton")
    assert ratio > ratio_pt


# ---- user-given excitation spectrum ----------------------------------------------------------
def _tube_rows(inst):
    t = tube_spectrum(inst)
    rows = [(e, f, 1) for e, f in zip(t.line_energy, t.line_intensity, strict=True)]
    rows += [(e, f, 0) for e, f in zip(0.5 * (t.box_lo + t.box_hi), t.box_intensity, strict=True)]
    return rows


def _stack():
    gyp = Layer({"CaSO4·2H2O": 1.0}, density=2.32, thickness_um=None, name="gesso")
    return [Pigment.from_formula("lead white", "2PbCO3·Pb(OH)2", (1, 2, 3), density=6.14),
            Pigment.from_formula("az", "Cu3(CO3)2(OH)2", (1, 2, 3), density=3.8,
                                 thickness_um=10, ground=[gyp])]


@pytest.mark.parametrize("via_file", [False, True])
def test_excitation_spectrum_equal_to_tube_reproduces_tube(via_file, tmp_path):
    tube = Instrument()
    rows = _tube_rows(tube)
    if via_file:
        f = tmp_path / "rh40.txt"
        np.savetxt(f, np.array(rows, dtype=float), fmt="%.17g", header="energy_keV flux is_line")
        user = Instrument(excitation_spectrum=f)
    else:
        user = Instrument(excitation_spectrum=rows)
    assert user.source == "spectrum"
    src = source_spectrum(user)
    np.testing.assert_allclose(src.box_lo, tube_spectrum(tube).box_lo, rtol=1e-12)
    for p in _stack():
        y_t = render(compute_components(p, tube), EDGES)
        y_u = render(compute_components(p, user), EDGES, tube)
        np.testing.assert_allclose(y_u, y_t, rtol=1e-9, atol=1e-9 * y_t.max())


def test_sample_spectrum_renders_any_composition():
    inst = Instrument(excitation_kev=17.5, incidence_deg=0.1, takeoff_deg=89.9)
    y = sample_spectrum(WATER_CO, "1:20:512", 1.0, 100.0, instrument=inst)
    y2 = sample_spectrum({"H2O": 1.0, "Co": 1e-3}, "1:20:512", 1.0, 100.0, instrument=inst)
    centres = np.linspace(1, 20, 513)
    co = (centres[:-1] > 6.7) & (centres[:-1] < 7.1)
    assert y2[co].sum() / y[co].sum() == pytest.approx(2.0, rel=0.02)  # thin trace: linear
