"""``ganx-dask inspect`` and ``ganx-dask compare`` from the CLI on real generated stores."""

import json

import numpy as np
import pytest
import zarr
from PIL import Image

import ganx_dask
from ganx_dask.cli import main
from ganx_dask.errors import IncompleteStoreWarning


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two generated stores of the same image (thresholds 0.2 / 0.6) and a smaller one."""
    root = tmp_path_factory.mktemp("cli")
    lib = ganx_dask.default_library().select(
        ["minium", "vermilion", "azurite", "malachite", "chalk", "lead-tin yellow I"])
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 3), np.uint8)
    for i, name in enumerate(["vermilion", "azurite", "malachite", "chalk"]):
        img[(i // 2) * 32:(i // 2 + 1) * 32, (i % 2) * 32:(i % 2 + 1) * 32] = lib[name].rgb
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    out = {}
    for t in (0.2, 0.6):
        ds = ganx_dask.generate(img, lib, seed=1, energy="0.5:38.5:256", threshold=t, mode="paper",
                                n_start=4, delta=0, chunks=64, counts=200)
        out[t] = root / f"t{t}.zarr"
        ganx_dask.to_zarr(ds, out[t])
    ds = ganx_dask.generate(img[:32], lib, seed=2, energy="0.5:38.5:256", n_start=4, delta=0,
                            chunks=64, counts=200)
    out["small"] = root / "small.zarr"
    ganx_dask.to_zarr(ds, out["small"])
    return out


def _png_size(path):
    assert path.stat().st_size > 2000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_inspect_writes_report_and_pngs(tmp_path, stores, capsys):
    out = tmp_path / "report"
    assert main(["inspect", str(stores[0.2]), "-o", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["abundance.png", "element_maps.png", "flattened.png", "rgb.png",
                    "sum_spectrum.png"]
    for p in pngs:
        w, h = _png_size(out / p)
        assert w >= 300 and h >= 200, p
    report = (out / "report.md").read_text()
    assert "64 × 64 × 256" in report and "| seed | `1` |" in report
    assert "Hg La" in report and "Cu Ka" in report  # elements of the cube's pigments
    assert "wrote" in capsys.readouterr().out


def test_inspect_vector_formats_dpi_and_overlaps(tmp_path, stores):
    out = tmp_path / "vec"
    assert main(["inspect", str(stores[0.2]), "-o", str(out), "--format", "svg,pdf,png",
                 "--dpi", "300", "--elements", "S:Ka,Pb:La,Cu:Ka", "--map-scale", "shared"]) == 0
    for stem in ("element_maps", "sum_spectrum", "flattened", "rgb", "abundance"):
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert b"<svg" in (out / f"{stem}.svg").read_bytes()[:2000]
    w300, _ = _png_size(out / "sum_spectrum.png")
    low = tmp_path / "low"
    assert main(["inspect", str(stores[0.2]), "-o", str(low), "--dpi", "75",
                 "--elements", "Cu:Ka"]) == 0
    w75, _ = _png_size(low / "sum_spectrum.png")
    assert 3.6 < w300 / w75 < 4.4  # same figure, 4× the dots per inch
    report = (out / "report.md").read_text()
    s_row = next(line for line in report.splitlines() if line.startswith("| S Ka |"))
    assert "Pb Ma" in s_row  # S Kα is not resolved from Pb Mα (both elements present)
    assert "![element_maps.png](element_maps.png)" in report and "element_maps.svg" in report
    with pytest.raises(SystemExit):
        main(["inspect", str(stores[0.2]), "-o", str(tmp_path / "x"), "--map-scale", "log"])
    assert main(["inspect", str(stores[0.2]), "-o", str(tmp_path / "y"), "--format", "jpg"]) == 1
    assert not (tmp_path / "y").exists()


def test_inspect_refuses_existing_dir_and_bad_element(tmp_path, stores, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["inspect", str(stores[0.2]), "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    fresh = tmp_path / "r2"
    assert main(["inspect", str(stores[0.2]), "-o", str(fresh), "--elements", "Pb:Ka"]) == 1
    err = capsys.readouterr().err
    assert "Pb: line Ka at 74.16" in err and "outside the energy axis" in err
    assert not fresh.exists() and list(tmp_path.glob(".r2*")) == []


def test_inspect_unwritable_output_is_a_clear_error(tmp_path, stores, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["inspect", str(stores[0.2]), "-o", str(blocker / "rep")]) == 1
    err = capsys.readouterr().err
    assert "afile" in err and "Traceback" not in err
    assert blocker.read_text() == "x"


def test_inspect_incomplete_store_warns(tmp_path, stores):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(stores["small"], copy)
    zarr.open_group(str(copy), mode="r+").attrs["complete"] = False
    with pytest.warns(IncompleteStoreWarning):
        assert main(["inspect", str(copy), "-o", str(tmp_path / "r"), "--elements", "Cu"]) == 0


def test_compare_json_identical_and_different(tmp_path, stores, capsys):
    assert main(["compare", str(stores[0.2]), str(stores[0.2]), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ssim"] == pytest.approx(1.0) and res["ms_ssim"] == pytest.approx(1.0)
    assert res["spectral"]["cosine"] == pytest.approx(0.0, abs=1e-12)
    assert res["spectral"]["bhattacharyya"] == pytest.approx(1.0)
    out = tmp_path / "cmp"
    assert main(["compare", str(stores[0.2]), str(stores[0.6]), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| cosine |" in text and "| SSIM |" in text
    saved = json.loads((out / "compare.json").read_text())
    assert 0 < saved["ssim"] < 1 and saved["spectral"]["cosine"] > 0
    for p in ("sum_spectra.png", "flattened_a.png", "flattened_b.png"):
        w, h = _png_size(out / p)
        assert w >= 300 and h >= 200


def test_compare_rebins_real_data_onto_common_axis(tmp_path, stores, capsys):
    ds = ganx_dask.open_cube(stores[0.2])
    coarse = ds.xrf.rebin(2)  # 128 channels, 0.297 keV wide
    h5 = tmp_path / "measured.h5"
    coarse.xrf.to_ganx_hdf5(h5)
    assert main(["compare", str(stores[0.2]), str(h5), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["rebinned"] is True and res["energy_axis"] == "0.5:38.5:128"
    assert res["spectral"]["cosine"] == pytest.approx(0.0, abs=1e-9)
    assert res["ssim"] == pytest.approx(1.0)


def test_compare_mismatched_shapes(stores, capsys):
    assert main(["compare", str(stores[0.2]), str(stores["small"])]) == 1
    err = capsys.readouterr().err
    assert "spatial shapes differ: 64×64 vs 32×64" in err and "--spectral-only" in err
    assert main(["compare", str(stores[0.2]), str(stores["small"]), "--spectral-only",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ssim"] is None and 0 <= res["spectral"]["cosine"] < 1


def test_staged_output_is_an_ordinary_directory_and_vanishes_on_error(tmp_path):
    import os
    import stat

    from ganx_dask._staging import staged_output

    umask = os.umask(0o022)
    try:
        with staged_output(tmp_path / "rep") as tmp:
            assert tmp.name.startswith(".rep.") and tmp.parent == tmp_path.resolve()
            (tmp / "a.txt").write_text("x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "rep").stat().st_mode) == 0o755
    assert (tmp_path / "rep" / "a.txt").read_text() == "x"
    with pytest.raises(RuntimeError), staged_output(tmp_path / "bad"):
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
