"""Tests of ganx_dask.pigments.formats: our JSON library format, the ganX database, spectrum readers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest

from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import GanxError, PigmentError, StoreExistsError
from ganx_dask.pigments.formats import (
    FORMAT_NAME,
    library_to_dict,
    load_library,
    read_ganx_database,
    read_library,
    read_spectrum,
    write_ganx_database,
    write_library,
)
from ganx_dask.pigments.model import Layer, MeasuredSpectrum, Pigment, PigmentLibrary

DATA = Path(__file__).parent / "data"
E_INT = (0.5, 38.5)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _peaky(x: np.ndarray, lines: list[tuple[float, float]], bg: float = 1.0) -> np.ndarray:
    y = bg * np.exp(-x / 20.0)
    for e, a in lines:
        y = y + a * np.exp(-0.5 * ((x - e) / 0.07) ** 2)
    return y


def _measured(name, rgb, lines, *, n=700, lo=0.0, hi=41.0, aliases=()):
    edges = np.linspace(lo, hi, n + 1)
    c = 0.5 * (edges[1:] + edges[:-1])
    return Pigment(name, rgb, measured=MeasuredSpectrum(edges, _peaky(c, lines), source=f"{name}.h5"),
                   aliases=aliases, rgb_source="test", provenance={"by": "test", "n": n})


def _small_library() -> PigmentLibrary:
    return PigmentLibrary(
        [
            _measured("Vermilion", (227, 66, 52), [(9.99, 100), (11.82, 60)], aliases=("cinnabar",)),
            _measured("lead white", (240, 235, 229), [(10.55, 80), (12.61, 70)], n=1500),
            _measured("Azurite", (0, 127, 255), [(8.05, 100), (8.90, 15)], lo=0.2, hi=39.0),
        ],
        name="small",
        version="3",
        description="three measured pigments",
    )


def _ganx_reference(x: np.ndarray, y: np.ndarray, rebin_size: int) -> np.ndarray:
    """ganx 0.0.2's PigmentDataBaseUtils.get_distr_from_infraart_h5, re-stated."""

    def index(en):  # XRFUtils.get_index_from_energy: first index with x >= en (None if none)
        for i, e in enumerate(x):
            if e >= en:
                return i
        return None

    yy = y[index(E_INT[0]):index(E_INT[1])]
    if rebin_size < yy.shape[0]:
        yy, _ = np.histogram(np.arange(yy.shape[0]), bins=rebin_size, weights=yy)
    return yy / yy.sum()


def _write_h5(path: Path, x=None, y=None, **extra) -> None:
    with h5py.File(path, "w") as f:
        if x is not None:
            f["x"] = x
        if y is not None:
            f["y"] = y
        for k, v in extra.items():
            f[k] = v


def _ganx_db(tmp_path: Path, k: int = 3, n_target: int = 1024) -> tuple[Path, dict]:
    """A ganX database whose channels tile 0.5-38.5 keV in k * n_target channels, plus
    channels outside that range on both sides (which ganx cuts away)."""
    w = (E_INT[1] - E_INT[0]) / (k * n_target)
    i = np.arange(-7, k * n_target + 9)
    x = E_INT[0] + (i + 0.5) * w
    rng = np.random.default_rng(7)
    spectra = {
        "vermilion": _peaky(x, [(9.99, 500), (11.82, 300)]) + rng.poisson(2.0, x.size),
        "Lead White": _peaky(x, [(10.55, 400), (12.61, 350)]) + rng.poisson(2.0, x.size),
        "malachite": _peaky(x, [(8.05, 900)]) + rng.poisson(2.0, x.size),
    }
    (tmp_path / "spectra").mkdir()
    doc = {}
    for j, (name, y) in enumerate(spectra.items()):
        _write_h5(tmp_path / "spectra" / f"{j}.h5", x, y)
        doc[name] = {"RGB": [10 * j, 20 * j, 30 * j], "xrf": f"spectra/{j}.h5"}
    jp = tmp_path / "db.json"
    jp.write_text(json.dumps(doc))
    return jp, {"x": x, **spectra}


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# our JSON format
# ---------------------------------------------------------------------------------------------
def _full_library() -> PigmentLibrary:
    lib = _small_library()
    lib.add(Pigment(
        "red ochre", (150, 60, 40), composition={"Fe2O3": 0.2, "Al2Si2O5(OH)4": 0.7, "SiO2": 0.1},
        density=2.9, thickness_um=25.0,
        ground=(Layer({"CaSO4(H2O)2": 1.0}, 2.32, 300.0, "gypsum ground"),
                Layer({"C": 1.0}, 0.6, None, "panel")),
        aliases=("sinopia", "rubrica"), rgb_source="a colour atlas", formula=None,
        provenance={"model": "ganx_dask.pigments.physics", "params": {"kV": 40, "ok": True}},
    ))
    lib.add(Pigment("Vermilion (HgS)", (200, 40, 30), composition={"HgS": 1.0}, density=8.1,
                    formula="HgS"))
    return lib


def test_library_json_roundtrip_every_field(tmp_path):
    lib = _full_library()
    p = write_library(lib, tmp_path / "lib.json")
    back = read_library(p)
    assert back.names == lib.names and back.name == "small" and back.version == "3"
    assert back.description == lib.description
    d0, d1 = library_to_dict(lib), library_to_dict(back)
    for a, b in zip(d0["pigments"], d1["pigments"], strict=True):
        ca, cb = a.pop("composition"), b.pop("composition")
        assert (ca is None and cb is None) or ca == pytest.approx(cb, rel=1e-15)
        assert a == b  # every other field exactly, measured spectra bit for bit
    d0.pop("pigments"), d1.pop("pigments")
    assert d0 == d1
    assert back["rubrica"].ground[0] == lib["red ochre"].ground[0]
    np.testing.assert_array_equal(back["cinnabar"].measured.edges, lib["vermilion"].measured.edges)
    # writing the read-back library gives the same file up to composition renormalisation
    p2 = write_library(back, tmp_path / "lib2.json")
    a, b = p.read_text().splitlines(), p2.read_text().splitlines()
    assert [x for x in a if "red ochre" not in x] == [x for x in b if "red ochre" not in x]
    doc = json.loads(p.read_text())
    assert doc["format"] == FORMAT_NAME and doc["format_version"] == 1
    assert set(doc["pigments"][3]) == {
        "name", "aliases", "rgb", "rgb_source", "composition", "formula", "density",
        "thickness_um", "ground", "provenance", "measured", "components"}


def test_library_json_spectra_identical_after_roundtrip(tmp_path):
    lib = _small_library()
    back = read_library(write_library(lib, tmp_path / "lib.json"))
    np.testing.assert_array_equal(back.spectra("0.5:38.5:1024").values,
                                  lib.spectra("0.5:38.5:1024").values)


def test_components_and_instrument_roundtrip(tmp_path):
    physics = pytest.importorskip("ganx_dask.pigments.physics")
    library = pytest.importorskip("ganx_dask.pigments.library")
    if not hasattr(physics, "SpectrumComponents"):
        pytest.skip("physics.SpectrumComponents not built yet")
    lib = library.default_library()
    sub = PigmentLibrary([lib[n] for n in lib.names[:3]], name="sub", version=lib.version,
                         instrument=lib.instrument)
    back = read_library(write_library(sub, tmp_path / "d.json"))
    assert library_to_dict(back) == library_to_dict(sub)
    np.testing.assert_allclose(back.spectra("0.5:38.5:1024").values,
                               sub.spectra("0.5:38.5:1024").values, rtol=1e-12, atol=1e-15)


def test_write_library_refuses_existing_file(tmp_path):
    out = tmp_path / "lib.json"
    out.write_text("precious")
    with pytest.raises(StoreExistsError, match="lib.json"):
        write_library(_small_library(), out)
    assert out.read_text() == "precious"
    out.chmod(0o640)
    write_library(_small_library(), out, overwrite=True)
    assert read_library(out).names == _small_library().names
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # the replaced file's permissions kept
    umask = os.umask(0o022)
    os.umask(umask)
    new = write_library(_small_library(), tmp_path / "new.json")
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    new.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.json"]  # no temp files left


def test_write_library_unserialisable_leaves_nothing(tmp_path):
    lib = _small_library()
    lib["azurite"].provenance["bad"] = float("nan")
    out = tmp_path / "lib.json"
    with pytest.raises(PigmentError, match="Azurite"):
        write_library(lib, out)
    assert list(tmp_path.iterdir()) == []


def _doc() -> dict:
    return json.loads(json.dumps(library_to_dict(_small_library())))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format_version=2), "format_version"),
        (lambda d: d.update(format="something"), "'format'"),
        (lambda d: d["pigments"][1].pop("rgb"), r"pigments\[1\].*'rgb'"),
        (lambda d: d["pigments"][1].update(rgb=[1, 2, 300]), r"pigments\[1\].*'rgb'"),
        (lambda d: d["pigments"][2].update(name="LEAD-WHITE"), r"pigments\[2\].*duplicate"),
        (lambda d: d["pigments"][0]["measured"]["counts"].__setitem__(5, -1.0),
         r"pigments\[0\].*negative"),
        (lambda d: d["pigments"][0]["measured"].update(counts=[0.0] * 700), r"all zero"),
        (lambda d: d["pigments"][0].update(colour=[1, 2, 3]), r"unknown field.*'colour'"),
        (lambda d: d["pigments"][0].update(measured=None), r"composition or a measured"),
        (lambda d: d["pigments"][0].update(density=-1), r"'density'"),
        (lambda d: d.update(pigments={"a": 1}), r"'pigments'"),
    ],
)
def test_read_library_bad_input(tmp_path, mutate, match):
    d = _doc()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(PigmentError, match=match) as ei:
        read_library(p)
    assert "bad.json" in str(ei.value)


def test_read_library_malformed_and_nan(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"format": "ganx-dask-pigment-library",\n "pigments": [}')
    with pytest.raises(PigmentError, match=r"broken\.json.*malformed JSON at line 2"):
        read_library(p)
    d = _doc()
    text = json.dumps(d).replace('"counts": [', '"counts": [NaN, ', 1)
    p.write_text(text)
    with pytest.raises(PigmentError, match=r"broken\.json.*NaN"):
        read_library(p)
    with pytest.raises(PigmentError, match="no such file"):
        read_library(tmp_path / "missing.json")
    p.write_text('{"format": "ganx-dask-pigment-library", "format": 1}')
    with pytest.raises(PigmentError, match="duplicate key 'format'"):
        read_library(p)


def test_read_library_bad_formula_named(tmp_path):
    physics = pytest.importorskip("ganx_dask.pigments.physics")
    if not hasattr(physics, "validate_composition"):
        pytest.skip("physics.validate_composition not built yet")
    d = _doc()
    d["pigments"].append({"name": "nonsense", "rgb": [1, 2, 3], "composition": {"Xx2O3": 1.0},
                          "density": 2.0})
    p = tmp_path / "f.json"
    p.write_text(json.dumps(d))
    with pytest.raises(PigmentError, match=r"f\.json.*pigments\[3\].*Xx2O3"):
        read_library(p)


# ---------------------------------------------------------------------------------------------
# ganX database
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
def test_ganx_import_matches_ganx_algorithm(tmp_path, monkeypatch, k):
    jp, spectra = _ganx_db(tmp_path, k=k)
    monkeypatch.chdir(tmp_path.parent)  # relative h5 paths resolve against the JSON's folder
    lib = read_ganx_database(jp)
    assert lib.names == ["vermilion", "Lead White", "malachite"]
    assert lib["lead white"].rgb == (10, 20, 30)
    got = lib.spectra("0.5:38.5:1024")
    assert got.dims == ("pigment", "energy")
    for name in lib.names:
        ref = _ganx_reference(spectra["x"], spectra[name], 1024)
        np.testing.assert_allclose(got.sel(pigment=name).values, ref, rtol=1e-9, atol=1e-15)
    # importing straight onto the axis gives the same distributions
    lib2 = read_ganx_database(jp, energy="0.5:38.5:1024")
    np.testing.assert_allclose(lib2.spectra("0.5:38.5:1024").values, got.values, rtol=1e-12)
    assert lib2["malachite"].measured.counts.size == 1024
    # import -> export -> import: the same spectra after the documented rebinning
    lib3 = read_ganx_database(write_ganx_database(lib, tmp_path / "again"))
    assert lib3.names == lib.names and [p.rgb for p in lib3] == [p.rgb for p in lib]
    np.testing.assert_allclose(lib3.spectra("0.5:38.5:1024").values, got.values,
                               rtol=1e-9, atol=1e-15)


def test_ganx_import_matches_real_ganx(tmp_path, monkeypatch):
    ganx = pytest.importorskip("ganx.XRF_generator_classes")
    jp, _ = _ganx_db(tmp_path, k=2)
    monkeypatch.chdir(tmp_path)  # ganx opens the h5 paths relative to the working directory
    ref = ganx.PigmentDataBaseUtils(str(jp), E_int=list(E_INT), rebin_size=1024).pigments_dict_data
    lib = read_ganx_database(jp)
    got = lib.spectra("0.5:38.5:1024")
    for name in lib.names:
        np.testing.assert_allclose(got.sel(pigment=name).values, ref[name]["xrf"]["y"],
                                   rtol=1e-9, atol=1e-15)


def test_ganx_import_from_dict_and_odd_axes_conserve_counts(tmp_path, monkeypatch):
    # 1500 native channels: not a multiple of 1024 (ganx's index-based rebinning then puts 1 or 2
    # channels in a bin); ours rebins by energy and conserves the counts in range
    x = np.linspace(0.0, 40.0, 1500, endpoint=False) + 40.0 / 3000
    y = _peaky(x, [(6.4, 50.0)])
    _write_h5(tmp_path / "a.h5", x, y)
    monkeypatch.chdir(tmp_path)
    lib = read_ganx_database({"A": {"RGB": [1, 2, 3], "xrf": "a.h5"}})
    ms = lib["a"].measured
    for ax in ("0.5:38.5:1024", "0:40:4096", "2:3:7"):
        a = EnergyAxis.parse(ax)
        inside = (x >= a.start) & (x < a.stop)
        full = ms.on(ax).sum()
        # whole native channels inside the axis are conserved (edge channels partially)
        assert y[inside][1:-1].sum() - 1e-9 <= full <= y[inside].sum() + y.max() * 2
    np.testing.assert_allclose(ms.on("0:40:4096").sum(), y.sum(), rtol=1e-12)


def test_ganx_export_import_roundtrip(tmp_path):
    lib = _small_library()
    jp = write_ganx_database(lib, tmp_path / "db")
    assert jp == tmp_path / "db" / "pigments.json"
    doc = json.loads(jp.read_text())
    assert list(doc) == lib.names and doc["Azurite"]["RGB"] == [0, 127, 255]
    with h5py.File(doc["lead white"]["xrf"], "r") as f:  # absolute paths, as ganx needs
        assert f["x"].shape == f["y"].shape == (2048,)
        assert f["x"][0] == pytest.approx(0.5 + 38.0 / 4096)
    back = read_ganx_database(jp)
    assert back.names == lib.names
    assert [p.rgb for p in back] == [p.rgb for p in lib]
    for ax in ("0.5:38.5:1024", "0.5:38.5:2048", "0.5:38.5:512"):
        np.testing.assert_allclose(back.spectra(ax).values, lib.spectra(ax).values,
                                   rtol=1e-9, atol=1e-15)
    # relative paths: the folder can be moved
    jp2 = write_ganx_database(lib, tmp_path / "rel", absolute_paths=False)
    moved = tmp_path / "moved"
    (tmp_path / "rel").rename(moved)
    assert read_ganx_database(moved / jp2.name).names == lib.names


def test_ganx_export_read_by_real_ganx(tmp_path):
    ganx = pytest.importorskip("ganx.XRF_generator_classes")
    lib = _small_library()
    jp = write_ganx_database(lib, tmp_path / "db")
    ref = ganx.PigmentDataBaseUtils(str(jp), E_int=list(E_INT), rebin_size=1024).pigments_dict_data
    ours = lib.spectra("0.5:38.5:1024")
    for name in lib.names:
        np.testing.assert_allclose(ref[name]["xrf"]["y"], ours.sel(pigment=name).values,
                                   rtol=1e-9, atol=1e-15)


def test_ganx_export_refuses_existing_and_bad_axis(tmp_path):
    lib = _small_library()
    out = tmp_path / "db"
    write_ganx_database(lib, out)
    before = _snapshot(out)
    with pytest.raises(StoreExistsError, match="exists"):
        write_ganx_database(lib, out, energy="0.5:38.5:1024")
    assert _snapshot(out) == before
    write_ganx_database(lib, out, energy="0.5:38.5:1024", overwrite=True)
    assert _snapshot(out) != before
    assert sorted(_snapshot(out)) == sorted(before)  # same files, no temp files left
    # an axis with no overlap: error, and no folder created
    with pytest.raises(GanxError):
        write_ganx_database(lib, tmp_path / "new", energy="50:60:10")
    assert not (tmp_path / "new").exists()


def _bad_db(tmp_path, entry_or_doc, name="db.json"):
    p = tmp_path / name
    p.write_text(entry_or_doc if isinstance(entry_or_doc, str) else json.dumps(entry_or_doc))
    return p


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("malformed", r"db\.json.*malformed JSON"),
        ("no_rgb", r"db\.json.*'vermilion'.*missing field 'RGB'"),
        ("bad_rgb", r"db\.json.*'vermilion'.*RGB"),
        ("no_xrf", r"db\.json.*missing field 'xrf'"),
        ("no_file", r"nope\.h5 not found"),
        ("not_h5", r"not a readable HDF5"),
        ("no_x", r"s\.h5: missing dataset 'x'"),
        ("no_y", r"s\.h5: missing dataset 'y'"),
        ("neg", r"s\.h5: dataset 'y'.*negative"),
        ("nan", r"s\.h5: dataset 'y'.*NaN"),
        ("zero", r"s\.h5: dataset 'y'.*all zero"),
        ("x_decreasing", r"s\.h5: dataset 'x'.*increasing"),
        ("shape", r"s\.h5.*equal length"),
        ("dup_key", r"db\.json.*duplicate key 'vermilion'"),
        ("dup_case", r"db\.json.*duplicate pigment name"),
        ("empty", r"db\.json.*non-empty"),
        ("no_overlap", r"s\.h5.*do not overlap"),
    ],
)
def test_ganx_import_bad_input(tmp_path, setup, match):
    x = np.linspace(0.5, 40, 200)
    y = _peaky(x, [(6.4, 10)])
    h5 = tmp_path / "s.h5"
    entry = {"RGB": [1, 2, 3], "xrf": "s.h5"}
    kw = {}
    if setup == "malformed":
        p = _bad_db(tmp_path, '{"vermilion": {"RGB": [1, 2, 3], "xrf": }')
    elif setup == "dup_key":
        _write_h5(h5, x, y)
        p = _bad_db(tmp_path, '{"vermilion": {"RGB": [1,2,3], "xrf": "s.h5"},'
                              ' "vermilion": {"RGB": [1,2,3], "xrf": "s.h5"}}')
    elif setup == "dup_case":
        _write_h5(h5, x, y)
        p = _bad_db(tmp_path, {"vermilion": entry, "Vermilion": entry})
    elif setup == "empty":
        p = _bad_db(tmp_path, {})
    else:
        e = dict(entry)
        if setup == "no_rgb":
            e.pop("RGB")
        elif setup == "bad_rgb":
            e["RGB"] = [1, 2]
        elif setup == "no_xrf":
            e.pop("xrf")
        elif setup == "no_file":
            e["xrf"] = "nope.h5"
        elif setup == "not_h5":
            h5.write_text("not hdf5")
        if setup in ("no_rgb", "bad_rgb", "no_xrf", "no_overlap"):
            _write_h5(h5, x, y)
        elif setup == "no_x":
            _write_h5(h5, None, y, energy=x)
        elif setup == "no_y":
            _write_h5(h5, x, None, counts=y)
        elif setup in ("neg", "nan", "zero"):
            yy = y.copy()
            yy[{"neg": [5], "nan": [7], "zero": slice(None)}[setup]] = {
                "neg": -1.0, "nan": np.nan, "zero": 0.0}[setup]
            _write_h5(h5, x, yy)
        elif setup == "x_decreasing":
            _write_h5(h5, x[::-1], y)
        elif setup == "shape":
            _write_h5(h5, x[:-1], y)
        if setup == "no_overlap":
            kw["energy"] = "50:60:10"
        p = _bad_db(tmp_path, {"vermilion": e})
    with pytest.raises(PigmentError, match=match):
        read_ganx_database(p, **kw)


def test_render_non_overlapping_measured_axis_is_an_error():
    lib = PigmentLibrary([_measured("a", (1, 2, 3), [(5.0, 1.0)], lo=0.0, hi=20.0)])
    with pytest.raises(PigmentError, match=r"'a' \(a\.h5\).*do not overlap"):
        lib.spectra("25:30:16")


def test_load_library_detects_kind(tmp_path):
    lib = _small_library()
    assert load_library(write_library(lib, tmp_path / "ours.json")).names == lib.names
    assert load_library(write_ganx_database(lib, tmp_path / "g")).names == lib.names
    with pytest.raises(PigmentError, match="not a ganX database|ganx-dask library"):
        read_ganx_database(tmp_path / "ours.json")


# ---------------------------------------------------------------------------------------------
# measured-spectrum readers
# ---------------------------------------------------------------------------------------------
FIXTURE_TOTAL = 5964
OFFSET, GAIN, NCH = 0.02, 0.04, 256


@pytest.mark.parametrize("name", ["spectrum_fe.csv", "spectrum_fe.mca", "spectrum_fe.spe"])
def test_readers_parse_fixtures(name):
    ms = read_spectrum(DATA / name)
    assert ms.counts.size == NCH and ms.counts.sum() == FIXTURE_TOTAL
    centres = 0.5 * (ms.edges[1:] + ms.edges[:-1])
    np.testing.assert_allclose(centres, OFFSET + GAIN * np.arange(NCH), atol=1e-9)
    assert name in ms.source
    peak = centres[np.argmax(ms.counts)]
    assert abs(peak - 6.404) < GAIN  # Fe Kα in the right channel
    # rebinning conserves counts: onto a covering axis, and onto a sub-range
    assert ms.on("0:12:300").sum() == pytest.approx(FIXTURE_TOTAL, rel=1e-12)
    assert ms.on("0.5:38.5:1024").sum() == pytest.approx(ms.counts[13:].sum() + 0.5 * ms.counts[12],
                                                         rel=1e-9)
    sub = ms.on("6:7:10")
    inside = ms.counts[(centres > 6.0 + GAIN / 2) & (centres < 7.0 - GAIN / 2)].sum()
    assert inside <= sub.sum() <= inside + ms.counts[[149, 174]].sum()


def test_reader_calibration_override_and_required(tmp_path):
    ms = read_spectrum(DATA / "spectrum_fe.mca", calibration=(0.0, 0.01))
    np.testing.assert_allclose(ms.edges[[0, -1]], [-0.005, 2.555])
    one = tmp_path / "counts.txt"
    one.write_text("\n".join(str(v) for v in [1, 2, 3, 4, 0, 5]))
    with pytest.raises(PigmentError, match=r"counts\.txt.*calibration"):
        read_spectrum(one)
    ms = read_spectrum(one, calibration=(1.0, 0.5))
    np.testing.assert_allclose(ms.edges, 0.75 + 0.5 * np.arange(7))
    with pytest.raises(PigmentError, match="gain"):
        read_spectrum(one, calibration=(1.0, 0.0))
    spe = tmp_path / "nocal.spe"
    spe.write_text("$SPEC_ID:\nx\n$DATA:\n0 5\n1 2 3\n4 5 6\n$ENER_FIT:\n0.000000 0.000000\n")
    with pytest.raises(PigmentError, match=r"nocal\.spe.*no energy calibration"):
        read_spectrum(spe)
    ms = read_spectrum(spe, calibration=(0.0, 1.0))
    assert ms.counts.tolist() == [1, 2, 3, 4, 5, 6]


def test_mca_calibration_in_ev(tmp_path):
    text = (DATA / "spectrum_fe.mca").read_text()
    text = text.replace("LABEL - keV", "LABEL - eV").replace("1.6200", "1620.0")
    text = text.replace("6.4200", "6420.0").replace("8.8200", "8820.0")
    p = tmp_path / "ev.mca"
    p.write_text(text)
    ms = read_spectrum(p)
    np.testing.assert_allclose(ms.edges, read_spectrum(DATA / "spectrum_fe.mca").edges, rtol=1e-9)
    assert "3 points" in ms.source and "live time 98.5" in ms.source


def test_csv_whitespace_and_semicolons(tmp_path):
    p = tmp_path / "s.dat"
    p.write_text("E counts\n1.0\t3\n2.0   4\n\n3.0;5\n")
    ms = read_spectrum(p)
    np.testing.assert_allclose(ms.edges, [0.5, 1.5, 2.5, 3.5])
    assert ms.counts.tolist() == [3, 4, 5]


def test_spe_quadratic_mca_cal_in_ev(tmp_path):
    p = tmp_path / "q.spe"
    p.write_text("$SPEC_ID:\nq\n$DATA:\n10 13\n1\n2\n3\n4\n$MCA_CAL:\n3\n"
                 "100.0 20.0 0.5 eV\n")
    ms = read_spectrum(p)
    ch = np.arange(10, 14)
    np.testing.assert_allclose(0.5 * (ms.edges[1:] + ms.edges[:-1])[1:-1],
                               ((100 + 20 * ch + 0.5 * ch**2) / 1000)[1:-1], rtol=0.02)
    assert ms.edges[0] > 0.2


@pytest.mark.parametrize(
    ("fname", "text", "match"),
    [
        ("bad.csv", "energy,counts\n1,2\n2,x\n", r"bad\.csv, line 3"),
        ("bad.csv", "1,2,3\n2,3,4\n", r"bad\.csv, line 1: expected 2 columns"),
        ("bad.csv", "1,2\n2\n", r"bad\.csv, line 2: expected 2"),
        ("bad.csv", "1,2\n1,3\n", r"bad\.csv: energy column.*increasing"),
        ("bad.csv", "1,0\n2,0\n", r"bad\.csv: counts column.*all zero"),
        ("bad.csv", "1,1\n2,-3\n", r"bad\.csv: counts column.*negative"),
        ("bad.csv", "1,1\n2,nan\n", r"bad\.csv: counts column.*NaN"),
        ("bad.csv", "hello\n", r"bad\.csv: no data rows"),
        ("bad.mca", "<<PMCA SPECTRUM>>\n<<DATA>>\n1\n2\n", r"bad\.mca.*<<END>>"),
        ("bad.mca", "hello\n", r"bad\.mca: not an Amptek MCA"),
        ("bad.mca", "<<PMCA SPECTRUM>>\n<<CALIBRATION>>\nLABEL - keV\n1 1.0\n<<DATA>>\n1\n2\n"
                    "<<END>>\n", r"bad\.mca: <<CALIBRATION>> needs at least 2 points"),
        ("bad.mca", "<<PMCA SPECTRUM>>\n<<DATA>>\n1\nfoo\n<<END>>\n", r"bad\.mca, line 4"),
        ("bad.spe", "$SPEC_ID:\nx\n$DATA:\n0 9\n1 2 3\n$ENER_FIT:\n0 1\n",
         r"bad\.spe.*channels 0\.\.9 \(10\) but holds 3"),
        ("bad.spe", "$SPEC_ID:\nx\n$ENER_FIT:\n0 1\n", r"bad\.spe: missing or empty '\$DATA:'"),
        ("bad.xyz", "1,2\n", r"bad\.xyz: unknown spectrum format"),
    ],
)
def test_reader_bad_input(tmp_path, fname, text, match):
    p = tmp_path / fname
    p.write_text(text)
    with pytest.raises(PigmentError, match=match):
        read_spectrum(p)


def test_reader_missing_file(tmp_path):
    with pytest.raises(PigmentError, match=r"gone\.mca: no such file"):
        read_spectrum(tmp_path / "gone.mca")
