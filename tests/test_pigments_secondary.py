"""Secondary fluorescence within a layer (:mod:`ganx_dask.pigments.physics`).

Checked against hand-derived cases: the closed-form thick-sample formula (Sherman; Shiraiwa &
Fujino 1966) for a binary Fe-Ni alloy and a brute-force double integral of the E1 slab kernel
for a thin paint layer over a ground; and against fisx (secondary=2) enhancements measured for
two pigment mixtures (notes of the project's physics evaluation, Rh 40 kV).
"""

import math

import numpy as np
import pytest
import xraylib as xl
from scipy import integrate, special

from ganx_dask.pigments import physics as ph
from ganx_dask.pigments.model import Layer, sample_components
from ganx_dask.pigments.physics import (
    Instrument,
    detector_efficiency,
    element_mass_fractions,
    secondary_geometry,
    solid_angle_sr,
)


def _line(c, label):
    return c.line_intensity[c.line_label.index(label)]


def _enhancement(comp, density, label, inst, **kw):
    on = sample_components(comp, density, instrument=inst.replace(secondary_fluorescence=True), **kw)
    off = sample_components(comp, density, instrument=inst.replace(secondary_fluorescence=False), **kw)
    return _line(on, label) - _line(off, label), _line(off, label)


def _brute_geometry(p, q, mu, t):
    """½ ∫∫ exp(−px) E1(μ|x−y|) exp(−qy) dx dy over [0, t]², split at the log singularity."""
    def f(y, x):
        return math.exp(-p * x - q * y) * special.exp1(mu * abs(x - y))
    lo, _ = integrate.dblquad(f, 0, t, 0, lambda x: x, epsabs=0, epsrel=1e-10)
    hi, _ = integrate.dblquad(f, 0, t, lambda x: x, t, epsabs=0, epsrel=1e-10)
    return 0.5 * (lo + hi)


def test_geometry_thick_limit_and_finite_layer_against_quadrature():
    for p, q, mu in [(50.0, 80.0, 30.0), (5000.0, 80.0, 30.0), (200.0, 20.0, 60.0)]:
        thick = 0.5 * (math.log1p(p / mu) / p + math.log1p(q / mu) / q) / (p + q)
        assert float(secondary_geometry(p, q, mu, math.inf)) == pytest.approx(thick, rel=1e-12)
        assert float(secondary_geometry(p, q, mu, 1e3)) == pytest.approx(thick, rel=1e-4)
    for p, q, mu, t in [(50.0, 80.0, 30.0, 0.01), (100.0, 60.0, 200.0, 0.002)]:
        assert float(secondary_geometry(p, q, mu, t)) == pytest.approx(
            _brute_geometry(p, q, mu, t), rel=1e-5)


def _hand_sf(inst, comp, rho_t, exciter, excited_z, excited_line, geometry):
    """Hand-derived SF of one line by every line of ``exciter`` (mono beam, single layer)."""
    w = element_mass_fractions(comp)
    e0 = inst.excitation_kev
    sa, sb = (math.sin(math.radians(a)) for a in (inst.incidence_deg, inst.takeoff_deg))
    mu = lambda e: sum(c * xl.CS_Total(z, e) for z, c in w.items())  # noqa: E731
    ej = xl.LineEnergy(excited_z, excited_line)
    edge = xl.EdgeEnergy(excited_z, xl.K_SHELL)
    total = 0.0
    for macro in ph._LINE_MACROS:
        try:
            ei = xl.LineEnergy(exciter, int(macro))
            s_i = xl.CS_FluorLine_Kissel_Cascade(exciter, int(macro), e0)
        except ValueError:
            continue
        if ei <= edge or s_i <= 0:
            continue
        s_j = xl.CS_FluorLine_Kissel_Cascade(excited_z, excited_line, ei)
        g = geometry(mu(e0) / sa, mu(ej) / sb, mu(ei), rho_t)
        total += w[exciter] * s_i * w[excited_z] * s_j * g / sa
    air = ph._air_transmission(inst, np.array([ej]))[0]
    total *= ph._air_transmission(inst, np.array([e0]))[0]  # beam's own air path
    return total * solid_angle_sr(inst) / (4 * math.pi) * air * detector_efficiency(ej, inst)[0]


def test_binary_alloy_fe_ni_matches_thick_sample_formula():
    # Fe-Ni 50/50, infinitely thick, 20 keV: Ni K lines (7.48, 8.26 keV) excite Fe K (7.11 keV)
    inst = Instrument(excitation_kev=20.0, escape=False)  # escape would take 0.3 % of Fe Kα
    comp = {"Fe": 0.5, "Ni": 0.5}
    sec, prim = _enhancement(comp, 7.9, "Fe KL3", inst)

    def thick(p, q, m, _):
        return 0.5 * (math.log1p(p / m) / p + math.log1p(q / m) / q) / (p + q)

    hand = _hand_sf(inst, comp, math.inf, 28, 26, xl.KL3_LINE, thick)
    assert sec == pytest.approx(hand, rel=1e-6)
    assert 0.2 < sec / prim < 0.5  # a large enhancement, as known for Fe-Ni alloys
    # Ni is not enhanced by Fe (Fe K lines lie below the Ni K edge)
    sec_ni, prim_ni = _enhancement(comp, 7.9, "Ni KL3", inst)
    assert sec_ni / prim_ni < 1e-3


def test_paint_layer_over_ground_matches_brute_force_integral():
    # 10 µm zinc white + ochre (Zn K excites Fe K) over an infinitely thick gypsum ground
    inst = Instrument(excitation_kev=17.0, escape=False)
    comp = {"ZnO": 0.5, "FeO(OH)": 0.5}
    gyp = Layer({"CaSO4·2H2O": 1.0}, density=2.32, thickness_um=None, name="gesso")
    rho, th = 4.0, 10.0
    sec, prim = _enhancement(comp, rho, "Fe KL3", inst, thickness_um=th, ground=[gyp])
    hand = _hand_sf(inst, comp, rho * th * 1e-4, 30, 26, xl.KL3_LINE, _brute_geometry)
    assert sec == pytest.approx(hand, rel=1e-4)
    # a thin layer loses part of the exciting radiation to the ground: less than when thick
    sec_thick, prim_thick = _enhancement(comp, rho, "Fe KL3", inst)
    assert 0 < sec / prim < sec_thick / prim_thick


@pytest.mark.parametrize("comp, density, label, fisx", [
    ({"2PbCO3·Pb(OH)2": 0.5, "Cu3(CO3)2(OH)2": 0.5}, 4.9, "Cu KL3", 0.12),
    ({"ZnO": 0.5, "FeO(OH)": 0.2, "Al2Si2O5(OH)4": 0.275, "SiO2": 0.02, "TiO2": 0.005}, 4.3,
     "Fe KL3", 0.30),
])
def test_pigment_mixtures_close_to_fisx(comp, density, label, fisx):
    sec, prim = _enhancement(comp, density, label, Instrument())
    assert sec / prim == pytest.approx(fisx, abs=0.06)


def test_pure_pigments_are_enhanced_little_and_default_is_on():
    assert Instrument().secondary_fluorescence is True
    sec, prim = _enhancement({"Cu3(CO3)2(OH)2": 1.0}, 3.8, "Cu KL3", Instrument())
    assert sec == 0.0  # nothing in azurite excites Cu K
    sec, prim = _enhancement({"PbCrO4": 1.0}, 6.1, "Cr KL3", Instrument())
    assert 0.0 < sec / prim < 0.2  # Pb L lines excite Cr K


def test_interpolation_over_incident_energies_is_accurate():
    # tube: the sum over ≈ 400 incident energies uses p·G at 32 log-spaced p values
    comp = {"Fe": 0.7, "Cr": 0.2, "Ni": 0.1}
    inst = Instrument()
    sec, _ = _enhancement(comp, 7.9, "Cr KL3", inst)
    try:
        ph._secondary_emission.__defaults__ = (100000,)  # every incident energy its own node
        ph._COMPONENT_CACHE.clear()
        exact, _ = _enhancement(comp, 7.9, "Cr KL3", inst)
    finally:
        ph._secondary_emission.__defaults__ = (ph._SF_P_NODES,)
        ph._COMPONENT_CACHE.clear()
    assert sec == pytest.approx(exact, rel=5e-3)
