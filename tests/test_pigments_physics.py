"""Physics of the pigment spectra (:mod:`ganx_dask.pigments.physics`)."""

import json
import math

import numpy as np
import pytest
import xraylib as xl

from ganx_dask.errors import ConfigError, PigmentError
from ganx_dask.pigments.model import Layer, Pigment
from ganx_dask.pigments.physics import (
    PRESETS,
    Instrument,
    SpectrumComponents,
    compute_components,
    detector_efficiency,
    element_mass_fractions,
    fwhm_kev,
    line_response,
    parse_formula,
    pigment_spectrum,
    render,
    render_many,
    solid_angle_sr,
    tube_spectrum,
    validate_composition,
)

EDGES_2048 = np.linspace(0.5, 38.5, 2049)


def _pig(name, formula, density, **kw):
    return Pigment.from_formula(name, formula, (10, 20, 30), density=density, **kw)


def _line(comps, label):
    i = comps.line_label.index(label)
    return comps.line_energy[i], comps.line_intensity[i]


# ---- instrument ------------------------------------------------------------------------------
def test_instrument_defaults_and_roundtrip():
    inst = Instrument()
    assert (inst.anode, inst.kv, inst.incidence_deg, inst.takeoff_deg) == ("Rh", 40.0, 45.0, 45.0)
    assert inst.det_area_mm2 == 50.0 and inst.scattering_angle_deg == 90.0
    d = json.loads(json.dumps(inst.to_dict()))
    assert Instrument.from_dict(d) == inst
    al = Instrument(filters=[("Al", 100)])
    assert al.filters == (("Al", 100.0),)
    assert Instrument.from_dict(json.loads(json.dumps(al.to_dict()))) == al
    assert hash(Instrument(kv=40)) == hash(Instrument()) and al != inst
    assert Instrument.preset("lab-rh") == inst  # name is a label, not compared


@pytest.mark.parametrize("bad, field", [
    (dict(anode="Xx"), "anode"), (dict(kv=-1), "kv"), (dict(kv=300), "kv"),
    (dict(det_si_um=0), "det_si_um"), (dict(tail_fraction=0.7, shelf_fraction=0.5), "tail"),
    (dict(filters=[("Qq", 10.0)]), "filters"), (dict(incidence_deg=95), "incidence_deg"),
    (dict(noise_fwhm_kev=float("nan")), "noise_fwhm_kev"),
])
def test_instrument_rejects_bad_values(bad, field):
    with pytest.raises(ConfigError, match=field):
        Instrument(**bad)


def test_instrument_from_dict_unknown_key_and_preset():
    with pytest.raises(ConfigError, match="kvv"):
        Instrument.from_dict({"kvv": 40})
    with pytest.raises(ConfigError, match="nope"):
        Instrument.preset("nope")
    assert {"lab-rh", "portable-ag"} <= set(PRESETS)
    assert Instrument.preset("portable-ag").anode == "Ag"
    assert Instrument.preset("portable-ag") != Instrument.preset("lab-rh")


def test_fwhm_and_solid_angle():
    # ~140 eV at Mn Ka with the default 0.1 keV noise FWHM (pitfall 7)
    assert 0.138 < fwhm_kev(5.8987) < 0.146
    assert fwhm_kev(0.0) == pytest.approx(0.08)
    assert fwhm_kev(5.8987, Instrument(noise_fwhm_kev=0.1)) == pytest.approx(0.153, abs=1e-3)
    assert np.all(np.diff(fwhm_kev(np.linspace(1, 30, 10))) > 0)
    # exact disc: 12 % below A/d² at 50 mm², 10 mm (pitfall 4)
    om = solid_angle_sr(Instrument())
    assert om == pytest.approx(2 * math.pi * (1 - 10 / math.sqrt(100 + 50 / math.pi)))
    assert 0.86 < om / (50 / 100) < 0.90


def test_detector_efficiency_shape():
    eff = detector_efficiency(np.array([1.0, 5.0, 10.0, 30.0]))
    assert np.all((eff >= 0) & (eff <= 1))
    assert eff[1] > 0.95 and eff[0] < eff[1] and eff[3] < eff[2]  # Be cut-off, Si thinning


# ---- formulas --------------------------------------------------------------------------------
@pytest.mark.parametrize("hydrate", ["CaSO4·2H2O", "CaSO4*2H2O", "CaSO4.2H2O", "CaSO4•2H2O"])
def test_hydrate_notation(hydrate):
    assert parse_formula(hydrate) == parse_formula("CaSO4(H2O)2")


def test_double_salt_and_decimals():
    lw = parse_formula("2PbCO3·Pb(OH)2")
    assert lw == pytest.approx(parse_formula("Pb3C2O8H2"))
    assert parse_formula("CdS0.4Se0.6")[34] == pytest.approx(0.6)
    w = element_mass_fractions({"CaCO3": 1.0})
    assert sum(w.values()) == pytest.approx(1.0) and w[20] == pytest.approx(0.4004, abs=1e-3)


@pytest.mark.parametrize("formula", ["Xx2O3", "Pb3O4)", "", "CaSO4·"])
def test_bad_formula_names_it(formula):
    with pytest.raises(PigmentError, match="formula"):
        validate_composition({formula: 1.0}, "pigment 'p'")
    with pytest.raises(PigmentError, match=r"pigment 'bad'"):
        _pig("bad", formula or " ", 2.0)


def test_bad_mass_fractions():
    with pytest.raises(PigmentError, match="CaCO3"):
        validate_composition({"CaCO3": -1.0}, "x")
    with pytest.raises(PigmentError, match="sum to zero"):
        validate_composition({"CaCO3": 0.0}, "x")


# ---- tube ------------------------------------------------------------------------------------
def test_tube_spectra():
    rh = tube_spectrum(Instrument())
    assert rh.box_hi.max() == pytest.approx(40.0) and np.all(rh.box_intensity >= 0)
    e, _ = rh.line_energy, rh.line_intensity
    assert np.any(np.isclose(e, xl.LineEnergy(45, xl.KL3_LINE)))
    w = tube_spectrum(Instrument(anode="W", kv=40))  # K edge 69.5 keV: only L lines
    assert all(" L" in lab for lab in w.line_label)
    i_la = w.line_intensity[w.line_label.index("W L3M5")]
    i_lb = w.line_intensity[w.line_label.index("W L2M4")]
    assert i_la > i_lb
    al = tube_spectrum(Instrument(filters=(("Al", 200.0),)))
    low = rh.box_lo < 5
    assert al.box_intensity[low].sum() < 0.2 * rh.box_intensity[low].sum()


# ---- components ------------------------------------------------------------------------------
def test_components_roundtrip_json():
    c = compute_components(_pig("azurite", "Cu3(CO3)2(OH)2", 3.8))
    d = json.loads(json.dumps(c.to_dict()))
    c2 = SpectrumComponents.from_dict(d)
    assert c2.line_label == c.line_label and c2.instrument == c.instrument
    # 7 significant digits in the file
    np.testing.assert_allclose(render(c2, EDGES_2048), render(c, EDGES_2048), rtol=1e-4)
    with pytest.raises(PigmentError, match="lines"):
        SpectrumComponents.from_dict({"continuum": {}})


def test_k_alpha_beta_thin_film_matches_xraylib_rates():
    # a thin film has no self-absorption: after detector/air correction the Ka/Kb ratio is xraylib's
    inst = Instrument()
    film = _pig("zn film", "ZnO", 5.6, thickness_um=0.01)
    c = compute_components(film, inst)
    ka = sum(_line(c, f"Zn {n}")[1] for n in ("KL2", "KL3"))
    kb = sum(_line(c, f"Zn {n}")[1] for n in ("KM2", "KM3"))
    eff = detector_efficiency(np.array([8.63, 9.57]), inst)
    rate = (xl.RadRate(30, xl.KL2_LINE) + xl.RadRate(30, xl.KL3_LINE)) / (
        xl.RadRate(30, xl.KM2_LINE) + xl.RadRate(30, xl.KM3_LINE))
    assert (ka / eff[0]) / (kb / eff[1]) == pytest.approx(rate, rel=0.05)


def test_scatter_only_pigments():
    for p in (_pig("indigo", "C16H10N2O2", 1.2), _pig("carbon", "C", 1.8)):
        c = compute_components(p)
        fluo = [e for e, lab in zip(c.line_energy, c.line_label, strict=True)
                if "Rayleigh" not in lab and "Compton" not in lab]
        assert all(e < 0.6 for e in fluo)  # only C, N, O K lines (O Ka 0.525 keV)
        y = pigment_spectrum(p, "0.5:38.5:1024")
        assert np.all(np.isfinite(y)) and np.all(y >= 0) and y.sum() > 0
        s = p.spectrum("0.5:38.5:1024")
        assert s.sum() == pytest.approx(1.0)
        centres = np.linspace(0.5, 38.5, 1025)[:-1] + 38 / 2048
        assert abs(centres[np.argmax(s)] - 19.45) < 0.3  # Rh Ka Compton peak dominates


def test_paint_over_gypsum_shows_attenuated_ground():
    ground = (Layer({"CaSO4·2H2O": 1.0}, 2.32, None, "gypsum"),)
    ca = []
    for t in (1.0, 5.0, 20.0):
        c = compute_components(_pig("azurite", "Cu3(CO3)2(OH)2", 3.8, thickness_um=t,
                                    ground=ground))
        ca.append(_line(c, "Ca KL3")[1] / c.total)
        if t == 1.0:
            assert _line(c, "S KL3")[1] > 0.01 * c.total
    thick = compute_components(_pig("azurite", "Cu3(CO3)2(OH)2", 3.8))
    assert "Ca KL3" not in thick.line_label
    assert ca[0] > ca[1] > ca[2] > 0
    # Beer-Lambert: Ca Ka through the azurite layer, both ways (incident part bounded below)
    mu_out = xl.CS_Total_CP("Cu3(CO3)2(OH)2", 3.69) * 3.8 * 1e-4 / math.sin(math.pi / 4)
    assert ca[1] / ca[0] < math.exp(-mu_out * 4.0) * 1.2


def test_escape_peaks_present_and_switchable():
    p = _pig("zinc white", "ZnO", 5.6)
    c = compute_components(p)
    e, i = _line(c, "Zn KL3 Si-esc")
    assert e == pytest.approx(xl.LineEnergy(30, xl.KL3_LINE) - 1.7398, abs=1e-3)
    assert 1e-4 < i / _line(c, "Zn KL3")[1] < 1e-2
    c2 = compute_components(p, Instrument(escape=False))
    assert not any("esc" in lab for lab in c2.line_label)


def test_presets_differ_ag_lines_in_scatter():
    p = _pig("chalk", "CaCO3", 2.71)
    rh = compute_components(p, "lab-rh")
    ag = compute_components(p, "portable-ag")
    assert any(lab.startswith("Ag K") and "Rayleigh" in lab for lab in ag.line_label)
    assert not any(lab.startswith("Rh") for lab in ag.line_label)
    assert any(lab.startswith("Rh K") and "Compton" in lab for lab in rh.line_label)
    s_rh = p.spectrum("0.5:38.5:1024", "lab-rh")
    s_ag = p.spectrum("0.5:38.5:1024", Instrument.preset("portable-ag"))
    assert np.abs(s_rh - s_ag).sum() > 0.05


def test_pigment_spectrum_fast_path_uses_precomputed():
    p = _pig("malachite", "Cu2CO3(OH)2", 4.0)
    p._components = compute_components(p)
    y0 = pigment_spectrum(p, "0.5:38.5:512")
    y1 = pigment_spectrum(p, "0.5:38.5:512", Instrument())
    np.testing.assert_array_equal(y0, y1)
    y2 = pigment_spectrum(p, "0.5:38.5:512", Instrument(noise_fwhm_kev=0.2))
    assert not np.allclose(y0, y2)


def test_render_many_equals_render():
    ps = [_pig("a", "PbCrO4", 6.1), _pig("b", "HgS", 8.1), _pig("c", "C", 1.8)]
    cs = [compute_components(p) for p in ps]
    many = render_many(cs, EDGES_2048)
    for row, c in zip(many, cs, strict=True):
        np.testing.assert_allclose(row, render(c, EDGES_2048), rtol=1e-9, atol=1e-12 * row.max())


def test_continuum_box_rendering_conserves_and_is_smooth():
    c = compute_components(_pig("chalk", "CaCO3", 2.71))
    only_boxes = SpectrumComponents([], [], [], [], c.box_lo, c.box_hi, c.box_intensity,
                                    c.instrument)
    y = render(only_boxes, np.linspace(0.0, 45.0, 4501))
    assert y.sum() == pytest.approx(c.box_intensity.sum(), rel=1e-6)
    # no comb ripple (pitfall 6): second differences small in the smooth 25-30 keV region
    seg = y[2500:3000]
    assert np.max(np.abs(np.diff(seg, 2))) < 0.01 * seg.max()


# ---- detector response: tail and shelf (issue 7 item 3) ---------------------------------------
def test_tail_and_shelf_fractions_equal_parameters():
    inst = Instrument(tail_fraction=0.02, tail_slope_sigma=2.5, shelf_fraction=0.002)
    e0 = 10.0
    edges = np.linspace(0.0, 14.0, 14001)
    parts = line_response(e0, edges, inst)
    assert parts["tail"].sum() == pytest.approx(0.02, rel=1e-6)
    assert parts["shelf"].sum() == pytest.approx(0.002, rel=1e-4)
    assert parts["gaussian"].sum() == pytest.approx(1 - 0.022, rel=1e-9)
    single = SpectrumComponents([e0], [1.0], ["test"], [0.0], [], [], [], inst)
    y = render(single, edges, inst)
    total = sum(v[0] for v in parts.values())
    np.testing.assert_allclose(y, total, atol=1e-12)
    # independent check: counts far below the peak = flat shelf + exponential tail
    sig = fwhm_kev(e0, inst) / 2.3548
    beta = 2.5 * sig
    cut = e0 - 10 * sig
    below = y[edges[1:] <= cut].sum()
    expect_shelf = 0.002 * cut / e0
    expect_tail = 0.02 * math.exp(-10 * sig / beta + 0.5 * (sig / beta) ** 2)
    assert below == pytest.approx(expect_shelf + expect_tail, rel=0.01)
    # the shelf is flat: per-keV density at E0/4 and E0/2 equal f_shelf/E0
    dens = y / np.diff(edges)
    for e in (2.5, 5.0):
        assert dens[int(e * 1000)] == pytest.approx(0.002 / e0, rel=0.02)


def test_pure_gaussian_without_tail_and_shelf():
    inst = Instrument(tail_fraction=0.0, shelf_fraction=0.0, escape=False)
    edges = np.linspace(0, 20, 4001)
    y = render(SpectrumComponents([8.0], [1.0], ["x"], [0.0], [], [], [], inst), edges, inst)
    c = 0.5 * (edges[1:] + edges[:-1])
    mean = (y * c).sum()
    sd = math.sqrt((y * (c - mean) ** 2).sum())
    assert y.sum() == pytest.approx(1.0)
    assert mean == pytest.approx(8.0, abs=1e-6)
    assert sd * 2.3548 == pytest.approx(fwhm_kev(8.0, inst), rel=1e-3)


def test_parse_formula_result_is_a_private_copy():
    # parse_formula is cached: mutating a returned dict must not change later results
    first = parse_formula("PbCO3")
    first[82] = 99.0
    first[1] = 1.0
    assert parse_formula("PbCO3") == pytest.approx({82: 1.0, 6: 1.0, 8: 3.0})


def _scalar_fp_line(z, line, layers, inst):
    """Independent primary-fluorescence rate of one line with scalar xraylib calls.

    ``layers``: (mass fractions, density g/cm³, thickness µm or None) top first; the line's
    element is in the last layer."""
    tube = tube_spectrum(inst)
    e_in = np.concatenate([tube.line_energy, 0.5 * (tube.box_lo + tube.box_hi)])
    w_in = np.concatenate([tube.line_intensity, tube.box_intensity])
    air = {7: 0.7553, 8: 0.2318, 18: 0.0128, 6: 0.0001}

    def mu(comp, e):
        return sum(f * xl.CS_Total(int(k), float(e)) for k, f in comp.items())

    def t_air(e):
        return math.exp(-mu(air, e) * 0.0012048 * inst.air_cm)

    sa = math.sin(math.radians(inst.incidence_deg))
    sb = math.sin(math.radians(inst.takeoff_deg))
    e_l = xl.LineEnergy(z, line)
    comp, rho, th = layers[-1]
    total = 0.0
    for e, w in zip(e_in, w_in, strict=True):
        try:
            cs = xl.CS_FluorLine_Kissel_Cascade(z, line, float(e))
        except ValueError:  # below the edge
            continue
        chi = mu(comp, e) / sa + mu(comp, e_l) / sb
        depth = 1.0 / chi if th is None else -math.expm1(-chi * rho * th * 1e-4) / chi
        above = math.prod(math.exp(-(mu(c, e) / sa + mu(c, e_l) / sb) * r * t * 1e-4)
                          for c, r, t in layers[:-1])
        total += w * t_air(e) * comp[z] * cs / sa * depth * above
    det = math.exp(-xl.CS_Total(4, e_l) * 1.848 * inst.det_be_um * 1e-4) * (
        1 - math.exp(-xl.CS_Photo(14, e_l) * 2.33 * inst.det_si_um * 1e-4))
    return total * solid_angle_sr(inst) / (4 * math.pi) * t_air(e_l) * det


def test_fluorescence_matches_independent_scalar_fp_in_a_stack():
    # Zn K-alpha1 of a zinc-white ground under 50 µm chalk under 10 µm azurite, Cu K-alpha1 of
    # the azurite: the vectorised model equals a plain scalar-xraylib evaluation of the
    # documented formula (incidence/take-off angles, finite/infinite layers, air, detector).
    inst = Instrument(escape=False, incidence_deg=60.0, takeoff_deg=40.0)
    azur, chalk, zinc = ({"Cu3(CO3)2(OH)2": 1.0}, 3.8, 10.0), ({"CaCO3": 1.0}, 2.71, 50.0), (
        {"ZnO": 1.0}, 5.6, None)
    pig = _pig("stack", azur[0], azur[1], thickness_um=azur[2],
               ground=[Layer(chalk[0], chalk[1], chalk[2], "chalk"), Layer(zinc[0], zinc[1])])
    c = compute_components(pig, inst)
    lay = [(element_mass_fractions(cmp), r, t) for cmp, r, t in (azur, chalk, zinc)]
    for label, z, layers in (("Zn KL3", 30, lay), ("Cu KL3", 29, lay[:1])):
        assert _line(c, label)[1] == pytest.approx(
            _scalar_fp_line(z, xl.KL3_LINE, layers, inst), rel=1e-9)


@pytest.mark.parametrize("formula", ["CaSO4.0.5H2O", "CaSO4·0.5H2O", "CaSO4*0.5H2O"])
def test_decimal_hydrate_multiplier(formula):
    # bassanite (plaster): the "." of "0.5" is a decimal point, not another separator
    assert parse_formula(formula) == pytest.approx({20: 1.0, 16: 1.0, 8: 4.5, 1: 1.0})
