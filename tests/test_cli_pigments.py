"""End-to-end tests of ``ganx-dask pigments list|show|add|export|import``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from ganx_dask.cli import main
from ganx_dask.pigments.formats import read_ganx_database, read_library, write_library
from ganx_dask.pigments.model import MeasuredSpectrum, Pigment, PigmentLibrary


def _measured(name: str, rgb, peak_kev: float) -> Pigment:
    edges = np.linspace(0.0, 40.0, 801)
    c = 0.5 * (edges[1:] + edges[:-1])
    y = 0.01 + np.exp(-0.5 * ((c - peak_kev) / 0.08) ** 2)
    return Pigment(name, rgb, measured=MeasuredSpectrum(edges, y, source=f"{name} test"))


@pytest.fixture
def user_lib(tmp_path) -> Path:
    """A small user library: two computed pigments (by formula) and one measured."""
    lib = PigmentLibrary(
        [
            Pigment.from_formula("vermilion", "HgS", (227, 66, 52), density=8.1,
                                 aliases=("cinnabar",)),
            Pigment.from_formula("malachite", "Cu2CO3(OH)2", (11, 218, 81), density=4.0,
                                 thickness_um=30.0),
            _measured("mystery blue", (20, 40, 200), 8.05),
        ],
        name="user",
        version="1",
    )
    return write_library(lib, tmp_path / "user.json")


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["pigments", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_table_and_json(capsys, user_lib):
    rc, out, _ = _run(capsys, "list", "--library", user_lib)
    assert rc == 0
    lines = out.splitlines()
    assert "3 pigments" in lines[0]
    assert lines[1].split()[:2] == ["name", "colour"]
    row = next(ln for ln in lines if ln.startswith("vermilion"))
    assert "#E34234" in row and "HgS" in row and row.rstrip().endswith("8.10")
    assert "measured spectrum" in next(ln for ln in lines if ln.startswith("mystery blue"))
    rc, out, _ = _run(capsys, "list", "--library", user_lib, "--json")
    doc = json.loads(out)
    assert [p["name"] for p in doc["pigments"]] == ["vermilion", "malachite", "mystery blue"]
    assert doc["pigments"][1]["hex"] == "#0BDA51" and doc["pigments"][1]["density_g_cm3"] == 4.0
    assert doc["pigments"][2]["measured"] is True


def test_list_default_library(capsys):
    pytest.importorskip("ganx_dask.pigments.library")
    rc, out, _ = _run(capsys, "list", "--json")
    assert rc == 0
    assert len(json.loads(out)["pigments"]) >= 40


def test_show_lines_and_plot(capsys, user_lib, tmp_path):
    png = tmp_path / "verm.png"
    rc, out, _ = _run(capsys, "show", "CINNABAR", "--library", user_lib, "--plot", png)
    assert rc == 0, out
    assert out.startswith("vermilion") and "#E34234" in out
    # Hg Lα1 9.989 keV and S Kα1 2.308 keV (xraylib), Hg Lα the strongest
    hg_la = next(ln for ln in out.splitlines() if ln.split()[:2] == ["Hg", "La1"])
    assert float(hg_la.split()[2]) == pytest.approx(9.989, abs=0.002)
    assert hg_la.split()[3] == "100.0%"
    assert any(ln.split()[:2] == ["S", "Ka1"] for ln in out.splitlines())
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert 600 <= im.width <= 2000 and 300 <= im.height <= 1500
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 5  # not a blank image
    # an existing plot is not replaced without --overwrite
    before = png.read_bytes()
    rc, _, err = _run(capsys, "show", "vermilion", "--library", user_lib, "--plot", png)
    assert rc == 1 and "exists" in err and png.read_bytes() == before
    rc, _, _ = _run(capsys, "show", "vermilion", "--library", user_lib, "--plot", png,
                    "--overwrite", "--energy", "0:20:512", "--instrument", "portable-ag")
    assert rc == 0


def test_show_measured_and_errors(capsys, user_lib, tmp_path):
    rc, out, _ = _run(capsys, "show", "mystery blue", "--library", user_lib)
    assert rc == 0
    peaks = next(ln for ln in out.splitlines() if "main peaks" in ln)
    assert float(peaks.split()[2]) == pytest.approx(8.05, abs=38.0 / 1024)
    rc, _, err = _run(capsys, "show", "unobtainium", "--library", user_lib)
    assert rc == 1 and "unobtainium" in err
    rc, _, err = _run(capsys, "show", "vermilion", "--library", user_lib, "--energy", "1:2")
    assert rc == 1 and "energy axis" in err
    rc, _, err = _run(capsys, "show", "vermilion", "--library", user_lib, "--plot",
                      tmp_path / "x.notaformat")
    assert rc == 1 and "unsupported plot format" in err
    assert not (tmp_path / "x.notaformat").exists()
    rc, _, err = _run(capsys, "show", "mystery blue", "--library", user_lib, "--energy",
                      "50:60:10")
    assert rc == 1 and "overlap" in err


def test_add_creates_appends_and_refuses(capsys, tmp_path):
    lib = tmp_path / "mine.json"
    rc, out, _ = _run(capsys, "add", "gypsum", "--formula", "CaSO4*2H2O", "--rgb", "248,248,240",
                      "--density", "2.32", "--library", lib)
    assert rc == 0 and lib.exists()
    rc, _, _ = _run(capsys, "add", "red ochre", "--formula", "Fe2O3:0.3,Al2Si2O5(OH)4:0.7",
                    "--rgb", "#964B32", "--density", "2.9", "--thickness-um", "20",
                    "--ground", "CaCO3", "--alias", "rubrica", "--library", lib)
    assert rc == 0
    got = read_library(lib)
    assert got.names == ["gypsum", "red ochre"]
    ochre = got["rubrica"]
    assert ochre.rgb == (150, 75, 50) and ochre.thickness_um == 20.0
    assert ochre.composition == pytest.approx({"Fe2O3": 0.3, "Al2Si2O5(OH)4": 0.7})
    assert ochre.ground[0].composition == {"CaCO3": 1.0}
    assert got["gypsum"].formula == "CaSO4*2H2O"
    before = lib.read_bytes()
    for argv, match in [
        (["add", "GYPSUM", "--formula", "CaSO4", "--rgb", "1,2,3", "--density", "2"],
         "duplicate"),
        (["add", "bad", "--formula", "Xq2O3", "--rgb", "1,2,3", "--density", "2"], "Xq2O3"),
        (["add", "bad", "--formula", "PbO", "--rgb", "1,2", "--density", "2"], "--rgb"),
        (["add", "bad", "--formula", "PbO", "--rgb", "1,2,3", "--density", "-2"], "--density"),
        # an invalid ground used to be written, leaving a library file that could not be read
        (["add", "bad", "--formula", "PbO", "--rgb", "1,2,3", "--density", "9",
          "--thickness-um", "5", "--ground", "CaCO3", "--ground-density", "-1"],
         "--ground-density"),
    ]:
        rc, _, err = _run(capsys, *argv, "--library", lib)
        assert rc == 1 and match in err, err
        assert lib.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json"]


def test_export_import_roundtrip(capsys, user_lib, tmp_path):
    # our JSON
    out_json = tmp_path / "copy.json"
    rc, _, _ = _run(capsys, "export", "--library", user_lib, "--format", "json", "-o", out_json)
    assert rc == 0 and read_library(out_json).names == read_library(user_lib).names
    rc, _, err = _run(capsys, "export", "--library", user_lib, "-o", out_json)
    assert rc == 1 and "exists" in err
    # ganX
    gdir = tmp_path / "ganx"
    rc, out, _ = _run(capsys, "export", "--library", user_lib, "--format", "ganx", "-o", gdir)
    assert rc == 0
    db = gdir / "pigments.json"
    assert sorted(p.name for p in (gdir / "xrf").iterdir()) == [
        "malachite.h5", "mystery_blue.h5", "vermilion.h5"]
    imported = tmp_path / "imported.json"
    rc, out, _ = _run(capsys, "import", db, "-o", imported)
    assert rc == 0 and "imported 3 pigments" in out
    back, orig = read_library(imported), read_library(user_lib)
    assert back.names == orig.names and [p.rgb for p in back] == [p.rgb for p in orig]
    np.testing.assert_allclose(back.spectra("0.5:38.5:1024").values,
                               orig.spectra("0.5:38.5:1024").values, rtol=1e-9, atol=1e-15)
    # import refuses an existing output and leaves it untouched
    before = imported.read_bytes()
    rc, _, err = _run(capsys, "import", db, "-o", imported)
    assert rc == 1 and "exists" in err and imported.read_bytes() == before


def test_import_bad_database_creates_nothing(capsys, tmp_path):
    x = np.linspace(1.0, 30.0, 100)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["x"] = x  # no "y"
    db = tmp_path / "db.json"
    db.write_text(json.dumps({"smalt": {"RGB": [0, 50, 150], "xrf": "s.h5"}}))
    out = tmp_path / "out.json"
    rc, _, err = _run(capsys, "import", db, "-o", out)
    assert rc == 1 and "s.h5" in err and "'y'" in err
    assert not out.exists()
    shutil.copy(db, out)  # an existing file with bad input: unchanged
    rc, _, _ = _run(capsys, "import", db, "-o", out, "--overwrite")
    assert rc == 1 and out.read_bytes() == db.read_bytes()


def test_console_script_subprocess(tmp_path, user_lib):
    exe = Path(sys.executable).parent / "ganx-dask"
    if not exe.exists():
        pytest.skip("console script ganx-dask not installed next to the interpreter")
    res = subprocess.run([str(exe), "pigments", "list", "--library", str(user_lib), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [p["name"] for p in json.loads(res.stdout)["pigments"]][0] == "vermilion"
    res = subprocess.run([str(exe), "pigments", "show", "nope", "--library", str(user_lib)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "nope" in res.stderr


def test_ganx_export_via_cli_feeds_real_ganx(capsys, user_lib, tmp_path):
    ganx = pytest.importorskip("ganx.XRF_generator_classes")
    rc, _, _ = _run(capsys, "export", "--library", user_lib, "--format", "ganx", "-o", tmp_path / "g")
    assert rc == 0
    ref = ganx.PigmentDataBaseUtils(str(tmp_path / "g" / "pigments.json"), E_int=[0.5, 38.5],
                                    rebin_size=1024).pigments_dict_data
    ours = read_ganx_database(tmp_path / "g" / "pigments.json").spectra("0.5:38.5:1024")
    for name in ours.pigment.values:
        np.testing.assert_allclose(ref[name]["xrf"]["y"], ours.sel(pigment=name).values,
                                   rtol=1e-9, atol=1e-15)
