"""Data model of the pigment library (:mod:`ganx_dask.pigments.model`)."""

import numpy as np
import pytest

from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import PigmentError
from ganx_dask.pigments.model import Layer, MeasuredSpectrum, Pigment, PigmentLibrary


def _measured(counts=None, lo=0.0, hi=40.0, source="test.csv"):
    c = np.asarray(counts if counts is not None else np.arange(1.0, 401.0))
    return MeasuredSpectrum(np.linspace(lo, hi, c.size + 1), c, source)


def _computed(name="chalk", formula="CaCO3", rgb=(240, 238, 228), **kw):
    return Pigment.from_formula(name, formula, rgb, density=2.71, **kw)


@pytest.mark.parametrize("counts, msg", [
    ([1.0, -1.0, 2.0], "negative"), ([1.0, np.nan, 2.0], "NaN"), ([0.0, 0.0, 0.0], "all zero"),
    ([1.0, np.inf, 1.0], "NaN or infinite"),
])
def test_bad_measured_spectrum(counts, msg):
    with pytest.raises(PigmentError, match=msg) as err:
        _measured(counts)
    assert "test.csv" in str(err.value)


def test_measured_edges_must_match():
    with pytest.raises(PigmentError, match="n\\+1"):
        MeasuredSpectrum(np.linspace(0, 1, 5), np.ones(5), "x")
    with pytest.raises(PigmentError, match="increasing"):
        MeasuredSpectrum(np.array([0.0, 2.0, 1.0]), np.ones(2), "x")


@pytest.mark.parametrize("formula", ["Qz2O", "Pb3(O4", "CaCO3··"])
def test_from_formula_bad_formula_names_it(formula):
    with pytest.raises(PigmentError) as err:
        _computed("bad", formula)
    assert formula in str(err.value) and "'bad'" in str(err.value)


def test_from_formula_mixture_normalised():
    p = Pigment.from_formula("ochre", {"FeO(OH)": 2.0, "SiO2": 2.0}, (200, 120, 30), density=3)
    assert p.composition == {"FeO(OH)": 0.5, "SiO2": 0.5} and p.formula is None
    assert _computed().formula == "CaCO3"


@pytest.mark.parametrize("kw, msg", [
    (dict(rgb=(256, 0, 0)), "RGB"), (dict(rgb=(1, 2)), "RGB"), (dict(rgb=(1.5, 2, 3)), "RGB"),
    (dict(name=" "), "name"), (dict(composition=None), "composition or a measured"),
    (dict(density=0), "density"), (dict(composition={"CaCO3": -1.0}), "mass fractions"),
])
def test_pigment_validation(kw, msg):
    args = dict(name="p", rgb=(1, 2, 3), composition={"CaCO3": 1.0}, density=2.7)
    args.update(kw)
    with pytest.raises(PigmentError, match=msg):
        Pigment(**args)


def test_library_protocol_and_duplicates():
    a = _computed("chalk", aliases=("Chalk White",))
    b = Pigment("measured red", (200, 10, 10), measured=_measured())
    lib = PigmentLibrary([a, b], name="t", version="1")
    assert len(lib) == 2 and lib.names == ["chalk", "measured red"]
    assert [p.name for p in lib] == lib.names and lib[1] is b and lib["CHALK_WHITE"] is a
    assert "chalk white" in lib and "nothing" not in lib
    with pytest.raises(KeyError, match="nothing"):
        lib["nothing"]
    for dup in (_computed("Chalk"), _computed("x", aliases=("chalk white",))):
        with pytest.raises(PigmentError, match="duplicate"):
            lib.add(dup)
    assert len(lib) == 2
    with pytest.raises(PigmentError, match="duplicate"):
        PigmentLibrary([a, _computed("CHALK")])
    with pytest.raises(PigmentError, match="Pigment"):
        lib.add("chalk")
    sub = lib.select(["measured red"])
    assert sub.names == ["measured red"] and len(lib) == 2
    cp = lib.copy(name="other")
    cp.add(_computed("gypsum", "CaSO4·2H2O"))
    assert len(lib) == 2 and cp.name == "other"


def test_spectra_mixed_library():
    lib = PigmentLibrary([_computed(), Pigment("m", (1, 2, 3), measured=_measured())])
    ax = EnergyAxis(0.5, 38.5, 256)
    s = lib.spectra(ax)
    assert s.dims == ("pigment", "energy") and list(s.pigment.values) == ["chalk", "m"]
    np.testing.assert_allclose(s.sum("energy").values, 1.0)
    np.testing.assert_allclose(s.energy.values, ax.centres)
    # measured: rebinned conserving counts -> proportional to the source density
    m = s.sel(pigment="m").values
    assert np.all(np.diff(m) > 0)
    s2 = lib.spectra(ax.centres)  # bin centres accepted too
    np.testing.assert_allclose(s2.values, s.values)
    rgb = lib.rgb
    assert rgb.values.tolist() == [[240, 238, 228], [1, 2, 3]]


def test_measured_outside_axis_is_pigment_error():
    p = Pigment("m", (1, 2, 3), measured=_measured(lo=40.0, hi=50.0, source="far.mca"))
    with pytest.raises(PigmentError, match="far.mca"):
        p.spectrum("0.5:38.5:64")


def test_layer_stack_pigment():
    g = Layer({"CaSO4·2H2O": 1.0}, 2.32, None, "gypsum")
    p = _computed("thin chalk", thickness_um=5.0, ground=(g,))
    assert p.ground == (g,)
    y = p.spectrum("0.5:38.5:128")
    assert y.sum() == pytest.approx(1.0) and np.all(y >= 0)
    with pytest.raises(PigmentError, match=r"ground\[0\].*Zz2O"):
        _computed("bad ground", thickness_um=5.0, ground=(Layer({"Zz2O": 1.0}, 2.0),))
    with pytest.raises(PigmentError, match="thickness"):
        _computed("bad thick", thickness_um=-1.0).spectrum("0.5:38.5:64")


def test_spectra_default_to_the_library_instrument():
    # A pigment without precomputed components in a library whose reference instrument is not
    # lab-rh must be rendered for that instrument (what generate() records), not for lab-rh.
    p = _computed()
    lib = PigmentLibrary([p], name="user", instrument="portable-ag")
    ax = EnergyAxis(0.5, 38.5, 256)
    got = lib.spectra(ax).values
    np.testing.assert_allclose(got, lib.spectra(ax, "portable-ag").values, rtol=0, atol=0)
    lab = PigmentLibrary([p], name="user").spectra(ax).values
    assert np.abs(got - lab).sum() > 0.05  # Ag vs Rh tube: clearly different spectra


@pytest.mark.parametrize("kw, msg", [
    (dict(thickness_um=0.0), "thickness_um"), (dict(thickness_um=float("nan")), "thickness_um"),
    (dict(thickness_um=5.0, ground=(Layer({"CaCO3": 1.0}, -1.0),)), r"ground\[0\].*density"),
    (dict(thickness_um=5.0, ground=(Layer({"CaCO3": 1.0}, 2.7, 0.0),)), r"ground\[0\].*thickness"),
    (dict(thickness_um=5.0, ground=({"CaCO3": 1.0},)), r"ground\[0\].*Layer"),
])
def test_invalid_stratigraphy_rejected_at_construction(kw, msg):
    # rejected before the pigment can enter a library (and a file that could not be read back)
    args = dict(name="p", rgb=(1, 2, 3), composition={"CaCO3": 1.0}, density=2.7)
    args.update(kw)
    with pytest.raises(PigmentError, match=msg):
        Pigment(**args)


def test_spectra_on_a_non_uniform_axis_keep_the_given_centres():
    from ganx_dask.pigments import default_library

    lib = default_library().select(["vermilion", "azurite"])
    centres = np.concatenate([np.linspace(1.0, 10.0, 60), np.linspace(10.5, 30.0, 30)])
    sp = lib.spectra(centres)
    assert sp.shape == (2, 90)
    np.testing.assert_array_equal(sp.energy.values, centres)
    np.testing.assert_allclose(sp.sum("energy").values, 1.0, rtol=1e-12)
    # Hg La (9.99 keV) peaks in the vermilion row, Cu Ka (8.05 keV) in the azurite row
    assert abs(float(sp.energy[int(sp.sel(pigment="azurite").argmax())]) - 8.05) < 0.3
